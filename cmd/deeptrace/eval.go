package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/agent/correlate"
	"github.com/deeptrace/deeptrace/eval"
	"github.com/deeptrace/deeptrace/eval/bench"
	"github.com/deeptrace/deeptrace/eval/capfile"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// evalCmd is `deeptrace eval`: local correlation scored against the demo
// workload's ground truth, and the accuracy benchmark.
func evalCmd() *cobra.Command {
	var (
		es                     esFlags
		spansFile, captureFile string
		truthDir, method       string
		from, to               string
		asJSON                 bool
		wrong                  int
	)
	cmd := withEnv(&cobra.Command{
		Use:   "eval",
		Short: "Score local correlation (parent links, whole traces) against the workload's ground truth",
		Long: `Reads spans — a JSONL file (--spans), the store over a time range (--es-url,
--from, --to), or a recorded capture replayed through conntrack and the
correlator (--capture, with --method, all methods when empty) — and the
workload's truth logs (--truth), matches each truth record to its span by
connection ports and time, and prints trace accuracy (share of root requests
whose whole trace is exactly right), parent-link precision and recall, per
service and overall. Subcommands record captures and run the benchmark.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if truthDir == "" {
				return fmt.Errorf("--truth is required (the workload's truth directory)")
			}
			n := 0
			for _, set := range []bool{spansFile != "", captureFile != "", from != "" || to != ""} {
				if set {
					n++
				}
			}
			if n != 1 {
				return fmt.Errorf("give exactly one of --spans, --capture, or --from/--to (the store)")
			}
			t, err := eval.LoadTruth(truthDir)
			if err != nil {
				return err
			}
			var reports []*eval.Report
			switch {
			case captureFile != "":
				methods := correlate.Methods
				if method != "" {
					m, err := correlate.ParseMethod(method)
					if err != nil {
						return err
					}
					methods = []correlate.Method{m}
				}
				for _, m := range methods {
					res, err := bench.Correlate(captureFile, correlate.Config{Method: m})
					if err != nil {
						return err
					}
					r := eval.Evaluate(t, res.Spans, res.Values)
					r.Method = string(m)
					reports = append(reports, r)
				}
			default:
				var spans []schemas.Span
				if spansFile != "" {
					spans, err = readSpans(spansFile)
				} else {
					spans, err = storeSpans(c, &es, from, to)
				}
				if err != nil {
					return err
				}
				r := eval.Evaluate(t, spans, nil)
				r.Method = method
				reports = append(reports, r)
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(reports)
			}
			for i, r := range reports {
				if i > 0 {
					fmt.Println()
				}
				r.Print(os.Stdout)
				if wrong > 0 {
					fmt.Println("most frequent wrong links:")
					r.PrintWrong(os.Stdout, wrong)
				}
			}
			return nil
		},
	})
	f := cmd.Flags()
	f.StringVar(&spansFile, "spans", "", "spans as JSON lines (schemas.Span)")
	f.StringVar(&captureFile, "capture", "", "a recorded capture (deeptrace eval record) to correlate and score")
	f.StringVar(&truthDir, "truth", "", "the workload's truth directory (<service>.jsonl)")
	f.StringVar(&method, "method", "", "correlation method: ours, thread or fifo (with --capture: which to run, default all; else a label)")
	f.StringVar(&from, "from", "", "store: spans from this time (RFC 3339, or a duration before now such as 15m)")
	f.StringVar(&to, "to", "", "store: spans up to this time (RFC 3339, or a duration before now; default now)")
	f.BoolVar(&asJSON, "json", false, "print the reports as JSON")
	f.IntVar(&wrong, "wrong", 0, "also list the N most frequent kinds of wrong link")
	es.register(f)
	cmd.AddCommand(evalRecordCmd(), evalBenchCmd(), evalExportCmd())
	return cmd
}

func readSpans(path string) ([]schemas.Span, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var out []schemas.Span
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" {
			continue
		}
		var s schemas.Span
		if err := json.Unmarshal([]byte(line), &s); err != nil {
			return nil, fmt.Errorf("%s:%d: %w", path, n, err)
		}
		out = append(out, s)
	}
	return out, sc.Err()
}

// evalWhen reads an RFC 3339 time or a duration before now.
func evalWhen(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return now, nil
	}
	if d, err := time.ParseDuration(s); err == nil {
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: want RFC 3339 or a duration such as 15m", s)
	}
	return t, nil
}

func storeSpans(c *cobra.Command, es *esFlags, from, to string) ([]schemas.Span, error) {
	now := time.Now()
	f, err := evalWhen(from, now)
	if err != nil {
		return nil, fmt.Errorf("--from %w", err)
	}
	t, err := evalWhen(to, now)
	if err != nil {
		return nil, fmt.Errorf("--to %w", err)
	}
	if !f.Before(t) {
		return nil, fmt.Errorf("--from %s is not before --to %s", f.Format(time.RFC3339), t.Format(time.RFC3339))
	}
	s, err := es.open()
	if err != nil {
		return nil, err
	}
	return s.Spans(c.Context(), store.Query{From: f, To: t})
}

func evalRecordCmd() *cobra.Command {
	var (
		servicesFile, out string
		duration          time.Duration
		goSched, goCreate bool
	)
	cmd := withEnv(&cobra.Command{
		Use:   "record [-- command args...]",
		Short: "Record the eBPF capture of the workload's services to a file, while a command runs or for --duration (needs root)",
		RunE: func(c *cobra.Command, args []string) error {
			if servicesFile == "" || out == "" {
				return fmt.Errorf("--services and --out are required")
			}
			b, err := os.ReadFile(servicesFile)
			if err != nil {
				return err
			}
			var svcs []struct {
				Name string `json:"name"`
				Pid  uint32 `json:"pid"`
				Kind string `json:"kind"`
			}
			if err := json.Unmarshal(b, &svcs); err != nil {
				return fmt.Errorf("%s: %w", servicesFile, err)
			}
			meta := capfile.Meta{Services: map[uint32]string{}, Host: "bench", GoCreation: goCreate, GoScheduling: goSched, Note: strings.Join(args, " ")}
			for _, s := range svcs {
				if s.Kind == "" || s.Kind == "service" {
					meta.Services[s.Pid] = s.Name
				}
			}
			rec, err := bench.StartRecording(out, meta)
			if err != nil {
				return err
			}
			var runErr error
			if len(args) > 0 {
				cmd := exec.CommandContext(c.Context(), args[0], args[1:]...)
				cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
				runErr = cmd.Run()
				time.Sleep(time.Second)
			} else {
				select {
				case <-time.After(duration):
				case <-c.Context().Done():
				}
			}
			err = rec.Stop()
			fmt.Fprintf(os.Stderr, "capture: %s\n", rec.Summary())
			if runErr != nil {
				return runErr
			}
			return err
		},
	})
	cmd.Flags().StringVar(&servicesFile, "services", "", "the workload's services.json (pids to trace)")
	cmd.Flags().StringVar(&out, "out", "", "capture file to write")
	cmd.Flags().DurationVar(&duration, "duration", 10*time.Second, "how long to record when no command is given")
	cmd.Flags().BoolVar(&goCreate, "go-creation", true, "record every goroutine creation (uprobes on runtime.newproc1)")
	cmd.Flags().BoolVar(&goSched, "go-scheduling", false, "also record goroutine switches (runtime.casgstatus uprobe)")
	return cmd
}

func evalBenchCmd() *cobra.Command {
	var (
		cfg      bench.Config
		levels   []int
		methods  []string
		skipRec  bool
		state    string
		portBase int
		jsonOut  string
		quiet    bool
		services bool
	)
	cmd := withEnv(&cobra.Command{
		Use:   "bench",
		Short: "The accuracy benchmark: the workload at each concurrency, captured once, correlated by every method, one table",
		Long: `Runs workload/run.sh with its own state directory and ports, one fresh start
per concurrency level; records the eBPF capture of the services during the
load generator's run (needs root; --skip-record reuses the captures in --out);
replays each capture through conntrack and the correlator once per method and
prints one table: trace accuracy and parent-link precision/recall of each
method at each level.`,
		RunE: func(c *cobra.Command, _ []string) error {
			cfg.Levels = levels
			for _, m := range methods {
				pm, err := correlate.ParseMethod(m)
				if err != nil {
					return err
				}
				cfg.Methods = append(cfg.Methods, pm)
			}
			var err error
			if cfg.Out, err = filepath.Abs(cfg.Out); err != nil {
				return err
			}
			if state == "" {
				state = filepath.Join(cfg.Out, "state")
			}
			cfg.StateDir = filepath.Join(state, "workload")
			cfg.Env = []string{"DEEPTRACE_STATE=" + state, fmt.Sprintf("DEEPTRACE_WORKLOAD_PORT_BASE=%d", portBase)}
			cfg.Log = os.Stderr
			if quiet {
				cfg.Log = io.Discard
			}
			if !skipRec {
				if err := bench.Record(cfg); err != nil {
					return err
				}
			}
			rs, err := bench.Score(cfg)
			if err != nil {
				return err
			}
			if jsonOut != "" {
				b, _ := json.MarshalIndent(rs, "", "  ")
				if err := os.WriteFile(jsonOut, append(b, '\n'), 0o644); err != nil {
					return err
				}
			}
			bench.Table(os.Stdout, rs)
			if services {
				names := []string{}
				ms := cfg.Methods
				if len(ms) == 0 {
					ms = correlate.Methods
				}
				for _, m := range ms {
					names = append(names, string(m))
				}
				if cfg.Ablation {
					names = append(names, "ours-noids")
				}
				for _, m := range names {
					fmt.Println()
					bench.ServiceTable(os.Stdout, rs, m)
				}
			}
			return nil
		},
	})
	f := cmd.Flags()
	f.StringVar(&cfg.Workload, "workload", "workload/run.sh", "the workload's run.sh")
	f.StringVar(&cfg.Out, "out", ".state/accuracy", "where captures, truth copies and results go")
	f.StringVar(&state, "state", "", "the workload's state root (DEEPTRACE_STATE for run.sh; default <out>/state)")
	f.IntVar(&portBase, "port-base", 28080, "the workload's first port (its own, away from a demo on 18080)")
	f.IntSliceVar(&levels, "levels", []int{1, 8, 32, 128}, "concurrency levels")
	f.DurationVar(&cfg.Duration, "duration", 10*time.Second, "load per level")
	f.StringSliceVar(&methods, "methods", nil, "methods to score (default all)")
	f.BoolVar(&cfg.GoCreation, "go-creation", true, "record every goroutine creation (uprobes on runtime.newproc1)")
	f.BoolVar(&cfg.GoScheduling, "go-scheduling", false, "also record goroutine switches (runtime.casgstatus)")
	f.BoolVar(&skipRec, "skip-record", false, "score the captures already in --out")
	f.StringVar(&jsonOut, "json", "", "also write the results as JSON to this file")
	f.BoolVar(&quiet, "quiet", false, "no progress output")
	f.BoolVar(&services, "services", true, "also print trace accuracy per service for each method")
	f.BoolVar(&cfg.Ablation, "ablation", false, "also score ours with the exchanges' ids ignored (ours-noids)")
	return cmd
}

func evalExportCmd() *cobra.Command {
	var (
		capture, truth, service, out string
		first, calls                 int
	)
	cmd := &cobra.Command{
		Use:   "export-recording",
		Short: "Write what one service's correlator received from a capture, with the true parents (agent/correlate/testdata)",
		RunE: func(c *cobra.Command, _ []string) error {
			if capture == "" || truth == "" || service == "" || out == "" {
				return fmt.Errorf("--capture, --truth, --service and --out are required")
			}
			f, err := os.Create(out)
			if err != nil {
				return err
			}
			if err := bench.ExportRecording(capture, truth, service, first, calls, f); err != nil {
				f.Close()
				return err
			}
			return f.Close()
		},
	}
	cmd.Flags().StringVar(&capture, "capture", "", "capture file")
	cmd.Flags().StringVar(&truth, "truth", "", "truth directory of the capture")
	cmd.Flags().StringVar(&service, "service", "", "service to export")
	cmd.Flags().StringVar(&out, "out", "", "output file (.jsonl.gz)")
	cmd.Flags().IntVar(&first, "first", 1000, "first call to keep (by arrival)")
	cmd.Flags().IntVar(&calls, "calls", 300, "calls to keep")
	return cmd
}
