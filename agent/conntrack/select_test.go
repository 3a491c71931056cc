package conntrack

import (
	"fmt"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/detect"
	"github.com/deeptrace/deeptrace/schemas"
)

// conv plays request/response exchanges on one connection, as one end
// sees them, with increasing times and TCP positions.
type conv struct {
	tr              *Tracker
	base            event.Event
	at              uint64
	reqSeq, respSeq uint32
}

func newConv(tr *Tracker, role event.Role, sock uint64, local, remote string) *conv {
	return &conv{tr: tr, at: 1000, reqSeq: 1, respSeq: 1, base: event.Event{PID: 5, TID: 6, Comm: "svc", SockID: sock,
		Local: netip.MustParseAddrPort(local), Remote: netip.MustParseAddrPort(remote), Role: role}}
}

// call delivers one system call; the request flows out of a client.
func (c *conv) call(toServer bool, data string) {
	e := c.base
	e.Kind, e.EnterNs, e.ExitNs, e.Size, e.Payload = event.KindData, c.at, c.at+10, int64(len(data)), []byte(data)
	c.at += 1e6 // past the tracker's hold
	clientSide := c.base.Role == event.RoleClient
	if toServer {
		e.TCPSeq, e.Dir = c.reqSeq, event.Ingress
		if clientSide {
			e.Dir = event.Egress
		}
		c.reqSeq += uint32(len(data))
	} else {
		e.TCPSeq, e.Dir = c.respSeq, event.Egress
		if clientSide {
			e.Dir = event.Ingress
		}
		c.respSeq += uint32(len(data))
	}
	c.tr.Handle(&e)
}

func (c *conv) exchange(req, resp string) {
	c.call(true, req)
	c.call(false, resp)
}

func count(s *sink, p schemas.Protocol) int {
	n := 0
	for _, sp := range s.spans {
		if sp.Protocol == p {
			n++
		}
	}
	return n
}

// A change of selected protocols reaches connections already open
// (keep-alive): a protocol dropped stops making spans and correlation
// hints from its next call; one selected again is parsed from its next
// request, even when the change came in the middle of a request.
func TestProtocolSelectionOnOpenConnections(t *testing.T) {
	var sel protocol.Set
	s := &sink{}
	tr, err := New(Config{Host: "h", Hold: 1, Wall: func(m uint64) int64 { return int64(m) }, Parse: &sel}, detect.Registry{}, s)
	if err != nil {
		t.Fatal(err)
	}
	web := newConv(tr, event.RoleServer, 1, "127.0.0.1:8080", "127.0.0.1:40000")
	cache := newConv(tr, event.RoleClient, 2, "127.0.0.1:40001", "127.0.0.1:6379")
	const httpResp = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	round := func(i int) {
		web.exchange(fmt.Sprintf("GET /items/%d HTTP/1.1\r\nHost: x\r\n\r\n", i), httpResp)
		cache.exchange("*2\r\n$3\r\nGET\r\n$1\r\nk\r\n", "$1\r\nv\r\n")
	}
	for i := range 3 {
		round(i)
	}
	// A span is emitted once the next call shows the exchange complete.
	if h, r := count(s, schemas.ProtocolHTTP1), count(s, schemas.ProtocolRedis); h < 2 || r < 2 {
		t.Fatalf("all protocols: %d http1, %d redis spans", h, r)
	}

	if err := sel.Select(schemas.ProtocolRedis); err != nil {
		t.Fatal(err)
	}
	h0, r0, hints0 := count(s, schemas.ProtocolHTTP1), count(s, schemas.ProtocolRedis), len(s.inflight)
	for i := 3; i < 8; i++ {
		round(i)
	}
	if h := count(s, schemas.ProtocolHTTP1) - h0; h > 1 { // the one pending at the change may complete
		t.Errorf("http1 not selected: %d new http1 spans", h)
	}
	if r := count(s, schemas.ProtocolRedis) - r0; r < 4 {
		t.Errorf("redis selected: only %d new redis spans", r)
	}
	if n := len(s.inflight) - hints0; n > 0 {
		t.Errorf("%d correlation hints for requests of a protocol not parsed", n)
	}

	// HTTP back, in the middle of a request split over two reads: parsing
	// resumes with the next request, whole.
	web.call(true, "GET /items/split HTTP/1.1\r\n")
	if err := sel.Select(schemas.ProtocolHTTP1); err != nil {
		t.Fatal(err)
	}
	web.call(true, "Host: x\r\n\r\n")
	web.call(false, httpResp)
	h1, r1 := count(s, schemas.ProtocolHTTP1), count(s, schemas.ProtocolRedis)
	for i := 8; i < 12; i++ {
		round(i)
	}
	web.exchange("GET /last HTTP/1.1\r\nHost: x\r\n\r\n", httpResp)
	tr.Flush()
	var got []string
	for _, sp := range s.spans[h1+r1:] {
		if sp.Protocol == schemas.ProtocolHTTP1 {
			got = append(got, sp.Path)
		}
	}
	if want := "/items/8 /items/9 /items/10 /items/11 /last"; strings.Join(got, " ") != want {
		t.Errorf("http1 spans after it was selected again: %v, want %s", got, want)
	}
	if r := count(s, schemas.ProtocolRedis) - r1; r > 1 {
		t.Errorf("redis no longer selected: %d new redis spans", r)
	}
	st := tr.Stats()
	if st.Unparsed == 0 {
		t.Errorf("stats: %+v, want unparsed requests counted", st)
	}
}

