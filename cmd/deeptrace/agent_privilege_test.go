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
// exchange made after the drop and serve its capture counters.
func TestAgentDropsPrivileges(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	if os.Geteuid() != 0 {
		t.Skip("the agent needs root to load eBPF")
	}
	bin := sigtermBinary(t)
	peer, addr := startPeer(t, "TestSIGTERMPeer", peerEnv+"=1")
	base := "http://" + addr

	dir := t.TempDir()
	spans := filepath.Join(dir, "spans.jsonl")
	ops := freeAddr(t)
	stderr := &syncBuffer{}
	agent := exec.Command(bin, "agent", "--pid", strconv.Itoa(peer.Process.Pid), "--spans-out", spans, "--host", "privilege",
		"--ops-listen", ops, "--log-level", "debug")
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
	agent.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("agent after SIGTERM: %v\n%s", err, stderr.String())
		}
	case <-time.After(30 * time.Second):
		t.Fatal("agent still running 30s after SIGTERM")
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
