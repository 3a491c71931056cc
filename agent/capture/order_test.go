package capture

import (
	"bytes"
	"math/rand"
	"testing"

	"github.com/deeptrace/deeptrace/agent/event"
)

// calls builds the data events of n calls on one stream starting at seq
// (which may wrap), each split into chunks of at most chunk bytes.
func calls(start uint32, sizes []int, chunk int) (evs []*event.Event, stream []byte) {
	seq := start
	b := byte(0)
	for _, n := range sizes {
		for off := 0; off < n || (n == 0 && off == 0); off += chunk {
			l := min(chunk, n-off)
			p := make([]byte, l)
			for i := range p {
				p[i] = b
				b++
			}
			stream = append(stream, p...)
			evs = append(evs, &event.Event{Kind: event.KindData, Dir: event.Egress, PID: 1, SockID: 7,
				TCPSeq: seq, Size: int64(n), Offset: int64(off), Payload: p})
			if n == 0 {
				break
			}
		}
		seq += uint32(n)
	}
	return evs, stream
}

type sink struct{ evs []*event.Event }

func (s *sink) emit(e *event.Event) { s.evs = append(s.evs, e) }

func (s *sink) bytes() []byte {
	var b bytes.Buffer
	for _, e := range s.evs {
		b.Write(e.Payload)
	}
	return b.Bytes()
}

func TestOrdererRestoresOrder(t *testing.T) {
	for _, start := range []uint32{1000, 0xffffff00} { // and across the wrap
		evs, want := calls(start, []int{10, 5000, 1, 0, 9000, 300, 4096, 17}, 4096)
		// Swap whole calls pairwise, as two threads finishing out of
		// order would; keep each call's chunks in order (one program run
		// writes them).
		var shuffled []*event.Event
		var group []*event.Event
		var groups [][]*event.Event
		for _, e := range evs {
			if e.Offset == 0 && len(group) > 0 {
				groups = append(groups, group)
				group = nil
			}
			group = append(group, e)
		}
		groups = append(groups, group)
		for i := 0; i+1 < len(groups); i += 2 {
			groups[i], groups[i+1] = groups[i+1], groups[i]
		}
		for _, g := range groups {
			shuffled = append(shuffled, g...)
		}
		var s sink
		o := newOrderer(1e6, 1<<20, s.emit)
		// The connection's start gives the stream position.
		o.push(&event.Event{Kind: event.KindConnect, PID: 1, SockID: 7, TCPSeq: start}, 0)
		s.evs = nil
		for i, e := range shuffled {
			o.push(e, uint64(i))
		}
		o.expire(uint64(len(shuffled)) + 10) // within the window: nothing forced
		if !bytes.Equal(s.bytes(), want) {
			t.Fatalf("start %#x: got %d bytes in the wrong order", start, len(s.bytes()))
		}
		if o.gaps != 0 || o.late != 0 || o.heldCount() != 0 || len(o.waiting) != 0 {
			t.Errorf("start %#x: gaps %d late %d held %d", start, o.gaps, o.late, o.heldCount())
		}
	}
}

func TestOrdererUnsyncedWaitsWindow(t *testing.T) {
	evs, want := calls(500, []int{100, 200, 300}, 4096)
	var s sink
	o := newOrderer(1000, 1<<20, s.emit)
	// No connect seen: the second call arrives first.
	o.push(evs[1], 0)
	o.push(evs[0], 10)
	if len(s.evs) != 0 {
		t.Fatalf("released %d events before the window ended", len(s.evs))
	}
	o.expire(500)
	if len(s.evs) != 0 {
		t.Fatal("released before the window")
	}
	o.expire(1001)
	o.push(evs[2], 1002) // in order now: straight through
	if !bytes.Equal(s.bytes(), want) {
		t.Fatal("wrong order")
	}
	if o.gaps != 0 {
		t.Errorf("gaps = %d", o.gaps)
	}
}

func TestOrdererGapAndLate(t *testing.T) {
	evs, _ := calls(0, []int{10, 10, 10, 10}, 4096)
	var s sink
	o := newOrderer(1000, 1<<20, s.emit)
	o.push(&event.Event{Kind: event.KindAccept, PID: 1, SockID: 7, TCPSeq: 0}, 0)
	s.evs = nil
	o.push(evs[0], 1)
	o.push(evs[2], 2) // evs[1] missing: held
	o.push(evs[3], 3)
	if len(s.evs) != 1 {
		t.Fatalf("released %d, want 1 before the gap", len(s.evs))
	}
	o.expire(2000) // the wait ends: 2 and 3 go on over the gap
	if len(s.evs) != 3 || o.gaps != 1 {
		t.Fatalf("after expiry released %d, gaps %d; want 3, 1", len(s.evs), o.gaps)
	}
	o.push(evs[1], 2001) // too late: passed on, counted
	if len(s.evs) != 4 || o.late != 1 {
		t.Fatalf("late event: released %d, late %d", len(s.evs), o.late)
	}
}

