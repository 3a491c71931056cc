package faults

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker/assemble/assembletest"
)

// TestRedisRestartUnderWorker stops Redis under a running worker and
// starts it again: the worker must live through it, reconnect, and
// assemble a window enqueued afterwards exactly once.
func TestRedisRestartUnderWorker(t *testing.T) {
	gated(t)
	row := &Row{Fault: "Redis stopped and restarted under a worker", Checked: "the worker survives and reconnects; a window enqueued after the restart is assembled exactly once", Lost: "0 (spans are read, not consumed)"}
	record(t, row)
	const shards = 4
	st, rdb, ws, set := seedWindow(t, 200, 11)

	w := startWorker(t, st, rdb)
	time.Sleep(2 * time.Second)

	defer engines.Up("redis")
	if err := engines.Down("redis"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	if err := engines.Up("redis"); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	w.alive(t, "Redis was away")
	enqueueWindow(t, rdb, ws, shards)
	row.Recovery = waitAssembled(t, rdb, ws, shards)
	row.DupMissing = checkTraces(t, st, ws, set, w)
	t.Logf("assembled %s after Redis came back", time.Since(up).Round(time.Millisecond))
}

// window is the length of the windows the worker rows assemble.
const window = 5 * time.Second

// seedWindow stores the spans of traces synthetic traces (seed) in one
// window two hours ago, on the suite's engines.
func seedWindow(t *testing.T, traces int, seed uint64) (*store.Store, *redis.Client, time.Time, *assembletest.Set) {
	t.Helper()
	st := testenv.Store(t)
	rdb := testenv.Redis(t)
	ws := time.Now().UTC().Add(-2 * time.Hour).Truncate(window)
	set := assembletest.Generate(assembletest.Config{Traces: traces, Start: ws.Add(100 * time.Millisecond), Spacing: (window - 300*time.Millisecond) / time.Duration(traces), Seed: seed})
	testenv.WriteSpans(t, st, set.Spans)
	return st, rdb, ws, set
}

// workerProc is a `deeptrace worker` process on the suite's engines.
type workerProc struct {
	out    syncLog
	exited chan error
}

// startWorker starts a worker on st's indices and rdb's database; it is
// killed when the test ends.
func startWorker(t *testing.T, st *store.Store, rdb *redis.Client) *workerProc {
	t.Helper()
	w := &workerProc{exited: make(chan error, 1)}
	cmd := exec.Command(bin, "worker", "--concurrency", "2", "--lock-ttl", "3s", "--shutdown-timeout", "5s", "--ops-listen=",
		"--es-url", engines.ESURL(), "--es-prefix", st.Indices().Prefix,
		"--redis-addr", engines.RedisAddr(), "--redis-db", strconv.Itoa(rdb.Options().DB))
	cmd.Env = append(os.Environ(), "DEEPTRACE_CONFIG=")
	cmd.Stdout, cmd.Stderr = &w.out, &w.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-w.exited })
	return w
}

// alive fails the test if the worker exited (while what happened).
func (w *workerProc) alive(t *testing.T, while string) {
	t.Helper()
	select {
	case err := <-w.exited:
		w.exited <- err
		t.Fatalf("the worker exited while %s: %v\n%s", while, err, w.out.String())
	default:
	}
}

// enqueueWindow enqueues the window's assembly, one task per shard,
// waiting for Redis to take writes.
func enqueueWindow(t *testing.T, rdb *redis.Client, ws time.Time, shards int) {
	t.Helper()
	c := asynq.NewClientFromRedisClient(rdb)
	for sh := range shards {
		task, err := jobs.NewAssembleTask(jobs.AssemblePayload{WindowStart: ws, WindowEnd: ws.Add(window), Shard: sh, Shards: shards, Margin: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		// Redis may take a moment to take writes again.
		waitFor(t, 20*time.Second, "enqueue", func() bool { _, err := c.Enqueue(task); return err == nil })
	}
}

// waitAssembled waits until every shard of the window is assembled and
// says how long that took.
func waitAssembled(t *testing.T, rdb *redis.Client, ws time.Time, shards int) time.Duration {
	t.Helper()
	state := jobs.NewState(rdb)
	return waitFor(t, 90*time.Second, "every shard assembled", func() bool {
		done, err := state.Assembled(context.Background(), ws, shards)
		return err == nil && len(done) == shards
	})
}

// checkTraces requires every trace of set stored exactly once, and says
// how many were duplicated and missing.
func checkTraces(t *testing.T, st *store.Store, ws time.Time, set *assembletest.Set, w *workerProc) string {
	t.Helper()
	ids, docsN := traceIDs(t, st, ws.Add(-time.Minute), ws.Add(time.Minute))
	missing := 0
	for _, r := range set.Roots {
		if !ids[schemas.TraceID(r)] {
			missing++
		}
	}
	res := fmt.Sprintf("%d / %d of %d traces", docsN-len(ids), missing, len(set.Roots))
	if missing > 0 || docsN != len(ids) {
		t.Errorf("after the restart: %s\n%s", res, w.out.String())
	}
	return res
}

// traceIDs reads the trace documents in [from, to]: the distinct ids and
// the number of documents.
func traceIDs(t *testing.T, st *store.Store, from, to time.Time) (map[string]bool, int) {
	t.Helper()
	ctx := context.Background()
	if err := st.Refresh(ctx, st.Indices().Pattern(schemas.KindTraces)); err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	n := 0
	err := st.Scan(ctx, store.Query{Kind: schemas.KindTraces, From: from, To: to, PageSize: 500}, func(hits []store.Hit) error {
		for _, h := range hits {
			var tr struct {
				TraceID string `json:"trace_id"`
			}
			if err := json.Unmarshal(h.Source, &tr); err != nil {
				return err
			}
			ids[tr.TraceID] = true
			n++
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return ids, n
}
