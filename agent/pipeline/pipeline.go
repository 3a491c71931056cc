// Package pipeline runs the agent's chain on one host: capture events →
// connection tracking and protocol parsing → local correlation → output.
// Each step is its own package; this one owns the goroutines between them
// and stops them with its context.
package pipeline

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/schemas"
)

// Source produces capture events until its context ends: the eBPF tracer,
// or a recorded event file.
type Source interface {
	Run(ctx context.Context, out chan<- event.Event, goOut chan<- event.GoEvent) error
}

// FrontierSource is a Source that can say how far it has read. Frontier
// returns a time (the capture's monotonic ns) and a count: every event
// whose bytes existed before that time (event.Event.DataAt) is among the
// first sent events it has sent on out. ok is false while it cannot tell;
// then the pipeline judges by the events it handles. The eBPF tracer is
// one: it knows when it last found the ring buffer empty.
type FrontierSource interface {
	Source
	Frontier() (monoNs, sent uint64, ok bool)
}

// Output takes finished spans (with their local parent decided).
type Output interface {
	Add(s schemas.Span)
}

// ProgressSink is an Output that wants to know how far the pipeline's
// output is complete: Progress(w) says every span that started before w
// (wall ns) has been handed to Add. The exporter turns it into the agent's
// progress report (schemas.AgentProgress).
type ProgressSink interface {
	Progress(watermarkNs int64)
}

// Correlator decides local parents. It receives what conntrack produces and
// hands spans on to its output once decided. Flush decides everything
// pending (shutdown); Tick lets it decide spans that waited long enough.
type Correlator interface {
	conntrack.Sink
	GoEvent(e event.GoEvent)
	Tick(nowWallNs int64)
	Flush()
	// Oldest is the start of the oldest span it still holds.
	Oldest() (startNs int64, ok bool)
}

// Config wires one agent.
type Config struct {
	Conntrack conntrack.Config
	Protocols conntrack.Protocols
	// Correlator is optional: without one, spans go out without parents.
	Correlator Correlator
	Output     Output
	// Now is the wall clock in ns (time.Now by default).
	Now func() int64
	// Mono converts a wall-clock ns to the capture's monotonic clock, for
	// idle expiry.
	Mono func(wallNs int64) uint64
	Log  *slog.Logger
	// DrainDelay keeps the source running this long after ctx ends, so
	// that what the kernel captured before the stop (still in the ring
	// buffer and the capture's reordering) is read and turned into spans
	// (default 500ms).
	DrainDelay time.Duration
	// SourceDelay is how far behind the source's front (FrontierSource),
	// or else behind the newest event handled (or now, when the source is
	// idle), events may still come: a call's record is written when it
	// returns, the capture's reordering, ring-buffer polling (default
	// 250ms).
	SourceDelay time.Duration
	// HoldLimit bounds how long an unanswered request holds the progress
	// back (default 30s): a long poll or a stream is reported when it
	// ends, as a late span.
	HoldLimit time.Duration
}

// passThrough is the sink when no correlator is configured.
type passThrough struct{ out Output }

func (p passThrough) Span(s schemas.Span, _ *protocol.Exchange) { p.out.Add(s) }
func (passThrough) RequestStart(conntrack.InFlight)             {}

