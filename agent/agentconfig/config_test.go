package agentconfig

import (
	"strings"
	"testing"
)

func TestParseNamesTheField(t *testing.T) {
	cases := []struct{ in, want string }{
		{`{"filters":{"ports":[80,443,70000]}}`, "filters.ports[2]: 70000 is not a port"},
		{`{"filters":{"comms":["a-much-too-long-process-name"]}}`, "filters.comms[0]"},
		{`{"filters":{"pids":[-1]}}`, "filters.pids[0]: -1 is not a process id"},
		{`{"protocols":["http1","smtp"]}`, `protocols[1]: "smtp"`},
		{`{"payload_bytes":10}`, "payload_bytes: 10"},
		{`{"sampling":{"rate":1.5}}`, "sampling.rate: 1.5"},
		{`{"redaction":{"patterns":["("]}}`, "redaction.patterns[0]"},
		{`{"redaction":{"query_params":["ok","a&b"]}}`, `redaction.query_params[1]: "a&b"`},
		{`{"sampling":{"services":{"web":0}}}`, "sampling.services.web: 0: want more than 0, at most 1 (a filter stops tracing a service)"},
		{`{"sampling":{"services":{"web":1.5}}}`, "sampling.services.web: 1.5"},
		{`{"sampling":{"services":{"":0.5}}}`, "sampling.services: a service name is required"},
		{`{"sampling":{"services":{"web":"half"}}}`, "sampling.services"},
		{`{"hosts":{"db-1":{"sampling":{"services":{"db":2}}}}}`, "hosts.db-1.sampling.services.db: 2"},
		{`{"filters":{"ports":"80"}}`, "filters.ports: string"},
		{`{"sampling":{"rate":0.1},"colour":"red"}`, "colour: unknown field"},
		{`[1]`, "want one JSON object"},
	}
	for _, c := range cases {
		_, err := Parse([]byte(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: error %v, want one containing %q", c.in, err, c.want)
		}
	}
	// Every bad rate is named, each by its path (sample.Rates.Validate
	// checks them).
	_, err := Parse([]byte(`{"sampling":{"rate":-1,"services":{"a":0,"b":2,"":0.5}}}`))
	for _, want := range []string{"sampling.rate: -1: want 0..1", "sampling.services.a: 0", "sampling.services.b: 2", "sampling.services: a service name is required"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("several bad rates: error %v, want one containing %q", err, want)
		}
	}
	c, err := Parse([]byte(`{"filters":{"comms":["nginx"],"ports":[80]},"protocols":["http1"],"payload_bytes":4096,"redaction":{"headers":["Authorization"]},"sampling":{"rate":0.25}}`))
	if err != nil || c.Filters == nil || c.Sampling.Rate != 0.25 {
		t.Fatalf("valid configuration: %+v %v", c, err)
	}
	c, err = Parse([]byte(`{"protocols":["redis","unknown"],"redaction":{"query_params":["acct"]},"sampling":{"services":{"gw":0.1}}}`))
	if err != nil || c.Sampling.Services["gw"] != 0.1 {
		t.Fatalf("valid configuration with new fields: %+v %v", c, err)
	}
	if ETag(1, []byte("{}")) == ETag(2, []byte("{}")) || ETag(1, []byte("{}")) == ETag(1, []byte(`{"a":1}`)) {
		t.Error("ETag does not change with version and value")
	}
}

func TestHostOverrides(t *testing.T) {
	c, err := Parse([]byte(`{"filters":{"comms":["nginx"]},"sampling":{"rate":0.5},
		"hosts":{"db-1":{"filters":{"comms":["postgres"],"ports":[5432]}},"web-2":{"sampling":{"rate":1}},
		"gw-1":{"sampling":{"services":{"gw":0.2}}}}}`))
	if err != nil {
		t.Fatal(err)
	}
	if f := c.For("db-1"); f.Filters.Comms[0] != "postgres" || f.Sampling.Rate != 0.5 || f.Hosts != nil {
		t.Errorf("db-1: %+v", f)
	}
	if f := c.For("web-2"); f.Filters.Comms[0] != "nginx" || f.Sampling.Rate != 1 {
		t.Errorf("web-2: %+v", f)
	}
	if f := c.For("gw-1"); f.Sampling.Services["gw"] != 0.2 || f.Sampling.Rate != 0 {
		t.Errorf("gw-1: %+v", f.Sampling)
	}
	if f := c.For("other"); f.Filters.Comms[0] != "nginx" {
		t.Errorf("other: %+v", f)
	}
	_, err = Parse([]byte(`{"hosts":{"db-1":{"filters":{"ports":[0]}}}}`))
	if err == nil || !strings.Contains(err.Error(), "hosts.db-1.filters.ports[0]: 0 is not a port") {
		t.Errorf("nested error: %v", err)
	}
}
