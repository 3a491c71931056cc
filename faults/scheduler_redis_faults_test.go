package faults

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/worker/assemble/assembletest"
)

// TestRedisRestartUnderScheduler runs a scheduler and a worker on 2-second
// windows, with spans waiting in the engine for 36 seconds of windows
// that complete one after the other while Redis is stopped for 8 seconds
// and started again. The scheduler's ticks fail while Redis is away; its
// watermark stays at the last window it enqueued, so the first tick after
// the restart backfills every window that completed meanwhile. No window
// may be missed: every (window, shard) is marked assembled, and every
// trace is in the engine exactly once.
func TestRedisRestartUnderScheduler(t *testing.T) {
	gated(t)
	row := &Row{Fault: "Redis stopped and restarted under the scheduler and a worker", Lost: "0 (spans are read, not consumed)"}
	record(t, row)
	st := testenv.Store(t)
	rdb := testenv.Redis(t)
	const (
		window  = 2 * time.Second
		shards  = 2
		span    = 36 * time.Second
		traces  = 360
		outage  = 8 * time.Second
		outAt   = 8 * time.Second // after the first window's start
		latency = 2 * time.Second // the scheduler's --lateness
	)
	// The windows start a little in the future, so the scheduler enqueues
	// each as it completes, before, during and after the outage.
	first := time.Now().UTC().Add(4 * time.Second).Truncate(window)
	last := first.Add(span) // end of the last window
	set := assembletest.Generate(assembletest.Config{Traces: traces, Start: first.Add(50 * time.Millisecond),
		Spacing: (span - 500*time.Millisecond) / traces, Seed: 12})
	testenv.WriteSpans(t, st, set.Spans)

	common := []string{"--ops-listen=", "--es-url", engines.ESURL(), "--es-prefix", st.Indices().Prefix,
		"--redis-addr", engines.RedisAddr(), "--redis-db", strconv.Itoa(rdb.Options().DB)}
	var schedOut, workOut syncLog
	sched := exec.Command(bin, append([]string{"scheduler", "--no-late-check", "--window", window.String(), "--lateness", latency.String(),
		"--margin", "1s", "--shards", strconv.Itoa(shards), "--schedule", "@every 1s"}, common...)...)
	work := exec.Command(bin, append([]string{"worker", "--concurrency", "2", "--lock-ttl", "5s", "--margin", "1s"}, common...)...)
	sched.Stdout, sched.Stderr = &schedOut, &schedOut
	work.Stdout, work.Stderr = &workOut, &workOut
	exited := map[string]chan error{}
	for name, cmd := range map[string]*exec.Cmd{"scheduler": sched, "worker": work} {
		cmd.Env = append(os.Environ(), "DEEPTRACE_CONFIG=")
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		ch := make(chan error, 1)
		exited[name] = ch
		go func() { ch <- cmd.Wait() }()
		t.Cleanup(func() { cmd.Process.Kill(); <-ch })
	}
	logs := func() string { return "scheduler:\n" + schedOut.tail(40) + "\nworker:\n" + workOut.tail(40) }

	defer engines.Up("redis")
	time.Sleep(time.Until(first.Add(outAt)))
	if err := engines.Down("redis"); err != nil {
		t.Fatal(err)
	}
	down := time.Now()
	time.Sleep(outage)
	if err := engines.Up("redis"); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	for name, ch := range exited {
		select {
		case err := <-ch:
			ch <- err
			t.Fatalf("the %s exited while Redis was away: %v\n%s", name, err, logs())
		default:
		}
	}
	// Windows that completed (plus lateness) while Redis was away.
	missedWhileDown := 0
	for ws := first; ws.Before(last); ws = ws.Add(window) {
		if due := ws.Add(window + latency); due.After(down) && due.Before(up) {
			missedWhileDown++
		}
	}

	state := jobs.NewState(rdb)
	// notDone lists the windows before end not assembled in every shard.
	notDone := func(end time.Time) []time.Time {
		var out []time.Time
		for ws := first; ws.Before(end); ws = ws.Add(window) {
			done, err := state.Assembled(context.Background(), ws, shards)
			if err != nil || len(done) != shards {
				out = append(out, ws)
			}
		}
		return out
	}
	// Recovery: from Redis back to every window that came due while it
	// was away assembled.
	dueBy := up.Add(-latency).Truncate(window)
	row.Recovery = waitFor(t, 60*time.Second, "the windows due during the outage assembled", func() bool { return len(notDone(dueBy)) == 0 })
	windows := int(span / window)
	var missing []time.Time
	for deadline := last.Add(latency + 60*time.Second); ; time.Sleep(200 * time.Millisecond) {
		if missing = notDone(last); len(missing) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d of %d windows not assembled 60s after the last was due: %v\n%s", len(missing), windows, missing, logs())
		}
	}
	ids, n := traceIDs(t, st, first.Add(-time.Minute), last.Add(time.Minute))
	missingTraces := 0
	for _, r := range set.Roots {
		if !ids[schemas.TraceID(r)] {
			missingTraces++
		}
	}
	row.Checked = fmt.Sprintf("no window missed: the watermark holds while ticks fail and the first tick after the restart backfills; "+
		"%d of %d two-second windows × %d shards assembled, %d of them came due during the %s outage",
		windows-len(missing), windows, shards, missedWhileDown, outage)
	row.DupMissing = fmt.Sprintf("%d / %d of %d traces", n-len(ids), missingTraces, len(set.Roots))
	if missedWhileDown == 0 {
		t.Errorf("no window came due during the outage: the test proves nothing")
	}
	if missingTraces > 0 || n != len(ids) {
		t.Errorf("traces after the outage: %s\n%s", row.DupMissing, logs())
	}
}
