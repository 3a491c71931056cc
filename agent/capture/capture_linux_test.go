//go:build linux && amd64

package capture

import (
	"bytes"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/event"
)

// connEvents are the events of one connection at one end, in the order
// capture delivered them.
func connEvents(evs []event.Event, pid int, c peerConn) []event.Event {
	var out []event.Event
	for _, e := range evs {
		if int(e.PID) == pid && e.Local == c.local && e.Remote == c.remote {
			out = append(out, e)
		}
	}
	return out
}

func closed(evs []event.Event, pid int, c peerConn) bool {
	for _, e := range evs {
		if e.Kind == event.KindClose && int(e.PID) == pid && e.Local == c.local && e.Remote == c.remote {
			return true
		}
	}
	return false
}

// waitClosed waits until the close of every connection of both peers has
// come through, and returns the events so far.
func waitClosed(t *testing.T, col *collector, cli, srv *peer) []event.Event {
	t.Helper()
	return col.wait(t, 10*time.Second, "close of every connection", func(evs []event.Event) bool {
		for _, p := range []*peer{cli, srv} {
			for _, c := range p.conns {
				if !closed(evs, p.pid(), c) {
					return false
				}
			}
		}
		return true
	})
}

type expect struct {
	pid     int
	conn    peerConn
	logDir  string
	netns   uint32
	goids   bool // the peer is Go and the agent reads goroutines
	chunk   int
	openKnd event.Kind // KindConnect or KindAccept
	// noPayload is a direction whose calls carry no payload (sendfile:
	// the bytes come from a file): only their sizes and positions count.
	noPayload event.Direction
}

// checkConn asserts that capture saw every byte of one end of a connection,
// in order, with the right tuple, role, pid, tid, goroutine and namespace,
// and consistent TCP sequence positions. It returns the data events per
// direction.
func checkConn(t *testing.T, evs []event.Event, x expect) map[event.Direction][]event.Event {
	t.Helper()
	name := fmt.Sprintf("%v %s->%s", x.conn.role, x.conn.local, x.conn.remote)
	mine := connEvents(evs, x.pid, x.conn)
	if len(mine) == 0 {
		t.Errorf("%s: no events", name)
		return nil
	}
	if mine[0].Kind != x.openKnd {
		t.Errorf("%s: first event %v, want %v", name, mine[0].Kind, x.openKnd)
	}
	if last := mine[len(mine)-1]; last.Kind != event.KindClose {
		t.Errorf("%s: last event %v, want close", name, last.Kind)
	}
	closes := 0
	for _, e := range mine {
		if e.Kind == event.KindClose {
			closes++
		}
	}
	if closes != 1 {
		t.Errorf("%s: %d close events, want 1", name, closes)
	}
	sock := mine[0].SockID
	byDir := map[event.Direction][]event.Event{}
	for _, e := range mine {
		switch {
		case e.SockID != sock:
			t.Errorf("%s: SockID %d then %d", name, sock, e.SockID)
		case e.Role != x.conn.role:
			t.Errorf("%s: %v event with role %v", name, e.Kind, e.Role)
		case e.TID != x.conn.tid && e.Kind != event.KindAccept:
			// (accept() ran on the listener's thread, not the connection's)
			t.Errorf("%s: %v event on tid %d, want %d", name, e.Kind, e.TID, x.conn.tid)
		case e.Comm != "testpeer":
			t.Errorf("%s: comm %q", name, e.Comm)
		case e.FD <= 2:
			t.Errorf("%s: fd %d", name, e.FD)
		case x.netns != 0 && e.NetNS != x.netns:
			t.Errorf("%s: netns %d, want %d", name, e.NetNS, x.netns)
		case e.ExitNs < e.EnterNs || e.EnterNs == 0:
			t.Errorf("%s: enter %d exit %d", name, e.EnterNs, e.ExitNs)
		case e.Kind == event.KindData && x.goids && (e.GoID != x.conn.goid || e.ParentGoID != x.conn.parent):
			t.Errorf("%s: data event on goroutine %d (parent %d), want %d (parent %d)", name, e.GoID, e.ParentGoID, x.conn.goid, x.conn.parent)
		}
		if e.Kind == event.KindData {
			byDir[e.Dir] = append(byDir[e.Dir], e)
		}
	}
	for dir, suffix := range map[event.Direction]string{event.Egress: ".out", event.Ingress: ".in"} {
		want, err := os.ReadFile(logName(x.logDir, x.conn, suffix))
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		var callSeq uint32
		var callSize, callGot int64
		var nextSeq uint32
		first := true
		for i, e := range byDir[dir] {
			if len(e.Payload) > x.chunk {
				t.Errorf("%s %v: event %d carries %d bytes, chunk is %d", name, dir, i, len(e.Payload), x.chunk)
			}
			if e.Offset == 0 {
				if !first && callGot != callSize {
					t.Errorf("%s %v: call at seq %d: %d of %d bytes captured", name, dir, callSeq, callGot, callSize)
				}
				if !first && e.TCPSeq != nextSeq {
					t.Errorf("%s %v: event %d at seq %d, previous call ended at %d", name, dir, i, e.TCPSeq, nextSeq)
				}
				first = false
				callSeq, callSize, callGot = e.TCPSeq, e.Size, 0
				nextSeq = e.TCPSeq + uint32(max(e.Size, 0))
			} else if e.TCPSeq != callSeq || e.Offset != callGot || e.Size != callSize {
				t.Errorf("%s %v: chunk seq %d offset %d size %d inside call seq %d at %d of %d",
					name, dir, e.TCPSeq, e.Offset, e.Size, callSeq, callGot, callSize)
			}
			if dir == x.noPayload {
				if len(e.Payload) != 0 {
					t.Errorf("%s %v: %d payload bytes from a file", name, dir, len(e.Payload))
				}
				got.Write(want[got.Len():min(len(want), got.Len()+int(e.Size))]) // positions only
				callGot = e.Size
				continue
			}
			callGot += int64(len(e.Payload))
			got.Write(e.Payload)
		}
		if !first && callGot != callSize {
			t.Errorf("%s %v: last call: %d of %d bytes captured", name, dir, callGot, callSize)
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s %v: captured %d bytes, peer logged %d; first difference at %d",
				name, dir, got.Len(), len(want), firstDiff(got.Bytes(), want))
		}
	}
	return byDir
}

