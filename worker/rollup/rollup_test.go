package rollup_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// span builds a span of service starting at at with a duration of d.
func span(service string, role schemas.Role, op string, at time.Time, d time.Duration, failed bool, reqSeq uint32) schemas.Span {
	s := schemas.Span{
		Role: role, Protocol: schemas.ProtocolHTTP1, Operation: op, Error: failed,
		StartNs: at.UnixNano(), EndNs: at.Add(d).UnixNano(), Service: service, Host: "h1",
		Conn:      schemas.Conn{ClientIP: "10.0.0.1", ClientPort: uint16(10000 + reqSeq%50000), ServerIP: "10.0.0.2", ServerPort: 8080},
		ReqTCPSeq: reqSeq, RespTCPSeq: reqSeq + 7, IngestedAt: time.Now().UTC(),
	}
	if role == schemas.RoleClient && op == "GET" {
		s.Protocol, s.ServerIP, s.ServerPort = schemas.ProtocolRedis, "10.0.0.9", 6379
	}
	s.SpanID = schemas.SpanID(s.Host+service, s.Conn, 0, reqSeq, role)
	s.Finish()
	return s
}

func write(t testing.TB, st *store.Store, spans []schemas.Span) {
	t.Helper()
	var docs []store.Doc
	for i := range spans {
		d, err := store.SpanDoc(st.Indices(), &spans[i])
		if err != nil {
			t.Fatal(err)
		}
		docs = append(docs, d)
	}
	res, err := st.Bulk(context.Background(), docs, "true")
	if err != nil || len(res.Failed) > 0 {
		t.Fatalf("write spans: %v %v", err, res.Failed)
	}
}

// recorded is the span set whose metrics are computed by hand below:
// in one minute, front serves GET /a 100 times (1..100 ms, every 10th an
// error) and GET /b 10 times (5 ms); for each /a it calls back (whose
// server span is traced: 2 ms) and for each /b Redis (untraced, 1 ms).
func recorded(minute time.Time) []schemas.Span {
	var spans []schemas.Span
	seq := uint32(1000)
	for i := 1; i <= 100; i++ {
		at := minute.Add(time.Duration(i) * 500 * time.Millisecond)
		spans = append(spans, span("front", schemas.RoleServer, "GET /a", at, time.Duration(i)*time.Millisecond, i%10 == 0, seq))
		seq += 100
		spans = append(spans, span("front", schemas.RoleClient, "GET /x", at.Add(time.Microsecond), 3*time.Millisecond, false, seq))
		spans = append(spans, span("back", schemas.RoleServer, "GET /x", at.Add(2*time.Microsecond), 2*time.Millisecond, false, seq))
		seq += 100
	}
	for i := 0; i < 10; i++ {
		at := minute.Add(time.Duration(i) * time.Second)
		spans = append(spans, span("front", schemas.RoleServer, "GET /b", at, 5*time.Millisecond, false, seq))
		seq += 100
		spans = append(spans, span("front", schemas.RoleClient, "GET", at, time.Millisecond, false, seq))
		seq += 100
	}
	return spans
}

func rollAll(t *testing.T, r *rollup.Roller, minute time.Time, shards int) {
	t.Helper()
	for s := 0; s < shards; s++ {
		if _, err := r.Run(context.Background(), rollup.Payload{Minute: minute, Shard: s, Shards: shards}); err != nil {
			t.Fatal(err)
		}
	}
}

func metricsOf(t *testing.T, st *store.Store, minute time.Time) map[string]schemas.Metric {
	t.Helper()
	ctx := context.Background()
	if err := st.Refresh(ctx, st.Indices().Pattern(schemas.KindMetrics)); err != nil {
		t.Fatal(err)
	}
	ms, err := rollup.Read(ctx, st, minute, minute.Add(time.Minute), rollup.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]schemas.Metric{}
	for _, m := range ms {
		k := fmt.Sprintf("%s|%s|%s|%s", m.Scope, m.Service, m.Operation, m.PeerService)
		if _, dup := out[k]; dup {
			t.Fatalf("two documents for %s", k)
		}
		out[k] = m
	}
	return out
}

type want struct {
	count, errors      int64
	p50, p90, p99, max time.Duration
}

