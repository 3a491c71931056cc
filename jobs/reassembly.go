package jobs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"
)

// A reassembly job re-runs trace assembly over a past time range on demand
// (late spans, a fixed assembler, a restored span index). StartReassembly
// plans it as windows × shards TypeAssemble tasks on QueueReassembly, each
// carrying the job's id in AssemblePayload.JobID, and keeps a small record
// of the job in Redis that the API shows while the workers report progress
// through JobDone.
//
// Redis keys (all under "deeptrace:"):
//
//	deeptrace:job:<id>         hash, the JobStatus fields
//	deeptrace:jobs             sorted set of job ids by creation time
//	deeptrace:cache:gen:<day>  query-cache generation of one UTC day
//	deeptrace:cache:gen:all    query-cache generation of unbounded queries

// Job states.
const (
	StateRunning = "running"
	StateDone    = "done"
	// JobFailed means every task was accounted for and at least one failed
	// (or could not be enqueued); Done says how many succeeded.
	StateFailed = "failed"
)

// Limits of a reassembly job.
const (
	// MaxReassemblyTasks bounds windows × shards of one job.
	MaxReassemblyTasks = 20000
	// JobRetention is how long a job record stays after its last change.
	JobRetention = 30 * 24 * time.Hour
)

// ErrJobNotFound is returned for an unknown or expired job id.
var ErrJobNotFound = errors.New("reassembly job not found")

// JobStatus is the record of one reassembly job.
type JobStatus struct {
	ID       string    `json:"id"`
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Window   Duration  `json:"window"`
	Shards   int       `json:"shards"`
	Services []string  `json:"services,omitempty"`
	// Total is the number of tasks planned; Done and Failed count the
	// tasks the workers reported (Failed also counts tasks that could not
	// be enqueued).
	Total    int       `json:"total"`
	Done     int       `json:"done"`
	Failed   int       `json:"failed"`
	State    string    `json:"state"`
	Created  time.Time `json:"created"`
	Finished time.Time `json:"finished,omitzero"`
}

// Duration is a time.Duration that reads and writes JSON as "5m0s".
type Duration time.Duration

// MarshalJSON writes the duration as a Go duration string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads a Go duration string or a number of nanoseconds.
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		v, err := time.ParseDuration(s)
		if err != nil {
			return err
		}
		*d = Duration(v)
		return nil
	}
	var n int64
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("duration: want a string like \"5m\" or nanoseconds: %w", err)
	}
	*d = Duration(n)
	return nil
}

// IsFinished reports whether every task of the job was accounted for.
func (j JobStatus) IsFinished() bool { return j.State != StateRunning }

const (
	keyJob    = "deeptrace:job:"
	keyJobs   = "deeptrace:jobs"
	keyGen    = "deeptrace:cache:gen:"
	keyGenAll = keyGen + "all"
	// genRetention outlives every cached entry by far; a generation key
	// that expires restarts from "missing", which no live entry carries.
	genRetention = 35 * 24 * time.Hour
	// maxGenDays bounds the per-day keys one call touches; wider ranges
	// are served by the "all" generation only.
	maxGenDays = 3660
)

