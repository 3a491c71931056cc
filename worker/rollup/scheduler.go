package rollup

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// Redis keys of the rollup's bookkeeping (minute = start in unix ns):
//
//	deeptrace:rollup:watermark        end of the last minute enqueued
//	deeptrace:rollup:done:<minute>    hash "<shard>/<shards>" → unix ns the run read spans
//	deeptrace:rollup:gen:<minute>     the minute's last re-run generation
//	deeptrace:rollup:lock:<m>:<s>/<n> a running (minute, shard)
//	deeptrace:rollup:latecheck        unix ns of the last late-span check
const (
	keyWatermark = "deeptrace:rollup:watermark"
	keyGen       = "deeptrace:rollup:gen:"
	keyLateCheck = "deeptrace:rollup:latecheck"
	keyTickLock  = "deeptrace:rollup:tick:lock"
)

// SchedulerConfig configures the rollup scheduler; zero values take the
// defaults in parentheses.
type SchedulerConfig struct {
	// Shards per minute (8).
	Shards int
	// Lateness is how long after a minute ends it is rolled up (30s).
	Lateness time.Duration
	// Spec is the cron spec of a tick ("@every 10s").
	Spec string
	// MaxBackfill bounds the catch-up after downtime (6h).
	MaxBackfill time.Duration
	// LateHorizon is how far back late spans re-open a minute (6h);
	// negative disables the check.
	LateHorizon time.Duration
	// LateSlack covers clock skew and refresh delay (10s).
	LateSlack time.Duration
	Logger    *slog.Logger
}

