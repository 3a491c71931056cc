package agentconfig

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Applier applies a validated configuration to the running agent. It must
// leave the agent as it was when it fails.
type Applier func(Config) error

// PollerConfig configures a Poller; zero values take the defaults.
type PollerConfig struct {
	// URL is the API's agent configuration, e.g.
	// http://api:8080/api/v1/config/agent.
	URL string
	// Token is the bearer token (a viewer's is enough).
	Token string
	// Host is the agent's host name; the document's overrides for it
	// apply.
	Host string
	// StatePath keeps the last good configuration; it is applied at start
	// when the API cannot be reached.
	StatePath string
	// Interval between polls (15s). Wait, when set, asks the API to hold
	// the request until the configuration changes (long poll).
	Interval, Wait time.Duration
	Client         *http.Client
	Logger         *slog.Logger
}

// Status is what the poller knows: the configuration in force, where it
// came from, and the last failure.
type Status struct {
	Version   int64     `json:"version"`
	ETag      string    `json:"etag,omitempty"`
	Source    string    `json:"source"` // "api", "disk" or "none"
	Reachable bool      `json:"reachable"`
	LastError string    `json:"last_error,omitempty"`
	AppliedAt time.Time `json:"applied_at,omitzero"`
	Config    Config    `json:"config"`
}

// Poller keeps the agent's configuration in step with the API.
type Poller struct {
	cfg   PollerConfig
	apply Applier
	log   *slog.Logger

	mu sync.Mutex
	st Status
}

// NewPoller builds a poller that calls apply for every new configuration.
func NewPoller(cfg PollerConfig, apply Applier) (*Poller, error) {
	if cfg.URL == "" {
		return nil, errors.New("config-url: required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = 15 * time.Second
	}
	if cfg.Client == nil {
		cfg.Client = &http.Client{Timeout: 10*time.Second + cfg.Wait}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	return &Poller{cfg: cfg, apply: apply, log: cfg.Logger.With("component", "agentconfig"), st: Status{Source: "none"}}, nil
}

// Status returns the poller's status.
func (p *Poller) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.st
}

// Run loads the last good configuration from disk, then polls until ctx
// ends.
func (p *Poller) Run(ctx context.Context) error {
	p.loadDisk()
	for {
		if err := p.Poll(ctx); err != nil && ctx.Err() == nil {
			p.log.Debug("poll", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(p.cfg.Interval):
		}
	}
}

// loadDisk applies the configuration kept on disk, if any.
func (p *Poller) loadDisk() {
	if p.cfg.StatePath == "" {
		return
	}
	b, err := os.ReadFile(p.cfg.StatePath)
	if errors.Is(err, os.ErrNotExist) || err == nil && len(b) == 0 {
		return // none yet (an agent that changes user creates it empty)
	}
	if err != nil {
		p.log.Warn("cannot read the last good configuration", "path", p.cfg.StatePath, "err", err)
		return
	}
	var d Doc
	if err := json.Unmarshal(b, &d); err != nil {
		p.log.Warn("last good configuration on disk is unreadable; ignored", "path", p.cfg.StatePath, "err", err)
		return
	}
	if err := p.use(d, "disk"); err != nil {
		p.log.Warn("last good configuration on disk not applied", "path", p.cfg.StatePath, "err", err)
		return
	}
	p.log.Info("applied the last good configuration from disk", "version", d.Version)
}

// Poll asks the API once and applies a changed configuration.
func (p *Poller) Poll(ctx context.Context) error {
	u := p.cfg.URL
	if p.cfg.Wait > 0 {
		u += "?wait=" + p.cfg.Wait.String()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return err
	}
	if p.cfg.Token != "" {
		req.Header.Set("Authorization", "Bearer "+p.cfg.Token)
	}
	p.mu.Lock()
	etag := p.st.ETag
	p.mu.Unlock()
	if etag != "" {
		req.Header.Set("If-None-Match", etag)
	}
	resp, err := p.cfg.Client.Do(req)
	if err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return p.unreachable(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		return p.unreachable(err)
	}
	switch {
	case resp.StatusCode == http.StatusNotModified:
		p.reachable()
		return nil
	case resp.StatusCode != http.StatusOK:
		return p.unreachable(fmt.Errorf("%s answered %s: %s", p.cfg.URL, resp.Status, body))
	}
	p.reachable()
	var d Doc
	if err := json.Unmarshal(body, &d); err != nil {
		return p.failed(fmt.Errorf("configuration from the API: %w", err))
	}
	if err := p.use(d, "api"); err != nil {
		return p.failed(fmt.Errorf("configuration version %d not applied, keeping version %d: %w", d.Version, p.Status().Version, err))
	}
	p.log.Info("applied configuration", "version", d.Version, "etag", p.Status().ETag)
	if p.cfg.StatePath != "" {
		if err := writeFile(p.cfg.StatePath, body); err != nil {
			p.log.Warn("cannot keep the configuration on disk", "path", p.cfg.StatePath, "err", err)
		}
	}
	return nil
}

// use validates and applies a document.
func (p *Poller) use(d Doc, source string) error {
	value := d.Value
	if len(value) == 0 {
		value = []byte("{}")
	}
	c, err := Parse(value)
	if err != nil {
		return err
	}
	c = c.For(p.cfg.Host)
	if p.apply != nil {
		if err := p.apply(c); err != nil {
			return err
		}
	}
	p.mu.Lock()
	p.st.Version, p.st.ETag, p.st.Source, p.st.Config, p.st.AppliedAt = d.Version, ETag(d.Version, value), source, c, time.Now()
	p.st.LastError = ""
	p.mu.Unlock()
	return nil
}

func (p *Poller) reachable() {
	p.mu.Lock()
	p.st.Reachable = true
	p.mu.Unlock()
}

func (p *Poller) unreachable(err error) error {
	p.mu.Lock()
	was := p.st.Reachable || p.st.LastError == ""
	p.st.Reachable, p.st.LastError = false, err.Error()
	st := p.st
	p.mu.Unlock()
	if was {
		p.log.Warn("configuration API unreachable; keeping the last good configuration",
			"version", st.Version, "source", st.Source, "err", err)
	}
	return err
}

func (p *Poller) failed(err error) error {
	p.mu.Lock()
	p.st.LastError = err.Error()
	p.mu.Unlock()
	p.log.Error("configuration refused", "err", err)
	return err
}

// writeFile replaces path atomically (a temporary file renamed over it).
// When the folder is not the agent's to write (it changed user and was
// given only the file), the file is rewritten in place and synced: a crash
// in between can leave it torn, which loadDisk ignores with a warning.
func writeFile(path string, b []byte) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	err := os.WriteFile(tmp, b, 0o600)
	if errors.Is(err, os.ErrPermission) {
		f, ferr := os.OpenFile(path, os.O_WRONLY|os.O_TRUNC, 0)
		if ferr != nil {
			return errors.Join(err, ferr)
		}
		_, werr := f.Write(b)
		serr := f.Sync()
		return errors.Join(werr, serr, f.Close())
	}
	if err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
