package main

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/internal/ops"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// listenMetrics is the default operations address of `deeptrace metrics`.
const listenMetrics = "127.0.0.1:9476"

func metricsCmd() *cobra.Command {
	var (
		es          esFlags
		rf          redisFlags
		of          = ops.Flags{Listen: listenMetrics}
		sch         rollup.SchedulerConfig
		ev          alerting.EvaluatorConfig
		concurrency int
		noWorker    bool
		noRollup    bool
		noAlerts    bool
	)
	cmd := withEnv(&cobra.Command{
		Use:   "metrics",
		Short: "Roll spans up into per-minute RED metrics, evaluate alert rules, deliver their notifications",
		Long: `Three loops, each safe to run in several replicas:

- the rollup scheduler enqueues one task per (minute, service shard) once the
  minute is --rollup-lateness old, and re-opens minutes that received spans
  after their rollup (task ids dedupe, a watermark in Redis backfills);
- the alert evaluator reads the metrics index every --alert-schedule and moves
  each rule through ok, pending, firing and resolved;
- an asynq worker serves the rollup tasks (queue "metrics") and the webhook
  notifications (queue "notify", retried with backoff, archived as dead letters
  after 10 failures; see the asynq monitor).

--no-worker leaves the tasks to workers that register rollup.Register and
alerting.Register.`,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := of.Logger()
			if err != nil {
				return err
			}
			ctx := c.Context()
			st, err := es.open()
			if err != nil {
				return err
			}
			rdb, err := rf.open(ctx)
			if err != nil {
				return err
			}
			defer rdb.Close()
			reg := ops.NewRegistry()
			go func() {
				err := ops.Serve(ctx, of.Listen, reg, func(ctx context.Context) error {
					_, err := st.Ping(ctx)
					return errors.Join(err, rdb.Ping(ctx).Err())
				})
				if err != nil {
					log.Error("ops endpoint", "err", err)
				}
			}()
			var wg sync.WaitGroup
			errc := make(chan error, 3)
			run := func(f func(context.Context) error) {
				wg.Add(1)
				go func() { defer wg.Done(); errc <- f(ctx) }()
			}
			if !noRollup {
				sch.Logger = log
				s, err := rollup.NewScheduler(sch, rdb, st)
				if err != nil {
					return err
				}
				run(s.Run)
			}
			if !noAlerts {
				ev.Logger = log
				run(alerting.NewEvaluator(ev, rdb, st).Run)
			}
			if !noWorker {
				srv := asynq.NewServerFromRedisClient(rdb, asynq.Config{
					Concurrency: concurrency,
					Queues:      map[string]int{alerting.QueueNotify: 5, rollup.QueueMetrics: 3},
					RetryDelayFunc: func(n int, err error, t *asynq.Task) time.Duration {
						if t.Type() == alerting.TypeNotify {
							return alerting.RetryDelay(n, err, t)
						}
						return rollup.RetryDelay(n, err, t)
					},
					IsFailure:       func(err error) bool { return !errors.Is(err, rollup.ErrLocked) },
					ShutdownTimeout: 20 * time.Second, DelayedTaskCheckInterval: time.Second, LogLevel: asynq.WarnLevel,
				})
				mux := asynq.NewServeMux()
				rollup.Register(mux, rollup.New(rollup.Config{Logger: log}, st, rdb))
				alerting.Register(mux, alerting.NewNotifier(rdb))
				if err := srv.Start(mux); err != nil {
					return fmt.Errorf("metrics worker: %w", err)
				}
				defer srv.Shutdown()
			}
			log.Info("metrics running", "rollup", !noRollup, "alerts", !noAlerts, "worker", !noWorker)
			<-ctx.Done()
			wg.Wait()
			close(errc)
			for err := range errc {
				if err != nil {
					return err
				}
			}
			return nil
		},
	})
	fs := cmd.Flags()
	es.register(fs)
	rf.register(fs, "rollup and notification queues, alert state")
	of.Register(fs)
	fs.IntVar(&sch.Shards, "rollup-shards", 8, "service shards per minute")
	fs.DurationVar(&sch.Lateness, "rollup-lateness", 30*time.Second, "roll a minute up this long after it ends")
	fs.StringVar(&sch.Spec, "rollup-schedule", "@every 10s", "cron schedule of the rollup ticks")
	fs.DurationVar(&sch.MaxBackfill, "rollup-max-backfill", 6*time.Hour, "catch up at most this far after downtime")
	fs.DurationVar(&sch.LateHorizon, "rollup-late-horizon", 6*time.Hour, "how far back late spans re-open a rolled-up minute")
	fs.DurationVar(&ev.Delay, "alert-delay", 2*time.Minute, "evaluate rules on data this far behind now (the rollup's lateness and run time)")
	fs.StringVar(&ev.Spec, "alert-schedule", "@every 30s", "cron schedule of the rule evaluations")
	fs.IntVar(&concurrency, "concurrency", 4, "rollup and notification tasks run at once")
	fs.BoolVar(&noWorker, "no-worker", false, "do not serve the rollup and notification tasks here")
	fs.BoolVar(&noRollup, "no-rollup", false, "do not schedule rollups here")
	fs.BoolVar(&noAlerts, "no-alerts", false, "do not evaluate alert rules here")
	return cmd
}
