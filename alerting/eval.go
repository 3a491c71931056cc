package alerting

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"time"

	"github.com/hibiken/asynq"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// Status is where a rule is in its life cycle.
type Status string

// Rule statuses: ok (never breached, or a pending breach that cleared),
// pending (breached, for less than For), firing, resolved (was firing,
// no longer breached).
const (
	StatusOK       Status = "ok"
	StatusPending  Status = "pending"
	StatusFiring   Status = "firing"
	StatusResolved Status = "resolved"
)

// State is a rule's current state.
type State struct {
	Status Status `json:"status"`
	// Since is when the current breach began (the start of the window of
	// its first breached evaluation).
	Since time.Time `json:"since,omitzero"`
	// FiringSince identifies the current (or last) firing.
	FiringSince time.Time `json:"firing_since,omitzero"`
	Value       *float64  `json:"value"`
	// EvaluatedAt is the end of the data the last evaluation looked at.
	EvaluatedAt time.Time `json:"evaluated_at,omitzero"`
}

// Event is one transition of a rule, kept in the history.
type Event struct {
	RuleID      string    `json:"rule_id"`
	RuleName    string    `json:"rule_name"`
	From        Status    `json:"from"`
	To          Status    `json:"to"`
	At          time.Time `json:"at"`
	Value       *float64  `json:"value"`
	Threshold   float64   `json:"threshold"`
	FiringSince time.Time `json:"firing_since,omitzero"`
	// Error, when set, makes the entry the notification of the transition
	// to To rather than a transition: it was not delivered and will not
	// be (a refused destination, or the retries used up), and why.
	Error string `json:"error,omitempty"`
}

// EvaluatorConfig tunes an Evaluator; zero values take the defaults.
type EvaluatorConfig struct {
	// Delay is how far behind now the data Evaluate reads ends (2m): the
	// rollup of a minute runs after its lateness, and a minute not yet
	// rolled up must not read as "no traffic". Scheduled evaluations name
	// their minute themselves (see Scheduler).
	Delay time.Duration
	// NotifyRetention keeps a sent notification's task id, so the same
	// firing is never notified twice (7 days).
	NotifyRetention time.Duration
	// HistoryMax caps the history list (10000).
	HistoryMax int64
	Logger     *slog.Logger
}

func (c *EvaluatorConfig) defaults() {
	if c.Delay == 0 {
		c.Delay = 2 * time.Minute
	}
	if c.NotifyRetention == 0 {
		c.NotifyRetention = 7 * 24 * time.Hour
	}
	if c.HistoryMax == 0 {
		c.HistoryMax = defaultHistoryMax
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// defaultHistoryMax caps the history list.
const defaultHistoryMax = 10000

// Evaluator evaluates every rule against the metrics index.
type Evaluator struct {
	cfg    EvaluatorConfig
	rules  *Rules
	rdb    redis.UniversalClient
	es     *store.Store
	client *asynq.Client
	log    *slog.Logger
	// skipped counts scheduled evaluations given up (ProcessTask).
	skipped prometheus.Counter
}

// NewEvaluator builds an evaluator.
func NewEvaluator(cfg EvaluatorConfig, rdb redis.UniversalClient, es *store.Store) *Evaluator {
	cfg.defaults()
	return &Evaluator{cfg: cfg, rules: NewRules(rdb), rdb: rdb, es: es, client: asynq.NewClientFromRedisClient(rdb),
		log: cfg.Logger.With("component", "alerting"),
		skipped: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "deeptrace_alert_evaluations_skipped_total",
			Help: "Scheduled alert evaluations skipped because their minute was not rolled up (or another evaluation held the lock) when their wait ended.",
		})}
}

// Collectors are the evaluator's Prometheus collectors, for the worker
// that serves its tasks to register.
func (e *Evaluator) Collectors() []prometheus.Collector { return []prometheus.Collector{e.skipped} }

// Report says what one evaluation did.
type Report struct {
	Rules       int
	Metrics     int // metric documents read
	Transitions []Event
	Notified    int // notification tasks enqueued (duplicates not counted)
	Took        time.Duration
}

