package schemas

import "encoding/json"

// TemplateSettings are the index settings the templates carry. Production
// raises shards and replicas; one local node wants 1 and 0.
type TemplateSettings struct {
	Shards   int
	Replicas int
	// RefreshInterval is the index refresh interval, e.g. "1s".
	RefreshInterval string
}

// DefaultTemplateSettings suit one local node.
var DefaultTemplateSettings = TemplateSettings{Shards: 1, Replicas: 0, RefreshInterval: "1s"}

type field map[string]any

var (
	keyword = field{"type": "keyword"}
	long    = field{"type": "long"}
	integer = field{"type": "integer"}
	double  = field{"type": "double"}
	boolean = field{"type": "boolean"}
	date    = field{"type": "date", "format": "strict_date_optional_time||epoch_millis"}
	opaque  = field{"type": "object", "enabled": false}
)

// spanFields maps every indexed span field. Tags are stored but not indexed;
// TagKV is what search uses.
func spanFields() map[string]any {
	return map[string]any{
		"span_id": keyword, "parent_span_id": keyword, "parent_confidence": double,
		"role": keyword, "protocol": keyword, "operation": keyword, "method": keyword,
		"path": keyword, "status_code": integer, "error": boolean, "status_text": keyword,
		"timestamp": date, "start_ns": long, "end_ns": long, "duration_ns": long,
		"req_bytes": long, "resp_bytes": long,
		"pid": long, "tid": long, "goid": long, "process": keyword, "service": keyword,
		"host": keyword, "netns": long,
		"client_ip": keyword, "client_port": integer, "server_ip": keyword, "server_port": integer,
		"seq": long, "req_tcp_seq": long, "resp_tcp_seq": long,
		"tags": opaque, "tag_kv": keyword, "sample_rate": double, "ingested_at": date,
	}
}

// mappings gives each kind's field mappings. Dynamic mapping is off: a field
// that is not listed is kept in _source but not indexed, so a bogus document
// cannot explode the mapping.
func mappings(k Kind) map[string]any {
	var props map[string]any
	switch k {
	case KindSpans:
		props = spanFields()
	case KindTraces:
		props = map[string]any{
			"trace_id": keyword, "root_span_id": keyword, "root_service": keyword,
			"root_operation": keyword, "timestamp": date, "start_ns": long, "end_ns": long,
			"duration_ns": long, "error": boolean, "span_count": integer,
			"services": keyword, "operations": keyword, "hosts": keyword, "tag_kv": keyword,
			"window": date, "assembled_at": date,
			// The spans travel with the trace so a fetch is one read, but
			// search never looks inside them.
			"spans": opaque,
		}
	case KindMetrics:
		props = map[string]any{
			"timestamp": date, "scope": keyword, "service": keyword, "operation": keyword,
			"peer_service": keyword, "count": long, "errors": long,
			"p50_ns": long, "p90_ns": long, "p99_ns": long, "max_ns": long, "sum_ns": long,
			"sketch": opaque,
		}
	case KindAudit:
		props = map[string]any{
			"timestamp": date, "actor": keyword, "role": keyword, "action": keyword,
			"target": keyword, "remote": keyword, "outcome": keyword, "status": integer,
			"detail": field{"type": "text"},
		}
	}
	return map[string]any{"dynamic": false, "properties": props}
}

// IndexTemplate renders the composable index template of kind k, for
// PUT _index_template/<Template(k)>.
func (ix Indices) IndexTemplate(k Kind, s TemplateSettings) ([]byte, error) {
	if s.Shards == 0 {
		s = DefaultTemplateSettings
	}
	settings := map[string]any{
		"number_of_shards":   s.Shards,
		"number_of_replicas": s.Replicas,
	}
	if s.RefreshInterval != "" {
		settings["refresh_interval"] = s.RefreshInterval
	}
	if k == KindTraces {
		// A 50,000-span trace is one document; let one search return many.
		settings["max_result_window"] = 100000
	}
	return json.Marshal(map[string]any{
		"index_patterns": []string{ix.Pattern(k)},
		"priority":       200,
		"template": map[string]any{
			"settings": settings,
			"mappings": mappings(k),
		},
		"_meta": map[string]any{"owner": "deeptrace", "schema_version": SchemaVersion},
	})
}

// SchemaVersion changes whenever a mapping changes incompatibly.
const SchemaVersion = 1
