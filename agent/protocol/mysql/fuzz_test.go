package mysql

import (
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

func FuzzParser(f *testing.F) {
	prototest.Seeds(f, "testdata/gosqldriver.jsonl", "testdata/mariadbcli.jsonl")
	f.Fuzz(func(t *testing.T, in []byte) {
		prototest.FuzzParser(t, func() protocol.Parser { return New() }, in)
	})
}

// BenchmarkParser parses the recorded go-sql-driver session, a 300 kB
// result set included (rows counted from their headers, not read).
func BenchmarkParser(b *testing.B) {
	prototest.Bench(b, func() protocol.Parser { return New() }, prototest.Load(b, "testdata/gosqldriver.jsonl"))
}

// BenchmarkSmall parses the same session without the big result set: the
// per-query cost.
func BenchmarkSmall(b *testing.B) {
	conns := prototest.Load(b, "testdata/gosqldriver.jsonl")
	conns[0].Chunks = conns[0].Chunks[:25]
	prototest.Bench(b, func() protocol.Parser { return New() }, conns)
}
