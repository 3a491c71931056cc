package export_test

import (
	"context"
	"errors"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/deeptrace/deeptrace/agent/export"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// spansAt builds n distinct spans starting at start, one per millisecond.
func spansAt(start time.Time, from, n int) []schemas.Span {
	out := make([]schemas.Span, n)
	for i := range out {
		k := from + i
		at := start.Add(time.Duration(k) * time.Millisecond)
		s := schemas.Span{Role: schemas.RoleServer, Protocol: schemas.ProtocolHTTP1, Operation: "GET /items",
			StartNs: at.UnixNano(), EndNs: at.Add(300 * time.Microsecond).UnixNano(), Service: "svc", Process: "svc",
			Conn: schemas.Conn{ClientIP: "10.0.0.1", ClientPort: uint16(20000 + k%40000), ServerIP: "10.0.0.2", ServerPort: 80},
			Seq:  uint64(k), ReqTCPSeq: uint32(k*7 + 1)}
		out[i] = s
	}
	return out
}

// distinctSpans counts the distinct span ids the engine holds for [from, to],
// and the documents (a duplicate would make them differ).
func distinctSpans(t *testing.T, s *store.Store, from, to time.Time) (ids, docs int) {
	t.Helper()
	ctx := context.Background()
	if err := s.Refresh(ctx, s.Indices().Pattern(schemas.KindSpans)); err != nil {
		t.Fatal(err)
	}
	got, err := s.Spans(ctx, store.Query{From: from, To: to, PageSize: 5000})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, sp := range got {
		seen[sp.SpanID] = true
	}
	return len(seen), len(got)
}

func run(_ testing.TB, e *export.Exporter) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); e.Run(ctx) }()
	return func() { cancel(); <-done }
}

func TestWritesBatchesAndMetrics(t *testing.T) {
	st := testenv.Store(t)
	reg := prometheus.NewRegistry()
	e, err := export.New(export.Config{Host: "host-a", BatchSize: 500, FlushInterval: 100 * time.Millisecond,
		SpoolDir: t.TempDir(), Registerer: reg}, st)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, e)
	start := time.Date(2026, 11, 25, 10, 59, 58, 0, time.UTC) // crosses an hour
	const n = 5000
	for _, s := range spansAt(start, 0, n) {
		e.Add(s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	stop()
	ids, docs := distinctSpans(t, st, start, start.Add(time.Minute))
	if ids != n || docs != n {
		t.Fatalf("engine holds %d spans (%d docs), want %d", ids, docs, n)
	}
	stats := e.Stats()
	if stats.Added != n || stats.Written != n || stats.DroppedTotal() != 0 || stats.Rejected != 0 {
		t.Fatalf("stats %+v", stats)
	}
	if got := testutil.ToFloat64(mustFind(t, reg, "deeptrace_export_spans_written_total")); got != n {
		t.Fatalf("written metric %v", got)
	}
	// Host was stamped and ids filled in.
	got, _ := st.Spans(context.Background(), store.Query{From: start, To: start.Add(time.Second), Limit: 1})
	if len(got) != 1 || got[0].Host != "host-a" || got[0].SpanID == "" || got[0].IngestedAt.IsZero() {
		t.Fatalf("stored span %+v", got)
	}
}

func mustFind(t *testing.T, reg *prometheus.Registry, name string) prometheus.Collector {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			v := mf.GetMetric()[0].GetCounter().GetValue()
			return prometheus.NewCounterFunc(prometheus.CounterOpts{Name: "x"}, func() float64 { return v })
		}
	}
	t.Fatalf("metric %s not registered", name)
	return nil
}

// cutProxy is a TCP proxy in front of the engine that a test can cut and
// restore: an outage of the engine as the agent sees it, without stopping
// the engine other tests share.
type cutProxy struct {
	target string
	addr   string
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	p := &cutProxy{target: target, conns: map[net.Conn]bool{}}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p.addr = ln.Addr().String()
	p.serve(ln)
	t.Cleanup(p.cut)
	return p
}

func (p *cutProxy) serve(ln net.Listener) {
	p.mu.Lock()
	p.ln = ln
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.pipe(c)
		}
	}()
}

