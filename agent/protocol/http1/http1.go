// Package http1 parses HTTP/1.0 and HTTP/1.1 connections into exchanges:
// keep-alive, pipelining, Content-Length and chunked bodies, interim 1xx
// responses (Expect: 100-continue), HEAD, bodies that end at close, and
// bodies longer than what capture kept (counted, never buffered).
package http1

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/http2"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/pending"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/stream"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/values"
	"github.com/deeptrace/deeptrace/schemas"
)

// ErrUpgraded is returned for bytes after a 101 Switching Protocols or a
// successful CONNECT: the connection no longer speaks HTTP/1.
var ErrUpgraded = errors.New("http1: connection switched protocols")

// untilClose is the skip of a body that ends when the connection closes.
const untilClose = math.MaxInt64 / 4

// Parser parses one HTTP/1 connection. Create it with New.
type Parser struct {
	reqS, respS stream.Stream
	req         reqDecoder
	resp        respDecoder
	q           pending.Queue
	seq         uint64
	out         []protocol.Exchange
	upgraded    bool
	// h2 parses the connection once a request upgraded it to h2c;
	// h2At is where HTTP/2 starts in the server's flow.
	h2   *http2.Parser
	h2At int64
}

// New returns a parser for one connection.
func New() *Parser {
	p := &Parser{}
	p.req.p = p
	p.resp.p = p
	return p
}

// Protocol returns schemas.ProtocolHTTP1.
func (p *Parser) Protocol() schemas.Protocol { return schemas.ProtocolHTTP1 }

// Feed consumes one chunk.
func (p *Parser) Feed(c protocol.Chunk) ([]protocol.Exchange, error) {
	p.out = nil
	if p.h2 != nil {
		return p.h2.Feed(c)
	}
	if p.upgraded {
		return nil, ErrUpgraded
	}
	var err error
	if c.Flow == protocol.ToServer {
		err = p.reqS.Feed(c, &p.req)
	} else {
		base := p.respS.Fed()
		err = p.respS.Feed(c, &p.resp)
		if err == nil && p.h2 != nil {
			// The rest of the read that carried the 101 is HTTP/2.
			out := p.out
			off := p.h2At - base
			if off < c.Size {
				rest := c
				rest.Size -= off
				rest.TCPSeq += uint32(off)
				rest.Data = c.Data[min(off, int64(len(c.Data))):]
				ex, h2err := p.h2.Feed(rest)
				out = append(out, ex...)
				err = h2err
			}
			return out, err
		}
	}
	if err != nil {
		if p.upgraded {
			err = ErrUpgraded
		}
		return p.out, fmt.Errorf("http1: %w", err)
	}
	return p.out, nil
}

// Flush ends the bodies that last until close and returns the requests
// still waiting.
func (p *Parser) Flush() []protocol.Exchange {
	p.out = nil
	if p.h2 != nil {
		return append(p.q.Drain(), p.h2.Flush()...)
	}
	if p.req.cur != nil && p.req.state != stStart {
		p.req.End(p.reqS.Last())
	}
	if p.resp.state != stStart && p.resp.started {
		p.resp.End(p.respS.Last())
	}
	return append(p.out, p.q.Drain()...)
}

type state uint8

const (
	stStart state = iota
	stBody
	stChunkSize
	stTrailer
)

// head is what the parser keeps of a start line and headers.
type head struct {
	contentLength int64 // -1 when absent
	chunked       bool
	host          string
	upgrade       bool
	upgradeH2C    bool
	closeConn     bool
	body          bodyKind
}

// bodyKind says whether a body is worth looking into for identifiers.
type bodyKind uint8

const (
	bodyOpaque bodyKind = iota
	bodyJSON
	bodyForm
	bodySniff // no or a text content type: JSON if it looks like it
)

func kindOf(contentType []byte) bodyKind {
	ct := bytes.ToLower(contentType)
	switch {
	case bytes.Contains(ct, []byte("json")):
		return bodyJSON
	case bytes.HasPrefix(ct, []byte("application/x-www-form-urlencoded")):
		return bodyForm
	case bytes.HasPrefix(ct, []byte("text/plain")):
		return bodySniff
	}
	return bodyOpaque
}

// bodyValues adds the identifiers of a captured body prefix.
func bodyValues(vs []string, kind bodyKind, body []byte) []string {
	switch kind {
	case bodyJSON:
		return values.FromJSON(vs, body)
	case bodyForm:
		return values.FromQuery(vs, string(body))
	case bodySniff:
		if b := bytes.TrimLeft(body, " \r\n\t"); len(b) > 0 && (b[0] == '{' || b[0] == '[') {
			return values.FromJSON(vs, b)
		}
	}
	return vs
}

