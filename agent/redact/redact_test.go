package redact

import (
	"strings"
	"testing"

	"github.com/deeptrace/deeptrace/schemas"
)

func TestText(t *testing.T) {
	r, err := New(Default())
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct{ in, want string }{
		{"GET /login?user=bob&password=s3cr3t&next=/home", "GET /login?user=bob&password=" + Mask + "&next=/home"},
		{"/cb?access_token=abc.def&state=1", "/cb?access_token=" + Mask + "&state=1"},
		{"/x?csrf_token=zz9", "/x?csrf_token=" + Mask},
		{`{"user":"bob","password":"s3cr3t","id":42}`, `{"user":"bob","password":` + Mask + `,"id":42}`},
		{"Authorization: Bearer abcdef123456", "Authorization: " + Mask},
		{"Cookie: session=abc; theme=dark\r\nHost: x", "Cookie: " + Mask + "\r\nHost: x"},
		{"token is Bearer abcdef123456", "token is Bearer " + Mask},
		{"ALTER USER bob WITH PASSWORD 'hunter22'", "ALTER USER bob WITH PASSWORD '" + Mask + "'"},
		{"CREATE USER 'a'@'%' IDENTIFIED BY 'hunter22'", "CREATE USER 'a'@'%' IDENTIFIED BY '" + Mask + "'"},
		{"SELECT * FROM users WHERE password = 'hunter22'", "SELECT * FROM users WHERE password = " + Mask},
		// Not secrets: left alone.
		{"SELECT token FROM sessions WHERE id = 1", "SELECT token FROM sessions WHERE id = 1"},
		{"GET /bypass=1", "GET /bypass=1"},
		{"GET /users/42", "GET /users/42"},
		{"", ""},
	}
	for _, c := range cases {
		if got := r.Text(c.in); got != c.want {
			t.Errorf("Text(%q)\n got %q\nwant %q", c.in, got, c.want)
		}
	}
}

func TestSpan(t *testing.T) {
	r, err := New(Config{DropTags: append(DefaultDropTags, "x.custom.*"), SecretKeys: DefaultSecretKeys})
	if err != nil {
		t.Fatal(err)
	}
	s := schemas.Span{
		Protocol: schemas.ProtocolHTTP1, Operation: "GET /a", Path: "/a",
		StatusText: "denied token=tok123",
		Tags: map[string]string{
			"http.method": "GET", "http.request.header.authorization": "Bearer s3cr3t",
			"Cookie": "session=s3cr3t", "x.custom.thing": "s3cr3t", "http.host": "h",
		},
	}
	s.Finish()
	r.Span(&s)
	if len(s.Tags) != 2 || s.Tags["http.method"] != "GET" || s.Tags["http.host"] != "h" {
		t.Errorf("tags after redaction: %v", s.Tags)
	}
	if strings.Join(s.TagKV, " ") != "http.host=h http.method=GET" {
		t.Errorf("TagKV not recomputed: %v", s.TagKV)
	}
	if s.StatusText != "denied token="+Mask {
		t.Errorf("status text %q", s.StatusText)
	}

	redis := []struct{ in, want string }{
		{"AUTH s3cr3t", "AUTH " + Mask},
		{"AUTH default s3cr3t", "AUTH " + Mask},
		{"HELLO 3 AUTH default s3cr3t", "HELLO 3 " + Mask},
		{"HELLO 3", "HELLO 3"},
		{"CONFIG SET requirepass s3cr3t", "CONFIG SET requirepass " + Mask},
		{"CONFIG SET maxmemory 1gb", "CONFIG SET maxmemory 1gb"},
		{"MIGRATE h 6379 k 0 5000 AUTH s3cr3t", "MIGRATE h 6379 k 0 5000 AUTH " + Mask},
		{"ACL SETUSER alice on >s3cr3t", "ACL SETUSER " + Mask},
		{"GET user:42", "GET user:42"},
	}
	for _, c := range redis {
		s := schemas.Span{Protocol: schemas.ProtocolRedis, Operation: c.in, Tags: map[string]string{"db.statement": c.in}}
		r.Span(&s)
		if s.Operation != c.want || s.Tags["db.statement"] != c.want {
			t.Errorf("redis %q: operation %q statement %q, want %q", c.in, s.Operation, s.Tags["db.statement"], c.want)
		}
	}
}

