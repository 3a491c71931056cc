package faults

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// TestOpenSearchRestartUnderWorkers stops the search engine under two
// running workers, and a window comes due meanwhile: its tasks fail and are
// retried with backoff, the workers live through it, and once the engine
// is back every shard of the window is assembled, each trace exactly once.
func TestOpenSearchRestartUnderWorkers(t *testing.T) {
	gated(t)
	row := &Row{Fault: "OpenSearch stopped and restarted under two workers assembling a window",
		Checked: "the workers survive; the tasks the outage failed are retried with backoff; after the restart every shard is assembled, each trace exactly once",
		Lost:    "0 (spans are read, not consumed)"}
	record(t, row)
	const shards = 8
	st, rdb, ws, set := seedWindow(t, 3000, 12)

	workers := []*workerProc{startWorker(t, st, rdb), startWorker(t, st, rdb)}
	time.Sleep(2 * time.Second)    // both serving
	defer engines.Up("opensearch") // whatever happens, the node is left running
	if err := engines.Down("opensearch"); err != nil {
		t.Fatal(err)
	}
	// The window comes due while the engine is away: its tasks fail.
	enqueueWindow(t, rdb, ws, shards)
	failures := func() int {
		n := 0
		for _, w := range workers {
			n += strings.Count(w.out.String(), "assembly failed")
		}
		return n
	}
	waitFor(t, 30*time.Second, "tasks failing", func() bool { return failures() >= 2 })
	if err := engines.Up("opensearch"); err != nil {
		t.Fatal(err)
	}
	for _, w := range workers {
		w.alive(t, "OpenSearch was away")
	}
	row.Recovery = waitAssembled(t, rdb, ws, shards)
	for _, w := range workers {
		w.alive(t, "it assembled after the outage")
	}
	failed := failures()
	row.Checked += fmt.Sprintf("; the window came due during the outage: %d task runs failed", failed)
	row.DupMissing = checkTraces(t, st, ws, set, workers[0])
	t.Logf("%d failed runs; assembled %s after the engine came back", failed, row.Recovery.Round(time.Millisecond))
}
