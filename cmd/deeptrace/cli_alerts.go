package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/worker/rollup"
)

// apiGet is a GET on the API with the CLI's flags, decoding JSON into out.
func apiGet(ctx context.Context, f *clientFlags, path string, q url.Values, out any) error {
	u := strings.TrimRight(f.url, "/") + path
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if f.token != "" {
		req.Header.Set("Authorization", "Bearer "+f.token)
	}
	req.Header.Set("User-Agent", "deeptrace-cli")
	resp, err := (&http.Client{Timeout: f.timeout}).Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		_ = json.Unmarshal(b, &e)
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, e.Error)
	}
	return json.Unmarshal(b, out)
}

func alertsCmd() *cobra.Command {
	var (
		f       clientFlags
		history bool
		limit   int
	)
	cmd := clientCmd(&cobra.Command{
		Use:   "alerts",
		Short: "List alert rules with their state, or (--history) their transitions",
		Args:  cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			w := c.OutOrStdout()
			if history {
				var out struct {
					Events []alerting.Event `json:"events"`
				}
				if err := apiGet(c.Context(), &f, "/api/v1/alerts/history", url.Values{"limit": {fmt.Sprint(limit)}}, &out); err != nil {
					return err
				}
				if f.json {
					return writeJSON(w, out)
				}
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "AT\tRULE\tFROM\tTO\tVALUE")
				for _, e := range out.Events {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", fmtTime(e.At), e.RuleName, e.From, e.To, fmtValue(e.Value))
				}
				return tw.Flush()
			}
			var out struct {
				Rules []struct {
					alerting.Rule
					State alerting.State `json:"state"`
				} `json:"rules"`
			}
			if err := apiGet(c.Context(), &f, "/api/v1/alerts/rules", nil, &out); err != nil {
				return err
			}
			if f.json {
				return writeJSON(w, out)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "STATE\tRULE\tCONDITION\tVALUE\tSINCE\tID")
			for _, r := range out.Rules {
				target := r.Service
				switch {
				case r.Operation != "":
					target += " " + r.Operation
				case r.Peer != "":
					target += "→" + r.Peer
				}
				cond := fmt.Sprintf("%s of %s over %s %s %v", r.Metric, target, time.Duration(r.Window), r.Op, r.Threshold)
				if r.For > 0 {
					cond += " for " + time.Duration(r.For).String()
				}
				since := ""
				if !r.State.Since.IsZero() {
					since = fmtTime(r.State.Since)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.State.Status, r.Name, cond, fmtValue(r.State.Value), since, r.ID)
			}
			return tw.Flush()
		},
	}, &f)
	cmd.Flags().BoolVar(&history, "history", false, "print state transitions, newest first")
	cmd.Flags().IntVar(&limit, "limit", 50, "transitions to print with --history")
	return cmd
}

func fmtValue(v *float64) string {
	if v == nil {
		return "no data"
	}
	return trimZeros(fmt.Sprintf("%.3f", *v))
}

func serviceMetricsCmd() *cobra.Command {
	var (
		f         clientFlags
		rf        rangeFlags
		operation string
		peer      string
		step      time.Duration
	)
	cmd := clientCmd(&cobra.Command{
		Use:   "service-metrics SERVICE",
		Short: "Print a service's request rate, errors and latency percentiles per step",
		Long: `The RED metrics the rollup writes, for a service, one of its operations
(--operation) or its calls to another service (--peer), one line per --step.`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			r, err := rf.resolve(time.Now())
			if err != nil {
				return err
			}
			q := url.Values{"service": {args[0]}, "step": {step.String()}}
			if operation != "" {
				q.Set("operation", operation)
			}
			if peer != "" {
				q.Set("peer", peer)
			}
			if !r.From.IsZero() {
				q.Set("from", r.From.UTC().Format(time.RFC3339Nano))
			}
			if !r.To.IsZero() {
				q.Set("to", r.To.UTC().Format(time.RFC3339Nano))
			}
			if r.Lookback > 0 {
				q.Set("lookback", r.Lookback.String())
			}
			var out struct {
				Points []rollup.Point `json:"points"`
			}
			if err := apiGet(c.Context(), &f, "/api/v1/metrics/series", q, &out); err != nil {
				return err
			}
			w := c.OutOrStdout()
			if f.json {
				return writeJSON(w, out)
			}
			tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
			fmt.Fprintln(tw, "TIME\tREQUESTS\tRATE\tERRORS\tP50\tP90\tP99\tMAX\t")
			for _, p := range out.Points {
				fmt.Fprintf(tw, "%s\t%d\t%s\t%.2f%%\t%s\t%s\t%s\t%s\t\n", fmtTime(p.T), p.Count, fmtRate(p.Rate), 100*p.ErrorRate,
					fmtDur(time.Duration(p.P50Ns)), fmtDur(time.Duration(p.P90Ns)), fmtDur(time.Duration(p.P99Ns)), fmtDur(time.Duration(p.MaxNs)))
			}
			return tw.Flush()
		},
	}, &f)
	rf.register(cmd.Flags(), "metrics")
	cmd.Flags().StringVar(&operation, "operation", "", "one operation of the service")
	cmd.Flags().StringVar(&peer, "peer", "", "the service's calls to this callee")
	cmd.Flags().DurationVar(&step, "step", time.Minute, "one line per step (whole minutes)")
	return cmd
}
