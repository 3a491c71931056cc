package bench

import (
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"time"

	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/eval"
	"github.com/deeptrace/deeptrace/eval/capfile"
	"github.com/deeptrace/deeptrace/schemas"
)

// Recorded is one line of a correlator recording (agent/correlate/testdata):
// what the correlator of one process received, in order, with the true
// parent of each call. Exactly one of Span, InFlight, Go and Now is set.
type Recorded struct {
	Span     *schemas.Span       `json:"span,omitempty"`
	Exchange *protocol.Exchange  `json:"ex,omitempty"`
	Parent   string              `json:"parent,omitempty"`
	InFlight *conntrack.InFlight `json:"inflight,omitempty"`
	Go       *event.GoEvent      `json:"go,omitempty"`
	Now      int64               `json:"now,omitempty"`
}

type recordSink struct {
	pid   uint32
	items []Recorded
	last  int64
}

func (r *recordSink) Span(s schemas.Span, ex *protocol.Exchange) {
	if s.PID == r.pid {
		x := *ex
		r.items = append(r.items, Recorded{Span: &s, Exchange: &x})
	}
}

func (r *recordSink) RequestStart(f conntrack.InFlight) {
	if f.PID == r.pid {
		r.items = append(r.items, Recorded{InFlight: &f})
	}
}

func (r *recordSink) GoEvent(g event.GoEvent) {
	if g.PID == r.pid {
		r.items = append(r.items, Recorded{Go: &g})
	}
}

func (r *recordSink) Advance(now int64) {
	if now-r.last >= 10e6 { // a tick per 10ms of event time is plenty
		r.last = now
		r.items = append(r.items, Recorded{Now: now})
	}
}

// ExportRecording replays a capture and writes, gzip-compressed, what the
// correlator of one service received during a window that holds calls
// first..first+calls-1 (by arrival), with each call's true parent from the
// truth logs.
func ExportRecording(capPath, truthDir, service string, first, calls int, w io.Writer) error {
	t, err := eval.LoadTruth(truthDir)
	if err != nil {
		return err
	}
	meta, err := capfile.ReadMeta(capPath)
	if err != nil {
		return err
	}
	var pid uint32
	for p, s := range meta.Services {
		if s == service {
			pid = p
		}
	}
	if pid == 0 {
		return fmt.Errorf("service %q not in the capture", service)
	}
	rs := &recordSink{pid: pid}
	if _, _, err := Replay(capPath, rs); err != nil {
		return err
	}
	var spans []schemas.Span
	values := map[string][]string{}
	for _, it := range rs.items {
		if it.Span != nil {
			spans = append(spans, *it.Span)
			values[it.Span.SpanID] = it.Exchange.Values
		}
	}
	m := eval.Match(t, spans, values)
	parent := map[string]string{}
	for _, o := range t.Outs {
		cs, p := m.Span[o], o.Parent()
		if cs == nil || p == nil || m.Span[p] == nil {
			continue
		}
		parent[cs.SpanID] = m.Span[p].SpanID
	}
	var idx []int
	for i, it := range rs.items {
		if it.Span != nil && it.Span.Role == schemas.RoleClient {
			idx = append(idx, i)
		}
	}
	// The window: from a margin before the first wanted call's request to
	// a margin after the last one arrived, by the ticks of event time
	// (items come in arrival order, not in order of their own times).
	if first+calls > len(idx) {
		return fmt.Errorf("service %s has %d calls, wanted %d from %d", service, len(idx), calls, first)
	}
	lo, hi := idx[first], idx[first+calls-1]+1
	from := rs.items[lo].Span.StartNs - 300e6
	for lo > 0 && (rs.items[lo-1].Now == 0 || rs.items[lo-1].Now >= from) {
		lo--
	}
	until := rs.items[idx[first+calls-1]].Span.EndNs + 1500e6
	for hi < len(rs.items) && (rs.items[hi].Now == 0 || rs.items[hi].Now <= until) {
		hi++
	}
	wanted := map[string]bool{}
	for _, i := range idx[first : first+calls] {
		wanted[rs.items[i].Span.SpanID] = true
	}
	// Goroutine events reach the correlator ahead of the data events of
	// the same time (capture holds data back to order it, they are not):
	// take those of the window by their own time, first.
	window := make([]Recorded, 0, hi-lo)
	for _, it := range rs.items {
		if it.Go != nil && int64(it.Go.Ns) >= from-time.Second.Nanoseconds() && int64(it.Go.Ns) <= until {
			window = append(window, it)
		}
	}
	for _, it := range rs.items[lo:hi] {
		if it.Go == nil {
			window = append(window, it)
		}
	}
	zw := gzip.NewWriter(w)
	enc := json.NewEncoder(zw)
	for _, it := range window {
		// Only the wanted calls carry their parent: those at the margins
		// may have parents outside the window.
		if it.Span != nil && wanted[it.Span.SpanID] {
			it.Parent = parent[it.Span.SpanID]
		}
		if it.Span != nil { // the correlator needs none of these
			sp := *it.Span
			sp.Tags, sp.TagKV, sp.StatusText, sp.Process, sp.Host = nil, nil, "", "", ""
			sp.Conn, sp.Method, sp.Path = schemas.Conn{}, "", ""
			it.Span = &sp
		}
		if it.Exchange != nil {
			it.Exchange.Tags = nil
		}
		if err := enc.Encode(it); err != nil {
			return err
		}
	}
	return zw.Close()
}
