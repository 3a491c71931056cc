// Package sample decides which spans an agent keeps when its central
// configuration asks for fewer than all (the "sampling" section).
//
// Sampling is head-based and per service: a rate in (0, 1] is the
// fraction of a service's requests kept. The decision is taken once per
// request a service receives (its server span) and inherited by
// everything the service did for that request: the client spans local
// correlation gave that server span as parent. A call a service makes on
// its own (a client span without a local parent: a timer, a queue
// consumer, the root of a trace) is decided on its own. The decision is a
// hash of the deciding span's id compared with the rate, so it needs no
// state and no coordination: the same request gets the same decision on a
// replay or after a restart, and a service's part of a trace is kept or
// dropped whole.
//
// Across services nothing carries the decision (DeepTrace injects no
// header): a service's callee decides its own part at its own rate. A
// trace is kept whole when the services it crosses keep it, so set a rate
// below 1 on the services where traces start and leave the services they
// call at 1; a callee with a lower rate than its callers cuts their kept
// traces short.
package sample

import (
	"errors"
	"fmt"
	"math"
	"sort"
	"sync/atomic"

	"github.com/deeptrace/deeptrace/schemas"
)

// Rates are the sampling rates: Default for every service not in
// Services. A rate is in (0, 1]; 0 for Default means 1 (keep all).
type Rates struct {
	Default  float64
	Services map[string]float64
}

// A RateError is a rate Rates.Validate refuses.
type RateError struct {
	// Default is set for the default rate; otherwise Service names the
	// service whose rate it is (empty: a service rate without a name).
	Default bool
	Service string
	Rate    float64
	// Reason says what is wrong, or what is wanted.
	Reason string
}

func (e *RateError) Error() string {
	switch {
	case e.Default:
		return fmt.Sprintf("sampling rate %v: %s", e.Rate, e.Reason)
	case e.Service == "":
		return "sampling: " + e.Reason
	}
	return fmt.Sprintf("sampling rate of service %q %v: %s", e.Service, e.Rate, e.Reason)
}

// Validate checks every rate. The error joins a *RateError per bad rate,
// the default's first, then the services' by name, so a caller can name
// each in its own terms (agentconfig names the field path).
func (r Rates) Validate() error {
	var errs []error
	if r.Default < 0 || r.Default > 1 || math.IsNaN(r.Default) {
		errs = append(errs, &RateError{Default: true, Rate: r.Default, Reason: "want 0..1 (0: keep all)"})
	}
	names := make([]string, 0, len(r.Services))
	for s := range r.Services {
		names = append(names, s)
	}
	sort.Strings(names)
	for _, s := range names {
		switch v := r.Services[s]; {
		case s == "":
			errs = append(errs, &RateError{Rate: v, Reason: "a service name is required"})
		case !(v > 0 && v <= 1):
			errs = append(errs, &RateError{Service: s, Rate: v, Reason: "want more than 0, at most 1 (a filter stops tracing a service)"})
		}
	}
	return errors.Join(errs...)
}

// thresholds are Rates compiled: a span is kept when the hash of its
// deciding id is below its service's threshold. all means rate 1.
type thresholds struct {
	def      threshold
	services map[string]threshold
}

type threshold struct {
	all  bool
	max  uint64
	rate float64
}

func thresholdOf(rate float64) threshold {
	if rate == 0 || rate >= 1 {
		return threshold{all: true}
	}
	return threshold{max: uint64(rate * (1 << 63) * 2), rate: rate}
}

// Output takes the spans that are kept.
type Output interface {
	Add(s schemas.Span)
}

// Sampler decides; its rates can change while the agent runs. The zero
// value keeps everything. It is safe for concurrent use.
type Sampler struct {
	t             atomic.Pointer[thresholds]
	kept, dropped atomic.Uint64
}

// Set replaces the rates; on an invalid rate it fails and keeps the old
// ones.
func (s *Sampler) Set(r Rates) error {
	if err := r.Validate(); err != nil {
		return err
	}
	t := &thresholds{def: thresholdOf(r.Default)}
	if len(r.Services) > 0 {
		t.services = make(map[string]threshold, len(r.Services))
		for name, v := range r.Services {
			t.services[name] = thresholdOf(v)
		}
	}
	if t.def.all && len(t.services) == 0 {
		t = nil
	}
	s.t.Store(t)
	return nil
}

// Keep says whether sp is kept, and counts the decision. A span kept at a
// rate below 1 carries it (SampleRate), so that metrics count each for
// the requests it stands for.
func (s *Sampler) Keep(sp *schemas.Span) bool {
	t := s.t.Load()
	if t == nil {
		s.kept.Add(1)
		return true
	}
	th, ok := t.services[sp.Service]
	if !ok {
		th = t.def
	}
	if th.all {
		s.kept.Add(1)
		return true
	}
	key := sp.SpanID
	if sp.Role == schemas.RoleClient && sp.ParentSpanID != "" {
		key = sp.ParentSpanID
	}
	if hash(key) < th.max {
		s.kept.Add(1)
		sp.SampleRate = th.rate
		return true
	}
	s.dropped.Add(1)
	return false
}

// Stats returns how many spans were kept and dropped.
func (s *Sampler) Stats() (kept, dropped uint64) { return s.kept.Load(), s.dropped.Load() }

// Output returns an output that hands next the spans Keep keeps.
func (s *Sampler) Output(next Output) Output { return sampled{s, next} }

type sampled struct {
	s    *Sampler
	next Output
}

func (o sampled) Add(sp schemas.Span) {
	if o.s.Keep(&sp) {
		o.next.Add(sp)
	}
}

// Progress passes the pipeline's progress on (see pipeline.ProgressSink):
// a span sampled out is as good as handed over.
func (o sampled) Progress(watermarkNs int64) {
	if p, ok := o.next.(interface{ Progress(int64) }); ok {
		p.Progress(watermarkNs)
	}
}

// hash is FNV-1a (64 bits) with a final mix, so that ids sharing a prefix
// still spread over the whole range.
func hash(s string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(s); i++ {
		h ^= uint64(s[i])
		h *= 1099511628211
	}
	h ^= h >> 33
	h *= 0xff51afd7ed558ccd
	h ^= h >> 33
	return h
}