func firstDiff(a, b []byte) int {
	for i := range min(len(a), len(b)) {
		if a[i] != b[i] {
			return i
		}
	}
	return min(len(a), len(b))
}

// runPair starts a server and a client, traces both (or neither), lets the
// client finish, and returns them.
func runPair(t *testing.T, tr *Tracer, traced bool, dir string, serverArgs, clientArgs []string, wrapS, wrapC []string) (srv, cli *peer) {
	t.Helper()
	srv = startPeer(t, wrapS, append([]string{"server", "-dir", dir}, serverArgs...)...)
	addr := strings.TrimPrefix(srv.expect(t, "ADDR ", 10*time.Second), "ADDR ")
	if traced {
		if err := tr.TracePID(srv.pid()); err != nil {
			t.Fatal(err)
		}
	}
	hasConnect := false
	for _, a := range clientArgs {
		hasConnect = hasConnect || a == "-connect"
	}
	if !hasConnect {
		clientArgs = append(clientArgs, "-connect", addr)
	}
	cli = startPeer(t, wrapC, append([]string{"client", "-dir", dir}, clientArgs...)...)
	cli.expect(t, "READY", 10*time.Second) // past any wrapper's exec
	if traced {
		if err := tr.TracePID(cli.pid()); err != nil {
			t.Fatal(err)
		}
	}
	fmt.Fprintln(cli.stdin, "go")
	cli.expect(t, "DONE", 60*time.Second)
	cli.cmd.Wait()
	srv.drain(t)
	return srv, cli
}

