// Package export is the agent's span output: spans are batched and
// bulk-written to the hourly span indices through store.Writer (gzip on the
// wire when the store is opened with Compress), and kept in a bounded,
// compressed on-disk spool while the engine is slow or down, replayed
// oldest first when it returns. Nothing is lost short of the spool's limit;
// every span that is not written is counted by reason and logged.
//
// The flow, each stage owned by Run:
//
//	Add ─▶ queue (QueueSize) ─▶ batcher ─▶ sender ─▶ store.Writer ─▶ engine
//	                               │          │ retriable failures
//	                               ▼          ▼
//	                              spool (SpoolMaxBytes) ─▶ replayer ─▶ engine
//
// The batcher sends straight to the engine only while the spool is empty
// and the sender keeps up; otherwise batches go to the spool, so spans
// reach the engine in the order they were spooled.
package export

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// Config tunes an Exporter. Zero values take the defaults in parentheses.
type Config struct {
	// Host is stamped on spans that carry none and labels the metrics.
	Host string
	// BatchSize is the spans per bulk request (1000).
	BatchSize int
	// FlushInterval sends a partial batch at least this often (1s).
	FlushInterval time.Duration
	// QueueSize bounds the spans waiting in memory (16384).
	QueueSize int
	// AddTimeout is how long Add may block on a full queue before it
	// drops the span, counted (50ms). Negative: never block.
	AddTimeout time.Duration
	// BulkWorkers is the number of concurrent bulk requests a batch is
	// split over (2).
	BulkWorkers int
	// SlowAfter is how long a full batch waits for the sender before it
	// goes to the spool instead (200ms): the engine is then slower than
	// the spans come, and the queue must keep moving.
	SlowAfter time.Duration
	// SpoolDir holds the spool. Empty disables it: spans the engine cannot
	// take are then dropped, counted as "no_spool".
	SpoolDir string
	// SpoolMaxBytes bounds the spool on disk, compressed (1 GiB).
	SpoolMaxBytes int64
	// SpoolSegmentBytes is the size at which a spool file is sealed (4 MiB).
	SpoolSegmentBytes int64
	// SpoolSync fsyncs every spooled batch, not only sealed segments.
	SpoolSync bool
	// RetryMin and RetryMax bound the replay backoff while the engine is
	// down (500ms, 30s).
	RetryMin, RetryMax time.Duration
	// ShutdownTimeout bounds the last direct write of the queue when Run
	// ends (10s); what does not make it is spooled.
	ShutdownTimeout time.Duration
	// ProgressInterval is how often the agent's progress report
	// (schemas.AgentProgress) is written (2s); negative never. Reports
	// start once the pipeline calls Progress.
	ProgressInterval time.Duration
	// RefreshDelay is how long after a write its spans are taken to be
	// searchable (1.5s: the indices refresh every second).
	RefreshDelay time.Duration
	// Registerer receives the exporter's collectors (none when nil).
	Registerer prometheus.Registerer
	// Logger (slog.Default() when nil).
	Logger *slog.Logger
}

