package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	jmodel "github.com/jaegertracing/jaeger/model"
	ui "github.com/jaegertracing/jaeger/model/json"

	"github.com/deeptrace/deeptrace/api/internal/synth"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// Jaeger compatibility: our /api/ answers decode with Jaeger's own UI
// types (github.com/jaegertracing/jaeger/model/json, v1.62), strictly (no
// field Jaeger does not know), for requests in the forms Jaeger UI and
// Grafana's Jaeger data source send.

// jaegerEnvelope is Jaeger's structuredResponse (unexported there).
type jaegerEnvelope struct {
	Data   json.RawMessage `json:"data"`
	Total  int             `json:"total"`
	Limit  int             `json:"limit"`
	Offset int             `json:"offset"`
	Errors []struct {
		Code    int        `json:"code"`
		Msg     string     `json:"msg"`
		TraceID ui.TraceID `json:"traceID"`
	} `json:"errors"`
}

func strictDecode(t *testing.T, b []byte, v any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		t.Fatalf("decode %T strictly: %v\n%s", v, err, truncate(b))
	}
}

// jaegerGet fetches a Jaeger API path and decodes its data into v.
func (e *env) jaegerGet(t *testing.T, path string, v any) jaegerEnvelope {
	t.Helper()
	r := e.get(path, nil)
	var env jaegerEnvelope
	strictDecode(t, r.body, &env)
	if v != nil {
		strictDecode(t, env.Data, v)
	}
	return env
}

// checkJaegerTrace checks a Jaeger trace against the seeded one.
func checkJaegerTrace(t *testing.T, got ui.Trace, want *schemas.Trace) {
	t.Helper()
	if _, err := jmodel.TraceIDFromString(string(got.TraceID)); err != nil || string(got.TraceID) != want.TraceID {
		t.Fatalf("trace id %q (%v), want %s", got.TraceID, err, want.TraceID)
	}
	if len(got.Spans) != want.SpanCount {
		t.Fatalf("trace %s: %d spans, want %d", want.TraceID, len(got.Spans), want.SpanCount)
	}
	ids := map[ui.SpanID]bool{}
	for _, s := range got.Spans {
		ids[s.SpanID] = true
	}
	roots := 0
	for i, s := range got.Spans {
		ws := &want.Spans[i]
		if _, err := jmodel.SpanIDFromString(string(s.SpanID)); err != nil {
			t.Fatalf("span id %q: %v", s.SpanID, err)
		}
		if s.OperationName != ws.Operation || s.StartTime != uint64(ws.StartNs/1000) || s.Duration != uint64(ws.DurationNs/1000) {
			t.Fatalf("span %s: %s at %d for %d µs, want %s at %d for %d", s.SpanID, s.OperationName, s.StartTime, s.Duration,
				ws.Operation, ws.StartNs/1000, ws.DurationNs/1000)
		}
		p, ok := got.Processes[s.ProcessID]
		if !ok || p.ServiceName != ws.Service {
			t.Fatalf("span %s: process %q = %+v, want service %s", s.SpanID, s.ProcessID, p, ws.Service)
		}
		switch len(s.References) {
		case 0:
			roots++
		case 1:
			ref := s.References[0]
			if ref.RefType != ui.ChildOf || ref.TraceID != got.TraceID || !ids[ref.SpanID] || string(ref.SpanID) != ws.TraceParentID {
				t.Fatalf("span %s reference %+v, want CHILD_OF %s", s.SpanID, ref, ws.TraceParentID)
			}
		default:
			t.Fatalf("span %s has %d references", s.SpanID, len(s.References))
		}
		tags := map[string]ui.KeyValue{}
		for _, kv := range s.Tags {
			tags[kv.Key] = kv
		}
		if k := tags["span.kind"]; k.Value != string(ws.Role) || k.Type != ui.StringType {
			t.Fatalf("span %s span.kind %+v, want %s", s.SpanID, k, ws.Role)
		}
		if sc, ok := tags["http.status_code"]; ok && (sc.Type != ui.Int64Type || fmt.Sprint(sc.Value) != ws.Tags["http.status_code"]) {
			t.Fatalf("span %s http.status_code %+v", s.SpanID, sc)
		}
		if ws.Error && tags["error"].Value != true {
			t.Fatalf("span %s failed but has no error=true tag", s.SpanID)
		}
		for _, k := range []string{"protocol", "deeptrace.tuple", "net.peer.ip", "host.name"} {
			if _, ok := tags[k]; !ok {
				t.Fatalf("span %s lacks tag %s", s.SpanID, k)
			}
		}
	}
	if roots != 1 {
		t.Fatalf("trace %s has %d roots", want.TraceID, roots)
	}
}

