// Package store reads and writes DeepTrace's documents in Elasticsearch 8 or
// OpenSearch 2 through go-elasticsearch/v8, staying inside the API subset both
// engines share. Index names come from schemas.Indices; nothing here spells one.
package store

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/elastic/go-elasticsearch/v8"
	"github.com/elastic/go-elasticsearch/v8/esapi"

	"github.com/deeptrace/deeptrace/schemas"
)

// Engine names the server flavour behind the API.
type Engine string

// Engines. OpenSearch needs the product header added to responses, since
// go-elasticsearch/v8 refuses servers that do not say they are Elasticsearch.
const (
	EngineElasticsearch Engine = "elasticsearch"
	EngineOpenSearch    Engine = "opensearch"
)

// Config says how to reach the engine.
type Config struct {
	URLs     []string
	Engine   Engine
	Username string
	Password string
	// APIKey is the base64 "id:key" API key; it overrides basic auth.
	APIKey string
	// CACertFile verifies the server's TLS certificate against this CA.
	CACertFile string
	// InsecureSkipVerify disables TLS verification (tests only).
	InsecureSkipVerify bool
	// Prefix is the index prefix (schemas.DefaultPrefix when empty).
	Prefix string
	// Compress gzips request bodies (bulk writes shrink about tenfold).
	Compress bool
	// GzipResponses says whether responses are asked for gzipped
	// (GzipAuto: unless every URL's host is a loopback address).
	GzipResponses GzipMode
	// Timeout bounds each request; 30s when zero.
	Timeout time.Duration
}

// GzipMode says when the engine is asked to gzip its responses.
type GzipMode string

// Gzip modes. Go's HTTP client asks for gzip by default, and the engine
// then compresses every search response: on loopback that costs the engine
// about a fifth of its CPU per hit read, and the client as much again to
// inflate, to save bandwidth nobody is short of.
const (
	GzipAuto   GzipMode = ""       // gzip unless every engine URL is on loopback
	GzipAlways GzipMode = "always" // always ask for gzipped responses
	GzipNever  GzipMode = "never"  // never ask
)

// gzipResponses resolves the mode against the URLs.
func (c Config) gzipResponses() bool {
	switch c.GzipResponses {
	case GzipAlways:
		return true
	case GzipNever:
		return false
	}
	for _, raw := range c.URLs {
		if !loopbackURL(raw) {
			return true
		}
	}
	return false
}

// loopbackURL reports whether the URL's host is localhost or a loopback IP.
func loopbackURL(raw string) bool {
	u, err := url.Parse(raw)
	if err != nil {
		return false
	}
	host := u.Hostname()
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
}

// Validate checks the configuration and names the bad setting.
func (c Config) Validate() error {
	if len(c.URLs) == 0 {
		return errors.New("es-url: at least one engine URL is required")
	}
	for _, u := range c.URLs {
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			return fmt.Errorf("es-url %q: want http:// or https://", u)
		}
	}
	switch c.Engine {
	case EngineElasticsearch, EngineOpenSearch:
	default:
		return fmt.Errorf("es-engine %q: want %q or %q", c.Engine, EngineElasticsearch, EngineOpenSearch)
	}
	switch c.GzipResponses {
	case GzipAuto, GzipAlways, GzipNever:
	default:
		return fmt.Errorf("es gzip responses %q: want %q, %q or empty (auto: not on loopback)", c.GzipResponses, GzipAlways, GzipNever)
	}
	if c.Prefix != "" {
		if err := schemas.ValidatePrefix(c.Prefix); err != nil {
			return fmt.Errorf("es-prefix: %w", err)
		}
	}
	if (c.Username == "") != (c.Password == "") {
		return errors.New("es-username and es-password: give both or neither")
	}
	return nil
}

// Store is a connection to the engine. It is safe for concurrent use.
type Store struct {
	es  *elasticsearch.Client
	ix  schemas.Indices
	cfg Config
}

// productHeader adds the header go-elasticsearch/v8 checks for, on engines
// that do not send it.
type productHeader struct{ next http.RoundTripper }

func (p productHeader) RoundTrip(r *http.Request) (*http.Response, error) {
	resp, err := p.next.RoundTrip(r)
	if resp != nil && resp.Header.Get("X-Elastic-Product") == "" {
		resp.Header.Set("X-Elastic-Product", "Elasticsearch")
	}
	return resp, err
}

