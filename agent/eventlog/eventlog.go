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

// record is one line of an event log: exactly one of E and G is set.
type record struct {
	E *event.Event   `json:"e,omitempty"`
	G *event.GoEvent `json:"g,omitempty"`
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
	r io.Reader
}

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
			return fmt.Errorf("event log line %d: neither an event nor a goroutine event", line)
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("event log line %d: %w", line+1, err)
	}
	return nil
}
