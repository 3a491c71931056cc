package api

import (
	"encoding/json"
	"errors"
	"net/http"
	"strings"

	"github.com/labstack/echo/v4"

	"github.com/deeptrace/deeptrace/alerting"
)

// ruleWithState is a rule as listed: with its current state.
type ruleWithState struct {
	alerting.Rule
	State alerting.State `json:"state"`
}

func (s *Server) alertRules() *alerting.Rules { return alerting.NewRules(s.rdb) }

// listAlertRules is GET /api/v1/alerts/rules.
func (s *Server) listAlertRules(c echo.Context) error {
	ctx := c.Request().Context()
	rules, err := s.alertRules().List(ctx)
	if err != nil {
		return redisErr(redisAlerts, "", err)
	}
	states, err := s.alertRules().States(ctx)
	if err != nil {
		return redisErr(redisAlerts, "", err)
	}
	out := make([]ruleWithState, 0, len(rules))
	for _, r := range rules {
		st := states[r.ID]
		if st.Status == "" {
			st.Status = alerting.StatusOK
		}
		out = append(out, ruleWithState{Rule: r, State: st})
	}
	return c.JSON(http.StatusOK, map[string]any{"rules": out})
}

// getAlertRule is GET /api/v1/alerts/rules/:id.
func (s *Server) getAlertRule(c echo.Context) error {
	ctx := c.Request().Context()
	r, err := s.alertRules().Get(ctx, c.Param("id"))
	if err != nil {
		return ruleError(err, c.Param("id"))
	}
	states, err := s.alertRules().States(ctx)
	if err != nil {
		return redisErr(redisAlerts, "", err)
	}
	st := states[r.ID]
	if st.Status == "" {
		st.Status = alerting.StatusOK
	}
	return c.JSON(http.StatusOK, ruleWithState{Rule: r, State: st})
}

func decodeRule(c echo.Context) (alerting.Rule, error) {
	var r alerting.Rule
	dec := json.NewDecoder(c.Request().Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		var he *echo.HTTPError
		if errors.As(err, &he) {
			return r, he
		}
		msg := strings.TrimPrefix(err.Error(), "json: ")
		return r, badRequest("alert rule: %s", msg)
	}
	return r, nil
}

func ruleError(err error, id string) error {
	if errors.Is(err, alerting.ErrNotFound) {
		return echo.NewHTTPError(http.StatusNotFound, "alert rule "+id+": not found")
	}
	return redisErr(redisAlerts, "", err)
}

// createAlertRule is POST /api/v1/alerts/rules (admin).
func (s *Server) createAlertRule(c echo.Context) error {
	r, err := decodeRule(c)
	if err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return badRequest("alert rule: %v", err)
	}
	r, err = s.alertRules().Create(c.Request().Context(), r)
	if err != nil {
		return redisErr(redisAlerts, "", err)
	}
	setAudit(c, r.ID, r.Name)
	return c.JSON(http.StatusCreated, r)
}

// updateAlertRule is PUT /api/v1/alerts/rules/:id (admin).
func (s *Server) updateAlertRule(c echo.Context) error {
	id := c.Param("id")
	setAudit(c, id, "")
	r, err := decodeRule(c)
	if err != nil {
		return err
	}
	if err := r.Validate(); err != nil {
		return badRequest("alert rule: %v", err)
	}
	r, err = s.alertRules().Update(c.Request().Context(), id, r)
	if err != nil {
		return ruleError(err, id)
	}
	return c.JSON(http.StatusOK, r)
}

// deleteAlertRule is DELETE /api/v1/alerts/rules/:id (admin).
func (s *Server) deleteAlertRule(c echo.Context) error {
	id := c.Param("id")
	setAudit(c, id, "")
	if err := s.alertRules().Delete(c.Request().Context(), id); err != nil {
		return ruleError(err, id)
	}
	return c.NoContent(http.StatusNoContent)
}

// listAlerts is GET /api/v1/alerts: the rules that are pending or firing.
func (s *Server) listAlerts(c echo.Context) error {
	ctx := c.Request().Context()
	rules, err := s.alertRules().List(ctx)
	if err != nil {
		return redisErr(redisAlerts, "", err)
	}
	states, err := s.alertRules().States(ctx)
	if err != nil {
		return redisErr(redisAlerts, "", err)
	}
	out := []ruleWithState{}
	for _, r := range rules {
		if st := states[r.ID]; st.Status == alerting.StatusFiring || st.Status == alerting.StatusPending {
			out = append(out, ruleWithState{Rule: r, State: st})
		}
	}
	return c.JSON(http.StatusOK, map[string]any{"alerts": out})
}

// alertHistory is GET /api/v1/alerts/history[?rule=id&limit=n]: state
// transitions, newest first.
func (s *Server) alertHistory(c echo.Context) error {
	q, err := queryParams(c, "rule", "limit")
	if err != nil {
		return err
	}
	rule, err := single(q, "rule")
	if err != nil {
		return err
	}
	limit, err := parseLimit(q, 100, 10000)
	if err != nil {
		return err
	}
	evs, err := s.alertRules().History(c.Request().Context(), rule, limit)
	if err != nil {
		return redisErr(redisAlerts, "", err)
	}
	return c.JSON(http.StatusOK, map[string]any{"events": nonNil(evs)})
}
