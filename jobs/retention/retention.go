// Package retention deletes DeepTrace's time-sharded indices once they are
// older than the age configured for their kind. It only ever deletes whole
// indices that schemas.Indices recognises as its own (prefix, kind and a
// well-formed time suffix), so a foreign index that merely matches the
// pattern is never touched.
package retention

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sort"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// Engine is the part of the store retention uses.
type Engine interface {
	Indices() schemas.Indices
	ListIndices(ctx context.Context, pattern string) ([]store.IndexInfo, error)
	DeleteIndices(ctx context.Context, names ...string) error
}

// MinAge is the shortest age a kind may be kept; anything shorter would
// delete the hour being written.
const MinAge = time.Hour

// deleteBatch bounds the names of one delete request (they travel in the
// URL).
const deleteBatch = 50

// Policy is how long each kind of index is kept. A kind that is missing or
// has age 0 is kept forever.
type Policy map[schemas.Kind]time.Duration

// DefaultPolicy keeps spans 3 days, traces 30, metrics 90 and audit 365.
var DefaultPolicy = Policy{
	schemas.KindSpans:   72 * time.Hour,
	schemas.KindTraces:  30 * 24 * time.Hour,
	schemas.KindMetrics: 90 * 24 * time.Hour,
	schemas.KindAudit:   365 * 24 * time.Hour,
}

// Validate checks every age; the error names the setting (spans-age, ...).
func (p Policy) Validate() error {
	for k, age := range p {
		if !known(k) {
			return fmt.Errorf("retention: unknown index kind %q", k)
		}
		if age != 0 && age < MinAge {
			return fmt.Errorf("%s-age %s: want 0 (keep forever) or at least %s", k, age, MinAge)
		}
	}
	return nil
}

func known(k schemas.Kind) bool {
	for _, kk := range schemas.Kinds {
		if k == kk {
			return true
		}
	}
	return false
}

// KindReport is what one pass did to one kind.
type KindReport struct {
	Kind schemas.Kind
	// Age is the configured age; 0 when the kind is kept forever.
	Age    time.Duration
	Cutoff time.Time
	// Deleted lists the expired indices, deleted unless the pass was a dry
	// run.
	Deleted []string
	// Kept counts the kind's indices left in place.
	Kept int
}

// Report is what one pass did, kind by kind in schemas.Kinds order.
type Report struct {
	At     time.Time
	DryRun bool
	Kinds  []KindReport
}

// Deleted counts the indices the pass deleted (or would have, dry).
func (r Report) Deleted() int {
	n := 0
	for _, k := range r.Kinds {
		n += len(k.Deleted)
	}
	return n
}

// Metrics are retention's Prometheus metrics.
type Metrics struct {
	Runs          *prometheus.CounterVec
	Deleted       *prometheus.CounterVec
	Indices       *prometheus.GaugeVec
	LastSuccess   prometheus.Gauge
	PassDurations prometheus.Histogram
}

// NewMetrics creates retention's metrics and registers them on reg (when
// not nil).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Runs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deeptrace_retention_runs_total", Help: "Retention passes, by outcome (ok, error).",
		}, []string{"outcome"}),
		Deleted: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "deeptrace_retention_deleted_indices_total", Help: "Indices deleted by retention, by kind.",
		}, []string{"kind"}),
		Indices: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "deeptrace_retention_indices", Help: "Indices of each kind left after the last pass.",
		}, []string{"kind"}),
		LastSuccess: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "deeptrace_retention_last_success_timestamp_seconds", Help: "When the last pass that deleted everything it should ended.",
		}),
		PassDurations: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "deeptrace_retention_pass_seconds", Help: "Duration of retention passes.",
			Buckets: prometheus.ExponentialBuckets(0.05, 2, 12),
		}),
	}
	if reg != nil {
		reg.MustRegister(m.Runs, m.Deleted, m.Indices, m.LastSuccess, m.PassDurations)
	}
	return m
}