func (c *Config) defaults() {
	if c.BatchSize <= 0 {
		c.BatchSize = 1000
	}
	if c.FlushInterval <= 0 {
		c.FlushInterval = time.Second
	}
	if c.QueueSize <= 0 {
		c.QueueSize = 16384
	}
	if c.AddTimeout == 0 {
		c.AddTimeout = 50 * time.Millisecond
	}
	if c.BulkWorkers <= 0 {
		c.BulkWorkers = 2
	}
	if c.SlowAfter <= 0 {
		c.SlowAfter = 200 * time.Millisecond
	}
	if c.SpoolMaxBytes <= 0 {
		c.SpoolMaxBytes = 1 << 30
	}
	if c.SpoolSegmentBytes <= 0 {
		c.SpoolSegmentBytes = 4 << 20
	}
	if c.RetryMin <= 0 {
		c.RetryMin = 500 * time.Millisecond
	}
	if c.RetryMax <= 0 {
		c.RetryMax = 30 * time.Second
	}
	if c.ShutdownTimeout <= 0 {
		c.ShutdownTimeout = 10 * time.Second
	}
	if c.ProgressInterval == 0 {
		c.ProgressInterval = 2 * time.Second
	}
	if c.RefreshDelay <= 0 {
		c.RefreshDelay = 1500 * time.Millisecond
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Validate checks the configuration and names the bad setting.
func (c Config) Validate() error {
	switch {
	case c.BatchSize > 50000:
		return fmt.Errorf("export batch size %d: at most 50000", c.BatchSize)
	case c.SpoolDir != "" && c.SpoolSegmentBytes > 0 && c.SpoolMaxBytes > 0 && c.SpoolSegmentBytes > c.SpoolMaxBytes:
		return fmt.Errorf("spool segment bytes %d larger than spool max bytes %d", c.SpoolSegmentBytes, c.SpoolMaxBytes)
	case c.RetryMax > 0 && c.RetryMin > c.RetryMax:
		return fmt.Errorf("export retry min %s above retry max %s", c.RetryMin, c.RetryMax)
	}
	return nil
}

// Drop reasons, as counted in Stats.Dropped and the dropped metric.
const (
	DropQueueFull = "queue_full" // Add found the queue full for AddTimeout
	DropSpoolFull = "spool_full" // evicted from, or refused by, the full spool
	DropNoSpool   = "no_spool"   // the engine could not take it and there is no spool
	DropClosed    = "closed"     // added after Close
	DropInvalid   = "invalid"    // no start time
	DropSpoolIO   = "spool_io"   // the spool's disk failed
)

var dropReasons = []string{DropQueueFull, DropSpoolFull, DropNoSpool, DropClosed, DropInvalid, DropSpoolIO}

// Stats are an Exporter's counters since New.
type Stats struct {
	Added    uint64 // accepted by Add
	Written  uint64 // indexed by the engine
	Rejected uint64 // refused by the engine for what they are (not retried)
	Spooled  uint64 // written to the spool
	Replayed uint64 // indexed from the spool
	Dropped  map[string]uint64
	Requests uint64 // bulk requests sent
	// Queued is the spans waiting in memory now.
	Queued int
	// SpoolBytes, SpoolSpans and SpoolSegments describe the spool now.
	SpoolBytes, SpoolSpans int64
	SpoolSegments          int
	// EngineDown is true while the last write found the engine unreachable.
	EngineDown bool
}

// DroppedTotal sums the drops of every reason.
func (s Stats) DroppedTotal() uint64 {
	var n uint64
	for _, v := range s.Dropped {
		n += v
	}
	return n
}

// ErrSpoolNotEmpty is returned by Close when spans are left in the spool
// for the next start.
var ErrSpoolNotEmpty = errors.New("spans left in the spool")

// Exporter writes spans to the engine. Add is safe for concurrent use.
type Exporter struct {
	cfg   Config
	st    *store.Store
	w     *store.Writer
	spool *spool
	log   *slog.Logger

	// addMu: Add holds it shared while it queues; closing takes it
	// exclusively, after which no span can enter the queue unseen.
	addMu  sync.RWMutex
	closed bool
	queue  chan schemas.Span
	sendq  chan []schemas.Span

	sendMu   sync.Mutex // one bulk exchange at a time
	failMu   sync.Mutex
	failures []store.ItemError

	kick     chan struct{} // wakes the replayer
	stopOnce sync.Once
	stop     chan struct{} // Close asks Run to end
	started  atomic.Bool
	runDone  chan struct{}

	added, written, rejected, spooled, replayed, requests atomic.Uint64
	dropped                                               map[string]*atomic.Uint64
	down                                                  atomic.Bool
	bulkSeconds                                           prometheus.Histogram

	// frontier is the pipeline's progress (wall ns, 0 before the first
	// report); pending the spans between Add and their outcome.
	frontier   atomic.Int64
	pending    pendingStarts
	startedAt  time.Time
	progressWM prometheus.Gauge

	dropLogMu   sync.Mutex
	dropLogged  map[string]uint64
	dropLogNext time.Time
}

// New builds an exporter writing through st. It opens (and recovers) the
// spool; call Run to start it and Close to flush and stop it.
func New(cfg Config, st *store.Store) (*Exporter, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.defaults()
	if st == nil {
		return nil, errors.New("export: no store")
	}
	e := &Exporter{
		cfg: cfg, st: st, log: cfg.Logger.With("component", "export", "host", cfg.Host),
		queue:   make(chan schemas.Span, cfg.QueueSize),
		sendq:   make(chan []schemas.Span, 4),
		kick:    make(chan struct{}, 1),
		stop:    make(chan struct{}),
		runDone: make(chan struct{}),
		dropped: map[string]*atomic.Uint64{}, dropLogged: map[string]uint64{},
		startedAt: time.Now().UTC(),
	}
	for _, r := range dropReasons {
		e.dropped[r] = new(atomic.Uint64)
	}
	if cfg.SpoolDir != "" {
		sp, err := openSpool(cfg.SpoolDir, cfg.SpoolMaxBytes, cfg.SpoolSegmentBytes, cfg.SpoolSync)
		if err != nil {
			return nil, err
		}
		e.spool = sp
		if _, n, segs := sp.Size(); n > 0 {
			e.log.Info("spool holds spans from an earlier run; replaying them first", "spans", n, "segments", segs, "dir", cfg.SpoolDir)
		}
	}
	w, err := st.NewWriter(store.WriterConfig{
		Workers: cfg.BulkWorkers,
		// Batches are flushed explicitly; these only split oversized ones.
		FlushBytes:    8 << 20,
		FlushInterval: time.Hour,
		OnError: func(ie store.ItemError) {
			e.failMu.Lock()
			e.failures = append(e.failures, ie)
			e.failMu.Unlock()
		},
	})
	if err != nil {
		return nil, err
	}
	e.w = w
	e.bulkSeconds = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name: "deeptrace_export_bulk_seconds", Help: "Time of one bulk exchange with the engine.",
		ConstLabels: prometheus.Labels{"host": cfg.Host},
		Buckets:     prometheus.ExponentialBuckets(0.005, 2, 12),
	})
	e.progressWM = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "deeptrace_export_watermark_seconds", Help: "The last progress reported: every span that started before it is stored (unix seconds).",
		ConstLabels: prometheus.Labels{"host": cfg.Host},
	})
	if cfg.Registerer != nil {
		for _, c := range e.Collectors() {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("export metrics: %w", err)
			}
		}
	}
	return e, nil
}