// Run reads src until ctx ends, then drains: every connection's pending
// calls are completed, the correlator flushed, and the last spans handed to
// the output before Run returns.
func Run(ctx context.Context, cfg Config, src Source) error {
	if cfg.Output == nil {
		return fmt.Errorf("pipeline: an output is required")
	}
	if cfg.Now == nil {
		cfg.Now = func() int64 { return time.Now().UnixNano() }
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	var sink conntrack.Sink = passThrough{cfg.Output}
	if cfg.Correlator != nil {
		sink = cfg.Correlator
	}
	tr, err := conntrack.New(cfg.Conntrack, cfg.Protocols, sink)
	if err != nil {
		return err
	}
	events := make(chan event.Event, 4096)
	goEvents := make(chan event.GoEvent, 1024)
	if cfg.DrainDelay <= 0 {
		cfg.DrainDelay = 500 * time.Millisecond
	}
	if cfg.SourceDelay <= 0 {
		cfg.SourceDelay = 250 * time.Millisecond
	}
	if cfg.HoldLimit <= 0 {
		cfg.HoldLimit = 30 * time.Second
	}
	progress, _ := cfg.Output.(ProgressSink)
	// read is how far the source is known to have been read.
	read := readFront{src: src}
	srcCtx, stopSrc := context.WithCancel(context.WithoutCancel(ctx))
	defer stopSrc()
	go func() {
		select {
		case <-ctx.Done():
			time.Sleep(cfg.DrainDelay)
			stopSrc()
		case <-srcCtx.Done():
		}
	}()
	var srcErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		defer close(events)
		srcErr = src.Run(srcCtx, events, goEvents)
	}()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for done := false; !done; {
		select {
		case e, ok := <-events:
			if !ok {
				done = true
				break
			}
			tr.Handle(&e)
			read.handled(&e)
		case g := <-goEvents:
			if cfg.Correlator != nil {
				cfg.Correlator.GoEvent(g)
			}
		case <-tick.C:
			now := cfg.Now()
			// Time moves for held calls and undecided correlations as
			// far as events have been handled, not with the clock: a
			// reader that lags (a loaded host) still has older events
			// queued, and a server's answer released by the clock
			// before its request arrived was parsed first, pairing
			// every later request with the next one's answer.
			front, ok := read.front(&cfg, now, len(events))
			if !ok {
				break
			}
			if cfg.Mono != nil {
				tr.Expire(cfg.Mono(front))
			}
			if cfg.Correlator != nil {
				cfg.Correlator.Tick(front)
			}
			if progress != nil {
				progress.Progress(watermark(&cfg, tr, front))
			}
		}
	}
	wg.Wait()
	for drained := false; !drained && cfg.Correlator != nil; {
		select {
		case g := <-goEvents:
			cfg.Correlator.GoEvent(g)
		default:
			drained = true
		}
	}
	tr.Flush()
	if cfg.Correlator != nil {
		cfg.Correlator.Flush()
	}
	st := tr.Stats()
	cfg.Log.Info("agent pipeline stopped", "events", st.Events, "conns", st.Conns, "exchanges", st.Exchanges,
		"parse_errors", st.ParseErrors, "fallbacks", st.Fallbacks, "conns_dropped", st.ConnsDropped)
	if srcErr != nil && ctx.Err() == nil {
		return srcErr
	}
	return nil
}

// readFront tracks how far the source has been read: every span that
// starts before the front has had its events handled.
type readFront struct {
	src Source
	// n counts the events handled; last is the newest one's exit
	// (monotonic ns), busy says one was handled since the previous tick.
	n     uint64
	last  uint64
	busy  bool
	known bool   // a FrontierSource gave a front
	at    uint64 // that front (monotonic ns)
	// pending are fronts the source gave at earlier ticks whose events
	// are not all handled yet, oldest first: a pipeline that lags by
	// several ticks still moves on, one tick behind its backlog.
	pending []mark
}

type mark struct{ at, sent uint64 }

// maxPendingMarks bounds the fronts remembered: past it the oldest are
// thinned, which only delays the front.
const maxPendingMarks = 64

func (r *readFront) handled(e *event.Event) {
	r.n++
	r.last = max(r.last, e.ExitNs)
	r.busy = true
}

// front is the wall-clock ns before which every span's events have been
// handled, as far as the source can tell, less its delay; ok is false
// while a FrontierSource has not said how far it has read.
func (r *readFront) front(cfg *Config, now int64, waiting int) (int64, bool) {
	defer func() { r.busy = false }()
	if fs, ok := r.src.(FrontierSource); ok {
		// A front counts once the events sent before it are handled:
		// the newest such of the one given now and those given before.
		if at, sent, ok := fs.Frontier(); ok {
			r.pending = append(r.pending, mark{at, sent})
		}
		last := -1
		for i, m := range r.pending {
			if r.n >= m.sent {
				r.known, r.at, last = true, max(r.at, m.at), i
			}
		}
		r.pending = r.pending[last+1:]
		if len(r.pending) > maxPendingMarks {
			// Keep every other one of the older half.
			old := r.pending[:len(r.pending)/2]
			kept := old[:0]
			for j := 0; j < len(old); j += 2 {
				kept = append(kept, old[j])
			}
			r.pending = append(kept, r.pending[len(r.pending)/2:]...)
		}
		if !r.known {
			return 0, false
		}
		return min(now, cfg.Conntrack.Wall(r.at)) - int64(cfg.SourceDelay), true
	}
	// Otherwise events are taken to come in about the order they
	// happened: when some were handled since the last tick (or are still
	// waiting), the newest one handled is as far as the source has gone;
	// when none, it is idle up to now.
	w := now
	if (r.busy || waiting > 0) && r.last != 0 { // conntrack.New requires Wall
		w = min(w, cfg.Conntrack.Wall(r.last))
	}
	return w - int64(cfg.SourceDelay), true
}

// watermark is the time before which every span has been handed to the
// output: the source has been read up to front, and nothing that started
// earlier is still held by connection tracking or correlation.
func watermark(cfg *Config, tr *conntrack.Tracker, front int64) int64 {
	w := front
	if o, ok := tr.Oldest(w - int64(cfg.HoldLimit)); ok && o < w {
		w = o
	}
	if cfg.Correlator != nil {
		if o, ok := cfg.Correlator.Oldest(); ok && o < w {
			w = o
		}
	}
	return w
}
