package jobs_test

import (
	"context"
	"sort"
	"testing"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

func pending(t *testing.T, rdb *redis.Client, queue string) []jobs.AssemblePayload {
	return listTasks(t, rdb, queue, false)
}

func listTasks(t *testing.T, rdb *redis.Client, queue string, scheduled bool) []jobs.AssemblePayload {
	t.Helper()
	in := asynq.NewInspectorFromRedisClient(rdb)
	var out []jobs.AssemblePayload
	for page := 1; ; page++ {
		list := in.ListPendingTasks
		if scheduled {
			list = in.ListScheduledTasks
		}
		tasks, err := list(queue, asynq.Page(page), asynq.PageSize(500))
		if err != nil {
			// asynq reports an unknown queue as an error: nothing pending.
			return out
		}
		if len(tasks) == 0 {
			break
		}
		for _, ti := range tasks {
			p, err := jobs.ParseAssemblePayload(ti.Payload)
			if err != nil {
				t.Fatal(err)
			}
			if ti.ID != p.TaskID() {
				t.Fatalf("task id %s, payload says %s", ti.ID, p.TaskID())
			}
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if !out[i].WindowStart.Equal(out[j].WindowStart) {
			return out[i].WindowStart.Before(out[j].WindowStart)
		}
		return out[i].Shard < out[j].Shard
	})
	return out
}

var t0 = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

func TestTickEnqueuesEachWindowOnce(t *testing.T) {
	rdb := testenv.Redis(t)
	ctx := context.Background()
	cfg := jobs.SchedulerConfig{Window: time.Minute, Lateness: 20 * time.Second, Margin: 10 * time.Second, Shards: 4}
	s, err := jobs.NewScheduler(cfg, rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	// 10:05:25: the newest complete window (after 20s lateness) is 10:04.
	now := t0.Add(5*time.Minute + 25*time.Second)
	rep, err := s.Tick(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Windows) != 1 || !rep.Windows[0].Equal(t0.Add(4*time.Minute)) || rep.Enqueued != 4 {
		t.Fatalf("first tick %+v: want window 10:04 × 4 shards", rep)
	}
	got := pending(t, rdb, jobs.QueueLive)
	if len(got) != 4 || got[3].Shard != 3 || got[0].Margin != 10*time.Second || !got[0].WindowEnd.Equal(t0.Add(5*time.Minute)) {
		t.Fatalf("pending %+v", got)
	}
	// The same tick again, and a tick before the next window is due:
	// nothing new.
	for _, at := range []time.Time{now, now.Add(30 * time.Second)} {
		rep, err = s.Tick(ctx, at)
		if err != nil || rep.Enqueued != 0 || len(rep.Windows) != 0 {
			t.Fatalf("tick at %s: %+v %v", at, rep, err)
		}
	}
	// A second replica that read the watermark before the first advanced
	// it (simulated by moving it back): the task ids refuse every task.
	// With retention the ids outlive the tasks' runs, so this holds after
	// the workers are done too.
	in := asynq.NewInspectorFromRedisClient(rdb)
	if _, err := in.DeleteAllPendingTasks(jobs.QueueLive); err != nil {
		t.Fatal(err)
	}
	back := func() { rdb.Set(ctx, "deeptrace:asm:watermark", t0.Add(4*time.Minute).UnixNano(), 0) }
	back()
	rep, _ = s.Tick(ctx, now) // the first replica enqueues them again (deleted ids are free)
	back()
	s2, _ := jobs.NewScheduler(cfg, rdb, nil)
	rep2, err := s2.Tick(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Enqueued != 4 || rep2.Enqueued != 0 || rep2.Duplicates != 4 {
		t.Fatalf("replica ticks: first %+v, second %+v; want the second to find 4 duplicates", rep, rep2)
	}
	if n := len(pending(t, rdb, jobs.QueueLive)); n != 4 {
		t.Fatalf("%d pending after two replicas, want 4", n)
	}
}

func TestBackfillAfterDowntime(t *testing.T) {
	rdb := testenv.Redis(t)
	ctx := context.Background()
	cfg := jobs.SchedulerConfig{Window: time.Minute, Lateness: 10 * time.Second, Shards: 2, Margin: 5 * time.Second, MaxBackfill: 30 * time.Minute}
	s, err := jobs.NewScheduler(cfg, rdb, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Tick(ctx, t0.Add(10*time.Second)); err != nil { // enqueues 09:59
		t.Fatal(err)
	}
	// Down for 12 minutes: the next tick enqueues the 12 windows missed.
	rep, err := s.Tick(ctx, t0.Add(12*time.Minute+10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Windows) != 12 || rep.Enqueued != 24 || !rep.Windows[0].Equal(t0) || !rep.Windows[11].Equal(t0.Add(11*time.Minute)) {
		t.Fatalf("backfill %+v: want 10:00..10:11", rep)
	}
	// Down for two hours: only the last 30 minutes are caught up; the rest
	// is counted as skipped.
	rep, err = s.Tick(ctx, t0.Add(2*time.Hour+12*time.Minute+10*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Windows) != 30 || rep.Skipped != 90 {
		t.Fatalf("long downtime %d windows, %d skipped; want 30 and 90", len(rep.Windows), rep.Skipped)
	}
	if n := len(pending(t, rdb, jobs.QueueLive)); n != 2*(1+12+30) {
		t.Fatalf("%d pending", n)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	for want, c := range map[string]jobs.SchedulerConfig{
		"window":    {Window: 7 * time.Minute},
		"lateness":  {Lateness: time.Second, Margin: 10 * time.Second},
		"shards":    {Shards: 5000},
		"schedule":  {Spec: "every now and then"},
		"retention": {TaskRetention: time.Second},
	} {
		if err := c.Validate(); err == nil || !contains(err.Error(), want) {
			t.Errorf("%+v: %v, want an error naming %q", c, err, want)
		}
	}
}

func contains(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i:i+len(sub)] == sub {
			return true
		}
	}
	return false
}

// Spans ingested after their window was assembled re-open it (and its
// neighbours within the margin) as a new generation on the reassembly
// queue, once.
func TestLateSpansReopenTheirWindow(t *testing.T) {
	rdb := testenv.Redis(t)
	es := testenv.Store(t)
	ctx := context.Background()
	cfg := jobs.SchedulerConfig{Window: time.Minute, Lateness: 20 * time.Second, Margin: 10 * time.Second, Shards: 2, LateSlack: 2 * time.Second}
	s, err := jobs.NewScheduler(cfg, rdb, es)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	rep, err := s.Tick(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	w := rep.Windows[0]
	in := asynq.NewInspectorFromRedisClient(rdb)
	in.DeleteAllPendingTasks(jobs.QueueLive)
	// The window was assembled a minute ago, both shards.
	st := s.State()
	for sh := 0; sh < 2; sh++ {
		if err := st.MarkAssembled(ctx, w, sh, 2, now.Add(-time.Minute)); err != nil {
			t.Fatal(err)
		}
	}
	// A span of that window lands now (a spool replay).
	sp := schemas.Span{Role: schemas.RoleServer, Service: "svc", Host: "h", StartNs: w.Add(30 * time.Second).UnixNano(), EndNs: w.Add(31 * time.Second).UnixNano(),
		Conn: schemas.Conn{ClientIP: "10.0.0.1", ClientPort: 1, ServerIP: "10.0.0.2", ServerPort: 80}, IngestedAt: now}
	sp.SpanID = schemas.SpanID(sp.Host, sp.Conn, 0, 0, sp.Role)
	sp.Finish()
	d, _ := store.SpanDoc(es.Indices(), &sp)
	if res, err := es.Bulk(ctx, []store.Doc{d}, "true"); err != nil || res.Indexed != 1 {
		t.Fatalf("bulk %+v %v", res, err)
	}
	rep, err = s.Tick(ctx, now.Add(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Late) != 1 || !rep.Late[0].Equal(w) {
		t.Fatalf("late %v, want [%s]", rep.Late, w)
	}
	re := listTasks(t, rdb, jobs.QueueReassembly, true)
	// The late window and its predecessor (within the margin); the next
	// window is not enqueued yet, so it needs no re-opening.
	if len(re) != 4 || re[0].Generation != 1 || !re[2].WindowStart.Equal(w) || !re[0].WindowStart.Equal(w.Add(-time.Minute)) {
		t.Fatalf("reassembly tasks %+v", re)
	}
	// Nothing new: the next tick does not re-open it again.
	rep, err = s.Tick(ctx, now.Add(2*time.Second))
	if err != nil || len(rep.Late) != 0 {
		t.Fatalf("second tick re-opened again: %+v %v", rep, err)
	}
	// The re-assembly ran (after the slack) and a later span lands: a new
	// generation.
	for sh := 0; sh < 2; sh++ {
		st.MarkAssembled(ctx, w, sh, 2, now.Add(3*time.Second))
	}
	sp.SpanID, sp.ClientPort, sp.IngestedAt = "", 2, now.Add(20*time.Second)
	sp.SpanID = schemas.SpanID(sp.Host, sp.Conn, 0, 0, sp.Role)
	d, _ = store.SpanDoc(es.Indices(), &sp)
	es.Bulk(ctx, []store.Doc{d}, "true")
	rep, err = s.Tick(ctx, now.Add(21*time.Second))
	if err != nil || len(rep.Late) != 1 {
		t.Fatalf("later late span: %+v %v", rep, err)
	}
	gens := map[int]int{}
	for _, p := range listTasks(t, rdb, jobs.QueueReassembly, true) {
		if p.WindowStart.Equal(w) {
			gens[p.Generation]++
		}
	}
	if gens[1] != 2 || gens[2] != 2 {
		t.Fatalf("generations of the late window %v, want 2 tasks (shards) of 1 and of 2", gens)
	}
}
