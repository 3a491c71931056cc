// Package redis parses Redis connections (RESP2 and RESP3) into exchanges:
// pipelining, MULTI/EXEC, errors, every RESP3 type (maps, sets, pushes,
// attributes, big numbers, verbatim strings, streamed strings and
// aggregates), and pub/sub, whose pushed messages are not replies.
//
// Bulk strings are counted, not buffered: only the first few arguments of
// a command and short replies are read. The arguments of AUTH, HELLO and
// the other commands that carry credentials never reach an exchange.
package redis

import (
	"bytes"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/pending"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/stream"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/values"
	"github.com/deeptrace/deeptrace/schemas"
)

const (
	// maxArgs is how many arguments of a command the parser reads.
	maxArgs = 8
	// maxArgLen is the longest argument (or short reply) it reads; longer
	// ones are skipped.
	maxArgLen = 512
	// maxDepth bounds the nesting of aggregates.
	maxDepth = 64
	// maxStatement bounds db.statement.
	maxStatement = 256
)

// Parser parses one Redis connection. Create it with New.
type Parser struct {
	reqS, respS stream.Stream
	req, resp   decoder
	q           pending.Queue
	seq         uint64
	out         []protocol.Exchange
	// subscribed is set once the connection entered pub/sub mode; then
	// RESP2 arrays that carry messages are pushes, not replies.
	subscribed bool
	// extraConfirms counts the (un)subscribe confirmations still due for
	// the channels of the last (UN)SUBSCRIBE after its first one.
	extraConfirms int
}

// New returns a parser for one connection.
func New() *Parser {
	p := &Parser{}
	p.req = decoder{p: p, client: true}
	p.resp = decoder{p: p}
	return p
}

// Protocol returns schemas.ProtocolRedis.
func (p *Parser) Protocol() schemas.Protocol { return schemas.ProtocolRedis }

// Feed consumes one chunk.
func (p *Parser) Feed(c protocol.Chunk) ([]protocol.Exchange, error) {
	p.out = nil
	var err error
	if c.Flow == protocol.ToServer {
		err = p.reqS.Feed(c, &p.req)
	} else {
		err = p.respS.Feed(c, &p.resp)
	}
	if err != nil {
		return p.out, fmt.Errorf("redis: %w", err)
	}
	return p.out, nil
}

// Flush returns the commands still waiting for a reply.
func (p *Parser) Flush() []protocol.Exchange {
	p.out = nil
	if p.req.inMsg {
		p.req.End(p.reqS.Last())
	}
	if p.resp.inMsg {
		p.resp.End(p.respS.Last())
	}
	return append(p.out, p.q.Drain()...)
}

type level struct {
	left   int64 // elements still to come; -1 for streamed aggregates
	attr   bool  // an attribute: the value it decorates follows
	stream bool  // a streamed string: ';' chunks until ';0'
}

// decoder reads RESP values in one direction.
type decoder struct {
	p      *Parser
	client bool
	lost   bool

	inMsg   bool
	start   stream.Mark
	stack   []level
	top     byte     // type of the top-level value
	elems   int      // scalar elements seen at depth <= 1
	args    []string // client: the first arguments; server: the first scalar
	errText string
	cur     *protocol.Exchange
}

var errNotRESP = errors.New("not RESP")

func validType(c byte) bool {
	switch c {
	case '+', '-', ':', '$', '*', '_', ',', '#', '!', '=', '(', '%', '~', '>', '|', ';', '.':
		return true
	}
	return false
}

