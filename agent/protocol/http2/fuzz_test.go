package http2

import (
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

func FuzzParser(f *testing.F) {
	prototest.Seeds(f, "testdata/h2c.jsonl", "testdata/grpc.jsonl")
	f.Fuzz(func(t *testing.T, in []byte) {
		prototest.FuzzParser(t, func() protocol.Parser { return New() }, in)
	})
}

// BenchmarkParser parses the recorded h2c traffic (bodies of up to 300 kB,
// skipped).
func BenchmarkParser(b *testing.B) {
	prototest.Bench(b, func() protocol.Parser { return New() }, prototest.Load(b, "testdata/h2c.jsonl"))
}

// BenchmarkGRPC parses the recorded gRPC calls: small messages, the
// per-call cost of HPACK and framing.
func BenchmarkGRPC(b *testing.B) {
	prototest.Bench(b, func() protocol.Parser { return New() }, prototest.Load(b, "testdata/grpc.jsonl"))
}
