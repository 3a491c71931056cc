// Package bench is the accuracy benchmark of local correlation: it runs
// the demo workload (workload/run.sh) at several concurrency levels,
// records what the eBPF capture sees of its services into one capture file
// per level, then replays each capture through conntrack and the
// correlator once per method and scores the spans against the workload's
// ground truth. Recording once and correlating offline makes the
// comparison fair: every method sees the very same events.
package bench

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/deeptrace/deeptrace/agent/correlate"
	"github.com/deeptrace/deeptrace/eval"
	"github.com/deeptrace/deeptrace/eval/capfile"
)

// Config says what to run.
type Config struct {
	// Workload is workload/run.sh.
	Workload string
	// Env is the environment for run.sh (DEEPTRACE_STATE, port base).
	Env []string
	// StateDir is run.sh's state directory ($DEEPTRACE_STATE/workload).
	StateDir string
	// Out is where captures, truth copies and results go.
	Out string
	// Levels are the concurrencies (default 1, 8, 32, 128).
	Levels []int
	// Duration of the load at each level (default 10s).
	Duration time.Duration
	// GoCreation records every goroutine creation (uprobes on
	// runtime.newproc1); GoScheduling every goroutine switch.
	GoCreation, GoScheduling bool
	// Methods to score (default all).
	Methods []correlate.Method
	// Ablation also scores ours with the exchanges' ids ignored
	// ("ours-noids"): what execution context and timing achieve alone.
	Ablation bool
	// Log receives progress lines.
	Log io.Writer
}

func (c *Config) defaults() {
	if len(c.Levels) == 0 {
		c.Levels = []int{1, 8, 32, 128}
	}
	if c.Duration <= 0 {
		c.Duration = 10 * time.Second
	}
	if len(c.Methods) == 0 {
		c.Methods = correlate.Methods
	}
	if c.Log == nil {
		c.Log = io.Discard
	}
}

// CapturePath and TruthDir name a level's capture file and truth copy.
func CapturePath(out string, level int) string {
	return filepath.Join(out, fmt.Sprintf("c%d.cap", level))
}

// TruthDir is where a level's copy of the truth logs goes.
func TruthDir(out string, level int) string {
	return filepath.Join(out, fmt.Sprintf("c%d.truth", level))
}

func (c *Config) run(args ...string) error {
	cmd := exec.Command(c.Workload, args...)
	cmd.Env = append(os.Environ(), c.Env...)
	cmd.Stdout, cmd.Stderr = c.Log, c.Log
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("%s %s: %w", c.Workload, strings.Join(args, " "), err)
	}
	return nil
}

type service struct {
	Name string `json:"name"`
	Pid  uint32 `json:"pid"`
	Kind string `json:"kind"`
}

// Record runs the workload at each level and records it: a fresh start of
// the services per level (every pooled connection is then opened while
// the capture watches, as HTTP/2 header compression needs), the capture
// attached to the services, the load generator, the truth logs copied.
// Needs root.
func Record(cfg Config) error {
	cfg.defaults()
	if err := os.MkdirAll(cfg.Out, 0o755); err != nil {
		return err
	}
	defer cfg.run("down")
	for _, level := range cfg.Levels {
		fmt.Fprintf(cfg.Log, "== concurrency %d: fresh workload\n", level)
		_ = cfg.run("down")
		if err := cfg.run("up"); err != nil {
			return err
		}
		b, err := os.ReadFile(filepath.Join(cfg.StateDir, "services.json"))
		if err != nil {
			return err
		}
		var svcs []service
		if err := json.Unmarshal(b, &svcs); err != nil {
			return fmt.Errorf("services.json: %w", err)
		}
		meta := capfile.Meta{Services: map[uint32]string{}, Host: "bench", GoCreation: cfg.GoCreation, GoScheduling: cfg.GoScheduling,
			Note: fmt.Sprintf("workload at concurrency %d for %s", level, cfg.Duration)}
		for _, s := range svcs {
			if s.Kind == "service" {
				meta.Services[s.Pid] = s.Name
			}
		}
		rec, err := StartRecording(CapturePath(cfg.Out, level), meta)
		if err != nil {
			return err
		}
		time.Sleep(500 * time.Millisecond)
		if err := cfg.run("truth-reset"); err != nil {
			rec.Stop()
			return err
		}
		fmt.Fprintf(cfg.Log, "== concurrency %d: load for %s\n", level, cfg.Duration)
		loadErr := cfg.run("load", "-concurrency", fmt.Sprint(level), "-duration", cfg.Duration.String(), "-seed", fmt.Sprint(level))
		time.Sleep(time.Second) // the services flush their truth every 200ms
		stopErr := rec.Stop()
		fmt.Fprintf(cfg.Log, "== concurrency %d: capture %s\n", level, rec.Summary())
		if loadErr != nil {
			return loadErr
		}
		if stopErr != nil {
			return stopErr
		}
		td := TruthDir(cfg.Out, level)
		_ = os.RemoveAll(td)
		if err := copyDir(filepath.Join(cfg.StateDir, "truth"), td); err != nil {
			return err
		}
	}
	return nil
}

