package main

import (
	"fmt"

	"github.com/spf13/pflag"

	"github.com/deeptrace/deeptrace/agent/redact"
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

// agentRedactConfig is the redaction the flags ask for: the zero Config
// when --redact=false. The central configuration adds to it
// (agentconfig.Pipeline).
func agentRedactConfig() (redact.Config, error) {
	if !agentRedact.on {
		return redact.Config{}, nil
	}
	c := redact.Config{DropTags: agentRedact.dropTags, SecretKeys: agentRedact.keys}
	if _, err := redact.New(c); err != nil {
		return c, fmt.Errorf("redact-keys/redact-drop-tags: %w", err)
	}
	return c, nil
}
