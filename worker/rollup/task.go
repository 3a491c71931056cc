// Package rollup rolls spans up into one-minute RED metrics (request rate,
// errors, duration percentiles) per service, per operation and per
// service-to-service edge, written to the daily metrics indices. A cron
// scheduler enqueues one asynq task per (minute, service shard); the
// handler reads the minute's spans of the shard's services, computes exact
// percentiles in memory, and writes documents whose ids derive from
// (minute, scope, service, operation, peer), so a re-run overwrites and
// never double counts. Spans that arrive after their minute was rolled up
// re-open it (a new generation of its tasks). Series reads the documents
// back as time series over any range and step.
package rollup

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/hibiken/asynq"

	"github.com/deeptrace/deeptrace/jobs"
)

// ErrLocked is returned when another run of the same (minute, shard) holds
// its lock; the task is retried shortly.
var ErrLocked = errors.New("rollup of this minute and shard is running elsewhere")

// Payload is a rollup task's payload.
type Payload struct {
	Minute time.Time `json:"minute"`
	Shard  int       `json:"shard"`
	Shards int       `json:"shards"`
	// Generation numbers the re-runs the scheduler enqueues for late
	// spans; it is part of the task id.
	Generation int `json:"generation,omitempty"`
}

// Validate checks a payload read from Redis.
func (p Payload) Validate() error {
	switch {
	case p.Minute.IsZero() || !p.Minute.Equal(p.Minute.Truncate(time.Minute)):
		return fmt.Errorf("rollup payload: minute %s is not a whole minute", p.Minute)
	case p.Shards < 1 || p.Shards > 4096:
		return fmt.Errorf("rollup payload: shards %d outside 1..4096", p.Shards)
	case p.Shard < 0 || p.Shard >= p.Shards:
		return fmt.Errorf("rollup payload: shard %d outside 0..%d", p.Shard, p.Shards-1)
	case p.Generation < 0:
		return fmt.Errorf("rollup payload: generation %d negative", p.Generation)
	}
	return nil
}

// TaskID derives the task id from (minute, shard, generation): a repeated
// tick or a second scheduler cannot enqueue the same work twice.
func (p Payload) TaskID() string {
	id := fmt.Sprintf("rollup:%d:%d/%d", p.Minute.UnixNano(), p.Shard, p.Shards)
	if p.Generation > 0 {
		id += fmt.Sprintf(":g%d", p.Generation)
	}
	return id
}

// NewTask builds the asynq task (jobs.TypeRollup, on jobs.QueueMetrics) of
// a payload.
func NewTask(p Payload, opts ...asynq.Option) (*asynq.Task, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	opts = append([]asynq.Option{asynq.TaskID(p.TaskID()), asynq.Queue(jobs.QueueMetrics), asynq.MaxRetry(10)}, opts...)
	return asynq.NewTask(jobs.TypeRollup, b, opts...), nil
}

// ParsePayload decodes and validates a task payload.
func ParsePayload(b []byte) (Payload, error) {
	var p Payload
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("rollup payload: %w", err)
	}
	return p, p.Validate()
}
