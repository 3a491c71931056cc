// Package alerting holds alert rules over the RED metrics the rollup
// writes, evaluates them on a schedule, moves each rule through the states
// ok → pending → firing → resolved with a history of the transitions, and
// notifies webhooks through asynq tasks whose ids derive from (rule,
// firing), so a firing is notified once whatever retries, restarts or
// second evaluators happen.
package alerting

import (
	"encoding/json"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
)

// Metric names what a rule watches.
type Metric string

// Metrics a rule can watch. Latencies are compared in milliseconds, Rate
// in requests per second, ErrorRate as a fraction (0.02 is 2%), Count as
// requests in the window.
const (
	MetricP50       Metric = "p50"
	MetricP90       Metric = "p90"
	MetricP99       Metric = "p99"
	MetricMax       Metric = "max"
	MetricMean      Metric = "mean"
	MetricRate      Metric = "rate"
	MetricErrorRate Metric = "error_rate"
	MetricCount     Metric = "count"
)

var metrics = map[Metric]bool{MetricP50: true, MetricP90: true, MetricP99: true, MetricMax: true, MetricMean: true,
	MetricRate: true, MetricErrorRate: true, MetricCount: true}

// Duration is a time.Duration written in JSON as "5m".
type Duration time.Duration

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// UnmarshalJSON reads "5m" (or a number of seconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var n float64
		if err2 := json.Unmarshal(b, &n); err2 != nil {
			return fmt.Errorf("duration: want a string such as \"5m\"")
		}
		*d = Duration(n * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("duration %q: %v", s, err)
	}
	*d = Duration(v)
	return nil
}

// Rule is one alert rule: "Metric of Scope (Service, Operation, Peer)
// over Window is Op Threshold, for For".
type Rule struct {
	ID          string        `json:"id"`
	Name        string        `json:"name"`
	Description string        `json:"description,omitempty"`
	Metric      Metric        `json:"metric"`
	Scope       schemas.Scope `json:"scope"`
	Service     string        `json:"service"`
	Operation   string        `json:"operation,omitempty"`
	Peer        string        `json:"peer,omitempty"`
	Op          string        `json:"op"`
	Threshold   float64       `json:"threshold"`
	// Window is the metrics aggregated for one evaluation (1m).
	Window Duration `json:"window,omitempty"`
	// For is how long the condition must hold before the rule fires (0:
	// at once).
	For Duration `json:"for,omitempty"`
	// Webhook receives the notifications (an http or https URL).
	Webhook  string `json:"webhook,omitempty"`
	Disabled bool   `json:"disabled,omitempty"`

	Version   int64     `json:"version"`
	CreatedAt time.Time `json:"created_at,omitzero"`
	UpdatedAt time.Time `json:"updated_at,omitzero"`
}

// Validate fills defaults and checks the rule; an error names the field.
func (r *Rule) Validate() error {
	if r.Window == 0 {
		r.Window = Duration(time.Minute)
	}
	if r.Scope == "" {
		r.Scope = schemas.ScopeService
		if r.Operation != "" {
			r.Scope = schemas.ScopeOperation
		}
		if r.Peer != "" {
			r.Scope = schemas.ScopeEdge
		}
	}
	r.Name = strings.TrimSpace(r.Name)
	switch {
	case r.Name == "" || len(r.Name) > 200:
		return fmt.Errorf("name: required, at most 200 characters")
	case !metrics[r.Metric]:
		return fmt.Errorf("metric %q: want one of p50, p90, p99, max, mean, rate, error_rate, count", r.Metric)
	case r.Scope != schemas.ScopeService && r.Scope != schemas.ScopeOperation && r.Scope != schemas.ScopeEdge:
		return fmt.Errorf("scope %q: want service, operation or edge", r.Scope)
	case r.Service == "":
		return fmt.Errorf("service: required (the caller, for an edge)")
	case r.Scope == schemas.ScopeOperation && r.Operation == "":
		return fmt.Errorf("operation: required for scope operation")
	case r.Scope == schemas.ScopeEdge && r.Peer == "":
		return fmt.Errorf("peer: required for scope edge (the callee service)")
	case r.Scope != schemas.ScopeOperation && r.Operation != "":
		return fmt.Errorf("operation: only for scope operation")
	case r.Scope != schemas.ScopeEdge && r.Peer != "":
		return fmt.Errorf("peer: only for scope edge")
	case r.Op != ">" && r.Op != ">=" && r.Op != "<" && r.Op != "<=":
		return fmt.Errorf("op %q: want >, >=, < or <=", r.Op)
	case r.Threshold < 0:
		return fmt.Errorf("threshold %v: must not be negative", r.Threshold)
	case r.Metric == MetricErrorRate && r.Threshold > 1:
		return fmt.Errorf("threshold %v: an error rate is a fraction in 0..1 (0.02 is 2%%)", r.Threshold)
	case time.Duration(r.Window) < time.Minute || time.Duration(r.Window) > 24*time.Hour || time.Duration(r.Window)%time.Minute != 0:
		return fmt.Errorf("window %s: want whole minutes, 1m..24h", time.Duration(r.Window))
	case r.For < 0 || time.Duration(r.For) > 24*time.Hour:
		return fmt.Errorf("for %s: want 0..24h", time.Duration(r.For))
	}
	if r.Webhook != "" {
		u, err := url.Parse(r.Webhook)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
			return fmt.Errorf("webhook %q: want an http:// or https:// URL", r.Webhook)
		}
	}
	return nil
}

// breached reports whether value meets the rule's condition.
func (r *Rule) breached(v float64) bool {
	switch r.Op {
	case ">":
		return v > r.Threshold
	case ">=":
		return v >= r.Threshold
	case "<":
		return v < r.Threshold
	case "<=":
		return v <= r.Threshold
	}
	return false
}
