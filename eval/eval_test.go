package eval

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"

	"github.com/deeptrace/deeptrace/schemas"
)

// A two-level trace: loadgen → gateway GET /api/orders/7 → orders
// GET /orders/7 → Redis GET order:7, written as the services write it.
func writeTruth(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	lines := map[string][]map[string]any{
		"loadgen": {
			{"kind": "out", "service": "loadgen", "call_id": "1-c1", "parent_req_id": "seq-1", "target": "gateway", "proto": "http",
				"op": "GET /api/orders/7", "local": "127.0.0.1:40000", "peer": "127.0.0.1:18080", "start_ns": 1000, "end_ns": 9000, "pid": 1, "tid": 1, "status": 200, "ok": true},
		},
		"gateway": {
			{"kind": "in", "service": "gateway", "req_id": "2-1", "proto": "http", "method": "GET", "path": "/api/orders/7",
				"peer": "127.0.0.1:40000", "local": "127.0.0.1:18080", "start_ns": 1500, "end_ns": 8500, "pid": 2, "tid": 2, "status": 200, "ok": true},
			{"kind": "out", "service": "gateway", "call_id": "2-c1", "parent_req_id": "2-1", "target": "orders", "proto": "http",
				"op": "GET /orders/7?x=1", "local": "127.0.0.1:41000", "peer": "127.0.0.1:18081", "start_ns": 2000, "end_ns": 8000, "pid": 2, "tid": 2, "status": 200, "ok": true},
		},
		"orders": {
			{"kind": "in", "service": "orders", "req_id": "3-1", "proto": "http", "method": "GET", "path": "/orders/7?x=1",
				"peer": "127.0.0.1:41000", "local": "127.0.0.1:18081", "start_ns": 2500, "end_ns": 7500, "pid": 3, "tid": 3, "status": 200, "ok": true},
			{"kind": "out", "service": "orders", "call_id": "3-c1", "parent_req_id": "3-1", "target": "redis", "proto": "redis",
				"op": "GET order:7", "local": "127.0.0.1:42000", "peer": "127.0.0.1:6379", "start_ns": 3000, "end_ns": 7000, "pid": 3, "tid": 3, "status": 0, "ok": true},
		},
	}
	for svc, recs := range lines {
		f, err := os.Create(filepath.Join(dir, svc+".jsonl"))
		if err != nil {
			t.Fatal(err)
		}
		enc := json.NewEncoder(f)
		for _, r := range recs {
			enc.Encode(r)
		}
		f.Close()
	}
	return dir
}

func span(id string, role schemas.Role, pid uint32, cport, sport uint16, start, end int64, method, path string) schemas.Span {
	return schemas.Span{SpanID: id, Role: role, PID: pid, StartNs: start, EndNs: end, Method: method, Path: path,
		Operation: method + " " + path, Conn: schemas.Conn{ClientPort: cport, ServerPort: sport}, ReqTCPSeq: 1}
}

func spans() []schemas.Span {
	redis := span("r", schemas.RoleClient, 3, 42000, 6379, 3100, 6900, "", "")
	redis.Tags = map[string]string{"db.statement": "GET order:7"}
	redis.Operation = "GET"
	return []schemas.Span{
		span("gw", schemas.RoleServer, 2, 40000, 18080, 1400, 8600, "GET", "/api/orders/7"),
		span("gw-o", schemas.RoleClient, 2, 41000, 18081, 2100, 7900, "GET", "/orders/7"),
		span("o", schemas.RoleServer, 3, 41000, 18081, 2400, 7600, "GET", "/orders/7"),
		redis,
	}
}

func TestEvaluate(t *testing.T) {
	tr, err := LoadTruth(writeTruth(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(tr.Roots) != 1 || tr.Links() != 2 {
		t.Fatalf("roots %d links %d, want 1 and 2 (problems %v)", len(tr.Roots), tr.Links(), tr.Problems)
	}
	cases := []struct {
		name               string
		parents            map[string]string
		traces, prec, rec  float64
		ordersOK, matchAll bool
	}{
		{"all right", map[string]string{"gw-o": "gw", "r": "o"}, 1, 1, 1, true, true},
		{"deep link wrong", map[string]string{"gw-o": "gw", "r": "gw"}, 0, 0.5, 0.5, false, true},
		{"deep link missing", map[string]string{"gw-o": "gw"}, 0, 1, 0.5, false, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ss := spans()
			for i := range ss {
				ss[i].ParentSpanID = tc.parents[ss[i].SpanID]
			}
			rep := Evaluate(tr, ss, nil)
			if rep.MatchedIns != 2 || rep.MatchedOuts != 2 {
				t.Fatalf("matched %d ins %d outs, want 2 and 2", rep.MatchedIns, rep.MatchedOuts)
			}
			o := rep.Overall
			if o.TraceAccuracy() != tc.traces || o.Precision() != tc.prec || o.Recall() != tc.rec {
				t.Errorf("trace accuracy %v precision %v recall %v, want %v %v %v", o.TraceAccuracy(), o.Precision(), o.Recall(), tc.traces, tc.prec, tc.rec)
			}
			if got := rep.Services["orders"].TraceAccuracy() == 1; got != tc.ordersOK {
				t.Errorf("orders subtree right = %v, want %v", got, tc.ordersOK)
			}
		})
	}
}

func TestMatchUsesContainmentAndOp(t *testing.T) {
	tr, err := LoadTruth(writeTruth(t))
	if err != nil {
		t.Fatal(err)
	}
	ss := spans()
	// A second exchange on the orders connection, later: must not steal
	// the match.
	ss = append(ss, span("o2", schemas.RoleServer, 3, 41000, 18081, 9000, 9500, "GET", "/orders/8"))
	m := Match(tr, ss, nil)
	for _, r := range tr.Ins {
		if r.Service == "orders" && m.Span[r].SpanID != "o" {
			t.Errorf("orders in matched to %s, want o", m.Span[r].SpanID)
		}
	}
	// Missing span: the trace is not right, and not captured.
	rep := Evaluate(tr, ss[:3], nil)
	if rep.Overall.TracesOK != 0 || rep.Overall.Captured != 0 {
		t.Errorf("trace with an uncaptured call counted right or captured: %+v", rep.Overall)
	}
}

func TestKeyMisses(t *testing.T) {
	for _, tc := range []struct {
		values []string
		want   int
	}{
		{[]string{"812", "5310", "99"}, 1}, // qty not kept: one miss
		{[]string{"812", "2", "5310"}, 0},
		{[]string{"813", "5310"}, 2},
	} {
		if got := keyMisses(`sku=812 qty=2 customer_id=5310 warehouse="eu-1"`, tc.values); got != tc.want {
			t.Errorf("keyMisses(%v) = %d, want %d", tc.values, got, tc.want)
		}
	}
}
