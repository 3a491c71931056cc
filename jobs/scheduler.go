package jobs

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// SchedulerConfig configures the assembly scheduler. Zero values take the
// defaults in parentheses.
type SchedulerConfig struct {
	// Window is the length of one assembly window (1m). It must divide a
	// day, so windows align the same way everywhere (PlanReassembly too).
	Window time.Duration
	// Lateness is the longest the scheduler waits after a window's end
	// before enqueueing it (30s): spans still in flight from the agents,
	// and traces still running past the window's end, must have landed.
	// It must be at least Margin. With AgentWatermarks a window is
	// enqueued as soon as every reporting agent's output is complete past
	// its end and margin, which is usually much sooner.
	Lateness time.Duration
	// AgentWatermarks makes the scheduler read the agents' progress
	// reports (schemas.AgentProgress) and enqueue a window once every
	// agent that reported within AgentTimeout has stored all spans that
	// started before the window's end plus Margin. Without reports (no
	// agent running, or spans from recorded files) Lateness applies.
	AgentWatermarks bool
	// AgentTimeout is how old an agent's last report may be before the
	// scheduler stops waiting for it (30s): an agent that went away does
	// not hold assembly back; what it sends when it returns is late and
	// re-opens its windows.
	AgentTimeout time.Duration
	// Margin is how far past a window's end the workers follow the traces
	// rooted in it (10s); tasks carry it.
	Margin time.Duration
	// Shards is the number of service shards per window (8).
	Shards int
	// Spec is the cron spec of a tick ("@every 10s"); seconds are allowed
	// as an optional first field.
	Spec string
	// InitialBackfill is how far back the very first tick (no watermark in
	// Redis yet) starts (one window).
	InitialBackfill time.Duration
	// MaxBackfill bounds the catch-up after downtime (24h); older missed
	// windows are skipped, counted and logged.
	MaxBackfill time.Duration
	// LateHorizon is how far back spans that arrive after their window was
	// assembled re-open it (6h); 0 uses the default, negative disables.
	LateHorizon time.Duration
	// LateSlack covers clock skew between agents and workers and the
	// engine's refresh delay when comparing a span's ingest time with a
	// window's assembly time (10s). ingested_at is the agent's clock,
	// stamped before its bulk request; the assembly time the worker's.
	// A span ingested within the slack before an assembly re-opens the
	// window: too large costs redundant re-runs, too small leaves a trace
	// incomplete for good when a bulk request or a clock is slower than
	// it, which is why it stays generous although agent watermarks make
	// windows assembled only seconds after their spans land.
	LateSlack time.Duration
	// LateLookback is how far before the previous check each check looks
	// again at ingested spans (1m, at least LateSlack): a span becomes
	// searchable some time after the exporter stamped it, and a check
	// must not have passed over it in the meantime. Re-finding a span
	// costs nothing; the window is re-opened once.
	LateLookback time.Duration
	// Skew is the clock skew assembly allows between hosts (50ms); late
	// spans re-open the windows within Margin+Skew of them.
	Skew time.Duration
	// TaskRetention keeps a completed task's id in Redis (2h), so that a
	// repeated tick or a second replica cannot enqueue the same window
	// again after it ran.
	TaskRetention time.Duration
	// Registerer receives the scheduler's collectors (none when nil).
	Registerer prometheus.Registerer
	Logger     *slog.Logger
}