// Add hands one span to the exporter. It fills Host (when empty), SpanID
// (when empty) and the derived fields, and queues the span; when the queue
// stays full for AddTimeout the span is dropped and counted.
func (e *Exporter) Add(s schemas.Span) {
	if s.Host == "" {
		s.Host = e.cfg.Host
	}
	if s.SpanID == "" {
		s.SpanID = schemas.SpanID(s.Host, s.Conn, s.Seq, s.ReqTCPSeq, s.Role)
	}
	if s.StartNs <= 0 {
		e.drop(DropInvalid, 1)
		return
	}
	s.Finish()
	e.addMu.RLock()
	defer e.addMu.RUnlock()
	if e.closed {
		e.drop(DropClosed, 1)
		return
	}
	// Counted before it is queued, so the batcher can never see it first.
	e.pending.add(s.StartNs)
	select {
	case e.queue <- s:
		e.added.Add(1)
		return
	default:
	}
	if e.cfg.AddTimeout > 0 {
		t := time.NewTimer(e.cfg.AddTimeout)
		defer t.Stop()
		select {
		case e.queue <- s:
			e.added.Add(1)
			return
		case <-t.C:
		}
	}
	e.pending.done([]schemas.Span{s})
	e.drop(DropQueueFull, 1)
}

// Run moves spans to the engine until ctx ends or Close is called. On the
// way out it stops taking spans and writes what is queued (or spools it).
// Run may be called once.
func (e *Exporter) Run(ctx context.Context) error {
	if !e.started.CompareAndSwap(false, true) {
		return errors.New("export: Run called twice")
	}
	defer close(e.runDone)
	// The sender and the replayer run until the batcher is done; their
	// writes use a context that outlives ctx by ShutdownTimeout so the
	// last batches can still land.
	workCtx, cancelWork := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelWork()
	var wg sync.WaitGroup
	wg.Add(3)
	go func() { defer wg.Done(); e.sender(workCtx) }()
	replayCtx, stopReplay := context.WithCancel(ctx)
	defer stopReplay()
	go func() { defer wg.Done(); e.replayer(replayCtx) }()
	go func() { defer wg.Done(); e.reporter(replayCtx) }()

	e.batcher(ctx)
	// The batcher closed sendq; the sender finishes the last batches
	// within ShutdownTimeout, then its writes are cancelled (and spooled).
	stopReplay()
	timer := time.AfterFunc(e.cfg.ShutdownTimeout, cancelWork)
	defer timer.Stop()
	wg.Wait()
	return nil
}