// TestCaptureLoopback runs real servers and clients as separate processes
// over every pair of system calls capture hooks, on IPv4 and IPv6 loopback,
// with small and large messages, many per connection, several connections
// at once, and an untraced pair beside them; then checks every byte.
func TestCaptureLoopback(t *testing.T) {
	tr := openTracer(t, Config{MaxCallBytes: 1 << 20})
	col := collect(t, tr)
	const sizes = "1,17,4095,4096,4097,9000,70000,200000"
	cases := []struct {
		io     string
		listen string
		extra  []string
	}{
		{"write", "127.0.0.1:0", []string{"-dup"}},
		{"write", "[::1]:0", nil},
		{"sendto", "127.0.0.1:0", nil},
		{"writev", "127.0.0.1:0", nil},
		{"sendmsg", "[::1]:0", nil},
		{"sendmmsg", "127.0.0.1:0", nil},
		{"recvmmsg", "127.0.0.1:0", nil},
		{"sendfile", "127.0.0.1:0", nil},
	}
	// An untraced pair runs through all cases; none of its calls may show.
	odir := t.TempDir()
	osrv, ocli := runPair(t, tr, false, odir, []string{"-listen", "127.0.0.1:0"}, []string{"-conns", "2", "-msgs", "50"}, nil, nil)
	untraced := map[uint32]bool{uint32(osrv.pid()): true, uint32(ocli.pid()): true}

	for _, tc := range cases {
		t.Run(tc.io+"/"+tc.listen, func(t *testing.T) {
			dir := t.TempDir()
			srv, cli := runPair(t, tr, true, dir,
				[]string{"-listen", tc.listen, "-io", tc.io},
				append([]string{"-io", tc.io, "-conns", "6", "-parallel", "3", "-msgs", "12", "-sizes", sizes}, tc.extra...), nil, nil)
			if len(cli.conns) != 6 || len(srv.conns) != 6 {
				t.Fatalf("peers report %d client and %d server connections, want 6 each", len(cli.conns), len(srv.conns))
			}
			evs := waitClosed(t, col, cli, srv)
			for _, c := range cli.conns {
				checkConn(t, evs, expect{pid: cli.pid(), conn: c, logDir: dir, goids: true, chunk: MinChunk, openKnd: event.KindConnect,
					noPayload: map[bool]event.Direction{true: event.Egress}[tc.io == "sendfile"]})
			}
			for _, c := range srv.conns {
				checkConn(t, evs, expect{pid: srv.pid(), conn: c, logDir: dir, goids: true, chunk: MinChunk, openKnd: event.KindAccept,
					noPayload: map[bool]event.Direction{true: event.Egress}[tc.io == "sendfile"]})
			}
		})
	}
	for _, e := range col.wait(t, time.Second, "", func([]event.Event) bool { return true }) {
		if untraced[e.PID] {
			t.Fatalf("event from untraced process %d: %+v", e.PID, e)
		}
	}
	st, err := tr.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if st.Dropped != 0 || st.Faults != 0 || st.Malformed != 0 {
		t.Errorf("stats: %+v", st)
	}
	// One writer per connection: every send's start is exact from its
	// entry, and the send hook is never needed.
	if st.SendOverlaps != 0 || st.SendHook {
		t.Errorf("%d sends flagged as overlapping, send hook %v; want none", st.SendOverlaps, st.SendHook)
	}
	t.Logf("stats: %+v", st)
}

// TestConcurrentWritersOrder: four threads write to one socket at once.
// Whatever order their exit programs reach the ring buffer in, capture
// hands the client's data events on in the order of their bytes on the
// stream: the server's log of what it received. First as Go does it (its
// fd lock keeps the system calls apart), then with the calls overlapping
// in the kernel, where the send hook (ExactSendSeq) says where each call's
// bytes went. Through Read, whose payloads are borrowed from the ring
// buffer: the events the orderer holds across batches must keep theirs.
func TestConcurrentWritersOrder(t *testing.T) {
	for _, unlocked := range []bool{false, true} {
		t.Run(map[bool]string{false: "go", true: "overlapping"}[unlocked], func(t *testing.T) {
			tr := openTracer(t, Config{MaxCallBytes: 1 << 20, ExactSendSeq: unlocked})
			col := collectRead(t, tr)
			concurrentWriters(t, tr, col, unlocked, true)
			st, _ := tr.Stats()
			if st.Late != 0 || st.Gaps != 0 || st.SendOverlaps != 0 {
				t.Errorf("late %d, gaps %d, send overlaps %d", st.Late, st.Gaps, st.SendOverlaps)
			}
			t.Logf("stats: %+v", st)
		})
	}
}

// TestSendOverlapAttachesHook: without ExactSendSeq, the first sends that
// overlap another on their socket are flagged and make capture attach the
// send hook; writers that come after are in order again.
func TestSendOverlapAttachesHook(t *testing.T) {
	tr := openTracer(t, Config{MaxCallBytes: 1 << 20})
	col := collect(t, tr)
	// Overlaps come when two writers' calls meet on the socket lock: not
	// on every run.
	var st Stats
	for try := 0; try < 20 && !st.SendHook; try++ {
		concurrentWriters(t, tr, col, true, false)
		st, _ = tr.Stats()
	}
	if st.SendOverlaps == 0 || !st.SendHook {
		t.Fatalf("%d sends flagged as overlapping, send hook %v; want some, and the hook", st.SendOverlaps, st.SendHook)
	}
	overlaps := st.SendOverlaps
	concurrentWriters(t, tr, col, true, true)
	if st, _ = tr.Stats(); st.SendOverlaps != overlaps {
		t.Errorf("%d more sends flagged with the hook attached", st.SendOverlaps-overlaps)
	}
	t.Logf("stats: %+v", st)
}

