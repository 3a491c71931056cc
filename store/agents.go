package store

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/deeptrace/deeptrace/schemas"
)

// PutAgentProgress stores an agent's progress report, replacing its last.
func (s *Store) PutAgentProgress(ctx context.Context, p schemas.AgentProgress) error {
	if p.Host == "" {
		return fmt.Errorf("agent progress: no host")
	}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encode agent progress: %w", err)
	}
	req := esapi.IndexRequest{Index: s.ix.Agents(), DocumentID: p.Host, Body: bytes.NewReader(b)}
	res, err := req.Do(ctx, s.es)
	return decode(res, err, "put agent progress "+p.Host, nil)
}

// AgentProgress returns the progress reports made since the given time,
// by host.
func (s *Store) AgentProgress(ctx context.Context, since time.Time) ([]schemas.AgentProgress, error) {
	res, err := s.Search(ctx, []string{s.ix.Agents()}, map[string]any{
		"size": 10000,
		"query": map[string]any{"range": map[string]any{schemas.AgentFieldReportedAt: map[string]any{
			"gte": since.UTC().Format(time.RFC3339Nano)}}},
		"track_total_hits": false,
	})
	if err != nil {
		return nil, err
	}
	out := make([]schemas.AgentProgress, 0, len(res.Hits.Hits))
	for _, h := range res.Hits.Hits {
		var p schemas.AgentProgress
		if err := json.Unmarshal(h.Source, &p); err != nil {
			// A bogus document says nothing about any agent.
			continue
		}
		if p.Host != "" {
			out = append(out, p)
		}
	}
	return out, nil
}
