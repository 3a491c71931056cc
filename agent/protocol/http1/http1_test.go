package http1

import (
	"fmt"
	"reflect"
	"strings"
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/prototest"
)

func firstByte(flow protocol.Flow, b byte) bool {
	if flow == protocol.ToServer {
		return b >= 'A' && b <= 'Z'
	}
	return b == 'H'
}

// Recorded with: go run ./agent/protocol/internal/record/cmd/record -scenario http1
// Connection 1 is net/http's client (keep-alive, chunked request body,
// Expect: 100-continue, HEAD), 2 a hand-written pipeline, 3 HTTP/1.0; the
// server is always net/http.
var nethttpWant = map[int][]string{
	1: {
		`0 "GET /users/42" 200 err=false req=108@1 resp=132@2`,
		`1 "GET /missing" 404 err=false req=80@3 resp=176@4`,
		`2 "GET /fail" 500 err=true req=77@5 resp=173@6`,
		`3 "GET /big" 200 err=false req=76@7 resp=300121@8`,
		`4 "GET /stream" 200 err=false req=79@11 resp=15205@12`,
		`5 "POST /orders" 201 err=false req=162@13 resp=137@14`,
		`6 "POST /orders" 201 err=false req=149@15 resp=137@19`,
		`7 "POST /orders" 201 err=false req=5124@20 resp=164@21`,
		`8 "HEAD /big" 200 err=false req=77@24 resp=121@25`,
	},
	2: {
		`0 "GET /users/1" 200 err=false req=36@26 resp=131@27`,
		`1 "GET /users/2" 200 err=false req=36@26 resp=131@27`,
		`2 "POST /orders" 201 err=false req=60@26 resp=136@27`,
		`3 "GET /users/3" 200 err=false req=36@26 resp=131@27`,
	},
	3: {
		`0 "GET /users/7" 200 err=false req=25@28 resp=131@29`,
	},
}

func TestRecorded(t *testing.T) {
	conns := prototest.Load(t, "testdata/nethttp.jsonl")
	for _, c := range conns {
		ex, err := prototest.Run(New(), c.Chunks)
		if err != nil {
			t.Fatalf("conn %d: %v", c.ID, err)
		}
		prototest.Check(t, c.Chunks, ex, firstByte)
		got := prototest.Summaries(ex)
		if d := prototest.Diff(got, nethttpWant[c.ID]); d != "" {
			t.Errorf("conn %d:\n%s", c.ID, d)
		}
		for name, chunks := range map[string][]protocol.Chunk{
			"bytes": prototest.Bytes(c.Chunks),
			"split": prototest.Split(c.Chunks, 1),
		} {
			ex2, err := prototest.Run(New(), chunks)
			if err != nil {
				t.Fatalf("conn %d %s: %v", c.ID, name, err)
			}
			if !reflect.DeepEqual(ex, ex2) {
				t.Errorf("conn %d %s:\n%s", c.ID, name, prototest.Diff(prototest.Summaries(ex2), got))
			}
		}
		prototest.CheckMerged(t, New(), c.Chunks, ex, false)
	}
}

func TestRecordedDetails(t *testing.T) {
	conns := prototest.Load(t, "testdata/nethttp.jsonl")
	ex, err := prototest.Run(New(), conns[0].Chunks)
	if err != nil {
		t.Fatal(err)
	}
	e := ex[0]
	if e.Method != "GET" || e.Path != "/users/42" || e.Tags["http.status_code"] != "200" || e.Tags["http.host"] == "" {
		t.Errorf("exchange 0: %+v", e)
	}
	if want := []string{"42", "orders", "abc123"}; !reflect.DeepEqual(e.Values, want) {
		t.Errorf("values %q, want %q", e.Values, want)
	}
	// JSON bodies: the request's values, then the response's.
	if want := []string{"42", "book-9781", "30"}; !reflect.DeepEqual(ex[5].Values, want) {
		t.Errorf("POST values %q, want %q", ex[5].Values, want)
	}
	// Pipelined requests share one read: their TCP positions differ by
	// the sizes of the requests before them.
	ex, err = prototest.Run(New(), conns[1].Chunks)
	if err != nil {
		t.Fatal(err)
	}
	for i := 1; i < len(ex); i++ {
		if d := ex[i].ReqTCPSeq - ex[i-1].ReqTCPSeq; int64(d) != ex[i-1].ReqBytes {
			t.Errorf("request %d starts %d bytes after %d, want %d", i, d, i-1, ex[i-1].ReqBytes)
		}
		if d := ex[i].RespTCPSeq - ex[i-1].RespTCPSeq; int64(d) != ex[i-1].RespBytes {
			t.Errorf("response %d starts %d bytes after %d, want %d", i, d, i-1, ex[i-1].RespBytes)
		}
	}
}

