package faults

import (
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/internal/testenv"
	"github.com/deeptrace/deeptrace/schemas"
)

// What a SIGKILL may cost. A span is only in the agent's memory from its
// capture until the exporter has handed it to the engine or to the spool;
// these bound how long that is, so every span lost at a kill must have
// ended within them before it (docs/reliability.md, "Agent killed").
const (
	// batchHold is export.Config.FlushInterval's default: the batch being
	// filled is sent (or spooled) at least this often.
	batchHold = time.Second
	// correlateHold is correlate.Config.Delay's default: a client span
	// waits this long after its end for its parent to be decided.
	correlateHold = 2 * time.Second
	// holdSlack covers the rest: the ring buffer not yet read, conntrack
	// finishing the exchange, the pipeline's 100ms tick, a bulk request
	// in flight.
	holdSlack = time.Second
)

// memoryBound is the most spans the agent can hold in memory beyond the
// ring buffer: the exporter's queue (cmd/deeptrace/agent.go sets 1<<16),
// the batch being filled, four batches waiting for the sender and one
// being sent (1000 each), and correlation's pending calls (MaxPending).
const memoryBound = 1<<16 + 6*1000 + 65536

// TestAgentKilledUnderTraffic kills the agent with SIGKILL, as the OOM
// killer does, while the test sends a steady stream of requests to a
// traced Go HTTP server, and starts a new one on the same spool. The test
// process is traced too, so each request is a server span and a client
// span, and the client span waits in correlation. The agent is killed
// twice: once with the engine up (what is lost is what was only in
// memory), once with the engine stopped, when the exporter is spooling:
// what was on disk must be replayed by the next agent, once the engine
// is back. Spans lost must have ended within the memory bound before
// their kill; none may be stored twice; requests made while no agent ran
// are counted apart. The last agent is stopped with SIGTERM: it loses
// nothing.
func TestAgentKilledUnderTraffic(t *testing.T) {
	gated(t)
	needRoot(t)
	row := &Row{Fault: "agent killed (SIGKILL, as an OOM kill; new process, same --spool-dir) while traffic flows"}
	record(t, row)
	st := testenv.Store(t)
	base, pid := startHTTPPeer(t, "-size", "64")
	args := []string{"--pid", strconv.Itoa(pid), "--pid", strconv.Itoa(os.Getpid()), "--host", "faults-kill", "--spool-dir", t.TempDir()}
	from := time.Now().UTC().Add(-time.Minute)
	defer engines.Up("opensearch") // whatever happens, the node is left running

	// inMemory is what the exporter held at the agent's last scrape:
	// accepted and not yet written, spooled, refused or dropped.
	inMemory := func(m func(string) float64) float64 {
		return m("deeptrace_export_spans_added_total") - m("deeptrace_export_spans_written_total") - m("deeptrace_export_spans_spooled_total") -
			m("deeptrace_export_spans_rejected_total") - m("deeptrace_export_spans_dropped_total")
	}

	// Kill 1: the engine up.
	a1 := startAgent(t, st, args...)
	tr := startTraffic(base, "/kill/")
	t.Cleanup(func() { tr.Stop() })
	time.Sleep(4 * time.Second)
	held1 := inMemory(a1.metrics(t))
	kill1 := time.Now()
	a1.kill(t)
	a2 := startAgent(t, st, args...)
	gap1 := a2.attached.Sub(kill1)
	time.Sleep(4 * time.Second)

	// Kill 2: the engine stopped, the agent spooling.
	if err := engines.Down("opensearch"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 60*time.Second, "agent 2 spooling", func() bool { return a2.metric(t, "deeptrace_export_spool_spans") > 0 })
	time.Sleep(2 * time.Second)
	m2 := a2.metrics(t)
	held2 := inMemory(m2)
	kill2 := time.Now()
	a2.kill(t)
	a3 := startAgent(t, st, args...)
	gap2 := a3.attached.Sub(kill2)
	var onDisk struct {
		Spans int64 `json:"spans"`
	}
	if !a3.logLine("spool holds spans from an earlier run; replaying them first", &onDisk) {
		t.Errorf("the new agent found nothing in the spool\n%s", a3.log.tail(20))
	}
	time.Sleep(2 * time.Second)
	if err := engines.Up("opensearch"); err != nil {
		t.Fatal(err)
	}
	up := time.Now()
	waitFor(t, 120*time.Second, "the spool replayed", func() bool {
		m := a3.metrics(t)
		return m("deeptrace_export_spool_spans") == 0 && m("deeptrace_export_engine_up") == 1
	})
	replay := time.Since(up)
	time.Sleep(3 * time.Second)
	reqs := tr.Stop()
	end := time.Now()
	m3 := a3.metrics(t)
	a3.stop(t)

	to := time.Now().UTC().Add(time.Minute)
	servers, sDocs, sIDs := storedSpans(t, st, from, to, "/kill/", schemas.RoleServer)
	clients, cDocs, cIDs := storedSpans(t, st, from, to, "/kill/", schemas.RoleClient)
	agents := []attachment{{a1.attached, kill1}, {a2.attached, kill2}, {a3.attached, end}}
	ts, tc := tallyRequests(reqs, servers, agents), tallyRequests(reqs, clients, agents)
	dup := dupPaths(servers) + dupPaths(clients) + sDocs - sIDs + cDocs - cIDs
	spooled2 := m2("deeptrace_export_spans_spooled_total")
	spooled3, replayed3 := m3("deeptrace_export_spans_spooled_total"), m3("deeptrace_export_spans_replayed_total")

	killed := func(i int, held float64) string {
		s, c := ts.attached[i], tc.attached[i]
		return fmt.Sprintf("%d server spans (ended at most %s before the kill) and %d client spans (%s) of %d requests; the exporter held %.0f at the last scrape",
			s.lost, s.lostAge.Round(time.Millisecond), c.lost, c.lostAge.Round(time.Millisecond), s.expected, held)
	}
	row.Checked = fmt.Sprintf("%d requests at about %.0f/s, each on a new connection, from the traced test process to a traced Go HTTP server (a server and a client span each); "+
		"killed once with the engine up and once with it stopped (the exporter spooling, %.0f spans spooled by its last scrape): the next agent found %d spans on disk and replayed them with its own %.0f spooled (%.0f replayed) "+
		"%s after the engine was back; every span lost ended within its bound before the kill (server %s: the batch; client %s: correlation's delay and the batch); "+
		"the last agent stopped with SIGTERM loses none; %d requests made while no agent ran (kill to the new agent attached: %s with the engine up, %s with it stopped) are reported apart",
		len(reqs), rate(reqs), spooled2, onDisk.Spans, spooled3, replayed3, replay.Round(10*time.Millisecond),
		batchHold+holdSlack, correlateHold+batchHold+holdSlack, ts.inGap, gap1.Round(10*time.Millisecond), gap2.Round(10*time.Millisecond))
	row.Lost = fmt.Sprintf("kill with the engine up: %s; kill while spooling: %s; after the SIGTERM: %d of %d; %d requests not capturable (no agent running)",
		killed(0, held1), killed(1, held2), ts.attached[2].lost+tc.attached[2].lost, 2*ts.attached[2].expected, ts.inGap-ts.gapCaught)
	row.DupMissing = fmt.Sprintf("%d dup spans (server %d docs, %d ids; client %d docs, %d ids)", dup, sDocs, sIDs, cDocs, cIDs)
	row.Recovery = gap1

	if ts.failed > 0 {
		t.Errorf("%d requests to the traced server failed", ts.failed)
	}
	if dup > 0 {
		t.Errorf("%s", row.DupMissing)
	}
	for i := range 2 {
		s, c := ts.attached[i], tc.attached[i]
		if s.lostAge > batchHold+holdSlack || c.lostAge > correlateHold+batchHold+holdSlack || s.lost+c.lost > memoryBound {
			t.Errorf("kill %d lost beyond what memory holds: %s; e.g. %v %v", i+1, killed(i, 0), s.lostPaths, c.lostPaths)
		}
		if s.expected < 200 {
			t.Errorf("only %d requests while agent %d was attached: too few to tell", s.expected, i+1)
		}
	}
	if n := ts.attached[2].lost + tc.attached[2].lost; n > 0 {
		t.Errorf("the agent stopped with SIGTERM lost %d spans; e.g. %v %v\n%s", n, ts.attached[2].lostPaths, tc.attached[2].lostPaths, a3.log.tail(20))
	}
	if float64(onDisk.Spans) < spooled2 {
		t.Errorf("the killed agent had spooled %.0f spans, the next found %d on disk", spooled2, onDisk.Spans)
	}
	if onDisk.Spans == 0 || replayed3 != float64(onDisk.Spans)+spooled3 {
		t.Errorf("spool: %d spans left on disk by the killed agent, %.0f spooled by the next, %.0f replayed: want all replayed", onDisk.Spans, spooled3, replayed3)
	}
}
