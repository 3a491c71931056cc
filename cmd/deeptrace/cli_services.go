package main

import (
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/api/client"
)

func servicesCmd() *cobra.Command {
	var cf clientFlags
	var rf rangeFlags
	cmd := clientCmd(&cobra.Command{
		Use:   "services",
		Short: "List the services seen in assembled traces",
		Long: `List the services seen in assembled traces of a range (of every retained
trace index when no range is given), one per line.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			r, err := rf.resolve(time.Now())
			if err != nil {
				return err
			}
			svcs, err := cl.Services(c.Context(), r)
			if err != nil {
				return err
			}
			if cf.json {
				return writeJSON(c.OutOrStdout(), map[string]any{"services": nonNilStrings(svcs)})
			}
			return printList(c.OutOrStdout(), svcs, "no services in this range")
		},
	}, &cf)
	rf.register(cmd.Flags(), "services")
	return cmd
}

func operationsCmd() *cobra.Command {
	var cf clientFlags
	var rf rangeFlags
	cmd := clientCmd(&cobra.Command{
		Use:   "operations SERVICE",
		Short: "List the operations a service served or called",
		Long: `List the operations a service served or called in assembled traces of a
range (every retained trace index when no range is given), one per line:
"GET /users/{id}", "/inventory.Stock/Reserve", "SELECT orders".`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			r, err := rf.resolve(time.Now())
			if err != nil {
				return err
			}
			ops, err := cl.Operations(c.Context(), args[0], r)
			if err != nil {
				return err
			}
			if cf.json {
				return writeJSON(c.OutOrStdout(), map[string]any{"service": args[0], "operations": nonNilStrings(ops)})
			}
			return printList(c.OutOrStdout(), ops, fmt.Sprintf("no operations of %q in this range", args[0]))
		},
	}, &cf)
	rf.register(cmd.Flags(), "operations")
	return cmd
}

func dependenciesCmd() *cobra.Command {
	var cf clientFlags
	var rf rangeFlags
	var service string
	cmd := clientCmd(&cobra.Command{
		Use:     "dependencies",
		Aliases: []string{"deps"},
		Short:   "Print the service map: who calls whom, how often, how many fail, how fast",
		Long: `Print the service map of a range (default the last hour) as one row per
calling and called service: calls, their rate over the range, errors,
error rate and latency percentiles. A callee without an agent (a database,
a cache, an outside API) is named protocol://ip:port.`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			r, err := rf.resolve(time.Now())
			if err != nil {
				return err
			}
			d, err := cl.Dependencies(c.Context(), r, service)
			if err != nil {
				return err
			}
			if cf.json {
				return writeJSON(c.OutOrStdout(), d)
			}
			return printDependencies(c.OutOrStdout(), d)
		},
	}, &cf)
	rf.register(cmd.Flags(), "the service map")
	cmd.Flags().StringVar(&service, "service", "", "only the edges that touch this service")
	return cmd
}

func printDependencies(w io.Writer, d client.Dependencies) error {
	if len(d.Edges) == 0 {
		_, err := fmt.Fprintf(w, "no calls between %s and %s\n", fmtTime(d.From), fmtTime(d.To))
		return err
	}
	secs := d.To.Sub(d.From).Seconds()
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "CALLER\tCALLEE\tCALLS\tRATE\tERRORS\tERROR %\tP50\tP90\tP99")
	for _, e := range d.Edges {
		rate := "-"
		if secs > 0 {
			rate = fmtRate(float64(e.Calls) / secs)
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d\t%.1f\t%s\t%s\t%s\n", e.Parent, e.Child, e.Calls, rate, e.Errors, e.ErrorRate*100,
			fmtDur(time.Duration(e.P50Ns)), fmtDur(time.Duration(e.P90Ns)), fmtDur(time.Duration(e.P99Ns)))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	sampled := ""
	if d.Sampled {
		sampled = " (the newest only: the range holds more)"
	}
	_, err := fmt.Fprintf(w, "%d edges from %d traces%s between %s and %s\n", len(d.Edges), d.Traces, sampled, fmtTime(d.From), fmtTime(d.To))
	return err
}

func printList(w io.Writer, l []string, empty string) error {
	if len(l) == 0 {
		_, err := fmt.Fprintln(w, empty)
		return err
	}
	for _, s := range l {
		if _, err := fmt.Fprintln(w, s); err != nil {
			return err
		}
	}
	return nil
}

func nonNilStrings(l []string) []string {
	if l == nil {
		return []string{}
	}
	return l
}