func (c *SchedulerConfig) defaults() {
	if c.Shards == 0 {
		c.Shards = 8
	}
	if c.Lateness == 0 {
		c.Lateness = 30 * time.Second
	}
	if c.Spec == "" {
		c.Spec = "@every 10s"
	}
	if c.MaxBackfill == 0 {
		c.MaxBackfill = 6 * time.Hour
	}
	if c.LateHorizon == 0 {
		c.LateHorizon = 6 * time.Hour
	}
	if c.LateSlack == 0 {
		c.LateSlack = 10 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate checks the configuration and names the bad setting.
func (c SchedulerConfig) Validate() error {
	c.defaults()
	switch {
	case c.Shards < 1 || c.Shards > 4096:
		return fmt.Errorf("rollup shards %d: want 1..4096", c.Shards)
	case c.Lateness < 0:
		return fmt.Errorf("rollup lateness %s: negative", c.Lateness)
	case c.MaxBackfill < time.Minute:
		return fmt.Errorf("rollup max backfill %s: at least 1m", c.MaxBackfill)
	}
	if err := jobs.ParseSpec(c.Spec); err != nil {
		return fmt.Errorf("rollup schedule: %w", err)
	}
	return nil
}

// Scheduler enqueues a rollup task per (minute, shard) once the minute is
// Lateness old, and re-enqueues minutes whose spans arrived after their
// rollup. Replicas are safe: task ids dedupe, the watermark only advances.
type Scheduler struct {
	cfg    SchedulerConfig
	rdb    redis.UniversalClient
	client *asynq.Client
	es     *store.Store
	log    *slog.Logger
}

// NewScheduler builds a scheduler; es may be nil (no late-span check).
func NewScheduler(cfg SchedulerConfig, rdb redis.UniversalClient, es *store.Store) (*Scheduler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	return &Scheduler{cfg: cfg, rdb: rdb, client: asynq.NewClientFromRedisClient(rdb), es: es,
		log: cfg.Logger.With("component", "rollup-scheduler")}, nil
}

// TickReport says what one tick did.
type TickReport struct {
	Minutes              []time.Time
	Enqueued, Duplicates int
	Reopened             []time.Time
}

// Run ticks until ctx ends; the first tick runs at once.
func (s *Scheduler) Run(ctx context.Context) error {
	tick := func() {
		if _, err := s.Tick(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.log.Error("rollup tick", "err", err)
		}
	}
	if err := jobs.RunCron(ctx, s.cfg.Spec, tick); err != nil {
		return fmt.Errorf("rollup schedule: %w", err)
	}
	return nil
}

// Tick enqueues the minutes completed since the watermark, then re-opens
// minutes that received late spans.
func (s *Scheduler) Tick(ctx context.Context, now time.Time) (TickReport, error) {
	var rep TickReport
	due := now.UTC().Add(-s.cfg.Lateness).Truncate(time.Minute)
	wm := due.Add(-time.Minute)
	if v, err := s.rdb.Get(ctx, keyWatermark).Int64(); err == nil {
		wm = time.Unix(0, v).UTC()
	} else if !errors.Is(err, redis.Nil) {
		return rep, fmt.Errorf("rollup watermark: %w", err)
	}
	if due.Sub(wm) > s.cfg.MaxBackfill {
		s.log.Warn("minutes older than the backfill limit are not rolled up", "from", wm, "to", due.Add(-s.cfg.MaxBackfill))
		wm = due.Add(-s.cfg.MaxBackfill)
	}
	for m := wm; m.Before(due); m = m.Add(time.Minute) {
		if err := s.enqueueMinute(ctx, m, 0, 0, &rep); err != nil {
			return rep, err
		}
		rep.Minutes = append(rep.Minutes, m)
		if err := advance(ctx, s.rdb, m.Add(time.Minute)); err != nil {
			return rep, err
		}
	}
	if err := s.checkLate(ctx, now, &rep); err != nil {
		return rep, err
	}
	return rep, nil
}

func (s *Scheduler) enqueueMinute(ctx context.Context, m time.Time, gen int, delay time.Duration, rep *TickReport) error {
	for shard := 0; shard < s.cfg.Shards; shard++ {
		t, err := NewTask(Payload{Minute: m, Shard: shard, Shards: s.cfg.Shards, Generation: gen},
			asynq.Retention(2*time.Hour), asynq.ProcessIn(delay))
		if err != nil {
			return err
		}
		_, err = s.client.EnqueueContext(ctx, t)
		switch {
		case errors.Is(err, asynq.ErrTaskIDConflict):
			rep.Duplicates++
		case err != nil:
			return fmt.Errorf("enqueue rollup %s: %w", m, err)
		default:
			rep.Enqueued++
		}
	}
	return nil
}

var advanceScript = redis.NewScript(`
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
if tonumber(ARGV[1]) > cur then redis.call('SET', KEYS[1], ARGV[1]) return 1 end
return 0`)

func advance(ctx context.Context, rdb redis.UniversalClient, end time.Time) error {
	if err := advanceScript.Run(ctx, rdb, []string{keyWatermark}, end.UnixNano()).Err(); err != nil {
		return fmt.Errorf("rollup watermark: %w", err)
	}
	return nil
}

// checkLate finds minutes below the watermark with spans ingested after
// the minute's oldest rollup run read it, and enqueues a new generation of
// them. Only spans ingested since the previous check are looked at.
func (s *Scheduler) checkLate(ctx context.Context, now time.Time, rep *TickReport) error {
	if s.es == nil || s.cfg.LateHorizon < 0 {
		return nil
	}
	ok, err := s.rdb.SetNX(ctx, keyTickLock, 1, 30*time.Second).Result()
	if err != nil || !ok {
		return err
	}
	defer s.rdb.Del(context.WithoutCancel(ctx), keyTickLock)
	v, err := s.rdb.Get(ctx, keyWatermark).Int64()
	if err != nil {
		return nil
	}
	wm := time.Unix(0, v).UTC()
	from := now.UTC().Add(-s.cfg.LateHorizon).Truncate(time.Minute)
	since := from
	if v, err := s.rdb.Get(ctx, keyLateCheck).Int64(); err == nil {
		if t := time.Unix(0, v).Add(-s.cfg.LateSlack); t.After(since) {
			since = t
		}
	}
	if !wm.After(from) {
		return nil
	}
	body := map[string]any{
		"size": 0,
		"query": map[string]any{"bool": map[string]any{"filter": []any{
			map[string]any{"range": map[string]any{"timestamp": map[string]any{
				"gte": from.Format(time.RFC3339Nano), "lt": wm.Format(time.RFC3339Nano)}}},
			map[string]any{"range": map[string]any{"ingested_at": map[string]any{"gte": since.Format(time.RFC3339Nano)}}},
		}}},
		"aggs": map[string]any{"m": map[string]any{
			"date_histogram": map[string]any{"field": "timestamp", "fixed_interval": "1m", "min_doc_count": 1},
			"aggs":           map[string]any{"newest": map[string]any{"max": map[string]any{"field": "ingested_at"}}},
		}},
	}
	res, err := s.es.Search(ctx, s.es.Indices().ForRange(schemas.KindSpans, from, wm), body)
	if err != nil {
		return fmt.Errorf("rollup late check: %w", err)
	}
	var aggs struct {
		M struct {
			Buckets []struct {
				Key    int64 `json:"key"`
				Newest struct {
					Value *float64 `json:"value"`
				} `json:"newest"`
			} `json:"buckets"`
		} `json:"m"`
	}
	if len(res.Aggregations) > 0 {
		if err := json.Unmarshal(res.Aggregations, &aggs); err != nil {
			return fmt.Errorf("rollup late check: %w", err)
		}
	}
	for _, b := range aggs.M.Buckets {
		if b.Newest.Value == nil {
			continue
		}
		m := time.UnixMilli(b.Key).UTC()
		newest := time.UnixMilli(int64(*b.Newest.Value)).UTC()
		done, err := s.rdb.HGetAll(ctx, doneKey(m)).Result()
		if err != nil {
			return err
		}
		if len(done) == 0 {
			continue // not rolled up yet: its task will see these spans
		}
		oldest := now
		for _, v := range done {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil && time.Unix(0, n).Before(oldest) {
				oldest = time.Unix(0, n)
			}
		}
		if !newest.After(oldest.Add(-s.cfg.LateSlack)) {
			continue
		}
		gen, err := s.rdb.Incr(ctx, keyGen+strconv.FormatInt(m.UnixNano(), 10)).Result()
		if err != nil {
			return err
		}
		s.rdb.Expire(ctx, keyGen+strconv.FormatInt(m.UnixNano(), 10), 48*time.Hour)
		if err := s.enqueueMinute(ctx, m, int(gen), s.cfg.LateSlack, rep); err != nil {
			return err
		}
		rep.Reopened = append(rep.Reopened, m)
		s.log.Info("late spans re-open a rolled-up minute", "minute", m, "newest_ingest", newest, "rolled_up", oldest)
	}
	return s.rdb.Set(ctx, keyLateCheck, now.UnixNano(), 48*time.Hour).Err()
}
