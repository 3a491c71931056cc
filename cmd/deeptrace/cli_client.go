package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/deeptrace/deeptrace/api/client"
)

// defaultAPIURL is where `deeptrace api` listens by default.
const defaultAPIURL = "http://127.0.0.1:8080"

// clientFlags are the flags every CLI verb that talks to the API shares.
type clientFlags struct {
	url     string
	token   string
	json    bool
	timeout time.Duration
}

func (f *clientFlags) register(fs *pflag.FlagSet) {
	fs.StringVar(&f.url, "api-url", defaultAPIURL, "DeepTrace API to talk to")
	fs.StringVar(&f.token, "token", "", "bearer token (make one with 'deeptrace api new-token'); env DEEPTRACE_TOKEN")
	fs.BoolVar(&f.json, "json", false, "print JSON for scripts instead of text")
	fs.DurationVar(&f.timeout, "timeout", 30*time.Second, "timeout of one API request")
}

func (f *clientFlags) client() (*client.Client, error) {
	c, err := client.New(f.url, f.token)
	if err != nil {
		return nil, err
	}
	if f.timeout <= 0 {
		return nil, fmt.Errorf("timeout %s: must be positive", f.timeout)
	}
	c.HTTP = &http.Client{Timeout: f.timeout}
	c.UserAgent = "deeptrace-cli"
	return c, nil
}

// clientCmd makes a CLI verb: the shared client flags, environment and
// config-file binding, and help that says so.
func clientCmd(cmd *cobra.Command, f *clientFlags) *cobra.Command {
	f.register(cmd.Flags())
	cmd.Long = strings.TrimSpace(cmd.Long + "\n\nIt talks to the API at --api-url (env DEEPTRACE_API_URL) with the bearer token in --token\n(env DEEPTRACE_TOKEN). --json prints the API's JSON for scripts.")
	return withEnv(cmd)
}

// writeJSON prints v indented, for scripts (and people who pipe into jq).
func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

var agoRE = regexp.MustCompile(`^(?:now)?-?(\d+(?:\.\d+)?(?:ns|us|µs|ms|s|m|h|d))+$`)

// parseWhen reads a point in time as the CLI accepts it: RFC 3339
// ("2026-01-02T15:04:05Z"), a local "2006-01-02 15:04[:05]", Unix
// milliseconds, "now", or a duration ago ("90m", "-2h", "now-1d"). The
// empty string is the zero time.
func parseWhen(name, s string, now time.Time) (time.Time, error) {
	s = strings.TrimSpace(s)
	switch {
	case s == "":
		return time.Time{}, nil
	case s == "now":
		return now, nil
	case agoRE.MatchString(s):
		d, err := parseSpan(strings.TrimLeft(strings.TrimPrefix(s, "now"), "-"))
		if err != nil {
			return time.Time{}, fmt.Errorf("%s %q: %w", name, s, err)
		}
		return now.Add(-d), nil
	}
	if ms, err := strconv.ParseInt(s, 10, 64); err == nil {
		return time.UnixMilli(ms).UTC(), nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	for _, layout := range []string{"2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04:05", "2006-01-02T15:04", "2006-01-02"} {
		if t, err := time.ParseInLocation(layout, s, time.Local); err == nil {
			return t, nil
		}
	}
	return time.Time{}, fmt.Errorf("%s %q: want an RFC 3339 time (2026-01-02T15:04:05Z), \"2026-01-02 15:04\" (local), Unix milliseconds, now, or a time ago such as 90m, 2h or 1d", name, s)
}

var dayRE = regexp.MustCompile(`(\d+(?:\.\d+)?)d`)

// parseSpan reads a Go duration that may also count days ("1d12h").
func parseSpan(s string) (time.Duration, error) {
	s = dayRE.ReplaceAllStringFunc(s, func(m string) string {
		n, _ := strconv.ParseFloat(strings.TrimSuffix(m, "d"), 64)
		return strconv.FormatFloat(n*24, 'f', -1, 64) + "h"
	})
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("want a duration such as 250ms, 15m, 2h or 7d")
	}
	if d < 0 {
		return 0, fmt.Errorf("must not be negative")
	}
	return d, nil
}

// durationValue is a flag holding a duration that may count days.
type durationValue struct{ d *time.Duration }

func (v durationValue) String() string {
	if v.d == nil || *v.d == 0 {
		return ""
	}
	return v.d.String()
}

func (v durationValue) Set(s string) error {
	d, err := parseSpan(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}

func (durationValue) Type() string { return "duration" }

// rangeFlags select a time range: --lookback, or --start and --end.
type rangeFlags struct {
	lookback   time.Duration
	start, end string
}

func (f *rangeFlags) register(fs *pflag.FlagSet, what string) {
	fs.Var(durationValue{&f.lookback}, "lookback", what+" of this long before --end (or now): 15m, 1h, 7d; the server's default (1h) without --start")
	fs.StringVar(&f.start, "start", "", "start of the range: RFC 3339, \"2026-01-02 15:04\" (local), Unix ms, or a time ago (2h)")
	fs.StringVar(&f.end, "end", "", "end of the range (same forms as --start); default now")
}

func (f *rangeFlags) resolve(now time.Time) (client.Range, error) {
	var r client.Range
	var err error
	if r.From, err = parseWhen("start", f.start, now); err != nil {
		return r, err
	}
	if r.To, err = parseWhen("end", f.end, now); err != nil {
		return r, err
	}
	if f.lookback > 0 && !r.From.IsZero() {
		return r, fmt.Errorf("give either --lookback or --start, not both")
	}
	if !r.From.IsZero() && !r.To.IsZero() && !r.To.After(r.From) {
		return r, fmt.Errorf("--end %s is not after --start %s", r.To.Format(time.RFC3339), r.From.Format(time.RFC3339))
	}
	r.Lookback = f.lookback
	return r, nil
}

// fmtDur prints a duration for people: 850µs, 12.4ms, 1.25s, 3m20s.
func fmtDur(d time.Duration) string {
	switch {
	case d == 0:
		return "0"
	case d < 0:
		return "-" + fmtDur(-d)
	case d < time.Microsecond:
		return fmt.Sprintf("%dns", d.Nanoseconds())
	case d < time.Millisecond:
		return trimZeros(fmt.Sprintf("%.1f", float64(d)/1e3)) + "µs"
	case d < time.Second:
		return trimZeros(fmt.Sprintf("%.2f", float64(d)/1e6)) + "ms"
	case d < time.Minute:
		return trimZeros(fmt.Sprintf("%.3f", d.Seconds())) + "s"
	}
	return d.Round(time.Second).String()
}

// fmtRate prints a rate per second for people: 12/s, 3.5/min, 20/h.
func fmtRate(perSec float64) string {
	switch {
	case perSec >= 100:
		return fmt.Sprintf("%.0f/s", perSec)
	case perSec >= 1:
		return trimZeros(fmt.Sprintf("%.1f", perSec)) + "/s"
	case perSec*60 >= 1:
		return trimZeros(fmt.Sprintf("%.1f", perSec*60)) + "/min"
	}
	return trimZeros(fmt.Sprintf("%.1f", perSec*3600)) + "/h"
}

func trimZeros(s string) string {
	if strings.Contains(s, ".") {
		s = strings.TrimRight(strings.TrimRight(s, "0"), ".")
	}
	return s
}

// fmtTime prints an instant in the local zone, to the millisecond.
func fmtTime(t time.Time) string { return t.Local().Format("2006-01-02 15:04:05.000") }
