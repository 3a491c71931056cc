package api

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"
)

// decodeJSON reads a JSON request body into v, refusing unknown fields and
// trailing data, with errors that name the problem.
func decodeJSON(c echo.Context, v any) error {
	if ct := c.Request().Header.Get(echo.HeaderContentType); ct != "" && !isJSONContentType(ct) {
		return echo.NewHTTPError(http.StatusUnsupportedMediaType, fmt.Sprintf("content type %q: send application/json", ct))
	}
	dec := json.NewDecoder(c.Request().Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return echo.NewHTTPError(http.StatusRequestEntityTooLarge)
		}
		var he *echo.HTTPError
		if errors.As(err, &he) {
			return he
		}
		return badRequest("request body: %v", err)
	}
	if dec.More() {
		return badRequest("request body: more than one JSON value")
	}
	return nil
}

func isJSONContentType(ct string) bool {
	return len(ct) >= 16 && ct[:16] == echo.MIMEApplicationJSON
}

type loginRequest struct {
	Token string `json:"token"`
}

type sessionInfo struct {
	Name      string    `json:"name"`
	Role      Role      `json:"role"`
	Via       string    `json:"via"`
	CSRFToken string    `json:"csrf_token,omitempty"`
	Expires   time.Time `json:"expires,omitzero"`
}

// login opens a dashboard session from a token: an HttpOnly, SameSite=Strict
// session cookie (Secure under TLS), and a CSRF token that every
// state-changing call of the session must echo in X-CSRF-Token. It is also
// readable from the deeptrace_csrf cookie. Every attempt is audited; ten
// failures a minute from one address block further attempts for a minute.
func (s *Server) login(c echo.Context) error {
	err := s.doLogin(c)
	if err != nil {
		c.Error(err)
	}
	s.audit(c, "login", c.Response().Status, err)
	return nil
}

func (s *Server) doLogin(c echo.Context) error {
	ctx := c.Request().Context()
	remote := c.RealIP()
	// The body first: a malformed request is the caller's fault, Redis up
	// or not.
	var req loginRequest
	if err := decodeJSON(c, &req); err != nil {
		return err
	}
	if req.Token == "" {
		return badRequest("token: required")
	}
	blocked, err := s.tokens.loginBlocked(ctx, remote)
	if err != nil {
		return err
	}
	if blocked {
		return echo.NewHTTPError(http.StatusTooManyRequests, fmt.Sprintf("too many failed logins from %s: wait a minute", remote))
	}
	h := HashToken(req.Token)
	name, role, err := s.tokens.lookup(ctx, h)
	if errors.Is(err, errBadToken) {
		s.tokens.loginFailed(ctx, remote)
		return unauthorized("invalid token")
	}
	if err != nil {
		return err
	}
	c.Set(ctxPrincipal, &Principal{Name: name, Role: role, Via: "session"})
	cookie, sess, err := s.tokens.openSession(ctx, h, s.cfg.SessionTTL, remote)
	if err != nil {
		return err
	}
	secure := s.cfg.TLSCert != "" || s.cfg.SecureCookies
	c.SetCookie(&http.Cookie{
		Name: sessionCookie, Value: cookie, Path: "/", Expires: sess.Expires, MaxAge: int(s.cfg.SessionTTL / time.Second),
		HttpOnly: true, Secure: secure, SameSite: http.SameSiteStrictMode,
	})
	c.SetCookie(&http.Cookie{
		Name: csrfCookie, Value: sess.CSRF, Path: "/", Expires: sess.Expires, MaxAge: int(s.cfg.SessionTTL / time.Second),
		Secure: secure, SameSite: http.SameSiteStrictMode,
	})
	return c.JSON(http.StatusOK, sessionInfo{Name: name, Role: role, Via: "session", CSRFToken: sess.CSRF, Expires: sess.Expires})
}

// logout ends the caller's session and clears its cookies.
func (s *Server) logout(c echo.Context) error {
	p := principal(c)
	if p.SessionKey != "" {
		if err := s.rdb.Del(c.Request().Context(), p.SessionKey).Err(); err != nil {
			return redisErr(redisSessions, "the session is not ended; log out again", fmt.Errorf("end session: %w", err))
		}
	}
	for _, name := range []string{sessionCookie, csrfCookie} {
		c.SetCookie(&http.Cookie{Name: name, Value: "", Path: "/", MaxAge: -1, HttpOnly: name == sessionCookie, SameSite: http.SameSiteStrictMode})
	}
	return c.NoContent(http.StatusNoContent)
}

// whoami says who the caller is (and, for a session, its CSRF token, so a
// reloaded dashboard can find it again).
func (s *Server) whoami(c echo.Context) error {
	p := principal(c)
	return c.JSON(http.StatusOK, sessionInfo{Name: p.Name, Role: p.Role, Via: p.Via, CSRFToken: p.CSRF})
}
