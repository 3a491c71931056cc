package main

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

func storeCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "store", Short: "Set up and check the search engine"}
	var es esFlags
	var shards, replicas int
	initCmd := withEnv(&cobra.Command{
		Use:   "init",
		Short: "Install the index templates (idempotent)",
		RunE: func(c *cobra.Command, _ []string) error {
			s, err := es.open()
			if err != nil {
				return err
			}
			if _, err := s.Ping(c.Context()); err != nil {
				return err
			}
			return s.EnsureTemplates(c.Context(), schemas.TemplateSettings{Shards: shards, Replicas: replicas, RefreshInterval: "1s"})
		},
	})
	es.register(initCmd.Flags())
	initCmd.Flags().IntVar(&shards, "shards", 1, "primary shards per index")
	initCmd.Flags().IntVar(&replicas, "replicas", 0, "replicas per shard")

	var rt esFlags
	var n int
	roundtrip := withEnv(&cobra.Command{
		Use:   "roundtrip",
		Short: "Write synthetic spans across an hour boundary, read them back, and print what came back",
		RunE: func(c *cobra.Command, _ []string) error {
			s, err := rt.open()
			if err != nil {
				return err
			}
			ctx := c.Context()
			if _, err := s.Ping(ctx); err != nil {
				return err
			}
			if err := s.EnsureTemplates(ctx, schemas.DefaultTemplateSettings); err != nil {
				return err
			}
			hour := time.Now().UTC().Truncate(time.Hour)
			from := hour.Add(-time.Duration(n/2) * time.Second)
			var docs []store.Doc
			for i := 0; i < n; i++ {
				sp := syntheticSpan(i, from.Add(time.Duration(i)*time.Second))
				d, err := store.SpanDoc(s.Indices(), &sp)
				if err != nil {
					return err
				}
				docs = append(docs, d)
			}
			res, err := s.Bulk(ctx, docs, "true")
			if err != nil {
				return err
			}
			if len(res.Failed) > 0 {
				return fmt.Errorf("%d spans refused, first: %v", len(res.Failed), res.Failed[0])
			}
			got, err := s.Spans(ctx, store.Query{From: from, To: from.Add(time.Duration(n) * time.Second)})
			if err != nil {
				return err
			}
			fmt.Printf("wrote %d spans, read back %d from %v\n", res.Indexed, len(got), s.Indices().ForRange(schemas.KindSpans, from, from.Add(time.Duration(n)*time.Second)))
			if len(got) < n {
				return fmt.Errorf("read back %d of %d spans", len(got), n)
			}
			tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "START\tSERVICE\tOPERATION\tSTATUS\tDURATION\tSPAN")
			for _, sp := range got[:min(len(got), 8)] {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\n", sp.Timestamp.Format(time.RFC3339), sp.Service, sp.Operation, sp.StatusCode, time.Duration(sp.DurationNs), sp.SpanID)
			}
			return tw.Flush()
		},
	})
	rt.register(roundtrip.Flags())
	roundtrip.Flags().IntVar(&n, "spans", 200, "how many spans to write")
	cmd.AddCommand(initCmd, roundtrip)
	return cmd
}

// syntheticSpan is a plausible server span for store checks.
func syntheticSpan(i int, at time.Time) schemas.Span {
	ops := []string{"GET /api/orders/{id}", "POST /api/orders", "GET /api/catalog"}
	dur := time.Duration(1+rand.IntN(50)) * time.Millisecond
	s := schemas.Span{
		Role: schemas.RoleServer, Protocol: schemas.ProtocolHTTP1, Operation: ops[i%len(ops)],
		StatusCode: 200, StartNs: at.UnixNano(), EndNs: at.Add(dur).UnixNano(),
		Process: "roundtrip", Service: "roundtrip", Host: "local",
		Conn: schemas.Conn{ClientIP: "127.0.0.1", ClientPort: uint16(40000 + i%20000), ServerIP: "127.0.0.1", ServerPort: 8080},
		Seq:  uint64(i), IngestedAt: time.Now().UTC(),
	}
	s.SpanID = schemas.SpanID(s.Host, s.Conn, s.Seq, s.ReqTCPSeq, s.Role)
	s.Finish()
	return s
}

func indicesCmd() *cobra.Command {
	var es esFlags
	var asJSON bool
	cmd := withEnv(&cobra.Command{
		Use:   "indices",
		Short: "List DeepTrace's indices with their document counts and sizes",
		RunE: func(c *cobra.Command, _ []string) error {
			s, err := es.open()
			if err != nil {
				return err
			}
			var all []store.IndexInfo
			for _, k := range schemas.Kinds {
				infos, err := s.ListIndices(c.Context(), s.Indices().Pattern(k))
				if err != nil {
					return err
				}
				all = append(all, infos...)
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(all)
			}
			tw := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "INDEX\tHEALTH\tDOCS\tBYTES")
			for _, i := range all {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%d\n", i.Name, i.Health, i.DocsCount, i.Bytes)
			}
			return tw.Flush()
		},
	})
	es.register(cmd.Flags())
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON for scripts")
	return cmd
}
