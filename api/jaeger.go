package api

import (
	"context"
	"encoding/json"
	"errors"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/deeptrace/deeptrace/api/cache"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// Jaeger's query API (the HTTP API Jaeger UI and Grafana's Jaeger data
// source call), answered from DeepTrace's traces. The JSON shapes below are
// Jaeger's UI model (model/json in the Jaeger module); the compatibility
// test decodes our answers with Jaeger's own types.

// jaegerResponse is Jaeger's envelope of every answer.
type jaegerResponse struct {
	Data   any           `json:"data"`
	Total  int           `json:"total"`
	Limit  int           `json:"limit"`
	Offset int           `json:"offset"`
	Errors []jaegerError `json:"errors"`
}

type jaegerError struct {
	Code    int    `json:"code,omitempty"`
	Msg     string `json:"msg"`
	TraceID string `json:"traceID,omitempty"`
}

type jaegerTrace struct {
	TraceID   string                   `json:"traceID"`
	Spans     []jaegerSpan             `json:"spans"`
	Processes map[string]jaegerProcess `json:"processes"`
	Warnings  []string                 `json:"warnings"`
}

type jaegerSpan struct {
	TraceID       string         `json:"traceID"`
	SpanID        string         `json:"spanID"`
	OperationName string         `json:"operationName"`
	References    []jaegerRef    `json:"references"`
	StartTime     uint64         `json:"startTime"` // µs since the epoch
	Duration      uint64         `json:"duration"`  // µs
	Tags          []jaegerKV     `json:"tags"`
	Logs          []jaegerLog    `json:"logs"`
	ProcessID     string         `json:"processID"`
	Warnings      []string       `json:"warnings"`
	Process       *jaegerProcess `json:"process,omitempty"`
}

type jaegerRef struct {
	RefType string `json:"refType"`
	TraceID string `json:"traceID"`
	SpanID  string `json:"spanID"`
}

type jaegerProcess struct {
	ServiceName string     `json:"serviceName"`
	Tags        []jaegerKV `json:"tags"`
}

type jaegerKV struct {
	Key   string `json:"key"`
	Type  string `json:"type"`
	Value any    `json:"value"`
}

type jaegerLog struct {
	Timestamp uint64     `json:"timestamp"`
	Fields    []jaegerKV `json:"fields"`
}

type jaegerDependency struct {
	Parent    string `json:"parent"`
	Child     string `json:"child"`
	CallCount uint64 `json:"callCount"`
}

type jaegerOperation struct {
	Name     string `json:"name"`
	SpanKind string `json:"spanKind"`
}

func kvString(k, v string) jaegerKV { return jaegerKV{Key: k, Type: "string", Value: v} }
func kvInt(k string, v int64) jaegerKV {
	return jaegerKV{Key: k, Type: "int64", Value: v}
}
func kvBool(k string, v bool) jaegerKV { return jaegerKV{Key: k, Type: "bool", Value: v} }
func kvFloat(k string, v float64) jaegerKV {
	return jaegerKV{Key: k, Type: "float64", Value: v}
}

// numericTags are span tags whose values Jaeger shows as numbers.
var numericTags = map[string]bool{"http.status_code": true, "grpc.status_code": true}

// jaegerFromTrace maps a DeepTrace trace to Jaeger's model. Each service is
// one process ("p1", "p2", ... in order of first appearance); a span's
// parent in the assembled tree is its CHILD_OF reference; what eBPF saw
// (role, protocol, status, connection, how the parent was found and with
// what confidence, host, pid, thread) becomes span tags.
func jaegerFromTrace(t *schemas.Trace) jaegerTrace {
	out := jaegerTrace{TraceID: t.TraceID, Spans: make([]jaegerSpan, 0, len(t.Spans)), Processes: map[string]jaegerProcess{}}
	procOf := map[string]string{}
	hostsOf := map[string]map[string]bool{}
	for i := range t.Spans {
		ts := &t.Spans[i]
		pid, ok := procOf[ts.Service]
		if !ok {
			pid = "p" + strconv.Itoa(len(procOf)+1)
			procOf[ts.Service] = pid
			hostsOf[ts.Service] = map[string]bool{}
		}
		hostsOf[ts.Service][ts.Host] = true
		out.Spans = append(out.Spans, jaegerSpan{
			TraceID:       t.TraceID,
			SpanID:        ts.SpanID,
			OperationName: ts.Operation,
			References:    jaegerRefs(t.TraceID, ts.TraceParentID),
			StartTime:     uint64(max(ts.StartNs, 0) / 1000),
			Duration:      uint64(max(ts.DurationNs, 0) / 1000),
			Tags:          jaegerTags(ts),
			Logs:          []jaegerLog{},
			ProcessID:     pid,
		})
	}
	for svc, pid := range procOf {
		hosts := make([]string, 0, len(hostsOf[svc]))
		for h := range hostsOf[svc] {
			hosts = append(hosts, h)
		}
		sort.Strings(hosts)
		tags := []jaegerKV{kvString("deeptrace.capture", "ebpf")}
		if len(hosts) == 1 {
			tags = append(tags, kvString("hostname", hosts[0]))
		} else {
			tags = append(tags, kvString("hostnames", strings.Join(hosts, ",")))
		}
		out.Processes[pid] = jaegerProcess{ServiceName: svc, Tags: tags}
	}
	return out
}

func jaegerRefs(traceID, parent string) []jaegerRef {
	if parent == "" {
		return []jaegerRef{}
	}
	return []jaegerRef{{RefType: "CHILD_OF", TraceID: traceID, SpanID: parent}}
}

func jaegerTags(ts *schemas.TraceSpan) []jaegerKV {
	sp := &ts.Span
	tags := make([]jaegerKV, 0, 16+len(sp.Tags))
	tags = append(tags, kvString("span.kind", string(sp.Role)), kvString("protocol", string(sp.Protocol)))
	if sp.StatusCode != 0 {
		tags = append(tags, kvInt("status.code", int64(sp.StatusCode)))
	}
	if sp.StatusText != "" {
		tags = append(tags, kvString("status.message", sp.StatusText))
	}
	if sp.Error {
		tags = append(tags, kvBool("error", true))
	}
	peerIP, peerPort, hostIP, hostPort := sp.ServerIP, sp.ServerPort, sp.ClientIP, sp.ClientPort
	if sp.Role == schemas.RoleServer {
		peerIP, peerPort, hostIP, hostPort = sp.ClientIP, sp.ClientPort, sp.ServerIP, sp.ServerPort
	}
	if peerIP != "" {
		tags = append(tags, kvString("net.peer.ip", peerIP), kvInt("net.peer.port", int64(peerPort)),
			kvString("net.host.ip", hostIP), kvInt("net.host.port", int64(hostPort)))
	}
	tags = append(tags,
		kvString("deeptrace.tuple", sp.Conn.String()),
		kvInt("deeptrace.seq", int64(sp.Seq)),
		kvInt("deeptrace.req_bytes", sp.ReqBytes),
		kvInt("deeptrace.resp_bytes", sp.RespBytes),
		kvString("host.name", sp.Host),
		kvInt("process.pid", int64(sp.PID)),
		kvInt("thread.id", int64(sp.TID)),
	)
	if sp.Process != "" {
		tags = append(tags, kvString("process.executable.name", sp.Process))
	}
	if ts.LinkKind != "" {
		tags = append(tags, kvString("deeptrace.link", ts.LinkKind))
	}
	if sp.ParentSpanID != "" {
		tags = append(tags, kvString("deeptrace.local_parent", sp.ParentSpanID), kvFloat("deeptrace.parent_confidence", sp.ParentConfidence))
	}
	keys := make([]string, 0, len(sp.Tags))
	for k := range sp.Tags {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		v := sp.Tags[k]
		if numericTags[k] {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				tags = append(tags, kvInt(k, n))
				continue
			}
		}
		tags = append(tags, kvString(k, v))
	}
	return tags
}

