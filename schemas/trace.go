package schemas

import (
	"sort"
	"time"
)

// TraceSpan is a span as it sits inside an assembled trace: the span itself
// and the parent assembly chose for it.
type TraceSpan struct {
	Span
	// TraceParentID is the parent in the assembled tree (empty for the root).
	// For a server span it is the client span of the same exchange; for a
	// client span it is the local parent. Span.ParentSpanID keeps the agent's
	// local choice for comparison.
	TraceParentID string `json:"trace_parent_id,omitempty"`
	Depth         int    `json:"depth"`
	// LinkKind says how assembly found the parent: "local", "tuple" (same
	// connection and exchange), or "tcpseq" (same TCP positions through an
	// address translation).
	LinkKind string `json:"link_kind,omitempty"`
}

// Link kinds of TraceSpan.LinkKind.
const (
	LinkLocal  = "local"
	LinkTuple  = "tuple"
	LinkTCPSeq = "tcpseq"
)

// Trace is a tree of spans with one root, stored as one document in the
// daily trace indices; fetching a trace is one read.
type Trace struct {
	TraceID       string    `json:"trace_id"`
	RootSpanID    string    `json:"root_span_id"`
	RootService   string    `json:"root_service"`
	RootOperation string    `json:"root_operation"`
	Timestamp     time.Time `json:"timestamp"`
	StartNs       int64     `json:"start_ns"`
	EndNs         int64     `json:"end_ns"`
	DurationNs    int64     `json:"duration_ns"`
	Error         bool      `json:"error"`
	SpanCount     int       `json:"span_count"`
	Services      []string  `json:"services"`
	// Operations are "service operation" pairs, for search by operation.
	Operations []string `json:"operations"`
	Hosts      []string `json:"hosts"`
	TagKV      []string `json:"tag_kv,omitempty"`
	// Window is the start of the assembly window that produced the trace.
	Window      time.Time   `json:"window"`
	AssembledAt time.Time   `json:"assembled_at"`
	Spans       []TraceSpan `json:"spans"`
}

// Summarize fills a trace's search fields from its spans and root. The root
// must be among spans.
func (t *Trace) Summarize(root *Span) {
	t.RootSpanID = root.SpanID
	t.TraceID = TraceID(root.SpanID)
	t.RootService = root.Service
	t.RootOperation = root.Operation
	t.SpanCount = len(t.Spans)
	services := map[string]bool{}
	ops := map[string]bool{}
	hosts := map[string]bool{}
	tags := map[string]bool{}
	t.StartNs, t.EndNs, t.Error = root.StartNs, root.EndNs, false
	for i := range t.Spans {
		s := &t.Spans[i].Span
		services[s.Service] = true
		ops[s.Service+" "+s.Operation] = true
		hosts[s.Host] = true
		for _, kv := range s.TagKV {
			tags[kv] = true
		}
		if s.Error {
			t.Error = true
		}
		if s.StartNs < t.StartNs {
			t.StartNs = s.StartNs
		}
		if s.EndNs > t.EndNs {
			t.EndNs = s.EndNs
		}
	}
	t.DurationNs = t.EndNs - t.StartNs
	t.Timestamp = time.Unix(0, t.StartNs).UTC()
	t.Services = keys(services)
	t.Operations = keys(ops)
	t.Hosts = keys(hosts)
	t.TagKV = keys(tags)
}

func keys(m map[string]bool) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}
