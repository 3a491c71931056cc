package main

import (
	"bytes"
	"context"
	"encoding/json"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/api/client"
	"github.com/deeptrace/deeptrace/api/client/clienttest"
	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
)

// runCLI runs one CLI command line in-process, as the binary would, and
// returns what it printed on stdout and stderr.
func runCLI(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	root := &cobra.Command{Use: "deeptrace", SilenceUsage: true, SilenceErrors: true}
	root.AddCommand(tracesCmd(), traceCmd(), reassembleCmd(), jobsCmd(), servicesCmd(), operationsCmd(), dependenciesCmd())
	var out, errb bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&errb)
	root.SetArgs(args)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = root.ExecuteContext(ctx)
	return out.String(), errb.String(), err
}

// cli runs a command line that must succeed.
func cli(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, err := runCLI(t, args...)
	if err != nil {
		t.Fatalf("deeptrace %s: %v\nstderr: %s", strings.Join(args, " "), err, errOut)
	}
	return out
}

func TestCLI(t *testing.T) {
	e := clienttest.Start(t, clienttest.Options{Traces: 30, Worker: true, TaskDelay: 30 * time.Millisecond})
	conn := []string{"--api-url", e.URL, "--token", clienttest.ViewerToken}
	newest := func(keep func(*schemas.Trace) bool) []string {
		var ids []string
		for i := len(e.Traces) - 1; i >= 0; i-- {
			if keep(&e.Traces[i]) {
				ids = append(ids, e.Traces[i].TraceID)
			}
		}
		return ids
	}
	idsIn := func(out string) []string { return regexp.MustCompile(`\b[0-9a-f]{32}\b`).FindAllString(out, -1) }

	t.Run("traces table", func(t *testing.T) {
		out := cli(t, append([]string{"traces", "--limit", "5"}, conn...)...)
		lines := strings.Split(strings.TrimSpace(out), "\n")
		if len(lines) != 7 || !strings.HasPrefix(lines[0], "START") || !strings.Contains(lines[0], "TRACE ID") || !strings.Contains(lines[6], "more may match") {
			t.Fatalf("want a header, 5 rows and a footer:\n%s", out)
		}
		want := newest(func(*schemas.Trace) bool { return true })[:5]
		if got := idsIn(out); !slices.Equal(got, want) {
			t.Fatalf("ids %v, want %v", got, want)
		}
		last := e.Traces[len(e.Traces)-1]
		if !strings.Contains(lines[1], last.RootService+" "+last.RootOperation) || !strings.Contains(lines[1], fmtDur(time.Duration(last.DurationNs))) ||
			!strings.Contains(lines[1], " "+strconv.Itoa(last.SpanCount)+" ") {
			t.Fatalf("first row %q lacks root %s %s, duration %s or %d spans", lines[1], last.RootService, last.RootOperation, fmtDur(time.Duration(last.DurationNs)), last.SpanCount)
		}
	})
	t.Run("traces filters", func(t *testing.T) {
		cases := []struct {
			args []string
			keep func(*schemas.Trace) bool
		}{
			{[]string{"--service", "payments", "--error"}, func(t *schemas.Trace) bool { return t.Error && slices.Contains(t.Services, "payments") }},
			{[]string{"--service", "gateway", "--operation", "GET /api/users/{id}"}, func(t *schemas.Trace) bool { return t.RootOperation == "GET /api/users/{id}" }},
			{[]string{"--tag", "db.system=postgresql"}, func(t *schemas.Trace) bool { return slices.Contains(t.TagKV, "db.system=postgresql") }},
			{[]string{"--min-duration", "70ms"}, func(t *schemas.Trace) bool { return t.DurationNs >= int64(70*time.Millisecond) }},
			{[]string{"--max-duration", "10ms"}, func(t *schemas.Trace) bool { return t.DurationNs <= int64(10*time.Millisecond) }},
			{[]string{"--start", e.Base.Add(-time.Second).Format(time.RFC3339), "--end", e.Base.Add(4 * 15 * time.Second).Format(time.RFC3339)},
				func(t *schemas.Trace) bool { return t.StartNs <= e.Base.Add(60*time.Second).UnixNano() }},
			{[]string{"--lookback", "1d"}, func(*schemas.Trace) bool { return true }},
		}
		for _, c := range cases {
			out := cli(t, append(append([]string{"traces", "--limit", "100"}, c.args...), conn...)...)
			want := newest(c.keep)
			if len(want) == 0 {
				t.Fatalf("%v selects no seeded trace", c.args)
			}
			if got := idsIn(out); !slices.Equal(got, want) {
				t.Errorf("traces %v: got %d ids, want %d\n%s", c.args, len(got), len(want), out)
			}
		}
	})
	t.Run("traces json", func(t *testing.T) {
		out := cli(t, append([]string{"traces", "--limit", "3", "--json"}, conn...)...)
		var res client.TraceSearch
		if err := json.Unmarshal([]byte(out), &res); err != nil || len(res.Traces) != 3 || res.Traces[0].SpanCount == 0 {
			t.Fatalf("json %v: %s", err, out)
		}
	})
	t.Run("traces refuses bad input", func(t *testing.T) {
		for _, args := range [][]string{
			{"--operation", "GET /"},
			{"--tag", "novalue"},
			{"--lookback", "soon"},
			{"--start", "yesterday"},
			{"--lookback", "1h", "--start", "2h"},
			{"--min-duration", "2s", "--max-duration", "1s"},
			{"--limit", "100000"},
		} {
			_, _, err := runCLI(t, append(append([]string{"traces"}, args...), conn...)...)
			if err == nil {
				t.Errorf("traces %v: accepted", args)
			}
		}
	})
	t.Run("trace tree", func(t *testing.T) {
		want := e.Traces[29] // a POST /api/orders: the deepest scenario
		out := cli(t, append([]string{"trace", want.TraceID}, conn...)...)
		lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
		if !strings.HasPrefix(lines[0], "trace "+want.TraceID) || !strings.Contains(lines[1], "spans "+strconv.Itoa(len(want.Spans))) {
			t.Fatalf("header:\n%s", out)
		}
		rows := lines[4:]
		if len(rows) != len(want.Spans) {
			t.Fatalf("%d span rows, want %d:\n%s", len(rows), len(want.Spans), out)
		}
		// The root first, at offset 0, over the whole timeline; then
		// every span under its parent, deeper spans further right.
		if !strings.HasPrefix(strings.TrimSpace(rows[0]), "0 ") || !strings.Contains(rows[0], "gateway  "+want.RootOperation) || !strings.Contains(rows[0], strings.Repeat("█", 24)) {
			t.Fatalf("root row %q", rows[0])
		}
		for _, r := range rows[1:] {
			if !strings.Contains(r, "├─ ") && !strings.Contains(r, "└─ ") {
				t.Fatalf("row without a branch: %q\n%s", r, out)
			}
		}
		if !strings.Contains(out, "└─ payments  POST /charge") && !strings.Contains(out, "├─ payments  POST /charge") {
			t.Fatalf("no payments server span under its client span:\n%s", out)
		}
		if !strings.Contains(out, "[client redis 200]") || !strings.Contains(out, "[server grpc 200]") {
			t.Fatalf("roles, protocols or statuses missing:\n%s", out)
		}
		t.Logf("\n%s", out)
	})
	t.Run("trace json", func(t *testing.T) {
		want := e.Traces[0]
		out := cli(t, append([]string{"trace", want.TraceID, "--json"}, conn...)...)
		var got schemas.Trace
		if err := json.Unmarshal([]byte(out), &got); err != nil || got.TraceID != want.TraceID || len(got.Spans) != len(want.Spans) {
			t.Fatalf("json %v: %.300s", err, out)
		}
	})
	t.Run("trace errors", func(t *testing.T) {
		if _, _, err := runCLI(t, append([]string{"trace", "xyz"}, conn...)...); err == nil || !strings.Contains(err.Error(), "32 hex") {
			t.Errorf("bad id: %v", err)
		}
		_, _, err := runCLI(t, append([]string{"trace", strings.Repeat("ab", 16)}, conn...)...)
		if !client.IsNotFound(err) {
			t.Errorf("missing trace: %v", err)
		}
		_, _, err = runCLI(t, "trace", e.Traces[0].TraceID, "--api-url", e.URL, "--token", "wrong")
		if err == nil || !strings.Contains(err.Error(), "401") {
			t.Errorf("bad token: %v", err)
		}
	})
	t.Run("token from the environment", func(t *testing.T) {
		t.Setenv("DEEPTRACE_TOKEN", clienttest.ViewerToken)
		t.Setenv("DEEPTRACE_API_URL", e.URL)
		out := cli(t, "services")
		if !strings.Contains(out, "gateway") {
			t.Fatalf("services: %s", out)
		}
	})
	t.Run("services", func(t *testing.T) {
		out := cli(t, append([]string{"services"}, conn...)...)
		if out != "gateway\ninventory\norders\npayments\nusers\n" {
			t.Fatalf("services:\n%s", out)
		}
		out = cli(t, append([]string{"services", "--json", "--lookback", "2h"}, conn...)...)
		var v struct{ Services []string }
		if err := json.Unmarshal([]byte(out), &v); err != nil || len(v.Services) != 5 {
			t.Fatalf("services json %v: %s", err, out)
		}
		out = cli(t, append([]string{"services", "--start", "3d", "--end", "2d"}, conn...)...)
		if out != "no services in this range\n" {
			t.Fatalf("services of an empty range: %q", out)
		}
	})
	t.Run("operations", func(t *testing.T) {
		out := cli(t, append([]string{"operations", "payments"}, conn...)...)
		for _, op := range []string{"POST /charge", "GET", "SET"} {
			if !slices.Contains(strings.Split(strings.TrimSpace(out), "\n"), op) {
				t.Fatalf("payments operations lack %q:\n%s", op, out)
			}
		}
		out = cli(t, append([]string{"operations", "nosuch", "--json"}, conn...)...)
		if !strings.Contains(out, `"operations": []`) {
			t.Fatalf("operations of an unknown service: %s", out)
		}
	})
	t.Run("dependencies", func(t *testing.T) {
		out := cli(t, append([]string{"dependencies"}, conn...)...)
		for _, want := range []string{"CALLER", "gateway", "orders", "payments", "redis://10.1.0.7:6379", "/h", "edges from 30 traces"} {
			if !strings.Contains(out, want) {
				t.Fatalf("dependencies lack %q:\n%s", want, out)
			}
		}
		out = cli(t, append([]string{"deps", "--service", "payments", "--json"}, conn...)...)
		var d client.Dependencies
		if err := json.Unmarshal([]byte(out), &d); err != nil || len(d.Edges) == 0 {
			t.Fatalf("deps json %v: %s", err, out)
		}
		for _, ed := range d.Edges {
			if ed.Parent != "payments" && ed.Child != "payments" {
				t.Fatalf("edge %v does not touch payments", ed)
			}
		}
	})

	op := []string{"--api-url", e.URL, "--token", clienttest.OperatorToken}
	from := e.Base.Truncate(time.Minute)
	rng := []string{"--from", from.Format(time.RFC3339), "--to", from.Add(6 * time.Minute).Format(time.RFC3339), "--window", "1m", "--shards", "2"}
	t.Run("reassemble needs an operator", func(t *testing.T) {
		_, _, err := runCLI(t, append(append([]string{"reassemble"}, rng...), conn...)...)
		if err == nil || !strings.Contains(err.Error(), "403") {
			t.Fatalf("viewer: %v", err)
		}
	})
	var jobID string
	t.Run("reassemble follow with a bar", func(t *testing.T) {
		out, errOut, err := runCLI(t, append(append([]string{"reassemble", "--follow", "--interval", "50ms", "--progress", "bar"}, rng...), op...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, errOut)
		}
		if !regexp.MustCompile(`reassembly \S+ done: 12 of 12 tasks done, 0 failed`).MatchString(out) {
			t.Fatalf("outcome: %q", out)
		}
		if !strings.Contains(errOut, "100%") || !strings.Contains(errOut, "(12/12") {
			t.Fatalf("progress bar never reached 100%%:\n%q", errOut)
		}
		jobID = strings.Fields(out)[1]
	})
	t.Run("reassemble follow with lines", func(t *testing.T) {
		out, errOut, err := runCLI(t, append(append([]string{"reassemble", "-f", "--interval", "50ms", "--json", "--service", "orders"}, rng...), op...)...)
		if err != nil {
			t.Fatalf("%v\n%s", err, errOut)
		}
		var st jobs.JobStatus
		if err := json.Unmarshal([]byte(out), &st); err != nil || st.State != jobs.StateDone || st.Done != st.Total || !slices.Equal(st.Services, []string{"orders"}) {
			t.Fatalf("final status %v: %s", err, out)
		}
		// One shard of two holds orders: 6 windows of 1m.
		if st.Total != 6 || !strings.Contains(errOut, "6/6 tasks (100%), 0 failed") {
			t.Fatalf("progress lines for %d tasks:\n%s", st.Total, errOut)
		}
	})
	t.Run("reassemble without follow", func(t *testing.T) {
		out := cli(t, append(append([]string{"reassemble"}, rng...), op...)...)
		if !strings.Contains(out, "started reassembly ") || !strings.Contains(out, "deeptrace jobs ") {
			t.Fatalf("%s", out)
		}
		id := strings.Fields(out)[2]
		id = strings.TrimSuffix(id, ":")
		_, errOut, err := runCLI(t, append([]string{"jobs", id, "--follow", "--interval", "50ms", "--progress", "none"}, conn...)...)
		if err != nil || errOut != "" {
			t.Fatalf("jobs --follow: %v %q", err, errOut)
		}
	})
	t.Run("reassemble refuses bad input", func(t *testing.T) {
		for _, args := range [][]string{
			{"--to", "1h"},
			{"--from", "1h", "--to", "2h"},
			{"--from", "1h", "--progress", "fancy"},
			{"--from", "1h", "--window", "1ms"},
		} {
			if _, _, err := runCLI(t, append(append([]string{"reassemble"}, args...), op...)...); err == nil {
				t.Errorf("reassemble %v: accepted", args)
			}
		}
	})
	t.Run("jobs", func(t *testing.T) {
		out := cli(t, append([]string{"jobs"}, conn...)...)
		if !strings.HasPrefix(out, "JOB ID") || !strings.Contains(out, jobID) || strings.Count(out, "\n") != 4 || !strings.Contains(out, "100%") {
			t.Fatalf("jobs:\n%s", out)
		}
		out = cli(t, append([]string{"jobs", jobID, "--json"}, conn...)...)
		var st jobs.JobStatus
		if err := json.Unmarshal([]byte(out), &st); err != nil || st.ID != jobID || st.State != jobs.StateDone {
			t.Fatalf("job json %v: %s", err, out)
		}
	})
}

