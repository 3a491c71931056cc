package faults

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// table is every fault's row, printed once by TestMain.
var table Table

// engines are the suite's own; nil when the suite is off.
var engines *Engines

// bin is the deeptrace binary the suite runs.
var bin string

const gate = "DEEPTRACE_FAULTS"

func TestMain(m *testing.M) {
	if os.Getenv(gate) != "1" {
		// The tests skip themselves, saying why.
		os.Exit(m.Run())
	}
	os.Exit(suite(m))
}

func suite(m *testing.M) int {
	dir, err := os.MkdirTemp("", "deeptrace-faults")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	engines, err = NewEngines(filepath.Join(dir, "state"))
	if err == nil {
		err = engines.Up("")
	}
	defer engines.Down("")
	if err != nil {
		fmt.Fprintln(os.Stderr, "faults: private engines:", err)
		return 1
	}
	// internal/testenv (and the children) use the private engines.
	os.Setenv("DEEPTRACE_ES_URL", engines.ESURL())
	os.Setenv("DEEPTRACE_REDIS_ADDR", engines.RedisAddr())
	bin = filepath.Join(dir, "deeptrace")
	if out, err := exec.Command("go", "build", "-o", bin, filepath.Join(repoRoot(), "cmd", "deeptrace")).CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "faults: go build: %v\n%s", err, out)
		return 1
	}
	code := m.Run()
	md := table.Markdown()
	fmt.Printf("\nDeepTrace fault-and-load suite (OpenSearch %s, Redis %s, private to the suite)\n\n%s\n", engines.ESURL(), engines.RedisAddr(), md)
	if p := os.Getenv("DEEPTRACE_FAULTS_TABLE"); p != "" {
		if err := os.WriteFile(p, []byte(md), 0o644); err != nil {
			fmt.Fprintln(os.Stderr, err)
		}
	}
	return code
}

// gated skips t unless the suite is on.
func gated(t *testing.T) {
	t.Helper()
	if os.Getenv(gate) != "1" {
		t.Skip("stops and restarts engines and processes; run with DEEPTRACE_FAULTS=1 (./task faults)")
	}
}

// record adds t's row when t ends, with its result.
func record(t *testing.T, r *Row) {
	t.Cleanup(func() {
		switch {
		case t.Skipped():
			r.Result = "SKIP"
		case t.Failed():
			if r.Result == "" {
				r.Result = "FAIL"
			} else {
				r.Result = "FAIL: " + r.Result
			}
		default:
			r.Result = "PASS"
		}
		table.Add(*r)
	})
}

func waitFor(t *testing.T, d time.Duration, what string, ok func() bool) time.Duration {
	t.Helper()
	start := time.Now()
	for !ok() {
		if time.Since(start) > d {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return time.Since(start)
}

func ctxTimeout(d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	_ = cancel // released when the deadline passes
	return ctx
}
