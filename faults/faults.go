// Package faults is DeepTrace's fault-and-load suite: each test breaks
// something under a running component (an engine stopped and restarted, a
// process killed, a flood of requests) and records one Row of what it
// tried and what survived. The suite runs against engines of its own
// (scripts/engines.sh with a private state folder and ports), so stopping
// them disturbs nothing else on the machine. It runs only when
// DEEPTRACE_FAULTS=1 (`./task faults`); the table is printed at the end
// and written to DEEPTRACE_FAULTS_TABLE when set.
package faults

import (
	"fmt"
	"strings"
	"sync"
	"time"
)

// Row is what one fault tried and what survived.
type Row struct {
	// Fault is what was broken, under what.
	Fault string
	// Checked is what the test verified.
	Checked string
	// Lost counts spans (or requests) lost; "-" when it does not apply.
	Lost string
	// DupMissing counts traces (or spans) duplicated and missing.
	DupMissing string
	// Recovery is how long the component took to be whole again.
	Recovery time.Duration
	// Result is PASS, FAIL (with why) or SKIP.
	Result string
}

// Table collects rows from concurrent tests.
type Table struct {
	mu   sync.Mutex
	rows []Row
}

// Add records one row.
func (t *Table) Add(r Row) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.rows = append(t.rows, r)
}

// Markdown renders the rows as one Markdown table.
func (t *Table) Markdown() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var b strings.Builder
	b.WriteString("| fault | what was checked | spans lost | traces dup / missing | recovery | result |\n")
	b.WriteString("|---|---|---|---|---|---|\n")
	for _, r := range t.rows {
		rec := "-"
		if r.Recovery > 0 {
			rec = r.Recovery.Round(10 * time.Millisecond).String()
		}
		fmt.Fprintf(&b, "| %s | %s | %s | %s | %s | %s |\n", cell(r.Fault), cell(r.Checked), cell(r.Lost), cell(r.DupMissing), rec, cell(r.Result))
	}
	return b.String()
}

func cell(s string) string {
	if s == "" {
		return "-"
	}
	return strings.ReplaceAll(strings.ReplaceAll(s, "|", "\\|"), "\n", " ")
}
