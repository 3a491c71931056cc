package agentconfig

import (
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/redact"
	"github.com/deeptrace/deeptrace/agent/sample"
	"github.com/deeptrace/deeptrace/schemas"
)

// Pipeline holds the settings of the agent's pipeline that a central
// configuration changes while it runs, and applies configurations to
// them: the protocols parsed (Protocols, for conntrack.Config.Parse), the
// payload kept per call (PayloadBytes, for conntrack.Config.PayloadBytes),
// redaction (Redact, the conntrack hook) and sampling (Sampler, around the
// agent's output). Connection tracking reads them on every connection,
// call and span, so a change takes effect from the next one.
type Pipeline struct {
	Protocols    protocol.Set
	PayloadBytes atomic.Int64
	Sampler      sample.Sampler

	// Filters, when set, applies the configuration's process and port
	// filters to the capture (TracerApplier.Apply); it runs after every
	// other setting was checked and before any changes.
	Filters Applier
	// Log receives what was applied and what could not be (nil: the
	// default logger).
	Log *slog.Logger

	base     redact.Config
	maxCall  int
	redactor atomic.Pointer[redact.Redactor]

	mu      sync.Mutex // one Apply at a time
	applied Applied
}

// Applied is what a Pipeline applies now.
type Applied struct {
	// Protocols parsed (empty: all).
	Protocols []schemas.Protocol `json:"protocols,omitempty"`
	// PayloadBytes kept per call, and what the configuration asked for
	// when the capture's limit cut it.
	PayloadBytes     int `json:"payload_bytes"`
	PayloadRequested int `json:"payload_requested,omitempty"`
	// Redaction added to the agent's own.
	Redaction Redaction `json:"redaction,omitzero"`
	Sampling  Sampling  `json:"sampling,omitzero"`
}

// NewPipeline returns the settings of an agent whose own redaction (its
// flags) is base and whose capture copies at most maxCallBytes per call
// (fixed when the eBPF programs load). Until a configuration is applied
// it parses every protocol, keeps maxCallBytes, redacts with base and
// keeps every span.
func NewPipeline(base redact.Config, maxCallBytes int) (*Pipeline, error) {
	r, err := newRedactor(base)
	if err != nil {
		return nil, err
	}
	p := &Pipeline{base: base, maxCall: maxCallBytes, applied: Applied{PayloadBytes: maxCallBytes}}
	p.redactor.Store(r)
	p.PayloadBytes.Store(int64(maxCallBytes))
	return p, nil
}

func newRedactor(c redact.Config) (*redact.Redactor, error) {
	if len(c.DropTags)+len(c.SecretKeys)+len(c.Headers)+len(c.Patterns) == 0 {
		return nil, nil // --redact=false and nothing central: nothing to do
	}
	return redact.New(c)
}

// Redact redacts a span with the redaction in force; it is
// conntrack.Config.Redact.
func (p *Pipeline) Redact(s *schemas.Span) { p.redactor.Load().Span(s) }

// Applied returns what is applied now.
func (p *Pipeline) Applied() Applied {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.applied
}

// Apply implements Applier: every setting is checked and built first;
// when one fails nothing changes. Central redaction adds to the agent's
// own; it never removes any of it.
func (p *Pipeline) Apply(c Config) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	protos := make([]schemas.Protocol, len(c.Protocols))
	for i, name := range c.Protocols {
		protos[i] = schemas.Protocol(name)
	}
	var check protocol.Set
	if err := check.Select(protos...); err != nil {
		return fmt.Errorf("protocols: %w", err)
	}
	rc := p.base
	rc.SecretKeys = append(append([]string(nil), rc.SecretKeys...), c.Redaction.QueryParams...)
	rc.Headers = append(append([]string(nil), rc.Headers...), c.Redaction.Headers...)
	rc.Patterns = append(append([]string(nil), rc.Patterns...), c.Redaction.Patterns...)
	r, err := newRedactor(rc)
	if err != nil {
		return fmt.Errorf("redaction: %w", err)
	}
	rates := sample.Rates{Default: c.Sampling.Rate, Services: c.Sampling.Services}
	if err := rates.Validate(); err != nil {
		return fmt.Errorf("sampling: %w", err)
	}
	payload := p.maxCall
	if c.PayloadBytes > 0 {
		payload = min(c.PayloadBytes, p.maxCall)
	}
	if p.Filters != nil {
		if err := p.Filters(c); err != nil {
			return err
		}
	}
	// Everything is valid: switch. The settings switch one after the
	// other, not as one: connection tracking reads each on its own, per
	// connection, call or span, so a span built during the switch may mix
	// old and new ones. Redaction goes first, so that a protocol or a
	// larger payload a version enables is never cut under the redaction it
	// replaces; loosening redaction is the admin's choice anyway.
	p.redactor.Store(r)
	_ = p.Protocols.Select(protos...)
	p.PayloadBytes.Store(int64(payload))
	_ = p.Sampler.Set(rates)
	p.applied = Applied{Protocols: p.Protocols.Selected(), PayloadBytes: payload, Redaction: c.Redaction, Sampling: c.Sampling}
	log := p.Log
	if log == nil {
		log = slog.Default()
	}
	if c.PayloadBytes > p.maxCall {
		p.applied.PayloadRequested = c.PayloadBytes
		log.Warn("payload_bytes is above what the capture copies per call, fixed when it loaded (--max-call-bytes); "+
			"keeping that much, restart the agent with a larger --max-call-bytes to raise it",
			"payload_bytes", c.PayloadBytes, "max_call_bytes", p.maxCall)
	}
	log.Info("pipeline settings applied", "protocols", p.applied.Protocols, "payload_bytes", payload,
		"redaction_headers", len(c.Redaction.Headers), "redaction_query_params", len(c.Redaction.QueryParams),
		"redaction_patterns", len(c.Redaction.Patterns), "sampling_rate", c.Sampling.Rate, "sampling_services", len(c.Sampling.Services))
	return nil
}
