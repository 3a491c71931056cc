package pipeline

import (
	"context"
	"fmt"
	"net/netip"
	"sync"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/correlate"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/protocol/detect"
	"github.com/deeptrace/deeptrace/schemas"
)

// liveSource plays a server that, for each request, calls a backend before
// answering, in real time: event timestamps are wall-clock ns. Every 20th
// request's backend call is slow, so its spans are held for a while. Once,
// the source stalls for a second between taking an event and sending it,
// longer than correlation holds a call, as a reader descheduled on a loaded
// machine may: events are not always handed on soon after they happen.
type liveSource struct {
	requests int
	gap      time.Duration

	mu   sync.Mutex
	idle bool   // not about to take an event
	at   uint64 // the last send ended then
	sent uint64
}

func (l *liveSource) Run(ctx context.Context, out chan<- event.Event, _ chan<- event.GoEvent) error {
	srv := event.Event{PID: 7, TID: 7, Comm: "api", SockID: 1, Role: event.RoleServer,
		Local: netip.MustParseAddrPort("10.0.0.1:8080"), Remote: netip.MustParseAddrPort("10.0.0.9:40000")}
	now := func() uint64 { return uint64(time.Now().UnixNano()) }
	emit := func(e event.Event, stall time.Duration) {
		l.mu.Lock()
		l.idle = false
		l.mu.Unlock()
		e.EnterNs = now()
		e.ExitNs = now()
		time.Sleep(stall)
		select {
		case out <- e:
		case <-ctx.Done():
		}
		l.mu.Lock()
		l.sent++
		l.at, l.idle = now(), true
		l.mu.Unlock()
	}
	acc := srv
	acc.Kind = event.KindAccept
	emit(acc, 0)
	var seqIn, seqOut, cSeqIn, cSeqOut uint32 = 1, 1, 1, 1
	send := func(base event.Event, dir event.Direction, seq *uint32, payload string, stall time.Duration) {
		e := base
		e.Kind, e.Dir, e.Payload, e.Size, e.TCPSeq = event.KindData, dir, []byte(payload), int64(len(payload)), *seq
		*seq += uint32(len(payload))
		emit(e, stall)
	}
	for i := 0; i < l.requests && ctx.Err() == nil; i++ {
		// Each backend call on a connection of its own, so a slow one does
		// not hold the others up.
		cli := event.Event{PID: 7, TID: 8, Comm: "api", SockID: uint64(100 + i), Role: event.RoleClient,
			Local: netip.AddrPortFrom(netip.MustParseAddr("10.0.0.1"), uint16(20000+i)), Remote: netip.MustParseAddrPort("10.0.0.2:9000")}
		var stall time.Duration
		if i == 30 {
			stall = time.Second
		}
		send(srv, event.Ingress, &seqIn, fmt.Sprintf("GET /r/%d HTTP/1.1\r\nHost: api\r\n\r\n", i), stall)
		send(cli, event.Egress, &cSeqOut, fmt.Sprintf("GET /b/%d HTTP/1.1\r\nHost: b\r\n\r\n", i), 0)
		if i%20 == 19 {
			time.Sleep(1200 * time.Millisecond)
		}
		send(cli, event.Ingress, &cSeqIn, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0)
		send(srv, event.Egress, &seqOut, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 0)
		time.Sleep(l.gap)
	}
	<-ctx.Done()
	return nil
}

// Frontier: while the source is idle, nothing it sends later can be older
// than now; else its last send is as far as it has gone.
func (l *liveSource) Frontier() (uint64, uint64, bool) {
	t := uint64(time.Now().UnixNano()) // before looking: a later event is newer
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.idle {
		return t, l.sent, true
	}
	return l.at, l.sent, true
}

// progressLog records each span with the progress reported before it was
// added.
type progressLog struct {
	mu       sync.Mutex
	progress int64
	reports  int
	late     []string
	spans    int
	last     int64    // the latest end of a span handed on
	got      []string // "path status" of each span, in order
}

