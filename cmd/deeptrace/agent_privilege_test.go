package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/privilege"
	"github.com/deeptrace/deeptrace/schemas"
)

// TestAgentDropsPrivileges runs the agent binary on a peer process: once
// capture is attached its capability sets (read from /proc/<pid>/status,
// as any administrator would) must have shrunk to what the kernel needs
// kept, no_new_privs must be set, and it must still capture every
// exchange made after the drop and serve its capture counters. With
// --user nobody, every uid and gid must be nobody's too, and the spans go
// through the spool (the engine is unreachable), which the agent, no
// longer root, must still write.
func TestAgentDropsPrivileges(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	if os.Geteuid() != 0 {
		t.Skip("the agent needs root to load eBPF")
	}
	bin := sigtermBinary(t)
	t.Run("root", func(t *testing.T) { agentDropsPrivileges(t, bin, nil) })
	t.Run("user", func(t *testing.T) {
		id, err := privilege.LookupIdentity("nobody")
		if err != nil {
			t.Skip(err)
		}
		agentDropsPrivileges(t, bin, &id)
	})
}

func agentDropsPrivileges(t *testing.T, bin string, as *privilege.Identity) {
	peer, addr := startPeer(t, "TestSIGTERMPeer", peerEnv+"=1")
	base := "http://" + addr

	dir := t.TempDir()
	spans := filepath.Join(dir, "spans.jsonl")
	spool := filepath.Join(dir, "spool")
	ops := freeAddr(t)
	stderr := &syncBuffer{}
	args := []string{"agent", "--pid", strconv.Itoa(peer.Process.Pid), "--host", "privilege", "--ops-listen", ops, "--log-level", "debug"}
	if as == nil {
		args = append(args, "--spans-out", spans)
	} else {
		// Nothing listens on the engine's address: every batch goes to
		// the spool.
		args = append(args, "--user", as.Name, "--es-url", "http://"+freeAddr(t), "--spool-dir", spool)
	}
	agent := exec.Command(bin, args...)
	agent.Env = append(os.Environ(), "DEEPTRACE_CONFIG=")
	agent.Stderr = stderr
	if err := agent.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- agent.Wait() }()
	t.Cleanup(func() { agent.Process.Kill() })
	for !strings.Contains(stderr.String(), "privileges dropped") {
		select {
		case err := <-exited:
			if strings.Contains(stderr.String(), "privilege") && !strings.Contains(stderr.String(), "capture attached") {
				t.Skipf("the agent cannot load eBPF here: %s", stderr.String())
			}
			t.Fatalf("agent exited: %v\n%s", err, stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if strings.Contains(stderr.String(), "capabilities not dropped") {
			t.Fatalf("the agent could not drop its capabilities:\n%s", stderr.String())
		}
	}
	st, err := privilege.ReadStatusOf(strconv.Itoa(agent.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var want uint64
	for _, v := range privilege.KernelNeeds(false).Keep() {
		want |= 1 << v
	}
	if st.Eff != want || st.Prm != want || st.Bnd != want || st.Inh != 0 || st.Amb != 0 || !st.NoNewPrivs {
		t.Fatalf("agent after the drop: %+v, want CapEff = CapPrm = CapBnd = %x (%s) and no_new_privs", st, want, privilege.Names(want))
	}
	wantUID, wantGID := 0, 0
	if as != nil {
		wantUID, wantGID = as.UID, as.GID
	}
	for i := range 4 {
		if st.UIDs[i] != wantUID || st.GIDs[i] != wantGID {
			t.Fatalf("agent after the drop: uids %v gids %v, want all %d and %d", st.UIDs, st.GIDs, wantUID, wantGID)
		}
	}
	m := regexp.MustCompile(`"cap_eff_before":"([0-9a-f]+)"`).FindStringSubmatch(stderr.String())
	if m == nil {
		t.Fatalf("no cap_eff_before in the log:\n%s", stderr.String())
	}
	before, _ := strconv.ParseUint(m[1], 16, 64)
	if before&^want == 0 {
		t.Fatalf("CapEff before the drop %x: nothing to drop, the test proves nothing", before)
	}
	t.Logf("agent CapEff %x (%s) -> %x (%s)", before, privilege.Names(before), st.Eff, privilege.Names(st.Eff))

	const requests = 20
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	for i := range requests {
		res, err := client.Get(fmt.Sprintf("%s/after-drop/%d", base, i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, res.Body)
		res.Body.Close()
	}
	// The counters read through the maps' fds after the drop.
	var metrics string
	for end := time.Now().Add(10 * time.Second); time.Now().Before(end); time.Sleep(100 * time.Millisecond) {
		if res, err := http.Get("http://" + ops + "/metrics"); err == nil {
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()
			metrics = string(b)
			if regexp.MustCompile(`(?m)^deeptrace_capture_events_total [1-9]`).MatchString(metrics) {
				break
			}
		}
	}
	if !regexp.MustCompile(`(?m)^deeptrace_capture_events_total [1-9]`).MatchString(metrics) {
		t.Errorf("no capture events counted after the drop:\n%s", metrics)
	}
	if as != nil {
		// The spans of those requests reach the spool, written by the
		// agent as nobody.
		spooled := regexp.MustCompile(`(?m)^deeptrace_export_spans_spooled_total(?:\{[^}]*\})? ([0-9]+)`)
		for end := time.Now().Add(15 * time.Second); ; time.Sleep(200 * time.Millisecond) {
			if res, err := http.Get("http://" + ops + "/metrics"); err == nil {
				b, _ := io.ReadAll(res.Body)
				res.Body.Close()
				metrics = string(b)
			}
			if m := spooled.FindStringSubmatch(metrics); m != nil && m[1] != "0" {
				n, _ := strconv.Atoi(m[1])
				if n >= requests {
					break
				}
			}
			if time.Now().After(end) {
				t.Fatalf("the agent as %s spooled fewer than %d spans:\n%s\n%s", as.Name, requests, spooled.FindString(metrics), stderr.String())
			}
		}
	}
	agent.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("agent after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent still running 30s after SIGTERM")
	}
	if as != nil {
		// Every spool file is the agent's user's, none root's.
		n := 0
		filepath.WalkDir(spool, func(p string, d os.DirEntry, err error) error {
			if err != nil {
				t.Error(err)
				return nil
			}
			fi, _ := d.Info()
			if sys, ok := fi.Sys().(*syscall.Stat_t); ok && int(sys.Uid) != as.UID {
				t.Errorf("%s belongs to uid %d, want %s's %d", p, sys.Uid, as.Name, as.UID)
			}
			if !d.IsDir() {
				n++
			}
			return nil
		})
		if n == 0 {
			t.Errorf("no spool file in %s", spool)
		}
		if strings.Contains(stderr.String(), "permission denied") {
			t.Errorf("the agent was refused a write:\n%s", stderr.String())
		}
		return
	}
	b, err := os.ReadFile(spans)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		var sp schemas.Span
		if json.Unmarshal([]byte(line), &sp) == nil && sp.Role == schemas.RoleServer {
			seen[sp.Path] = true
		}
	}
	for i := range requests {
		if !seen[fmt.Sprintf("/after-drop/%d", i)] {
			t.Errorf("request %d after the drop not captured (%d server spans)", i, len(seen))
		}
	}
}

// --user is checked before anything is loaded: a user that does not
// exist, root, or a replay (which attaches no capture to drop from) stop
// the agent at once with the reason.
func TestAgentUserRefused(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := sigtermBinary(t)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--user", "no-such-user-here", "--spans-out", "-"}, `user "no-such-user-here"`},
		{[]string{"--user", "root", "--spans-out", "-"}, "is root (uid 0)"},
		{[]string{"--user", "nobody", "--replay", os.DevNull, "--spans-out", "-"}, "--replay attaches none"},
		{[]string{"--user", "nobody", "--drop-privileges=false", "--spans-out", "-"}, "--user needs --drop-privileges"},
	} {
		cmd := exec.Command(bin, append([]string{"agent", "--host", "u", "--ops-listen="}, c.args...)...)
		cmd.Env = append(os.Environ(), "DEEPTRACE_CONFIG=")
		out, err := cmd.CombinedOutput()
		if err == nil || !strings.Contains(string(out), c.want) {
			t.Errorf("agent %v: %v\n%s\nwant a refusal saying %q", c.args, err, out, c.want)
		}
	}
}
