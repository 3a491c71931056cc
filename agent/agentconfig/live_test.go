package agentconfig_test

import (
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/agentconfig"
	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/correlate"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/eventlog"
	"github.com/deeptrace/deeptrace/agent/pipeline"
	"github.com/deeptrace/deeptrace/agent/protocol/detect"
	"github.com/deeptrace/deeptrace/agent/redact"
	"github.com/deeptrace/deeptrace/api"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
)

// configAPI is the real API on the test's engines, with an admin token.
type configAPI struct {
	t   *testing.T
	url string
}

func startConfigAPI(t *testing.T) *configAPI {
	t.Helper()
	h := api.HashToken("admin-secret")
	admin, err := api.ParseTokenSpec("admin:admin:" + hex.EncodeToString(h[:]))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(api.Config{Tokens: []api.TokenSpec{admin}},
		api.Deps{Store: testenv.Store(t), Redis: testenv.Redis(t), Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	t.Cleanup(hs.Close)
	return &configAPI{t: t, url: hs.URL + "/api/v1/config/agent"}
}

// put writes the agent configuration; it returns the status and body.
func (a *configAPI) put(body string) (int, string) {
	req, _ := http.NewRequest("PUT", a.url, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer admin-secret")
	req.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		a.t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// phasedReplay plays recorded event logs, one each time the test hands it
// one, at the pace they were recorded and with their times moved to now,
// as a capture would hand them over: the pipeline runs all along, and the
// test changes the configuration between two logs.
type phasedReplay struct{ logs chan []byte }

func (p *phasedReplay) Run(ctx context.Context, out chan<- event.Event, goOut chan<- event.GoEvent) error {
	for {
		var b []byte
		select {
		case <-ctx.Done():
			return nil
		case b = <-p.logs:
		}
		evs := make(chan event.Event, 64)
		errc := make(chan error, 1)
		go func() { errc <- eventlog.NewReader(bytes.NewReader(b)).Run(ctx, evs, goOut); close(evs) }()
		var shift uint64
		for e := range evs {
			if shift == 0 {
				shift = uint64(time.Now().UnixNano()) - e.EnterNs
			}
			e.EnterNs += shift
			e.ExitNs += shift
			if ahead := time.Duration(int64(e.ExitNs) - time.Now().UnixNano()); ahead > 0 {
				time.Sleep(ahead)
			}
			select {
			case out <- e:
			case <-ctx.Done():
				return nil
			}
		}
		if err := <-errc; err != nil {
			return err
		}
	}
}

// traffic records the events of N requests per phase on keep-alive
// connections: web (an HTTP server) calls Redis for each request it
// serves, files (another HTTP server) serves long paths.
type traffic struct {
	seq  map[uint64]*[2]uint32 // per socket: request and response positions
	next int                   // request number
}

const (
	webPID, filesPID = 10, 30
	longPath         = 600
)

func (tf *traffic) phase(t *testing.T, n int, first bool) []byte {
	var buf bytes.Buffer
	w := eventlog.NewWriter(&buf)
	w.Header(eventlog.Header{Host: "h1"})
	type sock struct {
		id            uint64
		pid, tid      uint32
		comm          string
		local, remote string
		role          event.Role
	}
	web := sock{101, webPID, webPID + 1, "web", "10.0.0.1:8080", "10.0.0.9:50000", event.RoleServer}
	cache := sock{102, webPID, webPID + 1, "web", "10.0.0.1:40000", "10.0.0.3:6379", event.RoleClient}
	files := sock{301, filesPID, filesPID + 1, "files", "10.0.0.2:8081", "10.0.0.9:50001", event.RoleServer}
	at := uint64(1e9)
	emit := func(s sock, kind event.Kind, toServer bool, data string, enter uint64) {
		e := event.Event{Kind: kind, PID: s.pid, TID: s.tid, Comm: s.comm, SockID: s.id, Role: s.role,
			Local: netip.MustParseAddrPort(s.local), Remote: netip.MustParseAddrPort(s.remote), EnterNs: enter, ExitNs: enter + 5000}
		if kind == event.KindData {
			pos := tf.seq[s.id]
			if pos == nil {
				pos = &[2]uint32{1, 1}
				tf.seq[s.id] = pos
			}
			i := 1
			if toServer {
				i = 0
			}
			e.TCPSeq, e.Size, e.Payload = pos[i], int64(len(data)), []byte(data)
			pos[i] += uint32(len(data))
			out := (s.role == event.RoleClient) == toServer
			e.Dir = event.Ingress
			if out {
				e.Dir = event.Egress
			}
		}
		if err := w.Event(&e); err != nil {
			t.Fatal(err)
		}
	}
	if first {
		emit(web, event.KindAccept, false, "", at)
		emit(cache, event.KindConnect, false, "", at)
		emit(files, event.KindAccept, false, "", at)
	}
	const ok = "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
	for range n {
		i := tf.next
		tf.next++
		at += 2e6
		emit(web, event.KindData, true, "GET /pay/4111111111111111?user=bob HTTP/1.1\r\nHost: web\r\n\r\n", at)
		emit(cache, event.KindData, true, fmt.Sprintf("*2\r\n$3\r\nGET\r\n$10\r\nacct=A%04d\r\n", i), at+100e3)
		emit(cache, event.KindData, false, "$1\r\nv\r\n", at+300e3)
		emit(web, event.KindData, false, ok, at+500e3)
		emit(files, event.KindData, true, "GET /f/"+strings.Repeat("x", longPath-3)+" HTTP/1.1\r\nHost: files\r\n\r\n", at+600e3)
		emit(files, event.KindData, false, ok, at+800e3)
	}
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

// spans collects the pipeline's output.
type spans struct {
	mu  sync.Mutex
	all []schemas.Span
}

func (s *spans) Add(sp schemas.Span) { s.mu.Lock(); s.all = append(s.all, sp); s.mu.Unlock() }

func (s *spans) since(from int) []schemas.Span {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]schemas.Span(nil), s.all[from:]...)
}

func (s *spans) len() int { s.mu.Lock(); defer s.mu.Unlock(); return len(s.all) }

// phaseSpans splits a phase's spans by kind.
type phaseSpans struct {
	webHTTP, files, redis []schemas.Span
}

func split(sp []schemas.Span) phaseSpans {
	var p phaseSpans
	for _, s := range sp {
		switch {
		case s.Protocol == schemas.ProtocolRedis:
			p.redis = append(p.redis, s)
		case s.Service == "web":
			p.webHTTP = append(p.webHTTP, s)
		case s.Service == "files":
			p.files = append(p.files, s)
		}
	}
	return p
}

// TestRunningAgentAppliesConfiguration: one agent pipeline runs on
// recorded traffic from start to end while an admin changes its
// configuration through the API; each change reaches the running
// pipeline through the poller, on connections that stay open: the
// protocols parsed, the payload kept per call, redaction and per-service
// sampling. An invalid configuration is refused on write and the agent
// keeps the last good one.
func TestRunningAgentAppliesConfiguration(t *testing.T) {
	a := startConfigAPI(t)
	live, err := agentconfig.NewPipeline(redact.Default(), 4096)
	if err != nil {
		t.Fatal(err)
	}
	live.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	p, err := agentconfig.NewPoller(agentconfig.PollerConfig{URL: a.url, Token: "admin-secret", Host: "h1",
		Interval: 50 * time.Millisecond, Wait: 5 * time.Second, Logger: live.Log}, live.Apply)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go p.Run(ctx)

	out := &spans{}
	wall := func(m uint64) int64 { return int64(m) }
	corr, err := correlate.New(correlate.Config{Wall: wall, Delay: 300 * time.Millisecond, MaxWait: time.Second, Retain: 2 * time.Second},
		live.Sampler.Output(out).Add)
	if err != nil {
		t.Fatal(err)
	}
	src := &phasedReplay{logs: make(chan []byte)}
	done := make(chan error, 1)
	go func() {
		done <- pipeline.Run(ctx, pipeline.Config{
			Conntrack: conntrack.Config{Host: "h1", MaxCallBytes: 4096, Wall: wall,
				Redact: live.Redact, PayloadBytes: &live.PayloadBytes, Parse: &live.Protocols},
			Protocols: detect.Registry{}, Correlator: corr, Output: out,
			Mono: func(w int64) uint64 { return uint64(w) }, Log: live.Log,
		}, src)
	}()

	version := int64(0)
	configure := func(body string) {
		t.Helper()
		if code, msg := a.put(body); code != 200 {
			t.Fatalf("put %s: %d %s", body, code, msg)
		}
		version++
		waitUntil(t, "configuration applied", 10*time.Second, func() bool { return p.Status().Version == version })
	}
	const n = 200
	tf := &traffic{seq: map[uint64]*[2]uint32{}}
	// play sends one phase and returns its spans once the ones it must
	// have are out and nothing more came for a while (correlation holds
	// client spans back a little).
	play := func(first bool, complete func(phaseSpans) bool) phaseSpans {
		t.Helper()
		from := out.len()
		src.logs <- tf.phase(t, n, first)
		waitUntil(t, "the phase's spans", 15*time.Second, func() bool { return complete(split(out.since(from))) })
		for last := -1; last != out.len(); time.Sleep(400 * time.Millisecond) {
			last = out.len()
		}
		return split(out.since(from))
	}
	redisDone := func(p phaseSpans) bool { return len(p.redis) >= n }

	// Everything, the agent's own redaction only. The first request of
	// each connection is complete once its response is parsed, so every
	// phase has n of each.
	configure(`{}`)
	ph := play(true, redisDone)
	if len(ph.webHTTP) != n || len(ph.files) != n || len(ph.redis) != n {
		t.Fatalf("all protocols: %d web, %d files, %d redis spans, want %d each", len(ph.webHTTP), len(ph.files), len(ph.redis), n)
	}
	if s := ph.webHTTP[0]; s.Path != "/pay/4111111111111111" {
		t.Fatalf("path redacted without a rule: %q", s.Path)
	}
	if s := ph.redis[0]; s.Tags["db.statement"] != "GET acct=A0000" {
		t.Fatalf("statement redacted without a rule: %q", s.Tags["db.statement"])
	}
	if s := ph.files[0]; len(s.Path) != longPath {
		t.Fatalf("files path of %d bytes, want %d", len(s.Path), longPath)
	}
	servers := map[string]bool{}
	for _, s := range ph.webHTTP {
		servers[s.SpanID] = true
	}
	for _, s := range ph.redis {
		if !servers[s.ParentSpanID] {
			t.Fatalf("redis call %s not correlated with web's request (parent %q)", s.Operation, s.ParentSpanID)
		}
	}

	// Only Redis: the open HTTP connections stop making spans.
	configure(`{"protocols":["redis"]}`)
	ph = play(false, redisDone)
	if len(ph.webHTTP)+len(ph.files) > 2 || len(ph.redis) != n { // a request pending at the change may end
		t.Fatalf("protocols [redis]: %d web, %d files, %d redis spans", len(ph.webHTTP), len(ph.files), len(ph.redis))
	}

	// Refused on write, naming the field; the agent keeps version 2.
	for body, field := range map[string]string{
		`{"protocols":["http1","smtp"]}`:            "protocols[1]",
		`{"payload_bytes":100}`:                     "payload_bytes",
		`{"redaction":{"patterns":["(unclosed"]}}`:  "redaction.patterns[0]",
		`{"redaction":{"query_params":["a=b"]}}`:    "redaction.query_params[0]",
		`{"sampling":{"services":{"web":0}}}`:       "sampling.services.web",
		`{"sampling":{"services":{"web":"half"}}}`:  "sampling.services",
		`{"sampling":{"rate":0.5,"per_host":true}}`: "per_host",
	} {
		code, msg := a.put(body)
		if code != 400 || !strings.Contains(msg, field) {
			t.Errorf("put %s: %d %s, want 400 naming %s", body, code, msg, field)
		}
	}

	// HTTP back on the same connections, a smaller payload per call and
	// central redaction rules on top of the agent's own.
	configure(`{"protocols":["http1","redis"],"payload_bytes":256,"redaction":{"query_params":["acct"],"patterns":["\\b\\d{16}\\b"]}}`)
	ph = play(false, redisDone)
	if len(ph.webHTTP) < n-1 || len(ph.files) < n-1 {
		t.Fatalf("http1 selected again: %d web, %d files spans, want %d", len(ph.webHTTP), len(ph.files), n)
	}
	for _, s := range ph.webHTTP {
		if s.Path != "/pay/"+redact.Mask {
			t.Fatalf("central redaction pattern not applied: %q", s.Path)
		}
	}
	for _, s := range ph.redis {
		if st := s.Tags["db.statement"]; st != "GET acct="+redact.Mask {
			t.Fatalf("central redaction of query parameter acct not applied: %q", st)
		}
	}
	for _, s := range ph.files {
		if len(s.Path) > 256 || s.ReqBytes < longPath {
			t.Fatalf("payload_bytes 256: path of %d bytes, request of %d", len(s.Path), s.ReqBytes)
		}
	}
	if got := live.Applied(); got.PayloadBytes != 256 || len(got.Protocols) != 2 {
		t.Errorf("applied: %+v", got)
	}

	// Half of web's requests, decided once per request: web's Redis calls
	// follow their request; files keeps everything.
	configure(`{"sampling":{"services":{"web":0.5}}}`)
	ph = play(false, func(p phaseSpans) bool { return len(p.files) >= n })
	kept := map[string]bool{}
	for _, s := range ph.webHTTP {
		kept[s.SpanID] = true
	}
	if k := len(ph.webHTTP); k < n*3/10 || k > n*7/10 {
		t.Errorf("web at rate 0.5: %d of %d requests kept", k, n)
	}
	if len(ph.redis) != len(ph.webHTTP) {
		t.Errorf("%d redis calls kept for %d requests kept", len(ph.redis), len(ph.webHTTP))
	}
	for i, s := range ph.redis {
		if !kept[s.ParentSpanID] {
			t.Errorf("redis call %d %s kept, its request %q dropped (%d redis, %d web)", i, s.Tags["db.statement"], s.ParentSpanID, len(ph.redis), len(ph.webHTTP))
		}
	}
	if len(ph.files) != n {
		t.Errorf("files (rate 1): %d of %d kept", len(ph.files), n)
	}
	if kept, dropped := live.Sampler.Stats(); dropped == 0 || kept == 0 {
		t.Errorf("sampler stats: kept %d dropped %d", kept, dropped)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func waitUntil(t *testing.T, what string, d time.Duration, ok func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !ok() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
