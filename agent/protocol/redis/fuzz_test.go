package redis

import (
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

func FuzzParser(f *testing.F) {
	prototest.Seeds(f, "testdata/goredis.jsonl", "testdata/rediscli.jsonl")
	f.Fuzz(func(t *testing.T, in []byte) {
		prototest.FuzzParser(t, func() protocol.Parser { return New() }, in)
	})
}

// BenchmarkParser parses the recorded go-redis traffic, 200 kB values
// included (skipped, not read).
func BenchmarkParser(b *testing.B) {
	prototest.Bench(b, func() protocol.Parser { return New() }, prototest.Load(b, "testdata/goredis.jsonl"))
}

// BenchmarkSmall parses redis-cli's small commands: the per-command cost.
func BenchmarkSmall(b *testing.B) {
	prototest.Bench(b, func() protocol.Parser { return New() }, prototest.Load(b, "testdata/rediscli.jsonl"))
}
