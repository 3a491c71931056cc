package main

import (
	"bytes"
	"context"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/alerting"
	"github.com/deeptrace/deeptrace/api"
	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

func TestAlertsAndServiceMetricsCLI(t *testing.T) {
	st := testenv.Store(t)
	rdb := testenv.Redis(t)
	h := api.HashToken("viewer-secret")
	spec, err := api.ParseTokenSpec("viewer:viewer:" + hex.EncodeToString(h[:]))
	if err != nil {
		t.Fatal(err)
	}
	srv, err := api.New(api.Config{Tokens: []api.TokenSpec{spec}}, api.Deps{Store: st, Redis: rdb, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler())
	defer hs.Close()
	ctx := context.Background()
	if _, err := alerting.NewRules(rdb).Create(ctx, alerting.Rule{Name: "web p99", Metric: alerting.MetricP99, Service: "web", Op: ">", Threshold: 300}); err != nil {
		t.Fatal(err)
	}
	at := time.Now().UTC().Add(-5 * time.Minute).Truncate(time.Minute)
	m := schemas.Metric{Timestamp: at, Scope: schemas.ScopeService, Service: "web", Count: 120, Errors: 6, P50Ns: 2e6, P90Ns: 9e6, P99Ns: 40e6, MaxNs: 90e6, SumNs: 120 * 3e6}
	b, _ := json.Marshal(m)
	if _, err := st.Bulk(ctx, []store.Doc{{Index: st.Indices().Name(schemas.KindMetrics, at), ID: "x", Body: b}}, "true"); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) string {
		root := &cobra.Command{Use: "deeptrace", SilenceUsage: true, SilenceErrors: true}
		root.AddCommand(alertsCmd(), serviceMetricsCmd())
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetArgs(append(args, "--api-url", hs.URL, "--token", "viewer-secret"))
		if err := root.ExecuteContext(ctx); err != nil {
			t.Fatalf("deeptrace %v: %v", args, err)
		}
		return out.String()
	}
	if out := run("alerts"); !strings.Contains(out, "web p99") || !strings.Contains(out, "p99 of web over 1m0s > 300") {
		t.Errorf("alerts:\n%s", out)
	}
	if out := run("service-metrics", "web", "--lookback", "10m"); !strings.Contains(out, "120") || !strings.Contains(out, "5.00%") || !strings.Contains(out, "40ms") {
		t.Errorf("service-metrics:\n%s", out)
	}
}