// PlanReassembly lists the tasks of a reassembly of [from, to): windows
// aligned to window (as live assembly aligns them), times the shards that
// hold services (all shards when services is empty).
func PlanReassembly(jobID string, from, to time.Time, window time.Duration, shards int, services []string) ([]AssemblePayload, error) {
	from, to = from.UTC(), to.UTC()
	switch {
	case from.IsZero() || to.IsZero():
		return nil, errors.New("reassembly: from and to are required")
	case !to.After(from):
		return nil, fmt.Errorf("reassembly: to %s is not after from %s", to.Format(time.RFC3339), from.Format(time.RFC3339))
	case window < time.Second || window > 24*time.Hour:
		return nil, fmt.Errorf("reassembly: window %s outside 1s..24h", window)
	case shards < 1 || shards > 4096:
		return nil, fmt.Errorf("reassembly: shards %d outside 1..4096", shards)
	}
	var shardList []int
	if len(services) == 0 {
		for i := 0; i < shards; i++ {
			shardList = append(shardList, i)
		}
	} else {
		seen := map[int]bool{}
		for _, s := range services {
			if strings.TrimSpace(s) == "" {
				return nil, errors.New("reassembly: empty service name")
			}
			seen[ShardOf(s, shards)] = true
		}
		for sh := range seen {
			shardList = append(shardList, sh)
		}
		sort.Ints(shardList)
	}
	start := from.Truncate(window)
	windows := int((to.Sub(start) + window - 1) / window)
	if n := windows * len(shardList); n > MaxReassemblyTasks || windows < 0 {
		return nil, fmt.Errorf("reassembly: %d windows of %s × %d shards = %d tasks, more than %d; widen the window or narrow the range",
			windows, window, len(shardList), n, MaxReassemblyTasks)
	}
	out := make([]AssemblePayload, 0, windows*len(shardList))
	for w := start; w.Before(to); w = w.Add(window) {
		for _, sh := range shardList {
			out = append(out, AssemblePayload{
				WindowStart: w, WindowEnd: w.Add(window), Shard: sh, Shards: shards,
				JobID: jobID, Services: services,
			})
		}
	}
	return out, nil
}

// StartReassembly creates a reassembly job over [from, to) and enqueues its
// tasks (see PlanReassembly) on QueueReassembly. The job record is written
// before the first task is enqueued, so a fast worker always finds it.
// Tasks that cannot be enqueued count as failed; the error is non-nil only
// when the job could not be created or no task was enqueued.
func StartReassembly(ctx context.Context, client *asynq.Client, rdb redis.UniversalClient, from, to time.Time, window time.Duration, shards int, services []string) (JobStatus, error) {
	id := newJobID()
	tasks, err := PlanReassembly(id, from, to, window, shards, services)
	if err != nil {
		return JobStatus{}, err
	}
	now := time.Now().UTC()
	job := JobStatus{
		ID: id, From: from.UTC(), To: to.UTC(), Window: Duration(window), Shards: shards,
		Services: services, Total: len(tasks), State: StateRunning, Created: now,
	}
	svc, _ := json.Marshal(services)
	key := keyJob + id
	pipe := rdb.TxPipeline()
	pipe.HSet(ctx, key,
		"id", id, "from", job.From.Format(time.RFC3339Nano), "to", job.To.Format(time.RFC3339Nano),
		"window", int64(window), "shards", shards, "services", string(svc),
		"total", job.Total, "done", 0, "failed", 0, "state", StateRunning,
		"created", now.Format(time.RFC3339Nano), "finished", "")
	pipe.Expire(ctx, key, JobRetention)
	pipe.ZAdd(ctx, keyJobs, redis.Z{Score: float64(now.UnixNano()), Member: id})
	if _, err := pipe.Exec(ctx); err != nil {
		return JobStatus{}, fmt.Errorf("reassembly %s: store job: %w", id, err)
	}
	var enqErr error
	unqueued := 0
	for _, p := range tasks {
		t, err := NewAssembleTask(p)
		if err == nil {
			_, err = client.EnqueueContext(ctx, t)
		}
		if err != nil {
			unqueued++
			if enqErr == nil {
				enqErr = fmt.Errorf("enqueue %s: %w", p.TaskID(), err)
			}
		}
	}
	if unqueued > 0 {
		if _, err := account(ctx, rdb, id, "failed", unqueued); err != nil {
			return job, fmt.Errorf("reassembly %s: %d tasks not enqueued (%v), and recording that failed: %w", id, unqueued, enqErr, err)
		}
	}
	st, err := GetJob(ctx, rdb, id)
	if err != nil {
		return job, err
	}
	if unqueued == len(tasks) {
		return st, fmt.Errorf("reassembly %s: no task could be enqueued: %w", id, enqErr)
	}
	return st, nil
}

