package alerting_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// TestScheduledEvaluationWaitsForRollup: the scheduler enqueues one
// evaluation per minute of data (a second tick finds it enqueued); the
// task waits, by retrying, while the minute it ends on is not rolled up,
// so an empty minute never reads as "no traffic"; once the minute is
// rolled up the rules are evaluated on it.
func TestScheduledEvaluationWaitsForRollup(t *testing.T) {
	st := testenv.Store(t)
	rdb := testenv.Redis(t)
	ctx := context.Background()

	if _, err := alerting.NewScheduler(alerting.SchedulerConfig{Spec: "every minute"}, rdb); err == nil ||
		!strings.Contains(err.Error(), `alert schedule: cron spec "every minute"`) {
		t.Errorf("bad alert schedule: %v, want an error naming it", err)
	}
	sch, err := alerting.NewScheduler(alerting.SchedulerConfig{Delay: 45 * time.Second}, rdb)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 4, 10, 20, 50, 0, time.UTC)
	end, enqueued, err := sch.Tick(ctx, now)
	if err != nil || !enqueued || !end.Equal(time.Date(2026, 3, 4, 10, 20, 0, 0, time.UTC)) {
		t.Fatalf("first tick: end %s enqueued %v err %v", end, enqueued, err)
	}
	if _, enqueued, err := sch.Tick(ctx, now.Add(5*time.Second)); err != nil || enqueued {
		t.Fatalf("second tick of the same minute enqueued again: %v %v", enqueued, err)
	}
	info, err := asynq.NewInspectorFromRedisClient(rdb).GetTaskInfo(jobs.QueueMetrics, alerting.EvaluatePayload{End: end}.TaskID())
	if err != nil || info.Type != jobs.TypeEvaluate {
		t.Fatalf("evaluation task: %+v %v", info, err)
	}
	if p, err := alerting.ParseEvaluatePayload(info.Payload); err != nil || !p.WaitUntil.Equal(end.Add(45*time.Second+time.Minute)) {
		t.Fatalf("evaluation payload %+v %v: want it to wait for the rollup until the delay and a minute past the end", p, err)
	}

	// A rule that fires when the service is silent: evaluated before its
	// minute is rolled up, it must not fire.
	minute := time.Now().UTC().Add(-20 * time.Minute).Truncate(time.Minute)
	writeSeries(t, st, "busy", minute.Add(-5*time.Minute), []int64{10, 10, 10, 10, 10, 10})
	rules := alerting.NewRules(rdb)
	silent, err := rules.Create(ctx, alerting.Rule{Name: "busy silent", Metric: alerting.MetricCount, Service: "busy", Op: "<", Threshold: 1})
	if err != nil {
		t.Fatal(err)
	}
	ev := alerting.NewEvaluator(alerting.EvaluatorConfig{}, rdb, st)
	task, err := alerting.NewEvaluateTask(alerting.EvaluatePayload{End: minute.Add(time.Minute), WaitUntil: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	err = ev.ProcessTask(ctx, task)
	if err == nil || !alerting.IsRetryWait(err) {
		t.Fatalf("evaluation of a minute not rolled up: %v, want a retry", err)
	}
	if states, _ := rules.States(ctx); states[silent.ID].Status != "" {
		t.Fatalf("evaluated before the rollup: %+v", states[silent.ID])
	}

	// The minute's rollup (2 shards) completes; now the rule is evaluated
	// on it: the series has a document at that minute, count 100.
	roller := rollup.New(rollup.Config{}, st, rdb)
	for shard := range 2 {
		if _, err := roller.Run(ctx, rollup.Payload{Minute: minute, Shard: shard, Shards: 2}); err != nil {
			t.Fatal(err)
		}
	}
	if ok, err := rollup.RolledUp(ctx, rdb, minute); err != nil || !ok {
		t.Fatalf("minute not rolled up after both shards: %v %v", ok, err)
	}
	if err := ev.ProcessTask(ctx, task); err != nil {
		t.Fatal(err)
	}
	states, err := rules.States(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if s := states[silent.ID]; s.Status != alerting.StatusOK || !s.EvaluatedAt.Equal(minute.Add(time.Minute)) || s.Value == nil || *s.Value != 100 {
		t.Fatalf("after the rollup: %+v", s)
	}
	if _, err := alerting.ParseEvaluatePayload([]byte(`{"end":"2026-03-04T10:20:30Z"}`)); err == nil {
		t.Error("an end that is not a whole minute was accepted")
	}
	if _, err := alerting.ParseEvaluatePayload([]byte(`{"end":"2026-03-04T10:20:00Z","wait_until":"2026-03-04T10:19:00Z"}`)); err == nil {
		t.Error("a wait ending before the end was accepted")
	}
	if _, err := alerting.NewScheduler(alerting.SchedulerConfig{Wait: 2 * time.Hour}, rdb); err == nil || !strings.Contains(err.Error(), "alert wait") {
		t.Errorf("a 2h wait: %v, want an error naming the alert wait", err)
	}
}
