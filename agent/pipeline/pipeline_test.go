package pipeline

import (
	"bytes"
	"context"
	"net/netip"
	"sync"
	"testing"

	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/eventlog"
	"github.com/deeptrace/deeptrace/agent/protocol/detect"
	"github.com/deeptrace/deeptrace/schemas"
)

type collect struct {
	mu    sync.Mutex
	spans []schemas.Span
}

func (c *collect) Add(s schemas.Span) { c.mu.Lock(); c.spans = append(c.spans, s); c.mu.Unlock() }

// Events recorded to an event log and played back through the pipeline
// come out as the spans of every exchange, drained at the end.
func TestRecordedEventsThroughPipeline(t *testing.T) {
	var buf bytes.Buffer
	w := eventlog.NewWriter(&buf)
	local := netip.MustParseAddrPort("127.0.0.1:8080")
	remote := netip.MustParseAddrPort("127.0.0.1:50000")
	const n = 20
	at := uint64(1000)
	base := event.Event{PID: 9, TID: 10, Comm: "srv", SockID: 77, Local: local, Remote: remote, Role: event.RoleServer}
	acc := base
	acc.Kind = event.KindAccept
	w.Event(&acc)
	reqSeq, respSeq := uint32(1), uint32(1)
	for i := 0; i < n; i++ {
		req := []byte("GET /items/" + string(rune('a'+i)) + " HTTP/1.1\r\nHost: x\r\n\r\n")
		resp := []byte("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
		r := base
		r.Kind, r.Dir, r.EnterNs, r.ExitNs, r.TCPSeq, r.Size, r.Payload = event.KindData, event.Ingress, at, at+5, reqSeq, int64(len(req)), req
		wr := base
		wr.Kind, wr.Dir, wr.EnterNs, wr.ExitNs, wr.TCPSeq, wr.Size, wr.Payload = event.KindData, event.Egress, at+50, at+60, respSeq, int64(len(resp)), resp
		w.Event(&r)
		w.Event(&wr)
		w.GoEvent(&event.GoEvent{Kind: event.GoCreate, PID: 9, GoID: uint64(i + 2), ParentGoID: 1})
		reqSeq += uint32(len(req))
		respSeq += uint32(len(resp))
		at += 100
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	out := &collect{}
	err := Run(context.Background(), Config{
		Conntrack: conntrack.Config{Host: "h", Wall: func(m uint64) int64 { return int64(m) }},
		Protocols: detect.Registry{}, Output: out,
	}, eventlog.NewReader(&buf))
	if err != nil {
		t.Fatal(err)
	}
	if len(out.spans) != n {
		t.Fatalf("%d spans, want %d", len(out.spans), n)
	}
	seen := map[string]bool{}
	for i, s := range out.spans {
		if s.Operation != "GET /items/"+string(rune('a'+i)) || s.Seq != uint64(i) || s.Role != schemas.RoleServer {
			t.Fatalf("span %d: %s seq %d role %s", i, s.Operation, s.Seq, s.Role)
		}
		if seen[s.SpanID] {
			t.Fatalf("duplicate span id %s", s.SpanID)
		}
		seen[s.SpanID] = true
	}
}

// A malformed event log is an error naming the line.
func TestMalformedEventLog(t *testing.T) {
	err := Run(context.Background(), Config{
		Conntrack: conntrack.Config{Host: "h", Wall: func(m uint64) int64 { return int64(m) }},
		Protocols: detect.Registry{}, Output: &collect{},
	}, eventlog.NewReader(bytes.NewBufferString("{\"e\":{\"Kind\":1}}\nnot json\n")))
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("line 2")) {
		t.Fatalf("error %v, want one naming line 2", err)
	}
}
