package api

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/api/internal/synth"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// benchTraces is how many traces the latency benchmark stores.
const benchTraces = 100000

// BenchmarkQueryLatency measures end-to-end latency (HTTP client to API to
// engine and back, on loopback) of trace search and trace fetch over
// 100,000 stored traces, with the Redis cache and without it, and reports
// p50 and p99 in milliseconds. The anchor is the 200 ms SLA.
//
// Loading the traces takes a minute. To keep them between runs, set
// DEEPTRACE_BENCH_PREFIX (e.g. dtbench-api): the traces are loaded once
// under that index prefix and left there.
//
//	go test -run '^$' -bench QueryLatency -benchtime 1x ./api/
func BenchmarkQueryLatency(b *testing.B) {
	st, traces := benchStore(b)
	rdb := testenv.Redis(b)
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	tokens := []TokenSpec{spec(b, "viewer", "viewer", viewerToken)}
	mk := func(ttl time.Duration) string {
		srv, err := New(Config{Tokens: tokens, CacheTTL: ttl, MaxRange: 48 * time.Hour}, Deps{Store: st, Redis: rdb, Logger: quiet})
		if err != nil {
			b.Fatal(err)
		}
		hs := httptest.NewServer(srv.Handler())
		b.Cleanup(hs.Close)
		return hs.URL
	}
	urls := map[string]string{"uncached": mk(-1), "cached": mk(10 * time.Minute)}

	rng := rand.New(rand.NewPCG(1, 2))
	first, last := traces[0].at, traces[len(traces)-1].at
	// 50 distinct queries of each kind; the cached runs cycle through them
	// after one warm-up pass, the uncached ones run them against a server
	// without cache.
	var searches, jaegerSearches, fetches []string
	for i := 0; i < 50; i++ {
		from := first.Add(time.Duration(rng.Int64N(int64(last.Sub(first) - time.Hour))))
		v := url.Values{"from": {from.Format(time.RFC3339)}, "to": {from.Add(time.Hour).Format(time.RFC3339)}, "limit": {"20"}}
		switch i % 3 {
		case 1:
			v.Set("service", synth.Services[i%len(synth.Services)])
		case 2:
			v.Set("service", "gateway")
			v.Set("min_duration", "300ms")
		}
		searches = append(searches, "/api/v1/traces?"+v.Encode())
		jv := url.Values{"service": {synth.Services[i%len(synth.Services)]}, "limit": {"20"},
			"start": {fmt.Sprint(from.UnixMicro())}, "end": {fmt.Sprint(from.Add(time.Hour).UnixMicro())}}
		jaegerSearches = append(jaegerSearches, "/api/traces?"+jv.Encode())
		fetches = append(fetches, "/api/v1/traces/"+traces[rng.IntN(len(traces))].id)
	}
	kinds := []struct {
		name  string
		paths []string
	}{{"search", searches}, {"jaeger-search", jaegerSearches}, {"fetch", fetches}}
	const perIteration = 200
	for _, k := range kinds {
		for _, mode := range []string{"uncached", "cached"} {
			b.Run(k.name+"/"+mode, func(b *testing.B) {
				base := urls[mode]
				if mode == "cached" {
					for _, p := range k.paths {
						benchGet(b, base+p)
					}
				}
				var lat []time.Duration
				b.ResetTimer()
				for it := 0; it < b.N; it++ {
					for i := 0; i < perIteration; i++ {
						t0 := time.Now()
						benchGet(b, base+k.paths[i%len(k.paths)])
						lat = append(lat, time.Since(t0))
					}
				}
				b.StopTimer()
				slices.Sort(lat)
				pct := func(p float64) float64 {
					return float64(lat[min(len(lat)-1, int(p*float64(len(lat))))].Microseconds()) / 1000
				}
				b.ReportMetric(pct(0.50), "p50_ms")
				b.ReportMetric(pct(0.99), "p99_ms")
			})
		}
	}
}

func benchGet(b *testing.B, u string) {
	req, _ := http.NewRequest("GET", u, nil)
	req.Header.Set("Authorization", "Bearer "+viewerToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		b.Fatal(err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("GET %s: %d", u, resp.StatusCode)
	}
}

type benchTrace struct {
	id string
	at time.Time
}

// benchStore returns a store holding benchTraces traces spread over the
// last 23 hours (3 to 11 spans each), loading them unless a kept prefix
// already has them.
func benchStore(b *testing.B) (*store.Store, []benchTrace) {
	b.Helper()
	ctx := context.Background()
	var st *store.Store
	prefix := os.Getenv("DEEPTRACE_BENCH_PREFIX")
	// Traces are placed relative to a day boundary so that a kept prefix
	// can be reused on a later day: they are re-made identically.
	end := time.Now().UTC().Truncate(time.Hour)
	if prefix != "" {
		var err error
		st, err = store.Open(store.Config{URLs: []string{testenv.ESURL()}, Engine: testenv.ESEngine(), Prefix: prefix, Compress: true})
		if err != nil {
			b.Fatal(err)
		}
		if err := st.EnsureTemplates(ctx, schemas.DefaultTemplateSettings); err != nil {
			b.Skipf("engine: %v", err)
		}
		if b, err := os.ReadFile(os.TempDir() + "/" + prefix + ".end"); err == nil {
			if t, err := time.Parse(time.RFC3339, string(b)); err == nil {
				end = t
			}
		}
	} else {
		st = testenv.Store(b)
	}
	step := 23 * time.Hour / benchTraces
	start := end.Add(-23 * time.Hour)
	out := make([]benchTrace, benchTraces)
	for i := range out {
		at := start.Add(time.Duration(i) * step)
		out[i] = benchTrace{at: at}
	}
	have, err := st.Count(ctx, store.Query{Kind: schemas.KindTraces, From: start.Add(-time.Hour), To: end.Add(time.Hour)})
	if err != nil {
		b.Fatal(err)
	}
	if have == benchTraces {
		for i := range out {
			out[i].id = synth.Trace(i, out[i].at, 3+i%9).TraceID
		}
		return st, out
	}
	t0 := time.Now()
	w, err := st.NewWriter(store.WriterConfig{Workers: 2, FlushBytes: 8 << 20})
	if err != nil {
		b.Fatal(err)
	}
	var bytes int64
	for i := range out {
		t := synth.Trace(i, out[i].at, 3+i%9)
		out[i].id = t.TraceID
		d, err := store.TraceDoc(st.Indices(), &t)
		if err != nil {
			b.Fatal(err)
		}
		bytes += int64(len(d.Body))
		if err := w.Add(ctx, d); err != nil {
			b.Fatal(err)
		}
	}
	if err := w.Close(ctx); err != nil {
		b.Fatal(err)
	}
	if s := w.Stats(); s.Indexed != benchTraces {
		b.Fatalf("indexed %d of %d traces: %+v", s.Indexed, benchTraces, s)
	}
	if err := st.Refresh(ctx, st.Indices().Pattern(schemas.KindTraces)); err != nil {
		b.Fatal(err)
	}
	b.Logf("loaded %d traces (%.0f MB of JSON) in %s", benchTraces, float64(bytes)/1e6, time.Since(t0).Round(time.Second))
	if prefix != "" {
		_ = os.WriteFile(os.TempDir()+"/"+prefix+".end", []byte(end.Format(time.RFC3339)), 0o644)
	}
	return st, out
}
