package main

import (
	"context"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/internal/ops"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/store"
)

func schedulerCmd() *cobra.Command {
	var (
		es   esFlags
		rf   redisFlags
		of   = ops.Flags{Listen: ops.ListenScheduler}
		cfg  jobs.SchedulerConfig
		mf   metricsScheduleFlags
		noES bool
	)
	cmd := withEnv(&cobra.Command{
		Use:   "scheduler",
		Short: "Enqueue the pipeline's tasks: trace assembly per window and shard, metrics rollup and alert evaluation per minute",
		Long: `The scheduler ticks on a cron schedule. Each tick enqueues, for every window
that is complete, one asynq task per service shard, with
a task id derived from (window, shard): a second replica or a repeated tick
never enqueues a window twice. A watermark in Redis makes a restarted
scheduler backfill the windows it missed (up to --max-backfill). Windows that
received spans after they were assembled (a slow agent, a spool replay) are
re-enqueued on the reassembly queue as a new generation.

A window is complete once every running agent reports (in the engine's
<prefix>-agents index) that it has stored all spans that started before the
window's end plus --margin: usually a few seconds after the window ends. An
agent silent for --agent-timeout is not waited for, and no window waits
longer than --lateness. Without agent reports (spans from recorded files, or
--agent-watermarks=false) every window waits --lateness.

Beside assembly it schedules the RED metrics rollup (one task per minute and
service shard once the minute is --rollup-lateness old, ids
rollup:<minute>:<shard>/<shards>, late spans re-open a minute) and the alert
rule evaluation (one task per minute of data, --alert-delay after it ends, id
alert-eval:<minute>). Workers run all of them; --no-rollup and --no-alerts
leave those schedules to another scheduler.

--window, --margin and --shards (and --rollup-shards) must be the same for
every replica.`,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := of.Logger()
			if err != nil {
				return err
			}
			ctx := c.Context()
			rdb, err := rf.open(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			reg := ops.NewRegistry()
			cfg.Registerer, cfg.Logger = reg, log
			var s *jobs.Scheduler
			var st *store.Store
			if noES {
				cfg.LateHorizon = -1
				s, err = jobs.NewScheduler(cfg, rdb, nil)
			} else {
				st, err = es.open()
				if err != nil {
					return err
				}
				s, err = jobs.NewScheduler(cfg, rdb, st)
			}
			if err != nil {
				return err
			}
			loops, err := mf.loops(rdb, st, log) // rollup and alert schedules (scheduler_metrics.go)
			if err != nil {
				return err
			}
			go func() {
				if err := ops.Serve(ctx, of.Listen, reg, func(ctx context.Context) error { return rdb.Ping(ctx).Err() }); err != nil {
					log.Error("ops endpoint", "err", err)
				}
			}()
			return runAll(ctx, append(loops, s.Run)...)
		},
	})
	fs := cmd.Flags()
	es.register(fs)
	rf.register(fs, "task queues, assembly and rollup state")
	of.Register(fs)
	fs.DurationVar(&cfg.Window, "window", time.Minute, "assembly window length (must divide a day)")
	fs.DurationVar(&cfg.Lateness, "lateness", 30*time.Second, "longest wait after a window's end before assembling it (at least --margin)")
	fs.BoolVar(&cfg.AgentWatermarks, "agent-watermarks", true, "assemble a window as soon as every reporting agent has stored its spans, instead of always waiting --lateness")
	fs.DurationVar(&cfg.AgentTimeout, "agent-timeout", 30*time.Second, "stop waiting for an agent whose last progress report is this old")
	fs.DurationVar(&cfg.Margin, "margin", 10*time.Second, "how far past its window's end a trace is followed")
	fs.IntVar(&cfg.Shards, "shards", 8, "service shards per window")
	fs.StringVar(&cfg.Spec, "schedule", "@every 10s", "cron schedule of the ticks (optional seconds field, or @every)")
	fs.DurationVar(&cfg.InitialBackfill, "initial-backfill", 0, "how far back the very first tick starts (default one window)")
	fs.DurationVar(&cfg.MaxBackfill, "max-backfill", 24*time.Hour, "catch up at most this far after downtime; older windows are skipped and logged")
	fs.DurationVar(&cfg.LateHorizon, "late-horizon", 6*time.Hour, "how far back late spans re-open assembled windows")
	fs.DurationVar(&cfg.LateSlack, "late-slack", 10*time.Second, "clock skew and refresh delay allowed when telling late spans (more costs redundant re-assembly, never a wrong trace)")
	fs.DurationVar(&cfg.LateLookback, "late-lookback", time.Minute, "each late-span check looks again at spans ingested this long before the previous one (indexing delay)")
	fs.DurationVar(&cfg.Skew, "skew", 50*time.Millisecond, "clock skew assembly allows between hosts")
	fs.DurationVar(&cfg.TaskRetention, "task-retention", 2*time.Hour, "keep finished task ids this long so a window is never enqueued twice")
	fs.BoolVar(&noES, "no-late-check", false, "do not look for late spans (the engine is not needed then; agent watermarks are off too, windows wait --lateness)")
	mf.register(fs)
	return cmd
}

// runAll runs loops until ctx ends and they all return; the first error
// cancels the others and is returned.
func runAll(ctx context.Context, loops ...func(context.Context) error) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	errs := make(chan error, len(loops))
	for _, f := range loops {
		go func() { errs <- f(ctx) }()
	}
	var first error
	for range loops {
		if err := <-errs; err != nil && first == nil {
			first = err
			cancel()
		}
	}
	return first
}
