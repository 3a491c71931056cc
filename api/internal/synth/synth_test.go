package synth

import (
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
)

func TestTraceShape(t *testing.T) {
	start := time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)
	for _, n := range []int{2, 9, 500} {
		tr := Trace(7, start, n)
		if tr.SpanCount < n || tr.SpanCount > n+1 {
			t.Fatalf("asked %d spans, got %d", n, tr.SpanCount)
		}
		ids := map[string]bool{}
		for _, s := range tr.Spans {
			if ids[s.SpanID] {
				t.Fatalf("duplicate span id %s", s.SpanID)
			}
			ids[s.SpanID] = true
		}
		for _, s := range tr.Spans[1:] {
			if !ids[s.TraceParentID] {
				t.Fatalf("span %s parent %q not in trace", s.SpanID, s.TraceParentID)
			}
		}
		if tr.RootService != "gateway" || !schemas.ValidID(tr.TraceID, 32) {
			t.Fatalf("root %s id %s", tr.RootService, tr.TraceID)
		}
	}
	if Trace(7, start, 9).TraceID == Trace(8, start, 9).TraceID {
		t.Fatal("traces 7 and 8 share an id")
	}
}