// jaegerLookbackRE reads Jaeger UI's lookback values ("1h", "2d", "2w").
var jaegerLookbackRE = regexp.MustCompile(`^(\d+)([smhdw])$`)

func parseJaegerLookback(v string) (time.Duration, bool) {
	m := jaegerLookbackRE.FindStringSubmatch(v)
	if m == nil {
		d, err := time.ParseDuration(v)
		return d, err == nil && d > 0
	}
	n, _ := strconv.ParseInt(m[1], 10, 64)
	unit := map[string]time.Duration{"s": time.Second, "m": time.Minute, "h": time.Hour, "d": 24 * time.Hour, "w": 7 * 24 * time.Hour}[m[2]]
	return time.Duration(n) * unit, n > 0
}

// jaegerTime reads a Unix time in the given units (start/end in µs, endTs
// in ms), naming the parameter on error like Jaeger does.
func jaegerTime(q url.Values, name string, unit time.Duration) (time.Time, error) {
	v := strings.TrimSpace(q.Get(name))
	if v == "" {
		return time.Time{}, nil
	}
	n, err := strconv.ParseInt(v, 10, 64)
	if err != nil || n < 0 {
		return time.Time{}, badRequest("unable to parse param '%s': %q is not a Unix time in %s", name, v, map[time.Duration]string{time.Microsecond: "microseconds", time.Millisecond: "milliseconds"}[unit])
	}
	return time.Unix(0, 0).Add(time.Duration(n) * unit).UTC(), nil
}

