package main

import (
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/schollz/progressbar/v3"
	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/deeptrace/deeptrace/api/client"
	"github.com/deeptrace/deeptrace/jobs"
)

// followFlags say how a job is followed.
type followFlags struct {
	follow   bool
	interval time.Duration
	progress string
}

func (f *followFlags) register(cmd *cobra.Command) {
	fs := cmd.Flags()
	fs.BoolVarP(&f.follow, "follow", "f", false, "poll the job until it finishes, showing its progress; exit 1 when a task failed")
	fs.DurationVar(&f.interval, "interval", time.Second, "how often --follow polls")
	fs.StringVar(&f.progress, "progress", "auto", "how --follow shows progress on stderr: bar, lines, none, or auto (a bar on a terminal, lines otherwise)")
}

func (f *followFlags) validate() error {
	switch f.progress {
	case "auto", "bar", "lines", "none":
	default:
		return fmt.Errorf("--progress %q: want auto, bar, lines or none", f.progress)
	}
	if f.interval < 50*time.Millisecond {
		return fmt.Errorf("--interval %s: want at least 50ms", f.interval)
	}
	return nil
}

func reassembleCmd() *cobra.Command {
	var cf clientFlags
	var ff followFlags
	var from, to string
	var req client.ReassemblyRequest
	cmd := clientCmd(&cobra.Command{
		Use:   "reassemble",
		Short: "Re-run trace assembly over a past range (operator token), optionally following its progress",
		Long: `Start a reassembly job: the API plans one assembly task per window of the
range and service shard (all shards, or those of --service), the workers run
them, and the traces of the range are rewritten in place (trace ids derive
from root spans, so nothing is duplicated). Use it after late spans arrived,
after a fix to the assembler, or after restoring a span index.

With --follow it polls the job and draws a progress bar of the tasks
accounted for (done and failed) until every task is; it exits 1 when any
task failed. Without it, it prints the job id; follow it later with
'deeptrace jobs ID --follow'.`,
		Example: `  deeptrace reassemble --from 2h --to 1h --follow
  deeptrace reassemble --from '2026-01-02 10:00' --to '2026-01-02 12:00' --service orders --service payments
  deeptrace reassemble --from 30m --to now --window 1m --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			if err := ff.validate(); err != nil {
				return err
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			now := time.Now()
			if req.From, err = parseWhen("from", from, now); err != nil {
				return err
			}
			if req.To, err = parseWhen("to", to, now); err != nil {
				return err
			}
			if req.From.IsZero() {
				return fmt.Errorf("--from is required")
			}
			if req.To.IsZero() {
				req.To = now
			}
			if !req.To.After(req.From) {
				return fmt.Errorf("--to %s is not after --from %s", req.To.Format(time.RFC3339), req.From.Format(time.RFC3339))
			}
			job, err := cl.StartReassembly(c.Context(), req)
			if err != nil {
				return err
			}
			if !ff.follow {
				if cf.json {
					return writeJSON(c.OutOrStdout(), job)
				}
				fmt.Fprintf(c.OutOrStdout(), "started reassembly %s: %d tasks over %s .. %s (window %s, %d shards)\nfollow it with: deeptrace jobs %s --follow\n",
					job.ID, job.Total, fmtTime(job.From), fmtTime(job.To), time.Duration(job.Window), job.Shards, job.ID)
				return nil
			}
			return followJob(c, cl, job, &ff, cf.json)
		},
	}, &cf)
	fs := cmd.Flags()
	fs.StringVar(&from, "from", "", "start of the range: RFC 3339, \"2026-01-02 15:04\" (local), Unix ms, or a time ago (2h) (required)")
	fs.StringVar(&to, "to", "", "end of the range (same forms); default now")
	fs.StringArrayVar(&req.Services, "service", nil, "reassemble only the shards holding this service (repeat)")
	fs.StringVar(&req.Window, "window", "", "assembly window of each task (default: the server's, 5m)")
	fs.IntVar(&req.Shards, "shards", 0, "service shards (default: the server's; match the scheduler's)")
	ff.register(cmd)
	return cmd
}

func jobsCmd() *cobra.Command {
	var cf clientFlags
	var ff followFlags
	var limit int
	cmd := clientCmd(&cobra.Command{
		Use:   "jobs [JOB_ID]",
		Short: "List reassembly jobs with their progress, or show (and --follow) one",
		Args:  cobra.MaximumNArgs(1),
		Example: `  deeptrace jobs
  deeptrace jobs 20260102t100000-0123456789abcdef --follow`,
		RunE: func(c *cobra.Command, args []string) error {
			if err := ff.validate(); err != nil {
				return err
			}
			cl, err := cf.client()
			if err != nil {
				return err
			}
			if len(args) == 0 {
				if ff.follow {
					return fmt.Errorf("--follow needs a job id")
				}
				list, err := cl.Jobs(c.Context(), limit)
				if err != nil {
					return err
				}
				if cf.json {
					return writeJSON(c.OutOrStdout(), map[string]any{"jobs": list})
				}
				return printJobs(c.OutOrStdout(), list)
			}
			job, err := cl.Job(c.Context(), args[0])
			if err != nil {
				return err
			}
			if ff.follow {
				return followJob(c, cl, job, &ff, cf.json)
			}
			if cf.json {
				return writeJSON(c.OutOrStdout(), job)
			}
			return printJobs(c.OutOrStdout(), []jobs.JobStatus{job})
		},
	}, &cf)
	cmd.Flags().IntVar(&limit, "limit", 20, "most jobs to list, newest first")
	ff.register(cmd)
	return cmd
}

func printJobs(w io.Writer, list []jobs.JobStatus) error {
	if len(list) == 0 {
		_, err := fmt.Fprintln(w, "no reassembly jobs")
		return err
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "JOB ID\tSTATE\tPROGRESS\tDONE\tFAILED\tTOTAL\tRANGE\tSERVICES\tCREATED")
	for _, j := range list {
		svcs := strings.Join(j.Services, ",")
		if svcs == "" {
			svcs = "all"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\t%d\t%s .. %s\t%s\t%s\n", j.ID, j.State, percent(j), j.Done, j.Failed, j.Total,
			fmtTime(j.From), fmtTime(j.To), svcs, fmtTime(j.Created))
	}
	return tw.Flush()
}

func percent(j jobs.JobStatus) string {
	if j.Total == 0 {
		return "100%"
	}
	return fmt.Sprintf("%d%%", (j.Done+j.Failed)*100/j.Total)
}

// followJob polls a job until it finishes, drawing its progress on
// stderr, then prints the outcome on stdout.
func followJob(c *cobra.Command, cl *client.Client, job jobs.JobStatus, ff *followFlags, asJSON bool) error {
	errw := c.ErrOrStderr()
	mode := ff.progress
	if mode == "auto" {
		mode = "lines"
		if f, ok := errw.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
			mode = "bar"
		}
	}
	var pb *progressbar.ProgressBar
	if mode == "bar" {
		pb = progressbar.NewOptions(job.Total,
			progressbar.OptionSetWriter(errw),
			progressbar.OptionSetDescription("reassembly "+job.ID),
			progressbar.OptionShowCount(),
			progressbar.OptionSetPredictTime(true),
			progressbar.OptionSetElapsedTime(true),
			progressbar.OptionSetWidth(30),
			progressbar.OptionThrottle(100*time.Millisecond),
			progressbar.OptionSetTheme(progressbar.ThemeASCII),
			progressbar.OptionOnCompletion(func() { fmt.Fprintln(errw) }),
		)
	}
	last := -1
	report := func(s jobs.JobStatus) {
		n := s.Done + s.Failed
		switch mode {
		case "bar":
			if s.Failed > 0 {
				pb.Describe(fmt.Sprintf("reassembly %s (%d failed)", s.ID, s.Failed))
			}
			_ = pb.Set(n)
		case "lines":
			if n != last {
				fmt.Fprintf(errw, "reassembly %s: %d/%d tasks (%s), %d failed\n", s.ID, n, s.Total, percent(s), s.Failed)
			}
		}
		last = n
	}
	report(job)
	final := job
	var err error
	if !job.IsFinished() {
		final, err = cl.WatchJob(c.Context(), job.ID, ff.interval, report)
	}
	if pb != nil && !pb.IsFinished() {
		_ = pb.Exit()
		fmt.Fprintln(errw)
	}
	if err != nil {
		if c.Context().Err() != nil {
			return fmt.Errorf("stopped following reassembly %s at %d/%d tasks; it goes on: deeptrace jobs %s --follow", job.ID, last, job.Total, job.ID)
		}
		return err
	}
	if asJSON {
		if err := writeJSON(c.OutOrStdout(), final); err != nil {
			return err
		}
	} else {
		took := final.Finished.Sub(final.Created).Round(10 * time.Millisecond)
		fmt.Fprintf(c.OutOrStdout(), "reassembly %s %s: %d of %d tasks done, %d failed, in %s\n", final.ID, final.State, final.Done, final.Total, final.Failed, took)
	}
	if final.State == jobs.StateFailed {
		return fmt.Errorf("reassembly %s: %d of %d tasks failed (the workers' logs say why)", final.ID, final.Failed, final.Total)
	}
	return nil
}
