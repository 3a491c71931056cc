package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.yaml.in/yaml/v3"

	"github.com/deeptrace/deeptrace/store"
)

// envName is the environment variable that sets a flag: DEEPTRACE_ and the
// flag's name in upper case with '-' as '_' (es-url → DEEPTRACE_ES_URL).
func envName(flag string) string {
	return "DEEPTRACE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// bindEnv fills every flag of cmd that the command line did not set: from
// the environment first, then from the configuration file (--config or
// DEEPTRACE_CONFIG). It runs before the command's own validation, so a bad
// value from any source is reported with its origin and the flag's name.
func bindEnv(cmd *cobra.Command) error {
	var err error
	fromEnv := map[string]bool{}
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			fromEnv[f.Name] = true
			if e := cmd.Flags().Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q (flag --%s): %w", envName(f.Name), v, f.Name, e)
			}
		}
	})
	if err != nil {
		return err
	}
	path, _ := cmd.Flags().GetString("config")
	if path == "" {
		path = os.Getenv("DEEPTRACE_CONFIG")
	}
	if path == "" {
		return nil
	}
	values, err := loadConfigFile(path, cmd)
	if err != nil {
		return err
	}
	for name, v := range values {
		f := cmd.Flags().Lookup(name)
		if f == nil || f.Changed || fromEnv[name] {
			continue
		}
		if err := cmd.Flags().Set(name, v); err != nil {
			return fmt.Errorf("config %s: %s: %q: %w", path, name, v, err)
		}
	}
	return nil
}

// loadConfigFile reads a YAML (or JSON) configuration file. Top-level keys
// are flag names shared by every binary (a key another binary uses is
// ignored here); a section named after the command (agent:, worker:, ...)
// holds that command's own flags, and an unknown key there is an error, so
// a typo cannot pass unnoticed.
func loadConfigFile(path string, cmd *cobra.Command) (map[string]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("config: %w", err)
	}
	var doc map[string]any
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	out := map[string]string{}
	for k, v := range doc {
		if _, isSection := v.(map[string]any); !isSection {
			out[k] = configValue(v)
		}
	}
	if sec, ok := doc[cmd.Name()].(map[string]any); ok {
		for k, v := range sec {
			if cmd.Flags().Lookup(k) == nil {
				return nil, fmt.Errorf("config %s: %s.%s: no such setting of %q", path, cmd.Name(), k, cmd.CommandPath())
			}
			out[k] = configValue(v)
		}
	}
	return out, nil
}

// configValue renders a YAML value as a flag value; lists become the
// comma-separated form slice flags take.
func configValue(v any) string {
	if l, ok := v.([]any); ok {
		parts := make([]string, len(l))
		for i, e := range l {
			parts[i] = fmt.Sprint(e)
		}
		return strings.Join(parts, ",")
	}
	return fmt.Sprint(v)
}

// withEnv installs bindEnv as the command's pre-run and documents the
// environment in its help.
func withEnv(cmd *cobra.Command) *cobra.Command {
	cmd.PreRunE = func(c *cobra.Command, _ []string) error { return bindEnv(c) }
	cmd.Flags().String("config", "", "YAML configuration file: flag names as keys, shared at the top level or under a section named after the command (env DEEPTRACE_CONFIG)")
	cmd.Long = strings.TrimSpace(cmd.Long + "\n\nEvery flag can also be set from the environment (DEEPTRACE_ and the flag's name in upper case, '-' as '_': --es-url is DEEPTRACE_ES_URL) or from the --config file. The command line wins over the environment, the environment over the file.")
	return cmd
}

// esFlags are the flags that reach the search engine.
type esFlags struct {
	urls               []string
	engine             string
	username, password string
	apiKey, caCert     string
	insecure, compress bool
	prefix             string
	timeout            time.Duration
}

func (f *esFlags) register(fs *pflag.FlagSet) {
	fs.StringSliceVar(&f.urls, "es-url", []string{"http://127.0.0.1:9250"}, "search engine URL(s)")
	fs.StringVar(&f.engine, "es-engine", string(store.EngineOpenSearch), "engine flavour: elasticsearch or opensearch")
	fs.StringVar(&f.username, "es-username", "", "basic auth user")
	fs.StringVar(&f.password, "es-password", "", "basic auth password")
	fs.StringVar(&f.apiKey, "es-api-key", "", "API key (base64 id:key); overrides basic auth")
	fs.StringVar(&f.caCert, "es-ca-cert", "", "PEM CA certificate that signs the engine's TLS certificate")
	fs.BoolVar(&f.insecure, "es-insecure", false, "skip TLS verification (testing only)")
	fs.BoolVar(&f.compress, "es-compress", true, "gzip request bodies")
	fs.StringVar(&f.prefix, "es-prefix", "deeptrace", "index name prefix")
	fs.DurationVar(&f.timeout, "es-timeout", 30*time.Second, "timeout of one engine request")
}

func (f *esFlags) config() store.Config {
	return store.Config{
		URLs: f.urls, Engine: store.Engine(f.engine), Username: f.username, Password: f.password,
		APIKey: f.apiKey, CACertFile: f.caCert, InsecureSkipVerify: f.insecure,
		Prefix: f.prefix, Compress: f.compress, Timeout: f.timeout,
	}
}

func (f *esFlags) open() (*store.Store, error) { return store.Open(f.config()) }
