package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/store"
)

// reassemblyRequest is the body of POST /api/v1/reassembly.
type reassemblyRequest struct {
	From     time.Time `json:"from"`
	To       time.Time `json:"to"`
	Services []string  `json:"services,omitempty"`
	// Window and Shards default to the server's configuration.
	Window string `json:"window,omitempty"`
	Shards int    `json:"shards,omitempty"`
}

// startReassembly is POST /api/v1/reassembly (operator): plan and enqueue a
// reassembly job over a past range; 202 with the job and its Location.
func (s *Server) startReassembly(c echo.Context) error {
	var req reassemblyRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	switch {
	case req.From.IsZero() || req.To.IsZero():
		return badRequest("from and to are required (RFC 3339 times)")
	case !req.To.After(req.From):
		return badRequest("to %s is not after from %s", req.To.Format(time.RFC3339), req.From.Format(time.RFC3339))
	case req.To.After(time.Now().Add(5 * time.Minute)):
		return badRequest("to %s is in the future: reassembly re-runs past windows", req.To.Format(time.RFC3339))
	case req.To.Sub(req.From) > s.cfg.MaxRange:
		return badRequest("range of %s is longer than the maximum %s", req.To.Sub(req.From), s.cfg.MaxRange)
	case req.Shards < 0 || req.Shards > 4096:
		return badRequest("shards %d: want 1..4096", req.Shards)
	case len(req.Services) > 100:
		return badRequest("at most 100 services")
	}
	for _, svc := range req.Services {
		if strings.TrimSpace(svc) == "" || len(svc) > 256 {
			return badRequest("services: empty or overlong name %q", svc)
		}
	}
	window := s.cfg.ReassemblyWindow
	if req.Window != "" {
		d, err := time.ParseDuration(req.Window)
		if err != nil || d < time.Second || d > 24*time.Hour {
			return badRequest("window %q: want a duration in 1s..24h", req.Window)
		}
		window = d
	}
	shards := s.cfg.ReassemblyShards
	if req.Shards > 0 {
		shards = req.Shards
	}
	if _, err := jobs.PlanReassembly("check", req.From, req.To, window, shards, req.Services); err != nil {
		return badRequest("%v", err)
	}
	job, err := jobs.StartReassembly(c.Request().Context(), s.queue, s.rdb, req.From, req.To, window, shards, req.Services)
	if job.ID != "" {
		setAudit(c, job.ID, fmt.Sprintf("range %s..%s window %s shards %d services %v: %d tasks, %d not enqueued",
			req.From.Format(time.RFC3339), req.To.Format(time.RFC3339), window, shards, req.Services, job.Total, job.Failed))
	}
	if err != nil {
		hint := ""
		if job.ID != "" {
			hint = fmt.Sprintf("job %s was recorded but not all of its tasks were enqueued; see GET /api/v1/reassembly/%s", job.ID, job.ID)
		}
		return redisErr(redisJobs, hint, err)
	}
	c.Response().Header().Set(echo.HeaderLocation, "/api/v1/reassembly/"+job.ID)
	return c.JSON(http.StatusAccepted, job)
}

// getJob is GET /api/v1/reassembly/:id: the job's progress.
func (s *Server) getJob(c echo.Context) error {
	id := c.Param("id")
	if !jobs.ValidJobID(id) {
		return badRequest("job id %q: not a reassembly job id", id)
	}
	job, err := jobs.GetJob(c.Request().Context(), s.rdb, id)
	if errors.Is(err, jobs.ErrJobNotFound) {
		return echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("reassembly job %s not found (or expired)", id))
	}
	if err != nil {
		return redisErr(redisJobs, "", err)
	}
	return c.JSON(http.StatusOK, job)
}

// listJobs is GET /api/v1/reassembly?limit=: the newest jobs.
func (s *Server) listJobs(c echo.Context) error {
	q, err := queryParams(c, "limit")
	if err != nil {
		return err
	}
	limit, err := parseLimit(q, 50, 500)
	if err != nil {
		return err
	}
	list, err := jobs.ListJobs(c.Request().Context(), s.rdb, limit)
	if err != nil {
		return redisErr(redisJobs, "", err)
	}
	return c.JSON(http.StatusOK, map[string]any{"jobs": nonNil(list)})
}

// listTokens is GET /api/v1/tokens (admin): names and roles, no secrets.
func (s *Server) listTokens(c echo.Context) error {
	list, err := s.tokens.list(c.Request().Context())
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"tokens": nonNil(list)})
}

type tokenRequest struct {
	Name string `json:"name"`
	Role string `json:"role"`
}

// createToken is POST /api/v1/tokens (admin): a new token, whose secret is
// in this answer only; Redis keeps its SHA-256.
func (s *Server) createToken(c echo.Context) error {
	var req tokenRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	setAudit(c, req.Name, "role "+req.Role)
	if !tokenNameRE.MatchString(req.Name) {
		return badRequest("name %q: want lowercase letters, digits, '_', '.', '@', '-', at most 64", req.Name)
	}
	role, err := ParseRole(req.Role)
	if err != nil {
		return badRequest("%v", err)
	}
	secret, err := s.tokens.create(c.Request().Context(), req.Name, role, principal(c).Name)
	if errors.Is(err, errTokenExists) {
		return echo.NewHTTPError(http.StatusConflict, fmt.Sprintf("token %q exists: revoke it first", req.Name))
	}
	if err != nil {
		return err
	}
	return c.JSON(http.StatusCreated, map[string]any{"name": req.Name, "role": role, "token": secret})
}