// JobDone records the final outcome of one task of reassembly job jobID:
// ok=true when the task assembled and wrote its window, ok=false when it
// failed for good.
//
// For the worker: call it from the TypeAssemble handler when
// AssemblePayload.JobID is set, once per task and only at its final
// outcome — after a successful run, or after an error that asynq will not
// retry any more (asynq.GetRetryCount(ctx) >= asynq.GetMaxRetry(ctx), or an
// error wrapping asynq.SkipRetry). Calls for an unknown job (expired record)
// are ignored. Reports beyond the job's total are ignored, so a redelivered
// task cannot push the counts past it. When the last task is accounted for,
// the job is marked done (or failed, if any task failed) and the query cache
// of its range is invalidated (InvalidateRange).
func JobDone(ctx context.Context, rdb redis.UniversalClient, jobID string, ok bool) error {
	field := "done"
	if !ok {
		field = "failed"
	}
	finished, err := account(ctx, rdb, jobID, field, 1)
	if err != nil || !finished {
		return err
	}
	job, err := GetJob(ctx, rdb, jobID)
	if err != nil {
		return err
	}
	w := time.Duration(job.Window)
	return InvalidateRange(ctx, rdb, job.From.Add(-w), job.To.Add(w))
}

// accountScript adds n to a job's done or failed count, never past total,
// and marks the job finished when every task is accounted for. It returns
// -1 for an unknown job, 2 when this call finished the job, 1 otherwise.
var accountScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
local done = tonumber(redis.call('HGET', KEYS[1], 'done'))
local failed = tonumber(redis.call('HGET', KEYS[1], 'failed'))
local left = total - done - failed
if left <= 0 then return 0 end
local n = math.min(tonumber(ARGV[2]), left)
redis.call('HINCRBY', KEYS[1], ARGV[1], n)
redis.call('EXPIRE', KEYS[1], ARGV[4])
if n == left then
  local state = 'done'
  if failed > 0 or ARGV[1] == 'failed' then state = 'failed' end
  redis.call('HSET', KEYS[1], 'state', state, 'finished', ARGV[3])
  return 2
