package protocol

import "testing"

func TestRouteTemplate(t *testing.T) {
	cases := map[string]string{
		"/users/42":                   "/users/{id}",
		"/users/42/orders/7f3a9c2e1b": "/users/{id}/orders/{id}",
		"/items/550e8400-e29b-41d4-a716-446655440000": "/items/{id}",
		"/api/v1/search?q=shoes&page=2":               "/api/v1/search",
		"/orders/ord-12345":                           "/orders/{id}",
		"/healthz":                                    "/healthz",
		"/static/app.js":                              "/static/app.js",
		"/deadbeef":                                   "/deadbeef", // a hex word without digits stays
		"/deadbeef01":                                 "/{id}",
		"/cafe":                                       "/cafe",
		"/":                                           "/",
		"*":                                           "*",
		"/v2/":                                        "/v2/",
	}
	for in, want := range cases {
		if got := RouteTemplate(in); got != want {
			t.Errorf("RouteTemplate(%q) = %q, want %q", in, got, want)
		}
	}
}

func BenchmarkRouteTemplate(b *testing.B) {
	for i := 0; i < b.N; i++ {
		RouteTemplate("/api/users/12345/orders/7f3a9c2e1b?expand=items")
	}
}
