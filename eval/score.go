package eval

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/deeptrace/deeptrace/schemas"
)

// Counts are the tallies behind the scores of one service or of the whole
// run.
type Counts struct {
	// Links are the truth's parent links (outs with their parent in);
	// Matched those whose out and parent in both have a span; Predicted
	// the spans of truth outs that carry a parent; Correct those whose
	// parent is the span of the true parent in.
	Links     int `json:"links"`
	Matched   int `json:"matched"`
	Predicted int `json:"predicted"`
	Correct   int `json:"correct"`
	// Traces are requests: for the whole run the root requests, for a
	// service its incoming requests (each the root of a subtree).
	// TracesOK are those whose whole tree below is exactly right;
	// Captured those whose every exchange has a span, CapturedOK the
	// right ones among them.
	Traces     int `json:"traces"`
	TracesOK   int `json:"traces_ok"`
	Captured   int `json:"captured"`
	CapturedOK int `json:"captured_ok"`
}

func ratio(a, b int) float64 {
	if b == 0 {
		return 0
	}
	return float64(a) / float64(b)
}

// Precision is the share of predicted parent links that are right.
func (c Counts) Precision() float64 { return ratio(c.Correct, c.Predicted) }

// Recall is the share of the truth's parent links found.
func (c Counts) Recall() float64 { return ratio(c.Correct, c.Links) }

// TraceAccuracy is the share of requests whose whole trace is exactly
// right: every exchange captured, every parent link right.
func (c Counts) TraceAccuracy() float64 { return ratio(c.TracesOK, c.Traces) }

// CorrelationAccuracy is TraceAccuracy among the fully captured traces:
// what correlation got right of what capture gave it.
func (c Counts) CorrelationAccuracy() float64 { return ratio(c.CapturedOK, c.Captured) }

func (c *Counts) add(o Counts) {
	c.Links += o.Links
	c.Matched += o.Matched
	c.Predicted += o.Predicted
	c.Correct += o.Correct
}

// Report is the evaluation of one set of spans against one truth.
type Report struct {
	Method   string             `json:"method,omitempty"`
	Overall  Counts             `json:"overall"`
	Services map[string]*Counts `json:"services"`
	// Spans is how many spans were read; Ins/Outs the truth records and
	// MatchedIns/MatchedOuts those with a span.
	Spans       int `json:"spans"`
	Ins         int `json:"ins"`
	Outs        int `json:"outs"`
	MatchedIns  int `json:"matched_ins"`
	MatchedOuts int `json:"matched_outs"`
	// Problems counts truth that could not be linked and cross-service
	// pairs whose spans would not join.
	Problems map[string]int `json:"problems,omitempty"`
	// Wrong counts wrong or missing links by "service: parent op → child
	// op" (ops as the spans name them), for finding what to fix.
	Wrong map[string]int `json:"wrong,omitempty"`
}

