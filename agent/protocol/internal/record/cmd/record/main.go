// Command record records real client/server traffic through a loopback
// proxy into the parsers' testdata. Go servers (net/http, grpc-go) run in
// process; Redis, PostgreSQL and MariaDB must be running (see servers.sh
// beside this file).
//
//	go run ./agent/protocol/internal/record/cmd/record -scenario http1 -out agent/protocol/http1/testdata/nethttp.jsonl
package main

import (
	"context"
	"flag"
	"fmt"
	"log"
	"os"
	"time"

	"github.com/deeptrace/deeptrace/agent/protocol/internal/record"
)

// scenarios start the server side if it runs in process and return its
// address, the client workload, and how to stop the server.
var scenarios = map[string]func() (upstream string, run func(ctx context.Context, addr string) error, stop func()){}

func main() {
	name := flag.String("scenario", "", "http1, h2c, grpc, redis, redis-cli, mysql, mysql-cli, postgres, psql")
	out := flag.String("out", "", "recording file to write")
	flag.Parse()
	mk, ok := scenarios[*name]
	if !ok || *out == "" {
		flag.Usage()
		os.Exit(2)
	}
	f, err := os.Create(*out)
	if err != nil {
		log.Fatal(err)
	}
	upstream, run, stop := mk()
	p, err := record.NewProxy(upstream, record.NewWriter(f))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := run(ctx, p.Addr()); err != nil {
		log.Fatalf("scenario %s: %v", *name, err)
	}
	// Let the last bytes reach the proxy before closing.
	time.Sleep(200 * time.Millisecond)
	if stop != nil {
		stop()
	}
	done := make(chan error, 1)
	go func() { done <- p.Close() }()
	select {
	case err := <-done:
		if err != nil {
			log.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		log.Print("connections still open after 5s; writing what was recorded")
	}
	if err := f.Close(); err != nil {
		log.Fatal(err)
	}
	fmt.Println("wrote", *out)
}
