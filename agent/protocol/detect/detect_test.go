package detect

import (
	"reflect"
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
	"github.com/deeptrace/deeptrace/schemas"
)

var recordings = []struct {
	path  string
	proto schemas.Protocol
}{
	{"../http1/testdata/nethttp.jsonl", schemas.ProtocolHTTP1},
	{"../http1/testdata/h2cupgrade.jsonl", schemas.ProtocolHTTP1},
	{"../http2/testdata/h2c.jsonl", schemas.ProtocolHTTP2},
	{"../http2/testdata/grpc.jsonl", schemas.ProtocolHTTP2},
	{"../redis/testdata/goredis.jsonl", schemas.ProtocolRedis},
	{"../redis/testdata/rediscli.jsonl", schemas.ProtocolRedis},
	{"../mysql/testdata/gosqldriver.jsonl", schemas.ProtocolMySQL},
	{"../postgres/testdata/pgx.jsonl", schemas.ProtocolPostgres},
	{"../postgres/testdata/psql.jsonl", schemas.ProtocolPostgres},
}

// Every recorded connection is recognised from its first chunk, and from
// the first chunk of each flow; Auto then gives what the protocol's own
// parser gives.
func TestRecordings(t *testing.T) {
	for _, r := range recordings {
		for _, c := range prototest.Load(t, r.path) {
			seen := map[protocol.Flow]bool{}
			for _, ch := range c.Chunks {
				if seen[ch.Flow] {
					continue
				}
				seen[ch.Flow] = true
				got := Detect(ch.Data, ch.Flow)
				// A lone 'N' (PostgreSQL refusing SSL) says nothing.
				if got != r.proto && !(len(ch.Data) == 1 && got == schemas.ProtocolUnknown) {
					t.Errorf("%s conn %d %v: %s, want %s (%q)", r.path, c.ID, ch.Flow, got, r.proto, ch.Data[:min(len(ch.Data), 16)])
				}
			}
			want, err := prototest.Run(New(r.proto), c.Chunks)
			if err != nil {
				t.Fatal(err)
			}
			a := NewAuto()
			got, _ := prototest.Run(a, c.Chunks)
			if !reflect.DeepEqual(got, want) || a.Err != nil {
				t.Errorf("%s conn %d: auto gives %d exchanges (%v), parser %d", r.path, c.ID, len(got), a.Err, len(want))
			}
		}
	}
}

func TestDetectMidConnection(t *testing.T) {
	for _, tc := range []struct {
		data  string
		flow  protocol.Flow
		proto schemas.Protocol
	}{
		{"Q\x00\x00\x00\x0dSELECT 1\x00", protocol.ToServer, schemas.ProtocolPostgres},
		{"\x09\x00\x00\x00\x03SELECT 1", protocol.ToServer, schemas.ProtocolMySQL},
		{"\x01\x00\x00\x00\x0e", protocol.ToServer, schemas.ProtocolMySQL},
		{"PING\r\n", protocol.ToServer, schemas.ProtocolRedis},
		{"+OK\r\n", protocol.ToClient, schemas.ProtocolRedis},
		{"-ERR unknown command\r\n", protocol.ToClient, schemas.ProtocolRedis},
		{"OPTIONS * HTTP/1.1\r\n", protocol.ToServer, schemas.ProtocolHTTP1},
		{"PRI * HTTP/2.0\r\n", protocol.ToServer, schemas.ProtocolHTTP2},
		{"SSH-2.0-OpenSSH_9.2\r\n", protocol.ToClient, schemas.ProtocolUnknown},
		{"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", protocol.ToServer, schemas.ProtocolUnknown},
		{"get key\r\n", protocol.ToServer, schemas.ProtocolUnknown},
		{"", protocol.ToServer, schemas.ProtocolUnknown},
	} {
		if got := Detect([]byte(tc.data), tc.flow); got != tc.proto {
			t.Errorf("%q: %s, want %s", tc.data, got, tc.proto)
		}
	}
}

// A parser that gives up hands the connection to turn-taking, numbering
// on.
func TestFallback(t *testing.T) {
	ch := func(f protocol.Flow, s string) protocol.Chunk {
		return protocol.Chunk{Flow: f, Data: []byte(s), Size: int64(len(s)), StartNs: 1, EndNs: 2}
	}
	req, resp := protocol.ToServer, protocol.ToClient
	a := NewAuto()
	ex, _ := prototest.Run(a, []protocol.Chunk{
		ch(req, "GET /ws HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
		ch(resp, "HTTP/1.1 101 Switching Protocols\r\n\r\n"),
		ch(req, "\x81\x85hello"), // the parser fails here
		ch(req, "\x81\x85again"),
		ch(resp, "\x81\x02ok"),
	})
	want := []string{
		`0 "GET /ws" 101 err=false req=40@0 resp=36@0`,
		`1 "unknown" 0 err=false req=7@0 resp=4@0`,
	}
	if d := prototest.Diff(prototest.Summaries(ex), want); d != "" || a.Err == nil {
		t.Errorf("%v\n%s", a.Err, d)
	}
}

func FuzzDetect(f *testing.F) {
	for _, r := range recordings {
		for _, c := range prototest.Load(f, r.path) {
			f.Add(c.Chunks[0].Data, c.Chunks[0].Flow == protocol.ToClient)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte, toClient bool) {
		flow := protocol.ToServer
		if toClient {
			flow = protocol.ToClient
		}
		p := Detect(b, flow)
		// Whatever is detected, its parser must take the bytes without
		// panicking, and Auto must not fail.
		New(p).Feed(protocol.Chunk{Flow: flow, Data: b, Size: int64(len(b))})
		if _, err := NewAuto().Feed(protocol.Chunk{Flow: flow, Data: b, Size: int64(len(b))}); err != nil {
			t.Fatal(err)
		}
	})
}

func BenchmarkDetect(b *testing.B) {
	var firsts [][]byte
	for _, r := range recordings {
		for _, c := range prototest.Load(b, r.path) {
			firsts = append(firsts, c.Chunks[0].Data)
		}
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		for _, f := range firsts {
			Detect(f, protocol.ToServer)
		}
	}
	b.ReportMetric(float64(b.N*len(firsts))/b.Elapsed().Seconds(), "detections/s")
}