// batcher fills batches from the queue and routes them.
func (e *Exporter) batcher(ctx context.Context) {
	defer close(e.sendq)
	batch := make([]schemas.Span, 0, e.cfg.BatchSize)
	tick := time.NewTicker(e.cfg.FlushInterval)
	defer tick.Stop()
	flush := func() {
		if len(batch) > 0 {
			e.route(batch)
			batch = make([]schemas.Span, 0, e.cfg.BatchSize)
		}
	}
	for {
		select {
		case s := <-e.queue:
			batch = append(batch, s)
			if len(batch) >= e.cfg.BatchSize {
				flush()
			}
		case <-tick.C:
			flush()
		case <-ctx.Done():
			e.closeAdds()
		case <-e.stop:
			e.closeAdds()
		}
		if e.isClosed() {
			// No Add can queue any more: drain what is there.
			for {
				select {
				case s := <-e.queue:
					batch = append(batch, s)
					if len(batch) >= e.cfg.BatchSize {
						flush()
					}
					continue
				default:
				}
				break
			}
			flush()
			return
		}
	}
}

func (e *Exporter) closeAdds() {
	e.addMu.Lock()
	e.closed = true
	e.addMu.Unlock()
}

func (e *Exporter) isClosed() bool {
	e.addMu.RLock()
	defer e.addMu.RUnlock()
	return e.closed
}

// route sends a batch straight on when the spool is empty and the sender
// takes it within SlowAfter, and spools it otherwise (engine down or
// slow), so that spooled spans are never overtaken by newer ones for long.
func (e *Exporter) route(batch []schemas.Span) {
	if e.spool == nil {
		e.sendq <- batch // backpressure into the queue
		return
	}
	// The sender settles the pending count of what it takes.
	if e.spool.Empty() && !e.down.Load() {
		t := time.NewTimer(e.cfg.SlowAfter)
		defer t.Stop()
		select {
		case e.sendq <- batch:
			return
		case <-t.C:
		}
	}
	e.toSpool(batch)
	e.pending.done(batch)
}

// toSpool stores spans in the spool, counting what the limit costs.
func (e *Exporter) toSpool(spans []schemas.Span) {
	if e.spool == nil {
		e.drop(DropNoSpool, uint64(len(spans)))
		return
	}
	res, err := e.spool.Append(spans)
	if res.EvictedSpans > 0 {
		e.drop(DropSpoolFull, uint64(res.EvictedSpans))
	}
	switch {
	case errors.Is(err, errSpoolFull):
		e.drop(DropSpoolFull, uint64(len(spans)))
	case err != nil:
		e.log.Error("spool write failed", "err", err)
		e.drop(DropSpoolIO, uint64(len(spans)))
	default:
		e.spooled.Add(uint64(len(spans)))
		select {
		case e.kick <- struct{}{}:
		default:
		}
	}
}

// sender writes batches from the batcher; what the engine cannot take
// now goes to the spool.
func (e *Exporter) sender(ctx context.Context) {
	for batch := range e.sendq {
		if e.down.Load() && e.spool != nil {
			// The engine is known away: the spool's replayer probes it;
			// batches queued before that was known go behind the spool.
			e.toSpool(batch)
			e.pending.done(batch)
			continue
		}
		retry, err := e.send(ctx, batch)
		if err != nil {
			e.log.Warn("bulk write failed; spooling", "spans", len(retry), "err", err)
		}
		if len(retry) > 0 {
			e.down.Store(true)
			e.toSpool(retry)
		}
		e.pending.done(batch)
	}
}