func (d *decoder) Decode(b []byte, at stream.Mark) (int, int64, bool, error) {
	if !d.inMsg {
		if err := d.checkStart(b); err != nil {
			if d.lost {
				return len(b), 0, false, nil
			}
			return 0, 0, false, err
		}
		d.lost = false
		if d.client && b[0] != '*' {
			return d.inline(b, at)
		}
		d.begin(at, b[0])
	}
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if len(b) > 4096 {
			return 0, 0, false, fmt.Errorf("RESP line longer than 4096 bytes")
		}
		return 0, 0, false, nil
	}
	if i < 2 || b[i-1] != '\r' {
		return 0, 0, false, fmt.Errorf("RESP line without CRLF: %q", trunc(b[:i]))
	}
	line := b[1 : i-1]
	n := i + 1
	t := b[0]
	if !validType(t) {
		return 0, 0, false, fmt.Errorf("bad RESP type %q", t)
	}
	inStream := len(d.stack) > 0 && d.stack[len(d.stack)-1].stream
	if inStream && t != ';' {
		return 0, 0, false, fmt.Errorf("bad streamed string chunk %q", t)
	}
	switch t {
	case '+', ':', ',', '(', '#', '_':
		d.scalar(line)
		return n, 0, d.elemDone(), nil
	case '-':
		d.errorText(line)
		d.scalar(line)
		return n, 0, d.elemDone(), nil
	case '.':
		// End of a streamed aggregate.
		if len(d.stack) == 0 || d.stack[len(d.stack)-1].left != -1 {
			return 0, 0, false, errors.New("RESP end marker outside a streamed aggregate")
		}
		d.stack = d.stack[:len(d.stack)-1]
		return n, 0, d.elemDone(), nil
	case '$', '!', '=', ';':
		if len(line) == 1 && line[0] == '?' && t == '$' {
			if err := d.push(level{left: -1, stream: true}); err != nil {
				return 0, 0, false, err
			}
			return n, 0, false, nil
		}
		size, err := parseLen(line)
		if err != nil {
			return 0, 0, false, err
		}
		if t == ';' {
			if !inStream {
				return 0, 0, false, errors.New("RESP chunk outside a streamed string")
			}
			if size == 0 {
				d.stack = d.stack[:len(d.stack)-1]
				return n, 0, d.elemDone(), nil
			}
			return n, size + 2, false, nil
		}
		if size < 0 {
			d.scalar(nil)
			return n, 0, d.elemDone(), nil
		}
		if d.wants() && size <= maxArgLen {
			if int64(len(b)) < int64(n)+size+2 {
				return 0, 0, false, nil
			}
			body := b[n : int64(n)+size]
			if b[int64(n)+size] != '\r' || b[int64(n)+size+1] != '\n' {
				return 0, 0, false, errors.New("RESP bulk string without CRLF")
			}
			if t == '!' {
				d.errorText(body)
			}
			d.scalar(body)
			return n + int(size) + 2, 0, d.elemDone(), nil
		}
		if t == '!' {
			d.errorText([]byte("(blob error)"))
		}
		d.scalar(nil)
		return n, size + 2, d.elemDone(), nil
	case '*', '%', '~', '>', '|':
		if len(line) == 1 && line[0] == '?' {
			if err := d.push(level{left: -1}); err != nil {
				return 0, 0, false, err
			}
			return n, 0, false, nil
		}
		count, err := parseLen(line)
		if err != nil {
			return 0, 0, false, err
		}
		if t == '%' || t == '|' {
			count *= 2
		}
		if count <= 0 {
			if t == '|' {
				return n, 0, false, nil
			}
			return n, 0, d.elemDone(), nil
		}
		if err := d.push(level{left: count, attr: t == '|'}); err != nil {
			return 0, 0, false, err
		}
		return n, 0, false, nil
	}
	return 0, 0, false, fmt.Errorf("bad RESP type %q", t)
}

// checkStart rejects bytes that cannot start a message.
func (d *decoder) checkStart(b []byte) error {
	c := b[0]
	if d.client {
		if c == '*' {
			if len(b) > 1 && (b[1] < '0' || b[1] > '9') {
				return fmt.Errorf("%w: %q", errNotRESP, trunc(b))
			}
			return nil
		}
		// Inline command: a word of letters.
		for i := 0; i < len(b) && i < 32; i++ {
			c := b[i]
			if c == ' ' || c == '\r' || c == '\n' {
				if i == 0 {
					break
				}
				return nil
			}
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
				break
			}
			if i == len(b)-1 {
				return nil
			}
		}
		return fmt.Errorf("%w: %q", errNotRESP, trunc(b))
	}
	if !validType(c) || c == ';' || c == '.' {
		return fmt.Errorf("%w: %q", errNotRESP, trunc(b))
	}
	return nil
}

