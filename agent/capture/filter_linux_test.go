//go:build linux && amd64

package capture

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/event"
)

func pidsOf(evs []event.Event) map[int]int {
	m := map[int]int{}
	for _, e := range evs {
		m[int(e.PID)]++
	}
	return m
}

// TestFilterComm: a process name selects the server; the client, another
// name, is not traced.
func TestFilterComm(t *testing.T) {
	bin := filepath.Join(t.TempDir(), "dtcommpeer")
	if err := copyFile(buildPeer(t), bin); err != nil {
		t.Fatal(err)
	}
	tr := openTracer(t, Config{Comms: []string{"dtcommpeer"}})
	col := collect(t, tr)
	dir := t.TempDir()
	srv := startPeerBin(t, bin, nil, "server", "-dir", dir)
	addr := strings.TrimPrefix(srv.expect(t, "ADDR ", 10*time.Second), "ADDR ")
	cli := startPeer(t, nil, "client", "-dir", dir, "-connect", addr, "-conns", "2", "-msgs", "3")
	cli.expect(t, "READY", 10*time.Second)
	fmt.Fprintln(cli.stdin, "go")
	cli.expect(t, "DONE", 20*time.Second)
	srv.expect(t, "CONN ", 5*time.Second)
	srv.expect(t, "CONN ", 5*time.Second)
	evs := col.wait(t, 10*time.Second, "server closes", func(evs []event.Event) bool {
		return closed(evs, srv.pid(), srv.conns[0]) && closed(evs, srv.pid(), srv.conns[1])
	})
	for _, e := range evs {
		if int(e.PID) != srv.pid() || e.Comm != "dtcommpeer" {
			t.Fatalf("comm filter let through pid %d (%s); server is %d", e.PID, e.Comm, srv.pid())
		}
	}
}

// TestFilterPortAndSelf: tracing every process but one port shows both
// ends of that port's connections, nothing of another port, and never the
// agent's own traffic (its pid is denied).
func TestFilterPortAndSelf(t *testing.T) {
	// A free port, known before Open so that the filter holds from the
	// first event.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	port := ln.Addr().(*net.TCPAddr).Port
	tr := openTracer(t, Config{All: true, Ports: []uint16{uint16(port)}})
	dir := t.TempDir()
	srv := startPeer(t, nil, "server", "-dir", dir, "-listen", addr)
	srv.expect(t, "ADDR ", 10*time.Second)
	other := startPeer(t, nil, "server", "-dir", dir)
	otherAddr := strings.TrimPrefix(other.expect(t, "ADDR ", 10*time.Second), "ADDR ")
	col := collect(t, tr)

	// The agent itself talks to the traced port and to the other one.
	for _, a := range []string{addr, otherAddr} {
		c, err := net.Dial("tcp", a)
		if err != nil {
			t.Fatal(err)
		}
		c.Write(make([]byte, 100))
		c.Close()
	}
	cli := startPeer(t, nil, "client", "-dir", dir, "-connect", addr, "-conns", "1", "-msgs", "3")
	cli.expect(t, "READY", 10*time.Second)
	fmt.Fprintln(cli.stdin, "go")
	cli.expect(t, "DONE", 20*time.Second)
	cli2 := startPeer(t, nil, "client", "-dir", dir, "-connect", otherAddr, "-conns", "1", "-msgs", "3")
	cli2.expect(t, "READY", 10*time.Second)
	fmt.Fprintln(cli2.stdin, "go")
	cli2.expect(t, "DONE", 20*time.Second)
	cc := cli.conns[0]
	evs := col.wait(t, 10*time.Second, "client close", func(evs []event.Event) bool { return closed(evs, cli.pid(), cc) })
	time.Sleep(100 * time.Millisecond)
	evs = col.wait(t, time.Second, "", func([]event.Event) bool { return true })
	pids := pidsOf(evs)
	if pids[cli.pid()] == 0 || pids[srv.pid()] == 0 {
		t.Errorf("events per pid %v: want the client %d and the server %d", pids, cli.pid(), srv.pid())
	}
	for _, e := range evs {
		if int(e.PID) == os.Getpid() {
			t.Fatalf("the agent's own call was traced: %+v", e)
		}
		if int(e.Local.Port()) != port && int(e.Remote.Port()) != port {
			t.Fatalf("port filter %d let through %v %s->%s of pid %d", port, e.Kind, e.Local, e.Remote, e.PID)
		}
	}
}

// TestFilterCgroup: a cgroup v2 selects the processes in it.
func TestFilterCgroup(t *testing.T) {
	root := cgroup2Root()
	if root == "" {
		t.Skip("no cgroup2 hierarchy mounted")
	}
	cg := filepath.Join(root, fmt.Sprintf("dtcap-test-%d", os.Getpid()))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Skipf("create cgroup: %v", err)
	}
	t.Cleanup(func() {
		// Move survivors out before removing the group.
		if b, err := os.ReadFile(filepath.Join(cg, "cgroup.procs")); err == nil {
			for _, p := range strings.Fields(string(b)) {
				os.WriteFile(filepath.Join(root, "cgroup.procs"), []byte(p), 0)
			}
		}
		os.Remove(cg)
	})
	id, err := CgroupID(cg)
	if err != nil {
		t.Fatal(err)
	}
	tr := openTracer(t, Config{Cgroups: []uint64{id}})
	col := collect(t, tr)
	dir := t.TempDir()
	srv := startPeer(t, nil, "server", "-dir", dir)
	addr := strings.TrimPrefix(srv.expect(t, "ADDR ", 10*time.Second), "ADDR ")
	cli := startPeer(t, nil, "client", "-dir", dir, "-connect", addr, "-conns", "1", "-msgs", "3")
	cli.expect(t, "READY", 10*time.Second)
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), []byte(strconv.Itoa(cli.pid())), 0); err != nil {
		t.Fatalf("move client into %s: %v", cg, err)
	}
	fmt.Fprintln(cli.stdin, "go")
	cli.expect(t, "DONE", 20*time.Second)
	cc := cli.conns[0]
	evs := col.wait(t, 10*time.Second, "client close", func(evs []event.Event) bool { return closed(evs, cli.pid(), cc) })
	for _, e := range evs {
		if int(e.PID) != cli.pid() {
			t.Fatalf("cgroup filter let through pid %d; client is %d", e.PID, cli.pid())
		}
		if e.Cgroup != id {
			t.Errorf("event cgroup %d, want %d", e.Cgroup, id)
		}
	}
}

// cgroup2Root finds the cgroup v2 mount (unified or hybrid).
func cgroup2Root() string {
	b, err := os.ReadFile("/proc/self/mounts")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 2 && f[2] == "cgroup2" {
			return f[1]
		}
	}
	return ""
}
