package api

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/api/internal/synth"
	"github.com/deeptrace/deeptrace/schemas"
)

// TestBigTrace: a trace of 50,000 spans is one document, fetched whole (no
// result window cuts it) and fast, through our API and Jaeger's.
func TestBigTrace(t *testing.T) {
	e := newEnv(t, 0, nil)
	const n = 50000
	big := synth.Trace(77, time.Now().UTC().Add(-30*time.Minute), n)
	t0 := time.Now()
	e.write(big)
	t.Logf("wrote a %d-span trace in %s", big.SpanCount, time.Since(t0).Round(time.Millisecond))

	want := make(map[string]bool, n)
	for _, s := range big.Spans {
		want[s.SpanID] = true
	}
	for _, round := range []string{"miss", "skip"} {
		t0 = time.Now()
		r := e.get("/api/v1/traces/"+big.TraceID, nil)
		took := time.Since(t0)
		var got schemas.Trace
		if err := json.Unmarshal(r.body, &got); err != nil {
			t.Fatal(err)
		}
		t.Logf("GET /api/v1/traces/{id}: %d spans, %.1f MB, %s (X-Cache %s)", len(got.Spans), float64(len(r.body))/1e6, took.Round(time.Millisecond), r.header.Get("X-Cache"))
		if len(got.Spans) != n || got.SpanCount != n {
			t.Fatalf("fetched %d spans (span_count %d), want %d", len(got.Spans), got.SpanCount, n)
		}
		for _, s := range got.Spans {
			if !want[s.SpanID] {
				t.Fatalf("span %s not in the trace written", s.SpanID)
			}
		}
		// Too big for the cache: it is read from the engine every time,
		// not evicting everything else.
		if round == "skip" && r.header.Get("X-Cache") != "skip" {
			t.Fatalf("X-Cache %q for a trace bigger than the cache's largest entry", r.header.Get("X-Cache"))
		}
		if took > 5*time.Second {
			t.Fatalf("fetching took %s", took)
		}
	}

	t0 = time.Now()
	r := e.get("/api/traces/"+big.TraceID, nil)
	took := time.Since(t0)
	var env jaegerEnvelope
	if err := json.Unmarshal(r.body, &env); err != nil {
		t.Fatal(err)
	}
	var traces []struct {
		Spans []struct {
			SpanID string `json:"spanID"`
		} `json:"spans"`
	}
	if err := json.Unmarshal(env.Data, &traces); err != nil {
		t.Fatal(err)
	}
	t.Logf("GET /api/traces/{id} (Jaeger): %d spans, %.1f MB, %s", len(traces[0].Spans), float64(len(r.body))/1e6, took.Round(time.Millisecond))
	if len(traces) != 1 || len(traces[0].Spans) != n {
		t.Fatalf("Jaeger fetch: %d traces, %d spans", len(traces), len(traces[0].Spans))
	}
	if took > 15*time.Second {
		t.Fatalf("Jaeger fetch took %s", took)
	}
}