// scanHead finds the end of the header block of b and reads the headers
// the parser needs. It returns 0 when the block is incomplete.
func scanHead(b []byte, h *head) (lineEnd, n int, err error) {
	end := bytes.Index(b, []byte("\r\n\r\n"))
	if end < 0 {
		return 0, 0, nil
	}
	n = end + 4
	lineEnd = bytes.IndexByte(b, '\n')
	h.contentLength = -1
	h.body = bodySniff
	rest := b[lineEnd+1 : end+2]
	for len(rest) > 0 {
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		line := rest[:i]
		rest = rest[i+1:]
		if len(line) > 0 && line[len(line)-1] == '\r' {
			line = line[:len(line)-1]
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			continue
		}
		name := line[:colon]
		val := bytes.TrimSpace(line[colon+1:])
		switch len(name) {
		case 4:
			if asciiEqualFold(name, "host") {
				h.host = string(val)
			}
		case 7:
			if asciiEqualFold(name, "upgrade") {
				h.upgrade = true
				h.upgradeH2C = bytes.EqualFold(bytes.TrimSpace(val), []byte("h2c"))
			}
		case 12:
			if asciiEqualFold(name, "content-type") {
				h.body = kindOf(val)
			}
		case 10:
			if asciiEqualFold(name, "connection") && bytes.Contains(bytes.ToLower(val), []byte("close")) {
				h.closeConn = true
			}
		case 14:
			if asciiEqualFold(name, "content-length") {
				v, perr := strconv.ParseInt(string(val), 10, 64)
				if perr != nil || v < 0 {
					return 0, 0, fmt.Errorf("bad Content-Length %q", truncate(val))
				}
				h.contentLength = v
			}
		case 17:
			if asciiEqualFold(name, "transfer-encoding") && bytes.Contains(bytes.ToLower(val), []byte("chunked")) {
				h.chunked = true
			}
		}
	}
	return lineEnd, n, nil
}

func asciiEqualFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}

func truncate(b []byte) string {
	if len(b) > 32 {
		b = b[:32]
	}
	return string(b)
}

// checkMethod reports whether b can start a request line.
func checkMethod(b []byte) error {
	for i := 0; i < len(b) && i < 21; i++ {
		c := b[i]
		if c == ' ' {
			if i == 0 {
				break
			}
			return nil
		}
		if c < 'A' || c > 'Z' {
			if c != '-' && c != '_' {
				break
			}
		}
		if i == len(b)-1 {
			return nil // need more
		}
	}
	return fmt.Errorf("not an HTTP request line: %q", truncate(b))
}

// chunkStep decodes one chunk-size line or trailer line of a chunked body.
func chunkStep(b []byte, st *state) (n int, skip int64, end bool, err error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if len(b) > 4096 {
			return 0, 0, false, errors.New("chunk size line too long")
		}
		return 0, 0, false, nil
	}
	line := bytes.TrimRight(b[:i], "\r")
	if *st == stTrailer {
		if len(line) == 0 {
			*st = stStart
			return i + 1, 0, true, nil
		}
		return i + 1, 0, false, nil
	}
	if j := bytes.IndexByte(line, ';'); j >= 0 {
		line = line[:j]
	}
	size, perr := strconv.ParseInt(string(bytes.TrimSpace(line)), 16, 64)
	if perr != nil || size < 0 || size > 1<<40 {
		return 0, 0, false, fmt.Errorf("bad chunk size %q", truncate(line))
	}
	if size == 0 {
		*st = stTrailer
		return i + 1, 0, false, nil
	}
	return i + 1, size + 2, false, nil
}

type reqDecoder struct {
	p     *Parser
	lost  bool // after a gap: skip reads until one starts a request
	state state
	cur   *protocol.Exchange
	start int64
	kind  bodyKind
	body  []byte
}

// Skipped keeps the start of a body worth looking into.
func (d *reqDecoder) Skipped(b []byte) {
	if d.kind != bodyOpaque && d.cur != nil {
		d.body = values.AppendBody(d.body, b)
	}
}

