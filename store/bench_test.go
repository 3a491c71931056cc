package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// BenchmarkBulkUntilSearchable measures span documents per second from the
// first Add until every one is searchable (refresh, then count), through
// the same Writer the agent uses.
func BenchmarkBulkUntilSearchable(b *testing.B) {
	for _, compress := range []bool{false, true} {
		name := "plain"
		if compress {
			name = "gzip"
		}
		b.Run(name, func(b *testing.B) {
			s := testenv.Store(b)
			if !compress {
				s2, err := store.Open(store.Config{URLs: []string{testenv.ESURL()}, Engine: testenv.ESEngine(), Prefix: s.Indices().Prefix})
				if err != nil {
					b.Fatal(err)
				}
				s = s2
			}
			ctx := context.Background()
			base := time.Now().UTC().Truncate(time.Hour)
			const batch = 20000
			docs := make([]store.Doc, batch)
			b.ResetTimer()
			total := 0
			for it := 0; it < b.N; it++ {
				b.StopTimer()
				for i := range docs {
					sp := testSpan(it*batch+i, base.Add(time.Duration(i)*time.Millisecond))
					docs[i], _ = store.SpanDoc(s.Indices(), &sp)
				}
				b.StartTimer()
				w, err := s.NewWriter(store.WriterConfig{Workers: 2, FlushBytes: 4 << 20})
				if err != nil {
					b.Fatal(err)
				}
				for i := range docs {
					if err := w.Add(ctx, docs[i]); err != nil {
						b.Fatal(err)
					}
				}
				if err := w.Close(ctx); err != nil {
					b.Fatal(err)
				}
				if st := w.Stats(); st.Indexed != batch {
					b.Fatalf("indexed %d of %d (%+v)", st.Indexed, batch, st)
				}
				total += batch
				if err := s.Refresh(ctx, s.Indices().Pattern(schemas.KindSpans)); err != nil {
					b.Fatal(err)
				}
				n, err := s.Count(ctx, store.Query{Kind: schemas.KindSpans, From: base, To: base.Add(time.Hour)})
				if err != nil || n != int64(total) {
					b.Fatalf("searchable %d of %d: %v", n, total, err)
				}
			}
			b.ReportMetric(float64(total)/b.Elapsed().Seconds(), "spans/s")
		})
	}
}