// concurrentWriters runs a client whose threads write to one socket at
// once (their system calls overlapping when unlocked), and, when check is
// set, compares what capture saw it send with what the server received.
func concurrentWriters(t *testing.T, tr *Tracer, col *collector, unlocked, check bool) {
	t.Helper()
	dir := t.TempDir()
	args := []string{"-conns", "2", "-parallel", "2", "-writers", "4", "-msgs", "150", "-sizes", "1,100,3000,5000,17,9000"}
	if unlocked {
		args = append(args, "-unlocked")
	}
	srv, cli := runPair(t, tr, true, dir, []string{"-drain"}, args, nil, nil)
	evs := col.wait(t, 10*time.Second, "server closes", func(evs []event.Event) bool {
		for _, c := range srv.conns {
			if !closed(evs, srv.pid(), c) {
				return false
			}
		}
		return len(srv.conns) == 2
	})
	if !check {
		return
	}
	for _, c := range cli.conns {
		var s *peerConn
		for i := range srv.conns {
			if srv.conns[i].remote == c.local {
				s = &srv.conns[i]
			}
		}
		if s == nil {
			t.Fatalf("no server side for %s", c.local)
		}
		want, err := os.ReadFile(logName(dir, *s, ".in"))
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		tids := map[uint32]bool{}
		for _, e := range connEvents(evs, cli.pid(), c) {
			if e.Kind == event.KindData && e.Dir == event.Egress {
				got.Write(e.Payload)
				tids[e.TID] = true
			}
		}
		if !bytes.Equal(got.Bytes(), want) {
			t.Errorf("%s: client egress as delivered (%d bytes) differs from what the server received (%d) at %d",
				c.local, got.Len(), len(want), firstDiff(got.Bytes(), want))
		}
		if len(tids) < 2 {
			t.Errorf("%s: writes from %d threads, want several", c.local, len(tids))
		}
	}
}

// TestFrontierCoversLaterEvents: what Frontier says while traffic flows
// holds. Every data event handed on after a report of (at, sent), that is
// beyond the first sent, had its bytes at or after at, give or take the
// pipeline's default SourceDelay (a call's record is written when it
// returns). And the front catches up with the clock once traffic is over.
func TestFrontierCoversLaterEvents(t *testing.T) {
	tr := openTracer(t, Config{MaxCallBytes: 1 << 20})
	if _, _, ok := tr.Frontier(); ok {
		t.Fatal("a frontier before the ring buffer was read")
	}
	col := collect(t, tr)
	type sample struct{ taken, at, sent uint64 }
	var (
		samples []sample
		stop    = make(chan struct{})
		done    = make(chan struct{})
	)
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			case <-time.After(2 * time.Millisecond):
			}
			taken := MonotonicNs()
			if at, sent, ok := tr.Frontier(); ok {
				samples = append(samples, sample{taken, at, sent})
			}
		}
	}()
	dir := t.TempDir()
	srv, cli := runPair(t, tr, true, dir, []string{"-listen", "127.0.0.1:0"},
		[]string{"-conns", "6", "-parallel", "3", "-msgs", "100", "-sizes", "1,300,4095,70000"}, nil, nil)
	evs := waitClosed(t, col, cli, srv)
	close(stop)
	<-done
	if len(samples) < 20 {
		t.Fatalf("%d frontier reports while traffic flowed", len(samples))
	}
	const slack = uint64(250 * time.Millisecond) // pipeline's default SourceDelay
	var worst, behind uint64
	data, blocked := 0, 0
	for _, s := range samples {
		if s.sent > uint64(len(evs)) {
			t.Fatalf("frontier counts %d events sent, %d received", s.sent, len(evs))
		}
		for _, e := range evs[s.sent:] {
			if e.Kind != event.KindData {
				continue
			}
			if e.Dir == event.Egress && e.ExitNs-e.EnterNs > slack {
				// A write that blocked longer than the slack (a full
				// send buffer on a loaded machine): the documented
				// exception, its span comes late.
				blocked++
				continue
			}
			data++
			if a := e.DataAt(); a < s.at {
				worst = max(worst, s.at-a)
			}
		}
		behind = max(behind, s.taken-min(s.taken, s.at))
	}
	if worst > slack {
		t.Fatalf("an event came %s behind a frontier already reported", time.Duration(worst))
	}
	// Once traffic is over the frontier catches up with the clock.
	over := MonotonicNs()
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if at, _, ok := tr.Frontier(); ok && at >= over {
			break
		}
		if time.Now().After(deadline) {
			at, _, _ := tr.Frontier()
			t.Fatalf("the frontier stays %s behind the end of the traffic", time.Duration(over-min(over, at)))
		}
	}
	t.Logf("%d reports, %d events checked (%d writes that blocked longer than the slack left out); the worst came %s behind its frontier; the frontier was at most %s behind the clock",
		len(samples), data, blocked, time.Duration(worst), time.Duration(behind))
}
