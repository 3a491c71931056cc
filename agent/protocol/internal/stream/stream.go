// Package stream frames one direction of a connection for the protocol
// parsers: it buffers the captured bytes of an incomplete message, skips the
// bytes a parser does not need to see (bodies, row data) without buffering
// them, counts the bytes capture did not keep, and remembers which system
// call carried each byte so a parser can time its messages.
package stream

import (
	"errors"
	"fmt"

	"github.com/deeptrace/deeptrace/agent/protocol"
)

// Mark locates one byte of the stream: its position counted from the first
// byte the stream saw, its TCP sequence number, and the system call that
// carried it.
type Mark struct {
	Pos            int64
	TCPSeq         uint32
	StartNs, EndNs int64
	TID            uint32
	GoID           uint64
}

// Decoder is one direction's protocol state machine. The stream calls
// Decode with the buffered bytes that follow the last boundary Decode chose.
type Decoder interface {
	// Decode looks at b, which starts at the byte at. It returns how many
	// bytes it consumed (0 and no error: it needs more), how many bytes
	// after those the stream must skip unseen, and whether the current
	// message ends once they are skipped. An error means the bytes are not
	// this protocol.
	Decode(b []byte, at Mark) (n int, skip int64, end bool, err error)
	// End reports the last byte of the message Decode said ends.
	End(last Mark)
	// Lost reports that bytes the stream could not see cover a message
	// boundary. partial is what was buffered of an incomplete message
	// (starting at first; empty when the gap began at a boundary or inside
	// skipped bytes), last the last byte before the stream resumes. The
	// decoder salvages what it can, closes the message in progress and
	// says whether the stream can go on at the start of the next chunk.
	Lost(partial []byte, first, last Mark) bool
}

// BodyWatcher is a Decoder that wants to see the captured bytes it asked
// the stream to skip (the start of a body, to find identifiers in it).
// Bytes capture did not keep are not passed.
type BodyWatcher interface {
	Skipped(b []byte)
}

// ErrLost is returned when uncaptured bytes hide a message boundary and the
// decoder cannot resynchronise.
var ErrLost = errors.New("uncaptured bytes hide a message boundary")

type callMeta struct {
	pos, size      int64
	seq            uint32
	startNs, endNs int64
	tid            uint32
	goid           uint64
}

// Stream is one direction of one connection. The zero value is ready.
type Stream struct {
	buf     []byte
	pos     int64 // position of the first unconsumed byte
	end     int64 // position after the last byte fed
	skip    int64
	endSkip bool // the message ends when skip reaches 0
	calls   []callMeta
	resync  bool // the next chunk starts at a boundary after a loss
	err     error
}

// Pos returns the position of the next byte the decoder will see.
func (s *Stream) Pos() int64 { return s.pos }

// Fed returns the position after the last byte fed.
func (s *Stream) Fed() int64 { return s.end }

// Buffered returns how many captured bytes wait for a complete message.
func (s *Stream) Buffered() int { return len(s.buf) }

// Skipping reports whether the stream is inside bytes the decoder skips.
func (s *Stream) Skipping() bool { return s.skip > 0 }

// Seen reports whether the stream has seen any byte.
func (s *Stream) Seen() bool { return s.end > 0 }

// Mark returns the mark of the byte at pos, which must be within the last
// chunks fed (the ones that still hold unconsumed or just consumed bytes).
func (s *Stream) Mark(pos int64) Mark {
	for i := len(s.calls) - 1; i >= 0; i-- {
		c := &s.calls[i]
		if pos >= c.pos || i == 0 {
			off := pos - c.pos
			return Mark{Pos: pos, TCPSeq: c.seq + uint32(off), StartNs: c.startNs, EndNs: c.endNs, TID: c.tid, GoID: c.goid}
		}
	}
	return Mark{Pos: pos}
}

// Last returns the mark of the last byte fed.
func (s *Stream) Last() Mark { return s.Mark(s.end - 1) }