type seriesKey struct {
	scope             schemas.Scope
	service, op, peer string
}

// ErrEvaluating is returned when another evaluation holds the lock.
var ErrEvaluating = errors.New("another alert evaluation is running")

// Evaluate evaluates every enabled rule on the data ending at
// now-Delay (truncated to the minute). One evaluator runs at a time; when
// another one runs, Evaluate does nothing.
func (e *Evaluator) Evaluate(ctx context.Context, now time.Time) (Report, error) {
	rep, err := e.EvaluateEnd(ctx, now.UTC().Add(-e.cfg.Delay).Truncate(time.Minute))
	if errors.Is(err, ErrEvaluating) {
		return rep, nil
	}
	return rep, err
}

// EvaluateEnd evaluates every enabled rule on the data ending at end (a
// whole minute). It returns ErrEvaluating when another evaluation runs.
// Data already evaluated is not evaluated again, so a repeated or late
// evaluation changes nothing.
func (e *Evaluator) EvaluateEnd(ctx context.Context, end time.Time) (Report, error) {
	start := time.Now()
	var rep Report
	ok, err := e.rdb.SetNX(ctx, keyEvalLock, 1, time.Minute).Result()
	if err != nil {
		return rep, fmt.Errorf("alert evaluation lock: %w", err)
	}
	if !ok {
		return rep, ErrEvaluating
	}
	defer e.rdb.Del(context.WithoutCancel(ctx), keyEvalLock)
	rules, err := e.rules.List(ctx)
	if err != nil {
		return rep, err
	}
	states, err := e.rules.States(ctx)
	if err != nil {
		return rep, err
	}
	end = end.UTC().Truncate(time.Minute)
	var widest time.Duration
	services := map[string]bool{}
	for _, r := range rules {
		if !r.Disabled {
			widest = max(widest, time.Duration(r.Window))
			services[r.Service] = true
		}
	}
	rep.Rules = len(rules)
	if widest == 0 {
		return rep, nil
	}
	var f rollup.Filter
	if len(services) <= 1000 {
		for s := range services {
			f.Services = append(f.Services, s)
		}
	}
	docs, err := rollup.Read(ctx, e.es, end.Add(-widest), end, f)
	if err != nil {
		return rep, fmt.Errorf("read metrics: %w", err)
	}
	rep.Metrics = len(docs)
	by := map[seriesKey][]schemas.Metric{}
	for _, d := range docs {
		k := seriesKey{d.Scope, d.Service, d.Operation, d.PeerService}
		by[k] = append(by[k], d)
	}
	// States and history go in one pipeline after every notification was
	// enqueued: a failure repeats the evaluation, whose task ids dedupe.
	pipe := e.rdb.TxPipeline()
	for i := range rules {
		r := &rules[i]
		if r.Disabled {
			continue
		}
		v := value(r, by[seriesKey{r.Scope, r.Service, r.Operation, r.Peer}], end)
		st := states[r.ID]
		next, evs := step(r, st, v, end)
		for _, ev := range evs {
			if r.Webhook != "" && (ev.To == StatusFiring || (ev.To == StatusResolved && ev.From == StatusFiring)) {
				dup, err := e.notify(ctx, r, ev)
				if err != nil {
					return rep, err // state not saved: the next evaluation repeats, the task id dedupes
				}
				if !dup {
					rep.Notified++
				}
			}
		}
		b, _ := json.Marshal(next)
		pipe.HSet(ctx, keyState, r.ID, b)
		for _, ev := range evs {
			eb, _ := json.Marshal(ev)
			pipe.LPush(ctx, keyHistory, eb)
		}
		rep.Transitions = append(rep.Transitions, evs...)
	}
	if len(rep.Transitions) > 0 {
		pipe.LTrim(ctx, keyHistory, 0, e.cfg.HistoryMax-1)
	}
	if _, err := pipe.Exec(ctx); err != nil {
		return rep, fmt.Errorf("save alert states: %w", err)
	}
	for _, ev := range rep.Transitions {
		var v any = "no data"
		if ev.Value != nil {
			v = *ev.Value
		}
		e.log.Info("alert", "rule", ev.RuleName, "id", ev.RuleID, "from", ev.From, "to", ev.To, "value", v)
	}
	rep.Took = time.Since(start)
	return rep, nil
}

