package rollup_test

import (
	"context"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// TestScheduledRollupThroughAsynq: the scheduler enqueues (minute, shard)
// tasks once, a second tick finds them all enqueued, and a worker serving
// Register's handler writes the minute's metrics.
func TestScheduledRollupThroughAsynq(t *testing.T) {
	st := testenv.Store(t)
	rdb := testenv.Redis(t)
	ctx := context.Background()
	now := time.Now().UTC()
	minute := now.Add(-30 * time.Second).Truncate(time.Minute).Add(-time.Minute)
	write(t, st, recorded(minute))
	sch, err := rollup.NewScheduler(rollup.SchedulerConfig{Shards: 4, Lateness: 30 * time.Second, LateHorizon: -1}, rdb, st)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := sch.Tick(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Minutes) != 1 || !rep.Minutes[0].Equal(minute) || rep.Enqueued != 4 {
		t.Fatalf("first tick: %+v (minute %s)", rep, minute)
	}
	if rep, err = sch.Tick(ctx, now); err != nil || rep.Enqueued != 0 {
		t.Fatalf("second tick enqueued again: %+v %v", rep, err)
	}
	srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{Concurrency: 2, Queues: map[string]int{jobs.QueueMetrics: 1},
		LogLevel: asynq.FatalLevel, RetryDelayFunc: rollup.RetryDelay})
	mux := asynq.NewServeMux()
	rollup.Register(mux, rollup.New(rollup.Config{}, st, rdb))
	if err := srv.Start(mux); err != nil {
		t.Fatal(err)
	}
	defer srv.Shutdown()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if got := metricsOf(t, st, minute); len(got) == 7 {
			check(t, got, "operation|front|GET /a|", want{100, 10, 50 * time.Millisecond, 90 * time.Millisecond, 99 * time.Millisecond, 100 * time.Millisecond})
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics not written: %v", keys(metricsOf(t, st, minute)))
		}
		time.Sleep(200 * time.Millisecond)
	}
}
