package faults

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// runTests runs the named tests of a package in a child `go test` on the
// suite's engines and returns its verbose output.
func runTests(t *testing.T, pkg, run string) (string, error) {
	t.Helper()
	cmd := exec.Command("go", "test", "-count=1", "-v", "-timeout", "10m", "-run", run, "./"+pkg)
	cmd.Dir = repoRoot()
	cmd.Env = append(os.Environ(), "DEEPTRACE_ES_URL="+engines.ESURL(), "DEEPTRACE_REDIS_ADDR="+engines.RedisAddr(), "DEEPTRACE_REQUIRE_ENGINES=1")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

var (
	assembledOnce = regexp.MustCompile(`window assembled exactly once \((\d+) traces\) (\S+) after the (kill|stop)`)
	killedWith    = regexp.MustCompile(`worker 1 killed with (\d+) of (\d+) traces written`)
)

// TestWorkerKilledOrStoppedMidTask kills a worker with SIGKILL, and stops
// another with SIGTERM, in the middle of writing a window's traces
// (worker/e2e's tests, run here on the suite's engines): another worker
// must assemble the window exactly once.
func TestWorkerKilledOrStoppedMidTask(t *testing.T) {
	gated(t)
	kill := &Row{Fault: "worker SIGKILLed mid-task (asynq lease expiry hands the task to another worker)", Checked: "the window is assembled exactly once: every expected trace, no duplicate (worker/e2e TestWorkerKilledMidTask)", Lost: "0 (spans are read, not consumed)"}
	stop := &Row{Fault: "worker SIGTERMed mid-task", Checked: "it exits within its shutdown timeout and returns the task; another worker assembles the window exactly once (worker/e2e TestWorkerStopReturnsTask)", Lost: "0 (spans are read, not consumed)"}
	// Cleanups run last-first: the kill's row comes first in the table.
	record(t, stop)
	record(t, kill)
	out, err := runTests(t, filepath.Join("worker", "e2e"), "^(TestWorkerKilledMidTask|TestWorkerStopReturnsTask)$")
	for _, m := range assembledOnce.FindAllStringSubmatch(out, -1) {
		r := kill
		if m[3] == "stop" {
			r = stop
		}
		r.DupMissing = fmt.Sprintf("0 / 0 of %s traces", m[1])
		if d, perr := time.ParseDuration(m[2]); perr == nil {
			r.Recovery = d
		}
	}
	if m := killedWith.FindStringSubmatch(out); m != nil {
		kill.Checked += fmt.Sprintf("; killed with %s of %s traces written", m[1], m[2])
	}
	if err != nil || strings.Contains(out, "--- FAIL") {
		t.Fatalf("worker/e2e: %v\n%s", err, out)
	}
	for _, r := range []*Row{kill, stop} {
		if r.DupMissing == "" {
			t.Errorf("%s: no result line in the output\n%s", r.Fault, out)
		}
	}
}