func (p *progressLog) Add(s schemas.Span) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.spans++
	p.last = max(p.last, s.EndNs)
	p.got = append(p.got, fmt.Sprintf("%s %d", s.Path, s.StatusCode))
	if s.StartNs < p.progress {
		p.late = append(p.late, fmt.Sprintf("%s %s started %s before the progress already reported", s.Role, s.Operation, time.Duration(p.progress-s.StartNs)))
	}
}

func (p *progressLog) Progress(w int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if w < p.progress {
		p.late = append(p.late, fmt.Sprintf("progress went back by %s", time.Duration(p.progress-w)))
	}
	p.progress = max(p.progress, w)
	p.reports++
}

// The pipeline's progress never passes a span it has not handed on yet:
// not one held by correlation (decided 2s after the call), nor one whose
// backend call is slow, nor one its source was slow to hand over. And it
// keeps up: once the traffic stops, it passes the end of the last span.
func TestProgressNeverPassesAHeldSpan(t *testing.T) {
	out := &progressLog{}
	corr, err := correlate.New(correlate.Config{Delay: 500 * time.Millisecond, MaxWait: time.Second}, out.Add)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	src := &liveSource{requests: 60, gap: 20 * time.Millisecond}
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		done <- Run(ctx, Config{
			Conntrack:  conntrack.Config{Host: "h", Wall: func(m uint64) int64 { return int64(m) }},
			Protocols:  detect.Registry{},
			Correlator: corr, Output: out,
			Mono: func(w int64) uint64 { return uint64(w) },
		}, src)
	}()
	// 60 requests take about 6s; then the last decisions and the source's
	// delay. Wait until every span is out and the progress has passed
	// them (at most 30s, for a loaded machine).
	var (
		spans, reports int
		progress, last int64
		late           []string
	)
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		out.mu.Lock()
		spans, progress, reports, late, last = out.spans, out.progress, out.reports, out.late, out.last
		out.mu.Unlock()
		if spans == 120 && progress > last || time.Now().After(deadline) {
			break
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if len(late) > 0 {
		t.Fatalf("%d spans behind the progress, first: %s", len(late), late[0])
	}
	if spans != 120 {
		t.Fatalf("%d spans, want 120", spans)
	}
	if reports < 20 || progress <= last || time.Unix(0, progress).Before(start) {
		t.Fatalf("progress stuck: %d reports, the last %s behind now and %s behind the last span's end",
			reports, time.Since(time.Unix(0, progress)), time.Duration(last-progress))
	}
	t.Logf("%d spans, %d progress reports, the last %s behind now", spans, reports, time.Since(time.Unix(0, progress)).Round(time.Millisecond))
}

// fixedFront is a FrontierSource whose front the test sets.
type fixedFront struct{ at, sent uint64 }

func (fixedFront) Run(context.Context, chan<- event.Event, chan<- event.GoEvent) error { return nil }
func (f *fixedFront) Frontier() (uint64, uint64, bool)                                 { return f.at, f.sent, true }

// A source's front counts only once the events it had sent by then are
// handled; until then the previous one stands, and the front never goes
// back.
func TestReadFrontWaitsForTheEventsSentBeforeIt(t *testing.T) {
	src := &fixedFront{}
	cfg := &Config{Conntrack: conntrack.Config{Wall: func(m uint64) int64 { return int64(m) }}, SourceDelay: 10}
	r := readFront{src: src}
	const now = 1e6
	src.sent = 1
	if _, ok := r.front(cfg, now, 1); ok {
		t.Fatal("a front before the source gave one counted")
	}
	steps := []struct {
		at, sent, handled uint64
		want              int64
	}{
		{1000, 0, 0, 990},
		{2000, 5, 3, 990},  // two of the five sent are still in the channel
		{3000, 9, 5, 1990}, // the five are handled: the previous front counts
		{4000, 9, 9, 3990},
		{3500, 9, 9, 3990}, // never back
		// A pipeline more than a tick behind: the fronts given meanwhile
		// count as their events get handled, the newest first.
		{5000, 20, 9, 3990},
		{6000, 30, 12, 3990},
		{7000, 40, 21, 4990},
		{8000, 50, 35, 5990},
		{9000, 60, 60, 8990},
	}
	for i, s := range steps {
		src.at, src.sent = s.at, s.sent
		for r.n < s.handled {
			r.handled(&event.Event{ExitNs: 1})
		}
		if got, ok := r.front(cfg, now, int(s.sent-s.handled)); got != s.want || !ok {
			t.Fatalf("step %d: front %d %v, want %d", i, got, ok, s.want)
		}
	}
}

