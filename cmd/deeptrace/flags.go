package main

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/deeptrace/deeptrace/store"
)

// envName is the environment variable that sets a flag: DEEPTRACE_ and the
// flag's name in upper case with '-' as '_' (es-url → DEEPTRACE_ES_URL).
func envName(flag string) string {
	return "DEEPTRACE_" + strings.ToUpper(strings.ReplaceAll(flag, "-", "_"))
}

// bindEnv lets the environment set every flag of cmd that the command line
// did not. It runs before the command's own validation, so a bad value
// from either source is reported with the flag's name.
func bindEnv(cmd *cobra.Command) error {
	var err error
	cmd.Flags().VisitAll(func(f *pflag.Flag) {
		if err != nil || f.Changed {
			return
		}
		if v, ok := os.LookupEnv(envName(f.Name)); ok {
			if e := cmd.Flags().Set(f.Name, v); e != nil {
				err = fmt.Errorf("%s=%q (flag --%s): %w", envName(f.Name), v, f.Name, e)
			}
		}
	})
	return err
}

// withEnv installs bindEnv as the command's pre-run and documents the
// environment in its help.
func withEnv(cmd *cobra.Command) *cobra.Command {
	cmd.PreRunE = func(c *cobra.Command, _ []string) error { return bindEnv(c) }
	cmd.Long = strings.TrimSpace(cmd.Long + "\n\nEvery flag can also be set from the environment: DEEPTRACE_ and the flag's name in upper case, '-' as '_' (--es-url: DEEPTRACE_ES_URL).")
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