// Truncated capture: the bodies are counted, not seen, so exchanges stay
// the same as long as each read's headers were kept.
func TestTruncated(t *testing.T) {
	conns := prototest.Load(t, "testdata/nethttp.jsonl")
	for _, c := range []int{0, 2} {
		ex, err := prototest.Run(New(), prototest.Truncate(conns[c].Chunks, 200))
		if err != nil {
			t.Fatalf("conn %d: %v", conns[c].ID, err)
		}
		if d := prototest.Diff(prototest.Summaries(ex), nethttpWant[conns[c].ID]); d != "" {
			t.Errorf("conn %d:\n%s", conns[c].ID, d)
		}
		// Headers cut too: the request and status lines still name the
		// exchanges; sizes of cut messages are then those of their reads.
		ex, err = prototest.Run(New(), prototest.Truncate(conns[c].Chunks, 40))
		if err != nil {
			t.Fatalf("conn %d: %v", conns[c].ID, err)
		}
		if len(ex) != len(nethttpWant[conns[c].ID]) {
			t.Fatalf("conn %d: %d exchanges, want %d", conns[c].ID, len(ex), len(nethttpWant[conns[c].ID]))
		}
		for i, e := range ex {
			want := nethttpWant[conns[c].ID][i]
			if got := fmt.Sprintf("%d %q %d", e.Seq, e.Operation, e.StatusCode); !strings.HasPrefix(want, got+" ") {
				t.Errorf("conn %d: got %s, want %s", conns[c].ID, got, want)
			}
		}
	}
}

func chunk(flow protocol.Flow, s string) protocol.Chunk {
	return protocol.Chunk{Flow: flow, Data: []byte(s), Size: int64(len(s)), StartNs: 1, EndNs: 2}
}

func TestCases(t *testing.T) {
	req, resp := protocol.ToServer, protocol.ToClient
	for _, tc := range []struct {
		name    string
		chunks  []protocol.Chunk
		want    []string
		wantErr bool
	}{
		{"body until close", []protocol.Chunk{
			chunk(req, "GET /a HTTP/1.0\r\n\r\n"),
			chunk(resp, "HTTP/1.0 200 OK\r\n\r\nabc"), chunk(resp, "def"),
		}, []string{`0 "GET /a" 200 err=false req=19@0 resp=25@0`}, false},
		{"chunked response with trailers", []protocol.Chunk{
			chunk(req, "GET /a HTTP/1.1\r\n\r\n"),
			chunk(resp, "HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"),
		}, []string{`0 "GET /a" 503 err=true req=19@0 resp=70@0`}, false},
		{"no response", []protocol.Chunk{
			chunk(req, "GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n"),
			chunk(resp, "HTTP/1.1 204 No Content\r\n\r\n"),
		}, []string{`0 "GET /a" 204 err=false req=19@0 resp=27@0`, `1 "GET /b" 0 err=false req=19@0 resp=0@0 noresp`}, false},
		{"absolute form", []protocol.Chunk{chunk(req, "GET http://h:8080/x/9f86d081884c7d65?q=1 HTTP/1.1\r\n\r\n")},
			[]string{`0 "GET /x/9f86d081884c7d65" 0 err=false req=53@0 resp=0@0 noresp`}, false},
		{"garbage", []protocol.Chunk{chunk(req, "\x16\x03\x01\x02\x00\x01\x00")}, nil, true},
		{"bad status", []protocol.Chunk{chunk(req, "GET / HTTP/1.1\r\n\r\n"), chunk(resp, "SSH-2.0-OpenSSH_9.2\r\n")},
			nil, true},
		{"upgrade", []protocol.Chunk{
			chunk(req, "GET / HTTP/1.1\r\nUpgrade: websocket\r\n\r\n"),
			chunk(resp, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"),
			chunk(resp, "\x81\x05hello"),
		}, []string{`0 "GET /" 101 err=false req=38@0 resp=56@0`}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := New()
			var got []protocol.Exchange
			var err error
			for _, c := range tc.chunks {
				var ex []protocol.Exchange
				ex, err = p.Feed(c)
				got = append(got, ex...)
				if err != nil {
					break
				}
			}
			if err == nil {
				got = append(got, p.Flush()...)
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err %v, want error %v", err, tc.wantErr)
			}
			if d := prototest.Diff(prototest.Summaries(got), tc.want); d != "" {
				t.Error(d)
			}
		})
	}
}

func TestHeadersTooLarge(t *testing.T) {
	p := New()
	big := "GET / HTTP/1.1\r\nX: " + string(make([]byte, protocol.MaxBuffer))
	p.Feed(chunk(protocol.ToServer, big))
	if _, err := p.Feed(chunk(protocol.ToServer, "more")); err == nil {
		t.Fatal("want an error for headers beyond MaxBuffer")
	}
}

func TestPendingBound(t *testing.T) {
	prototest.CheckPendingBound(t, New(), []byte("GET /x HTTP/1.1\r\n\r\n"), 3000)
}

// curl upgrades its first request to h2c and sends the second as an
// HTTP/2 stream; the server is x/net's h2c handler around net/http.
func TestUpgradeH2C(t *testing.T) {
	c := prototest.Load(t, "testdata/h2cupgrade.jsonl")[0]
	for name, chunks := range map[string][]protocol.Chunk{
		"recorded": c.Chunks, "bytes": prototest.Bytes(c.Chunks), "split": prototest.Split(c.Chunks, 2),
	} {
		ex, err := prototest.Run(New(), chunks)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := []string{
			`0 "GET /users/42" 200 err=false req=192@1 resp=84@2`,
			`1 "GET /missing" 404 err=false req=50@5 resp=87@6`,
		}
		if d := prototest.Diff(prototest.Summaries(ex), want); d != "" {
			t.Errorf("%s:\n%s", name, d)
		}
		if ex[0].Protocol != "http2" || ex[0].Tags["http.upgrade"] != "h2c" || !reflect.DeepEqual(ex[0].Values, []string{"42", "upgrade"}) {
			t.Errorf("%s: upgraded exchange %+v", name, ex[0])
		}
	}
}
