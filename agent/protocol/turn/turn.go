// Package turn makes exchanges from request/response turn-taking on
// connections whose protocol is unknown, or whose parser lost its way: a
// request is the run of chunks flowing to the server, its response the
// run flowing back, until the client speaks again. It never fails; its
// exchanges say schemas.ProtocolUnknown and carry the tag
// "protocol.inferred"="turn-taking".
//
// Protocols that pipeline or multiplex (HTTP/2, pipelined Redis) make
// fewer, longer exchanges here than they have: that is the price of not
// knowing the protocol.
package turn

import (
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/schemas"
)

// Parser pairs the turns of one connection. Create it with New or NewAt.
type Parser struct {
	seq uint64
	cur *protocol.Exchange // the exchange whose turns are being read
}

// New returns a parser whose first exchange has sequence number 0.
func New() *Parser { return &Parser{} }

// NewAt returns a parser whose first exchange has sequence number seq,
// for a connection another parser began.
func NewAt(seq uint64) *Parser { return &Parser{seq: seq} }

// Protocol returns schemas.ProtocolUnknown.
func (p *Parser) Protocol() schemas.Protocol { return schemas.ProtocolUnknown }

// Feed consumes one chunk; it never fails.
func (p *Parser) Feed(c protocol.Chunk) ([]protocol.Exchange, error) {
	size := max(c.Size, int64(len(c.Data)))
	if size == 0 {
		return nil, nil
	}
	if c.Flow == protocol.ToServer {
		var out []protocol.Exchange
		if p.cur != nil && p.cur.RespStartNs != 0 {
			out = append(out, *p.cur)
			p.cur = nil
		}
		if p.cur == nil {
			p.cur = &protocol.Exchange{
				Protocol:   schemas.ProtocolUnknown,
				Seq:        p.seq,
				ReqStartNs: c.StartNs,
				ReqTCPSeq:  c.TCPSeq,
				ReqTID:     c.TID,
				ReqGoID:    c.GoID,
				Operation:  Operation(c.Data),
				Tags:       map[string]string{"protocol.inferred": "turn-taking"},
			}
			p.seq++
		}
		p.cur.ReqEndNs = c.EndNs
		p.cur.ReqBytes += size
		return out, nil
	}
	if p.cur == nil {
		return nil, nil // the server speaks first (a greeting): no request
	}
	if p.cur.RespStartNs == 0 {
		p.cur.RespStartNs = c.StartNs
		p.cur.RespTCPSeq = c.TCPSeq
		p.cur.RespTID = c.TID
		p.cur.RespGoID = c.GoID
	}
	p.cur.RespEndNs = c.EndNs
	p.cur.RespBytes += size
	return nil, nil
}

// Flush returns the exchange in progress.
func (p *Parser) Flush() []protocol.Exchange {
	if p.cur == nil {
		return nil
	}
	e := *p.cur
	p.cur = nil
	e.NoResponse = e.RespStartNs == 0
	return []protocol.Exchange{e}
}

// Operation names an unknown request by its first word when that is a
// short printable token (text protocols: "get", "STATS", "EHLO"), else
// "unknown".
func Operation(b []byte) string {
	i := 0
	for i < len(b) && i <= 16 {
		c := b[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-' || (i > 0 && c >= '0' && c <= '9') {
			i++
			continue
		}
		break
	}
	if i == 0 || i > 16 || (i < len(b) && b[i] != ' ' && b[i] != '\r' && b[i] != '\n') {
		return "unknown"
	}
	return string(b[:i])
}
