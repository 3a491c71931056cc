package main

import (
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/api/client"
	"github.com/deeptrace/deeptrace/schemas"
)

func tracesCmd() *cobra.Command {
	var cf clientFlags
	var rf rangeFlags
	var q client.TraceQuery
	cmd := clientCmd(&cobra.Command{
		Use:   "traces",
		Short: "Search assembled traces and print them as a table, newest first",
		Long: `Search the assembled traces: by service and operation (a root operation, or
any operation the service served or called), span tags (--tag key=value,
repeatable, all must match; error=true and host=NAME are accepted too),
hosts, duration bounds and errors, over a time range (the server's default
lookback, 1h, when none is given).

Each row is one trace: when it started, its id (give it to 'deeptrace trace'),
the root span's service and operation, the duration, the span count and
whether a span failed.`,
		Example: `  deeptrace traces --limit 5
  deeptrace traces --service orders --error --lookback 6h
  deeptrace traces --service gateway --operation 'POST /api/orders' --min-duration 50ms
  deeptrace traces --tag db.system=redis --start '2026-01-02 10:00' --end '2026-01-02 11:00' --json`,
		Args: cobra.NoArgs,
		RunE: func(c *cobra.Command, _ []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			if q.Range, err = rf.resolve(time.Now()); err != nil {
				return err
			}
			if q.Operation != "" && q.Service == "" {
				return fmt.Errorf("--operation %q needs --service", q.Operation)
			}
			for _, t := range q.Tags {
				if k, _, ok := strings.Cut(t, "="); !ok || strings.TrimSpace(k) == "" {
					return fmt.Errorf("--tag %q: want key=value", t)
				}
			}
			if q.MaxDuration > 0 && q.MaxDuration < q.MinDuration {
				return fmt.Errorf("--max-duration %s is below --min-duration %s", q.MaxDuration, q.MinDuration)
			}
			res, err := cl.SearchTraces(c.Context(), q)
			if err != nil {
				return err
			}
			if cf.json {
				return writeJSON(c.OutOrStdout(), res)
			}
			return printTraceTable(c.OutOrStdout(), res)
		},
	}, &cf)
	fs := cmd.Flags()
	fs.StringVar(&q.Service, "service", "", "traces that touch this service")
	fs.StringVar(&q.Operation, "operation", "", "and in which it served or called this operation (needs --service)")
	fs.StringArrayVar(&q.Tags, "tag", nil, "span tag key=value (repeat; all must match)")
	fs.StringArrayVar(&q.Hosts, "host", nil, "traces that touch this host (repeat: any of them)")
	fs.Var(durationValue{&q.MinDuration}, "min-duration", "traces at least this long (250ms, 1.5s)")
	fs.Var(durationValue{&q.MaxDuration}, "max-duration", "traces at most this long")
	fs.BoolVar(&q.ErrorOnly, "error", false, "only traces with a failed span")
	fs.IntVar(&q.Limit, "limit", 20, "most traces to print (1..1500)")
	rf.register(fs, "traces")
	return cmd
}

