package postgres

import (
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

func FuzzParser(f *testing.F) {
	prototest.Seeds(f, "testdata/pgx.jsonl", "testdata/psql.jsonl")
	f.Fuzz(func(t *testing.T, in []byte) {
		prototest.FuzzParser(t, func() protocol.Parser { return New() }, in)
	})
}

// BenchmarkParser parses the recorded pgx session, a 300 kB result set
// included (rows counted from their headers, not read).
func BenchmarkParser(b *testing.B) {
	prototest.Bench(b, func() protocol.Parser { return New() }, prototest.Load(b, "testdata/pgx.jsonl"))
}

// BenchmarkSmall parses psql's short session: the per-query cost.
func BenchmarkSmall(b *testing.B) {
	prototest.Bench(b, func() protocol.Parser { return New() }, prototest.Load(b, "testdata/psql.jsonl"))
}