func (d *reqDecoder) Decode(b []byte, at stream.Mark) (int, int64, bool, error) {
	switch d.state {
	case stChunkSize, stTrailer:
		return chunkStep(b, &d.state)
	}
	if err := checkMethod(b); err != nil {
		if d.lost {
			return len(b), 0, false, nil
		}
		return 0, 0, false, err
	}
	d.lost = false
	var h head
	lineEnd, n, err := scanHead(b, &h)
	if err != nil || n == 0 {
		return 0, 0, false, err
	}
	if err := d.begin(b[:lineEnd], h.host, at); err != nil {
		return 0, 0, false, err
	}
	d.kind, d.body = h.body, d.body[:0]
	switch {
	case h.chunked:
		d.state = stChunkSize
		return n, 0, false, nil
	case h.contentLength > 0:
		d.state = stBody
		return n, h.contentLength, true, nil
	}
	d.state = stBody
	return n, 0, true, nil
}

// begin starts the exchange of the request whose start line is line.
func (d *reqDecoder) begin(line []byte, host string, at stream.Mark) error {
	parts := strings.SplitN(strings.TrimRight(string(line), "\r"), " ", 3)
	if len(parts) < 2 || len(parts) == 3 && !strings.HasPrefix(parts[2], "HTTP/1.") {
		return fmt.Errorf("bad request line %q", truncate(line))
	}
	method, target := parts[0], parts[1]
	path, query := target, ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path, query = path[:i], path[i+1:]
	}
	if strings.HasPrefix(path, "http://") || strings.HasPrefix(path, "https://") {
		rest := path[strings.Index(path, "//")+2:]
		if i := strings.IndexByte(rest, '/'); i >= 0 {
			path = rest[i:]
		} else {
			path = "/"
		}
	}
	e := &protocol.Exchange{
		Protocol:   schemas.ProtocolHTTP1,
		Seq:        d.p.seq,
		ReqStartNs: at.StartNs,
		ReqTCPSeq:  at.TCPSeq,
		ReqTID:     at.TID,
		ReqGoID:    at.GoID,
		Method:     method,
		Path:       path,
		Operation:  method + " " + path,
		Tags:       map[string]string{"http.method": method},
	}
	if len(parts) == 3 {
		e.Tags["http.flavor"] = strings.TrimPrefix(parts[2], "HTTP/")
	}
	if host != "" {
		e.Tags["http.host"] = host
	}
	e.Values = values.FromPath(e.Values, path)
	e.Values = values.FromQuery(e.Values, query)
	d.p.seq++
	if dropped := d.p.q.Push(e); dropped != nil {
		dropped.NoResponse = true
		d.p.out = append(d.p.out, *dropped)
	}
	d.cur = e
	d.start = at.Pos
	return nil
}

func (d *reqDecoder) End(last stream.Mark) {
	d.state = stStart
	if d.cur == nil {
		return
	}
	if len(d.body) > 0 {
		d.cur.Values = bodyValues(d.cur.Values, d.kind, d.body)
		d.body = d.body[:0]
	}
	d.cur.ReqEndNs = last.EndNs
	d.cur.ReqBytes = last.Pos + 1 - d.start
	d.cur = nil
}

func (d *reqDecoder) Lost(partial []byte, first, last stream.Mark) bool {
	if d.state == stStart && len(partial) > 0 {
		// Capture cut the headers: the request line may still be whole
		// enough to name the request.
		line := partial
		if i := bytes.IndexByte(line, '\n'); i >= 0 {
			line = line[:i]
		}
		if checkMethod(line) != nil || d.begin(line, "", first) != nil {
			return true
		}
		d.state = stBody
	}
	if d.state != stStart {
		d.End(last)
	}
	d.lost = true
	return true
}

type respDecoder struct {
	p       *Parser
	lost    bool // after a gap: skip reads until one starts a response
	state   state
	cur     *protocol.Exchange
	start   int64
	started bool // the current response (interim ones included) began
	kind    bodyKind
	body    []byte
}

// Skipped keeps the start of a body worth looking into.
func (d *respDecoder) Skipped(b []byte) {
	if d.kind != bodyOpaque && d.cur != nil {
		d.body = values.AppendBody(d.body, b)
	}
}

