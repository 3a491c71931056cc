package http1

import (
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

func FuzzParser(f *testing.F) {
	prototest.Seeds(f, "testdata/nethttp.jsonl", "testdata/h2cupgrade.jsonl")
	f.Fuzz(func(t *testing.T, in []byte) {
		prototest.FuzzParser(t, func() protocol.Parser { return New() }, in)
	})
}

// BenchmarkParser parses the recorded net/http traffic; most of its bytes
// are bodies, which the parser skips.
func BenchmarkParser(b *testing.B) {
	prototest.Bench(b, func() protocol.Parser { return New() }, prototest.Load(b, "testdata/nethttp.jsonl"))
}

// BenchmarkSmall parses small keep-alive exchanges: the per-request cost.
func BenchmarkSmall(b *testing.B) {
	conns := prototest.Load(b, "testdata/nethttp.jsonl")
	conns[0].Chunks = conns[0].Chunks[:6]
	prototest.Bench(b, func() protocol.Parser { return New() }, conns[:1])
}
