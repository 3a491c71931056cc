package protocol

import (
	"fmt"
	"sync/atomic"

	"github.com/deeptrace/deeptrace/schemas"
)

// Set is the protocols the agent parses, changeable while it runs (the
// central configuration's "protocols"). The zero value, and a nil *Set,
// parse everything. It is safe for concurrent use: the configuration
// poller writes it, connection tracking reads it on every connection.
type Set struct {
	v atomic.Pointer[setState]
}

type setState struct {
	gen  uint64
	only map[schemas.Protocol]bool // nil: all
}

// Selectable lists the protocols a Set may name. ProtocolUnknown is the
// request/response turn-taking of connections no parser recognises.
var Selectable = []schemas.Protocol{schemas.ProtocolHTTP1, schemas.ProtocolHTTP2, schemas.ProtocolGRPC,
	schemas.ProtocolRedis, schemas.ProtocolMySQL, schemas.ProtocolPostgres, schemas.ProtocolUnknown}

// Select replaces the set: only ps are parsed from now on; none means
// all. It fails, leaving the set as it was, on a protocol not in
// Selectable.
func (s *Set) Select(ps ...schemas.Protocol) error {
	var only map[schemas.Protocol]bool
	if len(ps) > 0 {
		only = map[schemas.Protocol]bool{}
		for _, p := range ps {
			if !selectable(p) {
				return fmt.Errorf("protocol %q: want one of %v", p, Selectable)
			}
			only[p] = true
		}
	}
	for {
		old := s.v.Load()
		next := &setState{only: only, gen: 1}
		if old != nil {
			next.gen = old.gen + 1
		}
		if s.v.CompareAndSwap(old, next) {
			return nil
		}
	}
}

func selectable(p schemas.Protocol) bool {
	for _, q := range Selectable {
		if p == q {
			return true
		}
	}
	return false
}

// Generation changes with every Select; a reader that saw one generation
// knows nothing changed while it still reads it.
func (s *Set) Generation() uint64 {
	if s == nil {
		return 0
	}
	if st := s.v.Load(); st != nil {
		return st.gen
	}
	return 0
}

// Keeps says whether exchanges of protocol p are turned into spans.
func (s *Set) Keeps(p schemas.Protocol) bool {
	if s == nil {
		return true
	}
	st := s.v.Load()
	return st == nil || st.only == nil || st.only[p]
}

// Parses says whether a connection detected as protocol p is parsed at
// all: an HTTP/2 connection is when gRPC is selected, since gRPC calls
// are found per stream inside HTTP/2.
func (s *Set) Parses(p schemas.Protocol) bool {
	if p == schemas.ProtocolHTTP2 && s.Keeps(schemas.ProtocolGRPC) {
		return true
	}
	return s.Keeps(p)
}

// Selected returns the selected protocols, nil when all are.
func (s *Set) Selected() []schemas.Protocol {
	if s == nil {
		return nil
	}
	st := s.v.Load()
	if st == nil || st.only == nil {
		return nil
	}
	var out []schemas.Protocol
	for _, p := range Selectable {
		if st.only[p] {
			out = append(out, p)
		}
	}
	return out
}
