package alerting

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// EvaluatePayload is the payload of a jobs.TypeEvaluate task: evaluate
// every rule on the metrics ending at End (a whole minute, exclusive).
type EvaluatePayload struct {
	End time.Time `json:"end"`
	// WaitUntil is how long the evaluation waits for the rollup of its
	// last minute; a worker that runs it later with the minute still not
	// rolled up skips it. Zero (a task enqueued before the field existed)
	// means End plus the scheduler's default delay and wait.
	WaitUntil time.Time `json:"wait_until,omitzero"`
}

// Validate checks a payload read from Redis.
func (p EvaluatePayload) Validate() error {
	if p.End.IsZero() || !p.End.Equal(p.End.Truncate(time.Minute)) {
		return fmt.Errorf("evaluate payload: end %s is not a whole minute", p.End)
	}
	if !p.WaitUntil.IsZero() && p.WaitUntil.Before(p.End) {
		return fmt.Errorf("evaluate payload: wait_until %s is before the end %s", p.WaitUntil, p.End)
	}
	return nil
}

// waitUntil is WaitUntil, or its default for a payload without it.
func (p EvaluatePayload) waitUntil() time.Time {
	if p.WaitUntil.IsZero() {
		return p.End.Add(defaultEvaluateDelay + defaultEvaluateWait)
	}
	return p.WaitUntil
}

// TaskID derives the task id from the minute: a repeated tick or a second
// scheduler cannot enqueue the same evaluation twice.
func (p EvaluatePayload) TaskID() string {
	return fmt.Sprintf("alert-eval:%d", p.End.UnixNano())
}

// evaluateRetries bounds the failures of an evaluation (the engine or
// Redis failing). Waiting for the rollup or for another evaluation is no
// failure and does not count (the worker's asynq IsFailure): the payload's
// WaitUntil bounds it, and evaluateRetryDelay paces it.
const (
	evaluateRetries    = 12
	evaluateRetryDelay = 5 * time.Second

	defaultEvaluateDelay = time.Minute
	defaultEvaluateWait  = time.Minute
)

// NewEvaluateTask builds the task (jobs.TypeEvaluate, on
// jobs.QueueMetrics) of a payload.
func NewEvaluateTask(p EvaluatePayload, opts ...asynq.Option) (*asynq.Task, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	opts = append([]asynq.Option{asynq.TaskID(p.TaskID()), asynq.Queue(jobs.QueueMetrics), asynq.MaxRetry(evaluateRetries),
		asynq.Timeout(time.Minute)}, opts...)
	return asynq.NewTask(jobs.TypeEvaluate, b, opts...), nil
}

// ParseEvaluatePayload decodes and validates a task payload.
func ParseEvaluatePayload(b []byte) (EvaluatePayload, error) {
	var p EvaluatePayload
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("evaluate payload: %w", err)
	}
	return p, p.Validate()
}

// errNotRolledUp is returned (and the task retried) while the last minute
// an evaluation reads has not been rolled up by every shard.
var errNotRolledUp = errors.New("the evaluated minute is not rolled up yet")

// ProcessTask runs one scheduled evaluation; Evaluator is an
// asynq.Handler. It waits (by retrying) until the last minute it reads is
// rolled up, so that a minute not yet rolled up never reads as "no
// traffic"; when that takes past the payload's WaitUntil it skips the
// minute, logging and counting it, and the next minute's evaluation takes
// over. The bound is a time, not a number of retries: a worker does not
// count waiting as a failure, so asynq's retry count does not grow.
func (e *Evaluator) ProcessTask(ctx context.Context, t *asynq.Task) error {
	p, err := ParseEvaluatePayload(t.Payload())
	if err != nil {
		return fmt.Errorf("%w: %v", asynq.SkipRetry, err)
	}
	over := !time.Now().Before(p.waitUntil())
	done, err := rollup.RolledUp(ctx, e.rdb, p.End.Add(-time.Minute))
	if err != nil {
		return err
	}
	if !done {
		if !over {
			return errNotRolledUp
		}
		e.skipped.Inc()
		e.log.Warn("alert evaluation skipped: its last minute was not rolled up in time "+
			"(is the rollup scheduled, with the shards its workers expect?)", "end", p.End, "waited_until", p.waitUntil())
		return nil
	}
	rep, err := e.EvaluateEnd(ctx, p.End)
	if errors.Is(err, ErrEvaluating) && over {
		e.skipped.Inc()
		e.log.Warn("alert evaluation skipped: another evaluation held the lock until its wait ended",
			"end", p.End, "waited_until", p.waitUntil())
		return nil
	}
	if err != nil {
		return err
	}
	e.log.Debug("alert rules evaluated", "end", p.End, "rules", rep.Rules, "transitions", len(rep.Transitions),
		"notified", rep.Notified, "took", rep.Took)
	return nil
}