// A connection whose protocol no parser recognises is parsed by
// turn-taking only when "unknown" is selected.
func TestUnknownProtocolSelection(t *testing.T) {
	for _, c := range []struct {
		sel  []schemas.Protocol
		want bool
	}{{nil, true}, {[]schemas.Protocol{schemas.ProtocolHTTP1}, false}, {[]schemas.Protocol{schemas.ProtocolUnknown}, true}} {
		var sel protocol.Set
		if err := sel.Select(c.sel...); err != nil {
			t.Fatal(err)
		}
		s := &sink{}
		tr, _ := New(Config{Host: "h", Hold: 1, Wall: func(m uint64) int64 { return int64(m) }, Parse: &sel}, detect.Registry{}, s)
		x := newConv(tr, event.RoleClient, 3, "127.0.0.1:40002", "127.0.0.1:9999")
		for i := range 3 {
			x.exchange(fmt.Sprintf("hello %d\n", i), "world\n")
		}
		tr.Flush()
		if got := count(s, schemas.ProtocolUnknown) > 0; got != c.want {
			t.Errorf("selected %v: turn-taking spans %v, want %v", c.sel, got, c.want)
		}
	}
	var sel protocol.Set
	if err := sel.Select("smtp"); err == nil {
		t.Error("an unknown protocol name was selected")
	}
}

// The payload kept per call follows PayloadBytes from the next call on:
// a long path is cut to what was kept, the request's size is still the
// real one.
func TestPayloadBytesChangesLive(t *testing.T) {
	var keep atomic.Int64
	s := &sink{}
	tr, _ := New(Config{Host: "h", Hold: 1, MaxCallBytes: 4096, PayloadBytes: &keep, Wall: func(m uint64) int64 { return int64(m) }}, detect.Registry{}, s)
	web := newConv(tr, event.RoleServer, 4, "127.0.0.1:8080", "127.0.0.1:40003")
	path := "/p/" + strings.Repeat("a", 600)
	req := "GET " + path + " HTTP/1.1\r\nHost: x\r\n\r\n"
	resp := "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	web.exchange(req, resp)
	keep.Store(256)
	web.exchange(req, resp)
	keep.Store(0)
	web.exchange(req, resp)
	tr.Flush()
	if len(s.spans) != 3 {
		t.Fatalf("%d spans", len(s.spans))
	}
	for i, want := range []int{len(path), 256 - len("GET "), len(path)} {
		if sp := s.spans[i]; len(sp.Path) != want || sp.ReqBytes != int64(len(req)) {
			t.Errorf("span %d: path of %d bytes (want %d), request %d bytes (want %d)", i, len(sp.Path), want, sp.ReqBytes, len(req))
		}
	}
	if st := tr.Stats(); st.Trimmed != 1 {
		t.Errorf("trimmed calls %d, want 1", st.Trimmed)
	}
}
