package schemas

import "time"

// Audit outcomes.
const (
	AuditOK      = "ok"
	AuditDenied  = "denied"  // authentication or authorization refused
	AuditInvalid = "invalid" // the request was malformed
	AuditError   = "error"   // the server failed
)

// AuditRecord is one state-changing call or refused attempt (who, what,
// when, from where, with which outcome), stored in the daily audit
// indices.
type AuditRecord struct {
	Timestamp time.Time `json:"timestamp"`
	// Actor is the token's name, or "anonymous" when none was accepted.
	Actor string `json:"actor"`
	Role  string `json:"role,omitempty"`
	// Action names what was attempted: "reassembly.start", "token.create",
	// "config.put", "login", "logout", "access" (a refused read), ...
	Action string `json:"action"`
	// Target is what the action was on: a job id, a token name, a path.
	Target  string `json:"target,omitempty"`
	Remote  string `json:"remote"`
	Outcome string `json:"outcome"`
	// Status is the HTTP status answered.
	Status int    `json:"status"`
	Detail string `json:"detail,omitempty"`
	// Method, Path and RequestID are kept in _source, not indexed.
	Method    string `json:"method,omitempty"`
	Path      string `json:"path,omitempty"`
	RequestID string `json:"request_id,omitempty"`
}
