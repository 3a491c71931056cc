package turn

import (
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

func TestTurns(t *testing.T) {
	req, resp := protocol.ToServer, protocol.ToClient
	ch := func(f protocol.Flow, s string, size int64) protocol.Chunk {
		return protocol.Chunk{Flow: f, Data: []byte(s), Size: size, StartNs: 1, EndNs: 2, TID: 7}
	}
	chunks := []protocol.Chunk{
		ch(resp, "220 greeting\r\n", 14), // the server speaks first: no exchange
		ch(req, "get key:1\r\n", 11),
		ch(req, "x", 1000), // truncated: counted
		ch(resp, "VALUE 1\r\n", 9),
		ch(resp, "END\r\n", 5),
		ch(req, "\x00\x01\x02", 3),
		ch(resp, "ok", 2),
		ch(req, "quit\r\n", 6),
	}
	ex, err := prototest.Run(New(), chunks)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		`0 "get" 0 err=false req=1011@7 resp=14@7`,
		`1 "unknown" 0 err=false req=3@7 resp=2@7`,
		`2 "quit" 0 err=false req=6@7 resp=0@0 noresp`,
	}
	if d := prototest.Diff(prototest.Summaries(ex), want); d != "" {
		t.Error(d)
	}
	for _, e := range ex {
		if e.Protocol != "unknown" || e.Tags["protocol.inferred"] != "turn-taking" {
			t.Errorf("%+v", e)
		}
	}
	if ex, _ := prototest.Run(NewAt(5), chunks[1:3]); len(ex) != 1 || ex[0].Seq != 5 {
		t.Errorf("NewAt: %+v", ex)
	}
}

// Every recording of the other parsers goes through turn-taking too.
func TestRecordings(t *testing.T) {
	for _, path := range []string{"../http1/testdata/nethttp.jsonl", "../redis/testdata/rediscli.jsonl", "../postgres/testdata/psql.jsonl"} {
		for _, c := range prototest.Load(t, path) {
			ex, err := prototest.Run(New(), c.Chunks)
			if err != nil || len(ex) == 0 {
				t.Errorf("%s conn %d: %d exchanges, %v", path, c.ID, len(ex), err)
			}
		}
	}
}

func FuzzParser(f *testing.F) {
	prototest.Seeds(f, "../redis/testdata/rediscli.jsonl")
	f.Fuzz(func(t *testing.T, in []byte) {
		prototest.FuzzParser(t, func() protocol.Parser { return New() }, in)
	})
}

// BenchmarkParser pairs the turns of the recorded redis-cli session.
func BenchmarkParser(b *testing.B) {
	prototest.Bench(b, func() protocol.Parser { return New() }, prototest.Load(b, "../redis/testdata/rediscli.jsonl"))
}
