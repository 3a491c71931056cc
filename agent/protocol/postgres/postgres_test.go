package postgres

import (
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

// Messages start with their type, the startup message with its length.
func firstByte(flow protocol.Flow, b byte) bool {
	if flow == protocol.ToServer {
		return b == 0 || clientTypes[b]
	}
	return serverTypes[b]
}

// Recorded against Debian's PostgreSQL 15 with SCRAM authentication:
// pgx/v5 (SSLRequest refused on connection 1, then simple queries, named
// prepared statements from its statement cache, an unnamed statement, a
// failing prepare, a two-statement batch, a transaction, a 300 kB result
// set, Ping's empty query) and psql (simple protocol, an error, a
// multi-statement query).
var want = map[string]map[int][]string{
	"pgx": {
		2: {
			`0 "CONNECT" 0 err=false req=195@3 resp=576@4`,
			`1 "DROP users" 0 err=false req=32@9 resp=22@10`,
			`2 "CREATE users" 0 err=false req=68@11 resp=24@12`,
			`3 "INSERT users" 0 err=false req=115@13 resp=22@14`,
			`4 "PREPARE SELECT users" 0 err=false req=173@15 resp=52@16`,
			`5 "SELECT users" 0 err=false req=98@17 resp=39@18`,
			`6 "SELECT users" 0 err=false req=98@19 resp=39@20`,
			`7 "SELECT users" 0 err=false req=98@21 resp=39@22`,
			`8 "SELECT users" 0 err=false req=97@23 resp=176@24`,
			`9 "SELECT users" 0 err=false req=38@25 resp=85@26`,
			`10 "PREPARE SELECT no_such_table" 0 err=true req=178@27 resp=119@28`,
			`11 "PREPARE UPDATE users" 0 err=false req=335@30 resp=74@31`,
			`12 "UPDATE users" 0 err=false req=194@32 resp=68@33`,
			`13 "BEGIN" 0 err=false req=11@34 resp=17@35`,
			`14 "PREPARE DELETE users" 0 err=false req=168@36 resp=27@37`,
			`15 "DELETE users" 0 err=false req=103@38 resp=30@39`,
			`16 "COMMIT" 0 err=false req=12@40 resp=18@41`,
			`17 "PREPARE SELECT generate_series" 0 err=false req=190@42 resp=50@43`,
			`18 "SELECT generate_series" 0 err=false req=88@44 resp=303327@45`,
			`19 "QUERY" 0 err=false req=13@49 resp=11@50`,
		},
	},
	"psql": {
		1: {
			`0 "CONNECT" 0 err=false req=217@1 resp=580@2`,
			`1 "SELECT users" 0 err=false req=46@7 resp=91@8`,
			`2 "SELECT" 0 err=true req=16@9 resp=72@10`,
			`3 "BEGIN" 0 err=false req=75@11 resp=43@12`,
		},
	},
}

func TestRecorded(t *testing.T) {
	prototest.CheckRecorded(t, func() protocol.Parser { return New() }, []string{"pgx", "psql"}, want, firstByte)
}

func TestRecordedDetails(t *testing.T) {
	conns := prototest.Load(t, "testdata/pgx.jsonl")
	ex, err := prototest.Run(New(), conns[1].Chunks)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ex {
		for k, v := range e.Tags {
			if strings.Contains(v, "SCRAM") || strings.Contains(v, "s3cret") {
				t.Errorf("credentials in %s=%q", k, v)
			}
		}
	}
	if e := ex[0]; e.Tags["db.user"] != "dt" || e.Tags["db.name"] != "shop" {
		t.Errorf("CONNECT: %v", e.Tags)
	}
	if e := ex[5]; !reflect.DeepEqual(e.Values, []string{"42"}) || e.Tags["db.statement"] != "SELECT name FROM users WHERE id = $1" ||
		e.Tags["db.rows"] != "1" || e.Method != "EXECUTE" || !strings.HasPrefix(e.Tags["db.prepared_statement"], "stmtcache_") {
		t.Errorf("named statement: %+v", e)
	}
	// Values: the bound parameter, then the ids the rows return.
	if e := ex[8]; !reflect.DeepEqual(e.Values, []string{"zed", "42"}) || e.Tags["db.prepared_statement"] != "" {
		t.Errorf("unnamed statement: %+v", e)
	}
	if e := ex[10]; e.Tags["db.sqlstate"] != "42P01" || e.StatusText != `relation "no_such_table" does not exist` {
		t.Errorf("error: %+v", e)
	}
	if e := ex[12]; e.Tags["db.batch_size"] != "2" {
		t.Errorf("batch: %+v", e.Tags)
	}
	if e := ex[18]; e.Tags["db.rows"] != "300" {
		t.Errorf("big result: %v", e.Tags)
	}
	ex, err = prototest.Run(New(), prototest.Load(t, "testdata/psql.jsonl")[0].Chunks)
	if err != nil {
		t.Fatal(err)
	}
	if e := ex[1]; !reflect.DeepEqual(e.Values, []string{"42"}) || e.Tags["db.command_tag"] != "SELECT 1" {
		t.Errorf("simple query: %+v", e)
	}
	if e := ex[2]; e.Tags["db.sqlstate"] != "22012" || e.StatusText != "division by zero" {
		t.Errorf("simple error: %+v", e)
	}
}

// Truncated capture: a result set cut by the gap ends there, marked, and
// the next request resynchronises.
func TestTruncated(t *testing.T) {
	c := prototest.Load(t, "testdata/pgx.jsonl")[1]
	ex, err := prototest.Run(New(), prototest.Truncate(c.Chunks, 512))
	if err != nil {
		t.Fatal(err)
	}
	got := prototest.Summaries(ex)
	w := want["pgx"][2]
	if len(got) != len(w) {
		t.Fatalf("%d exchanges:\n%s", len(got), prototest.Diff(got, w))
	}
	for i := range got {
		if i == 18 {
			if ex[i].Tags["db.truncated"] != "true" || ex[i].RespBytes < 512 {
				t.Errorf("cut result set: %s %v", got[i], ex[i].Tags)
			}
			continue
		}
		if got[i] != w[i] {
			t.Errorf("got %s, want %s", got[i], w[i])
		}
	}
}

func TestTLSAndGarbage(t *testing.T) {
	p := New()
	ssl := []byte{0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f}
	if _, err := p.Feed(protocol.Chunk{Flow: protocol.ToServer, Data: ssl, Size: 8}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Feed(protocol.Chunk{Flow: protocol.ToClient, Data: []byte("S"), Size: 1}); !errors.Is(err, ErrTLS) {
		t.Fatalf("got %v, want ErrTLS", err)
	}
	for _, c := range []protocol.Chunk{
		{Flow: protocol.ToServer, Data: []byte("GET / HTTP/1.1\r\n\r\n")},
		{Flow: protocol.ToServer, Data: []byte("Q\xff\xff\xff\xffSELECT")},
		{Flow: protocol.ToClient, Data: []byte("+OK\r\n")},
	} {
		c.Size = int64(len(c.Data))
		if _, err := New().Feed(c); err == nil {
			t.Errorf("%q: want an error", c.Data)
		}
	}
}

func TestPendingBound(t *testing.T) {
	prototest.CheckPendingBound(t, New(), []byte("Q\x00\x00\x00\x0dSELECT 1\x00"), 3000)
}