end
return 1
`)

func account(ctx context.Context, rdb redis.UniversalClient, jobID, field string, n int) (finished bool, err error) {
	now := time.Now().UTC().Format(time.RFC3339Nano)
	r, err := accountScript.Run(ctx, rdb, []string{keyJob + jobID}, field, n, now, int(JobRetention/time.Second)).Int()
	if err != nil {
		return false, fmt.Errorf("reassembly %s: record %s: %w", jobID, field, err)
	}
	return r == 2, nil
}

// GetJob reads a job's record; ErrJobNotFound when there is none.
func GetJob(ctx context.Context, rdb redis.UniversalClient, id string) (JobStatus, error) {
	m, err := rdb.HGetAll(ctx, keyJob+id).Result()
	if err != nil {
		return JobStatus{}, fmt.Errorf("reassembly %s: %w", id, err)
	}
	if len(m) == 0 {
		return JobStatus{}, ErrJobNotFound
	}
	return parseJob(m)
}

func parseJob(m map[string]string) (JobStatus, error) {
	j := JobStatus{ID: m["id"], State: m["state"]}
	var errs []error
	at := func(k string) time.Time {
		if m[k] == "" {
			return time.Time{}
		}
		t, err := time.Parse(time.RFC3339Nano, m[k])
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
		}
		return t
	}
	num := func(k string) int64 {
		v, err := strconv.ParseInt(m[k], 10, 64)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", k, err))
		}
		return v
	}
	j.From, j.To, j.Created, j.Finished = at("from"), at("to"), at("created"), at("finished")
	j.Window = Duration(num("window"))
	j.Shards, j.Total, j.Done, j.Failed = int(num("shards")), int(num("total")), int(num("done")), int(num("failed"))
	if s := m["services"]; s != "" && s != "null" {
		if err := json.Unmarshal([]byte(s), &j.Services); err != nil {
			errs = append(errs, fmt.Errorf("services: %w", err))
		}
	}
	if len(errs) > 0 {
		return j, fmt.Errorf("reassembly %s: corrupt record: %w", j.ID, errors.Join(errs...))
	}
	return j, nil
}

// ListJobs returns the newest jobs first, at most limit (default 50).
// Records that expired are dropped from the index as they are met.
func ListJobs(ctx context.Context, rdb redis.UniversalClient, limit int) ([]JobStatus, error) {
	if limit <= 0 {
		limit = 50
	}
	ids, err := rdb.ZRevRange(ctx, keyJobs, 0, int64(limit)-1).Result()
	if err != nil {
		return nil, fmt.Errorf("list reassembly jobs: %w", err)
	}
	out := make([]JobStatus, 0, len(ids))
	for _, id := range ids {
		j, err := GetJob(ctx, rdb, id)
		if errors.Is(err, ErrJobNotFound) {
			rdb.ZRem(ctx, keyJobs, id)
			continue
		}
		if err != nil {
			return out, err
		}
		out = append(out, j)
	}
	return out, nil
}

func newJobID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return time.Now().UTC().Format("20060102t150405") + "-" + hex.EncodeToString(b[:])
}

// ValidJobID reports whether id has the shape newJobID gives, so that
// user input never builds an arbitrary Redis key.
func ValidJobID(id string) bool {
	if len(id) != 32 || id[15] != '-' {
		return false
	}
	for _, c := range id[:15] + id[16:] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z') {
			return false
		}
	}
	return true
}

// InvalidateRange makes every cached query result over any part of
// [from, to] stale, and every cached unbounded query (trace by id, all
// services) too: it bumps the query-cache generation of each UTC day the
// range touches and the "all" generation. The API's cache puts these
// generations in its keys, so the next query misses and reads the engine.
//
// For the worker: call it after writing traces, with the range of the
// written traces' timestamps (or the assembly window, padded by the longest
// trace you expect), and only once the writes are searchable — bulk with
// refresh=wait_for, or after Store.Refresh. A bump before the documents are
// visible lets a query cache the old result under the new generation.
// JobDone already calls it for a reassembly job's whole range when the job
// finishes.
func InvalidateRange(ctx context.Context, rdb redis.UniversalClient, from, to time.Time) error {
	days := rangeDays(from, to)
	pipe := rdb.Pipeline()
	for _, d := range days {
		pipe.Incr(ctx, keyGen+d)
		pipe.Expire(ctx, keyGen+d, genRetention)
	}
	pipe.Incr(ctx, keyGenAll)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("invalidate cache %s..%s: %w", from.UTC().Format(time.RFC3339), to.UTC().Format(time.RFC3339), err)
	}
	return nil
}

// RangeGeneration returns a token that changes whenever InvalidateRange
// touches any part of [from, to]: the generations of the days in the range.
// With a zero from or to (an unbounded query), or a range longer than ten
// years, it is the "all" generation, which every invalidation bumps.
func RangeGeneration(ctx context.Context, rdb redis.UniversalClient, from, to time.Time) (string, error) {
	keys := []string{keyGenAll}
	if !from.IsZero() && !to.IsZero() {
		if days := rangeDays(from, to); len(days) > 0 && len(days) <= maxGenDays {
			keys = keys[:0]
			for _, d := range days {
				keys = append(keys, keyGen+d)
			}
		}
	}
	vals, err := rdb.MGet(ctx, keys...).Result()
	if err != nil {
		return "", fmt.Errorf("cache generation: %w", err)
	}
	var b strings.Builder
	for i, v := range vals {
		if i > 0 {
			b.WriteByte('.')
		}
		if s, ok := v.(string); ok {
			b.WriteString(s)
		} else {
			b.WriteByte('0')
		}
	}
	return b.String(), nil
}

// rangeDays lists the UTC days ("2006-01-02") that [from, to] touches, at
// most maxGenDays+1 of them.
func rangeDays(from, to time.Time) []string {
	from, to = from.UTC(), to.UTC()
	if to.Before(from) {
		return nil
	}
	var out []string
	for d := from.Truncate(24 * time.Hour); !d.After(to) && len(out) <= maxGenDays; d = d.Add(24 * time.Hour) {
		out = append(out, d.Format("2006-01-02"))
	}
	return out
}
