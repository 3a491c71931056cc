package alerting

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// BenchmarkEvaluate1000Rules evaluates 1,000 rules (10 per service over
// 100 services, windows up to 10m) against 10 minutes of metrics (5,000
// documents) in the engine: one read, then every rule, state and history
// write.
func BenchmarkEvaluate1000Rules(b *testing.B) {
	st := testenv.Store(b)
	rdb := testenv.Redis(b)
	ctx := context.Background()
	end := time.Now().UTC().Add(-2 * time.Minute).Truncate(time.Minute)
	var docs []store.Doc
	add := func(m schemas.Metric) {
		body, _ := json.Marshal(m)
		docs = append(docs, store.Doc{Index: st.Indices().Name(schemas.KindMetrics, m.Timestamp),
			ID: schemas.MetricID(m.Timestamp, m.Scope, m.Service, m.Operation, m.PeerService), Body: body})
	}
	durs := []int64{1e6, 5e6, 20e6, 100e6, 400e6}
	for s := 0; s < 100; s++ {
		svc := fmt.Sprintf("svc-%03d", s)
		for m := 1; m <= 10; m++ {
			at := end.Add(-time.Duration(m) * time.Minute)
			base := schemas.Metric{Timestamp: at, Service: svc, Count: 100, Errors: int64(s % 5), P50Ns: 20e6, P90Ns: 100e6,
				P99Ns: 400e6, MaxNs: 400e6, SumNs: 100 * 50e6, Sketch: schemas.SketchOf(durs)}
			for _, k := range []struct {
				scope   schemas.Scope
				op, pee string
			}{{schemas.ScopeService, "", ""}, {schemas.ScopeOperation, "GET /op0", ""}, {schemas.ScopeOperation, "GET /op1", ""},
				{schemas.ScopeOperation, "GET /op2", ""}, {schemas.ScopeEdge, "", fmt.Sprintf("svc-%03d", (s+1)%100)}} {
				d := base
				d.Scope, d.Operation, d.PeerService = k.scope, k.op, k.pee
				add(d)
			}
		}
	}
	if res, err := st.Bulk(ctx, docs, "true"); err != nil || len(res.Failed) > 0 {
		b.Fatal(err, res.Failed)
	}
	rules := NewRules(rdb)
	for s := 0; s < 100; s++ {
		svc := fmt.Sprintf("svc-%03d", s)
		for _, r := range []Rule{
			{Metric: MetricP99, Op: ">", Threshold: 300, For: Duration(5 * time.Minute)},
			{Metric: MetricP50, Op: ">", Threshold: 10},
			{Metric: MetricMax, Op: ">", Threshold: 1000},
			{Metric: MetricMean, Op: ">", Threshold: 40},
			{Metric: MetricRate, Op: "<", Threshold: 1, Window: Duration(5 * time.Minute)},
			{Metric: MetricCount, Op: "<", Threshold: 1, Window: Duration(10 * time.Minute)},
			{Metric: MetricErrorRate, Operation: "GET /op0", Op: ">", Threshold: 0.02},
			{Metric: MetricErrorRate, Operation: "GET /op1", Op: ">", Threshold: 0.02, Window: Duration(5 * time.Minute)},
			{Metric: MetricP90, Operation: "GET /op2", Op: ">", Threshold: 50},
			{Metric: MetricErrorRate, Peer: fmt.Sprintf("svc-%03d", (s+1)%100), Op: ">", Threshold: 0.02},
		} {
			r.Name, r.Service, r.Webhook = svc+" "+string(r.Metric), svc, ""
			if _, err := rules.Create(ctx, r); err != nil {
				b.Fatal(err)
			}
		}
	}
	e := NewEvaluator(EvaluatorConfig{Logger: slog.New(slog.NewTextHandler(io.Discard, nil))}, rdb, st)
	now := end.Add(2 * time.Minute)
	var rep Report
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		b.StopTimer()
		rdb.Del(ctx, keyState)
		b.StartTimer()
		var err error
		rep, err = e.Evaluate(ctx, now)
		if err != nil {
			b.Fatal(err)
		}
	}
	if rep.Rules != 1000 || rep.Metrics != 5000 {
		b.Fatalf("evaluated %d rules over %d documents", rep.Rules, rep.Metrics)
	}
	b.ReportMetric(float64(len(rep.Transitions)), "transitions")
	b.ReportMetric(b.Elapsed().Seconds()*1000/float64(b.N), "ms/evaluation")
}
