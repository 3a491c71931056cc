// Package agentconfig is the agent's central configuration: the document
// an admin writes through the API (process and port filters, protocols to
// parse, payload capture size, redaction, sampling), its validation with
// errors that name the field, and the agent side that polls the API with
// an ETag, applies a change without a restart and keeps the last good
// configuration on disk for when the API cannot be reached.
package agentconfig

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/sample"
	"github.com/deeptrace/deeptrace/schemas"
)

// Config is the agent configuration document (the "agent" section's
// value). A nil Filters leaves the agent's command-line filters alone.
type Config struct {
	Filters *Filters `json:"filters,omitempty"`
	// Protocols limits parsing to these protocols (empty: all); "unknown"
	// is the turn-taking of connections no parser recognises.
	Protocols []string `json:"protocols,omitempty"`
	// PayloadBytes is the payload kept per call (0: the agent's
	// --max-call-bytes, which also bounds it).
	PayloadBytes int       `json:"payload_bytes,omitempty"`
	Redaction    Redaction `json:"redaction,omitzero"`
	Sampling     Sampling  `json:"sampling,omitzero"`
	// Hosts overrides settings for the agents of named hosts (the agent's
	// --host): each field an override sets replaces the shared one.
	Hosts map[string]*Config `json:"hosts,omitempty"`
}

// For returns the configuration of the agent on host: the shared settings
// with the host's overrides.
func (c Config) For(host string) Config {
	r := c
	r.Hosts = nil
	o := c.Hosts[host]
	if o == nil {
		return r
	}
	if o.Filters != nil {
		r.Filters = o.Filters
	}
	if len(o.Protocols) > 0 {
		r.Protocols = o.Protocols
	}
	if o.PayloadBytes != 0 {
		r.PayloadBytes = o.PayloadBytes
	}
	if len(o.Redaction.Headers)+len(o.Redaction.QueryParams)+len(o.Redaction.Patterns) > 0 {
		r.Redaction = o.Redaction
	}
	if o.Sampling.Rate != 0 || len(o.Sampling.Services) > 0 {
		r.Sampling = o.Sampling
	}
	return r
}

// Filters select what the agent traces; when present they replace the
// agent's process and connection filters.
type Filters struct {
	// PIDs, Comms (process names, at most 15 bytes) and Cgroups (cgroup
	// v2 paths under /sys/fs/cgroup) select processes; any match selects.
	PIDs    []int    `json:"pids,omitempty"`
	Comms   []string `json:"comms,omitempty"`
	Cgroups []string `json:"cgroups,omitempty"`
	// Ports select connections by local or remote port (empty: all).
	Ports []int `json:"ports,omitempty"`
}

// Redaction says what the agent removes from spans, on top of its own
// --redact-keys and --redact-drop-tags.
type Redaction struct {
	// Headers are never kept: tags named after them are dropped and
	// "Name: value" is masked in every text.
	Headers []string `json:"headers,omitempty"`
	// QueryParams have their values masked wherever name=value appears
	// (paths, operations, statements, tags).
	QueryParams []string `json:"query_params,omitempty"`
	// Patterns are regular expressions (RE2) whose matches are masked.
	Patterns []string `json:"patterns,omitempty"`
}

// Sampling keeps a fraction of each service's requests (see agent/sample
// for what is decided where).
type Sampling struct {
	// Rate in 0..1 is every service's rate; 0 means the default, 1 (keep
	// everything).
	Rate float64 `json:"rate,omitempty"`
	// Services overrides Rate for the named services (rates in (0, 1]).
	Services map[string]float64 `json:"services,omitempty"`
}

// Validate checks the document; the error names the field path, as in
// "filters.ports[2]: 70000 is not a port".
func (c *Config) Validate() error { return errors.Join(c.validate("")...) }