// jaegerSearchQuery parses Jaeger's trace search parameters: service,
// operation, start/end (µs), lookback (UI's "1h"; used when start is
// absent), limit, minDuration/maxDuration (Go durations), tag (repeated
// key:value) and tags (a JSON object), traceID (repeated). Parameters it
// does not know are ignored, as Jaeger does.
func (s *Server) jaegerSearchQuery(q url.Values) (store.TraceFilter, timeRange, []string, error) {
	var f store.TraceFilter
	var r timeRange
	f.Service = strings.TrimSpace(q.Get("service"))
	f.Operation = strings.TrimSpace(q.Get("operation"))
	if f.Operation == "all" {
		f.Operation = "" // Grafana's "all operations"
	}
	var ids []string
	for _, id := range q["traceID"] {
		v, err := validTraceID(id)
		if err != nil {
			return f, r, nil, badRequest("cannot parse traceID param: %v", err)
		}
		ids = append(ids, v)
	}
	start, err := jaegerTime(q, "start", time.Microsecond)
	if err != nil {
		return f, r, nil, err
	}
	end, err := jaegerTime(q, "end", time.Microsecond)
	if err != nil {
		return f, r, nil, err
	}
	now := time.Now().UTC()
	lookback := s.cfg.DefaultLookback
	if lb := q.Get("lookback"); lb != "" && lb != "custom" {
		d, ok := parseJaegerLookback(lb)
		if !ok {
			return f, r, nil, badRequest("unable to parse param 'lookback': %q is not a duration such as 1h or 2d", lb)
		}
		lookback = d
	}
	if end.IsZero() {
		end = now
		if start.IsZero() {
			r.Lookback = lookback
		}
	}
	if start.IsZero() {
		start = end.Add(-lookback)
	}
	if !end.After(start) {
		return f, r, nil, badRequest("'end' %d must be after 'start' %d", end.UnixMicro(), start.UnixMicro())
	}
	if end.Sub(start) > s.cfg.MaxRange {
		return f, r, nil, badRequest("time range of %s between 'start' and 'end' is longer than the maximum %s", end.Sub(start).Round(time.Second), s.cfg.MaxRange)
	}
	r.From, r.To = start, end
	f.From, f.To = start, end

	for _, t := range q["tag"] {
		k, v, ok := strings.Cut(t, ":")
		if !ok {
			return f, r, nil, badRequest("malformed 'tag' parameter, expecting key:value, received: %s", t)
		}
		if err := tagFilter(&f, k, v); err != nil {
			return f, r, nil, err
		}
	}
	for _, js := range q["tags"] {
		var m map[string]string
		if err := json.Unmarshal([]byte(js), &m); err != nil {
			return f, r, nil, badRequest("malformed 'tags' parameter, cannot unmarshal JSON: %v", err)
		}
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			if err := tagFilter(&f, k, m[k]); err != nil {
				return f, r, nil, err
			}
		}
	}
	if err := durationBounds(&f, q.Get("minDuration"), q.Get("maxDuration")); err != nil {
		return f, r, nil, err
	}
	f.Limit = 100 // Jaeger's default
	if l := q.Get("limit"); l != "" {
		n, err := strconv.Atoi(l)
		if err != nil || n < 0 {
			return f, r, nil, badRequest("unable to parse param 'limit': %q", l)
		}
		if n > store.MaxTraceLimit {
			return f, r, nil, badRequest("limit %d is above the maximum %d", n, store.MaxTraceLimit)
		}
		if n > 0 {
			f.Limit = n
		}
	}
	if len(ids) == 0 && f.Service == "" {
		return f, r, nil, badRequest("parameter 'service' is required")
	}
	if f.Operation != "" && f.Service == "" {
		return f, r, nil, badRequest("parameter 'operation' needs 'service'")
	}
	normalizeFilter(&f)
	return f, r, ids, nil
}

