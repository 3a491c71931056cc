package export_test

import (
	"context"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/export"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/store"
)

// BenchmarkExport measures spans per second from the first Add until Close
// returns with every span indexed, through the exporter's defaults (1000
// spans per bulk request, 2 concurrent requests, gzip), and with every
// batch going through the spool (engine unreachable, then back).
func BenchmarkExport(b *testing.B) {
	const n = 50000
	st := testenv.Store(b)
	start := time.Now().UTC().Add(-30 * time.Minute).Truncate(time.Minute)
	spans := spansAt(start, 0, n)
	// direct: batches wait for the engine (never the spool): the bulk
	// path's throughput. burst: the agent's settings, 50,000 spans added
	// at once; what the engine cannot take at once goes through the spool.
	for _, c := range []struct {
		name string
		cfg  export.Config
	}{
		{"direct", export.Config{QueueSize: 1 << 16, AddTimeout: time.Minute, SlowAfter: time.Minute}},
		{"burst", export.Config{QueueSize: 1 << 16, AddTimeout: 250 * time.Millisecond}},
	} {
		b.Run(c.name, func(b *testing.B) {
			spooled := uint64(0)
			for b.Loop() {
				cfg := c.cfg
				cfg.Host, cfg.SpoolDir = "bench", b.TempDir()
				e, err := export.New(cfg, st)
				if err != nil {
					b.Fatal(err)
				}
				stop := run(nil, e)
				for _, s := range spans {
					e.Add(s)
				}
				if err := e.Close(context.Background()); err != nil {
					b.Fatal(err)
				}
				stop()
				s := e.Stats()
				if s.Written != n || s.DroppedTotal() != 0 {
					b.Fatalf("stats %+v", s)
				}
				spooled += s.Spooled
			}
			b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "spans/s")
			b.ReportMetric(float64(spooled)/float64(n*b.N), "spooled/span")
		})
	}
	b.Run("spool-replay", func(b *testing.B) {
		dead, _ := store.Open(store.Config{URLs: []string{"http://127.0.0.1:1"}, Engine: store.EngineOpenSearch, Prefix: st.Indices().Prefix, Timeout: time.Second})
		var spoolTook, replayTook time.Duration
		for b.Loop() {
			dir := b.TempDir()
			t0 := time.Now()
			e1, _ := export.New(export.Config{Host: "bench", SpoolDir: dir, QueueSize: 1 << 16, AddTimeout: 250 * time.Millisecond, RetryMin: time.Hour, RetryMax: time.Hour}, dead)
			stop := run(nil, e1)
			for _, s := range spans {
				e1.Add(s)
			}
			for e1.Stats().SpoolSpans < n {
				time.Sleep(time.Millisecond)
			}
			spoolTook += time.Since(t0)
			ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
			e1.Close(ctx)
			cancel()
			stop()
			if s := e1.Stats(); s.SpoolSpans != n {
				b.Fatalf("spooled %+v", s)
			}
			t1 := time.Now()
			e2, _ := export.New(export.Config{Host: "bench", SpoolDir: dir}, st)
			stop2 := run(nil, e2)
			if err := e2.Close(context.Background()); err != nil {
				b.Fatal(err)
			}
			stop2()
			replayTook += time.Since(t1)
			if s := e2.Stats(); s.Replayed != n {
				b.Fatalf("replayed %+v", s)
			}
		}
		b.ReportMetric(float64(n*b.N)/spoolTook.Seconds(), "spool-spans/s")
		b.ReportMetric(float64(n*b.N)/replayTook.Seconds(), "replay-spans/s")
	})
}
