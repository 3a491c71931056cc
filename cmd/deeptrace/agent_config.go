package main

import (
	"context"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/spf13/pflag"

	"github.com/deeptrace/deeptrace/agent/agentconfig"
	"github.com/deeptrace/deeptrace/agent/capture"
)

// agentConfigFlags configure the agent's poll of its central
// configuration (agent/agentconfig). They live beside agentFlags so the
// agent command needs only two hook lines.
type agentConfigFlags struct {
	url      string
	token    string
	state    string
	interval time.Duration
	wait     time.Duration
}

var agentCfg agentConfigFlags

func registerAgentConfigFlags(fs *pflag.FlagSet) {
	fs.StringVar(&agentCfg.url, "config-url", "", "poll the agent configuration here (http://api:8080/api/v1/config/agent) and apply changes without a restart (empty: off)")
	fs.StringVar(&agentCfg.token, "config-token", "", "bearer token for --config-url (a viewer's)")
	fs.StringVar(&agentCfg.state, "config-state", "", "keep the last good configuration in this file (empty: .state/agent-config.json)")
	fs.DurationVar(&agentCfg.interval, "config-poll", 15*time.Second, "pause between configuration polls")
	fs.DurationVar(&agentCfg.wait, "config-wait", 25*time.Second, "long poll: the API holds a poll this long until the configuration changes")
}

// startAgentConfig polls the central configuration and applies its
// filters (with the overrides for host) to the tracer; without
// --config-url it does nothing.
func startAgentConfig(ctx context.Context, tr *capture.Tracer, host string, log *slog.Logger) error {
	if agentCfg.url == "" || tr == nil {
		return nil
	}
	state := agentCfg.state
	if state == "" {
		state = filepath.Join(".state", "agent-config.json")
	}
	a := &agentconfig.TracerApplier{Tracer: tr, CgroupID: capture.CgroupID}
	p, err := agentconfig.NewPoller(agentconfig.PollerConfig{URL: agentCfg.url, Token: agentCfg.token, Host: host, StatePath: state,
		Interval: agentCfg.interval, Wait: agentCfg.wait, Logger: log}, a.Apply)
	if err != nil {
		return err
	}
	go p.Run(ctx)
	return nil
}
