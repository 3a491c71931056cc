package assemble_test

import (
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/worker/assemble"
	"github.com/deeptrace/deeptrace/worker/assemble/assembletest"
)

// BenchmarkBuild measures the assembly step alone on one core: spans of
// realistic traces (gateway, 8 services, fan-out up to 3, depth up to 4,
// 30% through a DNAT'ed VIP, 20% without TCP positions) joined into a
// forest, and with the trace documents laid out.
func BenchmarkBuild(b *testing.B) {
	set := assembletest.Generate(assembletest.Config{Traces: 20000, Start: window, Seed: 11})
	spans := set.Spans
	// The worker's options: a one-minute window and a 10s margin.
	opt := assemble.Options{Window: time.Minute, Margin: 10 * time.Second}
	b.Logf("%d spans in %d traces (%.1f spans/trace)", len(spans), len(set.Roots), float64(len(spans))/float64(len(set.Roots)))
	b.Run("forest", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			f := assemble.Build(spans, opt)
			if len(f.Roots) != len(set.Roots) {
				b.Fatalf("%d roots", len(f.Roots))
			}
		}
		b.ReportMetric(float64(len(spans)*b.N)/b.Elapsed().Seconds(), "spans/s")
	})
	b.Run("traces", func(b *testing.B) {
		b.ReportAllocs()
		var out []schemas.Trace
		for b.Loop() {
			f := assemble.Build(spans, opt)
			out = out[:0]
			for _, r := range f.Roots {
				out = append(out, f.Trace(r, window, window))
			}
		}
		b.ReportMetric(float64(len(spans)*b.N)/b.Elapsed().Seconds(), "spans/s")
	})
}
