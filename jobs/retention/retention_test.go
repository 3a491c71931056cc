package retention_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/jobs/retention"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

func createIndex(t *testing.T, s *store.Store, name string) {
	t.Helper()
	es := s.Client()
	res, err := es.Indices.Create(name, es.Indices.Create.WithContext(context.Background()))
	if err != nil {
		t.Fatalf("create %s: %v", name, err)
	}
	defer res.Body.Close()
	if res.IsError() {
		t.Fatalf("create %s: %s", name, res.String())
	}
}

func names(t *testing.T, s *store.Store) []string {
	t.Helper()
	var out []string
	for _, k := range schemas.Kinds {
		infos, err := s.ListIndices(context.Background(), s.Indices().Pattern(k))
		if err != nil {
			t.Fatal(err)
		}
		for _, i := range infos {
			out = append(out, i.Name)
		}
	}
	slices.Sort(out)
	return out
}

// Indices of several ages and kinds on the real engine: retention deletes
// exactly those whose whole shard ended before now-age, leaves kinds kept
// forever alone, and never touches an index that only looks like ours.
func TestRetentionOnTheEngine(t *testing.T) {
	s := testenv.Store(t)
	ix := s.Indices()
	now := time.Now().UTC()
	h := time.Hour
	day := 24 * h

	expired := []string{
		ix.Name(schemas.KindSpans, now.Add(-100*h)),
		ix.Name(schemas.KindSpans, now.Add(-73*h)), // its hour ended before now-72h
		ix.Name(schemas.KindTraces, now.Add(-40*day)),
		ix.Name(schemas.KindAudit, now.Add(-400*day)),
	}
	kept := []string{
		ix.Name(schemas.KindSpans, now.Add(-71*h)),
		ix.Name(schemas.KindSpans, now),
		ix.Name(schemas.KindTraces, now.Add(-29*day)),
		ix.Name(schemas.KindTraces, now),
		ix.Name(schemas.KindMetrics, now.Add(-1000*day)), // metrics are kept forever here
		ix.Name(schemas.KindAudit, now.Add(-300*day)),
	}
	// Names inside our patterns that are not ours: a wrong layout, a
	// suffix, and the indices of another prefix that starts with ours.
	foreign := []string{
		ix.Base(schemas.KindSpans) + "2020.01.01",
		ix.Base(schemas.KindSpans) + "2020.01.01.00-restored",
		schemas.Indices{Prefix: ix.Prefix + "-spans"}.Name(schemas.KindSpans, now.Add(-1000*day)),
		ix.Base(schemas.KindTraces) + "archive",
	}
	for _, n := range slices.Concat(expired, kept, foreign) {
		createIndex(t, s, n)
	}
	policy := retention.Policy{
		schemas.KindSpans:  72 * h,
		schemas.KindTraces: 30 * day,
		schemas.KindAudit:  365 * day,
	}
	reg := prometheus.NewRegistry()
	r := &retention.Retention{Engine: s, Policy: policy, DryRun: true, Metrics: retention.NewMetrics(reg), Now: func() time.Time { return now }}
	ctx := context.Background()

	rep, err := r.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var would []string
	for _, k := range rep.Kinds {
		would = append(would, k.Deleted...)
	}
	slices.Sort(would)
	slices.Sort(expired)
	if !slices.Equal(would, expired) {
		t.Fatalf("dry run would delete\n %v\nwant\n %v", would, expired)
	}
	all := slices.Sorted(slices.Values(slices.Concat(expired, kept, foreign)))
	if got := names(t, s); !slices.Equal(got, all) {
		t.Fatalf("dry run deleted something:\n%v\nwant\n%v", got, all)
	}

	r.DryRun = false
	rep, err = r.Run(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Deleted() != len(expired) {
		t.Fatalf("deleted %d, want %d: %+v", rep.Deleted(), len(expired), rep)
	}
	want := slices.Sorted(slices.Values(slices.Concat(kept, foreign)))
	if got := names(t, s); !slices.Equal(got, want) {
		t.Fatalf("after retention:\n%v\nwant\n%v", got, want)
	}
	for _, k := range rep.Kinds {
		if k.Kind == schemas.KindMetrics && (k.Age != 0 || len(k.Deleted) != 0) {
			t.Fatalf("metrics were not kept forever: %+v", k)
		}
	}
	if got := counter(t, r.Metrics.Deleted.WithLabelValues("spans")); got != 2 {
		t.Errorf("deleted spans counter %v, want 2", got)
	}
	if got := counter(t, r.Metrics.Runs.WithLabelValues("ok")); got != 2 {
		t.Errorf("ok runs %v, want 2", got)
	}

	// A second pass finds nothing more to do.
	if rep, err = r.Run(ctx); err != nil || rep.Deleted() != 0 {
		t.Fatalf("second pass: deleted %d, err %v", rep.Deleted(), err)
	}
}

func TestPolicyValidateNamesTheSetting(t *testing.T) {
	cases := []struct {
		p    retention.Policy
		want string
	}{
		{retention.DefaultPolicy, ""},
		{retention.Policy{schemas.KindSpans: 0}, ""},
		{retention.Policy{schemas.KindSpans: 30 * time.Minute}, "spans-age 30m0s"},
		{retention.Policy{schemas.KindTraces: -time.Hour}, "traces-age -1h0m0s"},
		{retention.Policy{"logs": time.Hour}, `unknown index kind "logs"`},
	}
	for _, c := range cases {
		err := c.p.Validate()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%v: %v, want %q", c.p, err, c.want)
		}
	}
}

