package bench

import (
	"testing"

	"github.com/deeptrace/deeptrace/agent/event"
)

// Events handed on out of order across streams come out in call order;
// each stream keeps its own order even against the clock.
func TestTimeMerge(t *testing.T) {
	var out []uint64
	m := newTimeMerge(100, func(e *event.Event) { out = append(out, e.EnterNs) })
	a := func(sock uint64, dir event.Direction, enter uint64) *event.Event {
		return &event.Event{Kind: event.KindData, PID: 1, SockID: sock, Dir: dir, EnterNs: enter, ExitNs: enter + 1}
	}
	m.push(a(1, event.Egress, 50))  // a server's early response...
	m.push(a(1, event.Egress, 40))  // ...its stream's order is kept
	m.push(a(1, event.Ingress, 10)) // the request, handed on late
	m.push(a(2, event.Ingress, 30))
	m.flush()
	want := []uint64{10, 30, 50, 40}
	if len(out) != len(want) {
		t.Fatalf("got %v, want %v", out, want)
	}
	for i := range want {
		if out[i] != want[i] {
			t.Fatalf("got %v, want %v", out, want)
		}
	}
}