func (d *decoder) push(l level) error {
	if len(d.stack) >= maxDepth {
		return fmt.Errorf("RESP nesting deeper than %d", maxDepth)
	}
	d.stack = append(d.stack, l)
	return nil
}

// wants reports whether the next bulk string is worth reading.
func (d *decoder) wants() bool {
	if d.client {
		return len(d.stack) == 1 && len(d.args) < maxArgs
	}
	return len(d.stack) <= 1 && d.elems < maxArgs
}

func (d *decoder) scalar(v []byte) {
	if len(d.stack) <= 1 {
		d.elems++
		if len(d.args) < maxArgs {
			if len(v) > maxArgLen {
				v = v[:maxArgLen]
			}
			d.args = append(d.args, string(v))
		}
	}
}

func (d *decoder) errorText(v []byte) {
	if d.errText == "" && len(d.stack) == 0 {
		if len(v) > 128 {
			v = v[:128]
		}
		d.errText = string(v)
	}
}

// elemDone counts a completed element and reports whether it completed
// the top-level value.
func (d *decoder) elemDone() bool {
	for len(d.stack) > 0 {
		top := &d.stack[len(d.stack)-1]
		if top.left < 0 {
			return false
		}
		top.left--
		if top.left > 0 {
			return false
		}
		attr := top.attr
		d.stack = d.stack[:len(d.stack)-1]
		if attr {
			return false
		}
	}
	return true
}

