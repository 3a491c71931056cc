package correlate

import (
	"path/filepath"
	"testing"

	"github.com/deeptrace/deeptrace/schemas"
)

// BenchmarkRecorded measures the correlator on each runtime's recording:
// ns per span handed in (server and client spans, in-flight reports and
// goroutine events included in the work).
func BenchmarkRecorded(b *testing.B) {
	for _, svc := range []string{"gateway", "payments", "catalog"} {
		b.Run(svc, func(b *testing.B) {
			rec := readRecording(&testing.T{}, filepath.Join("testdata", "c32-"+svc+".jsonl.gz"))
			spans := 0
			for _, r := range rec {
				if r.Span != nil {
					spans++
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				c, _ := New(Config{}, func(schemas.Span) {})
				for _, r := range rec {
					switch {
					case r.Span != nil:
						c.Span(*r.Span, r.Exchange)
					case r.InFlight != nil:
						c.RequestStart(*r.InFlight)
					case r.Go != nil:
						c.GoEvent(*r.Go)
					default:
						c.Advance(r.Now)
					}
				}
				c.Flush()
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*spans), "ns/span")
		})
	}
}