func TestParseWhen(t *testing.T) {
	now := time.Date(2026, 3, 4, 12, 0, 0, 0, time.UTC)
	cases := []struct {
		in   string
		want time.Time
	}{
		{"", time.Time{}},
		{"now", now},
		{"2h", now.Add(-2 * time.Hour)},
		{"-90m", now.Add(-90 * time.Minute)},
		{"now-1d", now.Add(-24 * time.Hour)},
		{"1d12h", now.Add(-36 * time.Hour)},
		{"2026-03-01T10:00:00Z", time.Date(2026, 3, 1, 10, 0, 0, 0, time.UTC)},
		{"1767225600000", time.UnixMilli(1767225600000).UTC()},
		{"2026-03-01 10:00", time.Date(2026, 3, 1, 10, 0, 0, 0, time.Local)},
	}
	for _, c := range cases {
		got, err := parseWhen("start", c.in, now)
		if err != nil || !got.Equal(c.want) {
			t.Errorf("parseWhen(%q) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
	for _, bad := range []string{"yesterday", "2h ago", "12:00"} {
		if _, err := parseWhen("start", bad, now); err == nil || !strings.Contains(err.Error(), "start") {
			t.Errorf("parseWhen(%q): %v", bad, err)
		}
	}
}

func TestFmtDur(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0: "0", 850 * time.Nanosecond: "850ns", 1500 * time.Nanosecond: "1.5µs", 12400 * time.Microsecond: "12.4ms",
		time.Millisecond: "1ms", 1250 * time.Millisecond: "1.25s", 200 * time.Second: "3m20s",
	} {
		if got := fmtDur(d); got != want {
			t.Errorf("fmtDur(%d) = %q, want %q", d, got, want)
		}
	}
}

func TestFmtRate(t *testing.T) {
	for r, want := range map[float64]string{250: "250/s", 2.5: "2.5/s", 0.5: "30/min", 20.0 / 3600: "20/h"} {
		if got := fmtRate(r); got != want {
			t.Errorf("fmtRate(%v) = %q, want %q", r, got, want)
		}
	}
}

func TestBar(t *testing.T) {
	for _, c := range []struct {
		off, dur, total int64
		want            string
	}{
		{0, 100, 100, "██████████"},
		{0, 50, 100, "█████·····"},
		{50, 50, 100, "·····█████"},
		{0, 1, 1000, "▏·········"},
		{25, 50, 100, "··▐████▌··"},
	} {
		if got := bar(c.off, c.dur, c.total, 10); got != c.want {
			t.Errorf("bar(%d,%d,%d) = %q, want %q", c.off, c.dur, c.total, got, c.want)
		}
	}
}

// TestCLIReassembleRealWorker follows a reassembly that the real worker
// runs over the stored spans of the seeded traces: the traces are
// re-assembled from their spans and rewritten in place, same ids, same
// spans, a later assembled_at.
func TestCLIReassembleRealWorker(t *testing.T) {
	e := clienttest.Start(t, clienttest.Options{Traces: 12, Spacing: 20 * time.Second, RealWorker: true})
	op := []string{"--api-url", e.URL, "--token", clienttest.OperatorToken}
	from := e.Base.Truncate(time.Minute)
	to := e.Base.Add(5 * time.Minute).Truncate(time.Minute).Add(time.Minute)
	out, errOut, err := runCLI(t, append([]string{"reassemble", "--from", from.Format(time.RFC3339), "--to", to.Format(time.RFC3339),
		"--window", "1m", "--follow", "--interval", "100ms", "--progress", "lines"}, op...)...)
	if err != nil {
		t.Fatalf("%v\n%s", err, errOut)
	}
	if !regexp.MustCompile(`done: (\d+) of (\d+) tasks done, 0 failed`).MatchString(out) || !strings.Contains(errOut, "(100%), 0 failed") {
		t.Fatalf("outcome %q\nprogress:\n%s", out, errOut)
	}
	for _, want := range e.Traces {
		out := cli(t, append([]string{"trace", want.TraceID, "--json"}, op...)...)
		var got schemas.Trace
		if err := json.Unmarshal([]byte(out), &got); err != nil {
			t.Fatal(err)
		}
		if len(got.Spans) != len(want.Spans) || got.RootSpanID != want.RootSpanID || !got.AssembledAt.After(want.AssembledAt) {
			t.Errorf("trace %s after reassembly: %d spans (want %d), root %s (want %s), assembled %s (seeded %s)", want.TraceID,
				len(got.Spans), len(want.Spans), got.RootSpanID, want.RootSpanID, got.AssembledAt, want.AssembledAt)
			continue
		}
		links := map[string]string{}
		for _, s := range got.Spans {
			links[s.SpanID] = s.TraceParentID + " " + s.LinkKind
		}
		for _, s := range want.Spans {
			if l := links[s.SpanID]; l != s.TraceParentID+" "+s.LinkKind {
				t.Errorf("trace %s span %s %s: reassembled as %q, seeded as %q", want.TraceID, s.Service, s.Operation, l, s.TraceParentID+" "+s.LinkKind)
			}
		}
	}
}