func TestOrdererCloseFlushes(t *testing.T) {
	evs, want := calls(0, []int{10, 20, 30}, 4096)
	var s sink
	o := newOrderer(1e9, 1<<20, s.emit)
	o.push(evs[2], 0)
	o.push(evs[1], 1)
	o.push(evs[0], 2)
	o.push(&event.Event{Kind: event.KindClose, PID: 1, SockID: 7}, 3)
	if len(s.evs) != 4 || s.evs[3].Kind != event.KindClose {
		t.Fatalf("close did not flush: %d events", len(s.evs))
	}
	if !bytes.Equal(s.bytes(), want) {
		t.Fatal("flushed out of order")
	}
	if len(o.streams) != 0 {
		t.Errorf("%d streams left after close", len(o.streams))
	}
}

func TestOrdererDirectionsIndependent(t *testing.T) {
	var s sink
	o := newOrderer(1e9, 1<<20, s.emit)
	o.push(&event.Event{Kind: event.KindConnect, PID: 1, SockID: 7, TCPSeq: 100}, 0)
	s.evs = nil
	// Ingress is unsynced: it waits; egress in order goes straight on.
	o.push(&event.Event{Kind: event.KindData, Dir: event.Ingress, PID: 1, SockID: 7, TCPSeq: 5000, Size: 3, Payload: []byte("abc")}, 1)
	o.push(&event.Event{Kind: event.KindData, Dir: event.Egress, PID: 1, SockID: 7, TCPSeq: 100, Size: 2, Payload: []byte("hi")}, 2)
	if len(s.evs) != 1 || s.evs[0].Dir != event.Egress {
		t.Fatalf("want the egress event alone, got %d", len(s.evs))
	}
}

// FuzzOrderer: however calls interleave on arrival, a stream whose events
// arrive within the window comes out whole and in order.
func FuzzOrderer(f *testing.F) {
	f.Add(int64(1), uint32(0))
	f.Add(int64(7), uint32(0xfffffff0))
	f.Fuzz(func(t *testing.T, seed int64, start uint32) {
		r := rand.New(rand.NewSource(seed))
		sizes := make([]int, 1+r.Intn(20))
		for i := range sizes {
			sizes[i] = r.Intn(10000)
		}
		evs, want := calls(start, sizes, 4096)
		// Shuffle by calls.
		var groups [][]*event.Event
		for _, e := range evs {
			if e.Offset == 0 {
				groups = append(groups, nil)
			}
			groups[len(groups)-1] = append(groups[len(groups)-1], e)
		}
		// Records of different calls interleave arbitrarily in the ring
		// (other CPUs); the chunks of one call keep their order.
		var s sink
		o := newOrderer(1e6, 1<<20, s.emit)
		o.push(&event.Event{Kind: event.KindConnect, PID: 1, SockID: 7, TCPSeq: start}, 0)
		s.evs = nil
		n := 0
		for len(groups) > 0 {
			i := r.Intn(len(groups))
			o.push(groups[i][0], 1)
			n++
			if groups[i] = groups[i][1:]; len(groups[i]) == 0 {
				groups = append(groups[:i], groups[i+1:]...)
			}
		}
		o.expire(10)
		if o.heldCount() != 0 || len(o.waiting) != 0 {
			t.Fatalf("after expiry: %d held in %d streams", o.heldCount(), len(o.waiting))
		}
		if !bytes.Equal(s.bytes(), want) || len(s.evs) != n {
			t.Fatalf("%d of %d events, order wrong: %v", len(s.evs), n, !bytes.Equal(s.bytes(), want))
		}
	})
}

// TestOrdererOwnHeld: before the reader gives ring buffer space back, the
// events the orderer holds get their own copy of a borrowed payload;
// the others keep theirs.
func TestOrdererOwnHeld(t *testing.T) {
	evs, want := calls(0, []int{10, 20, 30}, 4096)
	ring := make([]byte, 0, 64) // stands for the ring buffer's mapping
	for _, e := range evs[1:] {
		ring = append(ring, e.Payload...)
		e.Payload = ring[len(ring)-len(e.Payload):]
	}
	inRing := func(p []byte) bool {
		for i := range ring {
			if len(p) > 0 && &p[0] == &ring[i] {
				return true
			}
		}
		return false
	}
	var s sink
	o := newOrderer(1e9, 1<<20, func(e *event.Event) {
		c := *e // the reader copies what it passes on
		s.emit(&c)
	})
	o.push(&event.Event{Kind: event.KindConnect, PID: 1, SockID: 7}, 0)
	s.evs = nil
	o.push(evs[2], 1) // held: the bytes of evs[0] and evs[1] come first
	o.push(evs[1], 2)
	copies := 0
	o.own(inRing, func(p []byte) []byte { copies++; return append([]byte(nil), p...) })
	if copies != 2 {
		t.Fatalf("%d payloads copied, want the 2 held", copies)
	}
	for i := range ring {
		ring[i] = 0xee // the kernel reuses the space
	}
	o.push(evs[0], 3)
	if !bytes.Equal(s.bytes(), want) {
		t.Fatalf("released %q, want %q", s.bytes(), want)
	}
}