func copyDir(from, to string) error {
	if err := os.MkdirAll(to, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(from)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(from, e.Name()))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(to, e.Name()), b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// Result is one (level, method) score.
type Result struct {
	Level  int             `json:"concurrency"`
	Method string          `json:"method"`
	Report *eval.Report    `json:"report"`
	Stats  correlate.Stats `json:"correlate"`
}

// Score replays each level's capture with each method and evaluates it.
func Score(cfg Config) ([]Result, error) {
	cfg.defaults()
	var out []Result
	for _, level := range cfg.Levels {
		t, err := eval.LoadTruth(TruthDir(cfg.Out, level))
		if err != nil {
			return nil, err
		}
		runs := []struct {
			name string
			cfg  correlate.Config
		}{}
		for _, m := range cfg.Methods {
			runs = append(runs, struct {
				name string
				cfg  correlate.Config
			}{string(m), correlate.Config{Method: m}})
		}
		if cfg.Ablation {
			runs = append(runs, struct {
				name string
				cfg  correlate.Config
			}{"ours-noids", correlate.Config{Method: correlate.Ours, IgnoreValues: true}})
		}
		for _, r := range runs {
			res, err := Correlate(CapturePath(cfg.Out, level), r.cfg)
			if err != nil {
				return nil, err
			}
			rep := eval.Evaluate(t, res.Spans, res.Values)
			rep.Method = r.name
			out = append(out, Result{Level: level, Method: r.name, Report: rep, Stats: res.Correlate})
			fmt.Fprintf(cfg.Log, "concurrency %d %s: trace accuracy %.2f%%\n", level, r.name, 100*rep.Overall.TraceAccuracy())
		}
	}
	return out, nil
}

// Table writes the benchmark's one table: trace accuracy (and parent-link
// precision/recall) of each method at each level.
func Table(w io.Writer, rs []Result) {
	levels := []int{}
	methods := []string{}
	by := map[[2]string]*eval.Report{}
	for _, r := range rs {
		k := [2]string{fmt.Sprint(r.Level), r.Method}
		if by[k] == nil {
			by[k] = r.Report
			if !containsInt(levels, r.Level) {
				levels = append(levels, r.Level)
			}
			if !containsStr(methods, r.Method) {
				methods = append(methods, r.Method)
			}
		}
	}
	sort.Ints(levels)
	fmt.Fprintf(w, "| concurrency | root requests |")
	for _, m := range methods {
		fmt.Fprintf(w, " %s trace acc | %s link P / R |", m, m)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "|---:|---:|")
	for range methods {
		fmt.Fprintf(w, "---:|---:|")
	}
	fmt.Fprintln(w)
	for _, l := range levels {
		var roots int
		for _, m := range methods {
			if r := by[[2]string{fmt.Sprint(l), m}]; r != nil {
				roots = r.Overall.Traces
			}
		}
		fmt.Fprintf(w, "| %d | %d |", l, roots)
		for _, m := range methods {
			r := by[[2]string{fmt.Sprint(l), m}]
			if r == nil {
				fmt.Fprintf(w, " – | – |")
				continue
			}
			c := r.Overall
			fmt.Fprintf(w, " %.2f%% | %.2f%% / %.2f%% |", 100*c.TraceAccuracy(), 100*c.Precision(), 100*c.Recall())
		}
		fmt.Fprintln(w)
	}
}

// ServiceTable writes trace accuracy per service and level for one method.
func ServiceTable(w io.Writer, rs []Result, method string) {
	var svcs []string
	for _, r := range rs {
		if r.Method != method {
			continue
		}
		for s := range r.Report.Services {
			if !containsStr(svcs, s) {
				svcs = append(svcs, s)
			}
		}
	}
	sort.Strings(svcs)
	fmt.Fprintf(w, "| %s: concurrency |", method)
	for _, s := range svcs {
		fmt.Fprintf(w, " %s |", s)
	}
	fmt.Fprintln(w)
	fmt.Fprintf(w, "|---:|")
	for range svcs {
		fmt.Fprintf(w, "---:|")
	}
	fmt.Fprintln(w)
	for _, r := range rs {
		if r.Method != method {
			continue
		}
		fmt.Fprintf(w, "| %d |", r.Level)
		for _, s := range svcs {
			if c := r.Report.Services[s]; c != nil {
				fmt.Fprintf(w, " %.2f%% |", 100*c.TraceAccuracy())
			} else {
				fmt.Fprintf(w, " – |")
			}
		}
		fmt.Fprintln(w)
	}
}

func containsInt(l []int, v int) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}

func containsStr(l []string, v string) bool {
	for _, x := range l {
		if x == v {
			return true
		}
	}
	return false
}
