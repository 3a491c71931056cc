package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/agent/export"
	"github.com/deeptrace/deeptrace/internal/ops"
	"github.com/deeptrace/deeptrace/schemas"
)

func exportSpansCmd() *cobra.Command {
	var (
		es       esFlags
		of       = ops.Flags{Listen: ""}
		file     string
		host     string
		spoolDir string
		spoolMax int64
		batch    int
		rate     float64
		timeout  time.Duration
	)
	cmd := withEnv(&cobra.Command{
		Use:   "export-spans",
		Short: "Push recorded spans (JSON lines) to the engine exactly as the agent does",
		Long: `export-spans reads spans, one JSON document per line (as 'deeptrace agent
--spans-out' writes them), and hands them to the agent's exporter: batched
bulk writes to the hourly span indices, gzip on the wire, and the on-disk
spool while the engine is slow or down. It exits once every span is written,
or with an error saying how many are left in the spool (replayed by the next
run with the same --spool-dir) or were dropped.`,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := of.Logger()
			if err != nil {
				return err
			}
			if file == "" {
				return errors.New("file: required ('-' for stdin)")
			}
			var in io.Reader = os.Stdin
			if file != "-" {
				f, err := os.Open(file)
				if err != nil {
					return fmt.Errorf("file: %w", err)
				}
				defer f.Close()
				in = f
			}
			st, err := es.open()
			if err != nil {
				return err
			}
			ctx := c.Context()
			pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			if err := st.EnsureTemplates(pctx, schemas.DefaultTemplateSettings); err != nil {
				log.Warn("index templates not installed; the engine may be down (spans are spooled)", "err", err)
			}
			cancel()
			if spoolDir == "" {
				spoolDir = filepath.Join(".state", "spool", host)
			}
			// The agent's settings (cmd/deeptrace/agent.go).
			exp, err := export.New(export.Config{Host: host, BatchSize: batch, SpoolDir: spoolDir, SpoolMaxBytes: spoolMax,
				QueueSize: 1 << 16, AddTimeout: 250 * time.Millisecond, Logger: log}, st)
			if err != nil {
				return err
			}
			done := make(chan struct{})
			go func() { defer close(done); exp.Run(context.WithoutCancel(ctx)) }()

			sc := bufio.NewScanner(in)
			sc.Buffer(make([]byte, 1<<20), 64<<20)
			var n int
			start := time.Now()
			var readErr error
			for sc.Scan() && ctx.Err() == nil {
				if len(sc.Bytes()) == 0 {
					continue
				}
				var s schemas.Span
				if err := json.Unmarshal(sc.Bytes(), &s); err != nil {
					readErr = fmt.Errorf("%s line %d: %w", file, n+1, err)
					break
				}
				exp.Add(s)
				n++
				if rate > 0 {
					if ahead := time.Duration(float64(n)/rate*float64(time.Second)) - time.Since(start); ahead > 0 {
						time.Sleep(ahead)
					}
				}
			}
			if err := sc.Err(); err != nil && readErr == nil {
				readErr = fmt.Errorf("%s: %w", file, err)
			}
			cctx, ccancel := context.WithTimeout(context.WithoutCancel(ctx), timeout)
			defer ccancel()
			closeErr := exp.Close(cctx)
			<-done
			stats := exp.Stats()
			log.Info("export done", "read", n, "written", stats.Written, "spooled", stats.Spooled, "replayed", stats.Replayed,
				"rejected", stats.Rejected, "dropped", stats.DroppedTotal(), "spool_spans", stats.SpoolSpans, "took", time.Since(start).Round(time.Millisecond))
			if err := errors.Join(readErr, closeErr); err != nil {
				return err
			}
			if d := stats.DroppedTotal() + stats.Rejected; d > 0 {
				return fmt.Errorf("%d of %d spans not written (dropped %v, rejected %d)", d, n, stats.Dropped, stats.Rejected)
			}
			return nil
		},
	})
	fs := cmd.Flags()
	es.register(fs)
	of.Register(fs)
	hn, _ := os.Hostname()
	fs.StringVar(&file, "file", "", "spans as JSON lines ('-' for stdin)")
	fs.StringVar(&host, "host", hn, "host name stamped on spans that carry none; names the default spool")
	fs.StringVar(&spoolDir, "spool-dir", "", "spool spans here while the engine is unreachable (empty: .state/spool/<host>)")
	fs.Int64Var(&spoolMax, "spool-max-bytes", 1<<30, "bound of the spool on disk; beyond it the oldest spans are dropped and counted")
	fs.IntVar(&batch, "batch-size", 1000, "spans per bulk request")
	fs.Float64Var(&rate, "rate", 0, "spans per second to replay at (0: as fast as the exporter takes them)")
	fs.DurationVar(&timeout, "drain-timeout", time.Minute, "at the end, how long to keep replaying the spool before leaving the rest on disk")
	return cmd
}
