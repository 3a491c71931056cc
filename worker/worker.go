// Package worker runs trace assembly as asynq tasks: for one window and
// service shard it fetches the spans (following cross-service edges into
// other shards), assembles them (worker/assemble), writes each trace it
// owns as one document whose id derives from its root, deletes what an
// earlier run of the same window wrote and no longer holds (fragments
// that late spans completed), and records the run in Redis for the
// scheduler's late-span check.
//
// Workers keep no state between tasks and scale horizontally. A Redis lock
// per (window, shard) keeps two runs of the same work apart (a live task
// and a re-assembly, or a task asynq recovered from a dead worker whose run
// is still ending); deterministic trace ids make any rerun overwrite.
package worker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	"github.com/hibiken/asynq"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker/assemble"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// Config tunes a Worker. Zero values take the defaults in parentheses.
type Config struct {
	// Concurrency is the tasks one worker runs at once (4).
	Concurrency int
	// Margin is how far past its window a trace is followed when the task
	// does not say (10s). It is kept below the window length.
	Margin time.Duration
	// Skew and LocalSlack are assembly's clock tolerances
	// (assemble.DefaultSkew, assemble.DefaultLocalSlack).
	Skew, LocalSlack time.Duration
	// LockTTL is how long a run's (window, shard) lock outlives a dead
	// worker (30s); a live run renews it every third of that.
	LockTTL time.Duration
	// ShutdownTimeout is how long a stopping worker lets running tasks
	// finish before it hands them back to the queue (20s).
	ShutdownTimeout time.Duration
	// TermsBatch is the keys per terms query when following edges (1000);
	// PageSize the spans per search page (5000).
	TermsBatch, PageSize int
	// WriteChunk is the traces per bulk request (2000).
	WriteChunk int
	// TestDelay pauses every run after its first chunk of traces is
	// written (tests use it to kill a worker mid-task).
	TestDelay time.Duration
	// Queues are the queues served, by name (all of jobs.Queues when
	// empty): assembly and reassembly, metrics (rollups and alert rule
	// evaluations), notify (alert notifications).
	Queues []string
	// WebhookAllowLocal lets alert webhooks reach loopback, link-local and
	// unspecified addresses (alerting.NotifierConfig.AllowLocal).
	WebhookAllowLocal bool
	// Registerer receives the worker's collectors (none when nil).
	Registerer prometheusRegisterer
	Logger     *slog.Logger
}

