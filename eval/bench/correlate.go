package bench

import (
	"fmt"

	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/correlate"
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/schemas"
)

// Correlated is the outcome of running one capture through conntrack and
// the correlator with one method.
type Correlated struct {
	Spans []schemas.Span
	// Values are the identifiers each span's exchange carried, by span
	// id: the evaluator tells concurrent gRPC calls on one connection
	// apart by them, as the truth's keys do.
	Values    map[string][]string
	Conntrack conntrack.Stats
	Correlate correlate.Stats
}

// Correlate replays the capture file at path with the given method.
func Correlate(path string, cfg correlate.Config) (*Correlated, error) {
	out := &Correlated{Values: map[string][]string{}}
	c, err := correlate.New(cfg, func(s schemas.Span) { out.Spans = append(out.Spans, s) })
	if err != nil {
		return nil, err
	}
	_, st, err := Replay(path, valueTap{c, out.Values})
	if err != nil {
		return nil, fmt.Errorf("replay %s: %w", path, err)
	}
	c.Flush()
	out.Conntrack, out.Correlate = st, c.Stats()
	return out, nil
}

// valueTap keeps each exchange's values on the way to the correlator.
type valueTap struct {
	*correlate.Correlator
	values map[string][]string
}

func (v valueTap) Span(s schemas.Span, ex *protocol.Exchange) {
	if len(ex.Values) > 0 {
		v.values[s.SpanID] = ex.Values
	}
	v.Correlator.Span(s, ex)
}
