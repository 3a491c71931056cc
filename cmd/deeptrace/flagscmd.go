package main

import (
	"encoding/json"
	"fmt"
	"os"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// commandFlags is one runnable command and the names of its flags.
type commandFlags struct {
	// Path is the command's path under the root ("store init").
	Path string `json:"path"`
	// Section is the configuration file's section for it (the command's
	// own name).
	Section string   `json:"section"`
	Flags   []string `json:"flags"`
}

// flagsCmd lists every runnable command's flags, so that tests and tools
// (the Kubernetes manifests' checks) can verify configuration keys and
// environment variables against the real binary.
func flagsCmd() *cobra.Command {
	return &cobra.Command{
		Use:    "flags [command...]",
		Short:  "List the flags of every command (or of one) as JSON",
		Hidden: true,
		RunE: func(c *cobra.Command, args []string) error {
			root := c.Root()
			var out []commandFlags
			var walk func(*cobra.Command)
			walk = func(cmd *cobra.Command) {
				if cmd.Runnable() && cmd != c && cmd != root {
					cf := commandFlags{
						Path:    strings.TrimPrefix(cmd.CommandPath(), root.Name()+" "),
						Section: cmd.Name(),
					}
					cmd.Flags().VisitAll(func(f *pflag.Flag) { cf.Flags = append(cf.Flags, f.Name) })
					sort.Strings(cf.Flags)
					out = append(out, cf)
				}
				for _, sub := range cmd.Commands() {
					if sub.Name() != "help" && sub.Name() != "completion" {
						walk(sub)
					}
				}
			}
			start := root
			if len(args) > 0 {
				found, rest, err := root.Find(args)
				if err != nil || len(rest) > 0 {
					return fmt.Errorf("no command %q", strings.Join(args, " "))
				}
				start = found
			}
			walk(start)
			enc := json.NewEncoder(os.Stdout)
			enc.SetIndent("", "  ")
			return enc.Encode(out)
		},
	}
}
