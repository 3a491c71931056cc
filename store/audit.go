package store

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/deeptrace/deeptrace/schemas"
)

// WriteAudit stores one audit record in the daily audit index of its time
// (the engine assigns the id). refresh is the index refresh parameter: ""
// for none, "wait_for" to return once it is searchable.
func (s *Store) WriteAudit(ctx context.Context, rec schemas.AuditRecord, refresh string) error {
	if rec.Timestamp.IsZero() {
		rec.Timestamp = time.Now().UTC()
	}
	body, err := json.Marshal(rec)
	if err != nil {
		return fmt.Errorf("encode audit record: %w", err)
	}
	index := s.ix.Name(schemas.KindAudit, rec.Timestamp)
	req := esapi.IndexRequest{Index: index, Body: bytes.NewReader(body), Refresh: refresh}
	res, err := req.Do(ctx, s.es)
	return decode(res, err, "write audit record to "+index, nil)
}

// MaxAuditLimit bounds the records one audit query returns.
const MaxAuditLimit = 1000

// AuditFilter selects audit records. Empty fields do not filter.
type AuditFilter struct {
	From, To time.Time
	Actor    string
	Action   string
	Outcome  string
	// Limit is the most records returned, newest first (default 100).
	Limit int
}

// SearchAudit returns the newest audit records f selects.
func (s *Store) SearchAudit(ctx context.Context, f AuditFilter) ([]schemas.AuditRecord, error) {
	if f.From.IsZero() || f.To.IsZero() || f.To.Before(f.From) {
		return nil, errors.New("audit search: a range with from before to is required")
	}
	if f.Limit <= 0 {
		f.Limit = 100
	}
	if f.Limit > MaxAuditLimit {
		return nil, fmt.Errorf("audit search: limit %d above %d", f.Limit, MaxAuditLimit)
	}
	filter := []any{rangeFilter("timestamp", f.From, f.To)}
	for field, v := range map[string]string{"actor": f.Actor, "action": f.Action, "outcome": f.Outcome} {
		if v != "" {
			filter = append(filter, map[string]any{"term": map[string]any{field: v}})
		}
	}
	res, err := s.Search(ctx, s.ix.ForRange(schemas.KindAudit, f.From, f.To), map[string]any{
		"query":            map[string]any{"bool": map[string]any{"filter": filter}},
		"sort":             []any{map[string]any{"timestamp": map[string]any{"order": "desc"}}},
		"size":             f.Limit,
		"track_total_hits": false,
	})
	if err != nil {
		return nil, fmt.Errorf("audit search: %w", err)
	}
	out := make([]schemas.AuditRecord, 0, len(res.Hits.Hits))
	for _, h := range res.Hits.Hits {
		var r schemas.AuditRecord
		if err := json.Unmarshal(h.Source, &r); err != nil {
			return nil, fmt.Errorf("decode audit record %s: %w", h.ID, err)
		}
		out = append(out, r)
	}
	return out, nil
}
