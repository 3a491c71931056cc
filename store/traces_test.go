package store

import (
	"testing"

	"github.com/deeptrace/deeptrace/schemas"
)

func TestDependencyEdges(t *testing.T) {
	span := func(id, parent, svc string, role schemas.Role, dur int64, failed bool) schemas.TraceSpan {
		return schemas.TraceSpan{TraceParentID: parent, Span: schemas.Span{
			SpanID: id, Service: svc, Role: role, DurationNs: dur, Error: failed,
			Protocol: schemas.ProtocolRedis, Conn: schemas.Conn{ServerIP: "10.0.0.9", ServerPort: 6379},
		}}
	}
	trace := []schemas.TraceSpan{
		span("a", "", "gw", schemas.RoleServer, 100, false),
		span("b", "a", "gw", schemas.RoleClient, 50, false), // gw -> api, answered by c
		span("c", "b", "api", schemas.RoleServer, 40, true),
		span("d", "c", "api", schemas.RoleClient, 10, false), // api -> untraced redis
		span("e", "a", "gw", schemas.RoleClient, 30, false),  // gw -> api again
		span("f", "e", "api", schemas.RoleServer, 20, false),
	}
	got := DependencyEdges([][]schemas.TraceSpan{trace})
	want := []DependencyEdge{
		{Parent: "api", Child: "redis://10.0.0.9:6379", Calls: 1, P50Ns: 10, P90Ns: 10, P99Ns: 10, MaxNs: 10},
		{Parent: "gw", Child: "api", Calls: 2, Errors: 1, ErrorRate: 0.5, P50Ns: 30, P90Ns: 50, P99Ns: 50, MaxNs: 50},
	}
	if len(got) != len(want) {
		t.Fatalf("edges %+v", got)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Errorf("edge %d: %+v, want %+v", i, got[i], want[i])
		}
	}
}

func TestPercentile(t *testing.T) {
	v := []int64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for p, want := range map[float64]int64{0.5: 5, 0.9: 9, 0.99: 10, 0.01: 1} {
		if got := percentile(v, p); got != want {
			t.Errorf("p%.0f = %d, want %d", p*100, got, want)
		}
	}
}

func TestLuceneRegexpQuote(t *testing.T) {
	if got := luceneRegexpQuote(`a.b (c)*"#@&<>~`); got != `a\.b \(c\)\*\"\#\@\&\<\>\~` {
		t.Fatalf("quoted %s", got)
	}
}