// Open connects to the engine. It does not talk to it yet; call Ping.
func Open(cfg Config) (*Store, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = 30 * time.Second
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 32
	tr.ResponseHeaderTimeout = cfg.Timeout
	tr.DisableCompression = !cfg.gzipResponses()
	if strings.HasPrefix(cfg.URLs[0], "https://") {
		tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: cfg.InsecureSkipVerify}
		if cfg.CACertFile != "" {
			pem, err := os.ReadFile(cfg.CACertFile)
			if err != nil {
				return nil, fmt.Errorf("es-ca-cert: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return nil, fmt.Errorf("es-ca-cert %s: no PEM certificate in it", cfg.CACertFile)
			}
			tc.RootCAs = pool
		}
		tr.TLSClientConfig = tc
	}
	var rt http.RoundTripper = tr
	if cfg.Engine == EngineOpenSearch {
		rt = productHeader{next: tr}
	}
	es, err := elasticsearch.NewClient(elasticsearch.Config{
		Addresses:           cfg.URLs,
		Username:            cfg.Username,
		Password:            cfg.Password,
		APIKey:              cfg.APIKey,
		Transport:           rt,
		CompressRequestBody: cfg.Compress,
		RetryOnStatus:       []int{502, 503, 504, 429},
		MaxRetries:          3,
		RetryBackoff:        func(n int) time.Duration { return time.Duration(n) * 100 * time.Millisecond },
	})
	if err != nil {
		return nil, fmt.Errorf("engine client: %w", err)
	}
	return &Store{es: es, ix: schemas.Indices{Prefix: cfg.Prefix}, cfg: cfg}, nil
}

// Indices returns the index naming in use.
func (s *Store) Indices() schemas.Indices { return s.ix }

// Client exposes the underlying client for the few calls this package does
// not wrap.
func (s *Store) Client() *elasticsearch.Client { return s.es }

// Health is the engine's cluster health.
type Health struct {
	Status      string `json:"status"`
	ClusterName string `json:"cluster_name"`
	Nodes       int    `json:"number_of_nodes"`
}

// Ping asks the cluster's health; it fails when the engine is down or red.
func (s *Store) Ping(ctx context.Context) (Health, error) {
	var h Health
	res, err := s.es.Cluster.Health(s.es.Cluster.Health.WithContext(ctx))
	if err := decode(res, err, "cluster health", &h); err != nil {
		return h, err
	}
	if h.Status == "red" {
		return h, fmt.Errorf("cluster health: status red")
	}
	return h, nil
}

// EnsureTemplates installs every kind's index template. PUT replaces a
// template, so running it at every start is idempotent.
func (s *Store) EnsureTemplates(ctx context.Context, settings schemas.TemplateSettings) error {
	for _, k := range schemas.Kinds {
		body, err := s.ix.IndexTemplate(k, settings)
		if err != nil {
			return fmt.Errorf("render template %s: %w", k, err)
		}
		req := esapi.IndicesPutIndexTemplateRequest{Name: s.ix.Template(k), Body: bytes.NewReader(body)}
		res, err := req.Do(ctx, s.es)
		if err := decode(res, err, "put index template "+s.ix.Template(k), nil); err != nil {
			return err
		}
	}
	body, err := s.ix.AgentsTemplate(settings)
	if err != nil {
		return fmt.Errorf("render template %s: %w", s.ix.Agents(), err)
	}
	req := esapi.IndicesPutIndexTemplateRequest{Name: s.ix.Agents(), Body: bytes.NewReader(body)}
	res, err := req.Do(ctx, s.es)
	return decode(res, err, "put index template "+s.ix.Agents(), nil)
}

// Refresh makes everything written to the indices searchable now. Missing
// indices are ignored.
func (s *Store) Refresh(ctx context.Context, indices ...string) error {
	res, err := s.es.Indices.Refresh(
		s.es.Indices.Refresh.WithContext(ctx),
		s.es.Indices.Refresh.WithIndex(indices...),
		s.es.Indices.Refresh.WithIgnoreUnavailable(true),
		s.es.Indices.Refresh.WithAllowNoIndices(true),
	)
	return decode(res, err, "refresh "+strings.Join(indices, ","), nil)
}

// IndexInfo is one line of _cat/indices.
type IndexInfo struct {
	Name      string `json:"index"`
	Health    string `json:"health"`
	DocsCount string `json:"docs.count"`
	StoreSize string `json:"store.size"`
	Bytes     int64  `json:"-"`
}

