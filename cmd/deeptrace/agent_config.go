package main

import (
	"context"
	"fmt"
	"log/slog"
	"path/filepath"
	"time"

	"github.com/prometheus/client_golang/prometheus"
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
	fs.StringVar(&agentCfg.url, "config-url", "", "poll the agent configuration here (http://api:8080/api/v1/config/agent) and apply changes (filters, protocols, payload size, redaction, sampling) without a restart (empty: off)")
	fs.StringVar(&agentCfg.token, "config-token", "", "bearer token for --config-url (a viewer's)")
	fs.StringVar(&agentCfg.state, "config-state", "", "keep the last good configuration in this file (empty: .state/agent-config.json)")
	fs.DurationVar(&agentCfg.interval, "config-poll", 15*time.Second, "pause between configuration polls")
	fs.DurationVar(&agentCfg.wait, "config-wait", 25*time.Second, "long poll: the API holds a poll this long until the configuration changes")
}

// startAgentConfig returns the pipeline settings the central
// configuration drives (protocols, payload kept, redaction on top of the
// flags', sampling) and, with --config-url, polls the configuration and
// applies each new version to them and to the tracer's filters (with the
// overrides for the agent's host) without a restart. Without a tracer (a
// replay) the filters are not applied.
func startAgentConfig(ctx context.Context, tr *capture.Tracer, f *agentFlags, reg prometheus.Registerer, log *slog.Logger) (*agentconfig.Pipeline, error) {
	base, err := agentRedactConfig() // agent_redact.go
	if err != nil {
		return nil, err
	}
	live, err := agentconfig.NewPipeline(base, f.maxCall)
	if err != nil {
		return nil, err
	}
	live.Log = log
	if tr != nil {
		a := &agentconfig.TracerApplier{Tracer: tr, CgroupID: capture.CgroupID}
		live.Filters = a.Apply
	}
	if err := reg.Register(samplerCollector{live}); err != nil {
		return nil, fmt.Errorf("sampling metrics: %w", err)
	}
	if agentCfg.url == "" {
		return live, nil
	}
	if tr == nil {
		log.Warn("no capture (replay): the central configuration's filters are not applied, its other settings are")
	}
	p, err := agentconfig.NewPoller(agentconfig.PollerConfig{URL: agentCfg.url, Token: agentCfg.token, Host: f.host, StatePath: agentConfigState(),
		Interval: agentCfg.interval, Wait: agentCfg.wait, Logger: log}, live.Apply)
	if err != nil {
		return nil, err
	}
	go p.Run(ctx)
	return live, nil
}

// agentConfigState is the file the last good configuration is kept in, or
// "" without --config-url.
func agentConfigState() string {
	switch {
	case agentCfg.url == "":
		return ""
	case agentCfg.state != "":
		return agentCfg.state
	}
	return filepath.Join(".state", "agent-config.json")
}

// samplerCollector exposes the sampling decisions.
type samplerCollector struct{ p *agentconfig.Pipeline }

var sampledDesc = prometheus.NewDesc("deeptrace_agent_sampled_spans_total",
	"Spans the sampling of the central configuration kept or dropped.", []string{"decision"}, nil)

func (samplerCollector) Describe(ch chan<- *prometheus.Desc) { ch <- sampledDesc }

func (c samplerCollector) Collect(ch chan<- prometheus.Metric) {
	kept, dropped := c.p.Sampler.Stats()
	ch <- prometheus.MustNewConstMetric(sampledDesc, prometheus.CounterValue, float64(kept), "kept")
	ch <- prometheus.MustNewConstMetric(sampledDesc, prometheus.CounterValue, float64(dropped), "dropped")
}
