package http2

import (
	"reflect"
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

// Frames start with a 24-bit length: the first byte of a frame that fits
// the parser's buffer is 0; the client's first bytes are the preface.
func firstByte(flow protocol.Flow, b byte) bool { return b == 0 }

// Recorded with net/http's client and server speaking h2c with prior
// knowledge (concurrent requests multiplexed on one connection), and with
// grpc-go's health service (OK, NOT_FOUND as Trailers-Only, four
// concurrent calls, UNIMPLEMENTED, a Watch stream the client cancels).
var want = map[string]map[int][]string{
	"h2c": {
		1: {
			`0 "GET /users/42" 200 err=false req=63@1 resp=84@2`,
			`1 "GET /big" 200 err=false req=22@4 resp=300217@6`,
			`2 "GET /missing" 404 err=false req=22@5 resp=68@10`,
			`3 "GET /stream" 200 err=false req=21@9 resp=15106@10`,
			`4 "GET /users/7" 200 err=false req=22@22 resp=48@23`,
			`5 "GET /fail" 500 err=true req=20@25 resp=30@26`,
			`6 "POST /orders" 201 err=false req=40036@27 resp=46@30`,
			`7 "GET /users/42" 200 err=false req=15@31 resp=46@32`,
		},
	},
	"grpc": {
		1: {
			`0 "/grpc.health.v1.Health/Check" 0 err=false req=132@4 resp=72@5`,
			`1 "/grpc.health.v1.Health/Check" 5 err=true req=45@6 resp=29@7`,
			`2 "/grpc.health.v1.Health/Check" 0 err=false req=55@8 resp=38@9`,
			`3 "/grpc.health.v1.Health/Check" 0 err=false req=55@8 resp=38@9`,
			`4 "/grpc.health.v1.Health/Check" 0 err=false req=55@8 resp=38@9`,
			`5 "/grpc.health.v1.Health/Check" 0 err=false req=55@8 resp=38@9`,
			`6 "/users.v1.Users/GetUser" 12 err=true req=62@10 resp=41@11`,
			`7 "/grpc.health.v1.Health/Watch" 0 err=true req=77@12 resp=27@13`,
			`8 "/grpc.health.v1.Health/Check" 0 err=false req=55@16 resp=38@19`,
		},
	},
}

func run(t *testing.T, chunks []protocol.Chunk) []protocol.Exchange {
	t.Helper()
	ex, err := prototest.Run(New(), chunks)
	if err != nil {
		t.Fatal(err)
	}
	prototest.BySeq(ex)
	return ex
}

func TestRecorded(t *testing.T) {
	for _, file := range []string{"h2c", "grpc"} {
		conns := prototest.Load(t, "testdata/"+file+".jsonl")
		for _, c := range conns {
			ex := run(t, c.Chunks)
			prototest.Check(t, c.Chunks, ex, firstByte)
			prototest.CheckMerged(t, New(), c.Chunks, ex, true)
			got := prototest.Summaries(ex)
			if d := prototest.Diff(got, want[file][c.ID]); d != "" {
				t.Errorf("%s conn %d:\n%s", file, c.ID, d)
			}
			for name, chunks := range map[string][]protocol.Chunk{
				"bytes": prototest.Bytes(c.Chunks),
				"split": prototest.Split(c.Chunks, 1),
			} {
				ex2 := run(t, chunks)
				if !reflect.DeepEqual(ex, ex2) {
					t.Errorf("%s conn %d %s:\n%s", file, c.ID, name, prototest.Diff(prototest.Summaries(ex2), got))
				}
			}
		}
	}
}

func TestGRPCDetails(t *testing.T) {
	ex := run(t, prototest.Load(t, "testdata/grpc.jsonl")[0].Chunks)
	e := ex[0]
	if e.Protocol != "grpc" || e.Tags["rpc.service"] != "grpc.health.v1.Health" || e.Tags["rpc.method"] != "Check" ||
		e.Tags["grpc.status_code"] != "0" || e.Tags["http.status_code"] != "200" {
		t.Errorf("Check: %+v", e)
	}
	if e := ex[1]; e.StatusCode != 5 || e.StatusText != "unknown service" || e.Tags["grpc.status_code"] != "5" {
		t.Errorf("Trailers-Only NOT_FOUND: %+v", e)
	}
	if e := ex[6]; e.StatusCode != 12 || !e.Error || !reflect.DeepEqual(e.Values, []string{"42"}) {
		t.Errorf("UNIMPLEMENTED: %+v", e)
	}
	// Protobuf strings that look like ids, from the request message.
	if !reflect.DeepEqual(e.Values, []string{"users.v1.Users"}) {
		t.Errorf("Check values %q", e.Values)
	}
	if e := ex[7]; e.StatusText != "RST_STREAM CANCEL" || e.Tags["h2.rst_stream"] != "CANCEL" {
		t.Errorf("cancelled Watch: %+v", e)
	}
}

func TestH2Details(t *testing.T) {
	ex := run(t, prototest.Load(t, "testdata/h2c.jsonl")[0].Chunks)
	e := ex[0]
	if e.Protocol != "http2" || e.Method != "GET" || e.Path != "/users/42" || e.Tags["http.host"] == "" ||
		!reflect.DeepEqual(e.Values, []string{"42", "orders"}) {
		t.Errorf("GET /users/42: %+v", e)
	}
	// The same request later is encoded from the HPACK dynamic table.
	if last := ex[len(ex)-1]; last.Operation != e.Operation || last.Tags["http.host"] != e.Tags["http.host"] {
		t.Errorf("repeated request: %+v", last)
	}
}

// A gap that hides frame headers ends the parse: HPACK state is lost.
func TestTruncated(t *testing.T) {
	c := prototest.Load(t, "testdata/h2c.jsonl")[0]
	_, err := prototest.Run(New(), prototest.Truncate(c.Chunks, 1024))
	if err == nil {
		t.Fatal("want an error")
	}
	// Gaps inside DATA frames alone are counted: cut each read only past
	// the frame headers it holds.
	ex, err := prototest.Run(New(), prototest.Truncate(c.Chunks, 1<<20))
	if err != nil || len(ex) != 8 {
		t.Fatalf("%d exchanges, %v", len(ex), err)
	}
}

func TestGarbage(t *testing.T) {
	for _, tc := range []struct {
		flow protocol.Flow
		data string
	}{
		{protocol.ToServer, "GET / HTTP/1.1\r\n\r\n"},
		{protocol.ToClient, "HTTP/1.1 200 OK\r\n"},
		{protocol.ToClient, "\x00\x00\x00\x20\x00\x00\x00\x00\x00"},
		{protocol.ToServer, Preface + "\x00\x00\x04\x01\x04\x00\x00\x00\x01abcd"},
	} {
		_, err := New().Feed(protocol.Chunk{Flow: tc.flow, Data: []byte(tc.data), Size: int64(len(tc.data))})
		if err == nil {
			t.Errorf("%q: want an error", tc.data)
		}
	}
}

// Streams opened and never answered are given up oldest first beyond
// protocol.MaxPending.
func TestPendingBound(t *testing.T) {
	c := prototest.Load(t, "testdata/h2c.jsonl")[0]
	p := New()
	// The preface and SETTINGS, then the client's first request again and
	// again on new stream ids, with its literal headers.
	if _, err := p.Feed(c.Chunks[0]); err != nil {
		t.Fatal(err)
	}
	hdr := []byte{0, 0, 0, frameHeaders, flagEndHeaders | flagEndStream, 0, 0, 0, 0}
	block := []byte{0x82, 0x84} // :method GET, :path /
	hdr[2] = byte(len(block))
	emitted := 0
	for i := 0; i < 3000; i++ {
		id := uint32(2*i + 1001)
		hdr[5], hdr[6], hdr[7], hdr[8] = byte(id>>24), byte(id>>16), byte(id>>8), byte(id)
		b := append(append([]byte(nil), hdr...), block...)
		ex, err := p.Feed(protocol.Chunk{Flow: protocol.ToServer, Data: b, Size: int64(len(b)), StartNs: 1, EndNs: 2})
		if err != nil {
			t.Fatal(err)
		}
		emitted += len(ex)
	}
	if emitted < 3000-protocol.MaxPending || len(p.streams) > protocol.MaxPending {
		t.Errorf("%d given up, %d open", emitted, len(p.streams))
	}
}

// A connection tracker that starts parsing at the client's first bytes
// misses the server's SETTINGS when the server spoke first: the exchanges
// must be the same without it.
func TestServerSettingsMissed(t *testing.T) {
	for _, file := range []string{"h2c", "grpc"} {
		c := prototest.Load(t, "testdata/"+file+".jsonl")[0]
		want := run(t, c.Chunks)
		var chunks []protocol.Chunk
		cut := false
		for _, ch := range c.Chunks {
			if ch.Flow == protocol.ToClient && !cut {
				cut = true
				n := 9 + int(ch.Data[2])
				ch.Data, ch.Size, ch.TCPSeq = ch.Data[n:], ch.Size-int64(n), ch.TCPSeq+uint32(n)
				if len(ch.Data) == 0 {
					continue
				}
			}
			chunks = append(chunks, ch)
		}
		if got := run(t, chunks); !reflect.DeepEqual(got, want) {
			t.Errorf("%s:\n%s", file, prototest.Diff(prototest.Summaries(got), prototest.Summaries(want)))
		}
	}
}

// A padded DATA frame whose payload capture did not keep at all.
func TestPaddedDataUncaptured(t *testing.T) {
	c := prototest.Load(t, "testdata/grpc.jsonl")[0]
	p := New()
	for _, ch := range c.Chunks[:4] {
		if _, err := p.Feed(ch); err != nil {
			t.Fatal(err)
		}
	}
	// HEADERS for stream 101 reusing a literal :path, then a padded DATA
	// frame header in one read and its payload, uncaptured, in the next.
	hdr := []byte{0, 0, 2, frameHeaders, flagEndHeaders, 0, 0, 0, 101, 0x82, 0x84}
	data := []byte{0, 0, 10, frameData, flagPadded | flagEndStream, 0, 0, 0, 101}
	if _, err := p.Feed(protocol.Chunk{Flow: protocol.ToServer, Data: append(hdr, data...), Size: int64(len(hdr) + len(data))}); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Feed(protocol.Chunk{Flow: protocol.ToServer, Size: 10}); err != nil {
		t.Fatal(err)
	}
}
