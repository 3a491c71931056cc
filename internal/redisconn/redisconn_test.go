package redisconn_test

import (
	"context"
	"strings"
	"testing"

	"github.com/deeptrace/deeptrace/internal/redisconn"
	"github.com/deeptrace/deeptrace/internal/redisconn/redisconntest"
)

// TestTLSAndAuth runs every way in, and every way that must be refused,
// against a real TLS-only redis-server that also wants client
// certificates and a password.
func TestTLSAndAuth(t *testing.T) {
	srv := redisconntest.Start(t, true)
	ok := redisconn.Config{Addr: srv.Addr, CAFile: srv.CAFile, CertFile: srv.CertFile, KeyFile: srv.KeyFile,
		ServerName: srv.ServerName, Username: redisconntest.User, Password: redisconntest.UserPassword, DB: 2}
	for _, c := range []struct {
		name string
		edit func(*redisconn.Config)
		// wantErr is "" when the connection must work, else a part of
		// the error.
		wantErr string
		// wantRefusal: the server refuses, in a way that depends on when
		// it notices (wantErr is not checked).
		wantRefusal bool
	}{
		{name: "CA verified, client certificate, ACL user", edit: func(*redisconn.Config) {}},
		{name: "ACL user with nopass", edit: func(c *redisconn.Config) { c.Username, c.Password = redisconntest.NopassUser, "" }},
		{name: "default user with requirepass", edit: func(c *redisconn.Config) { c.Username, c.Password = "", redisconntest.Password }},
		{name: "IP address in the certificate, no server name", edit: func(c *redisconn.Config) { c.ServerName = "" }},
		{name: "another CA", edit: func(c *redisconn.Config) { c.CAFile = srv.OtherCAFile }, wantErr: "certificate signed by unknown authority"},
		{name: "system CAs only", edit: func(c *redisconn.Config) { c.CAFile = ""; c.TLS = true }, wantErr: "certificate"},
		{name: "wrong server name", edit: func(c *redisconn.Config) { c.ServerName = "elsewhere.test" }, wantErr: "elsewhere.test"},
		{name: "no client certificate", edit: func(c *redisconn.Config) { c.CertFile, c.KeyFile = "", "" }, wantRefusal: true},
		{name: "no TLS", edit: func(c *redisconn.Config) { *c = redisconn.Config{Addr: c.Addr, Password: redisconntest.Password} }, wantRefusal: true},
		{name: "wrong password", edit: func(c *redisconn.Config) { c.Password = "nope" }, wantErr: "WRONGPASS"},
		{name: "no password", edit: func(c *redisconn.Config) { c.Username, c.Password = "", "" }, wantErr: "NOAUTH"},
		{name: "ACL user with a password, given none", edit: func(c *redisconn.Config) { c.Password = "" }, wantErr: "WRONGPASS"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := ok
			c.edit(&cfg)
			rdb, err := cfg.Open(context.Background())
			switch {
			case c.wantRefusal:
				if err == nil {
					rdb.Close()
					t.Fatal("connected; want a refusal")
				}
			case c.wantErr == "" && err != nil:
				t.Fatal(err)
			case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
				if rdb != nil {
					rdb.Close()
				}
				t.Fatalf("err %v, want one containing %q", err, c.wantErr)
			}
			if err != nil {
				if !strings.Contains(err.Error(), srv.Addr) {
					t.Errorf("error %q does not name the address", err)
				}
				return
			}
			defer rdb.Close()
			ctx := context.Background()
			if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
				t.Fatal(err)
			}
			if v, _ := rdb.Get(ctx, "k").Result(); v != "v" {
				t.Fatalf("get %q", v)
			}
			// Authenticated as the user asked for, not left the default one.
			want := cfg.Username
			if want == "" {
				want = "default"
			}
			if who, err := rdb.Do(ctx, "ACL", "WHOAMI").Text(); err != nil || who != want {
				t.Fatalf("ACL WHOAMI %q %v, want %q", who, err, want)
			}
		})
	}
}

// A server that does not ask for client certificates takes a client that
// verifies it but has none.
func TestTLSWithoutClientCertificate(t *testing.T) {
	srv := redisconntest.Start(t, false)
	rdb, err := redisconn.Config{Addr: srv.Addr, CAFile: srv.CAFile, Password: redisconntest.Password}.Open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	if err := rdb.Ping(context.Background()).Err(); err != nil {
		t.Fatal(err)
	}
}

func TestValidate(t *testing.T) {
	for _, c := range []struct {
		cfg  redisconn.Config
		want string
	}{
		{redisconn.Config{Addr: "127.0.0.1:6379"}, ""},
		{redisconn.Config{Addr: "localhost"}, "redis-addr"},
		{redisconn.Config{Addr: "127.0.0.1:6379", DB: -1}, "redis-db"},
		{redisconn.Config{Addr: "127.0.0.1:6379", CertFile: "c.pem"}, "redis-client-key"},
		{redisconn.Config{Addr: "127.0.0.1:6379", Username: "u"}, ""}, // a nopass ACL user
	} {
		err := c.cfg.Validate()
		if (c.want == "") != (err == nil) || (err != nil && !strings.Contains(err.Error(), c.want)) {
			t.Errorf("%+v: %v, want %q", c.cfg, err, c.want)
		}
	}
	_, err := redisconn.Config{Addr: "127.0.0.1:6379", CAFile: "/nonexistent/ca.pem"}.Options()
	if err == nil || !strings.Contains(err.Error(), "redis-ca-cert") {
		t.Errorf("missing CA file: %v", err)
	}
	if o, err := (redisconn.Config{Addr: "127.0.0.1:6379"}).Options(); err != nil || o.TLSConfig != nil {
		t.Errorf("plain config: TLS %v, err %v", o.TLSConfig, err)
	}
}