func TestJaegerCompatibility(t *testing.T) {
	e := newEnv(t, 120, nil)
	// A recent trace for lookback-only searches.
	recent := synth.Trace(1001, time.Now().UTC().Add(-10*time.Minute), 6)
	e.write(recent)
	byID := map[string]*schemas.Trace{recent.TraceID: &recent}
	for i := range e.traces {
		byID[e.traces[i].TraceID] = &e.traces[i]
	}
	start, end := e.base.UnixMicro(), e.base.Add(time.Hour).UnixMicro()

	t.Run("services", func(t *testing.T) {
		var svcs []string
		env := e.jaegerGet(t, "/api/services", &svcs)
		if !slices.Equal(svcs, []string{"gateway", "inventory", "orders", "payments", "users"}) || env.Total != 5 || env.Errors != nil {
			t.Fatalf("services %v total %d errors %v", svcs, env.Total, env.Errors)
		}
	})
	t.Run("operations", func(t *testing.T) {
		var ops []string
		e.jaegerGet(t, "/api/services/gateway/operations", &ops)
		if !slices.Equal(ops, opsOf(append(slices.Clone(e.traces), recent), "gateway")) {
			t.Fatalf("operations %v", ops)
		}
		var kinds []ui.Operation
		e.jaegerGet(t, "/api/operations?service=orders&spanKind=server", &kinds)
		if len(kinds) == 0 || kinds[0].Name == "" {
			t.Fatalf("operations with kinds %+v", kinds)
		}
		// Grafana URL-encodes service names.
		e.jaegerGet(t, "/api/services/"+url.PathEscape("gateway")+"/operations", &ops)
	})

	// A tag value holding ':' ("GET user:7"): Jaeger splits at the first.
	stmt := ""
	for _, tr := range e.traces {
		for _, kv := range tr.TagKV {
			if v, ok := strings.CutPrefix(kv, "db.statement="); ok && stmt == "" {
				stmt = v
			}
		}
	}
	searches := []struct {
		name  string
		query url.Values
		limit int
		keep  func(int, *schemas.Trace) bool
	}{
		{"jaeger ui search", url.Values{
			"service": {"gateway"}, "operation": {"POST /api/orders"}, "start": {fmt.Sprint(start)}, "end": {fmt.Sprint(end)},
			"limit": {"20"}, "lookback": {"custom"}, "minDuration": {"100ms"}, "maxDuration": {"1s"},
		}, 20, func(i int, t *schemas.Trace) bool {
			return synth.RootOperation(i) == "POST /api/orders" && t.DurationNs >= 100e6 && t.DurationNs <= 1e9
		}},
		{"repeated tag key:value", url.Values{
			"service": {"orders"}, "start": {fmt.Sprint(start)}, "end": {fmt.Sprint(end)}, "limit": {"200"},
			"tag": {"db.system:mysql", "http.method:GET"},
		}, 200, func(_ int, t *schemas.Trace) bool {
			return slices.Contains(t.Services, "orders") && hasKV(t, "db.system=mysql") && hasKV(t, "http.method=GET")
		}},
		{"tags as json (grafana)", url.Values{
			"service": {"gateway"}, "start": {fmt.Sprint(start)}, "end": {fmt.Sprint(end)}, "limit": {"200"},
			"tags": {`{"error":"true","http.status_code":"500"}`},
		}, 200, func(_ int, t *schemas.Trace) bool { return t.Error && hasKV(t, "http.status_code=500") }},
		{"value with a colon", url.Values{
			"service": {"gateway"}, "start": {fmt.Sprint(start)}, "end": {fmt.Sprint(end)}, "tag": {"db.statement:" + stmt},
		}, 100, func(_ int, t *schemas.Trace) bool { return hasKV(t, "db.statement="+stmt) }},
		{"lookback only", url.Values{"service": {"gateway"}, "lookback": {"1h"}, "limit": {"20"}}, 20,
			func(int, *schemas.Trace) bool { return false }},
	}
	for _, c := range searches {
		t.Run(c.name, func(t *testing.T) {
			var traces []ui.Trace
			e.jaegerGet(t, "/api/traces?"+c.query.Encode(), &traces)
			want := e.expect(c.limit, c.keep)
			if c.name == "lookback only" {
				want = []string{recent.TraceID}
			}
			if len(want) == 0 {
				t.Fatal("test data selects nothing")
			}
			got := []string{}
			for _, tr := range traces {
				got = append(got, string(tr.TraceID))
				checkJaegerTrace(t, tr, byID[string(tr.TraceID)])
			}
			if !slices.Equal(got, want) {
				t.Fatalf("got %v\nwant %v", got, want)
			}
		})
	}

	t.Run("traces by id", func(t *testing.T) {
		missing := "00000000000000000000000000abcdef"
		var traces []ui.Trace
		env := e.jaegerGet(t, "/api/traces?traceID="+e.traces[3].TraceID+"&traceID="+missing, &traces)
		if len(traces) != 1 || len(env.Errors) != 1 || env.Errors[0].TraceID != ui.TraceID(missing) {
			t.Fatalf("%d traces, errors %+v", len(traces), env.Errors)
		}
		checkJaegerTrace(t, traces[0], &e.traces[3])
	})
	t.Run("trace", func(t *testing.T) {
		var traces []ui.Trace
		e.jaegerGet(t, "/api/traces/"+e.traces[5].TraceID, &traces)
		checkJaegerTrace(t, traces[0], &e.traces[5])
		r := e.req("GET", "/api/traces/"+"0123456789abcdef0123456789abcdef", viewerToken, nil)
		var env jaegerEnvelope
		strictDecode(t, r.body, &env)
		if r.status != 404 || len(env.Errors) != 1 || env.Errors[0].Code != 404 || string(env.Data) != "null" {
			t.Fatalf("missing trace: %d %s", r.status, r.body)
		}
	})
	t.Run("dependencies", func(t *testing.T) {
		endTs := e.base.Add(time.Hour).UnixMilli()
		path := fmt.Sprintf("/api/dependencies?endTs=%d&lookback=%d", endTs, time.Hour.Milliseconds())
		var links []ui.DependencyLink
		e.jaegerGet(t, path, &links)
		var spans [][]schemas.TraceSpan
		for _, tr := range e.traces {
			spans = append(spans, tr.Spans)
		}
		want := map[string]uint64{}
		for _, ed := range store.DependencyEdges(spans) {
			want[ed.Parent+">"+ed.Child] = uint64(ed.Calls)
		}
		if len(links) != len(want) {
			t.Fatalf("%d links, want %d", len(links), len(want))
		}
		for _, l := range links {
			if want[l.Parent+">"+l.Child] != l.CallCount {
				t.Fatalf("link %+v, want %d calls", l, want[l.Parent+">"+l.Child])
			}
		}
	})
}