func (p *cutProxy) pipe(c net.Conn) {
	up, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[up] = true, true
	p.mu.Unlock()
	go func() { io.Copy(up, c); up.Close() }()
	io.Copy(c, up)
	c.Close()
}

// cut closes the listener and every connection: the engine is gone.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		c.Close()
	}
	p.conns = map[net.Conn]bool{}
}

func (p *cutProxy) restore(t *testing.T) {
	ln, err := net.Listen("tcp", p.addr)
	if err != nil {
		t.Fatal(err)
	}
	p.serve(ln)
}

// While the engine is unreachable spans go to the spool; when it returns
// the spool is replayed, and every span is in the engine exactly once.
func TestOutageSpoolsAndReplays(t *testing.T) {
	st := testenv.Store(t)
	target := strings.TrimPrefix(testenv.ESURL(), "http://")
	px := newCutProxy(t, target)
	via, err := store.Open(store.Config{URLs: []string{"http://" + px.addr}, Engine: testenv.ESEngine(),
		Prefix: st.Indices().Prefix, Compress: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e, err := export.New(export.Config{Host: "host-a", BatchSize: 200, FlushInterval: 50 * time.Millisecond,
		SpoolDir: t.TempDir(), SpoolSegmentBytes: 16 << 10, RetryMin: 100 * time.Millisecond, RetryMax: 500 * time.Millisecond}, via)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, e)
	start := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	add := func(from, n int) {
		for _, s := range spansAt(start, from, n) {
			e.Add(s)
			if from%50 == 0 {
				time.Sleep(time.Millisecond) // a steady stream, not one burst
			}
			from++
		}
	}
	add(0, 1000)
	waitFor(t, 20*time.Second, "first spans written", func() bool { return e.Stats().Written >= 1000 })
	px.cut()
	add(1000, 3000)
	waitFor(t, 20*time.Second, "spans spooled while the engine is away", func() bool {
		s := e.Stats()
		return s.SpoolSpans > 0 && s.EngineDown && s.Queued == 0
	})
	t.Logf("during the outage: %+v", e.Stats())
	px.restore(t)
	add(4000, 1000)
	waitFor(t, 60*time.Second, "spool replayed", func() bool {
		s := e.Stats()
		return s.SpoolSpans == 0 && s.Written >= 5000
	})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Close(ctx); err != nil {
		t.Fatal(err)
	}
	stop()
	s := e.Stats()
	t.Logf("after: %+v", s)
	if s.Spooled == 0 || s.Replayed == 0 || s.DroppedTotal() != 0 {
		t.Fatalf("stats %+v: want spooled and replayed spans, none dropped", s)
	}
	ids, docs := distinctSpans(t, st, start, start.Add(time.Minute))
	if ids != 5000 || docs != 5000 {
		t.Fatalf("engine holds %d distinct spans in %d docs, want 5000", ids, docs)
	}
}

// A spool at its limit drops the oldest spans, counted and reported.
func TestSpoolLimitDropsAreCounted(t *testing.T) {
	dead, err := store.Open(store.Config{URLs: []string{"http://127.0.0.1:1"}, Engine: store.EngineOpenSearch, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	e, err := export.New(export.Config{Host: "h", BatchSize: 100, FlushInterval: 20 * time.Millisecond,
		SpoolDir: t.TempDir(), SpoolMaxBytes: 64 << 10, SpoolSegmentBytes: 8 << 10, RetryMin: time.Hour, RetryMax: time.Hour}, dead)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, e)
	const n = 20000
	for _, s := range spansAt(time.Now(), 0, n) {
		e.Add(s)
	}
	waitFor(t, 30*time.Second, "queue drained to the spool", func() bool {
		s := e.Stats()
		return s.Queued == 0 && s.Spooled+s.DroppedTotal() >= n
	})
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	err = e.Close(ctx)
	stop()
	s := e.Stats()
	t.Logf("stats %+v", s)
	if !errors.Is(err, export.ErrSpoolNotEmpty) {
		t.Fatalf("close: %v, want ErrSpoolNotEmpty", err)
	}
	if s.Dropped[export.DropSpoolFull] == 0 || s.SpoolBytes > 64<<10 {
		t.Fatalf("want spool_full drops and a spool within 64 KiB: %+v", s)
	}
	// Every added span is either still spooled or counted as dropped.
	if got := uint64(s.SpoolSpans) + s.DroppedTotal(); got != n {
		t.Fatalf("spooled %d + dropped %d = %d, want %d: something was lost silently", s.SpoolSpans, s.DroppedTotal(), got, n)
	}
}

// Spans spooled by one run are replayed by the next.
func TestSpoolSurvivesRestart(t *testing.T) {
	st := testenv.Store(t)
	dir := t.TempDir()
	dead, _ := store.Open(store.Config{URLs: []string{"http://127.0.0.1:1"}, Engine: store.EngineOpenSearch, Prefix: st.Indices().Prefix, Timeout: time.Second})
	e1, err := export.New(export.Config{Host: "h", BatchSize: 100, FlushInterval: 20 * time.Millisecond, SpoolDir: dir, RetryMin: time.Hour, RetryMax: time.Hour}, dead)
	if err != nil {
		t.Fatal(err)
	}
	stop := run(t, e1)
	start := time.Now().UTC().Add(-2 * time.Minute).Truncate(time.Second)
	for _, s := range spansAt(start, 0, 1500) {
		e1.Add(s)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := e1.Close(ctx); !errors.Is(err, export.ErrSpoolNotEmpty) {
		t.Fatalf("close of the first run: %v", err)
	}
	stop()
	if s := e1.Stats(); s.SpoolSpans != 1500 || s.DroppedTotal() != 0 {
		t.Fatalf("first run stats %+v", s)
	}
	e2, err := export.New(export.Config{Host: "h", SpoolDir: dir}, st)
	if err != nil {
		t.Fatal(err)
	}
	stop2 := run(t, e2)
	ctx2, cancel2 := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel2()
	if err := e2.Close(ctx2); err != nil {
		t.Fatal(err)
	}
	stop2()
	if ids, _ := distinctSpans(t, st, start, start.Add(time.Minute)); ids != 1500 {
		t.Fatalf("after restart the engine holds %d spans, want 1500", ids)
	}
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Close during an outage does not wait for the engine: the spool is left
// on disk (ErrSpoolNotEmpty) well before Close's deadline, and the next
// exporter on the same folder replays it. Close just after the engine came
// back (no send since, so the exporter still takes it for away) replays
// the spool in its one short try.
func TestCloseDuringOutage(t *testing.T) {
	st := testenv.Store(t)
	px := newCutProxy(t, strings.TrimPrefix(testenv.ESURL(), "http://"))
	via, err := store.Open(store.Config{URLs: []string{"http://" + px.addr}, Engine: testenv.ESEngine(),
		Prefix: st.Indices().Prefix, Compress: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	start := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	open := func() *export.Exporter {
		e, err := export.New(export.Config{Host: "host-a", BatchSize: 200, FlushInterval: 50 * time.Millisecond,
			SpoolDir: dir, RetryMin: 100 * time.Millisecond, RetryMax: 500 * time.Millisecond}, via)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	spoolWhileCut := func(e *export.Exporter, from, want int) {
		px.cut()
		for _, s := range spansAt(start, from, 500) {
			e.Add(s)
		}
		waitFor(t, 20*time.Second, "spans spooled", func() bool {
			s := e.Stats()
			return s.SpoolSpans == int64(want) && s.EngineDown && s.Queued == 0
		})
	}

	e := open()
	stop := run(t, e)
	spoolWhileCut(e, 0, 500)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := e.Close(ctx); !errors.Is(err, export.ErrSpoolNotEmpty) || ctx.Err() != nil {
		t.Fatalf("Close during the outage: %v (its context: %v), want the spool left at once", err, ctx.Err())
	}
	stop()

	e = open()
	stop = run(t, e)
	spoolWhileCut(e, 500, 1000) // the first 500 wait in the spool too
	px.restore(t)
	if err := e.Close(ctx); err != nil {
		t.Fatalf("Close with the engine back: %v", err)
	}
	stop()
	if ids, docs := distinctSpans(t, st, start, start.Add(time.Minute)); ids != 1000 || docs != 1000 {
		t.Fatalf("engine holds %d distinct spans in %d docs, want 1000", ids, docs)
	}
}