// send writes spans and returns those worth retrying later. Spans are
// stamped with the time they are handed to the engine, so that assembly
// can tell which arrived after their window was assembled.
func (e *Exporter) send(ctx context.Context, spans []schemas.Span) (retry []schemas.Span, err error) {
	e.sendMu.Lock()
	defer e.sendMu.Unlock()
	now := time.Now().UTC()
	ix := e.st.Indices()
	byID := make(map[string]int, len(spans))
	start := time.Now()
	e.failMu.Lock()
	e.failures = nil // reports of an earlier, abandoned exchange
	e.failMu.Unlock()
	for i := range spans {
		spans[i].IngestedAt = now
		d, err := store.SpanDoc(ix, &spans[i])
		if err != nil {
			e.rejected.Add(1)
			e.log.Error("span cannot be encoded", "span", spans[i].SpanID, "err", err)
			continue
		}
		byID[d.ID] = i
		if err := e.w.Add(ctx, d); err != nil {
			// The writer refuses only when ctx is done: everything not yet
			// handed over is retried later.
			e.failMu.Lock()
			e.failures = append(e.failures, store.ItemError{Doc: d, Err: err})
			e.failMu.Unlock()
		}
	}
	flushErr := e.w.Flush(ctx)
	e.requests.Add(1)
	e.bulkSeconds.Observe(time.Since(start).Seconds())
	e.failMu.Lock()
	fails := e.failures
	e.failures = nil
	e.failMu.Unlock()
	if flushErr != nil {
		// The exchange did not finish (ctx ended): no outcome is known,
		// so every span is retried; a rewrite overwrites by id. Reports
		// that arrive later are ignored (at worst a span is retried twice).
		return spans, flushErr
	}
	failed := make(map[string]bool, len(fails))
	for _, f := range fails {
		i, ours := byID[f.Doc.ID]
		if !ours || failed[f.Doc.ID] {
			continue
		}
		failed[f.Doc.ID] = true
		if f.Retriable() {
			retry = append(retry, spans[i])
			if err == nil {
				err = f
			}
			continue
		}
		e.rejected.Add(1)
		e.log.Warn("engine refused a span", "span", f.Doc.ID, "index", f.Doc.Index, "status", f.Status, "type", f.Type, "reason", f.Reason)
	}
	e.written.Add(uint64(len(byID) - len(failed)))
	if len(retry) == 0 {
		e.down.Store(false)
	}
	return retry, err
}

// replayer drains the spool oldest first, backing off while the engine
// stays unreachable.
func (e *Exporter) replayer(ctx context.Context) {
	if e.spool == nil {
		return
	}
	for {
		n, err := e.replayOnce(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			e.log.Error("spool replay", "err", err)
		}
		if n == 0 && err == nil {
			select {
			case <-ctx.Done():
				return
			case <-e.kick:
			case <-time.After(e.cfg.FlushInterval):
			}
		}
	}
}

// replayOnce replays the oldest spool segment completely, retrying each
// batch with backoff until it lands or ctx ends. It returns the spans
// replayed; 0 and no error when the spool is empty.
func (e *Exporter) replayOnce(ctx context.Context) (int, error) {
	seg, err := e.spool.Next()
	if err != nil || seg == nil {
		return 0, err
	}
	r, err := openSegment(seg.path)
	if err != nil {
		// Unreadable: counted as lost rather than blocking the spool.
		e.log.Error("spool segment unreadable; dropping it", "segment", seg.path, "spans", seg.spans, "err", err)
		e.drop(DropSpoolIO, uint64(seg.spans))
		return 0, e.spool.Done(seg)
	}
	defer r.Close()
	// Spans of this segment an interrupted replay already wrote.
	for skip := seg.replayed; skip > 0; {
		b, err := r.Next(int(min(skip, int64(e.cfg.BatchSize))))
		skip -= int64(len(b))
		if err != nil {
			break
		}
	}
	total := 0
	backoff := e.cfg.RetryMin
	for {
		spans, rerr := r.Next(e.cfg.BatchSize)
		for len(spans) > 0 {
			retry, serr := e.send(ctx, spans)
			if ctx.Err() != nil {
				// Stopped mid-exchange: the segment resumes from its last
				// whole batch at the next replay.
				return total, nil
			}
			e.replayed.Add(uint64(len(spans) - len(retry)))
			total += len(spans) - len(retry)
			if len(retry) == 0 {
				seg.replayed += int64(len(spans))
				backoff = e.cfg.RetryMin
				break
			}
			e.down.Store(true)
			e.log.Warn("engine unreachable; spool replay waits", "spans_waiting", e.spoolSpans(), "retry_in", backoff, "err", serr)
			select {
			case <-ctx.Done():
				return total, nil
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, e.cfg.RetryMax)
			spans = retry
		}
		if rerr != nil {
			if !errors.Is(rerr, io.EOF) {
				e.log.Warn("spool segment ended early", "segment", seg.path, "err", rerr)
			}
			break
		}
	}
	return total, e.spool.Done(seg)
}

func (e *Exporter) spoolSpans() int64 {
	if e.spool == nil {
		return 0
	}
	_, n, _ := e.spool.Size()
	return n
}

// closeRetry is how long Close goes on replaying the spool while the
// engine is unreachable.
const closeRetry = 2 * time.Second

