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
	maxCall int64  // payload bytes captured per call (Config.MaxCallBytes)
	streams map[streamKey]*stream
	waiting map[streamKey]*stream // streams holding events
	nheld   int
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
	// The call passed on last: its sequence, the offset its next chunk
	// must have, and whether more chunks are due (then nothing else on
	// the stream may pass: another CPU's record can land between two
	// chunks of one call in the ring).
	cur     uint32
	curNext int64
	open    bool
	held    []heldEvent // sorted by sequence, then offset
	seen    uint64
}

const sweepEvery = 10e9  // ns
const idleStream = 120e9 // ns without events before a stream's state is dropped

func newOrderer(window uint64, maxCall int, emit func(*event.Event)) *orderer {
	return &orderer{window: window, maxCall: int64(maxCall), streams: make(map[streamKey]*stream),
		waiting: make(map[streamKey]*stream), emit: emit}
}

// seqLess orders by position on the stream (modulo 2^32), then by offset
// within a call; at one position a call that moved nothing (an error, an
// interrupted call) goes before one that moved bytes from there.
func seqLess(a, b *event.Event) bool {
	if d := int32(a.TCPSeq - b.TCPSeq); d != 0 {
		return d < 0
	}
	if a.Offset != b.Offset {
		return a.Offset < b.Offset
	}
	return a.Size <= 0 && b.Size > 0
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

// push takes one event in arrival order; now is the monotonic time. The
// orderer keeps a copy of e only when it must hold it: the caller may
// reuse e once push returns.
func (o *orderer) push(e *event.Event, now uint64) {
	switch e.Kind {
	case event.KindData:
		o.data(e, now)
	case event.KindConnect, event.KindAccept:
		// A connection starts on this socket: what we knew of it is stale.
		// Its send sequence is known from here on.
		o.flushConn(e.Key())
		s := o.get(streamKey{e.Key(), event.Egress}, now)
		s.synced, s.pos, s.open = true, e.TCPSeq, false
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
	if s.open {
		return e.TCPSeq == s.cur && e.Offset == s.curNext
	}
	return s.synced && e.Offset == 0 && e.TCPSeq == s.pos
}

// captured is how many payload bytes the kernel side copies of a call.
func (o *orderer) captured(e *event.Event) int64 {
	return min(max(e.Size, 0), o.maxCall)
}

func (o *orderer) release(s *stream, e *event.Event) {
	if s.open && e.TCPSeq == s.cur && e.Offset == s.curNext {
		s.curNext += int64(len(e.Payload))
	} else {
		// A new call (or, when forced, whatever came first).
		s.cur, s.curNext = e.TCPSeq, e.Offset+int64(len(e.Payload))
		s.pos = e.TCPSeq + uint32(max(e.Size, 0))
		s.synced = true
	}
	s.open = len(e.Payload) > 0 && s.curNext < o.captured(e)
	o.emit(e)
}

func (o *orderer) data(e *event.Event, now uint64) {
	s := o.get(streamKey{e.Key(), e.Dir}, now)
	if len(s.held) == 0 && s.fits(e) {
		o.release(s, e)
		return
	}
	if s.behind(e) {
		// Its place has passed. Keep it rather than lose it, and count it.
		o.late++
		o.emit(e)
		return
	}
	c := new(event.Event)
	*c = *e
	e = c
	i := len(s.held)
	for i > 0 && seqLess(e, s.held[i-1].e) {
		i--
	}
	s.held = append(s.held, heldEvent{})
	copy(s.held[i+1:], s.held[i:])
	s.held[i] = heldEvent{e: e, at: now}
	o.nheld++
	o.waiting[streamKey{e.Key(), e.Dir}] = s
	o.drain(s)
}

// behind reports an event whose place on the stream has passed.
func (s *stream) behind(e *event.Event) bool {
	return s.synced && int32(e.TCPSeq-s.pos) < 0 && !(s.open && e.TCPSeq == s.cur && e.Offset >= s.curNext)
}

// drain passes on the held events that now fit, and those left behind.
func (o *orderer) drain(s *stream) {
	n := 0
	for n < len(s.held) {
		e := s.held[n].e
		if s.fits(e) {
			o.release(s, e)
		} else if s.behind(e) {
			o.late++
			o.emit(e)
		} else {
			break
		}
		n++
	}
	if n > 0 {
		s.held = append(s.held[:0], s.held[n:]...)
		o.nheld -= n
	}
}

// expire ends the waits older than the window: the head of the stream
// goes on, over the gap, and what fits behind it follows.
func (o *orderer) expire(now uint64) {
	for k, s := range o.waiting {
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
			o.nheld--
			if s.synced {
				o.gaps++
			}
			o.release(s, h.e)
			o.drain(s)
		}
		if len(s.held) == 0 {
			s.held = nil
			delete(o.waiting, k)
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
			o.nheld--
			if !s.fits(h.e) && s.synced {
				o.gaps++
			}
			o.release(s, h.e)
			o.drain(s)
		}
		delete(o.waiting, streamKey{c, d})
	}
}

// flushAll passes on everything held (at shutdown).
func (o *orderer) flushAll() {
	for k := range o.waiting {
		o.flushConn(k.conn)
	}
}

// own gives each held event whose payload borrowed (in the ring buffer)
// a copy of its own, made by cp: the borrowed memory is about to go.
func (o *orderer) own(borrowed func([]byte) bool, cp func([]byte) []byte) {
	for _, s := range o.waiting {
		for _, h := range s.held {
			if borrowed(h.e.Payload) {
				h.e.Payload = cp(h.e.Payload)
			}
		}
	}
}

// heldCount is the number of events waiting.
func (o *orderer) heldCount() int { return o.nheld }

// oldest is the earliest time an event it holds has bytes at
// (event.Event.DataAt); ok is false when it holds none.
func (o *orderer) oldest() (at uint64, ok bool) {
	for _, s := range o.waiting {
		for _, h := range s.held {
			if a := h.e.DataAt(); !ok || a < at {
				at, ok = a, true
			}
		}
	}
	return at, ok
}