// fakeEngine serves a fixed listing and records deletions; it stands in
// for the engine only where the real one cannot be made to fail on cue.
type fakeEngine struct {
	names   []string
	deletes [][]string
	failAt  int
}

func (f *fakeEngine) Indices() schemas.Indices { return schemas.Indices{Prefix: "p"} }
func (f *fakeEngine) ListIndices(_ context.Context, pattern string) ([]store.IndexInfo, error) {
	var out []store.IndexInfo
	for _, n := range f.names {
		if strings.HasPrefix(n, strings.TrimSuffix(pattern, "*")) {
			out = append(out, store.IndexInfo{Name: n})
		}
	}
	return out, nil
}
func (f *fakeEngine) DeleteIndices(_ context.Context, names ...string) error {
	if len(f.deletes) == f.failAt {
		return errors.New("engine said no")
	}
	f.deletes = append(f.deletes, names)
	return nil
}

// Deletions go in bounded batches, and a failed batch is reported without
// claiming the indices it held.
func TestBatchesAndPartialFailure(t *testing.T) {
	now := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	ix := schemas.Indices{Prefix: "p"}
	f := &fakeEngine{failAt: 2}
	for i := range 130 {
		f.names = append(f.names, ix.Name(schemas.KindSpans, now.Add(-time.Duration(200+i)*time.Hour)))
	}
	r := &retention.Retention{Engine: f, Policy: retention.Policy{schemas.KindSpans: 72 * time.Hour}, Now: func() time.Time { return now }}
	rep, err := r.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "retention spans: engine said no") {
		t.Fatalf("error %v", err)
	}
	if len(f.deletes) != 2 || len(f.deletes[0]) != 50 || len(f.deletes[1]) != 50 {
		t.Fatalf("batches %d", len(f.deletes))
	}
	k := rep.Kinds[0]
	if len(k.Deleted) != 100 || k.Kept != 30 {
		t.Fatalf("report deleted %d kept %d", len(k.Deleted), k.Kept)
	}
	if !slices.IsSorted(k.Deleted) || k.Deleted[0] != f.names[129] {
		t.Fatalf("not oldest first: %s", fmt.Sprint(k.Deleted[:2]))
	}
}

func counter(t *testing.T, c prometheus.Counter) float64 {
	t.Helper()
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		t.Fatal(err)
	}
	return m.GetCounter().GetValue()
}
