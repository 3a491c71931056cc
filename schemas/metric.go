package schemas

import (
	"crypto/sha256"
	"encoding/hex"
	"math"
	"sort"
	"strconv"
	"time"
)

// Scope says what a metric document aggregates.
type Scope string

// Metric scopes: the server spans of a service, of one operation of a
// service, and the calls of a caller service to a callee (an edge; the
// callee is another traced service, or protocol://ip:port when its end was
// not traced).
const (
	ScopeService   Scope = "service"
	ScopeOperation Scope = "operation"
	ScopeEdge      Scope = "edge"
)

// Metric is one minute of RED metrics (rate, errors, duration) of one
// scope, the document of the daily metrics indices. Percentiles are exact
// (nearest rank over the minute's durations); Sketch re-aggregates
// durations across minutes within SketchAccuracy.
type Metric struct {
	// Timestamp is the minute's start.
	Timestamp   time.Time `json:"timestamp"`
	Scope       Scope     `json:"scope"`
	Service     string    `json:"service"`
	Operation   string    `json:"operation,omitempty"`
	PeerService string    `json:"peer_service,omitempty"`
	Count       int64     `json:"count"`
	Errors      int64     `json:"errors"`
	P50Ns       int64     `json:"p50_ns"`
	P90Ns       int64     `json:"p90_ns"`
	P99Ns       int64     `json:"p99_ns"`
	MaxNs       int64     `json:"max_ns"`
	SumNs       int64     `json:"sum_ns"`
	Sketch      Sketch    `json:"sketch"`
	// RolledUpAt is when the rollup read the minute's spans.
	RolledUpAt time.Time `json:"rolled_up_at"`
}

// MetricID derives a metric document's id from its minute and key, so a
// re-run of a minute's rollup overwrites its documents.
func MetricID(minute time.Time, scope Scope, service, operation, peer string) string {
	h := sha256.New()
	h.Write([]byte(strconv.FormatInt(minute.UnixNano(), 10)))
	for _, s := range []string{string(scope), service, operation, peer} {
		h.Write([]byte{0})
		h.Write([]byte(s))
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// SketchAccuracy is the relative error of a quantile read from a Sketch:
// the value returned is within ±1% of a duration of the right rank.
const SketchAccuracy = 0.01

var (
	sketchGamma    = (1 + SketchAccuracy) / (1 - SketchAccuracy)
	sketchLogGamma = math.Log(sketchGamma)
)

// Sketch is a log-bucketed histogram of durations (DDSketch's mapping):
// bucket k holds the durations in (γ^(k-1), γ^k], γ = (1+α)/(1-α). Merging
// is adding counts, so minutes re-aggregate into any step. K is sorted.
type Sketch struct {
	K []int32 `json:"k"`
	C []int64 `json:"c"`
}

// sketchKey is the bucket of a duration; durations under 1ns go to 0.
func sketchKey(ns int64) int32 {
	if ns <= 1 {
		return 0
	}
	return int32(math.Ceil(math.Log(float64(ns)) / sketchLogGamma))
}

// SketchOf builds the sketch of sorted durations.
func SketchOf(sorted []int64) Sketch {
	var s Sketch
	for _, v := range sorted {
		k := sketchKey(v)
		if n := len(s.K); n > 0 && s.K[n-1] == k {
			s.C[n-1]++
			continue
		}
		s.K = append(s.K, k)
		s.C = append(s.C, 1)
	}
	return s
}

// Merge adds o's counts into s.
func (s *Sketch) Merge(o Sketch) {
	if len(o.K) == 0 {
		return
	}
	m := make(map[int32]int64, len(s.K)+len(o.K))
	for i, k := range s.K {
		m[k] += s.C[i]
	}
	for i, k := range o.K {
		m[k] += o.C[i]
	}
	s.K, s.C = s.K[:0], s.C[:0]
	for k := range m {
		s.K = append(s.K, k)
	}
	sort.Slice(s.K, func(i, j int) bool { return s.K[i] < s.K[j] })
	for _, k := range s.K {
		s.C = append(s.C, m[k])
	}
}

// Quantile returns the nearest-rank q-quantile (0 < q <= 1) within
// SketchAccuracy, or 0 for an empty sketch.
func (s Sketch) Quantile(q float64) int64 {
	var n int64
	for _, c := range s.C {
		n += c
	}
	if n == 0 {
		return 0
	}
	rank := max(int64(math.Ceil(q*float64(n))), 1)
	var seen int64
	for i, c := range s.C {
		seen += c
		if seen >= rank {
			if s.K[i] == 0 {
				return 0
			}
			// The bucket's midpoint in relative terms: 2γ^k/(γ+1).
			return int64(math.Round(2 * math.Pow(sketchGamma, float64(s.K[i])) / (sketchGamma + 1)))
		}
	}
	return 0
}

// Percentile is the nearest-rank percentile (0 < p <= 1) of sorted values.
func Percentile(sorted []int64, p float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(p*float64(len(sorted)))) - 1
	return sorted[max(0, min(rank, len(sorted)-1))]
}
