package agentconfig

import (
	"errors"
	"io"
	"log/slog"
	"testing"

	"github.com/deeptrace/deeptrace/agent/redact"
	"github.com/deeptrace/deeptrace/schemas"
)

// Pipeline.Apply changes everything or nothing; payload_bytes is capped at
// the capture's limit; central redaction adds to the agent's own and
// never removes it.
func TestPipelineApplyAllOrNothing(t *testing.T) {
	p, err := NewPipeline(redact.Default(), 4096)
	if err != nil {
		t.Fatal(err)
	}
	p.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := p.Apply(Config{Protocols: []string{"redis"}, PayloadBytes: 1 << 20, Redaction: Redaction{Patterns: []string{`secret-\d+`}}}); err != nil {
		t.Fatal(err)
	}
	if p.PayloadBytes.Load() != 4096 || p.Applied().PayloadRequested != 1<<20 {
		t.Errorf("payload above the capture's limit: kept %d, applied %+v", p.PayloadBytes.Load(), p.Applied())
	}
	if p.Protocols.Parses(schemas.ProtocolHTTP1) || !p.Protocols.Parses(schemas.ProtocolRedis) {
		t.Errorf("protocols: %v", p.Protocols.Selected())
	}
	s := schemas.Span{Operation: "GET /a?password=pw&x=secret-42"}
	p.Redact(&s)
	if s.Operation != "GET /a?password="+redact.Mask+"&x="+redact.Mask {
		t.Errorf("agent's and central redaction together: %q", s.Operation)
	}

	// The filters fail: nothing else changes.
	p.Filters = func(Config) error { return errors.New("filters.cgroups[0]: no such cgroup") }
	err = p.Apply(Config{Protocols: []string{"http1"}, PayloadBytes: 512, Sampling: Sampling{Rate: 0.1}})
	if err == nil {
		t.Fatal("a failing filter was not reported")
	}
	if p.PayloadBytes.Load() != 4096 || !p.Protocols.Parses(schemas.ProtocolRedis) || p.Protocols.Parses(schemas.ProtocolHTTP1) {
		t.Errorf("a refused configuration changed the pipeline: payload %d, protocols %v", p.PayloadBytes.Load(), p.Protocols.Selected())
	}
	for i := range 100 {
		sp := schemas.Span{SpanID: string(rune('a' + i)), Role: schemas.RoleServer, Service: "x"}
		if !p.Sampler.Keep(&sp) {
			t.Fatal("a refused configuration changed the sampling")
		}
	}
	p.Filters = nil

	// An empty configuration: every protocol, the capture's payload, the
	// agent's own redaction only, everything kept.
	if err := p.Apply(Config{}); err != nil {
		t.Fatal(err)
	}
	s = schemas.Span{Operation: "GET /a?password=pw&x=secret-42"}
	p.Redact(&s)
	if s.Operation != "GET /a?password="+redact.Mask+"&x=secret-42" || p.Protocols.Selected() != nil || p.PayloadBytes.Load() != 4096 {
		t.Errorf("empty configuration: %q, protocols %v, payload %d", s.Operation, p.Protocols.Selected(), p.PayloadBytes.Load())
	}
}
