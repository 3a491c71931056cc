// Package redisconntest starts a real redis-server of a test's own that
// speaks only TLS, with a CA, server and client certificates made for it,
// a password for the default user, an ACL user with a password and one
// without (nopass): what the TLS and authentication tests of every Redis
// client in DeepTrace run against.
package redisconntest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Credentials of the server's users.
const (
	// Password is the default user's (requirepass).
	Password = "default-s3cret"
	// User is an ACL user with every command and key; UserPassword its
	// password.
	User         = "deeptrace"
	UserPassword = "acl-s3cret"
	// NopassUser is an ACL user with every command and key and no
	// password (nopass).
	NopassUser = "deeptrace-nopass"
)

// Server is a running TLS-only redis-server and the files a client needs.
type Server struct {
	// Addr is 127.0.0.1:port of the TLS port (there is no plain port).
	Addr string
	// CAFile signs the server and client certificates; OtherCAFile is a CA
	// that signed nothing here (verification must fail with it).
	CAFile, OtherCAFile string
	// CertFile and KeyFile are a client certificate the server accepts.
	CertFile, KeyFile string
	// ServerName is the DNS name in the server's certificate ("redis.test";
	// 127.0.0.1 is in it too).
	ServerName string
	// Log is redis-server's log file.
	Log string
}

// Start runs redis-server on a free port, TLS only. With clientAuth the
// server refuses clients without a certificate signed by the CA
// (tls-auth-clients yes); otherwise a client certificate is optional. It
// skips the test when redis-server is not installed, and fails it when
// this redis-server was built without TLS.
func Start(t testing.TB, clientAuth bool) *Server {
	t.Helper()
	bin, err := exec.LookPath("redis-server")
	if err != nil {
		t.Skip("redis-server is not installed (scripts/engines.sh installs it)")
	}
	dir := t.TempDir()
	s := &Server{ServerName: "redis.test", Log: filepath.Join(dir, "redis.log")}
	ca, caKey := newCA(t, "deeptrace test CA")
	other, _ := newCA(t, "some other CA")
	s.CAFile = writePEM(t, dir, "ca.crt", "CERTIFICATE", ca.Raw)
	s.OtherCAFile = writePEM(t, dir, "other-ca.crt", "CERTIFICATE", other.Raw)
	srvCert, srvKey := newLeaf(t, ca, caKey, "redis.test", x509.ExtKeyUsageServerAuth)
	cliCert, cliKey := newLeaf(t, ca, caKey, "deeptrace-client", x509.ExtKeyUsageClientAuth)
	srvCertFile := writePEM(t, dir, "server.crt", "CERTIFICATE", srvCert)
	srvKeyFile := writePEM(t, dir, "server.key", "EC PRIVATE KEY", srvKey)
	s.CertFile = writePEM(t, dir, "client.crt", "CERTIFICATE", cliCert)
	s.KeyFile = writePEM(t, dir, "client.key", "EC PRIVATE KEY", cliKey)

	port := freePort(t)
	s.Addr = "127.0.0.1:" + strconv.Itoa(port)
	auth := "optional"
	if clientAuth {
		auth = "yes"
	}
	conf := strings.Join([]string{
		"port 0",
		"bind 127.0.0.1",
		"tls-port " + strconv.Itoa(port),
		"tls-cert-file " + srvCertFile,
		"tls-key-file " + srvKeyFile,
		"tls-ca-cert-file " + s.CAFile,
		"tls-auth-clients " + auth,
		"requirepass " + Password,
		"user " + User + " on >" + UserPassword + " ~* &* +@all",
		"user " + NopassUser + " on nopass ~* &* +@all",
		"save \"\"",
		"appendonly no",
		"dir " + dir,
		"logfile " + s.Log,
	}, "\n") + "\n"
	confFile := filepath.Join(dir, "redis.conf")
	if err := os.WriteFile(confFile, []byte(conf), 0o600); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, confFile)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() { cmd.Process.Kill(); <-exited })

	// Up: the TLS port completes a handshake.
	tc := &tls.Config{RootCAs: pool(t, ca), ServerName: s.ServerName, Certificates: []tls.Certificate{keyPair(t, s.CertFile, s.KeyFile)}}
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := tls.DialWithDialer(&net.Dialer{Timeout: time.Second}, "tcp", s.Addr, tc)
		if err == nil {
			c.Close()
			return s
		}
		select {
		case err := <-exited:
			log, _ := os.ReadFile(s.Log)
			t.Fatalf("redis-server with TLS exited at start (built without TLS?): %v\n%s", err, log)
		default:
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(s.Log)
			t.Fatalf("redis-server TLS port %s: no handshake after 10s: %v\n%s", s.Addr, err, log)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func freePort(t testing.TB) int {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

func newCA(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	c, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return c, key
}

// newLeaf makes a certificate for name (and 127.0.0.1) signed by ca; it
// returns the DER certificate and key.
func newLeaf(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, name string, usage x509.ExtKeyUsage) (cert, key []byte) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(t), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{name}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
	}
	cert, err = x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	key, err = x509.MarshalECPrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return cert, key
}

func serial(t testing.TB) *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 62))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func writePEM(t testing.TB, dir, name, typ string, der []byte) string {
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

func pool(t testing.TB, ca *x509.Certificate) *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(ca)
	return p
}

func keyPair(t testing.TB, cert, key string) tls.Certificate {
	kp, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(fmt.Errorf("client key pair: %w", err))
	}
	return kp
}
