//go:build linux && amd64

package capture

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/event"
)

var nsCounter atomic.Int32

// netnsPair creates two network namespaces joined by a veth pair,
// 10.77.0.1/24 in a (the client host) and 10.77.0.2/24 in b (the server
// host), and removes them when the test ends.
func netnsPair(t *testing.T) (a, b string) {
	t.Helper()
	for _, tool := range []string{"ip", "iptables"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("%s not installed (Debian: iproute2, iptables)", tool)
		}
	}
	id := fmt.Sprintf("%d%d", os.Getpid()%100000, nsCounter.Add(1))
	a, b = "dtcap-a"+id, "dtcap-b"+id
	va, vb := "dta"+id, "dtb"+id
	if len(va) > 15 {
		va, vb = va[:15], vb[:15]
	}
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := exec.Command("ip", "netns", "add", a).CombinedOutput(); err != nil {
		t.Skipf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("ip", "netns", "del", a).Run() })
	run("ip", "netns", "add", b)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", b).Run() })
	run("ip", "link", "add", va, "netns", a, "type", "veth", "peer", "name", vb, "netns", b)
	run("ip", "-n", a, "addr", "add", "10.77.0.1/24", "dev", va)
	run("ip", "-n", b, "addr", "add", "10.77.0.2/24", "dev", vb)
	for _, ns := range []struct{ ns, dev string }{{a, va}, {b, vb}} {
		run("ip", "-n", ns.ns, "link", "set", "lo", "up")
		run("ip", "-n", ns.ns, "link", "set", ns.dev, "up")
	}
	return a, b
}

// streamAt is the bytes of one direction of a connection as positioned by
// their TCP sequence numbers.
type streamAt struct {
	start uint32
	data  []byte
}

func positioned(t *testing.T, evs []event.Event) streamAt {
	t.Helper()
	var s streamAt
	var buf bytes.Buffer
	for i, e := range evs {
		if i == 0 {
			s.start = e.TCPSeq
		}
		if want := s.start + uint32(buf.Len()); e.TCPSeq+uint32(e.Offset) != want {
			t.Fatalf("event %d at seq %d+%d, want %d", i, e.TCPSeq, e.Offset, want)
		}
		buf.Write(e.Payload)
	}
	s.data = buf.Bytes()
	return s
}

// TestNetnsDNATSequence: a client host reaches a server host through a
// DNAT'ed virtual address (10.77.0.100:80 -> 10.77.0.2:8080), like a
// Kubernetes Service. The two ends see different tuples; their events of
// the same bytes carry the same TCP sequence positions, and the network
// namespace of each host. Then capture is limited to the server's namespace.
func TestNetnsDNATSequence(t *testing.T) {
	tr := openTracer(t, Config{MaxCallBytes: 1 << 20})
	nsA, nsB := netnsPair(t)
	dnat := []string{"ip", "netns", "exec", nsA, "iptables", "-t", "nat", "-A", "OUTPUT",
		"-d", "10.77.0.100/32", "-p", "tcp", "--dport", "80", "-j", "DNAT", "--to-destination", "10.77.0.2:8080"}
	if out, err := exec.Command(dnat[0], dnat[1:]...).CombinedOutput(); err != nil {
		t.Skipf("DNAT rule: %v: %s", err, out)
	}
	inoA, err := NetNSInode("/run/netns/" + nsA)
	if err != nil {
		t.Fatal(err)
	}
	inoB, err := NetNSInode("/run/netns/" + nsB)
	if err != nil {
		t.Fatal(err)
	}
	col := collect(t, tr)
	dir := t.TempDir()
	srv, cli := runPair(t, tr, true, dir,
		[]string{"-listen", "10.77.0.2:8080"},
		[]string{"-connect", "10.77.0.100:80", "-conns", "3", "-msgs", "8", "-sizes", "10,5000,60000"},
		[]string{"ip", "netns", "exec", nsB}, []string{"ip", "netns", "exec", nsA})
	if len(cli.conns) != 3 || len(srv.conns) != 3 {
		t.Fatalf("%d client and %d server connections, want 3", len(cli.conns), len(srv.conns))
	}
	evs := waitClosed(t, col, cli, srv)
	for _, c := range cli.conns {
		if c.remote.String() != "10.77.0.100:80" {
			t.Fatalf("client connection to %s, want the virtual address", c.remote)
		}
		// The server saw the same connection from the same client port.
		var s *peerConn
		for i := range srv.conns {
			if srv.conns[i].remote == c.local {
				s = &srv.conns[i]
			}
		}
		if s == nil {
			t.Fatalf("no server connection from %s", c.local)
		}
		if s.local.String() != "10.77.0.2:8080" {
			t.Fatalf("server side local %s", s.local)
		}
		cd := checkConn(t, evs, expect{pid: cli.pid(), conn: c, logDir: dir, netns: inoA, goids: true, chunk: MinChunk, openKnd: event.KindConnect})
		sd := checkConn(t, evs, expect{pid: srv.pid(), conn: *s, logDir: dir, netns: inoB, goids: true, chunk: MinChunk, openKnd: event.KindAccept})
		for _, pair := range []struct {
			name       string
			from, to   []event.Event
			fromT, toT string
		}{
			{"request", cd[event.Egress], sd[event.Ingress], "client egress", "server ingress"},
			{"response", sd[event.Egress], cd[event.Ingress], "server egress", "client ingress"},
		} {
			from, to := positioned(t, pair.from), positioned(t, pair.to)
			if from.start != to.start {
				t.Errorf("%s: %s starts at seq %d, %s at %d", pair.name, pair.fromT, from.start, pair.toT, to.start)
			}
			if !bytes.Equal(from.data, to.data) || len(from.data) == 0 {
				t.Errorf("%s: %s has %d bytes, %s %d, or they differ", pair.name, pair.fromT, len(from.data), pair.toT, len(to.data))
			}
		}
	}

	// Limited to the server's namespace, only the server's side shows.
	if err := tr.SetNetNS(inoB); err != nil {
		t.Fatal(err)
	}
	before := len(evs)
	cli2 := startPeer(t, []string{"ip", "netns", "exec", nsA}, "client", "-dir", dir, "-connect", "10.77.0.100:80", "-conns", "1", "-msgs", "3")
	cli2.expect(t, "READY", 10*time.Second)
	if err := tr.TracePID(cli2.pid()); err != nil {
		t.Fatal(err)
	}
	fmt.Fprintln(cli2.stdin, "go")
	cli2.expect(t, "DONE", 20*time.Second)
	srv.expect(t, "CONN ", 5*time.Second)
	last := srv.conns[len(srv.conns)-1]
	evs = col.wait(t, 10*time.Second, "server close", func(evs []event.Event) bool { return closed(evs, srv.pid(), last) })
	sawServer := false
	for _, e := range evs[before:] {
		if e.NetNS != inoB {
			t.Fatalf("netns filter %d let through %v event of pid %d in netns %d", inoB, e.Kind, e.PID, e.NetNS)
		}
		sawServer = sawServer || int(e.PID) == srv.pid()
	}
	if !sawServer {
		t.Error("no server event under the netns filter")
	}
}
