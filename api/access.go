package api

import (
	"context"
	"crypto/subtle"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/deeptrace/deeptrace/schemas"
)

// Context keys.
const (
	ctxPrincipal   = "deeptrace.principal"
	ctxAuditTarget = "deeptrace.audit.target"
	ctxAuditDetail = "deeptrace.audit.detail"
	ctxErrDetail   = "deeptrace.error.detail"
)

const (
	sessionCookie = "deeptrace_session"
	csrfCookie    = "deeptrace_csrf"
	csrfHeader    = "X-CSRF-Token"
)

// protect wraps a route: it authenticates the caller, checks that its role
// is at least role (and the CSRF token of a cookie session on a
// state-changing call), runs h, and writes an audit record when action is
// set (a state-changing route) or the call was refused.
func (s *Server) protect(role Role, action string, h echo.HandlerFunc) echo.HandlerFunc {
	return s.protectBy(func(echo.Context) (Role, string) { return role, action }, h)
}

// protectBy is protect with the role and action chosen per request (the
// monitor: reads need a viewer, changes an operator).
func (s *Server) protectBy(rule func(echo.Context) (Role, string), h echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		role, action := rule(c)
		err := s.authorize(c, role, action)
		if err == nil {
			err = h(c)
		}
		if err != nil {
			// Commit the error response now, so the audit record has
			// the status the caller gets.
			c.Error(err)
		}
		status := c.Response().Status
		if status == http.StatusUnauthorized || status == http.StatusForbidden {
			s.metrics.refusals.WithLabelValues(fmt.Sprint(status)).Inc()
			if action == "" {
				action = "access"
			}
		}
		if action != "" {
			s.audit(c, action, status, err)
		}
		return nil
	}
}

// authenticate finds who the request acts as: a bearer token, else a
// session cookie. It returns nil and no error when the request carries no
// credentials.
func (s *Server) authenticate(c echo.Context) (*Principal, error) {
	ctx := c.Request().Context()
	if h := c.Request().Header.Get(echo.HeaderAuthorization); h != "" {
		scheme, tok, _ := strings.Cut(h, " ")
		if !strings.EqualFold(scheme, "Bearer") || strings.TrimSpace(tok) == "" {
			return nil, unauthorized("unsupported Authorization header: send \"Bearer <token>\"")
		}
		name, role, err := s.tokens.lookup(ctx, HashToken(strings.TrimSpace(tok)))
		if errors.Is(err, errBadToken) {
			return nil, unauthorized("invalid bearer token")
		}
		if err != nil {
			return nil, err
		}
		return &Principal{Name: name, Role: role, Via: "token"}, nil
	}
	if ck, err := c.Cookie(sessionCookie); err == nil && ck.Value != "" {
		p, err := s.tokens.resolveSession(ctx, ck.Value)
		if errors.Is(err, errNoSession) {
			return nil, unauthorized("session expired or logged out: log in again")
		}
		if err != nil {
			return nil, err
		}
		return &p, nil
	}
	return nil, nil
}

func unauthorized(msg string) error {
	return echo.NewHTTPError(http.StatusUnauthorized, msg)
}