// revokeToken is DELETE /api/v1/tokens/:name (admin). Sessions opened with
// the token end with it.
func (s *Server) revokeToken(c echo.Context) error {
	name := c.Param("name")
	setAudit(c, name, "")
	err := s.tokens.revoke(c.Request().Context(), name)
	switch {
	case errors.Is(err, errTokenNotFound):
		return echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("token %q not found", name))
	case errors.Is(err, errTokenStatic):
		return echo.NewHTTPError(http.StatusConflict, fmt.Sprintf("token %q: %v", name, err))
	case err != nil:
		return err
	}
	return c.NoContent(http.StatusNoContent)
}

// Configuration sections an admin manages through the API. Each is one
// JSON object kept in Redis under deeptrace:config:<section>, for the
// components that own it to read (the agents their configuration, the
// alerting their rules).
var configSections = map[string]bool{"agent": true, "alert-rules": true}

const keyConfig = "deeptrace:config:"

// ConfigDoc is one configuration section as stored and served.
type ConfigDoc struct {
	Section   string          `json:"section"`
	Version   int64           `json:"version"`
	UpdatedAt time.Time       `json:"updated_at,omitzero"`
	UpdatedBy string          `json:"updated_by,omitempty"`
	Value     json.RawMessage `json:"value"`
}

func configSection(c echo.Context) (string, error) {
	sec := c.Param("section")
	if !configSections[sec] {
		return "", echo.NewHTTPError(http.StatusNotFound, fmt.Sprintf("configuration section %q: there are agent and alert-rules", sec))
	}
	return sec, nil
}

// getConfig is GET /api/v1/config/:section.
func (s *Server) getConfig(c echo.Context) error {
	sec, err := configSection(c)
	if err != nil {
		return err
	}
	b, err := s.rdb.Get(c.Request().Context(), keyConfig+sec).Bytes()
	if errors.Is(err, redis.Nil) {
		return c.JSON(http.StatusOK, ConfigDoc{Section: sec, Value: json.RawMessage("{}")})
	}
	if err != nil {
		return redisErr(redisConfig, "", fmt.Errorf("read configuration %s: %w", sec, err))
	}
	return c.JSONBlob(http.StatusOK, b)
}

// putConfig is PUT /api/v1/config/:section (admin): replace the section
// with the body, a JSON object. Each change bumps the version.
func (s *Server) putConfig(c echo.Context) error {
	sec, err := configSection(c)
	if err != nil {
		return err
	}
	setAudit(c, sec, "")
	body, err := io.ReadAll(c.Request().Body)
	if err != nil {
		var he *echo.HTTPError
		if errors.As(err, &he) {
			return he
		}
		return badRequest("request body: %v", err)
	}
	var obj map[string]any
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber()
	if err := dec.Decode(&obj); err != nil || obj == nil || dec.More() {
		return badRequest("configuration %s: the body must be one JSON object", sec)
	}
	ctx := c.Request().Context()
	ver, err := s.rdb.Incr(ctx, keyConfig+sec+":version").Result()
	if err != nil {
		return redisErr(redisConfig, "the configuration is unchanged", fmt.Errorf("version of configuration %s: %w", sec, err))
	}
	doc := ConfigDoc{Section: sec, Version: ver, UpdatedAt: time.Now().UTC(), UpdatedBy: principal(c).Name, Value: json.RawMessage(body)}
	b, _ := json.Marshal(doc)
	if err := s.rdb.Set(ctx, keyConfig+sec, b, 0).Err(); err != nil {
		return redisErr(redisConfig, "the configuration is unchanged", fmt.Errorf("store configuration %s: %w", sec, err))
	}
	setAudit(c, sec, fmt.Sprintf("version %d, %d bytes", ver, len(body)))
	return c.JSONBlob(http.StatusOK, b)
}

// searchAudit is GET /api/v1/audit (admin): from/to/lookback, actor,
// action, outcome, limit.
func (s *Server) searchAudit(c echo.Context) error {
	q, err := queryParams(c, "from", "to", "lookback", "actor", "action", "outcome", "limit")
	if err != nil {
		return err
	}
	r, err := s.parseRange(q, true)
	if err != nil {
		return err
	}
	f := store.AuditFilter{From: r.From, To: r.To}
	for _, p := range []struct {
		name string
		dst  *string
	}{{"actor", &f.Actor}, {"action", &f.Action}, {"outcome", &f.Outcome}} {
		if *p.dst, err = single(q, p.name); err != nil {
			return err
		}
	}
	if f.Outcome != "" && !map[string]bool{"ok": true, "denied": true, "invalid": true, "error": true}[f.Outcome] {
		return badRequest("outcome %q: want ok, denied, invalid or error", f.Outcome)
	}
	if f.Limit, err = parseLimit(q, 100, store.MaxAuditLimit); err != nil {
		return err
	}
	recs, err := s.st.SearchAudit(c.Request().Context(), f)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"records": nonNil(recs), "from": r.From, "to": r.To})
}