// ListIndices lists the indices matching pattern (e.g. Indices().Pattern(k)),
// sorted by name.
func (s *Store) ListIndices(ctx context.Context, pattern string) ([]IndexInfo, error) {
	res, err := s.es.Cat.Indices(
		s.es.Cat.Indices.WithContext(ctx),
		s.es.Cat.Indices.WithIndex(pattern),
		s.es.Cat.Indices.WithFormat("json"),
		s.es.Cat.Indices.WithBytes("b"),
		s.es.Cat.Indices.WithS("index"),
	)
	var out []IndexInfo
	if err := decode(res, err, "list indices "+pattern, &out); err != nil {
		if isNotFound(err) {
			return nil, nil
		}
		return nil, err
	}
	for i := range out {
		fmt.Sscan(out[i].StoreSize, &out[i].Bytes)
	}
	return out, nil
}

// DeleteIndices deletes whole indices (retention). Missing ones are ignored.
func (s *Store) DeleteIndices(ctx context.Context, names ...string) error {
	if len(names) == 0 {
		return nil
	}
	res, err := s.es.Indices.Delete(names,
		s.es.Indices.Delete.WithContext(ctx),
		s.es.Indices.Delete.WithIgnoreUnavailable(true),
	)
	return decode(res, err, "delete indices "+strings.Join(names, ","), nil)
}

// ResponseError is a non-2xx answer of the engine.
type ResponseError struct {
	Op     string
	Status int
	Type   string
	Reason string
}

func (e *ResponseError) Error() string {
	return fmt.Sprintf("%s: engine answered %d %s: %s", e.Op, e.Status, e.Type, e.Reason)
}

// ErrUnavailable is wrapped by the errors of requests that did not reach
// the engine (refused, reset, no route) or that it answered 502, 503, 504
// or 429 after the client's retries: the engine is down, restarting or
// overloaded, and the same request may succeed later.
var ErrUnavailable = errors.New("search engine unavailable")

// IsUnavailable reports whether err says the engine could not serve the
// request for now (ErrUnavailable) rather than that the request failed.
func IsUnavailable(err error) bool {
	if errors.Is(err, ErrUnavailable) {
		return true
	}
	var re *ResponseError
	if errors.As(err, &re) {
		switch re.Status {
		case http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout, http.StatusTooManyRequests:
			return true
		}
	}
	return false
}

func isNotFound(err error) bool {
	var re *ResponseError
	return errors.As(err, &re) && re.Status == http.StatusNotFound
}

// decode checks an API response and decodes its body into out (when not
// nil), closing the body.
// misconfigured reports whether a transport error is the TLS setup's
// (an unknown authority, a name or validity mismatch, plain HTTP spoken to
// a TLS port): an answer came, so the engine is not "unavailable".
func misconfigured(err error) bool {
	var (
		verify   *tls.CertificateVerificationError
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		invalid  x509.CertificateInvalidError
		header   tls.RecordHeaderError
	)
	return errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &hostname) ||
		errors.As(err, &invalid) || errors.As(err, &header)
}

func decode(res *esapi.Response, err error, op string, out any) error {
	if err := check(res, err, op); err != nil {
		return err
	}
	defer res.Body.Close()
	if out == nil {
		_, _ = io.Copy(io.Discard, res.Body)
		return nil
	}
	if err := json.NewDecoder(res.Body).Decode(out); err != nil {
		return fmt.Errorf("%s: decode response: %w", op, err)
	}
	return nil
}

// check turns a failed request or an error answer into an error (closing
// the body then); on success the caller reads and closes the body.
func check(res *esapi.Response, err error, op string) error {
	if err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("%s: %w", op, err)
		}
		if misconfigured(err) {
			// A certificate the client refuses will not change by retrying.
			return fmt.Errorf("%s: TLS with the engine failed (check --es-ca-cert and the engine's certificate): %w", op, err)
		}
		// No answer at all: the engine is away, not the request wrong.
		return fmt.Errorf("%s: %w: %w", op, ErrUnavailable, err)
	}
	if res.IsError() {
		defer res.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(res.Body, 64<<10))
		re := &ResponseError{Op: op, Status: res.StatusCode}
		var e struct {
			Error struct {
				Type   string `json:"type"`
				Reason string `json:"reason"`
			} `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error.Type != "" {
			re.Type, re.Reason = e.Error.Type, e.Error.Reason
		} else {
			re.Reason = strings.TrimSpace(string(body))
		}
		return re
	}
	return nil
}
