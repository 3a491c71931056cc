package store

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
)

func TestGzipResponsesResolved(t *testing.T) {
	for _, c := range []struct {
		urls []string
		mode GzipMode
		want bool
	}{
		{[]string{"http://127.0.0.1:9250"}, GzipAuto, false},
		{[]string{"http://localhost:9200", "https://[::1]:9200"}, GzipAuto, false},
		{[]string{"http://127.0.0.1:9200", "http://10.0.0.7:9200"}, GzipAuto, true},
		{[]string{"https://search.example:9200"}, GzipAuto, true},
		{[]string{"http://127.0.0.1:9250"}, GzipAlways, true},
		{[]string{"https://search.example:9200"}, GzipNever, false},
	} {
		cfg := Config{URLs: c.urls, GzipResponses: c.mode}
		if got := cfg.gzipResponses(); got != c.want {
			t.Errorf("%v %q: gzip %v, want %v", c.urls, c.mode, got, c.want)
		}
	}
	if err := (Config{URLs: []string{"http://x:1"}, Engine: EngineOpenSearch, GzipResponses: "yes"}).Validate(); err == nil {
		t.Error("gzip responses \"yes\" accepted")
	}
}

// TestGzipResponsesAsked checks what the client sends: on loopback it does
// not ask for gzip unless told to.
func TestGzipResponsesAsked(t *testing.T) {
	var mu sync.Mutex
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		got = append(got, r.Header.Get("Accept-Encoding"))
		mu.Unlock()
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"status":"green","cluster_name":"t","number_of_nodes":1}`))
	}))
	defer srv.Close()
	for _, c := range []struct {
		mode GzipMode
		want string
	}{{GzipAuto, ""}, {GzipNever, ""}, {GzipAlways, "gzip"}} {
		s, err := Open(Config{URLs: []string{srv.URL}, Engine: EngineOpenSearch, GzipResponses: c.mode, Compress: true})
		if err != nil {
			t.Fatal(err)
		}
		got = nil
		if _, err := s.Ping(context.Background()); err != nil {
			t.Fatal(err)
		}
		if len(got) != 1 || got[0] != c.want {
			t.Errorf("mode %q: Accept-Encoding %q, want %q", c.mode, got, c.want)
		}
	}
}
