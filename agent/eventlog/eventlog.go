// Package eventlog records capture events to a file and plays them back, so
// that everything after capture (parsing, correlation, assembly) can run on
// recorded traffic, without root and deterministically.
package eventlog

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sync"

	"github.com/deeptrace/deeptrace/agent/event"
)

// record is one line of an event log: exactly one of E, G and H is set.
type record struct {
	E *event.Event   `json:"e,omitempty"`
	G *event.GoEvent `json:"g,omitempty"`
	H *Header        `json:"h,omitempty"`
}

// Header describes the recording; it is the log's first line.
type Header struct {
	// ClockOffset is wall-clock minus monotonic ns when recording began:
	// events carry monotonic times.
	ClockOffset int64  `json:"clock_offset"`
	Host        string `json:"host,omitempty"`
}

// Writer appends events to an io.Writer as JSON lines. It is safe for
// concurrent use.
type Writer struct {
	mu  sync.Mutex
	bw  *bufio.Writer
	enc *json.Encoder
}

// NewWriter writes to w; call Flush before closing w.
func NewWriter(w io.Writer) *Writer {
	bw := bufio.NewWriterSize(w, 1<<16)
	return &Writer{bw: bw, enc: json.NewEncoder(bw)}
}

// Header records the log's header; write it first.
func (w *Writer) Header(h Header) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enc.Encode(record{H: &h})
}

// Event records a capture event.
func (w *Writer) Event(e *event.Event) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enc.Encode(record{E: e})
}

// GoEvent records a goroutine event.
func (w *Writer) GoEvent(g *event.GoEvent) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.enc.Encode(record{G: g})
}

// Flush writes buffered lines out.
func (w *Writer) Flush() error {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bw.Flush()
}

// Reader plays a recorded log back as a pipeline source.
type Reader struct {
	r      io.Reader
	header Header
}

// Header returns the log's header. It is valid once Run has sent the first
// event (the header precedes every event).
func (rd *Reader) Header() Header { return rd.header }

// NewReader reads the log from r.
func NewReader(r io.Reader) *Reader { return &Reader{r: r} }

// Run sends every recorded event, in file order, then returns. A malformed
// line is an error naming its line number.
func (rd *Reader) Run(ctx context.Context, out chan<- event.Event, goOut chan<- event.GoEvent) error {
	sc := bufio.NewScanner(rd.r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	line := 0
	for sc.Scan() {
		line++
		if len(sc.Bytes()) == 0 {
			continue
		}
		var rec record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("event log line %d: %w", line, err)
		}
		switch {
		case rec.H != nil:
			rd.header = *rec.H
		case rec.E != nil:
			select {
			case out <- *rec.E:
			case <-ctx.Done():
				return ctx.Err()
			}
		case rec.G != nil && goOut != nil:
			select {
			case goOut <- *rec.G:
			case <-ctx.Done():
				return ctx.Err()
			}
		case rec.G == nil:
			return fmt.Errorf("event log line %d: neither an event, a goroutine event nor a header", line)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("event log line %d: %w", line+1, err)
	}
	return nil
}

// Source is what Tee wraps: anything that produces capture events.
type Source interface {
	Run(ctx context.Context, out chan<- event.Event, goOut chan<- event.GoEvent) error
}

// Tee records every event src produces to w on its way through. It passes
// every event on in order, so a source that says how far it has read
// (pipeline.FrontierSource) still does through it.
func Tee(src Source, w *Writer) Source {
	if _, ok := src.(frontier); ok {
		return frontierTee{tee{src: src, w: w}}
	}
	return tee{src: src, w: w}
}

type tee struct {
	src Source
	w   *Writer
}

type frontier interface {
	Frontier() (monoNs, sent uint64, ok bool)
}

type frontierTee struct{ tee }

func (t frontierTee) Frontier() (monoNs, sent uint64, ok bool) {
	return t.src.(frontier).Frontier()
}

func (t tee) Run(ctx context.Context, out chan<- event.Event, goOut chan<- event.GoEvent) error {
	ev := make(chan event.Event, 1024)
	gev := make(chan event.GoEvent, 256)
	errc := make(chan error, 1)
	go func() {
		errc <- t.src.Run(ctx, ev, gev)
		close(ev)
	}()
	for {
		select {
		case e, ok := <-ev:
			if !ok {
				for len(gev) > 0 {
					g := <-gev
					t.w.GoEvent(&g)
					if goOut != nil {
						goOut <- g
					}
				}
				err := <-errc
				if ferr := t.w.Flush(); err == nil {
					err = ferr
				}
				return err
			}
			t.w.Event(&e)
			out <- e
		case g := <-gev:
			t.w.GoEvent(&g)
			if goOut != nil {
				goOut <- g
			}
		}
	}
}