func (c *SchedulerConfig) defaults() {
	if c.Window == 0 {
		c.Window = time.Minute
	}
	if c.Lateness == 0 {
		c.Lateness = 30 * time.Second
	}
	if c.Margin == 0 {
		c.Margin = 10 * time.Second
	}
	if c.AgentTimeout == 0 {
		c.AgentTimeout = 30 * time.Second
	}
	if c.Shards == 0 {
		c.Shards = 8
	}
	if c.Spec == "" {
		c.Spec = "@every 10s"
	}
	if c.InitialBackfill == 0 {
		c.InitialBackfill = c.Window
	}
	if c.MaxBackfill == 0 {
		c.MaxBackfill = 24 * time.Hour
	}
	if c.LateHorizon == 0 {
		c.LateHorizon = 6 * time.Hour
	}
	if c.LateSlack == 0 {
		c.LateSlack = 10 * time.Second
	}
	if c.LateLookback == 0 {
		c.LateLookback = max(time.Minute, c.LateSlack)
	}
	if c.Skew == 0 {
		c.Skew = 50 * time.Millisecond
	}
	if c.TaskRetention == 0 {
		c.TaskRetention = 2 * time.Hour
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate checks the configuration (after defaults) and names the bad
// setting.
func (c SchedulerConfig) Validate() error {
	c.defaults()
	switch {
	case c.Window < time.Second || c.Window > 24*time.Hour || (24*time.Hour)%c.Window != 0:
		return fmt.Errorf("window %s: want 1s..24h dividing a day", c.Window)
	case c.Window%time.Millisecond != 0:
		return fmt.Errorf("window %s: want whole milliseconds", c.Window)
	case c.Margin < 0 || c.Margin > time.Hour:
		return fmt.Errorf("margin %s: want 0..1h", c.Margin)
	case c.Lateness < c.Margin:
		return fmt.Errorf("lateness %s: must be at least the margin %s, or traces past a window's end are cut", c.Lateness, c.Margin)
	case c.Shards < 1 || c.Shards > 4096:
		return fmt.Errorf("shards %d: want 1..4096", c.Shards)
	case c.MaxBackfill < c.Window:
		return fmt.Errorf("max backfill %s: at least one window (%s)", c.MaxBackfill, c.Window)
	case c.InitialBackfill < 0:
		return fmt.Errorf("initial backfill %s: negative", c.InitialBackfill)
	case c.LateLookback < c.LateSlack:
		return fmt.Errorf("late lookback %s: at least the late slack %s", c.LateLookback, c.LateSlack)
	case c.AgentTimeout < time.Second:
		return fmt.Errorf("agent timeout %s: at least 1s", c.AgentTimeout)
	case c.TaskRetention < time.Minute:
		return fmt.Errorf("task retention %s: at least 1m, or a repeated tick can enqueue a finished window again", c.TaskRetention)
	}
	if err := ParseSpec(c.Spec); err != nil {
		return fmt.Errorf("schedule: %w", err)
	}
	return nil
}

// Scheduler enqueues one assembly task per (window, shard) as windows
// complete, backfills the windows it missed, and re-opens windows that
// received spans after they were assembled. Several replicas may run: task
// ids and the watermark keep them from enqueueing a window twice.
type Scheduler struct {
	cfg    SchedulerConfig
	state  *State
	rdb    redis.UniversalClient
	client *asynq.Client
	es     *store.Store
	log    *slog.Logger
	m      schedulerMetrics
}

// TickReport says what one tick did.
type TickReport struct {
	// Windows fully enqueued this tick, oldest first.
	Windows []time.Time
	// Enqueued tasks, and tasks refused because their id already existed
	// (another replica or an earlier tick enqueued them).
	Enqueued, Duplicates int
	// Skipped windows older than MaxBackfill.
	Skipped int
	// Late windows whose spans arrived after assembly, and the windows
	// re-enqueued for them.
	Late, Reopened []time.Time
	// Agents is the number of agents whose progress reports were read;
	// SlowestAgent the one whose watermark is the furthest behind.
	Agents       int
	SlowestAgent string
}

// NewScheduler builds a scheduler on rdb. es is used to find spans that
// arrived after their window was assembled; nil disables that check.
func NewScheduler(cfg SchedulerConfig, rdb redis.UniversalClient, es *store.Store) (*Scheduler, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	st := NewState(rdb)
	if h := cfg.LateHorizon + 2*cfg.MaxBackfill; h > st.Retention {
		st.Retention = h
	}
	s := &Scheduler{cfg: cfg, state: st, rdb: rdb, client: asynq.NewClientFromRedisClient(rdb), es: es,
		log: cfg.Logger.With("component", "scheduler")}
	s.m = newSchedulerMetrics()
	if cfg.Registerer != nil {
		for _, c := range s.m.collectors() {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("scheduler metrics: %w", err)
			}
		}
	}
	return s, nil
}

// Config returns the scheduler's configuration with defaults filled in.
func (s *Scheduler) Config() SchedulerConfig { return s.cfg }

// State returns the Redis bookkeeping the scheduler uses.
func (s *Scheduler) State() *State { return s.state }

// Run ticks on the cron schedule until ctx ends; the first tick runs at
// once, so a restarted scheduler backfills without waiting.
func (s *Scheduler) Run(ctx context.Context) error {
	tick := func() {
		if _, err := s.Tick(ctx, time.Now()); err != nil && ctx.Err() == nil {
			s.log.Error("tick", "err", err)
		}
	}
	s.log.Info("scheduler running", "window", s.cfg.Window, "lateness", s.cfg.Lateness, "margin", s.cfg.Margin,
		"shards", s.cfg.Shards, "spec", s.cfg.Spec)
	if err := RunCron(ctx, s.cfg.Spec, tick); err != nil {
		return fmt.Errorf("schedule: %w", err)
	}
	return nil
}

// Tick enqueues every window that completed (by now, after Lateness) since
// the watermark, then re-opens windows that received late spans.
func (s *Scheduler) Tick(ctx context.Context, now time.Time) (TickReport, error) {
	var rep TickReport
	err := s.enqueueDue(ctx, now, &rep)
	if err == nil {
		err = s.checkLate(ctx, now, &rep)
	}
	if err != nil {
		s.m.tickErrors.Inc()
	}
	if len(rep.Windows) > 0 || rep.Skipped > 0 || len(rep.Reopened) > 0 {
		s.log.Info("tick", "windows", len(rep.Windows), "enqueued", rep.Enqueued, "duplicates", rep.Duplicates,
			"skipped", rep.Skipped, "late", len(rep.Late), "reopened", len(rep.Reopened))
	}
	return rep, err
}

// ready returns the time up to which windows may be enqueued: Lateness
// before now, or later when every reporting agent's watermark is past it
// by Margin. It also reports the agents it heard from.
func (s *Scheduler) ready(ctx context.Context, now time.Time, rep *TickReport) time.Time {
	ready := now.UTC().Add(-s.cfg.Lateness)
	if !s.cfg.AgentWatermarks || s.es == nil {
		return ready
	}
	agents, err := s.es.AgentProgress(ctx, now.Add(-s.cfg.AgentTimeout))
	if err != nil {
		// Without the reports the fixed lateness is the safe choice.
		s.log.Warn("agent progress unreadable; waiting the full lateness", "err", err)
		s.m.agentLag.Set(0)
		return ready
	}
	var low time.Time
	for _, a := range agents {
		if a.Stopped {
			continue
		}
		rep.Agents++
		if low.IsZero() || a.Watermark.Before(low) {
			low, rep.SlowestAgent = a.Watermark, a.Host
		}
	}
	if rep.Agents == 0 {
		s.m.agentLag.Set(0)
		return ready
	}
	s.m.agentLag.Set(max(0, now.Sub(low).Seconds()))
	// A window's traces run up to Margin past its end; the agents must
	// have stored everything that started by then. A watermark ahead of
	// this clock (skew, or a bogus report) counts as now.
	if byAgents := minTime(low, now).Add(-s.cfg.Margin); byAgents.After(ready) {
		ready = byAgents
	}
	return ready
}

func (s *Scheduler) enqueueDue(ctx context.Context, now time.Time, rep *TickReport) error {
	w := s.cfg.Window
	due := s.ready(ctx, now, rep).Truncate(w) // end of the newest complete window
	wm, ok, err := s.state.Watermark(ctx)
	if err != nil {
		return err
	}
	if !ok {
		wm = due.Add(-s.cfg.InitialBackfill).Truncate(w)
	}
	if gap := due.Sub(wm); gap > s.cfg.MaxBackfill {
		skip := int((gap - s.cfg.MaxBackfill) / w)
		rep.Skipped = skip
		s.m.skipped.Add(float64(skip))
		s.log.Warn("windows older than the backfill limit are skipped; reassemble them on demand",
			"windows", skip, "from", wm, "to", due.Add(-s.cfg.MaxBackfill), "max_backfill", s.cfg.MaxBackfill)
		wm = due.Add(-s.cfg.MaxBackfill)
	}
	for ws := wm; ws.Before(due); ws = ws.Add(w) {
		for shard := 0; shard < s.cfg.Shards; shard++ {
			p := AssemblePayload{WindowStart: ws, WindowEnd: ws.Add(w), Shard: shard, Shards: s.cfg.Shards, Margin: s.cfg.Margin}
			dup, err := s.enqueue(ctx, p)
			if err != nil {
				// The windows before this one are wholly enqueued; this one
				// is retried next tick (its enqueued shards then count as
				// duplicates).
				if werr := s.state.AdvanceWatermark(ctx, ws); werr != nil {
					err = errors.Join(err, werr)
				}
				return err
			}
			if dup {
				rep.Duplicates++
			} else {
				rep.Enqueued++
			}
		}
		rep.Windows = append(rep.Windows, ws)
	}
	if err := s.state.AdvanceWatermark(ctx, due); err != nil {
		return err
	}
	s.m.watermark.Set(float64(due.UnixNano()) / 1e9)
	return nil
}

// enqueue puts one task in its queue; dup is true when its id existed.
func (s *Scheduler) enqueue(ctx context.Context, p AssemblePayload, opts ...asynq.Option) (dup bool, err error) {
	t, err := NewAssembleTask(p)
	if err != nil {
		return false, err
	}
	info, err := s.client.EnqueueContext(ctx, t, append(opts, asynq.Retention(s.cfg.TaskRetention))...)
	switch {
	case errors.Is(err, asynq.ErrTaskIDConflict):
		s.m.duplicates.Inc()
		return true, nil
	case err != nil:
		return false, fmt.Errorf("enqueue %s: %w", p.TaskID(), err)
	}
	s.m.enqueued.WithLabelValues(info.Queue).Inc()
	return false, nil
}

// lateWindowsQuery is the aggregation that finds, per window, the newest
// ingest time among spans of that window ingested since a given time.
func lateWindowsQuery(from, to, since time.Time, window time.Duration) map[string]any {
	return map[string]any{
		"size": 0,
		"query": map[string]any{"bool": map[string]any{"filter": []any{
			map[string]any{"range": map[string]any{"timestamp": map[string]any{
				"gte": from.UTC().Format(time.RFC3339Nano), "lt": to.UTC().Format(time.RFC3339Nano)}}},
			map[string]any{"range": map[string]any{"ingested_at": map[string]any{
				"gte": since.UTC().Format(time.RFC3339Nano)}}},
		}}},
		"aggs": map[string]any{"windows": map[string]any{
			"date_histogram": map[string]any{"field": "timestamp", "fixed_interval": fmt.Sprintf("%dms", window.Milliseconds()), "min_doc_count": 1},
			"aggs":           map[string]any{"newest": map[string]any{"max": map[string]any{"field": "ingested_at"}}},
		}},
	}
}

// checkLate finds windows that received spans after they were assembled
// and enqueues a new generation of them and of their neighbours within
// Margin+Skew (a late span can belong to a trace rooted in an earlier
// window, and can turn a later window's fragment into part of a trace).
// One replica checks at a time; the spans looked at are those ingested
// since the previous check (less LateLookback), so a check costs one
// aggregation whatever the horizon.
func (s *Scheduler) checkLate(ctx context.Context, now time.Time, rep *TickReport) error {
	if s.es == nil || s.cfg.LateHorizon < 0 {
		return nil
	}
	ok, err := s.rdb.SetNX(ctx, keyLateCheckLock, now.UnixNano(), 30*time.Second).Result()
	if err != nil || !ok {
		return err
	}
	defer s.rdb.Del(context.WithoutCancel(ctx), keyLateCheckLock)
	w := s.cfg.Window
	wm, ok, err := s.state.Watermark(ctx)
	if err != nil || !ok {
		return err
	}
	from := now.UTC().Add(-s.cfg.LateHorizon).Truncate(w)
	since := from
	if v, err := s.rdb.Get(ctx, keyLateCheck).Int64(); err == nil {
		if t := time.Unix(0, v).Add(-s.cfg.LateLookback); t.After(since) {
			since = t
		}
	}
	if !wm.After(from) {
		return nil
	}
	res, err := s.es.Search(ctx, s.es.Indices().ForRange(schemas.KindSpans, from, wm), lateWindowsQuery(from, wm, since, w))
	if err != nil {
		return fmt.Errorf("late-span check: %w", err)
	}
	var aggs struct {
		Windows struct {
			Buckets []struct {
				Key    int64 `json:"key"`
				Newest struct {
					Value *float64 `json:"value"`
				} `json:"newest"`
			} `json:"buckets"`
		} `json:"windows"`
	}
	if len(res.Aggregations) > 0 {
		if err := jsonUnmarshal(res.Aggregations, &aggs); err != nil {
			return fmt.Errorf("late-span check: decode: %w", err)
		}
	}
	reopen := map[time.Time]bool{}
	k := int((s.cfg.Margin + s.cfg.Skew + w - 1) / w)
	for _, b := range aggs.Windows.Buckets {
		if b.Newest.Value == nil {
			continue
		}
		ws := time.UnixMilli(b.Key).UTC()
		newest := time.UnixMilli(int64(*b.Newest.Value)).UTC()
		done, err := s.state.Assembled(ctx, ws, s.cfg.Shards)
		if err != nil {
			return err
		}
		if len(done) == 0 {
			continue // not assembled yet: its task will see these spans
		}
		oldest := now
		for _, at := range done {
			if at.Before(oldest) {
				oldest = at
			}
		}
		if !newest.After(oldest.Add(-s.cfg.LateSlack)) {
			continue
		}
		if req, ok, err := s.state.requested(ctx, ws); err != nil {
			return err
		} else if ok && !newest.After(req) {
			// A re-assembly was enqueued after these spans landed; it runs
			// LateSlack later, when they are visible.
			continue
		}
		rep.Late = append(rep.Late, ws)
		s.m.late.Inc()
		s.log.Info("spans arrived after their window was assembled", "window", ws, "newest_ingest", newest, "assembled", oldest)
		for d := -k; d <= k; d++ {
			n := ws.Add(time.Duration(d) * w)
			if !n.Before(from) && !n.Add(w).After(wm) {
				reopen[n] = true
			}
		}
	}
	for ws := range reopen {
		gen, err := s.state.nextGeneration(ctx, ws, now)
		if err != nil {
			return err
		}
		for shard := 0; shard < s.cfg.Shards; shard++ {
			p := AssemblePayload{WindowStart: ws, WindowEnd: ws.Add(w), Shard: shard, Shards: s.cfg.Shards, Margin: s.cfg.Margin, Generation: gen}
			// Delayed by LateSlack: every span ingested before now is
			// visible by the time it reads.
			if _, err := s.enqueue(ctx, p, asynq.ProcessIn(s.cfg.LateSlack)); err != nil {
				return err
			}
		}
		rep.Reopened = append(rep.Reopened, ws)
		s.m.reopened.Inc()
	}
	return s.rdb.Set(ctx, keyLateCheck, now.UnixNano(), s.state.Retention).Err()
}

func minTime(a, b time.Time) time.Time {
	if a.Before(b) {
		return a
	}
	return b
}
