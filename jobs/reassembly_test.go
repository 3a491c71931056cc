package jobs_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
)

func TestPlanReassembly(t *testing.T) {
	from := time.Date(2026, 3, 1, 10, 7, 0, 0, time.UTC)
	cases := []struct {
		name     string
		to       time.Time
		window   time.Duration
		shards   int
		services []string
		want     int
		err      bool
	}{
		{"aligned windows", from.Add(20 * time.Minute), 5 * time.Minute, 4, nil, 5 * 4, false},
		{"services narrow shards", from.Add(20 * time.Minute), 5 * time.Minute, 64, []string{"gateway"}, 5, false},
		{"inverted", from.Add(-time.Minute), time.Minute, 1, nil, 0, true},
		{"window too long", from.Add(time.Hour), 25 * time.Hour, 1, nil, 0, true},
		{"too many tasks", from.Add(30 * 24 * time.Hour), time.Minute, 8, nil, 0, true},
		{"empty service", from.Add(time.Hour), time.Minute, 1, []string{" "}, 0, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got, err := jobs.PlanReassembly("j", from, c.to, c.window, c.shards, c.services)
			if c.err {
				if err == nil {
					t.Fatalf("planned %d tasks, want an error", len(got))
				}
				return
			}
			if err != nil || len(got) != c.want {
				t.Fatalf("planned %d tasks (%v), want %d", len(got), err, c.want)
			}
			if !got[0].WindowStart.Equal(from.Truncate(c.window)) {
				t.Fatalf("first window %s not aligned", got[0].WindowStart)
			}
			for _, p := range got {
				if err := p.Validate(); err != nil || p.JobID != "j" {
					t.Fatalf("task %+v: %v", p, err)
				}
			}
		})
	}
}

func TestReassemblyJobLifecycle(t *testing.T) {
	rdb := testenv.Redis(t)
	ctx := context.Background()
	client := asynq.NewClientFromRedisClient(rdb)
	from := time.Date(2026, 3, 1, 23, 50, 0, 0, time.UTC)
	to := from.Add(20 * time.Minute)

	genBefore, err := jobs.RangeGeneration(ctx, rdb, from, to)
	if err != nil {
		t.Fatal(err)
	}
	job, err := jobs.StartReassembly(ctx, client, rdb, from, to, 10*time.Minute, 2, nil)
	if err != nil {
		t.Fatal(err)
	}
	if job.Total != 4 || job.State != jobs.StateRunning || !jobs.ValidJobID(job.ID) {
		t.Fatalf("job %+v", job)
	}
	info, err := asynq.NewInspectorFromRedisClient(rdb).ListPendingTasks(jobs.QueueReassembly)
	if err != nil || len(info) != 4 {
		t.Fatalf("pending reassembly tasks %d: %v", len(info), err)
	}
	p, err := jobs.ParseAssemblePayload(info[0].Payload)
	if err != nil || p.JobID != job.ID {
		t.Fatalf("payload %+v: %v", p, err)
	}

	for i, ok := range []bool{true, true, false} {
		if err := jobs.JobDone(ctx, rdb, job.ID, ok); err != nil {
			t.Fatalf("JobDone %d: %v", i, err)
		}
	}
	mid, _ := jobs.GetJob(ctx, rdb, job.ID)
	if mid.Done != 2 || mid.Failed != 1 || mid.State != jobs.StateRunning {
		t.Fatalf("after 3 reports: %+v", mid)
	}
	if g, _ := jobs.RangeGeneration(ctx, rdb, from, to); g != genBefore {
		t.Fatalf("generation moved before the job finished: %s -> %s", genBefore, g)
	}
	if err := jobs.JobDone(ctx, rdb, job.ID, true); err != nil {
		t.Fatal(err)
	}
	// A redelivered task must not count past the total.
	if err := jobs.JobDone(ctx, rdb, job.ID, true); err != nil {
		t.Fatal(err)
	}
	end, _ := jobs.GetJob(ctx, rdb, job.ID)
	if end.Done != 3 || end.Failed != 1 || end.State != jobs.StateFailed || end.Finished.IsZero() {
		t.Fatalf("finished job %+v", end)
	}
	if g, _ := jobs.RangeGeneration(ctx, rdb, from, to); g == genBefore {
		t.Fatal("finishing the job did not invalidate its range")
	}
	// The day after the range is untouched; the day before the padded
	// range too.
	if g, _ := jobs.RangeGeneration(ctx, rdb, from.Add(-72*time.Hour), from.Add(-49*time.Hour)); strings.Trim(g, "0.") != "" {
		t.Fatalf("unrelated day generation %q", g)
	}

	list, err := jobs.ListJobs(ctx, rdb, 10)
	if err != nil || len(list) != 1 || list[0].ID != job.ID {
		t.Fatalf("ListJobs = %+v, %v", list, err)
	}
	if _, err := jobs.GetJob(ctx, rdb, "20260101t000000-0000000000000000"); !errors.Is(err, jobs.ErrJobNotFound) {
		t.Fatalf("unknown job: %v", err)
	}
	if err := jobs.JobDone(ctx, rdb, "20260101t000000-0000000000000000", true); err != nil {
		t.Fatalf("JobDone of an unknown job: %v", err)
	}
}

func TestRangeGenerationUnbounded(t *testing.T) {
	rdb := testenv.Redis(t)
	ctx := context.Background()
	g0, _ := jobs.RangeGeneration(ctx, rdb, time.Time{}, time.Time{})
	day := time.Date(2026, 1, 5, 12, 0, 0, 0, time.UTC)
	other, _ := jobs.RangeGeneration(ctx, rdb, day.Add(48*time.Hour), day.Add(49*time.Hour))
	if err := jobs.InvalidateRange(ctx, rdb, day, day.Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if g, _ := jobs.RangeGeneration(ctx, rdb, time.Time{}, time.Time{}); g == g0 {
		t.Fatal("unbounded generation unchanged by an invalidation")
	}
	if g, _ := jobs.RangeGeneration(ctx, rdb, day.Add(48*time.Hour), day.Add(49*time.Hour)); g != other {
		t.Fatal("a day outside the range was invalidated")
	}
}
