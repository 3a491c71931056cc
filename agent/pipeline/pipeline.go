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
	// SourceDelay is how far behind the newest event handled (or behind
	// now, when the source is idle) events may still come: the capture's
	// reordering and ring-buffer polling (default 250ms).
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
	// lastEvent is the newest event's exit (monotonic ns); busy says one
	// was handled since the previous tick.
	var lastEvent uint64
	busy := false
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
			if e.ExitNs > lastEvent {
				lastEvent = e.ExitNs
			}
			busy = true
		case g := <-goEvents:
			if cfg.Correlator != nil {
				cfg.Correlator.GoEvent(g)
			}
		case <-tick.C:
			now := cfg.Now()
			if cfg.Mono != nil {
				tr.Expire(cfg.Mono(now))
			}
			if cfg.Correlator != nil {
				cfg.Correlator.Tick(now)
			}
			if progress != nil {
				// Events still waiting mean the source is not idle, even
				// if a slow tick left none handled since the last one.
				busy = busy || len(events) > 0
				progress.Progress(watermark(&cfg, tr, now, lastEvent, busy))
				busy = false
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

// watermark is the time before which every span has been handed to the
// output: events up to the newest one handled have been read (up to now
// when the source is idle), less the source's delay, and nothing that
// started earlier is still held by connection tracking or correlation.
func watermark(cfg *Config, tr *conntrack.Tracker, now int64, lastEvent uint64, busy bool) int64 {
	w := now
	if busy && lastEvent != 0 { // conntrack.New requires Wall
		w = min(w, cfg.Conntrack.Wall(lastEvent))
	}
	w -= int64(cfg.SourceDelay)
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