func check(t *testing.T, got map[string]schemas.Metric, k string, w want) {
	t.Helper()
	m, ok := got[k]
	if !ok {
		t.Fatalf("no metric %s; have %v", k, keys(got))
	}
	g := want{m.Count, m.Errors, time.Duration(m.P50Ns), time.Duration(m.P90Ns), time.Duration(m.P99Ns), time.Duration(m.MaxNs)}
	if g != w {
		t.Errorf("%s: got %+v, want %+v", k, g, w)
	}
}

func keys(m map[string]schemas.Metric) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestRollupByHandLateAndRerun(t *testing.T) {
	st := testenv.Store(t)
	rdb := testenv.Redis(t)
	ctx := context.Background()
	minute := time.Now().UTC().Add(-5 * time.Minute).Truncate(time.Minute)
	write(t, st, recorded(minute))
	r := rollup.New(rollup.Config{}, st, rdb)
	rollAll(t, r, minute, 2)

	ms := time.Millisecond
	hand := func(got map[string]schemas.Metric, aCount, aErr int64, aMax time.Duration, aP99 time.Duration) {
		t.Helper()
		check(t, got, "service|front||", want{aCount + 10, aErr, 45 * ms, 89 * ms, aP99, aMax})
		check(t, got, "operation|front|GET /a|", want{aCount, aErr, 50 * ms, 90 * ms, aP99, aMax})
		check(t, got, "operation|front|GET /b|", want{10, 0, 5 * ms, 5 * ms, 5 * ms, 5 * ms})
		check(t, got, "service|back||", want{100, 0, 2 * ms, 2 * ms, 2 * ms, 2 * ms})
		check(t, got, "edge|front||back", want{100, 0, 3 * ms, 3 * ms, 3 * ms, 3 * ms})
		check(t, got, "edge|front||redis://10.0.0.9:6379", want{10, 0, ms, ms, ms, ms})
		if len(got) != 7 {
			t.Errorf("%d documents, want 7: %v", len(got), keys(got))
		}
	}
	// By hand: front serves 110 requests (100 of /a at 1..100 ms, 10 of /b
	// at 5 ms). Sorted, ranks 1..5 hold 1..4 ms then 5 ms ×11 at ranks
	// 5..15, then 6..100 ms at ranks 16..110: nearest-rank p50 is rank 55
	// → 45 ms, p90 rank 99 → 89 ms, p99 rank 109 → 99 ms.
	got := metricsOf(t, st, minute)
	hand(got, 100, 10, 100*ms, 99*ms)
	if e := got["operation|front|GET /a|"]; e.Errors*100/e.Count != 10 {
		t.Errorf("error rate of GET /a: %d/%d, want 10%%", e.Errors, e.Count)
	}

	// A re-run overwrites: same documents, same values.
	rollAll(t, r, minute, 2)
	hand(metricsOf(t, st, minute), 100, 10, 100*ms, 99*ms)

	// A late span (an error of 500 ms) lands after the rollup: the
	// scheduler re-opens the minute, and the re-run corrects it.
	sch, err := rollup.NewScheduler(rollup.SchedulerConfig{Shards: 2, LateSlack: time.Millisecond}, rdb, st)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := sch.Tick(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range rep.Reopened {
		if m.Equal(minute) {
			t.Fatalf("minute re-opened before any late span: %+v", rep)
		}
	}
	time.Sleep(5 * time.Millisecond)
	late := span("front", schemas.RoleServer, "GET /a", minute.Add(59*time.Second), 500*ms, true, 999999)
	late.IngestedAt = time.Now().UTC()
	write(t, st, []schemas.Span{late})
	rep, err = sch.Tick(ctx, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	reopened := false
	for _, m := range rep.Reopened {
		reopened = reopened || m.Equal(minute)
	}
	if !reopened {
		t.Fatalf("late span did not re-open its minute: %+v", rep)
	}
	rollAll(t, r, minute, 2)
	// 101 requests on /a now: p99 is rank 100 → 100 ms, max 500 ms.
	got = metricsOf(t, st, minute)
	check(t, got, "operation|front|GET /a|", want{101, 11, 51 * ms, 91 * ms, 100 * ms, 500 * ms})
	check(t, got, "service|front||", want{111, 11, 46 * ms, 90 * ms, 100 * ms, 500 * ms})

	// The callee of the Redis calls turns out to be traced (its agent's
	// spans arrive late): the edge moves to it and the old one goes.
	var callee []schemas.Span
	for _, sp := range recorded(minute) {
		if sp.Role == schemas.RoleClient && sp.Operation == "GET" {
			sv := span("cache", schemas.RoleServer, "GET", sp.Start(), 500*time.Microsecond, false, sp.ReqTCPSeq)
			callee = append(callee, sv)
		}
	}
	write(t, st, callee)
	rollAll(t, r, minute, 2)
	got = metricsOf(t, st, minute)
	check(t, got, "edge|front||cache", want{10, 0, ms, ms, ms, ms})
	if _, ok := got["edge|front||redis://10.0.0.9:6379"]; ok {
		t.Errorf("edge to the untraced address kept after its callee was found: %v", keys(got))
	}
}

func TestSketchAccuracy(t *testing.T) {
	var vals []int64
	for i := int64(1); i <= 10000; i++ {
		vals = append(vals, i*i*37%5_000_000_000+1000)
	}
	sorted := append([]int64(nil), vals...)
	slicesSort(sorted)
	// Split in minutes, merge back.
	var sk schemas.Sketch
	for i := 0; i < 10; i++ {
		part := append([]int64(nil), vals[i*1000:(i+1)*1000]...)
		slicesSort(part)
		sk.Merge(schemas.SketchOf(part))
	}
	for _, q := range []float64{0.5, 0.9, 0.99} {
		exact := schemas.Percentile(sorted, q)
		got := sk.Quantile(q)
		if rel := float64(got-exact) / float64(exact); rel > schemas.SketchAccuracy || rel < -schemas.SketchAccuracy {
			t.Errorf("q%.2f: sketch %d, exact %d, error %.4f above %.2f", q, got, exact, rel, schemas.SketchAccuracy)
		}
	}
}

// A span an agent kept at a sampling rate below 1 counts for the requests
// it stands for: gateway's spans kept at 1/4 give four times their count,
// errors and sum, with the kept spans' percentiles; a service kept whole
// counts as it is.
func TestSampledSpansCountForWhatTheyStandFor(t *testing.T) {
	minute := time.Date(2026, 3, 4, 10, 0, 0, 0, time.UTC)
	var spans []schemas.Span
	for i := range 10 {
		at := minute.Add(time.Duration(i) * time.Second)
		d := time.Duration(i+1) * time.Millisecond
		gw := schemas.Span{SpanID: fmt.Sprintf("s%d", i), Role: schemas.RoleServer, Service: "gateway", Operation: "GET /",
			StartNs: at.UnixNano(), EndNs: at.Add(d).UnixNano(), Error: i < 2, SampleRate: 0.25}
		be := schemas.Span{SpanID: fmt.Sprintf("b%d", i), Role: schemas.RoleServer, Service: "backend", Operation: "GET /b",
			StartNs: at.UnixNano(), EndNs: at.Add(d).UnixNano()}
		gw.Finish()
		be.Finish()
		spans = append(spans, gw, be)
	}
	got := map[string]schemas.Metric{}
	for _, m := range rollup.Compute(minute, spans, nil, minute) {
		got[string(m.Scope)+"/"+m.Service+"/"+m.Operation] = m
	}
	const sum = 55 * time.Millisecond // 1+2+…+10 ms
	for _, c := range []struct {
		key           string
		count, errors int64
		sum           time.Duration
	}{
		{"service/gateway/", 40, 8, 4 * sum},
		{"operation/gateway/GET /", 40, 8, 4 * sum},
		{"service/backend/", 10, 0, sum},
	} {
		m, ok := got[c.key]
		if !ok {
			t.Fatalf("no metric %s; have %v", c.key, keys(got))
		}
		if m.Count != c.count || m.Errors != c.errors || time.Duration(m.SumNs) != c.sum {
			t.Errorf("%s: count %d errors %d sum %s, want %d %d %s", c.key, m.Count, m.Errors, time.Duration(m.SumNs), c.count, c.errors, c.sum)
		}
		if m.P50Ns != int64(5*time.Millisecond) || m.MaxNs != int64(10*time.Millisecond) {
			t.Errorf("%s: p50 %s max %s, want the kept spans' 5ms and 10ms", c.key, time.Duration(m.P50Ns), time.Duration(m.MaxNs))
		}
	}
}