// jaegerSearch is GET /api/traces.
func (s *Server) jaegerSearch(c echo.Context) error {
	q := c.QueryParams()
	f, r, ids, err := s.jaegerSearchQuery(q)
	if err != nil {
		return err
	}
	if len(ids) > 0 {
		if len(ids) > 100 {
			return badRequest("at most 100 traceID parameters")
		}
		return s.cached(c, cache.Query{Endpoint: "jaeger.traces_by_id", Params: ids}, func(ctx context.Context) (any, error) {
			traces := make([]jaegerTrace, 0, len(ids))
			var errs []jaegerError
			for _, id := range ids {
				t, err := s.st.Trace(ctx, id)
				if errors.Is(err, store.ErrNotFound) {
					errs = append(errs, jaegerError{Msg: "trace not found", TraceID: id})
					continue
				}
				if err != nil {
					return nil, err
				}
				traces = append(traces, jaegerFromTrace(t))
			}
			return jaegerResponse{Data: traces, Errors: errs}, nil
		})
	}
	key := f
	key.From, key.To = time.Time{}, time.Time{}
	return s.cached(c, cache.Query{Endpoint: "jaeger.traces", Params: []any{key, s.cacheRange(r)}, From: r.From, To: r.To},
		func(ctx context.Context) (any, error) {
			traces, err := s.st.SearchTraces(ctx, f, true)
			if err != nil {
				return nil, err
			}
			out := make([]jaegerTrace, 0, len(traces))
			for i := range traces {
				out = append(out, jaegerFromTrace(&traces[i]))
			}
			return jaegerResponse{Data: out}, nil
		})
}

// jaegerTrace is GET /api/traces/:id.
func (s *Server) jaegerTrace(c echo.Context) error {
	id, err := validTraceID(c.Param("id"))
	if err != nil {
		return err
	}
	return s.cached(c, cache.Query{Endpoint: "jaeger.trace", Params: id}, func(ctx context.Context) (any, error) {
		t, err := s.st.Trace(ctx, id)
		if errors.Is(err, store.ErrNotFound) {
			return nil, traceNotFound(id)
		}
		if err != nil {
			return nil, err
		}
		return jaegerResponse{Data: []jaegerTrace{jaegerFromTrace(t)}}, nil
	})
}