func (c *Config) validate(prefix string) []error {
	var errs []error
	bad := func(path, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s%s: %s", prefix, path, fmt.Sprintf(format, args...)))
	}
	for _, h := range sortedHosts(c.Hosts) {
		o := c.Hosts[h]
		switch {
		case prefix != "":
			bad("hosts", "overrides do not nest")
		case h == "":
			bad("hosts", "a host name is required")
		case o == nil:
			bad("hosts."+h, "want an object")
		default:
			errs = append(errs, o.validate(prefix+"hosts."+h+".")...)
		}
	}
	if f := c.Filters; f != nil {
		for i, p := range f.PIDs {
			if p <= 0 || p > 1<<22 {
				bad(fmt.Sprintf("filters.pids[%d]", i), "%d is not a process id", p)
			}
		}
		for i, n := range f.Comms {
			if n == "" || len(n) > 15 {
				bad(fmt.Sprintf("filters.comms[%d]", i), "%q: a process name is 1..15 bytes", n)
			}
		}
		for i, g := range f.Cgroups {
			if !strings.HasPrefix(g, "/") {
				bad(fmt.Sprintf("filters.cgroups[%d]", i), "%q: want an absolute cgroup v2 path", g)
			}
		}
		for i, p := range f.Ports {
			if p < 1 || p > 65535 {
				bad(fmt.Sprintf("filters.ports[%d]", i), "%d is not a port", p)
			}
		}
	}
	for i, p := range c.Protocols {
		if !slices.Contains(protocol.Selectable, schemas.Protocol(p)) {
			bad(fmt.Sprintf("protocols[%d]", i), "%q: want one of %s", p, protocolNames())
		}
	}
	if c.PayloadBytes != 0 && (c.PayloadBytes < 256 || c.PayloadBytes > 1<<20) {
		bad("payload_bytes", "%d: want 256..1048576 (or 0 for the agent's default)", c.PayloadBytes)
	}
	for i, h := range c.Redaction.Headers {
		if h == "" || strings.ContainsAny(h, " :\r\n") {
			bad(fmt.Sprintf("redaction.headers[%d]", i), "%q is not a header name", h)
		}
	}
	for i, q := range c.Redaction.QueryParams {
		if strings.TrimSpace(q) == "" || strings.ContainsAny(q, "=&?# \r\n") {
			bad(fmt.Sprintf("redaction.query_params[%d]", i), "%q is not a parameter name", q)
		}
	}
	for i, p := range c.Redaction.Patterns {
		if _, err := regexp.Compile(p); err != nil {
			bad(fmt.Sprintf("redaction.patterns[%d]", i), "%v", err)
		}
	}
	for _, e := range joined(sample.Rates{Default: c.Sampling.Rate, Services: c.Sampling.Services}.Validate()) {
		var re *sample.RateError
		switch {
		case !errors.As(e, &re):
			bad("sampling", "%v", e)
		case re.Default:
			bad("sampling.rate", "%v: %s", re.Rate, re.Reason)
		case re.Service == "":
			bad("sampling.services", "%s", re.Reason)
		default:
			bad("sampling.services."+re.Service, "%v: %s", re.Rate, re.Reason)
		}
	}
	return errs
}

// joined lists the errors errors.Join put together in err.
func joined(err error) []error {
	var j interface{ Unwrap() []error }
	switch {
	case err == nil:
		return nil
	case errors.As(err, &j):
		return j.Unwrap()
	}
	return []error{err}
}

func protocolNames() string {
	names := make([]string, len(protocol.Selectable))
	for i, p := range protocol.Selectable {
		names[i] = string(p)
	}
	return strings.Join(names, ", ")
}

func sortedHosts(m map[string]*Config) []string {
	out := make([]string, 0, len(m))
	for h := range m {
		out = append(out, h)
	}
	sort.Strings(out)
	return out
}

// Parse decodes a configuration strictly (an unknown field is an error
// naming it) and validates it.
func Parse(b []byte) (Config, error) {
	var c Config
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Field == "" {
			return c, errors.New("agent configuration: want one JSON object")
		}
		if errors.As(err, &te) {
			return c, fmt.Errorf("%s: %s is not a %s", te.Field, te.Value, te.Type)
		}
		if msg := err.Error(); strings.HasPrefix(msg, "json: unknown field ") {
			return c, fmt.Errorf("%s: unknown field", strings.Trim(strings.TrimPrefix(msg, "json: unknown field "), `"`))
		}
		return c, fmt.Errorf("agent configuration: %w", err)
	}
	if dec.More() {
		return c, errors.New("agent configuration: want one JSON object")
	}
	return c, c.Validate()
}

// Doc is the configuration as the API serves it: the "agent" section with
// its version.
type Doc struct {
	Section   string          `json:"section"`
	Version   int64           `json:"version"`
	UpdatedAt time.Time       `json:"updated_at,omitzero"`
	UpdatedBy string          `json:"updated_by,omitempty"`
	Value     json.RawMessage `json:"value"`
}

// ETag is the entity tag of a served document: its version and a hash of
// its value (quoted, as HTTP wants).
func ETag(version int64, value []byte) string {
	sum := sha256.Sum256(value)
	return fmt.Sprintf(`"v%d-%s"`, version, hex.EncodeToString(sum[:6]))
}
