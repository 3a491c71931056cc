package worker

import (
	"context"
	"errors"
	"sort"
	"strings"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// Server builds the worker's asynq server and mux: every task type of
// jobs (assembly, rollup, rule evaluation, notification) has its handler,
// and the server serves the configured queues with the weights of
// jobs.Queues. Run starts it; tests and embedders may start it
// themselves.
func (w *Worker) Server() (*asynq.Server, *asynq.ServeMux) {
	srv := asynq.NewServerFromRedisClient(w.rdb, asynq.Config{
		Concurrency:              w.cfg.Concurrency,
		Queues:                   w.queues(),
		RetryDelayFunc:           retryDelay,
		IsFailure:                isFailure,
		ShutdownTimeout:          w.cfg.ShutdownTimeout,
		DelayedTaskCheckInterval: time.Second,
		LogLevel:                 asynq.WarnLevel,
	})
	mux := asynq.NewServeMux()
	mux.Handle(jobs.TypeAssemble, w)
	rollup.Register(mux, w.roller)
	alerting.RegisterEvaluator(mux, w.evaluator)
	alerting.Register(mux, w.notifier)
	mux.Use(w.countOthers)
	return srv, mux
}

// queues are the served queues with their weights.
func (w *Worker) queues() map[string]int {
	if len(w.cfg.Queues) == 0 {
		return jobs.Queues
	}
	out := map[string]int{}
	for _, q := range w.cfg.Queues {
		out[q] = jobs.Queues[q]
	}
	return out
}

func queueNames() string {
	names := make([]string, 0, len(jobs.Queues))
	for q := range jobs.Queues {
		names = append(names, q)
	}
	sort.Strings(names)
	return strings.Join(names, ", ")
}

// retryDelay picks each task type's backoff.
func retryDelay(n int, err error, t *asynq.Task) time.Duration {
	switch t.Type() {
	case jobs.TypeRollup:
		return rollup.RetryDelay(n, err, t)
	case jobs.TypeEvaluate:
		return alerting.EvaluateRetryDelay(n, err, t)
	case jobs.TypeNotify:
		return alerting.RetryDelay(n, err, t)
	}
	return assembleRetryDelay(n, err, t)
}

// isFailure keeps "not now" answers (a lock held by another run, a minute
// not rolled up yet) out of asynq's failure counts.
func isFailure(err error) bool {
	return !errors.Is(err, jobs.ErrLocked) && !errors.Is(err, rollup.ErrLocked) && !alerting.IsRetryWait(err)
}

// countOthers counts the tasks other than assembly (which counts its own,
// with more detail) by type and outcome.
func (w *Worker) countOthers(next asynq.Handler) asynq.Handler {
	return asynq.HandlerFunc(func(ctx context.Context, t *asynq.Task) error {
		if t.Type() == jobs.TypeAssemble {
			return next.ProcessTask(ctx, t)
		}
		err := next.ProcessTask(ctx, t)
		outcome := "done"
		switch {
		case err != nil && !isFailure(err):
			outcome = "wait"
		case err != nil:
			outcome = "failed"
		}
		w.m.otherTasks.WithLabelValues(t.Type(), outcome).Inc()
		return err
	})
}
