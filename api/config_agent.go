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

	"github.com/deeptrace/deeptrace/agent/agentconfig"
)

// The agent section of the configuration has its own routes (echo prefers
// them to /config/:section): reads carry an ETag and answer 304 to a
// matching If-None-Match, or hold the request (?wait=30s) until the
// configuration changes; writes are validated (agentconfig.Parse) with an
// error naming the field.

// agentConfigDoc reads the stored agent section and its ETag.
func (s *Server) agentConfigDoc(c echo.Context) ([]byte, string, error) {
	b, err := s.rdb.Get(c.Request().Context(), keyConfig+"agent").Bytes()
	if errors.Is(err, redis.Nil) {
		b, _ = json.Marshal(ConfigDoc{Section: "agent", Value: json.RawMessage("{}")})
		return b, agentconfig.ETag(0, []byte("{}")), nil
	}
	if err != nil {
		return nil, "", redisErr(redisConfig, "agents keep the configuration they have", fmt.Errorf("read configuration agent: %w", err))
	}
	var d ConfigDoc
	if err := json.Unmarshal(b, &d); err != nil {
		return nil, "", fmt.Errorf("stored configuration agent: %w", err)
	}
	return b, agentconfig.ETag(d.Version, d.Value), nil
}

// getAgentConfig is GET /api/v1/config/agent[?wait=30s].
func (s *Server) getAgentConfig(c echo.Context) error {
	var wait time.Duration
	if v := c.QueryParam("wait"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return badRequest("wait %q: want a duration such as 30s", v)
		}
		wait = min(d, s.cfg.RequestTimeout-2*time.Second, 60*time.Second)
	}
	inm := c.Request().Header.Get("If-None-Match")
	deadline := time.Now().Add(wait)
	for {
		b, etag, err := s.agentConfigDoc(c)
		if err != nil {
			return err
		}
		c.Response().Header().Set("ETag", etag)
		c.Response().Header().Set("Cache-Control", "no-cache")
		if inm == "" || !etagMatch(inm, etag) {
			return c.JSONBlob(http.StatusOK, b)
		}
		if !time.Now().Before(deadline) {
			return c.NoContent(http.StatusNotModified)
		}
		select {
		case <-c.Request().Context().Done():
			return c.NoContent(http.StatusNotModified)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func etagMatch(header, etag string) bool {
	for _, t := range strings.Split(header, ",") {
		t = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(t), "W/"))
		if t == etag || t == "*" {
			return true
		}
	}
	return false
}

// putAgentConfig is PUT /api/v1/config/agent (admin): validate, then
// store as any section.
func (s *Server) putAgentConfig(c echo.Context) error {
	body, err := io.ReadAll(c.Request().Body)
	if err != nil {
		var he *echo.HTTPError
		if errors.As(err, &he) {
			return he
		}
		return badRequest("request body: %v", err)
	}
	if _, err := agentconfig.Parse(body); err != nil {
		setAudit(c, "agent", "refused: "+err.Error())
		return badRequest("agent configuration: %v", err)
	}
	c.Request().Body = io.NopCloser(bytes.NewReader(body))
	c.SetParamNames("section")
	c.SetParamValues("agent")
	return s.putConfig(c)
}