func (s *Server) authorize(c echo.Context, role Role, action string) error {
	p, err := s.authenticate(c)
	if err != nil {
		// Only a refusal asks for credentials: a 503 (Redis away) is
		// no reason for a client to drop the ones it has.
		var he *echo.HTTPError
		if errors.As(err, &he) && he.Code == http.StatusUnauthorized {
			c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="deeptrace"`)
		}
		return err
	}
	if p == nil {
		c.Response().Header().Set(echo.HeaderWWWAuthenticate, `Bearer realm="deeptrace"`)
		return unauthorized("authentication required: send Authorization: Bearer <token>, or log in at POST /api/v1/auth/login")
	}
	c.Set(ctxPrincipal, p)
	if p.Role < role {
		what := action
		if what == "" {
			what = c.Request().Method + " " + c.Path()
		}
		return echo.NewHTTPError(http.StatusForbidden, fmt.Sprintf("%s %q may not %s: it needs the %s role", p.Role, p.Name, what, role))
	}
	if p.Via == "session" && !safeMethod(c.Request().Method) {
		if !s.csrfOK(c, p) {
			return echo.NewHTTPError(http.StatusForbidden, "missing or wrong "+csrfHeader+" header: a dashboard session must send the CSRF token it got at login on every state-changing call")
		}
	}
	return nil
}

func safeMethod(m string) bool {
	return m == http.MethodGet || m == http.MethodHead || m == http.MethodOptions
}

// csrfOK checks a session's state-changing call: the X-CSRF-Token header
// must equal the session's token (synchronizer token). The asynq monitor's
// own pages cannot send it; there a same-origin Origin (or Referer) header
// is accepted instead, which a cross-site request cannot forge.
func (s *Server) csrfOK(c echo.Context, p *Principal) bool {
	if got := c.Request().Header.Get(csrfHeader); got != "" {
		return subtle.ConstantTimeCompare([]byte(got), []byte(p.CSRF)) == 1
	}
	if s.cfg.MonitorPath == "-" || !strings.HasPrefix(c.Request().URL.Path, s.cfg.MonitorPath+"/") {
		return false
	}
	origin := c.Request().Header.Get("Origin")
	if origin == "" {
		origin = c.Request().Header.Get("Referer")
	}
	u, err := url.Parse(origin)
	return err == nil && u.Host != "" && u.Host == c.Request().Host
}

func principal(c echo.Context) *Principal {
	p, _ := c.Get(ctxPrincipal).(*Principal)
	return p
}

// audit writes one audit record of the request. It never fails the
// request: a record the engine refuses is logged and counted instead.
func (s *Server) audit(c echo.Context, action string, status int, err error) {
	rec := schemas.AuditRecord{
		Timestamp: time.Now().UTC(),
		Actor:     "anonymous",
		Action:    action,
		Remote:    c.RealIP(),
		Status:    status,
		Method:    c.Request().Method,
		Path:      c.Request().URL.Path,
		RequestID: c.Response().Header().Get(echo.HeaderXRequestID),
	}
	if p := principal(c); p != nil {
		rec.Actor, rec.Role = p.Name, p.Role.String()
	}
	rec.Target, _ = c.Get(ctxAuditTarget).(string)
	rec.Detail, _ = c.Get(ctxAuditDetail).(string)
	switch {
	case status < 400:
		rec.Outcome = schemas.AuditOK
	case status == http.StatusUnauthorized || status == http.StatusForbidden || status == http.StatusTooManyRequests:
		rec.Outcome = schemas.AuditDenied
	case status < 500:
		rec.Outcome = schemas.AuditInvalid
	default:
		rec.Outcome = schemas.AuditError
	}
	if err != nil && rec.Detail == "" {
		var he *echo.HTTPError
		if errors.As(err, &he) {
			rec.Detail = fmt.Sprint(he.Message)
		} else if d, ok := c.Get(ctxErrDetail).(string); ok {
			rec.Detail = d
		}
	}
	// The request's context may be ending; the record must still land.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(c.Request().Context()), 5*time.Second)
	defer cancel()
	if rec.Actor == "anonymous" && rec.Outcome == schemas.AuditDenied && !s.anonymousAuditAllowed(ctx, rec) {
		return
	}
	s.writeAudit(ctx, rec)
}

// maxAnonymousAudits bounds the records of refused anonymous requests one
// address gets per minute, so that a flood of requests without credentials
// cannot turn into a flood of writes to the engine. Past it one record says
// so, and the rest are only counted (deeptrace_api_audit_suppressed_total).
const maxAnonymousAudits = 100

func (s *Server) anonymousAuditAllowed(ctx context.Context, rec schemas.AuditRecord) bool {
	key := fmt.Sprintf("deeptrace:auditanon:%s:%d", rec.Remote, rec.Timestamp.Unix()/60)
	pipe := s.rdb.Pipeline()
	n := pipe.Incr(ctx, key)
	pipe.Expire(ctx, key, 2*time.Minute)
	if _, err := pipe.Exec(ctx); err != nil {
		return true // without Redis, keep every record
	}
	switch {
	case n.Val() <= maxAnonymousAudits:
		return true
	case n.Val() == maxAnonymousAudits+1:
		sum := rec
		sum.Action, sum.Target, sum.Method, sum.Path = "audit.suppressed", "", "", ""
		sum.Detail = fmt.Sprintf("more than %d refused anonymous requests from %s this minute; the rest of the minute is only counted in deeptrace_api_audit_suppressed_total", maxAnonymousAudits, rec.Remote)
		s.writeAudit(ctx, sum)
	}
	s.metrics.auditSuppressed.Inc()
	return false
}

func (s *Server) writeAudit(ctx context.Context, rec schemas.AuditRecord) {
	if err := s.st.WriteAudit(ctx, rec, ""); err != nil {
		s.metrics.auditFail.Inc()
		s.log.Error("audit record not stored", "err", err, "actor", rec.Actor, "action", rec.Action,
			"target", rec.Target, "outcome", rec.Outcome, "status", rec.Status, "remote", rec.Remote)
	}
}

// setAudit records what a state-changing handler acted on, and how.
func setAudit(c echo.Context, target, detail string) {
	if target != "" {
		c.Set(ctxAuditTarget, target)
	}
	if detail != "" {
		c.Set(ctxAuditDetail, detail)
	}
}