func (c *Config) defaults() {
	if c.Concurrency <= 0 {
		c.Concurrency = 4
	}
	if c.Margin <= 0 {
		c.Margin = 10 * time.Second
	}
	if c.Skew <= 0 {
		c.Skew = assemble.DefaultSkew
	}
	if c.LocalSlack <= 0 {
		c.LocalSlack = assemble.DefaultLocalSlack
	}
	if c.LockTTL <= 0 {
		c.LockTTL = 30 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 20 * time.Second
	}
	if c.TermsBatch <= 0 {
		c.TermsBatch = 1000
	}
	if c.PageSize <= 0 {
		c.PageSize = 5000
	}
	if c.WriteChunk <= 0 {
		c.WriteChunk = 2000
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate checks the configuration and names the bad setting.
func (c Config) Validate() error {
	switch {
	case c.Concurrency > 256:
		return fmt.Errorf("concurrency %d: at most 256", c.Concurrency)
	case c.Margin > time.Hour:
		return fmt.Errorf("margin %s: at most 1h", c.Margin)
	case c.LockTTL > 0 && c.LockTTL < time.Second:
		return fmt.Errorf("lock ttl %s: at least 1s", c.LockTTL)
	case c.TermsBatch > 10000:
		return fmt.Errorf("terms batch %d: at most 10000", c.TermsBatch)
	}
	for _, q := range c.Queues {
		if _, ok := jobs.Queues[q]; !ok {
			return fmt.Errorf("queues %q: want some of %s", q, queueNames())
		}
	}
	return nil
}

// Worker assembles traces. It is an asynq.Handler.
type Worker struct {
	cfg   Config
	es    *store.Store
	rdb   redis.UniversalClient
	state *jobs.State
	log   *slog.Logger
	m     *metrics

	// The handlers of the other queues a worker serves.
	roller    *rollup.Roller
	evaluator *alerting.Evaluator
	notifier  *alerting.Notifier
}

// New builds a worker on the engine and Redis.
func New(cfg Config, es *store.Store, rdb redis.UniversalClient) (*Worker, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	w := &Worker{cfg: cfg, es: es, rdb: rdb, state: jobs.NewState(rdb), log: cfg.Logger.With("component", "worker"), m: newMetrics()}
	w.roller = rollup.New(rollup.Config{Logger: cfg.Logger}, es, rdb)
	w.evaluator = alerting.NewEvaluator(alerting.EvaluatorConfig{Logger: cfg.Logger}, rdb, es)
	w.notifier = alerting.NewNotifier(alerting.NotifierConfig{AllowLocal: cfg.WebhookAllowLocal}, rdb)
	if cfg.Registerer != nil {
		for _, c := range append(w.m.collectors(), w.evaluator.Collectors()...) {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("worker metrics: %w", err)
			}
		}
	}
	return w, nil
}

// assembleRetryDelay backs off quickly: a lock held elsewhere or a task
// recovered from a dead worker is worth retrying soon; other failures (the
// engine down) back off exponentially up to a minute.
func assembleRetryDelay(n int, err error, _ *asynq.Task) time.Duration {
	switch {
	case errors.Is(err, jobs.ErrLocked):
		return 2 * time.Second
	case errors.Is(err, asynq.ErrLeaseExpired):
		return time.Second
	}
	d := time.Second << min(n, 6)
	return min(d, time.Minute)
}

// Run serves the tasks of its queues (by weight, see jobs.Queues) until
// ctx ends, then shuts down gracefully: running tasks get ShutdownTimeout
// to finish, after which asynq puts them back in their queue for another
// worker.
func (w *Worker) Run(ctx context.Context) error {
	srv, mux := w.Server()
	if err := srv.Start(mux); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	w.log.Info("worker running", "concurrency", w.cfg.Concurrency, "queues", w.queues())
	<-ctx.Done()
	w.log.Info("worker stopping; finishing or returning running tasks", "timeout", w.cfg.ShutdownTimeout)
	srv.Shutdown()
	return nil
}

// ProcessTask handles one TypeAssemble task.
func (w *Worker) ProcessTask(ctx context.Context, t *asynq.Task) error {
	p, err := jobs.ParseAssemblePayload(t.Payload())
	if err != nil {
		// A payload that does not parse never will.
		return fmt.Errorf("%w: %w", err, asynq.SkipRetry)
	}
	queue, _ := asynq.GetQueueName(ctx)
	w.m.active.Inc()
	defer w.m.active.Dec()
	res, err := w.Assemble(ctx, p)
	switch {
	case errors.Is(err, jobs.ErrLocked):
		w.m.tasks.WithLabelValues(queue, "locked").Inc()
		return err
	case err != nil:
		w.m.tasks.WithLabelValues(queue, "failed").Inc()
		w.log.Warn("assembly failed", "task", p.TaskID(), "err", err)
		retried, _ := asynq.GetRetryCount(ctx)
		maxRetry, _ := asynq.GetMaxRetry(ctx)
		if p.JobID != "" && retried >= maxRetry {
			if jerr := jobs.JobDone(context.WithoutCancel(ctx), w.rdb, p.JobID, false); jerr != nil {
				w.log.Warn("report reassembly failure", "job", p.JobID, "err", jerr)
			}
		}
		return err
	}
	w.m.tasks.WithLabelValues(queue, "done").Inc()
	w.log.Info("assembled", "task", p.TaskID(), "traces", res.Traces, "spans", res.Spans, "fetched", res.Fetched,
		"queries", res.Queries, "stale_deleted", res.Deleted, "took", res.Took.Round(time.Millisecond))
	if p.JobID != "" {
		if err := jobs.JobDone(ctx, w.rdb, p.JobID, true); err != nil {
			w.log.Warn("report reassembly progress", "job", p.JobID, "err", err)
		}
	}
	return nil
}

// Result describes one assembly run.
type Result struct {
	Services int // of the shard, seen in the window
	Traces   int // written
	Spans    int // in the traces written
	Fetched  int // span documents read
	Queries  int
	Deleted  int // stale traces of earlier runs removed
	Stats    assemble.Stats
	// ReadAt is when the run started reading; spans ingested later are
	// late for it.
	ReadAt                          time.Time
	FetchTook, AssembleTook, WriteT time.Duration
	Took                            time.Duration
}

// Assemble runs one (window, shard): the work of a task, callable without
// asynq. It returns jobs.ErrLocked when another run of the same window
// and shard holds the lock.
func (w *Worker) Assemble(ctx context.Context, p jobs.AssemblePayload) (Result, error) {
	var res Result
	t0 := time.Now()
	if err := p.Validate(); err != nil {
		return res, err
	}
	lock, err := w.state.TryLock(ctx, p.WindowStart, p.Shard, p.Shards, w.cfg.LockTTL)
	if err != nil {
		return res, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { defer wg.Done(); w.keepLock(ctx, lock, cancel) }()
	defer func() {
		cancel(nil)
		wg.Wait()
		if err := lock.Release(context.WithoutCancel(ctx)); err != nil {
			w.log.Warn("release lock", "err", err)
		}
	}()

	margin := p.Margin
	if margin <= 0 {
		margin = w.cfg.Margin
	}
	winLen := p.WindowEnd.Sub(p.WindowStart)
	if margin >= winLen {
		margin = winLen / 2
	}
	opt := assemble.Options{Skew: w.cfg.Skew, LocalSlack: w.cfg.LocalSlack, Window: winLen, Margin: margin}
	win := &window{start: p.WindowStart.UTC(), end: p.WindowEnd.UTC(), margin: margin, shard: p.Shard, shards: p.Shards, services: map[string]bool{}}
	if len(p.Services) > 0 {
		win.only = map[string]bool{}
		for _, s := range p.Services {
			win.only[s] = true
		}
	}
	res.ReadAt = time.Now().UTC()
	f := &fetcher{es: w.es, opt: opt, batch: w.cfg.TermsBatch, page: w.cfg.PageSize}
	all, err := f.services(ctx, win.start.Add(-margin-w.cfg.Skew), win.end.Add(margin))
	if err != nil {
		return res, w.cause(ctx, err)
	}
	var mine []string
	for _, s := range all {
		if jobs.ShardOf(s, p.Shards) == p.Shard {
			win.services[s] = true
			mine = append(mine, s)
		}
	}
	res.Services = len(mine)
	var traces []schemas.Trace
	if len(mine) > 0 {
		forest, _, err := f.fetch(ctx, win)
		if err != nil {
			return res, w.cause(ctx, err)
		}
		res.FetchTook = time.Since(t0)
		ta := time.Now()
		res.Stats = forest.Stats
		for _, r := range forest.Roots {
			if !win.owns(forest.Spans[r]) {
				continue
			}
			t := forest.Trace(r, win.start, res.ReadAt)
			if err := assemble.Validate(&t, opt); err != nil {
				// Build guarantees validity; a failure here is a bug worth
				// seeing, not a trace worth writing.
				w.m.invalid.Inc()
				w.log.Error("assembled trace failed validation; not written", "trace", t.TraceID, "err", err)
				continue
			}
			traces = append(traces, t)
			res.Spans += len(t.Spans)
			w.m.spansPerTrace.Observe(float64(len(t.Spans)))
		}
		res.AssembleTook = time.Since(ta)
		w.m.observeStats(forest.Stats)
	}
	res.Fetched, res.Queries = f.stats.Fetched, f.stats.Queries
	tw := time.Now()
	if err := w.write(ctx, traces); err != nil {
		return res, w.cause(ctx, err)
	}
	res.Traces = len(traces)
	if len(mine) > 0 {
		roots := mine
		if win.only != nil {
			roots = roots[:0:0]
			for _, s := range mine {
				if win.only[s] {
					roots = append(roots, s)
				}
			}
		}
		n, err := w.deleteStale(ctx, win, roots, res.ReadAt)
		if err != nil {
			return res, w.cause(ctx, err)
		}
		res.Deleted = n
		if err := w.es.Refresh(ctx, w.traceIndices(win)...); err != nil {
			return res, w.cause(ctx, err)
		}
		if err := jobs.InvalidateRange(ctx, w.rdb, win.start.Add(-margin), win.end.Add(margin)); err != nil {
			return res, w.cause(ctx, err)
		}
	}
	res.WriteT = time.Since(tw)
	if err := w.state.MarkAssembled(ctx, win.start, p.Shard, p.Shards, res.ReadAt); err != nil {
		return res, w.cause(ctx, err)
	}
	res.Took = time.Since(t0)
	w.m.observe(res)
	return res, nil
}

// cause prefers the reason ctx was cancelled (the lock was lost) over the
// error it caused.
func (w *Worker) cause(ctx context.Context, err error) error {
	if c := context.Cause(ctx); c != nil && !errors.Is(c, context.Canceled) {
		return fmt.Errorf("%w (%v)", c, err)
	}
	return err
}

var errLockLost = errors.New("assembly lock lost: another run may have taken the window")

// keepLock renews the lock until ctx ends; when it cannot, it cancels the
// run before it writes anything more.
func (w *Worker) keepLock(ctx context.Context, l *jobs.Lock, cancel context.CancelCauseFunc) {
	t := time.NewTicker(w.cfg.LockTTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			ok, err := l.Extend(ctx)
			if ctx.Err() != nil {
				return
			}
			if err != nil || !ok {
				w.log.Error("assembly lock lost; abandoning the run", "err", err)
				cancel(errLockLost)
				return
			}
		}
	}
}

func (w *Worker) traceIndices(win *window) []string {
	return w.es.Indices().ForRange(schemas.KindTraces, win.start.Add(-win.margin-w.cfg.Skew-time.Second), win.end.Add(win.margin))
}

// write stores the traces, WriteChunk per bulk request. Every trace must
// land: a failure fails the run, and the retry rewrites them all.
func (w *Worker) write(ctx context.Context, traces []schemas.Trace) error {
	var chunks [][]schemas.Trace
	rest := traces
	if w.cfg.TestDelay > 0 && len(rest) > 1 {
		// Tests kill the worker between two halves of its writes.
		chunks = append(chunks, rest[:len(rest)/2])
		rest = rest[len(rest)/2:]
	}
	for len(rest) > 0 {
		n := min(len(rest), w.cfg.WriteChunk)
		chunks = append(chunks, rest[:n])
		rest = rest[n:]
	}
	ix := w.es.Indices()
	written := 0
	for k, chunk := range chunks {
		docs := make([]store.Doc, 0, len(chunk))
		for i := range chunk {
			d, err := store.TraceDoc(ix, &chunk[i])
			if err != nil {
				return err
			}
			docs = append(docs, d)
		}
		res, err := w.es.Bulk(ctx, docs, "")
		if err != nil {
			return fmt.Errorf("write traces: %w", err)
		}
		if len(res.Failed) > 0 {
			return fmt.Errorf("write traces: %d of %d refused, first: %w", len(res.Failed), len(docs), res.Failed[0])
		}
		w.m.tracesWritten.Add(float64(res.Indexed))
		written += len(chunk)
		if k == 0 && w.cfg.TestDelay > 0 {
			w.log.Warn("test delay mid-write", "written", written, "of", len(traces), "delay", w.cfg.TestDelay)
			select {
			case <-ctx.Done():
				return context.Cause(ctx)
			case <-time.After(w.cfg.TestDelay):
			}
		}
	}
	return nil
}

// deleteStale removes the traces an earlier run of this window wrote for
// these root services and this run did not write again: fragments that
// late spans have since joined to a trace rooted elsewhere, or traces cut
// differently. This run's documents carry assembled_at = readAt, earlier
// runs' an earlier time.
func (w *Worker) deleteStale(ctx context.Context, win *window, services []string, readAt time.Time) (int, error) {
	if len(services) == 0 {
		return 0, nil
	}
	vals := make([]any, len(services))
	sort.Strings(services)
	for i, s := range services {
		vals[i] = s
	}
	body, _ := json.Marshal(map[string]any{"query": map[string]any{"bool": map[string]any{"filter": []any{
		map[string]any{"range": map[string]any{"window": map[string]any{"gte": win.start.UnixMilli(), "lte": win.start.UnixMilli(), "format": "epoch_millis"}}},
		map[string]any{"terms": map[string]any{"root_service": vals}},
		map[string]any{"range": map[string]any{"assembled_at": map[string]any{"lt": readAt.UnixMilli(), "format": "epoch_millis"}}},
	}}}})
	c := w.es.Client()
	resp, err := c.DeleteByQuery(w.traceIndices(win), bytes.NewReader(body),
		c.DeleteByQuery.WithContext(ctx),
		c.DeleteByQuery.WithConflicts("proceed"),
		c.DeleteByQuery.WithIgnoreUnavailable(true),
		c.DeleteByQuery.WithAllowNoIndices(true),
	)
	if err != nil {
		return 0, fmt.Errorf("delete stale traces of window %s: %w", win.start.Format(time.RFC3339), err)
	}
	defer resp.Body.Close()
	if resp.IsError() {
		if resp.StatusCode == 404 {
			return 0, nil
		}
		return 0, fmt.Errorf("delete stale traces of window %s: %s", win.start.Format(time.RFC3339), resp.String())
	}
	var out struct {
		Deleted int `json:"deleted"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil {
		return 0, fmt.Errorf("delete stale traces: decode: %w", err)
	}
	w.m.staleDeleted.Add(float64(out.Deleted))
	return out.Deleted, nil
}
