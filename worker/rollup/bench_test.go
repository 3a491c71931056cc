package rollup_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// benchMinute is one minute of 100 services: each serves 3 operations,
// 200 requests in all, and makes 100 calls to the next service.
func benchMinute(minute time.Time) []schemas.Span {
	var spans []schemas.Span
	seq := uint32(minute.Unix()/60) * 1_000_000
	for s := 0; s < 100; s++ {
		svc := fmt.Sprintf("svc-%03d", s)
		callee := fmt.Sprintf("svc-%03d", (s+1)%100)
		for i := 0; i < 200; i++ {
			at := minute.Add(time.Duration(i) * 290 * time.Millisecond)
			d := time.Duration(1+(i*7919+s)%500) * time.Millisecond
			seq += 10
			spans = append(spans, span(svc, schemas.RoleServer, fmt.Sprintf("GET /op%d", i%3), at, d, i%50 == 0, seq))
			if i%2 == 0 {
				seq += 10
				spans = append(spans, span(svc, schemas.RoleClient, "GET /x", at, d/2, false, seq))
				spans = append(spans, span(callee, schemas.RoleServer, "GET /x", at, d/3, false, seq))
			}
		}
	}
	return spans
}

// BenchmarkCompute is the in-memory part of a minute's rollup: 100
// services, 40,000 spans.
func BenchmarkCompute(b *testing.B) {
	minute := time.Now().UTC().Truncate(time.Minute)
	spans := benchMinute(minute)
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		rollup.Compute(minute, spans, nil, minute)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "minutes/s")
	b.ReportMetric(float64(len(spans)), "spans/minute")
}

// BenchmarkRollupMinute rolls up whole minutes of 100 services (40,000
// spans each) against the engine, 4 shards per minute run at once: read the spans,
// join client and server ends, write the documents.
func BenchmarkRollupMinute(b *testing.B) {
	st := testenv.Store(b)
	const minutes = 3
	base := time.Now().UTC().Add(-10 * time.Minute).Truncate(time.Minute)
	for m := 0; m < minutes; m++ {
		write(b, st, benchMinute(base.Add(time.Duration(m)*time.Minute)))
	}
	r := rollup.New(rollup.Config{}, st, nil)
	ctx := context.Background()
	docs := 0
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		minute := base.Add(time.Duration(i%minutes) * time.Minute)
		// The 4 shards run at once, as on a worker of concurrency 4.
		var wg sync.WaitGroup
		var mu sync.Mutex
		for s := 0; s < 4; s++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				res, err := r.Run(ctx, rollup.Payload{Minute: minute, Shard: s, Shards: 4})
				if err != nil {
					b.Error(err)
				}
				mu.Lock()
				docs += res.Docs
				mu.Unlock()
			}()
		}
		wg.Wait()
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "minutes/s")
	b.ReportMetric(float64(docs)/float64(b.N), "docs/minute")
}
