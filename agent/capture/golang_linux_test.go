//go:build linux && amd64

package capture

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/event"
)

// TestGoRuntime: in a traced Go program data events carry the goroutine
// that made the call and its parent (checked in checkConn against what the
// peer reports). By default goroutine creation comes from those events;
// with GoCreation and GoScheduling from uprobes on runtime.newproc1 and
// runtime.casgstatus.
func TestGoRuntime(t *testing.T) {
	for _, c := range []struct {
		name   string
		cfg    Config
		probes int
	}{
		{"from data events", Config{}, 0},
		{"from uprobes", Config{GoCreation: true, GoScheduling: true}, 2},
	} {
		t.Run(c.name, func(t *testing.T) {
			tr := openTracer(t, c.cfg)
			col := collect(t, tr)
			dir := t.TempDir()
			srv := startPeer(t, nil, "server", "-dir", dir)
			addr := strings.TrimPrefix(srv.expect(t, "ADDR ", 10*time.Second), "ADDR ")
			cli := startPeer(t, nil, "client", "-dir", dir, "-connect", addr, "-conns", "3", "-msgs", "4")
			cli.expect(t, "READY", 10*time.Second)
			if err := tr.TracePID(cli.pid()); err != nil {
				t.Fatal(err)
			}
			if ok, probes := tr.GoProcess(cli.pid()); !ok || probes < c.probes {
				t.Fatalf("GoProcess(client) = %v, %d probes; want Go with at least %d", ok, probes, c.probes)
			}
			fmt.Fprintln(cli.stdin, "go")
			cli.expect(t, "DONE", 20*time.Second)
			cli.cmd.Wait()
			var evs []event.Event
			for _, cc := range cli.conns {
				evs = col.wait(t, 10*time.Second, "client close", func(evs []event.Event) bool { return closed(evs, cli.pid(), cc) })
			}
			for _, cc := range cli.conns {
				for _, e := range connEvents(evs, cli.pid(), cc) {
					if e.Kind == event.KindData && (e.GoID != cc.goid || e.ParentGoID != cc.parent) {
						t.Fatalf("data event on goroutine %d (parent %d), peer says %d (parent %d)", e.GoID, e.ParentGoID, cc.goid, cc.parent)
					}
				}
			}
			gevs := col.goEvents()
			for _, cc := range cli.conns {
				created, ran := false, false
				for _, g := range gevs {
					if int(g.PID) != cli.pid() || g.GoID != cc.goid {
						continue
					}
					switch g.Kind {
					case event.GoCreate:
						if g.ParentGoID != cc.parent {
							t.Errorf("goroutine %d created by %d, want %d", cc.goid, g.ParentGoID, cc.parent)
						}
						created = true
					case event.GoRunning:
						// The goroutine locked its thread once it ran; it may
						// have run elsewhere before.
						ran = ran || g.TID == cc.tid
					}
				}
				if !created || (c.cfg.GoScheduling && !ran) {
					t.Errorf("goroutine %d (thread %d): created=%v running-on-thread=%v among %d Go events", cc.goid, cc.tid, created, ran, len(gevs))
				}
			}
			if st, _ := tr.Stats(); c.probes > 0 && st.GoEvents == 0 {
				t.Errorf("stats count no Go events from the probes: %+v", st)
			}
		})
	}
}
