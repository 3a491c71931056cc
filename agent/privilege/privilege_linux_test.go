//go:build linux && amd64

package privilege_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"kernel.org/pub/linux/libs/security/libcap/cap"

	"github.com/deeptrace/deeptrace/agent/capture"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/privilege"
)

// childEnv makes the test binary run one drop in a process of its own: a
// drop cannot be undone, and it would leave the rest of the tests without
// privileges.
const childEnv = "DEEPTRACE_PRIVILEGE_CHILD"

func TestMain(m *testing.M) {
	if mode := os.Getenv(childEnv); mode != "" {
		if err := child(mode, os.Getenv("DEEPTRACE_PRIVILEGE_PEER")); err != nil {
			fmt.Println("FAIL", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// TestDropKeepsCapture loads and attaches the capture programs, drops
// privileges as the agent does, and then requires that capture still
// works: a Go process started after the drop is traced (map updates
// through the open fds, its executable read for the goroutine offsets,
// and, when asked for, uprobes attached to it), its HTTP exchanges come
// through the ring buffer, and counters read. And that the privileges are
// gone: CapEff, CapPrm and CapBnd shrank to the kept set, no_new_privs is
// set, and an operation that needs a dropped capability (chown) fails.
func TestDropKeepsCapture(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: loads eBPF and drops capabilities")
	}
	dir := t.TempDir()
	peer := filepath.Join(dir, "testpeer")
	// capture's peer, built with DWARF (test binaries have none) so its
	// goroutine offsets can be read.
	if out, err := exec.Command("go", "build", "-o", peer, "../capture/internal/testpeer").CombinedOutput(); err != nil {
		t.Fatalf("go build testpeer: %v\n%s", err, out)
	}
	for _, mode := range []string{"agent", "uprobes", "user"} {
		t.Run(mode, func(t *testing.T) {
			cmd := exec.Command(os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), childEnv+"="+mode, "DEEPTRACE_PRIVILEGE_PEER="+peer)
			out, err := cmd.CombinedOutput()
			if bytes.Contains(out, []byte("SKIP")) {
				t.Skip(string(out))
			}
			if err != nil {
				t.Fatalf("child: %v\n%s", err, out)
			}
			t.Logf("%s", bytes.TrimSpace(out))
		})
	}
}

func child(mode, peer string) error {
	late := mode == "uprobes"
	tr, err := capture.Open(capture.Config{GoCreation: late})
	if errors.Is(err, capture.ErrUnavailable) {
		fmt.Println("SKIP", err)
		return nil
	}
	if err != nil {
		return err
	}
	defer tr.Close()

	keep := privilege.KernelNeeds(late).Keep()
	var as *privilege.Identity
	if mode == "user" {
		id, err := privilege.LookupIdentity("nobody")
		if err != nil {
			fmt.Println("SKIP", err)
			return nil
		}
		as = &id
	}
	// A file of root's, which uid 0 may write without any capability.
	rootDir, err := os.MkdirTemp("", "privilege-root")
	if err != nil {
		return err
	}
	defer os.RemoveAll(rootDir)
	rootFile := filepath.Join(rootDir, "roots")
	if err := os.WriteFile(rootFile, []byte("root's\n"), 0o644); err != nil {
		return err
	}
	r, err := privilege.DropForAgent(late, as)
	if err != nil {
		return err
	}
	wf, werr := os.OpenFile(rootFile, os.O_WRONLY|os.O_APPEND, 0)
	if werr == nil {
		wf.Close()
	}
	if as != nil {
		for i := range 4 {
			if r.After.UIDs[i] != as.UID || r.After.GIDs[i] != as.GID {
				return fmt.Errorf("after the drop as %s: uids %v gids %v, want all %d and %d", as.Name, r.After.UIDs, r.After.GIDs, as.UID, as.GID)
			}
		}
		if !errors.Is(werr, os.ErrPermission) {
			return fmt.Errorf("as %s, writing a file of root's: %v, want permission denied", as.Name, werr)
		}
	} else if werr == nil {
		fmt.Println("still uid 0: a file of root's stays writable without any capability")
	}
	var want uint64
	for _, v := range keep {
		want |= 1 << v
	}
	want &= r.Before.Prm
	a := r.After
	switch {
	case r.Before.Eff&(1<<cap.SYS_ADMIN) == 0:
		return fmt.Errorf("CapEff before the drop %x lacks CAP_SYS_ADMIN: not the agent's privileges", r.Before.Eff)
	case a.Eff != want || a.Prm != want || a.Bnd != want:
		return fmt.Errorf("after the drop CapEff %x CapPrm %x CapBnd %x, want %x (%s)", a.Eff, a.Prm, a.Bnd, want, privilege.Names(want))
	case a.Inh != 0 || a.Amb != 0 || !a.NoNewPrivs:
		return fmt.Errorf("after the drop CapInh %x CapAmb %x NoNewPrivs %v", a.Inh, a.Amb, a.NoNewPrivs)
	}
	// Every thread, not only this one: /proc/self/task/*/status.
	tasks, _ := filepath.Glob("/proc/self/task/*")
	for _, task := range tasks {
		st, err := privilege.ReadStatusOf("self/task/" + filepath.Base(task))
		if err == nil && st.Eff != want {
			return fmt.Errorf("thread %s still has CapEff %x", filepath.Base(task), st.Eff)
		}
	}
	f, err := os.CreateTemp("", "privilege")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	f.Close()
	if err := os.Chown(f.Name(), 4242, 4242); !errors.Is(err, syscall.EPERM) {
		return fmt.Errorf("chown after dropping CAP_CHOWN: %v, want EPERM", err)
	}

	// A Go process that starts after the drop.
	p := exec.Command(peer, "http", "-listen", "127.0.0.1:0", "-size", "64")
	out, err := p.StdoutPipe()
	if err != nil {
		return err
	}
	if err := p.Start(); err != nil {
		return err
	}
	defer func() { p.Process.Kill(); p.Wait() }()
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "ADDR ") {
		return fmt.Errorf("peer: %q %v", line, err)
	}
	addr := strings.TrimSpace(strings.TrimPrefix(line, "ADDR "))
	if err := tr.TracePID(p.Process.Pid); err != nil {
		return fmt.Errorf("trace a pid after the drop: %w", err)
	}
	goOK, probes := tr.GoProcess(p.Process.Pid)
	if !goOK || (late && probes == 0) {
		return fmt.Errorf("Go process after the drop: goroutines read %v, %d uprobes (want some: %v)", goOK, probes, late)
	}
	if err := tr.SetPorts(); err != nil {
		return fmt.Errorf("filter map update after the drop: %w", err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	var mu sync.Mutex
	seen := 0
	go tr.Read(ctx, func(evs []event.Event, _ []event.GoEvent) {
		mu.Lock()
		defer mu.Unlock()
		for _, e := range evs {
			if int(e.PID) == p.Process.Pid && bytes.Contains(e.Payload, []byte("GET /after-drop")) {
				seen++
			}
		}
	})
	for i := 0; ; i++ {
		res, err := http.Get(fmt.Sprintf("http://%s/after-drop/%d", addr, i))
		if err != nil {
			return err
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
		mu.Lock()
		n := seen
		mu.Unlock()
		if n >= 3 {
			break
		}
		if ctx.Err() != nil {
			return fmt.Errorf("after the drop, %d requests made, %d captured", i+1, n)
		}
		time.Sleep(50 * time.Millisecond)
	}
	st, err := tr.Stats()
	if err != nil {
		return fmt.Errorf("counters after the drop: %w", err)
	}
	fmt.Printf("OK %s: CapEff %x -> %x (%s), kept %v; a Go process started after it traced (%d uprobes), %d events, %d requests captured\n",
		mode, r.Before.Eff, a.Eff, privilege.Names(a.Eff), r.Kept, probes, st.Events, seen)
	return nil
}
