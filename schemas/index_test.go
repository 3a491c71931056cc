package schemas

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"
)

func TestForRange(t *testing.T) {
	ix := Indices{Prefix: "dt"}
	at := func(s string) time.Time {
		v, err := time.Parse(time.RFC3339, s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	cases := []struct {
		name     string
		kind     Kind
		from, to string
		want     []string
	}{
		{"one hour", KindSpans, "2026-11-25T10:05:00Z", "2026-11-25T10:59:59Z", []string{"dt-spans-2026.11.25.10"}},
		{"hour boundary", KindSpans, "2026-11-25T10:59:00Z", "2026-11-25T11:00:00Z", []string{"dt-spans-2026.11.25.10", "dt-spans-2026.11.25.11"}},
		{"midnight", KindSpans, "2026-11-25T23:30:00Z", "2026-11-26T01:10:00Z", []string{"dt-spans-2026.11.25.23", "dt-spans-2026.11.26.00", "dt-spans-2026.11.26.01"}},
		{"days", KindTraces, "2026-11-30T23:00:00Z", "2026-12-02T00:00:00Z", []string{"dt-traces-2026.11.30", "dt-traces-2026.12.01", "dt-traces-2026.12.02"}},
		{"inverted", KindSpans, "2026-11-25T11:00:00Z", "2026-11-25T10:00:00Z", nil},
		{"non-UTC input", KindSpans, "2026-11-25T12:30:00+02:00", "2026-11-25T12:40:00+02:00", []string{"dt-spans-2026.11.25.10"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := ix.ForRange(c.kind, at(c.from), at(c.to))
			if !reflect.DeepEqual(got, c.want) {
				t.Fatalf("ForRange(%s, %s, %s) = %v, want %v", c.kind, c.from, c.to, got, c.want)
			}
		})
	}
}

func TestParseNameAndExpired(t *testing.T) {
	ix := Indices{}
	names := []string{
		"deeptrace-spans-2026.11.20.23", "deeptrace-spans-2026.11.21.00", "deeptrace-spans-2026.11.21.01",
		"deeptrace-traces-2026.11.20", "deeptrace-traces-2026.11.21", "other-index", "deeptrace-spans-garbage",
	}
	k, start, ok := ix.ParseName("deeptrace-spans-2026.11.21.01")
	if !ok || k != KindSpans || !start.Equal(time.Date(2026, 11, 21, 1, 0, 0, 0, time.UTC)) {
		t.Fatalf("ParseName = %v %v %v", k, start, ok)
	}
	if _, _, ok := ix.ParseName("deeptrace-spans-garbage"); ok {
		t.Fatal("garbage suffix parsed")
	}
	cutoff := time.Date(2026, 11, 21, 1, 0, 0, 0, time.UTC)
	if got, want := ix.Expired(names, KindSpans, cutoff), []string{"deeptrace-spans-2026.11.20.23", "deeptrace-spans-2026.11.21.00"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Expired spans = %v, want %v", got, want)
	}
	if got, want := ix.Expired(names, KindTraces, cutoff), []string{"deeptrace-traces-2026.11.20"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("Expired traces = %v, want %v", got, want)
	}
}

func TestValidatePrefix(t *testing.T) {
	for _, p := range []string{"deeptrace", "dt-1", "a.b_c"} {
		if err := ValidatePrefix(p); err != nil {
			t.Errorf("%q: %v", p, err)
		}
	}
	for _, p := range []string{"", "Upper", "-x", "a b", "a*", "a/b"} {
		if err := ValidatePrefix(p); err == nil {
			t.Errorf("%q accepted", p)
		}
	}
}

func TestSpanIDStable(t *testing.T) {
	c := Conn{ClientIP: "10.0.0.1", ClientPort: 40000, ServerIP: "10.0.0.2", ServerPort: 80}
	a := SpanID("h1", c, 3, 1000, RoleClient)
	if a != SpanID("h1", c, 3, 1000, RoleClient) {
		t.Fatal("same input gave different ids")
	}
	if !ValidID(a, 16) {
		t.Fatalf("span id %q not 16 lowercase hex", a)
	}
	for name, other := range map[string]string{
		"host": SpanID("h2", c, 3, 1000, RoleClient),
		"seq":  SpanID("h1", c, 4, 1000, RoleClient),
		"tcp":  SpanID("h1", c, 3, 1001, RoleClient),
		"role": SpanID("h1", c, 3, 1000, RoleServer),
		"port": SpanID("h1", Conn{ClientIP: "10.0.0.1", ClientPort: 40001, ServerIP: "10.0.0.2", ServerPort: 80}, 3, 1000, RoleClient),
	} {
		if other == a {
			t.Errorf("changing %s kept the id", name)
		}
	}
	tid := TraceID(a)
	if !ValidID(tid, 32) || tid != TraceID(a) {
		t.Fatalf("trace id %q", tid)
	}
}

func TestTemplatesRender(t *testing.T) {
	ix := Indices{Prefix: "dt"}
	for _, k := range Kinds {
		b, err := ix.IndexTemplate(k, TemplateSettings{Shards: 3, Replicas: 1})
		if err != nil {
			t.Fatal(err)
		}
		var v struct {
			Patterns []string `json:"index_patterns"`
			Template struct {
				Settings map[string]any `json:"settings"`
				Mappings struct {
					Dynamic    bool                      `json:"dynamic"`
					Properties map[string]map[string]any `json:"properties"`
				} `json:"mappings"`
			} `json:"template"`
		}
		if err := json.Unmarshal(b, &v); err != nil {
			t.Fatal(err)
		}
		if v.Patterns[0] != "dt-"+string(k)+"-*" {
			t.Errorf("%s pattern %v", k, v.Patterns)
		}
		if v.Template.Settings["number_of_shards"] != float64(3) {
			t.Errorf("%s shards %v", k, v.Template.Settings)
		}
		if typ := v.Template.Mappings.Properties["timestamp"]["type"]; typ != "date" {
			t.Errorf("%s timestamp mapped as %v", k, typ)
		}
	}
}

// TestSpanFieldsMapped checks that every JSON field of a span has a mapping,
// so no field is silently left unsearchable.
func TestSpanFieldsMapped(t *testing.T) {
	s := Span{SpanID: "x", ParentSpanID: "y", ParentConfidence: 1, GoID: 1, NetNS: 1, Tags: map[string]string{"a": "b"}}
	s.Finish()
	b, _ := json.Marshal(s)
	var m map[string]any
	_ = json.Unmarshal(b, &m)
	props := spanFields()
	for f := range m {
		if _, ok := props[f]; !ok {
			t.Errorf("span field %q has no mapping", f)
		}
	}
}