// Evaluate scores spans against the truth; values are as for Match (may
// be nil).
func Evaluate(t *Truth, spans []schemas.Span, values map[string][]string) *Report {
	m := Match(t, spans, values)
	rep := &Report{Services: map[string]*Counts{}, Spans: len(spans), Ins: len(t.Ins), Problems: map[string]int{}, Wrong: map[string]int{}}
	for k, v := range t.Problems {
		rep.Problems[k] = v
	}
	svc := func(name string) *Counts {
		c := rep.Services[name]
		if c == nil {
			c = &Counts{}
			rep.Services[name] = c
		}
		return c
	}
	for _, r := range t.Ins {
		if m.Span[r] != nil {
			rep.MatchedIns++
		}
	}
	for _, o := range t.Outs {
		if o.Service == rootCaller {
			continue
		}
		rep.Outs++
		cs := m.Span[o]
		if cs != nil {
			rep.MatchedOuts++
		}
		p := o.parent
		if p == nil {
			continue
		}
		c := svc(o.Service)
		c.Links++
		ps := m.Span[p]
		if cs != nil && ps != nil {
			c.Matched++
		}
		if cs != nil && cs.ParentSpanID != "" {
			c.Predicted++
		}
		if cs != nil && ps != nil && cs.ParentSpanID == ps.SpanID {
			c.Correct++
		} else {
			rep.Wrong[wrongKey(o, p, cs, ps)]++
		}
	}
	for _, c := range rep.Services {
		rep.Overall.add(*c)
	}

	ok := map[*Record]bool{}
	captured := map[*Record]bool{}
	var walk func(r *Record) (bool, bool)
	walk = func(r *Record) (right, whole bool) {
		if v, seen := ok[r]; seen {
			return v, captured[r]
		}
		rs := m.Span[r]
		right, whole = rs != nil, rs != nil
		for _, o := range r.children {
			os := m.Span[o]
			if os == nil {
				right, whole = false, false
				continue
			}
			if rs == nil || os.ParentSpanID != rs.SpanID {
				right = false
			}
			if o.callee != nil {
				cs := m.Span[o.callee]
				if cs != nil && !joins(os, cs) {
					rep.Problems["client and server span would not join"]++
					right = false
				}
				cr, cw := walk(o.callee)
				right = right && cr
				whole = whole && cw
			}
		}
		ok[r], captured[r] = right, whole
		return right, whole
	}
	for _, r := range t.Ins {
		right, whole := walk(r)
		c := svc(r.Service)
		c.Traces++
		if right {
			c.TracesOK++
		}
		if whole {
			c.Captured++
			if right {
				c.CapturedOK++
			}
		}
	}
	for _, r := range t.Roots {
		right, whole := walk(r)
		rep.Overall.Traces++
		if right {
			rep.Overall.TracesOK++
		}
		if whole {
			rep.Overall.Captured++
			if right {
				rep.Overall.CapturedOK++
			}
		}
	}
	return rep
}

// joins says whether assembly would join a caller's client span with the
// callee's server span: same connection, same request position.
func joins(c, s *schemas.Span) bool {
	return c.Conn == s.Conn && (c.ReqTCPSeq == s.ReqTCPSeq || c.ReqTCPSeq == 0 || s.ReqTCPSeq == 0)
}

func wrongKey(o, p *Record, cs, ps *schemas.Span) string {
	what := "wrong parent"
	switch {
	case cs == nil:
		what = "call not captured"
	case ps == nil:
		what = "parent not captured"
	case cs.ParentSpanID == "":
		what = "no parent"
	}
	pop, cop := p.Operation(), o.Operation()
	if ps != nil {
		pop = ps.Operation
	}
	if cs != nil {
		cop = cs.Operation
	}
	return fmt.Sprintf("%s: %s: %s -> %s", o.Service, what, pop, cop)
}

// Print writes the report as text.
func (r *Report) Print(w io.Writer) {
	if r.Method != "" {
		fmt.Fprintf(w, "method %s\n", r.Method)
	}
	fmt.Fprintf(w, "spans %d; truth: %d in (%d matched to spans), %d out (%d matched)\n",
		r.Spans, r.Ins, r.MatchedIns, r.Outs, r.MatchedOuts)
	fmt.Fprintf(w, "%-10s %9s %9s %9s %9s %9s %10s %8s\n", "service", "trace-acc", "corr-acc", "traces", "precision", "recall", "links", "matched")
	names := make([]string, 0, len(r.Services))
	for n := range r.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	line := func(name string, c Counts) {
		fmt.Fprintf(w, "%-10s %8.2f%% %8.2f%% %9d %8.2f%% %8.2f%% %10d %8d\n", name,
			100*c.TraceAccuracy(), 100*c.CorrelationAccuracy(), c.Traces, 100*c.Precision(), 100*c.Recall(), c.Links, c.Matched)
	}
	for _, n := range names {
		line(n, *r.Services[n])
	}
	line("overall", r.Overall)
	if len(r.Problems) > 0 {
		var ps []string
		for k, v := range r.Problems {
			ps = append(ps, fmt.Sprintf("%s: %d", k, v))
		}
		sort.Strings(ps)
		fmt.Fprintf(w, "problems: %s\n", strings.Join(ps, "; "))
	}
}

// PrintWrong writes the n most frequent kinds of wrong link.
func (r *Report) PrintWrong(w io.Writer, n int) {
	type kv struct {
		k string
		v int
	}
	var l []kv
	for k, v := range r.Wrong {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool { return l[i].v > l[j].v || l[i].v == l[j].v && l[i].k < l[j].k })
	for i, e := range l {
		if i == n {
			break
		}
		fmt.Fprintf(w, "  %6d  %s\n", e.v, e.k)
	}
}