func TestNilAndZero(t *testing.T) {
	var r *Redactor
	s := schemas.Span{Operation: "GET /?password=x"}
	r.Span(&s)
	if s.Operation != "GET /?password=x" {
		t.Fatal("nil redactor changed the span")
	}
	z, err := New(Config{})
	if err != nil {
		t.Fatal(err)
	}
	if got := z.Text("password=x"); got != "password=x" {
		t.Fatalf("zero config masked: %q", got)
	}
	if _, err := New(Config{SecretKeys: []string{" "}}); err == nil {
		t.Fatal("empty key accepted")
	}
}

func FuzzText(f *testing.F) {
	for _, s := range []string{"password=x", "Authorization: Bearer abcdefgh", "AUTH a b", `{"token":"`, "IDENTIFIED BY '"} {
		f.Add(s)
	}
	r, _ := New(Default())
	f.Fuzz(func(t *testing.T, s string) {
		out := r.Text(s)
		if strings.Contains(s, "password=s3cr3t") && strings.Contains(out, "password=s3cr3t") {
			t.Fatalf("secret kept: %q", out)
		}
	})
}

func BenchmarkSpan(b *testing.B) {
	r, _ := New(Default())
	for b.Loop() {
		s := schemas.Span{Protocol: schemas.ProtocolHTTP1, Operation: "GET /users/{id}", Path: "/users/42",
			Tags: map[string]string{"http.method": "GET", "http.host": "api:8080", "http.status_code": "200"}}
		r.Span(&s)
	}
}

// Headers and patterns given by the central configuration: the named
// header's tags are dropped and its value masked in texts; a pattern's
// matches are masked everywhere, also where no key names them.
func TestHeadersAndPatterns(t *testing.T) {
	r, err := New(Config{Headers: []string{"X-Tenant-Key"}, Patterns: []string{`\b\d{16}\b`, `acct-[0-9a-f]{8}`}})
	if err != nil {
		t.Fatal(err)
	}
	s := schemas.Span{
		Protocol: schemas.ProtocolHTTP1, Operation: "GET /pay/4111111111111111", Path: "/pay/4111111111111111",
		StatusText: "X-Tenant-Key: tk-123\r\nHost: h",
		Tags: map[string]string{"http.request.header.x-tenant-key": "tk-123", "x-tenant-key": "tk-123",
			"db.statement": "SELECT * FROM t WHERE acct = 'acct-0123abcd'", "http.host": "h"},
	}
	s.Finish()
	r.Span(&s)
	if s.Path != "/pay/"+Mask || s.Operation != "GET /pay/"+Mask {
		t.Errorf("pattern not masked: operation %q path %q", s.Operation, s.Path)
	}
	if s.StatusText != "X-Tenant-Key: "+Mask+"\r\nHost: h" {
		t.Errorf("header not masked in text: %q", s.StatusText)
	}
	if _, ok := s.Tags["http.request.header.x-tenant-key"]; ok || s.Tags["x-tenant-key"] != "" || len(s.Tags) != 2 {
		t.Errorf("header tags kept: %v", s.Tags)
	}
	if s.Tags["db.statement"] != "SELECT * FROM t WHERE acct = '"+Mask+"'" {
		t.Errorf("pattern not masked in a tag: %q", s.Tags["db.statement"])
	}
	for _, c := range []Config{{Headers: []string{"a b"}}, {Headers: []string{""}}, {Patterns: []string{"("}}} {
		if _, err := New(c); err == nil {
			t.Errorf("%+v accepted", c)
		}
	}
}
