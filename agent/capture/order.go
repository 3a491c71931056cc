package capture

import (
	"github.com/deeptrace/deeptrace/agent/event"
)

// orderer puts each connection's data events back in the order of their
// bytes on the stream, per direction. The ring buffer holds them in the
// order their exit programs ran; two threads working one socket can finish
// in the other order than the kernel queued their bytes. The TCP sequence
// of each call says where its bytes sit, so an event that arrives ahead of
// a gap waits (up to a window) for the events that fill it.
//
// The first data event of a stream whose start was not seen (no connect or
// accept) waits a window too: an earlier call may be right behind it.
type orderer struct {
	window  uint64 // ns an event may wait
	streams map[streamKey]*stream
	emit    func(*event.Event)

	late  uint64 // events behind their stream's position, passed on as they came
	gaps  uint64 // waits that ended without the missing bytes
	swept uint64 // time of the last sweep of idle streams
}

type streamKey struct {
	conn event.ConnKey
	dir  event.Direction
}

type heldEvent struct {
	e  *event.Event
	at uint64 // arrival, monotonic ns
}

type stream struct {
	synced bool   // pos is known
	pos    uint32 // sequence of the next byte expected
	cur    uint32 // sequence of the last call passed on: its later chunks follow it
	curOK  bool
	held   []heldEvent // sorted by sequence, then offset
	seen   uint64
}

const sweepEvery = 10e9   // ns
const idleStream = 120e9 // ns without events before a stream's state is dropped

func newOrderer(window uint64, emit func(*event.Event)) *orderer {
	return &orderer{window: window, streams: make(map[streamKey]*stream), emit: emit}
}

// seqLess orders by position on the stream (modulo 2^32), then by offset
// within a call.
func seqLess(a, b *event.Event) bool {
	d := int32(a.TCPSeq - b.TCPSeq)
	return d < 0 || (d == 0 && a.Offset < b.Offset)
}

func (o *orderer) get(k streamKey, now uint64) *stream {
	s := o.streams[k]
	if s == nil {
		s = &stream{}
		o.streams[k] = s
	}
	s.seen = now
	return s
}

// push takes one event in arrival order; now is the monotonic time.
func (o *orderer) push(e *event.Event, now uint64) {
	switch e.Kind {
	case event.KindData:
		o.data(e, now)
	case event.KindConnect, event.KindAccept:
		// A connection starts on this socket: what we knew of it is stale.
		// Its send sequence is known from here on.
		o.flushConn(e.Key())
		s := o.get(streamKey{e.Key(), event.Egress}, now)
		s.synced, s.pos = true, e.TCPSeq
		o.emit(e)
	case event.KindClose:
		// Calls on the socket finished before close() began, so their
		// events are already here: pass them on, then the close.
		o.flushConn(e.Key())
		delete(o.streams, streamKey{e.Key(), event.Egress})
		delete(o.streams, streamKey{e.Key(), event.Ingress})
		o.emit(e)
	default:
		o.emit(e)
	}
}

func (s *stream) fits(e *event.Event) bool {
	if e.Offset > 0 && s.curOK && e.TCPSeq == s.cur {
		return true // a later chunk of the call just passed on
	}
	return s.synced && e.Offset == 0 && e.TCPSeq == s.pos
}

func (o *orderer) release(s *stream, e *event.Event) {
	if e.Offset == 0 || !s.curOK || e.TCPSeq != s.cur {
		s.cur, s.curOK = e.TCPSeq, true
		if e.Size > 0 {
			s.pos = e.TCPSeq + uint32(e.Size)
		} else {
			s.pos = e.TCPSeq
		}
		s.synced = true
	}
	o.emit(e)
}

func (o *orderer) data(e *event.Event, now uint64) {
	s := o.get(streamKey{e.Key(), e.Dir}, now)
	if len(s.held) == 0 && s.fits(e) {
		o.release(s, e)
		return
	}
	if s.synced && int32(e.TCPSeq-s.pos) < 0 && !s.fits(e) {
		// Behind the stream: its place has passed. Keep it rather than
		// lose it, and count it.
		o.late++
		o.emit(e)
		return
	}
	i := len(s.held)
	for i > 0 && seqLess(e, s.held[i-1].e) {
		i--
	}
	s.held = append(s.held, heldEvent{})
	copy(s.held[i+1:], s.held[i:])
	s.held[i] = heldEvent{e: e, at: now}
	o.drain(s)
}

// drain passes on the held events that now fit.
func (o *orderer) drain(s *stream) {
	n := 0
	for n < len(s.held) && s.fits(s.held[n].e) {
		o.release(s, s.held[n].e)
		n++
	}
	if n > 0 {
		s.held = append(s.held[:0], s.held[n:]...)
	}
}

// expire ends the waits older than the window: the head of the stream
// goes on, over the gap, and what fits behind it follows.
func (o *orderer) expire(now uint64) {
	for _, s := range o.streams {
		for len(s.held) > 0 {
			oldest := s.held[0].at
			for _, h := range s.held[1:] {
				oldest = min(oldest, h.at)
			}
			if now-oldest < o.window {
				break
			}
			h := s.held[0]
			s.held = s.held[1:]
			if s.synced {
				o.gaps++
			}
			o.release(s, h.e)
			o.drain(s)
		}
		if len(s.held) == 0 {
			s.held = nil
		}
	}
	if now-o.swept > sweepEvery {
		o.swept = now
		for k, s := range o.streams {
			if len(s.held) == 0 && now-s.seen > idleStream {
				delete(o.streams, k)
			}
		}
	}
}

// flushConn passes on everything held for a connection, in stream order.
func (o *orderer) flushConn(c event.ConnKey) {
	for _, d := range []event.Direction{event.Egress, event.Ingress} {
		s := o.streams[streamKey{c, d}]
		if s == nil {
			continue
		}
		for len(s.held) > 0 {
			h := s.held[0]
			s.held = s.held[1:]
			if !s.fits(h.e) && s.synced {
				o.gaps++
			}
			o.release(s, h.e)
			o.drain(s)
		}
	}
}

// flushAll passes on everything held (at shutdown).
func (o *orderer) flushAll() {
	for k := range o.streams {
		o.flushConn(k.conn)
	}
}

// heldCount is the number of events waiting.
func (o *orderer) heldCount() int {
	n := 0
	for _, s := range o.streams {
		n += len(s.held)
	}
	return n
}
