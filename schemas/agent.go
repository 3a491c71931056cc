package schemas

import (
	"encoding/json"
	"time"
)

// AgentFieldReportedAt is the agent progress field searched by time.
const AgentFieldReportedAt = "reported_at"

// AgentProgress is an agent's report of how far its output is complete:
// every span that started before Watermark has been handed to the engine
// and was searchable when the report was made. The scheduler assembles a
// window as soon as every reporting agent's watermark has passed the
// window's end and margin, instead of waiting a fixed lateness.
//
// There is one document per agent (its host name is the id); an agent that
// stops says so with Stopped, and one that stops reporting is ignored once
// its report is older than the scheduler's agent timeout.
type AgentProgress struct {
	Host       string    `json:"host"`
	Watermark  time.Time `json:"watermark"`
	ReportedAt time.Time `json:"reported_at"`
	StartedAt  time.Time `json:"started_at"`
	// Stopped is set by an agent shutting down: nothing more comes from
	// it until it starts again.
	Stopped bool `json:"stopped,omitempty"`
	// Queued and Spooled are the spans the agent holds in memory and on
	// disk, for operators.
	Queued  int64 `json:"queued"`
	Spooled int64 `json:"spooled"`
}

// Agents is the index of agent progress reports (one small index, not
// time-sharded).
func (ix Indices) Agents() string { return ix.prefix() + "-agents" }

// AgentsTemplate renders the index template of the agents index, for
// PUT _index_template/<Agents()>.
func (ix Indices) AgentsTemplate(s TemplateSettings) ([]byte, error) {
	if s.Shards == 0 {
		s = DefaultTemplateSettings
	}
	settings := map[string]any{"number_of_shards": 1, "number_of_replicas": s.Replicas}
	if s.RefreshInterval != "" {
		settings["refresh_interval"] = s.RefreshInterval
	}
	return json.Marshal(map[string]any{
		"index_patterns": []string{ix.Agents()},
		"priority":       200,
		"template": map[string]any{
			"settings": settings,
			"mappings": map[string]any{"dynamic": false, "properties": map[string]any{
				"host": keyword, "watermark": date, "reported_at": date, "started_at": date,
				"stopped": boolean, "queued": long, "spooled": long,
			}},
		},
		"_meta": map[string]any{"owner": "deeptrace", "schema_version": SchemaVersion},
	})
}
