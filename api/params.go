package api

import (
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/deeptrace/deeptrace/store"
)

// queryParams returns the request's query parameters, refusing any not in
// allowed, so that a misspelt filter is an error rather than silently
// ignored.
func queryParams(c echo.Context, allowed ...string) (url.Values, error) {
	q := c.QueryParams()
	for k := range q {
		if !slices.Contains(allowed, k) {
			return nil, badRequest("unknown parameter %q; this endpoint takes %s", k, strings.Join(allowed, ", "))
		}
	}
	return q, nil
}

// single returns the one value of a parameter, refusing repeats.
func single(q url.Values, name string) (string, error) {
	v := q[name]
	switch len(v) {
	case 0:
		return "", nil
	case 1:
		return strings.TrimSpace(v[0]), nil
	}
	return "", badRequest("parameter %q given %d times; give it once", name, len(v))
}

// timeRange is a query's resolved range. Lookback is set when the range was
// given relative to now; the cache keys such queries by lookback and a
// coarse clock instead of the exact instants.
type timeRange struct {
	From, To time.Time
	Lookback time.Duration
}

// parseTime reads an RFC 3339 time or Unix milliseconds.
func parseTime(name, v string) (time.Time, error) {
	if v == "" {
		return time.Time{}, nil
	}
	if ms, err := strconv.ParseInt(v, 10, 64); err == nil {
		if ms < 0 || ms > 1e14 {
			return time.Time{}, badRequest("%s %q: Unix milliseconds out of range", name, v)
		}
		return time.UnixMilli(ms).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return time.Time{}, badRequest("%s %q: want an RFC 3339 time (2026-01-02T15:04:05Z) or Unix milliseconds", name, v)
	}
	return t.UTC(), nil
}

var daysRE = regexp.MustCompile(`^(\d+)d$`)

