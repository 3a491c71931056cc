package worker_test

import (
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/worker"
)

// TestEvaluationOfAMinuteNeverRolledUpEnds runs alert evaluations of a
// minute nobody rolls up (--no-rollup, a rollup task archived, a changed
// --rollup-shards) through the worker's own asynq server and failure
// policy: waiting for the rollup is not counted as a failure, so the
// retry count never grows; the task must still end, skipped, once its
// wait is over, instead of coming back every 5s for ever.
func TestEvaluationOfAMinuteNeverRolledUpEnds(t *testing.T) {
	st := testenv.Store(t)
	rdb := testenv.Redis(t)
	reg := prometheus.NewRegistry()
	w, err := worker.New(worker.Config{Concurrency: 2, Queues: []string{jobs.QueueMetrics}, ShutdownTimeout: time.Second,
		Registerer: reg, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, st, rdb)
	if err != nil {
		t.Fatal(err)
	}
	srv, mux := w.Server()
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()

	minute := time.Now().UTC().Add(-10 * time.Minute).Truncate(time.Minute)
	// One enqueued long after its minute, without a wait bound (a task
	// from before the bound existed, or enqueued before an outage): it is
	// skipped at its first run. One whose wait ends in 3s: it waits, by
	// retrying, then is skipped.
	old := alerting.EvaluatePayload{End: minute.Add(-time.Minute)}
	waiting := alerting.EvaluatePayload{End: minute, WaitUntil: time.Now().Add(3 * time.Second)}
	client := asynq.NewClientFromRedisClient(rdb)
	for _, p := range []alerting.EvaluatePayload{old, waiting} {
		task, err := alerting.NewEvaluateTask(p, asynq.Retention(time.Hour))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := client.Enqueue(task); err != nil {
			t.Fatal(err)
		}
	}
	in := asynq.NewInspectorFromRedisClient(rdb)
	for {
		info, err := in.GetTaskInfo(jobs.QueueMetrics, waiting.TaskID())
		if err == nil && info.State == asynq.TaskStateRetry {
			if info.Retried != 0 || info.LastErr == "" {
				t.Fatalf("evaluation within its wait: retried %d, last error %q; want it waiting, no failure counted", info.Retried, info.LastErr)
			}
			break
		}
		if !time.Now().Before(waiting.WaitUntil) {
			t.Fatalf("evaluation within its wait: %+v %v, want it waiting (retry state)", info, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	waitCompleted(t, in, old.TaskID(), 10*time.Second)
	waitCompleted(t, in, waiting.TaskID(), 15*time.Second)
	if n := counterValue(t, reg, "deeptrace_alert_evaluations_skipped_total"); n != 2 {
		t.Errorf("skipped evaluations counted %v, want 2", n)
	}
}

// counterValue reads a counter without labels from a registry.
func counterValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no counter %s", name)
	return 0
}

// waitCompleted waits until the task is completed, failing with its state
// when it is not within d.
func waitCompleted(t *testing.T, in *asynq.Inspector, id string, d time.Duration) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		info, err := in.GetTaskInfo(jobs.QueueMetrics, id)
		if err == nil && info.State == asynq.TaskStateCompleted {
			return
		}
		if time.Now().After(deadline) {
			if err != nil {
				t.Fatalf("task %s: %v", id, err)
			}
			t.Fatalf("task %s still %s after %s (retried %d, last error %q)", id, info.State, d, info.Retried, info.LastErr)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
