// Package pending holds the requests of a connection that wait for their
// responses, in order, for the protocols that answer in request order.
package pending

import (
	"github.com/deeptrace/deeptrace/agent/protocol"
)

// Queue is a bounded FIFO of exchanges whose response has not completed.
// The zero value is ready.
type Queue struct {
	q    []*protocol.Exchange
	head int
	// Dropped counts requests dropped because the queue was full.
	Dropped uint64
}

// Len returns how many exchanges wait.
func (q *Queue) Len() int { return len(q.q) - q.head }

// Push appends an exchange. When protocol.MaxPending wait already, the
// oldest is dropped and returned so the caller can emit it unanswered.
func (q *Queue) Push(e *protocol.Exchange) (dropped *protocol.Exchange) {
	if q.Len() >= protocol.MaxPending {
		dropped = q.Pop()
		q.Dropped++
	}
	if q.head > 0 && q.head == len(q.q) {
		q.q = q.q[:0]
		q.head = 0
	}
	if q.head > 64 && q.head*2 > len(q.q) {
		n := copy(q.q, q.q[q.head:])
		for i := n; i < len(q.q); i++ {
			q.q[i] = nil
		}
		q.q = q.q[:n]
		q.head = 0
	}
	q.q = append(q.q, e)
	return dropped
}

// Peek returns the oldest exchange, or nil.
func (q *Queue) Peek() *protocol.Exchange {
	if q.Len() == 0 {
		return nil
	}
	return q.q[q.head]
}

// At returns the i-th oldest exchange, or nil.
func (q *Queue) At(i int) *protocol.Exchange {
	if i < 0 || i >= q.Len() {
		return nil
	}
	return q.q[q.head+i]
}

// Pop removes and returns the oldest exchange, or nil.
func (q *Queue) Pop() *protocol.Exchange {
	if q.Len() == 0 {
		return nil
	}
	e := q.q[q.head]
	q.q[q.head] = nil
	q.head++
	return e
}

// Drain removes every exchange, marks it unanswered and returns it.
func (q *Queue) Drain() []protocol.Exchange {
	var out []protocol.Exchange
	for e := q.Pop(); e != nil; e = q.Pop() {
		if e.RespStartNs == 0 {
			e.NoResponse = true
		}
		out = append(out, *e)
	}
	return out
}