// jaegerServices is GET /api/services: every service of the retained
// traces.
func (s *Server) jaegerServices(c echo.Context) error {
	return s.cached(c, cache.Query{Endpoint: "jaeger.services", Params: nil}, func(ctx context.Context) (any, error) {
		svcs, err := s.st.Services(ctx, time.Time{}, time.Time{})
		if err != nil {
			return nil, err
		}
		return jaegerResponse{Data: nonNil(svcs), Total: len(svcs)}, nil
	})
}

// jaegerOperationsLegacy is GET /api/services/:service/operations: names.
func (s *Server) jaegerOperationsLegacy(c echo.Context) error {
	svc, err := pathParam(c, "service")
	if err != nil {
		return err
	}
	return s.cached(c, cache.Query{Endpoint: "jaeger.operations_legacy", Params: svc}, func(ctx context.Context) (any, error) {
		ops, err := s.st.Operations(ctx, svc, time.Time{}, time.Time{})
		if err != nil {
			return nil, err
		}
		return jaegerResponse{Data: nonNil(ops), Total: len(ops)}, nil
	})
}

var jaegerSpanKinds = map[string]bool{"": true, "server": true, "client": true, "producer": true, "consumer": true, "internal": true}

// jaegerOperations is GET /api/operations?service=&spanKind=. Traces index
// operations per service, not per span kind, so every operation comes back
// with an empty spanKind whatever kind was asked for.
func (s *Server) jaegerOperations(c echo.Context) error {
	svc := strings.TrimSpace(c.QueryParam("service"))
	if svc == "" {
		return badRequest("parameter 'service' is required")
	}
	if k := c.QueryParam("spanKind"); !jaegerSpanKinds[k] {
		return badRequest("unsupported span kind: '%s'", k)
	}
	return s.cached(c, cache.Query{Endpoint: "jaeger.operations", Params: svc}, func(ctx context.Context) (any, error) {
		ops, err := s.st.Operations(ctx, svc, time.Time{}, time.Time{})
		if err != nil {
			return nil, err
		}
		out := make([]jaegerOperation, 0, len(ops))
		for _, o := range ops {
			out = append(out, jaegerOperation{Name: o})
		}
		return jaegerResponse{Data: out, Total: len(out)}, nil
	})
}

// jaegerDependencies is GET /api/dependencies?endTs=<ms>&lookback=<ms>
// (default now and 24h), optionally &service=.
func (s *Server) jaegerDependencies(c echo.Context) error {
	q := c.QueryParams()
	end, err := jaegerTime(q, "endTs", time.Millisecond)
	if err != nil {
		return err
	}
	var r timeRange
	lookback := 24 * time.Hour
	if v := q.Get("lookback"); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return badRequest("unable to parse param 'lookback': %q is not a positive number of milliseconds", v)
		}
		lookback = time.Duration(n) * time.Millisecond
	}
	if lookback > s.cfg.MaxRange {
		return badRequest("lookback %s is longer than the maximum %s", lookback, s.cfg.MaxRange)
	}
	if end.IsZero() {
		end = time.Now().UTC()
		r.Lookback = lookback
	}
	r.From, r.To = end.Add(-lookback), end
	svc := strings.TrimSpace(q.Get("service"))
	return s.cached(c, cache.Query{Endpoint: "jaeger.dependencies", Params: []any{svc, s.cacheRange(r)}, From: r.From, To: r.To},
		func(ctx context.Context) (any, error) {
			g, err := s.st.Dependencies(ctx, store.DependencyFilter{From: r.From, To: r.To, Service: svc, MaxTraces: s.cfg.DependencyMaxTraces})
			if err != nil {
				return nil, err
			}
			out := make([]jaegerDependency, 0, len(g.Edges))
			for _, e := range g.Edges {
				out = append(out, jaegerDependency{Parent: e.Parent, Child: e.Child, CallCount: uint64(e.Calls)})
			}
			// Jaeger's shape has no room to say the map was sampled
			// (more than DependencyMaxTraces traces); /api/v1/dependencies
			// says it.
			return jaegerResponse{Data: out}, nil
		})
}