// Retention applies a policy to one engine.
type Retention struct {
	Engine Engine
	Policy Policy
	// DryRun lists what would be deleted without deleting it.
	DryRun bool
	// Log receives one line per deleting kind; slog.Default when nil.
	Log *slog.Logger
	// Metrics, when not nil, counts passes and deletions.
	Metrics *Metrics
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Run makes one pass: for every kind with an age, it lists the kind's
// indices, picks those whose whole time shard ended before now-age and
// deletes them. A failure on one kind does not stop the others; the
// returned error joins every failure.
func (r *Retention) Run(ctx context.Context) (Report, error) {
	if err := r.Policy.Validate(); err != nil {
		return Report{}, err
	}
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	started := time.Now()
	rep := Report{At: now().UTC(), DryRun: r.DryRun}
	ix := r.Engine.Indices()
	var errs []error
	for _, k := range schemas.Kinds {
		age := r.Policy[k]
		kr := KindReport{Kind: k, Age: age}
		if age == 0 {
			rep.Kinds = append(rep.Kinds, kr)
			continue
		}
		kr.Cutoff = rep.At.Add(-age)
		infos, err := r.Engine.ListIndices(ctx, ix.Pattern(k))
		if err != nil {
			errs = append(errs, fmt.Errorf("retention %s: %w", k, err))
			rep.Kinds = append(rep.Kinds, kr)
			continue
		}
		names := make([]string, len(infos))
		for i, in := range infos {
			names[i] = in.Name
		}
		expired := ix.Expired(names, k, kr.Cutoff)
		kr.Kept = len(names) - len(expired)
		if !r.DryRun {
			deleted, err := r.delete(ctx, expired)
			kr.Deleted = deleted
			kr.Kept += len(expired) - len(deleted)
			if err != nil {
				errs = append(errs, fmt.Errorf("retention %s: %w", k, err))
			}
		} else {
			kr.Deleted = expired
		}
		if len(kr.Deleted) > 0 {
			log.Info("retention", "kind", string(k), "age", age.String(), "cutoff", kr.Cutoff,
				"deleted", len(kr.Deleted), "kept", kr.Kept, "dry_run", r.DryRun,
				"oldest", kr.Deleted[0], "newest", kr.Deleted[len(kr.Deleted)-1])
		}
		if r.Metrics != nil {
			if !r.DryRun {
				r.Metrics.Deleted.WithLabelValues(string(k)).Add(float64(len(kr.Deleted)))
			}
			r.Metrics.Indices.WithLabelValues(string(k)).Set(float64(kr.Kept))
		}
		rep.Kinds = append(rep.Kinds, kr)
	}
	err := errors.Join(errs...)
	if r.Metrics != nil {
		r.Metrics.PassDurations.Observe(time.Since(started).Seconds())
		if err != nil {
			r.Metrics.Runs.WithLabelValues("error").Inc()
		} else {
			r.Metrics.Runs.WithLabelValues("ok").Inc()
			r.Metrics.LastSuccess.SetToCurrentTime()
		}
	}
	return rep, err
}

// delete removes names oldest first, in batches, and returns those gone.
func (r *Retention) delete(ctx context.Context, names []string) ([]string, error) {
	sort.Strings(names)
	var done []string
	for len(names) > 0 {
		n := min(len(names), deleteBatch)
		if err := r.Engine.DeleteIndices(ctx, names[:n]...); err != nil {
			return done, err
		}
		done = append(done, names[:n]...)
		names = names[n:]
	}
	return done, nil
}

// Every runs a pass now and then every interval until ctx ends. A failed
// pass is logged and retried at the next tick; Every returns nil when ctx
// ends. A pass in progress when ctx ends is cut short at its next engine
// call; retention is idempotent, so the next start finishes the job.
func (r *Retention) Every(ctx context.Context, interval time.Duration) error {
	if interval <= 0 {
		return fmt.Errorf("every %s: want a positive interval", interval)
	}
	log := r.Log
	if log == nil {
		log = slog.Default()
	}
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		if rep, err := r.Run(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			log.Error("retention pass failed", "err", err, "deleted", rep.Deleted())
		} else {
			log.Debug("retention pass", "deleted", rep.Deleted(), "dry_run", rep.DryRun)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
	}
}
