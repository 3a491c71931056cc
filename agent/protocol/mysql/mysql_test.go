package mysql

import (
	"encoding/binary"
	"reflect"
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

// Packets start with a 3-byte little-endian length: any byte.
func firstByte(flow protocol.Flow, b byte) bool { return true }

// Recorded with go-redis v9 (RESP3: HELLO 3 with AUTH, pipelines,
// MULTI/EXEC, DEBUG PROTOCOL replies of every RESP3 type, pub/sub on
// connection 3) and redis-cli (RESP2), against Debian's redis-server.
// Recorded with go-sql-driver/mysql against Debian's MariaDB 10.11
// (deprecate-EOF mode, cached result metadata): handshake, COM_PING,
// COM_QUERY with and without result sets, prepared statements (the driver
// prepares, executes and closes), an error, a 300 kB result set; and
// with Debian's mariadb client, which does not ask for deprecate-EOF (EOF
// packets after column definitions and rows).
var want = map[string]map[int][]string{
	"gosqldriver": {
		1: {
			`0 "CONNECT" 0 err=false req=176@2 resp=11@3`,
			`1 "PING" 0 err=false req=5@4 resp=11@5`,
			`2 "DROP users" 0 err=false req=31@6 resp=11@7`,
			`3 "CREATE users" 0 err=false req=82@8 resp=11@9`,
			`4 "INSERT users" 0 err=false req=114@10 resp=50@11`,
			`5 "SELECT users" 0 err=false req=45@12 resp=129@13`,
			`6 "PREPARE SELECT users" 0 err=false req=47@14 resp=141@15`,
			`7 "SELECT users" 0 err=false req=26@16 resp=43@17`,
			`8 "PREPARE UPDATE users" 0 err=false req=43@18 resp=70@19`,
			`9 "UPDATE users" 0 err=false req=31@20 resp=52@21`,
			`10 "UPDATE users" 0 err=false req=31@22 resp=52@23`,
			`11 "SELECT no_such_table" 1146 err=true req=32@24 resp=53@25`,
			`12 "SELECT information_schema.columns" 0 err=false req=76@26 resp=302144@27`,
			`13 "PING" 0 err=false req=5@32 resp=11@33`,
		},
	},
	"mariadbcli": {
		1: {
			`0 "CONNECT" 0 err=false req=215@2 resp=20@3`,
			`1 "SELECT users" 0 err=false req=45@4 resp=129@5`,
			`2 "SELECT" 0 err=false req=13@6 resp=58@7`,
			`3 "UPDATE users" 0 err=false req=45@8 resp=52@9`,
			`4 "SELECT nope" 1146 err=true req=23@10 resp=44@11`,
		},
	},
}

func TestRecorded(t *testing.T) {
	prototest.CheckRecorded(t, func() protocol.Parser { return New() }, []string{"gosqldriver", "mariadbcli"}, want, firstByte)
}

func TestRecordedDetails(t *testing.T) {
	c := prototest.Load(t, "testdata/gosqldriver.jsonl")[0]
	ex, err := prototest.Run(New(), c.Chunks)
	if err != nil {
		t.Fatal(err)
	}
	if e := ex[0]; e.Tags["db.user"] != "dt" || e.Tags["db.name"] != "shop" {
		t.Errorf("CONNECT: %+v", e.Tags)
	}
	if e := ex[5]; e.Tags["db.rows"] != "2" || e.Tags["db.table"] != "users" || e.Tags["db.statement"] != "SELECT id, name FROM users WHERE id < 10" ||
		!reflect.DeepEqual(e.Values, []string{"10"}) {
		t.Errorf("SELECT: %+v", e)
	}
	if e := ex[7]; e.Tags["db.rows"] != "1" || e.Tags["db.statement"] != "SELECT name, email FROM users WHERE id = ?" ||
		!reflect.DeepEqual(e.Values, []string{"42"}) {
		t.Errorf("EXECUTE: %+v", e)
	}
	if e := ex[9]; !reflect.DeepEqual(e.Values, []string{"n1", "1"}) || e.Tags["db.affected_rows"] != "1" {
		t.Errorf("EXECUTE UPDATE: %+v", e)
	}
	if e := ex[11]; e.StatusCode != 1146 || e.Tags["db.sqlstate"] != "42S02" || e.StatusText != "Table 'shop.no_such_table' doesn't exist" {
		t.Errorf("ERR: %+v", e)
	}
	if e := ex[12]; e.Tags["db.rows"] != "300" {
		t.Errorf("big result: %+v", e.Tags)
	}
	// Pipelined in one read: COM_STMT_CLOSE (no response) then COM_QUERY;
	// the query's TCP position is past the close packet.
	if b, _ := prototest.ByteAt(c.Chunks, protocol.ToServer, ex[11].ReqTCPSeq+4); b != 0x03 {
		t.Errorf("COM_QUERY at %#x holds %#x", ex[11].ReqTCPSeq+4, b)
	}
}

// Truncated capture: a result set cut by the gap ends there, marked, and
// the next command resynchronises.
func TestTruncated(t *testing.T) {
	c := prototest.Load(t, "testdata/gosqldriver.jsonl")[0]
	ex, err := prototest.Run(New(), prototest.Truncate(c.Chunks, 256))
	if err != nil {
		t.Fatal(err)
	}
	got := prototest.Summaries(ex)
	if len(got) != len(want["gosqldriver"][1]) {
		t.Fatalf("%d exchanges:\n%s", len(got), prototest.Diff(got, want["gosqldriver"][1]))
	}
	for i := range got {
		if i == 12 {
			if ex[i].Tags["mysql.truncated"] != "true" || ex[i].RespBytes < 256 {
				t.Errorf("cut result set: %s %v", got[i], ex[i].Tags)
			}
			continue
		}
		if got[i] != want["gosqldriver"][1][i] {
			t.Errorf("got %s, want %s", got[i], want["gosqldriver"][1][i])
		}
	}
}

// packets frames payloads as MySQL packets with sequence ids from seq.
func packets(flow protocol.Flow, seq byte, payloads ...string) protocol.Chunk {
	var b []byte
	for _, p := range payloads {
		var h [4]byte
		binary.LittleEndian.PutUint32(h[:], uint32(len(p)))
		h[3] = seq
		seq++
		b = append(append(b, h[:]...), p...)
	}
	return protocol.Chunk{Flow: flow, Data: b, Size: int64(len(b)), StartNs: 1, EndNs: 2}
}

func TestEOFMode(t *testing.T) {
	req, resp := protocol.ToServer, protocol.ToClient
	const eof = "\xfe\x00\x00\x02\x00"
	col := "\x03def\x00\x00\x00\x01a\x00\x0c\x3f\x00\x0b\x00\x00\x00\x03\x00\x00\x00\x00\x00"
	hs := "\x0a8.0.0\x00\x01\x00\x00\x00abcdefgh\x00\xff\xf7\x08\x02\x00\xff\x80\x15" + string(make([]byte, 10)) + "ijklmnopqrst\x00"
	// Client capabilities without DEPRECATE_EOF.
	resp41 := "\x0d\xa2\x0a\x00\x00\x00\x00\x01\x21" + string(make([]byte, 23)) + "root\x00\x14" + string(make([]byte, 20)) + "db\x00"
	chunks := []protocol.Chunk{
		packets(resp, 0, hs),
		packets(req, 1, resp41),
		// Auth switch: the client's answer belongs to CONNECT.
		packets(resp, 2, "\xfemysql_native_password\x00abcdefghijklmnopqrst\x00"),
		packets(req, 3, "01234567890123456789"),
		packets(resp, 4, "\x00\x00\x00\x02\x00\x00\x00"),
		packets(req, 0, "\x03SELECT a FROM t WHERE a = 'x'"),
		packets(resp, 1, "\x01", col, eof, "\x011", "\x012", "\x013", eof),
		packets(req, 0, "\x16SELECT a FROM t WHERE a = ?"),
		packets(resp, 1, "\x00\x07\x00\x00\x00\x01\x00\x01\x00\x00\x00\x00", col, eof, col, eof),
		packets(req, 0, "\x17\x07\x00\x00\x00\x00\x01\x00\x00\x00\x00\x01\xfe\x00\x03abc"),
		packets(resp, 1, "\x01", col, eof, "\x00\x00\x92\x10\x00\x00", eof), // binary row: LONG 4242
		packets(req, 0, "\x03SELECT 1; SELECT 2"),
		packets(resp, 1, "\x01", col, eof, "\x011", "\xfe\x00\x00\x0a\x00", "\x01", col, eof, "\x012", eof),
		packets(req, 0, "\x0e"),
		packets(resp, 1, "\xff\x15\x04#28000Access denied"),
	}
	ex, err := prototest.Run(New(), chunks)
	if err != nil {
		t.Fatal(err)
	}
	wantEx := []string{
		`0 "CONNECT" 0 err=false req=89@0 resp=59@0`,
		`1 "SELECT t" 0 err=false req=34@0 resp=68@0`,
		`2 "PREPARE SELECT t" 0 err=false req=32@0 resp=88@0`,
		`3 "SELECT t" 0 err=false req=22@0 resp=60@0`,
		`4 "SELECT" 0 err=false req=23@0 resp=112@0`,
		`5 "PING" 1045 err=true req=5@0 resp=26@0`,
	}
	if d := prototest.Diff(prototest.Summaries(ex), wantEx); d != "" {
		t.Error(d)
	}
	if ex[1].Tags["db.rows"] != "3" || ex[3].Tags["db.rows"] != "1" || !reflect.DeepEqual(ex[3].Values, []string{"abc", "4242"}) {
		t.Errorf("rows %s %s, values %q", ex[1].Tags["db.rows"], ex[3].Tags["db.rows"], ex[3].Values)
	}
}

func TestGarbage(t *testing.T) {
	for _, s := range []string{"GET / HTTP/1.1\r\n\r\n", "\x05\x00\x00\x00\x99abcd"} {
		_, err := New().Feed(protocol.Chunk{Flow: protocol.ToServer, Data: []byte(s), Size: int64(len(s))})
		if err == nil {
			t.Errorf("%q: want an error", s)
		}
	}
}

func TestPendingBound(t *testing.T) {
	prototest.CheckPendingBound(t, New(), packets(protocol.ToServer, 0, "\x03SELECT 1").Data, 3000)
}

// A connection tracker that starts parsing at the client's first bytes
// misses the server's greeting: the exchanges must be the same without it.
func TestGreetingMissed(t *testing.T) {
	c := prototest.Load(t, "testdata/gosqldriver.jsonl")[0]
	want, err := prototest.Run(New(), c.Chunks)
	if err != nil {
		t.Fatal(err)
	}
	got, err := prototest.Run(New(), c.Chunks[1:])
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, want) {
		t.Error(prototest.Diff(prototest.Summaries(got), prototest.Summaries(want)))
	}
}
