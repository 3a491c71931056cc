// Command deeptrace is every DeepTrace binary in one: the agent, the
// scheduler, the worker, the API server and the command-line client are its
// subcommands.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	root := &cobra.Command{
		Use:           "deeptrace",
		Short:         "Non-intrusive distributed tracing from eBPF-captured network calls",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(storeCmd(), indicesCmd(), agentCmd(), retentionCmd(), flagsCmd())
	root.AddCommand(apiCmd())
	root.AddCommand(tracesCmd(), traceCmd(), reassembleCmd(), jobsCmd(), servicesCmd(), operationsCmd(), dependenciesCmd())
	root.AddCommand(evalCmd())
	root.AddCommand(schedulerCmd(), workerCmd(), exportSpansCmd())
	root.AddCommand(metricsCmd(), alertsCmd(), serviceMetricsCmd())
	if err := root.ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "deeptrace:", err)
		os.Exit(1)
	}
}
