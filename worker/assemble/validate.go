package assemble

import (
	"fmt"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
)

// Validate checks an assembled trace: one root, every parent inside the
// trace, no cycle, depths that follow the parents, and every child within
// its parent's time (Skew across an exchange, LocalSlack for a local
// parent). Build only produces valid traces; Validate is what tests and
// the worker's sanity check hold it to.
func Validate(t *schemas.Trace, opt Options) error {
	opt = opt.withDefaults()
	if len(t.Spans) == 0 {
		return fmt.Errorf("trace %s: no spans", t.TraceID)
	}
	byID := make(map[string]int, len(t.Spans))
	for i := range t.Spans {
		id := t.Spans[i].SpanID
		if _, dup := byID[id]; dup {
			return fmt.Errorf("trace %s: span %s twice", t.TraceID, id)
		}
		byID[id] = i
	}
	roots := 0
	for i := range t.Spans {
		s := &t.Spans[i]
		if s.TraceParentID == "" {
			roots++
			if s.SpanID != t.RootSpanID {
				return fmt.Errorf("trace %s: span %s has no parent but the root is %s", t.TraceID, s.SpanID, t.RootSpanID)
			}
			if s.Depth != 0 {
				return fmt.Errorf("trace %s: root %s at depth %d", t.TraceID, s.SpanID, s.Depth)
			}
			continue
		}
		pi, ok := byID[s.TraceParentID]
		if !ok {
			return fmt.Errorf("trace %s: span %s has parent %s outside the trace", t.TraceID, s.SpanID, s.TraceParentID)
		}
		p := &t.Spans[pi]
		if s.Depth != p.Depth+1 {
			return fmt.Errorf("trace %s: span %s at depth %d under a parent at depth %d", t.TraceID, s.SpanID, s.Depth, p.Depth)
		}
		tol := opt.Skew
		if s.LinkKind == schemas.LinkLocal {
			tol = opt.LocalSlack
		}
		if s.StartNs < p.StartNs-int64(tol) || s.EndNs > p.EndNs+int64(tol) {
			return fmt.Errorf("trace %s: span %s [%d,%d] outside its parent %s [%d,%d] by more than %s",
				t.TraceID, s.SpanID, s.StartNs, s.EndNs, p.SpanID, p.StartNs, p.EndNs, time.Duration(tol))
		}
	}
	if roots != 1 {
		return fmt.Errorf("trace %s: %d roots", t.TraceID, roots)
	}
	// Depths that follow the parents from one root rule out cycles: a
	// cycle would need a span deeper than itself.
	if t.TraceID != schemas.TraceID(t.RootSpanID) {
		return fmt.Errorf("trace %s: id not derived from root %s", t.TraceID, t.RootSpanID)
	}
	if t.SpanCount != len(t.Spans) {
		return fmt.Errorf("trace %s: span_count %d for %d spans", t.TraceID, t.SpanCount, len(t.Spans))
	}
	return nil
}