// Feed gives the stream one chunk and runs the decoder over what it can.
func (s *Stream) Feed(c protocol.Chunk, d Decoder) error {
	if s.err != nil {
		return s.err
	}
	data := c.Data
	size := c.Size
	if size < int64(len(data)) {
		size = int64(len(data))
	}
	if size == 0 {
		return nil
	}
	s.calls = append(s.calls, callMeta{pos: s.end, size: size, seq: c.TCPSeq,
		startNs: c.StartNs, endNs: c.EndNs, tid: c.TID, goid: c.GoID})
	s.end += size
	missing := size - int64(len(data))

	if s.resync {
		s.resync = false
		s.buf = s.buf[:0]
	}
	data = s.consumeSkip(data, d)
	if len(data) > 0 {
		if err := s.decode(data, d); err != nil {
			s.err = err
			return err
		}
	}
	if missing > 0 {
		if len(s.buf) == 0 && s.skip >= missing {
			s.skip -= missing
			s.pos += missing
			if s.skip == 0 && s.endSkip {
				s.endSkip = false
				d.End(s.Mark(s.pos - 1))
			}
		} else {
			// Skip what we can, then the gap hides a boundary.
			if len(s.buf) == 0 && s.skip > 0 {
				s.pos += s.skip
				missing -= s.skip
				s.skip = 0
				if s.endSkip {
					s.endSkip = false
					d.End(s.Mark(s.pos - 1))
				}
			}
			first := s.Mark(s.pos)
			partial := s.buf
			s.skip = 0
			s.endSkip = false
			s.pos = s.end
			ok := d.Lost(partial, first, s.Mark(s.end-1))
			s.buf = s.buf[:0]
			if !ok {
				s.err = ErrLost
				return s.err
			}
			s.resync = true
		}
	}
	s.prune()
	return nil
}

func (s *Stream) consumeSkip(data []byte, d Decoder) []byte {
	if s.skip == 0 || len(s.buf) > 0 {
		return data
	}
	n := s.skip
	if n > int64(len(data)) {
		n = int64(len(data))
	}
	if w, ok := d.(BodyWatcher); ok && n > 0 {
		w.Skipped(data[:n])
	}
	s.skip -= n
	s.pos += n
	data = data[n:]
	if s.skip == 0 && s.endSkip {
		s.endSkip = false
		d.End(s.Mark(s.pos - 1))
	}
	return data
}

func (s *Stream) decode(data []byte, d Decoder) error {
	work := data
	buffered := len(s.buf) > 0
	if buffered {
		s.buf = append(s.buf, data...)
		work = s.buf
	}
	for len(work) > 0 {
		if s.skip > 0 {
			n := s.skip
			if n > int64(len(work)) {
				n = int64(len(work))
			}
			if w, ok := d.(BodyWatcher); ok && n > 0 {
				w.Skipped(work[:n])
			}
			s.skip -= n
			s.pos += n
			work = work[n:]
			if s.skip == 0 && s.endSkip {
				s.endSkip = false
				d.End(s.Mark(s.pos - 1))
			}
			continue
		}
		n, skip, end, err := d.Decode(work, s.Mark(s.pos))
		if err != nil {
			return err
		}
		if n < 0 || n > len(work) || skip < 0 {
			return fmt.Errorf("decoder consumed %d of %d bytes, skip %d", n, len(work), skip)
		}
		if n == 0 && skip == 0 {
			if end {
				d.End(s.Mark(s.pos - 1))
				continue
			}
			break
		}
		s.pos += int64(n)
		work = work[n:]
		s.skip = skip
		s.endSkip = end && skip > 0
		if end && skip == 0 {
			d.End(s.Mark(s.pos - 1))
		}
	}
	if len(work) > protocol.MaxBuffer {
		return fmt.Errorf("incomplete message larger than %d bytes", protocol.MaxBuffer)
	}
	if buffered {
		s.buf = append(s.buf[:0], work...)
	} else {
		s.buf = append(s.buf[:0], work...)
	}
	if cap(s.buf) > 4*protocol.MaxBuffer && len(s.buf) < protocol.MaxBuffer {
		s.buf = append([]byte(nil), s.buf...)
	}
	return nil
}

// prune forgets the calls that hold no byte at or after the one before the
// next unconsumed byte.
func (s *Stream) prune() {
	keep := s.pos - 1
	i := 0
	for i < len(s.calls)-1 && s.calls[i].pos+s.calls[i].size <= keep {
		i++
	}
	if i > 0 {
		s.calls = append(s.calls[:0], s.calls[i:]...)
	}
}
