// Package jobs defines DeepTrace's asynq tasks (types, payloads, ids, queues)
// and schedules them: the cron scheduler enqueues live assembly per time
// window and service shard; reassembly jobs fan out over a range on demand.
//
// Every task type and queue name is defined here, also for the tasks whose
// payloads and handlers live with their work (worker/rollup, alerting), so
// the worker's server, the scheduler and the asynq monitor agree on them.
package jobs

import (
	"encoding/json"
	"fmt"
	"hash/fnv"
	"time"

	"github.com/hibiken/asynq"
)

// Task types.
const (
	// TypeAssemble assembles the traces of one window and service shard.
	TypeAssemble = "deeptrace:assemble"
	// TypeRollup rolls one minute and service shard of spans up into RED
	// metrics (worker/rollup).
	TypeRollup = "deeptrace:rollup"
	// TypeEvaluate evaluates every alert rule on the metrics ending at one
	// minute (alerting).
	TypeEvaluate = "deeptrace:alert:evaluate"
	// TypeNotify delivers one alert notification to a webhook (alerting).
	TypeNotify = "deeptrace:alert:notify"
)

// Queues.
const (
	// QueueLive holds live assembly.
	QueueLive = "assembly"
	// QueueReassembly holds reassembly jobs and late re-assemblies.
	QueueReassembly = "reassembly"
	// QueueMetrics holds rollups and rule evaluations.
	QueueMetrics = "metrics"
	// QueueNotify holds alert notifications; those that exhaust their
	// retries are archived there, the dead letters the asynq monitor shows.
	QueueNotify = "notify"
)

// Queues maps each queue a worker serves to its asynq priority weight.
// Live assembly comes first; a notification is small and late ones are
// worth little, so it comes next; rollups and rule evaluations follow
// (their lateness allowance absorbs a wait); reassembly is batch work.
var Queues = map[string]int{QueueLive: 6, QueueNotify: 4, QueueMetrics: 3, QueueReassembly: 2}

// AssemblePayload is the payload of a TypeAssemble task.
type AssemblePayload struct {
	// WindowStart is inclusive, WindowEnd exclusive.
	WindowStart time.Time `json:"window_start"`
	WindowEnd   time.Time `json:"window_end"`
	Shard       int       `json:"shard"`
	Shards      int       `json:"shards"`
	// JobID names the reassembly job the task belongs to; empty for live
	// assembly.
	JobID string `json:"job_id,omitempty"`
	// Services limits a reassembly to these services (empty: all).
	Services []string `json:"services,omitempty"`
	// Generation numbers the re-assemblies of a window that the scheduler
	// enqueues when spans arrive after the window was assembled; 0 is the
	// live assembly. It is part of the task id, so a re-assembly is not
	// deduplicated away by the live task's retained id.
	Generation int `json:"generation,omitempty"`
	// Margin is how far past WindowEnd the worker follows a trace whose
	// root starts in the window (0: the worker's default). The scheduler
	// sets it so every worker agrees with the lateness it waited for.
	Margin time.Duration `json:"margin,omitempty"`
}

// Validate checks a payload read from Redis before a worker trusts it.
func (p AssemblePayload) Validate() error {
	switch {
	case p.WindowStart.IsZero() || p.WindowEnd.IsZero():
		return fmt.Errorf("assemble payload: window_start and window_end are required")
	case !p.WindowEnd.After(p.WindowStart):
		return fmt.Errorf("assemble payload: window_end %s not after window_start %s", p.WindowEnd, p.WindowStart)
	case p.WindowEnd.Sub(p.WindowStart) > 24*time.Hour:
		return fmt.Errorf("assemble payload: window of %s longer than 24h", p.WindowEnd.Sub(p.WindowStart))
	case p.Shards < 1 || p.Shards > 4096:
		return fmt.Errorf("assemble payload: shards %d outside 1..4096", p.Shards)
	case p.Shard < 0 || p.Shard >= p.Shards:
		return fmt.Errorf("assemble payload: shard %d outside 0..%d", p.Shard, p.Shards-1)
	case p.Generation < 0:
		return fmt.Errorf("assemble payload: generation %d negative", p.Generation)
	case p.Margin < 0 || p.Margin > time.Hour:
		return fmt.Errorf("assemble payload: margin %s outside 0..1h", p.Margin)
	}
	return nil
}

// TaskID derives the task's id from (window, shard) and the job, so that a
// second scheduler or a repeated tick cannot enqueue the same work twice.
func (p AssemblePayload) TaskID() string {
	id := fmt.Sprintf("assemble:%d:%d:%d/%d", p.WindowStart.UnixNano(), p.WindowEnd.UnixNano(), p.Shard, p.Shards)
	if p.Generation > 0 {
		id += fmt.Sprintf(":g%d", p.Generation)
	}
	if p.JobID != "" {
		id = "re:" + p.JobID + ":" + id
	}
	return id
}

// NewAssembleTask builds the asynq task of a payload, on the live queue, or
// the reassembly queue for a reassembly job or a late re-assembly.
func NewAssembleTask(p AssemblePayload) (*asynq.Task, error) {
	if err := p.Validate(); err != nil {
		return nil, err
	}
	b, err := json.Marshal(p)
	if err != nil {
		return nil, err
	}
	q := QueueLive
	if p.JobID != "" || p.Generation > 0 {
		q = QueueReassembly
	}
	return asynq.NewTask(TypeAssemble, b, asynq.TaskID(p.TaskID()), asynq.Queue(q), asynq.MaxRetry(10)), nil
}

// ParseAssemblePayload decodes and validates a task payload.
func ParseAssemblePayload(b []byte) (AssemblePayload, error) {
	var p AssemblePayload
	if err := json.Unmarshal(b, &p); err != nil {
		return p, fmt.Errorf("assemble payload: %w", err)
	}
	return p, p.Validate()
}

// ShardOf hashes a service into one of n shards.
func ShardOf(service string, n int) int {
	h := fnv.New32a()
	h.Write([]byte(service))
	return int(h.Sum32() % uint32(n))
}
