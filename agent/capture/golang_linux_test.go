//go:build linux && amd64

package capture

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/event"
)

// TestGoRuntime: in a traced Go program, data events carry the goroutine
// that made the call (checked in checkConn against the goroutine the peer
// reports), goroutine creation reports parent -> child, and with
// GoScheduling each switch to running on a thread.
func TestGoRuntime(t *testing.T) {
	tr := openTracer(t, Config{GoScheduling: true})
	col := collect(t, tr)
	dir := t.TempDir()
	srv := startPeer(t, nil, "server", "-dir", dir)
	addr := strings.TrimPrefix(srv.expect(t, "ADDR ", 10*time.Second), "ADDR ")
	cli := startPeer(t, nil, "client", "-dir", dir, "-connect", addr, "-conns", "3", "-msgs", "4")
	cli.expect(t, "READY", 10*time.Second)
	if err := tr.TracePID(cli.pid()); err != nil {
		t.Fatal(err)
	}
	if ok, probes := tr.GoProcess(cli.pid()); !ok || probes < 2 {
		t.Fatalf("GoProcess(client) = %v, %d probes; want Go with newproc1 and casgstatus probes", ok, probes)
	}
	fmt.Fprintln(cli.stdin, "go")
	cli.expect(t, "DONE", 20*time.Second)
	cli.cmd.Wait()
	for _, c := range cli.conns {
		col.wait(t, 10*time.Second, "client close", func(evs []event.Event) bool { return closed(evs, cli.pid(), c) })
	}
	gevs := col.goEvents()
	for _, c := range cli.conns {
		created, ran := false, false
		for _, g := range gevs {
			if int(g.PID) != cli.pid() || g.GoID != c.goid {
				continue
			}
			switch g.Kind {
			case event.GoCreate:
				if g.ParentGoID != c.parent {
					t.Errorf("goroutine %d created by %d, want %d", c.goid, g.ParentGoID, c.parent)
				}
				created = true
			case event.GoRunning:
				// The goroutine locked its thread once it ran; it may have
				// run elsewhere before.
				ran = ran || g.TID == c.tid
			}
		}
		if !created || !ran {
			t.Errorf("goroutine %d (thread %d): created=%v running-on-thread=%v among %d Go events", c.goid, c.tid, created, ran, len(gevs))
		}
	}
	st, _ := tr.Stats()
	if st.GoEvents == 0 {
		t.Errorf("stats count no Go events: %+v", st)
	}
}
