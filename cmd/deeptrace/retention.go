package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/internal/ops"
	"github.com/deeptrace/deeptrace/jobs/retention"
	"github.com/deeptrace/deeptrace/schemas"
)

func retentionCmd() *cobra.Command {
	var es esFlags
	of := ops.Flags{Listen: ops.ListenRetention}
	ages := map[schemas.Kind]*time.Duration{}
	var every time.Duration
	var dryRun bool
	cmd := withEnv(&cobra.Command{
		Use:   "retention",
		Short: "Delete span, trace, metrics and audit indices older than their kind's age",
		Long: `Delete whole indices whose time shard ended longer ago than the age set for
their kind (an age of 0 keeps the kind forever). Only indices under --es-prefix
whose names parse as DeepTrace's (prefix, kind, time suffix) are considered.

Without --every it makes one pass and prints what it did (a Kubernetes
CronJob). With --every it runs a pass at start and then at every interval
until SIGTERM, serving metrics and probes on --ops-listen.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			log, err := of.Logger()
			if err != nil {
				return err
			}
			policy := retention.Policy{}
			for k, d := range ages {
				policy[k] = *d
			}
			if err := policy.Validate(); err != nil {
				return err
			}
			if every < 0 {
				return fmt.Errorf("every %s: want 0 (one pass) or a positive interval", every)
			}
			s, err := es.open()
			if err != nil {
				return err
			}
			ctx := c.Context()
			reg := ops.NewRegistry()
			r := &retention.Retention{Engine: s, Policy: policy, DryRun: dryRun, Log: log, Metrics: retention.NewMetrics(reg)}
			if every == 0 {
				rep, err := r.Run(ctx)
				printRetention(rep)
				if err != nil && ctx.Err() != nil {
					log.Warn("retention interrupted; the next pass finishes it", "err", err)
					return nil
				}
				return err
			}
			log.Info("retention started", "every", every.String(), "dry_run", dryRun, "prefix", s.Indices().Prefix)
			errc := make(chan error, 1)
			go func() {
				errc <- ops.Serve(ctx, of.Listen, reg, func(ctx context.Context) error {
					_, err := s.Ping(ctx)
					return err
				})
			}()
			err = r.Every(ctx, every)
			if serr := <-errc; serr != nil {
				err = errors.Join(err, serr)
			}
			if err == nil {
				log.Info("retention stopped")
			}
			return err
		},
	})
	fs := cmd.Flags()
	es.register(fs)
	of.Register(fs)
	for _, k := range schemas.Kinds {
		d := new(time.Duration)
		ages[k] = d
		fs.DurationVar(d, string(k)+"-age", retention.DefaultPolicy[k], fmt.Sprintf("keep %s indices this long (0: forever)", k))
	}
	fs.DurationVar(&every, "every", 0, "run a pass at this interval until stopped (0: one pass and exit)")
	fs.BoolVar(&dryRun, "dry-run", false, "list what would be deleted without deleting it")
	return cmd
}

func printRetention(rep retention.Report) {
	tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	verb := "DELETED"
	if rep.DryRun {
		verb = "WOULD DELETE"
	}
	fmt.Fprintf(tw, "KIND\tAGE\tCUTOFF\t%s\tKEPT\n", verb)
	for _, k := range rep.Kinds {
		if k.Age == 0 {
			fmt.Fprintf(tw, "%s\tforever\t-\t0\t-\n", k.Kind)
			continue
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%d\n", k.Kind, k.Age, k.Cutoff.Format(time.RFC3339), len(k.Deleted), k.Kept)
	}
	tw.Flush()
	for _, k := range rep.Kinds {
		for _, n := range k.Deleted {
			fmt.Println(n)
		}
	}
}