// value computes a rule's metric over its window ending at end; nil when
// the window has no requests and the metric needs some (latency, error
// rate).
func value(r *Rule, docs []schemas.Metric, end time.Time) *float64 {
	w := time.Duration(r.Window)
	from := end.Add(-w)
	var in []schemas.Metric
	for _, d := range docs {
		if !d.Timestamp.Before(from) && d.Timestamp.Before(end) {
			in = append(in, d)
		}
	}
	p := rollup.Aggregate(from, w, in)
	var v float64
	switch r.Metric {
	case MetricCount:
		v = float64(p.Count)
	case MetricRate:
		v = p.Rate
	default:
		if p.Count == 0 {
			return nil
		}
		switch r.Metric {
		case MetricErrorRate:
			v = p.ErrorRate
		case MetricP50:
			v = ms(p.P50Ns)
		case MetricP90:
			v = ms(p.P90Ns)
		case MetricP99:
			v = ms(p.P99Ns)
		case MetricMax:
			v = ms(p.MaxNs)
		case MetricMean:
			v = ms(p.MeanNs)
		}
	}
	v = math.Round(v*1e6) / 1e6
	return &v
}

func ms(ns int64) float64 { return float64(ns) / 1e6 }

// step is the state machine: the next state of a rule and the
// transitions taken, given the value of the window ending at end.
func step(r *Rule, st State, v *float64, end time.Time) (State, []Event) {
	if st.Status == "" {
		st.Status = StatusOK
	}
	next := st
	next.Value, next.EvaluatedAt = v, end
	var evs []Event
	move := func(to Status) {
		evs = append(evs, Event{RuleID: r.ID, RuleName: r.Name, From: next.Status, To: to, At: end, Value: v,
			Threshold: r.Threshold, FiringSince: next.FiringSince})
		next.Status = to
	}
	if !st.EvaluatedAt.IsZero() && !end.After(st.EvaluatedAt) {
		return st, nil // this data was evaluated already
	}
	breached := v != nil && r.breached(*v)
	switch {
	case breached:
		if next.Status == StatusOK || next.Status == StatusResolved {
			next.Since = end.Add(-time.Duration(r.Window))
			next.FiringSince = time.Time{}
			move(StatusPending)
		}
		if next.Status == StatusPending && end.Sub(next.Since) >= time.Duration(r.For) {
			next.FiringSince = end
			move(StatusFiring)
		}
	case next.Status == StatusPending:
		next.Since = time.Time{}
		move(StatusOK)
	case next.Status == StatusFiring:
		next.Since = time.Time{}
		move(StatusResolved)
	}
	return next, evs
}

// notify enqueues the notification of a transition; dup is true when the
// same notification was enqueued before.
func (e *Evaluator) notify(ctx context.Context, r *Rule, ev Event) (dup bool, err error) {
	n := Notification{RuleID: r.ID, RuleName: r.Name, Status: ev.To, Value: ev.Value, Threshold: r.Threshold,
		Metric: r.Metric, Op: r.Op, Scope: r.Scope, Service: r.Service, Operation: r.Operation, Peer: r.Peer,
		FiringSince: ev.FiringSince, At: ev.At, Webhook: r.Webhook}
	t, err := NewNotifyTask(n, asynq.Retention(e.cfg.NotifyRetention))
	if err != nil {
		return false, err
	}
	_, err = e.client.EnqueueContext(ctx, t)
	if errors.Is(err, asynq.ErrTaskIDConflict) {
		return true, nil
	}
	if err != nil {
		return false, fmt.Errorf("enqueue notification %s: %w", n.TaskID(), err)
	}
	return false, nil
}