// RegisterEvaluator adds the scheduled evaluation's handler to a worker's
// mux; its server must serve jobs.QueueMetrics.
func RegisterEvaluator(mux *asynq.ServeMux, e *Evaluator) { mux.Handle(jobs.TypeEvaluate, e) }

// EvaluateRetryDelay is the asynq retry delay of evaluation tasks: a
// minute not rolled up yet, or another evaluation running, is worth
// another look soon.
func EvaluateRetryDelay(n int, err error, t *asynq.Task) time.Duration {
	return evaluateRetryDelay
}

// IsRetryWait says whether err only means "not yet" (the rollup of the
// minute, or another evaluation): a worker does not count it as a failure.
func IsRetryWait(err error) bool {
	return errors.Is(err, errNotRolledUp) || errors.Is(err, ErrEvaluating)
}

// SchedulerConfig configures the evaluation schedule; zero values take the
// defaults in parentheses.
type SchedulerConfig struct {
	// Delay is how long after a minute ends the rules are evaluated on the
	// data up to it (1m). The evaluation also waits for the minute's
	// rollup; Delay only keeps it from waiting long in a worker.
	Delay time.Duration
	// Wait is how long past Delay an evaluation waits for the minute's
	// rollup before it is skipped (1m).
	Wait time.Duration
	// Spec is the cron spec of a tick ("@every 10s").
	Spec   string
	Logger *slog.Logger
}

func (c *SchedulerConfig) defaults() {
	if c.Delay == 0 {
		c.Delay = defaultEvaluateDelay
	}
	if c.Wait == 0 {
		c.Wait = defaultEvaluateWait
	}
	if c.Spec == "" {
		c.Spec = "@every 10s"
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate checks the configuration and names the bad setting.
func (c SchedulerConfig) Validate() error {
	c.defaults()
	if c.Delay < 0 || c.Delay > time.Hour {
		return fmt.Errorf("alert delay %s: want 0..1h", c.Delay)
	}
	if c.Wait < 0 || c.Wait > time.Hour {
		return fmt.Errorf("alert wait %s: want 0..1h", c.Wait)
	}
	if err := jobs.ParseSpec(c.Spec); err != nil {
		return fmt.Errorf("alert schedule: %w", err)
	}
	return nil
}

// Scheduler enqueues one evaluation task per minute of data, once the
// minute is Delay old. Its task id derives from the minute, so replicas
// and repeated ticks enqueue it once; workers run it (Evaluator's
// ProcessTask). A scheduler that was down does not catch up: evaluating
// old minutes after newer ones changes nothing, and the newest minute's
// evaluation covers each rule's whole window.
type Scheduler struct {
	cfg    SchedulerConfig
	client *asynq.Client
	log    *slog.Logger
}

// NewScheduler builds an evaluation scheduler on the pipeline's Redis.
func NewScheduler(cfg SchedulerConfig, rdb redis.UniversalClient) (*Scheduler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	return &Scheduler{cfg: cfg, client: asynq.NewClientFromRedisClient(rdb), log: cfg.Logger.With("component", "alert-scheduler")}, nil
}

// Tick enqueues the evaluation of the data ending at now-Delay (truncated
// to the minute); enqueued is false when it was enqueued before.
func (s *Scheduler) Tick(ctx context.Context, now time.Time) (end time.Time, enqueued bool, err error) {
	end = now.UTC().Add(-s.cfg.Delay).Truncate(time.Minute)
	t, err := NewEvaluateTask(EvaluatePayload{End: end, WaitUntil: end.Add(s.cfg.Delay + s.cfg.Wait)}, asynq.Retention(2*time.Hour))
	if err != nil {
		return end, false, err
	}
	_, err = s.client.EnqueueContext(ctx, t)
	switch {
	case errors.Is(err, asynq.ErrTaskIDConflict):
		return end, false, nil
	case err != nil:
		return end, false, fmt.Errorf("enqueue alert evaluation %s: %w", end, err)
	}
	return end, true, nil
}

// Run ticks until ctx ends; the first tick runs at once.
func (s *Scheduler) Run(ctx context.Context) error {
	tick := func() {
		if _, _, err := s.Tick(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.log.Error("alert evaluation tick", "err", err)
		}
	}
	if err := jobs.RunCron(ctx, s.cfg.Spec, tick); err != nil {
		return fmt.Errorf("alert schedule: %w", err)
	}
	return nil
}
