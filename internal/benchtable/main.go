// Command benchtable reads `go test -bench` output on stdin and prints one
// Markdown table: benchmark, ns/op and every custom metric (MB/s, spans/s,
// ...) as its own column. It passes nothing else through, so the table is
// what the bench task prints last.
package main

import (
	"bufio"
	"fmt"
	"os"
	"sort"
	"strings"
)

type row struct {
	pkg, name string
	metrics   map[string]string
}

func main() {
	var rows []row
	units := map[string]bool{}
	pkg := ""
	sc := bufio.NewScanner(os.Stdin)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "pkg: ") {
			pkg = strings.TrimPrefix(line, "pkg: github.com/deeptrace/deeptrace/")
			continue
		}
		f := strings.Fields(line)
		if len(f) < 4 || !strings.HasPrefix(f[0], "Benchmark") {
			continue
		}
		r := row{pkg: pkg, name: strings.TrimPrefix(f[0], "Benchmark"), metrics: map[string]string{}}
		for i := 2; i+1 < len(f); i += 2 {
			r.metrics[f[i+1]] = f[i]
			units[f[i+1]] = true
		}
		rows = append(rows, r)
	}
	var cols []string
	for u := range units {
		cols = append(cols, u)
	}
	sort.Slice(cols, func(i, j int) bool {
		if cols[i] == "ns/op" || cols[j] == "ns/op" {
			return cols[i] == "ns/op"
		}
		return cols[i] < cols[j]
	})
	fmt.Printf("| package | benchmark | %s |\n", strings.Join(cols, " | "))
	fmt.Printf("|---|---|%s\n", strings.Repeat("---|", len(cols)))
	for _, r := range rows {
		vals := make([]string, len(cols))
		for i, c := range cols {
			vals[i] = r.metrics[c]
		}
		fmt.Printf("| %s | %s | %s |\n", r.pkg, r.name, strings.Join(vals, " | "))
	}
	if err := sc.Err(); err != nil {
		fmt.Fprintln(os.Stderr, "benchtable:", err)
		os.Exit(1)
	}
}
