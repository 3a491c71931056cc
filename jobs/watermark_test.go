package jobs_test

import (
	"context"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// report stores agent progress reports as agents write them, searchable.
func report(t *testing.T, es *store.Store, reps ...schemas.AgentProgress) {
	t.Helper()
	ctx := context.Background()
	for _, r := range reps {
		if err := es.PutAgentProgress(ctx, r); err != nil {
			t.Fatal(err)
		}
	}
	if err := es.Refresh(ctx, es.Indices().Agents()); err != nil {
		t.Fatal(err)
	}
}

// With agents reporting, a window is enqueued once every live agent's
// watermark is past its end and margin, long before the lateness; the
// slowest agent holds windows back, an agent silent past the timeout or
// stopped does not; without any report the lateness applies.
func TestAgentWatermarksDecideWhenWindowsAreDue(t *testing.T) {
	es := testenv.Store(t)
	rdb := testenv.Redis(t)
	ctx := context.Background()
	if err := es.EnsureTemplates(ctx, schemas.DefaultTemplateSettings); err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	const w = 10 * time.Second
	s, err := jobs.NewScheduler(jobs.SchedulerConfig{Window: w, Lateness: 2 * time.Minute, Margin: 2 * time.Second, Shards: 1,
		InitialBackfill: 5 * time.Minute, LateHorizon: -1, AgentWatermarks: true, AgentTimeout: 30 * time.Second}, rdb, es)
	if err != nil {
		t.Fatal(err)
	}
	// newest returns the end of the newest window enqueued so far.
	newest := func() time.Time {
		wm, _, err := s.State().Watermark(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return wm
	}
	expect := func(step string, rep jobs.TickReport, want time.Time, agents int) {
		t.Helper()
		if got := newest(); !got.Equal(want) || rep.Agents != agents {
			t.Fatalf("%s: windows enqueued up to %s with %d agents, want up to %s with %d", step, got.Format(time.TimeOnly), rep.Agents, want.Format(time.TimeOnly), agents)
		}
	}

	// No agent reports: the full lateness.
	rep, err := s.Tick(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	expect("no reports", rep, now.Add(-2*time.Minute).Truncate(w), 0)

	// Two agents; the slower is 40s behind: windows up to its watermark
	// less the margin.
	report(t, es,
		schemas.AgentProgress{Host: "fast", Watermark: now.Add(-time.Second), ReportedAt: now},
		schemas.AgentProgress{Host: "slow", Watermark: now.Add(-40 * time.Second), ReportedAt: now})
	rep, err = s.Tick(ctx, now)
	if err != nil {
		t.Fatal(err)
	}
	expect("slow agent", rep, now.Add(-42*time.Second).Truncate(w), 2)
	if rep.SlowestAgent != "slow" {
		t.Fatalf("slowest agent %q, want slow", rep.SlowestAgent)
	}

	// The slow agent catches up.
	report(t, es, schemas.AgentProgress{Host: "slow", Watermark: now.Add(-3 * time.Second), ReportedAt: now})
	if rep, err = s.Tick(ctx, now); err != nil {
		t.Fatal(err)
	}
	expect("caught up", rep, now.Add(-5*time.Second).Truncate(w), 2)

	// An agent 2 minutes behind but silent for 40s is not waited for; a
	// stopped one neither.
	later := now.Add(20 * time.Second)
	report(t, es,
		schemas.AgentProgress{Host: "slow", Watermark: now.Add(-2 * time.Minute), ReportedAt: later.Add(-40 * time.Second)},
		schemas.AgentProgress{Host: "gone", Watermark: now.Add(-2 * time.Minute), ReportedAt: later, Stopped: true},
		schemas.AgentProgress{Host: "fast", Watermark: later.Add(-time.Second), ReportedAt: later})
	if rep, err = s.Tick(ctx, later); err != nil {
		t.Fatal(err)
	}
	expect("silent and stopped agents", rep, later.Add(-3*time.Second).Truncate(w), 1)

	// The watermark of the agents never puts a window before the margin.
	report(t, es, schemas.AgentProgress{Host: "fast", Watermark: later.Add(time.Hour), ReportedAt: later})
	if rep, err = s.Tick(ctx, later); err != nil {
		t.Fatal(err)
	}
	if got := newest(); got.After(later.Add(-2 * time.Second)) {
		t.Fatalf("a clock far ahead enqueued windows up to %s, past now less the margin", got)
	}
}
