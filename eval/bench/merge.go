package bench

import (
	"container/heap"

	"github.com/deeptrace/deeptrace/agent/event"
)

// timeMerge hands data events on in the order of their system calls
// (entry time) across connections and directions, keeping each stream's
// own order as capture gave it. Capture orders each stream but lets one
// direction run ahead of the other by up to its reorder window; conntrack
// drops response bytes it sees before the connection's first request, so
// without this an HTTP/2 server's first responses (and their HPACK table
// entries) are lost.
type timeMerge struct {
	window  uint64
	streams map[streamKey]*mstream
	h       mheap
	emit    func(*event.Event)
	last    uint64
}

type streamKey struct {
	conn event.ConnKey
	dir  event.Direction
}

type mstream struct {
	q     []*event.Event
	inHep bool
}

type mheap []*mstream

func (h mheap) Len() int           { return len(h) }
func (h mheap) Less(i, j int) bool { return h[i].q[0].EnterNs < h[j].q[0].EnterNs }
func (h mheap) Swap(i, j int)      { h[i], h[j] = h[j], h[i] }
func (h *mheap) Push(x any)        { *h = append(*h, x.(*mstream)) }
func (h *mheap) Pop() any {
	old := *h
	x := old[len(old)-1]
	*h = old[:len(old)-1]
	return x
}

func newTimeMerge(window uint64, emit func(*event.Event)) *timeMerge {
	return &timeMerge{window: window, streams: map[streamKey]*mstream{}, emit: emit}
}

func (m *timeMerge) push(e *event.Event) {
	k := streamKey{e.Key(), e.Dir}
	s := m.streams[k]
	if s == nil {
		s = &mstream{}
		m.streams[k] = s
	}
	s.q = append(s.q, e)
	if !s.inHep {
		s.inHep = true
		heap.Push(&m.h, s)
	}
	if e.ExitNs > m.last {
		m.last = e.ExitNs
	}
	m.release(m.last - min(m.last, m.window))
}

// release emits every event that started before until.
func (m *timeMerge) release(until uint64) {
	for len(m.h) > 0 && m.h[0].q[0].EnterNs <= until {
		s := m.h[0]
		e := s.q[0]
		s.q[0] = nil
		s.q = s.q[1:]
		if len(s.q) == 0 {
			heap.Pop(&m.h)
			s.inHep = false
			s.q = nil
		} else {
			heap.Fix(&m.h, 0)
		}
		m.emit(e)
		if e.Kind == event.KindClose {
			for _, d := range []event.Direction{0, event.Egress, event.Ingress} {
				if st := m.streams[streamKey{e.Key(), d}]; st != nil && !st.inHep {
					delete(m.streams, streamKey{e.Key(), d})
				}
			}
		}
	}
}

func (m *timeMerge) flush() { m.release(^uint64(0)) }