// parseDuration reads a Go duration ("90s", "1h30m"), or whole days ("7d").
func parseDuration(name, v string) (time.Duration, error) {
	if m := daysRE.FindStringSubmatch(v); m != nil {
		n, _ := strconv.Atoi(m[1])
		if n > 3650 {
			return 0, badRequest("%s %q: too long", name, v)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil {
		return 0, badRequest("%s %q: want a duration such as 250ms, 15m, 2h or 7d", name, v)
	}
	if d < 0 {
		return 0, badRequest("%s %q: must not be negative", name, v)
	}
	return d, nil
}

// parseRange reads from/to/lookback. With neither from nor lookback the
// range is the last def; to defaults to now. required=false and no
// parameters at all gives the zero range (unbounded).
func (s *Server) parseRange(q url.Values, required bool) (timeRange, error) {
	fromS, err := single(q, "from")
	if err != nil {
		return timeRange{}, err
	}
	toS, err := single(q, "to")
	if err != nil {
		return timeRange{}, err
	}
	lbS, err := single(q, "lookback")
	if err != nil {
		return timeRange{}, err
	}
	if !required && fromS == "" && toS == "" && lbS == "" {
		return timeRange{}, nil
	}
	now := time.Now().UTC()
	from, err := parseTime("from", fromS)
	if err != nil {
		return timeRange{}, err
	}
	to, err := parseTime("to", toS)
	if err != nil {
		return timeRange{}, err
	}
	var r timeRange
	switch {
	case lbS != "" && fromS != "":
		return r, badRequest("give either from or lookback, not both")
	case lbS != "":
		lb, err := parseDuration("lookback", lbS)
		if err != nil {
			return r, err
		}
		if lb == 0 {
			return r, badRequest("lookback %q: must be positive", lbS)
		}
		if to.IsZero() {
			r.Lookback = lb
			to = now
		}
		from = to.Add(-lb)
	case fromS == "":
		if to.IsZero() {
			r.Lookback = s.cfg.DefaultLookback
			to = now
		}
		from = to.Add(-s.cfg.DefaultLookback)
	}
	if to.IsZero() {
		to = now
	}
	if !to.After(from) {
		return r, badRequest("time range: to %s is not after from %s", to.Format(time.RFC3339Nano), from.Format(time.RFC3339Nano))
	}
	if to.Sub(from) > s.cfg.MaxRange {
		return r, badRequest("time range of %s is longer than the maximum %s", to.Sub(from).Round(time.Second), s.cfg.MaxRange)
	}
	r.From, r.To = from, to
	return r, nil
}

// cacheRange is the part of a range that goes into a cache key: exact
// instants for an absolute range; for one relative to now, the lookback and
// now rounded down to the cache TTL, so repeated "last hour" queries share
// an entry for at most a TTL.
func (s *Server) cacheRange(r timeRange) any {
	if r.Lookback > 0 {
		ttl := s.cache.TTL()
		if ttl <= 0 {
			ttl = time.Second
		}
		return map[string]any{"lookback": r.Lookback.String(), "bucket": r.To.Truncate(ttl).Unix()}
	}
	return map[string]any{"from": r.From.Format(time.RFC3339Nano), "to": r.To.Format(time.RFC3339Nano)}
}

// parseLimit reads limit in 1..max, def when absent.
func parseLimit(q url.Values, def, max int) (int, error) {
	v, err := single(q, "limit")
	if err != nil || v == "" {
		return def, err
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, badRequest("limit %q: want a whole number", v)
	}
	if n < 1 || n > max {
		return 0, badRequest("limit %d: want 1..%d", n, max)
	}
	return n, nil
}

func parseBool(name, v string) (bool, error) {
	switch strings.ToLower(v) {
	case "", "false", "0", "no":
		return false, nil
	case "true", "1", "yes":
		return true, nil
	}
	return false, badRequest("%s %q: want true or false", name, v)
}

// tagFilter turns "key=value" or "key:value" tag filters into the trace
// filter. A few keys are fields of the trace rather than span tags: error
// (true or false), host and hostname.
func tagFilter(f *store.TraceFilter, key, value string) error {
	key, value = strings.TrimSpace(key), strings.TrimSpace(value)
	if key == "" {
		return badRequest("tag %q: empty key", key+"="+value)
	}
	if len(key)+len(value) > 512 {
		return badRequest("tag %q: longer than 512 bytes", key)
	}
	switch key {
	case "error":
		b, err := parseBool("tag error", value)
		if err != nil {
			return err
		}
		f.Error = &b
	case "host", "hostname":
		f.Hosts = append(f.Hosts, value)
	default:
		f.Tags = append(f.Tags, key+"="+value)
	}
	return nil
}

// durationBounds reads the min and max trace duration into f; our API and
// Jaeger's spell the parameters differently but mean the same.
func durationBounds(f *store.TraceFilter, minS, maxS string) error {
	var err error
	if minS != "" {
		if f.MinDuration, err = parseDuration("min duration", minS); err != nil {
			return err
		}
	}
	if maxS != "" {
		if f.MaxDuration, err = parseDuration("max duration", maxS); err != nil {
			return err
		}
	}
	if f.MaxDuration > 0 && f.MaxDuration < f.MinDuration {
		return badRequest("max duration %s is below min duration %s", f.MaxDuration, f.MinDuration)
	}
	return nil
}

// normalizeFilter sorts a filter's lists so that equal queries make equal
// cache keys.
func normalizeFilter(f *store.TraceFilter) {
	slices.Sort(f.Tags)
	f.Tags = slices.Compact(f.Tags)
	slices.Sort(f.Hosts)
	f.Hosts = slices.Compact(f.Hosts)
}

// validTraceID lowers and left-pads a hex trace id to 32 digits (Jaeger UI
// may drop leading zeros), or fails naming it.
func validTraceID(id string) (string, error) {
	id = strings.ToLower(strings.TrimSpace(id))
	if id == "" || len(id) > 32 {
		return "", badRequest("trace id %q: want up to 32 hex digits", id)
	}
	for _, c := range id {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", badRequest("trace id %q: want hex digits only", id)
		}
	}
	return strings.Repeat("0", 32-len(id)) + id, nil
}