// Close stops taking spans, writes what is queued, and replays the spool
// until it is empty or ctx ends, or until the engine has been unreachable
// for closeRetry; what is left stays on disk for the next start, and Close
// says so with ErrSpoolNotEmpty.
func (e *Exporter) Close(ctx context.Context) error {
	e.stopOnce.Do(func() { close(e.stop) })
	if e.started.Load() {
		select {
		case <-e.runDone:
		case <-ctx.Done():
			return fmt.Errorf("export close: %w", ctx.Err())
		}
	} else {
		// Never run: route and send what was queued here.
		e.started.Store(true)
		close(e.runDone)
		e.closeAdds()
		go func() { e.batcher(ctx) }()
		e.sender(ctx)
	}
	var err error
	if e.spool != nil {
		// With the engine unreachable the spool is not waited on: it is
		// on disk, and the next start replays it. A stop is not held
		// up for as long as ctx allows by an engine that is away: the
		// replay stops once the engine has been unreachable for
		// closeRetry (one short try, in case it is back).
		rctx, cancel := context.WithCancel(ctx)
		watched := make(chan struct{})
		go func() {
			defer close(watched)
			t := time.NewTicker(closeRetry / 20)
			defer t.Stop()
			var since time.Time
			for {
				select {
				case <-rctx.Done():
					return
				case now := <-t.C:
					switch {
					case !e.down.Load():
						since = time.Time{}
					case since.IsZero():
						since = now
					case now.Sub(since) >= closeRetry:
						cancel()
						return
					}
				}
			}
		}()
		for !e.spool.Empty() && rctx.Err() == nil {
			if _, rerr := e.replayOnce(rctx); rerr != nil {
				e.log.Error("spool replay at close", "err", rerr)
				break
			}
		}
		cancel()
		<-watched
		if cerr := e.spool.Close(); cerr != nil {
			err = cerr
		}
		if _, n, segs := e.spool.Size(); n > 0 {
			e.log.Warn("spans left in the spool for the next start", "spans", n, "segments", segs, "dir", e.cfg.SpoolDir)
			err = errors.Join(err, fmt.Errorf("%w: %d spans in %s", ErrSpoolNotEmpty, n, e.cfg.SpoolDir))
		}
	}
	if w, ok := e.Watermark(); ok && e.cfg.ProgressInterval > 0 {
		// The scheduler need not wait for this agent any more. One
		// short try: with the engine away the scheduler stops waiting
		// once the agent has been silent for its agent timeout.
		rctx, cancel := context.WithTimeout(ctx, closeRetry)
		e.report(rctx, w, true)
		cancel()
	}
	if werr := e.w.Close(context.WithoutCancel(ctx)); werr != nil {
		err = errors.Join(err, werr)
	}
	e.logDrops(true)
	return err
}

// drop counts spans lost for reason and logs, at most every 10 seconds, how
// many were lost since the last log line.
func (e *Exporter) drop(reason string, n uint64) {
	if n == 0 {
		return
	}
	e.dropped[reason].Add(n)
	e.logDrops(false)
}

func (e *Exporter) logDrops(force bool) {
	e.dropLogMu.Lock()
	defer e.dropLogMu.Unlock()
	now := time.Now()
	if !force && now.Before(e.dropLogNext) {
		return
	}
	e.dropLogNext = now.Add(10 * time.Second)
	for _, r := range dropReasons {
		total := e.dropped[r].Load()
		if d := total - e.dropLogged[r]; d > 0 {
			e.log.Warn("spans dropped", "reason", r, "spans", d, "total", total)
			e.dropLogged[r] = total
		}
	}
}

// Stats returns the exporter's counters.
func (e *Exporter) Stats() Stats {
	s := Stats{
		Added: e.added.Load(), Written: e.written.Load(), Rejected: e.rejected.Load(),
		Spooled: e.spooled.Load(), Replayed: e.replayed.Load(), Requests: e.requests.Load(),
		Queued: len(e.queue), EngineDown: e.down.Load(), Dropped: map[string]uint64{},
	}
	for _, r := range dropReasons {
		if v := e.dropped[r].Load(); v > 0 {
			s.Dropped[r] = v
		}
	}
	if e.spool != nil {
		s.SpoolBytes, s.SpoolSpans, s.SpoolSegments = e.spool.Size()
	}
	return s
}
