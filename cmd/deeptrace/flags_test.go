package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/cobra"
)

func testCmd(t *testing.T, file string, args ...string) (*cobra.Command, *esFlags, error) {
	t.Helper()
	var es esFlags
	var n int
	cmd := withEnv(&cobra.Command{Use: "agent", SilenceUsage: true, SilenceErrors: true, RunE: func(*cobra.Command, []string) error { return nil }})
	es.register(cmd.Flags())
	cmd.Flags().IntVar(&n, "spans", 1, "")
	if file != "" {
		p := filepath.Join(t.TempDir(), "c.yaml")
		if err := os.WriteFile(p, []byte(file), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--config", p)
	}
	cmd.SetArgs(args)
	err := cmd.Execute()
	return cmd, &es, err
}

// The command line wins over the environment, the environment over the
// file, and the file's command section over its shared keys.
func TestConfigPrecedence(t *testing.T) {
	clearEnv(t)
	file := "es-prefix: shared\nes-url: [http://a:1, http://b:2]\nworker:\n  anything: 1\nagent:\n  es-prefix: fromsection\n  es-timeout: 3s\n"
	_, es, err := testCmd(t, file)
	if err != nil {
		t.Fatal(err)
	}
	if es.prefix != "fromsection" || es.timeout.String() != "3s" || strings.Join(es.urls, " ") != "http://a:1 http://b:2" {
		t.Fatalf("from file: prefix %q timeout %v urls %v", es.prefix, es.timeout, es.urls)
	}
	t.Setenv("DEEPTRACE_ES_PREFIX", "fromenv")
	if _, es, _ = testCmd(t, file); es.prefix != "fromenv" {
		t.Fatalf("env did not beat the file: %q", es.prefix)
	}
	if _, es, _ = testCmd(t, file, "--es-prefix", "fromflag"); es.prefix != "fromflag" {
		t.Fatalf("flag did not win: %q", es.prefix)
	}
}

func TestConfigErrorsNameTheSetting(t *testing.T) {
	clearEnv(t)
	cases := map[string]string{
		"agent:\n  es-timout: 3s\n": "agent.es-timout",
		"es-timeout: soon\n":        "es-timeout",
		"agent: [\n":                "c.yaml",
	}
	for file, want := range cases {
		if _, _, err := testCmd(t, file); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("file %q: error %v, want one naming %q", file, err, want)
		}
	}
	t.Setenv("DEEPTRACE_SPANS", "many")
	if _, _, err := testCmd(t, ""); err == nil || !strings.Contains(err.Error(), "DEEPTRACE_SPANS") {
		t.Errorf("bad env value: %v", err)
	}
}

// clearEnv hides the DEEPTRACE_ variables the test task sets (the engine
// URL, say) for the duration of a test, so they cannot beat the file.
func clearEnv(t *testing.T) {
	for _, kv := range os.Environ() {
		k, _, _ := strings.Cut(kv, "=")
		if strings.HasPrefix(k, "DEEPTRACE_") {
			t.Setenv(k, "")
			os.Unsetenv(k)
		}
	}
}
