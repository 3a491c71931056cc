package store_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/store"
)

// tlsFront puts a TLS listener that demands basic auth or an API key in
// front of the real engine, as a secured production cluster would be. It
// returns its URL and the PEM file of the CA that signed its certificate.
func tlsFront(t *testing.T, user, pass, apiKey string) (string, string) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "deeptrace test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	leaf := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	leafDER, err := x509.CreateCertificate(rand.Reader, leaf, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	target, _ := url.Parse(testenv.ESURL())
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		u, p, ok := r.BasicAuth()
		keyOK := apiKey != "" && strings.EqualFold(r.Header.Get("Authorization"), "ApiKey "+apiKey) // the scheme is case-insensitive
		if !keyOK && (!ok || u != user || p != pass) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":{"type":"security_exception","reason":"missing or wrong credentials"},"status":401}`))
			return
		}
		r.Header.Del("Authorization")
		proxy.ServeHTTP(w, r)
	}))
	srv.TLS = &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{leafDER}, PrivateKey: key}}}
	srv.StartTLS()
	t.Cleanup(srv.Close)
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o600); err != nil {
		t.Fatal(err)
	}
	return srv.URL, caFile
}

func TestTLSAndAuth(t *testing.T) {
	testenv.Store(t) // skips when the engine is down
	u, caFile := tlsFront(t, "tracer", "s3cret", "a2V5aWQ6a2V5")
	ping := func(c store.Config) error {
		c.URLs, c.Engine, c.Timeout = []string{u}, testenv.ESEngine(), 5*time.Second
		s, err := store.Open(c)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_, err = s.Ping(ctx)
		return err
	}
	cases := []struct {
		name    string
		cfg     store.Config
		wantErr string
	}{
		{"verified CA and basic auth", store.Config{CACertFile: caFile, Username: "tracer", Password: "s3cret"}, ""},
		{"API key", store.Config{CACertFile: caFile, APIKey: "a2V5aWQ6a2V5"}, ""},
		{"unknown CA", store.Config{Username: "tracer", Password: "s3cret"}, "certificate"},
		{"wrong password", store.Config{CACertFile: caFile, Username: "tracer", Password: "nope"}, "401"},
		{"missing CA file", store.Config{CACertFile: filepath.Join(t.TempDir(), "none.pem")}, "es-ca-cert"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := ping(c.cfg)
			switch {
			case c.wantErr == "" && err != nil:
				t.Fatalf("ping: %v", err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				t.Fatalf("ping error %v, want one mentioning %q", err, c.wantErr)
			}
			// A configuration error must not read as "the engine is away,
			// retry" (the API would answer 503 for good).
			if err != nil && store.IsUnavailable(err) {
				t.Fatalf("ping error %v reported as the engine unavailable", err)
			}
		})
	}
}