func printTraceTable(w io.Writer, res client.TraceSearch) error {
	if len(res.Traces) == 0 {
		_, err := fmt.Fprintf(w, "no traces between %s and %s\n", fmtTime(res.From), fmtTime(res.To))
		return err
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "START\tTRACE ID\tROOT\tDURATION\tSPANS\tERROR")
	for _, t := range res.Traces {
		e := ""
		if t.Error {
			e = "error"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s %s\t%s\t%d\t%s\n", fmtTime(t.Start), t.TraceID, t.RootService, t.RootOperation, fmtDur(t.Duration()), t.SpanCount, e)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	more := ""
	if len(res.Traces) == res.Limit {
		more = "; more may match (raise --limit)"
	}
	_, err := fmt.Fprintf(w, "%d traces, newest first, between %s and %s%s\n", len(res.Traces), fmtTime(res.From), fmtTime(res.To), more)
	return err
}

func traceCmd() *cobra.Command {
	var cf clientFlags
	var width int
	cmd := clientCmd(&cobra.Command{
		Use:   "trace TRACE_ID",
		Short: "Print one trace as an indented tree with offsets, durations and a timeline",
		Long: `Print one assembled trace: a header (root, start, duration, services, depth,
errors), then every span as a tree in the order assembly linked them. Each
line has the span's offset from the trace's start, its duration, a bar on
the trace's time axis, the service and operation, whether it was seen at
the client or server end, its protocol and status. A server span sits under
the client span of the same exchange in the calling service.`,
		Example: `  deeptrace trace 5f0c6d2a9e3b4c1d8a7f6e5d4c3b2a19
  deeptrace trace 5f0c6d2a9e3b4c1d8a7f6e5d4c3b2a19 --json | jq '.spans | length'`,
		Args: cobra.ExactArgs(1),
		RunE: func(c *cobra.Command, args []string) error {
			cl, err := cf.client()
			if err != nil {
				return err
			}
			id := strings.ToLower(strings.TrimSpace(args[0]))
			if !schemas.ValidID(id, 32) {
				return fmt.Errorf("trace id %q: want the 32 hex digits 'deeptrace traces' prints", args[0])
			}
			if cf.json {
				raw, err := cl.TraceJSON(c.Context(), id)
				if err != nil {
					return err
				}
				_, err = c.OutOrStdout().Write(append(raw, '\n'))
				return err
			}
			t, err := cl.Trace(c.Context(), id)
			if err != nil {
				return err
			}
			return printTraceTree(c.OutOrStdout(), &t, width)
		},
	}, &cf)
	cmd.Flags().IntVar(&width, "bar-width", 24, "width of the timeline column (0 hides it)")
	return cmd
}

// treeRow is a span in print order with the prefix that draws its branch.
type treeRow struct {
	span   *schemas.TraceSpan
	prefix string
}

// spanTree orders a trace's spans depth-first by the assembled parent
// links, children by start time. Spans whose parent is missing (a trace
// cut by retention or a partial window) are printed as extra roots.
func spanTree(t *schemas.Trace) []treeRow {
	byID := make(map[string]bool, len(t.Spans))
	for i := range t.Spans {
		byID[t.Spans[i].SpanID] = true
	}
	children := map[string][]*schemas.TraceSpan{}
	var roots []*schemas.TraceSpan
	for i := range t.Spans {
		s := &t.Spans[i]
		if s.TraceParentID == "" || !byID[s.TraceParentID] || s.TraceParentID == s.SpanID {
			roots = append(roots, s)
			continue
		}
		children[s.TraceParentID] = append(children[s.TraceParentID], s)
	}
	byStart := func(l []*schemas.TraceSpan) {
		sort.SliceStable(l, func(a, b int) bool {
			if l[a].StartNs != l[b].StartNs {
				return l[a].StartNs < l[b].StartNs
			}
			// A client span and the server span it carries can start in
			// the same instant; the client goes first.
			return l[a].Role == schemas.RoleClient && l[b].Role != schemas.RoleClient
		})
	}
	byStart(roots)
	// The trace's root goes first whatever its start.
	sort.SliceStable(roots, func(a, b int) bool { return roots[a].SpanID == t.RootSpanID && roots[b].SpanID != t.RootSpanID })
	out := make([]treeRow, 0, len(t.Spans))
	seen := make(map[string]bool, len(t.Spans))
	var walk func(s *schemas.TraceSpan, prefix, branch string)
	walk = func(s *schemas.TraceSpan, prefix, branch string) {
		if seen[s.SpanID] {
			return // a cycle in bad data must not hang the CLI
		}
		seen[s.SpanID] = true
		out = append(out, treeRow{span: s, prefix: prefix + branch})
		kids := children[s.SpanID]
		byStart(kids)
		next := prefix
		switch branch {
		case "├─ ":
			next += "│  "
		case "└─ ":
			next += "   "
		}
		for i, k := range kids {
			b := "├─ "
			if i == len(kids)-1 {
				b = "└─ "
			}
			walk(k, next, b)
		}
	}
	for _, r := range roots {
		walk(r, "", "")
	}
	return out
}

// maxDepth is the deepest assembled depth of a trace.
func maxDepth(t *schemas.Trace) int {
	d := 0
	for i := range t.Spans {
		d = max(d, t.Spans[i].Depth)
	}
	return d
}

func printTraceTree(w io.Writer, t *schemas.Trace, width int) error {
	status := "ok"
	errs := 0
	for i := range t.Spans {
		if t.Spans[i].Error {
			errs++
		}
	}
	if errs > 0 {
		status = fmt.Sprintf("%d failed spans", errs)
	}
	fmt.Fprintf(w, "trace %s  %s %s\n", t.TraceID, t.RootService, t.RootOperation)
	fmt.Fprintf(w, "start %s  duration %s  spans %d  services %d (%s)  depth %d  %s\n\n",
		fmtTime(t.Timestamp), fmtDur(time.Duration(t.DurationNs)), len(t.Spans), len(t.Services), strings.Join(t.Services, ", "), maxDepth(t), status)
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', tabwriter.AlignRight)
	// AlignRight right-aligns every column; the span column is last and
	// unterminated, so it is printed as is.
	hdr := "OFFSET\tDURATION\t"
	if width > 0 {
		hdr += "TIMELINE\t"
	}
	fmt.Fprintln(tw, hdr+"  SPAN")
	for _, r := range spanTree(t) {
		s := r.span
		line := fmt.Sprintf("%s\t%s\t", fmtDur(time.Duration(s.StartNs-t.StartNs)), fmtDur(time.Duration(s.DurationNs)))
		if width > 0 {
			line += bar(s.StartNs-t.StartNs, s.DurationNs, t.DurationNs, width) + "\t"
		}
		line += "  " + r.prefix + spanLabel(s)
		fmt.Fprintln(tw, line)
	}
	return tw.Flush()
}

// spanLabel is "service operation  [role protocol status]", with a mark
// on failed spans.
func spanLabel(s *schemas.TraceSpan) string {
	st := fmt.Sprint(s.StatusCode)
	if s.StatusText != "" {
		st += " " + s.StatusText
	}
	l := fmt.Sprintf("%s  %s  [%s %s %s]", s.Service, s.Operation, s.Role, s.Protocol, st)
	if s.Error {
		l += "  ERROR"
	}
	return l
}

// bar draws a span on the trace's time axis, width cells wide, with
// eighth-cell resolution at both ends so that short spans stay visible.
func bar(off, dur, total int64, width int) string {
	if total <= 0 {
		total = 1
	}
	cells := make([]rune, width)
	for i := range cells {
		cells[i] = '·'
	}
	start := float64(off) / float64(total) * float64(width)
	end := float64(off+dur) / float64(total) * float64(width)
	if end-start < 0.125 {
		end = start + 0.125
	}
	eighths := []rune{' ', '▏', '▎', '▍', '▌', '▋', '▊', '▉', '█'}
	for i := range cells {
		lo, hi := float64(i), float64(i+1)
		cover := min(hi, end) - max(lo, start)
		switch {
		case cover >= 1:
			cells[i] = '█'
		case cover > 0:
			n := int(cover*8 + 0.5)
			if n == 0 {
				n = 1
			}
			if start > lo {
				// A bar that begins inside the cell: the right part is
				// filled, which the left-aligned eighths cannot show.
				cells[i] = '▐'
			} else {
				cells[i] = eighths[n]
			}
		}
	}
	return string(cells)
}
