package faults

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

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
		out[i] = schemas.Span{Role: schemas.RoleServer, Protocol: schemas.ProtocolHTTP1, Operation: "GET /items",
			StartNs: at.UnixNano(), EndNs: at.Add(300 * time.Microsecond).UnixNano(), Service: "svc", Process: "svc",
			Conn: schemas.Conn{ClientIP: "10.0.0.1", ClientPort: uint16(20000 + k%40000), ServerIP: "10.0.0.2", ServerPort: 80},
			Seq:  uint64(k), ReqTCPSeq: uint32(k*7 + 1)}
	}
	return out
}

// TestOpenSearchRestartUnderExporter stops the search engine while the
// agent's exporter writes a steady stream of spans, starts it again, and
// requires every span in the engine exactly once: written before, spooled
// during, replayed after.
func TestOpenSearchRestartUnderExporter(t *testing.T) {
	gated(t)
	row := &Row{Fault: "OpenSearch stopped and restarted under the agent's exporter", Checked: "every span added before, during and after the outage is stored exactly once (spool, then replay)"}
	record(t, row)
	st := testenv.Store(t)
	e, err := export.New(export.Config{Host: "faults", BatchSize: 200, FlushInterval: 50 * time.Millisecond,
		SpoolDir: t.TempDir(), RetryMin: 200 * time.Millisecond, RetryMax: time.Second}, st)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan struct{})
	go func() { defer close(runDone); e.Run(ctx) }()
	defer func() { cancel(); <-runDone }()

	start := time.Now().UTC().Add(-time.Minute).Truncate(time.Second)
	var wg sync.WaitGroup
	var mu sync.Mutex
	added := 0
	producing := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-producing:
				return
			default:
			}
			for _, s := range spansAt(start, i*10, 10) {
				e.Add(s)
			}
			mu.Lock()
			added += 10
			mu.Unlock()
			time.Sleep(2 * time.Millisecond)
		}
	}()
	defer engines.Up("opensearch") // whatever happens, the node is left running
	waitFor(t, 20*time.Second, "spans flowing", func() bool { return e.Stats().Written > 500 })
	if err := engines.Down("opensearch"); err != nil {
		close(producing)
		t.Fatal(err)
	}
	down := time.Now()
	waitFor(t, 30*time.Second, "spooling", func() bool { return e.Stats().SpoolSpans > 0 })
	time.Sleep(time.Second)
	if err := engines.Up("opensearch"); err != nil {
		close(producing)
		t.Fatal(err)
	}
	up := time.Now()
	t.Logf("engine away for %s", up.Sub(down).Round(time.Millisecond))
	// The spool drains while spans keep coming.
	waitFor(t, 90*time.Second, "the spool replayed", func() bool { s := e.Stats(); return s.SpoolSpans == 0 && !s.EngineDown })
	row.Recovery = time.Since(up)
	close(producing)
	wg.Wait()
	if err := e.Close(ctxTimeout(90 * time.Second)); err != nil {
		t.Fatal(err)
	}
	s := e.Stats()
	ids, docs := distinctSpans(t, st, start, start.Add(time.Hour))
	row.Lost = fmt.Sprintf("%d of %d (%d spooled, %d dropped)", added-ids, added, s.Spooled, s.DroppedTotal())
	row.DupMissing = fmt.Sprintf("%d dup span docs", docs-ids)
	if s.Spooled == 0 {
		t.Errorf("nothing was spooled: the outage did not bite: %+v", s)
	}
	if ids != added || docs != added || s.DroppedTotal() != 0 {
		t.Errorf("engine holds %d distinct spans in %d docs, want %d; stats %+v", ids, docs, added, s)
	}
}

// distinctSpans counts the distinct span ids the engine holds in [from, to]
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