// laggingSource plays a reader that lags: every event happened two seconds
// before it is handed on, and a server's answer is handed on before the
// request it answers (as capture's reordering may hold a read while a
// write goes by), 300ms apart. Its front stays before the oldest event it
// has not handed on.
type laggingSource struct {
	mu      sync.Mutex
	pending []event.Event // not sent yet
	sent    uint64
}

func (l *laggingSource) Run(ctx context.Context, out chan<- event.Event, _ chan<- event.GoEvent) error {
	srv := event.Event{PID: 7, TID: 7, Comm: "api", SockID: 1, Role: event.RoleServer, Kind: event.KindData,
		Local: netip.MustParseAddrPort("10.0.0.1:8080"), Remote: netip.MustParseAddrPort("10.0.0.9:40000")}
	base := uint64(time.Now().Add(-2 * time.Second).UnixNano())
	var in, eg uint32 = 1, 1
	l.mu.Lock()
	for i := range 5 {
		at := base + uint64(i)*uint64(20*time.Millisecond)
		rq := fmt.Sprintf("GET /r/%d HTTP/1.1\r\nHost: api\r\n\r\n", i)
		rs := fmt.Sprintf("HTTP/1.1 %d OK\r\nContent-Length: 0\r\n\r\n", 200+i)
		r, w := srv, srv
		r.Dir, r.EnterNs, r.ExitNs, r.TCPSeq, r.Size, r.Payload = event.Ingress, at, at+1000, in, int64(len(rq)), []byte(rq)
		w.Dir, w.EnterNs, w.ExitNs, w.TCPSeq, w.Size, w.Payload = event.Egress, at+5000, at+6000, eg, int64(len(rs)), []byte(rs)
		in += uint32(len(rq))
		eg += uint32(len(rs))
		l.pending = append(l.pending, w, r) // the answer first
	}
	l.mu.Unlock()
	for ctx.Err() == nil {
		l.mu.Lock()
		if len(l.pending) == 0 {
			l.mu.Unlock()
			break
		}
		e := l.pending[0]
		l.mu.Unlock()
		select {
		case out <- e:
		case <-ctx.Done():
			return nil
		}
		l.mu.Lock()
		l.pending = l.pending[1:]
		l.sent++
		l.mu.Unlock()
		time.Sleep(300 * time.Millisecond)
	}
	<-ctx.Done()
	return nil
}

func (l *laggingSource) Frontier() (uint64, uint64, bool) {
	now := uint64(time.Now().UnixNano())
	l.mu.Lock()
	defer l.mu.Unlock()
	at := now
	for _, e := range l.pending {
		at = min(at, e.DataAt()-1)
	}
	return at, l.sent, true
}

// Held calls wait for the events the source has not handed on yet, not for
// the clock: with a reader two seconds behind, each request still gets its
// own answer although the answer was handed on 300ms before the request.
func TestLaggingSourceKeepsAnswersWithTheirRequests(t *testing.T) {
	out := &progressLog{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Run(ctx, Config{
			Conntrack: conntrack.Config{Host: "h", Wall: func(m uint64) int64 { return int64(m) }},
			Protocols: detect.Registry{},
			Output:    out,
			Mono:      func(w int64) uint64 { return uint64(w) },
		}, &laggingSource{})
	}()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		out.mu.Lock()
		n := out.spans
		out.mu.Unlock()
		if n == 5 || time.Now().After(deadline) {
			break
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	out.mu.Lock()
	defer out.mu.Unlock()
	if len(out.got) != 5 {
		t.Fatalf("%d spans, want 5: %v", len(out.got), out.got)
	}
	for i, s := range out.got {
		if want := fmt.Sprintf("/r/%d %d", i, 200+i); s != want {
			t.Errorf("span %d: %s, want %s", i, s, want)
		}
	}
}
