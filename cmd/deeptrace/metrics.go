package main

import (
	"context"
	"errors"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/internal/ops"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/worker"
)

// listenMetrics is the default operations address of `deeptrace metrics`.
const listenMetrics = "127.0.0.1:9476"

// metricsCmd is the former home of the rollup and alerting loops, kept
// for one release so that deployments that run it keep working: the
// scheduler now schedules the rollup and the rule evaluations and every
// worker serves their queues. Running it beside them is harmless (task ids
// dedupe, evaluations take a lock).
func metricsCmd() *cobra.Command {
	var (
		es          esFlags
		rf          redisFlags
		of          = ops.Flags{Listen: listenMetrics}
		mf          metricsScheduleFlags
		concurrency int
		noWorker    bool
		allowLocal  bool
	)
	cmd := withEnv(&cobra.Command{
		Use:   "metrics",
		Short: "Deprecated: `deeptrace scheduler` and `deeptrace worker` roll up metrics and evaluate alerts",
		Deprecated: "the scheduler now schedules the metrics rollup and the alert evaluations (--rollup-*, --alert-*), " +
			"and every worker serves the metrics and notify queues; run those and drop this command, which will be removed",
		Long: `Deprecated. Runs what the scheduler and the worker now run: the rollup and
alert evaluation schedules, and a worker limited to the "metrics" and "notify"
queues (--no-worker, --no-rollup, --no-alerts leave one out).`,
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
			loops, err := mf.loops(rdb, st, log)
			if err != nil {
				return err
			}
			if !noWorker {
				w, err := worker.New(worker.Config{Concurrency: concurrency, Queues: []string{jobs.QueueMetrics, jobs.QueueNotify},
					WebhookAllowLocal: allowLocal, Registerer: reg, Logger: log}, st, rdb)
				if err != nil {
					return err
				}
				loops = append(loops, w.Run)
			}
			go func() {
				err := ops.Serve(ctx, of.Listen, reg, func(ctx context.Context) error {
					_, err := st.Ping(ctx)
					return errors.Join(err, rdb.Ping(ctx).Err())
				})
				if err != nil {
					log.Error("ops endpoint", "err", err)
				}
			}()
			log.Warn("deeptrace metrics is deprecated: the scheduler and the workers do its work")
			return runAll(ctx, loops...)
		},
	})
	fs := cmd.Flags()
	es.register(fs)
	rf.register(fs, "rollup, evaluation and notification queues, alert state")
	of.Register(fs)
	mf.register(fs)
	fs.IntVar(&concurrency, "concurrency", 4, "rollup, evaluation and notification tasks run at once")
	fs.BoolVar(&noWorker, "no-worker", false, "do not serve the metrics and notify queues here")
	fs.BoolVar(&allowLocal, "webhook-allow-local", false, "let alert webhooks reach loopback, link-local (cloud metadata) and unspecified addresses, refused otherwise")
	return cmd
}
