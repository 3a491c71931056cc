package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/internal/ops"
	"github.com/deeptrace/deeptrace/worker"
)

// testDelayEnv pauses every assembly run mid-write; the pipeline's tests
// use it to kill a worker in the middle of a task.
const testDelayEnv = "DEEPTRACE_WORKER_TEST_DELAY"

func workerCmd() *cobra.Command {
	var (
		es  esFlags
		rf  redisFlags
		of  = ops.Flags{Listen: ops.ListenWorker}
		cfg worker.Config
	)
	cmd := withEnv(&cobra.Command{
		Use:   "worker",
		Short: "Assemble traces, roll up metrics, evaluate alerts and notify: serve the scheduler's asynq tasks",
		Long: `A worker serves the tasks of every queue, by weight: live assembly
("assembly"), alert notifications ("notify"), metrics rollups and alert rule
evaluations ("metrics"), reassembly ("reassembly"). --queues limits it to some.

For each (window, service shard) it reads the window's spans of the shard's
services, follows cross-service calls into other shards, joins client and
server spans, builds and checks each trace, and writes every trace whose root
it owns as one document (its id derives from the root span, so a rerun
overwrites). A rollup task writes one minute's RED metrics of a shard; an
evaluation task (once the minute is rolled up) moves the alert rules through
their states and enqueues notifications; a notification task POSTs to the
rule's webhook. Workers keep no state and scale horizontally; on SIGTERM a
worker finishes its tasks within --shutdown-timeout or hands them back.`,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := of.Logger()
			if err != nil {
				return err
			}
			if v := os.Getenv(testDelayEnv); v != "" {
				d, err := time.ParseDuration(v)
				if err != nil {
					return fmt.Errorf("%s=%q: %w", testDelayEnv, v, err)
				}
				cfg.TestDelay = d
				log.Warn("test delay set: every run pauses mid-write", "delay", d)
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
			cfg.Registerer, cfg.Logger = reg, log
			w, err := worker.New(cfg, st, rdb)
			if err != nil {
				return err
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
			return w.Run(ctx)
		},
	})
	fs := cmd.Flags()
	es.register(fs)
	rf.register(fs, "task queues, assembly and rollup state, alert rules and states")
	of.Register(fs)
	fs.IntVar(&cfg.Concurrency, "concurrency", 4, "tasks run at once")
	fs.DurationVar(&cfg.Margin, "margin", 10*time.Second, "how far past its window a trace is followed when the task does not say")
	fs.DurationVar(&cfg.Skew, "skew", 50*time.Millisecond, "clock skew allowed between hosts when joining a client and a server span")
	fs.DurationVar(&cfg.LockTTL, "lock-ttl", 30*time.Second, "how long a dead worker's hold on a window lasts")
	fs.DurationVar(&cfg.ShutdownTimeout, "shutdown-timeout", 20*time.Second, "on SIGTERM, time running tasks get before they go back to the queue")
	fs.StringSliceVar(&cfg.Queues, "queues", nil, "serve only these queues: assembly, reassembly, metrics, notify (default all)")
	fs.BoolVar(&cfg.WebhookAllowLocal, "webhook-allow-local", false, "let alert webhooks reach loopback, link-local (cloud metadata) and unspecified addresses, refused otherwise; for tests and local demos")
	return cmd
}
