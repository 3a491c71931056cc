package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/deeptrace/deeptrace/agent/redact"
	"github.com/deeptrace/deeptrace/schemas"
)

// agentRedactFlags configure what the agent removes from spans before they
// leave it (agent/redact). They live beside agentFlags so the agent command
// needs only hook lines.
type agentRedactFlags struct {
	on       bool
	dropTags []string
	keys     []string
}

var agentRedact agentRedactFlags

func registerAgentRedactFlags(fs *pflag.FlagSet) {
	fs.BoolVar(&agentRedact.on, "redact", true, "remove credentials from spans before they are stored (--redact=false only to debug a parser)")
	fs.StringSliceVar(&agentRedact.dropTags, "redact-drop-tags", redact.DefaultDropTags, "span tags never stored (case-insensitive; a trailing * matches a prefix)")
	fs.StringSliceVar(&agentRedact.keys, "redact-keys", redact.DefaultSecretKeys, "parameter names whose values are masked in operations, paths, statements and tags (password=..., \"token\": ...)")
}

// agentRedactor returns the conntrack hook that redacts spans, or nil when
// --redact=false.
func agentRedactor() (func(*schemas.Span), error) {
	if !agentRedact.on {
		return nil, nil
	}
	r, err := redact.New(redact.Config{DropTags: agentRedact.dropTags, SecretKeys: agentRedact.keys})
	if err != nil {
		return nil, fmt.Errorf("redact-keys/redact-drop-tags: %w", err)
	}
	return r.Span, nil
}
