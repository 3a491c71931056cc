package worker

import (
	"testing"

	"github.com/deeptrace/deeptrace/schemas"
)

// A key read over a range is not read again within it; a wider range, a
// new key or an inverted range (a span ending before it starts) is.
func TestKeyQueryReadsAKeyOnceOverItsRange(t *testing.T) {
	k := newKeyQuery("client_port", schemas.RoleServer)
	k.add(int64(7), 100, 200)
	k.add(int64(7), 150, 300)
	k.add(int64(9), 120, 130)
	if len(k.vals) != 2 || k.from != 100 || k.to != 300 {
		t.Fatalf("first level: keys %v over %d..%d, want [7 9] over 100..300", k.vals, k.from, k.to)
	}
	k.markDone()
	if len(k.vals) != 0 {
		t.Fatalf("keys %v left after the level", k.vals)
	}
	k.add(int64(7), 120, 250) // inside what was read
	k.add(int64(9), 290, 300) // 9 was read over the level's whole range
	if len(k.vals) != 0 {
		t.Fatalf("keys %v looked up again inside the range they were read over", k.vals)
	}
	k.add(int64(7), 50, 250)
	k.add(int64(11), 500, 400)
	if len(k.vals) != 2 || k.from != 50 || k.to != 500 {
		t.Fatalf("second level: keys %v over %d..%d, want [7 11] over 50..500", k.vals, k.from, k.to)
	}
	k.markDone()
	if r := k.done[int64(7)]; r != [2]int64{50, 500} {
		t.Errorf("key 7 read over %v, want the union [50 500]", r)
	}
}

func TestSpanSetKeepsEachSpanOnce(t *testing.T) {
	conn := schemas.Conn{ClientIP: "10.0.0.1", ClientPort: 40000, ServerIP: "10.0.0.2", ServerPort: 80}
	server := schemas.Span{SpanID: "s1", Role: schemas.RoleServer, Conn: conn, ReqTCPSeq: 10, RespTCPSeq: 20}
	noTCP := schemas.Span{SpanID: "s2", Role: schemas.RoleServer, Conn: conn, ReqTCPSeq: 10}
	client := schemas.Span{SpanID: "c1", Role: schemas.RoleClient, Conn: conn, ReqTCPSeq: 10, RespTCPSeq: 20}
	ss := newSpanSet()
	ss.spans = append(ss.spans, server, noTCP, server)
	ss.keep(0)
	ss.spans = append(ss.spans, noTCP, client, client)
	ss.keep(2)
	var ids []string
	for _, s := range ss.spans {
		ids = append(ids, s.SpanID)
	}
	if len(ids) != 3 || ids[0] != "s1" || ids[1] != "s2" || ids[2] != "c1" {
		t.Fatalf("kept %v, want [s1 s2 c1]", ids)
	}
	if !ss.servedExactly(&client) {
		t.Error("client span's exact server span in hand, not seen")
	}
	other := client
	other.RespTCPSeq = 21
	if ss.servedExactly(&other) {
		t.Error("a client span with other TCP positions taken as served")
	}
}
