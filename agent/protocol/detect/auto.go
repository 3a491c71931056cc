package detect

import (
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/turn"
	"github.com/deeptrace/deeptrace/schemas"
)

// Auto is a parser for a connection whose protocol is not known yet: it
// detects it from the first chunk with data (waiting for one flowing to
// the server when the server's first words say nothing) and, when the
// protocol's parser fails, carries on with turn-taking from the next
// chunk, numbering its exchanges after those already made.
type Auto struct {
	p        protocol.Parser
	nextSeq  uint64
	held     []protocol.Chunk // chunks seen before the protocol was known
	heldSize int
	// Err is the error that made the parser fall back, if any.
	Err error
}

// NewAuto returns a parser that detects the protocol itself.
func NewAuto() *Auto { return &Auto{} }

// Protocol returns the detected protocol, ProtocolUnknown until then and
// after a fallback.
func (a *Auto) Protocol() schemas.Protocol {
	if a.p == nil {
		return schemas.ProtocolUnknown
	}
	return a.p.Protocol()
}

// Feed consumes one chunk; it never fails.
func (a *Auto) Feed(c protocol.Chunk) ([]protocol.Exchange, error) {
	if a.p == nil {
		if len(c.Data) == 0 {
			return nil, nil
		}
		proto := Detect(c.Data, c.Flow)
		if proto == schemas.ProtocolUnknown && c.Flow == protocol.ToClient && len(a.held) < 4 && a.heldSize < protocol.MaxBuffer {
			// A server greeting we do not know: decide on the request.
			a.held = append(a.held, c)
			a.heldSize += len(c.Data)
			return nil, nil
		}
		a.p = New(proto)
		var out []protocol.Exchange
		held := a.held
		a.held = nil
		for _, h := range append(held, c) {
			ex, _ := a.feed(h)
			out = append(out, ex...)
		}
		return out, nil
	}
	return a.feed(c)
}

func (a *Auto) feed(c protocol.Chunk) ([]protocol.Exchange, error) {
	ex, err := a.p.Feed(c)
	a.note(ex)
	if err != nil && a.p.Protocol() != schemas.ProtocolUnknown {
		a.Err = err
		rest := a.p.Flush()
		a.note(rest)
		ex = append(ex, rest...)
		a.p = turn.NewAt(a.nextSeq)
	}
	return ex, nil
}

func (a *Auto) note(ex []protocol.Exchange) {
	for _, e := range ex {
		if e.Seq >= a.nextSeq {
			a.nextSeq = e.Seq + 1
		}
	}
}

// Flush returns what is pending.
func (a *Auto) Flush() []protocol.Exchange {
	if a.p == nil {
		return nil
	}
	ex := a.p.Flush()
	a.note(ex)
	return ex
}