func parseLen(b []byte) (int64, error) {
	if len(b) == 0 || len(b) > 19 {
		return 0, fmt.Errorf("bad RESP length %q", trunc(b))
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil || n < -1 || n > 1<<32 {
		return 0, fmt.Errorf("bad RESP length %q", trunc(b))
	}
	return n, nil
}

func trunc(b []byte) string {
	if len(b) > 32 {
		b = b[:32]
	}
	return string(b)
}

func (d *decoder) begin(at stream.Mark, t byte) {
	d.inMsg = true
	d.start = at
	d.top = t
	d.stack = d.stack[:0]
	d.elems = 0
	d.args = d.args[:0]
	d.errText = ""
	if d.client {
		e := &protocol.Exchange{
			Protocol:   schemas.ProtocolRedis,
			Seq:        d.p.seq,
			ReqStartNs: at.StartNs,
			ReqTCPSeq:  at.TCPSeq,
			ReqTID:     at.TID,
			ReqGoID:    at.GoID,
		}
		d.p.seq++
		if dropped := d.p.q.Push(e); dropped != nil {
			dropped.NoResponse = true
			d.p.out = append(d.p.out, *dropped)
		}
		d.cur = e
	}
}

// inline reads an inline command (telnet style): one line of words.
func (d *decoder) inline(b []byte, at stream.Mark) (int, int64, bool, error) {
	i := bytes.IndexByte(b, '\n')
	if i < 0 {
		if len(b) > 4096 {
			return 0, 0, false, errors.New("inline command longer than 4096 bytes")
		}
		return 0, 0, false, nil
	}
	d.begin(at, 'i')
	for _, w := range strings.Fields(string(b[:i])) {
		if len(d.args) >= maxArgs {
			break
		}
		d.args = append(d.args, w)
	}
	return i + 1, 0, true, nil
}

// secret lists the commands whose arguments may carry credentials.
var secret = map[string]bool{"AUTH": true, "HELLO": true, "MIGRATE": true, "ACL": true, "CONFIG": true}

func (d *decoder) End(last stream.Mark) {
	d.inMsg = false
	if d.client {
		d.endRequest(last)
		return
	}
	d.endReply(last)
}

func (d *decoder) endRequest(last stream.Mark) {
	e := d.cur
	d.cur = nil
	if e == nil {
		return
	}
	e.ReqEndNs = last.EndNs
	e.ReqBytes = last.Pos + 1 - d.start.Pos
	if len(d.args) == 0 {
		e.Operation = "?"
		return
	}
	cmd := strings.ToUpper(d.args[0])
	e.Operation = cmd
	e.Method = cmd
	e.Tags = map[string]string{"db.system": "redis", "db.operation": cmd}
	stmt := cmd
	if secret[cmd] {
		if (cmd == "ACL" || cmd == "CONFIG") && len(d.args) > 1 {
			stmt += " " + strings.ToUpper(d.args[1])
		}
	} else {
		for _, a := range d.args[1:] {
			stmt += " " + a
			if len(stmt) > maxStatement {
				stmt = stmt[:maxStatement]
				break
			}
		}
		if len(d.args) > 1 {
			// The key, and its parts that look like ids ("user:42" → "42"),
			// which the request that led here may carry alone.
			key := d.args[1]
			e.Values = values.Add(e.Values, key)
			for _, part := range strings.FieldsFunc(key, func(r rune) bool { return r == ':' || r == '/' || r == '{' || r == '}' }) {
				if part != key && values.LooksLikeID(part) {
					e.Values = values.Add(e.Values, part)
				}
			}
		}
	}
	e.Tags["db.statement"] = stmt
}

func isSubscribe(s string) bool {
	switch strings.ToLower(s) {
	case "subscribe", "psubscribe", "ssubscribe", "unsubscribe", "punsubscribe", "sunsubscribe":
		return true
	}
	return false
}

func (d *decoder) endReply(last stream.Mark) {
	p := d.p
	kind := ""
	if len(d.args) > 0 {
		kind = strings.ToLower(d.args[0])
	}
	head := p.q.Peek()
	push := d.top == '>' || (p.subscribed && d.top == '*' && kind != "pong")
	if push {
		if !isSubscribe(kind) {
			return // a pub/sub message or invalidation: nobody asked
		}
		p.subscribed = true
		if head == nil || !isSubscribe(head.Operation) {
			if p.extraConfirms > 0 {
				p.extraConfirms--
			}
			return
		}
		if p.extraConfirms > 0 && !strings.EqualFold(head.Operation, kind) {
			p.extraConfirms--
			return
		}
	}
	if head == nil {
		return // a reply to a command sent before capture began
	}
	p.q.Pop()
	head.RespStartNs = d.start.StartNs
	head.RespTCPSeq = d.start.TCPSeq
	head.RespTID = d.start.TID
	head.RespGoID = d.start.GoID
	head.RespEndNs = last.EndNs
	head.RespBytes = last.Pos + 1 - d.start.Pos
	if d.errText != "" {
		head.Error = true
		head.StatusText = d.errText
	} else if !secret[head.Operation] {
		// What the reply returns, for correlation: ids among its first
		// values (not for the commands whose replies may hold secrets:
		// CONFIG GET requirepass).
		for _, v := range d.args {
			head.Values = values.FromCell(head.Values, v)
		}
	}
	if isSubscribe(head.Operation) && isSubscribe(kind) {
		p.subscribed = true
		if n := len(head.Tags["db.statement"]); n > 0 {
			p.extraConfirms = len(strings.Fields(head.Tags["db.statement"])) - 2
			if p.extraConfirms < 0 {
				p.extraConfirms = 0
			}
		}
	}
	if head.ReqEndNs == 0 {
		head.ReqEndNs = head.ReqStartNs
	}
	p.out = append(p.out, *head)
}

func (d *decoder) Lost(partial []byte, first, last stream.Mark) bool {
	if !d.inMsg && len(partial) > 0 && d.checkStart(partial) == nil {
		if d.client && partial[0] != '*' {
			d.begin(first, 'i')
		} else {
			d.begin(first, partial[0])
		}
	}
	if d.inMsg {
		d.End(last)
	}
	d.stack = d.stack[:0]
	d.lost = true
	return true
}