func (d *respDecoder) Decode(b []byte, at stream.Mark) (int, int64, bool, error) {
	if d.p.h2 != nil {
		return len(b), 0, false, nil // HTTP/2 now: Feed hands it on
	}
	switch d.state {
	case stChunkSize, stTrailer:
		return chunkStep(b, &d.state)
	}
	if len(b) < 12 && bytes.HasPrefix([]byte("HTTP/1."), b[:min(len(b), 7)]) {
		return 0, 0, false, nil
	}
	if len(b) < 12 || !bytes.HasPrefix(b, []byte("HTTP/1.")) || b[8] != ' ' {
		if d.lost {
			return len(b), 0, false, nil
		}
		return 0, 0, false, fmt.Errorf("not an HTTP status line: %q", truncate(b))
	}
	d.lost = false
	var h head
	lineEnd, n, err := scanHead(b, &h)
	if err != nil || n == 0 {
		return 0, 0, false, err
	}
	code, cerr := strconv.Atoi(string(b[9:12]))
	if cerr != nil || code < 100 || code > 999 {
		return 0, 0, false, fmt.Errorf("bad status code %q", b[9:12])
	}
	reason := ""
	if lineEnd > 13 {
		reason = strings.TrimRight(string(b[13:lineEnd]), "\r")
	}
	e := d.p.q.Peek()
	if !d.started {
		d.started = true
		d.start = at.Pos
		if e != nil {
			e.RespStartNs = at.StartNs
			e.RespTCPSeq = at.TCPSeq
			e.RespTID = at.TID
			e.RespGoID = at.GoID
		}
	}
	if code >= 100 && code < 200 && code != 101 {
		// Interim response: the final one follows.
		return n, 0, false, nil
	}
	d.cur = e
	d.kind, d.body = h.body, d.body[:0]
	if e != nil {
		e.StatusCode = code
		e.StatusText = reason
		e.Error = code >= 500
		e.Tags["http.status_code"] = strconv.Itoa(code)
	}
	switch {
	case code == 101 && h.upgradeH2C && e != nil && d.p.q.Len() == 1:
		// h2c: the request is stream 1 and its answer comes in HTTP/2.
		d.p.q.Pop()
		d.p.h2 = http2.NewUpgraded(*e)
		d.p.h2At = at.Pos + int64(n)
		d.cur, d.started = nil, false
		d.state = stStart
		return n, 0, false, nil
	case code == 101 || (e != nil && e.Method == "CONNECT" && code < 300):
		d.p.upgraded = true
		d.state = stBody
		return n, 0, true, nil
	case e != nil && e.Method == "HEAD", code == 204, code == 304:
		d.state = stBody
		return n, 0, true, nil
	case h.chunked:
		d.state = stChunkSize
		return n, 0, false, nil
	case h.contentLength >= 0:
		d.state = stBody
		return n, h.contentLength, true, nil
	}
	d.state = stBody
	return n, untilClose, true, nil
}

func (d *respDecoder) End(last stream.Mark) {
	d.state = stStart
	d.started = false
	e := d.cur
	d.cur = nil
	if e == nil || d.p.q.Peek() != e {
		return // a response nobody asked for (capture began mid-connection)
	}
	d.p.q.Pop()
	if len(d.body) > 0 {
		e.Values = bodyValues(e.Values, d.kind, d.body)
		d.body = d.body[:0]
	}
	e.RespEndNs = last.EndNs
	e.RespBytes = last.Pos + 1 - d.start
	if e.ReqEndNs == 0 {
		// The response came before the request's body ended (an early
		// error reply): the request ends where we last saw it.
		e.ReqEndNs = e.RespStartNs
	}
	d.p.out = append(d.p.out, *e)
	if d.p.req.cur == e {
		d.p.req.cur = nil
	}
}

func (d *respDecoder) Lost(partial []byte, first, last stream.Mark) bool {
	if d.state == stStart && len(partial) >= 12 && bytes.HasPrefix(partial, []byte("HTTP/1.")) {
		// Capture cut the headers: salvage the status line.
		if code, err := strconv.Atoi(string(partial[9:12])); err == nil {
			e := d.p.q.Peek()
			if !d.started && e != nil {
				d.start = first.Pos
				e.RespStartNs, e.RespTCPSeq, e.RespTID, e.RespGoID = first.StartNs, first.TCPSeq, first.TID, first.GoID
			}
			d.started = true
			if e != nil && (code < 100 || code >= 200) {
				e.StatusCode = code
				e.Error = code >= 500
				e.Tags["http.status_code"] = strconv.Itoa(code)
				if i := bytes.IndexByte(partial, '\n'); i > 13 {
					e.StatusText = strings.TrimRight(string(partial[13:i]), "\r")
				}
			}
		}
	}
	if d.state != stStart || d.started {
		if d.cur == nil {
			d.cur = d.p.q.Peek()
		}
		d.End(last)
	}
	d.lost = true
	return true
}
