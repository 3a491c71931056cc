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

// Correlator decides local parents. It receives what conntrack produces and
// hands spans on to its output once decided. Flush decides everything
// pending (shutdown); Tick lets it decide spans that waited long enough.
type Correlator interface {
	conntrack.Sink
	GoEvent(e event.GoEvent)
	Tick(nowWallNs int64)
	Flush()
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
