//go:build linux && amd64

package bench

import (
	"context"
	"fmt"
	"sync"
	"time"

	"github.com/deeptrace/deeptrace/agent/capture"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/eval/capfile"
)

// Recording is a capture running into a file until Stop.
type Recording struct {
	tr     *capture.Tracer
	w      *capfile.Writer
	cancel context.CancelFunc
	done   chan error
	stats  capture.Stats
}

// Summary says what the capture counted, once stopped.
func (r *Recording) Summary() string {
	s := r.stats
	return fmt.Sprintf("%d records written (%d data events, %d goroutine events), %d dropped in the ring, %d late, %d gaps",
		r.w.Records(), s.Events, s.GoEvents, s.Dropped, s.Late, s.Gaps)
}

// StartRecording traces the pids of meta.Services with the eBPF capture and
// writes everything it reports to path. Needs root.
func StartRecording(path string, meta capfile.Meta) (*Recording, error) {
	cfg := capture.Config{GoCreation: meta.GoCreation, GoScheduling: meta.GoScheduling, RingBytes: 64 << 20}
	for pid := range meta.Services {
		cfg.PIDs = append(cfg.PIDs, int(pid))
	}
	tr, err := capture.Open(cfg)
	if err != nil {
		return nil, err
	}
	if meta.MaxCallBytes == 0 {
		meta.MaxCallBytes = 64 << 10
	}
	w, err := capfile.Create(path, meta)
	if err != nil {
		tr.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &Recording{tr: tr, w: w, cancel: cancel, done: make(chan error, 1)}
	out := make(chan event.Event, 4096)
	goOut := make(chan event.GoEvent, 4096)
	var runErr error
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		runErr = tr.Run(ctx, out, goOut)
		close(out)
		close(goOut)
	}()
	go func() {
		clock := tr.Clock()
		var werr error
		note := func(err error) {
			if werr == nil && err != nil {
				werr = err
			}
		}
		lastCal := time.Time{}
		calibrate := func() {
			if time.Since(lastCal) > 500*time.Millisecond {
				lastCal = time.Now()
				mono := capture.MonotonicNs()
				note(w.Clock(mono, clock.WallNs(mono)-int64(mono)))
			}
		}
		calibrate()
		o, g := out, goOut
		for o != nil || g != nil {
			select {
			case e, ok := <-o:
				if !ok {
					o = nil
					continue
				}
				note(w.Data(&e))
			case ge, ok := <-g:
				if !ok {
					g = nil
					continue
				}
				note(w.Go(&ge))
			}
			calibrate()
		}
		wg.Wait()
		r.stats, _ = tr.Stats()
		tr.Close()
		if err := w.Close(); werr == nil {
			werr = err
		}
		if runErr != nil {
			werr = fmt.Errorf("capture: %w", runErr)
		}
		r.done <- werr
	}()
	return r, nil
}

// Stop ends the capture and closes the file.
func (r *Recording) Stop() error {
	r.cancel()
	return <-r.done
}
