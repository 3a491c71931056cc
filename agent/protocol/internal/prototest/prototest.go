// Package prototest helps the parsers' tests: it feeds recorded chunks to a
// parser whole, split into single bytes, merged, or truncated, and
// summarises exchanges for table tests.
package prototest

import (
	"fmt"
	"math/rand"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/record"
)

// Run feeds every chunk to p, then flushes it. It stops at the first
// error and returns it with what came before.
func Run(p protocol.Parser, chunks []protocol.Chunk) ([]protocol.Exchange, error) {
	var out []protocol.Exchange
	for i, c := range chunks {
		ex, err := p.Feed(c)
		out = append(out, ex...)
		if err != nil {
			return out, fmt.Errorf("chunk %d: %w", i, err)
		}
	}
	return append(out, p.Flush()...), nil
}

// Bytes splits every chunk into one-byte chunks that keep the chunk's
// times, thread and TCP positions: a parser must give the same exchanges.
func Bytes(chunks []protocol.Chunk) []protocol.Chunk {
	var out []protocol.Chunk
	for _, c := range chunks {
		for i := range c.Data {
			d := c
			d.Data = c.Data[i : i+1]
			d.Size = 1
			d.TCPSeq = c.TCPSeq + uint32(i)
			out = append(out, d)
		}
	}
	return out
}

// Split cuts every chunk at random places (seeded), keeping its metadata.
func Split(chunks []protocol.Chunk, seed int64) []protocol.Chunk {
	r := rand.New(rand.NewSource(seed))
	var out []protocol.Chunk
	for _, c := range chunks {
		data := c.Data
		off := 0
		for len(data) > 0 {
			n := 1 + r.Intn(len(data))
			d := c
			d.Data = data[:n]
			d.Size = int64(n)
			d.TCPSeq = c.TCPSeq + uint32(off)
			out = append(out, d)
			data = data[n:]
			off += n
		}
	}
	return out
}

// Merge joins consecutive chunks of the same flow into one, as a reader
// with a bigger buffer or a slower wake-up would have seen them.
func Merge(chunks []protocol.Chunk) []protocol.Chunk {
	var out []protocol.Chunk
	for _, c := range chunks {
		if n := len(out); n > 0 && out[n-1].Flow == c.Flow {
			last := &out[n-1]
			last.Data = append(append([]byte(nil), last.Data...), c.Data...)
			last.Size += c.Size
			last.EndNs = c.EndNs
			continue
		}
		out = append(out, c)
	}
	return out
}

// Truncate keeps the first limit bytes of each chunk's data, as capture
// with that limit would, leaving Size as it was.
func Truncate(chunks []protocol.Chunk, limit int) []protocol.Chunk {
	out := make([]protocol.Chunk, len(chunks))
	for i, c := range chunks {
		if len(c.Data) > limit {
			c.Data = c.Data[:limit]
		}
		out[i] = c
	}
	return out
}

// Load reads a recording or fails the test.
func Load(t testing.TB, path string) []record.Conn {
	t.Helper()
	conns, err := record.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return conns
}

// Summary is an exchange in one line: seq, operation, status, error flag,
// sizes and which recorded reads carried the request and the response.
func Summary(e protocol.Exchange) string {
	s := fmt.Sprintf("%d %q %d err=%v req=%d@%d resp=%d@%d", e.Seq, e.Operation, e.StatusCode, e.Error,
		e.ReqBytes, e.ReqTID, e.RespBytes, e.RespTID)
	if e.NoResponse {
		s += " noresp"
	}
	return s
}

// Summaries summarises exchanges.
func Summaries(ex []protocol.Exchange) []string {
	out := make([]string, len(ex))
	for i, e := range ex {
		out[i] = Summary(e)
	}
	return out
}

// BySeq sorts exchanges by Seq, for protocols that complete them out of
// request order (HTTP/2).
func BySeq(ex []protocol.Exchange) {
	sort.SliceStable(ex, func(i, j int) bool { return ex[i].Seq < ex[j].Seq })
}

// ByteAt returns the byte at TCP position seq of the flow, and whether the
// recording has it.
func ByteAt(chunks []protocol.Chunk, flow protocol.Flow, seq uint32) (byte, bool) {
	for _, c := range chunks {
		if c.Flow != flow {
			continue
		}
		off := seq - c.TCPSeq
		if off < uint32(len(c.Data)) {
			return c.Data[off], true
		}
	}
	return 0, false
}

// Check runs the checks every recorded exchange must pass: times ordered,
// TCP positions on the first byte of each message (first is what the
// message's first byte must be, per flow), threads from the chunk that
// held it.
func Check(t testing.TB, chunks []protocol.Chunk, ex []protocol.Exchange, first func(flow protocol.Flow, b byte) bool) {
	t.Helper()
	for _, e := range ex {
		if e.ReqStartNs == 0 || e.ReqEndNs < e.ReqStartNs {
			t.Errorf("%s: request times %d..%d", Summary(e), e.ReqStartNs, e.ReqEndNs)
		}
		b, ok := ByteAt(chunks, protocol.ToServer, e.ReqTCPSeq)
		if !ok || !first(protocol.ToServer, b) {
			t.Errorf("%s: request TCP seq %#x holds %q", Summary(e), e.ReqTCPSeq, b)
		}
		if e.NoResponse {
			continue
		}
		if e.RespStartNs < e.ReqStartNs || e.RespEndNs < e.RespStartNs {
			t.Errorf("%s: response times %d..%d after request %d", Summary(e), e.RespStartNs, e.RespEndNs, e.ReqStartNs)
		}
		b, ok = ByteAt(chunks, protocol.ToClient, e.RespTCPSeq)
		if !ok || !first(protocol.ToClient, b) {
			t.Errorf("%s: response TCP seq %#x holds %q", Summary(e), e.RespTCPSeq, b)
		}
	}
}

// Diff returns a readable difference of two summaries lists, or "".
func Diff(got, want []string) string {
	if strings.Join(got, "\n") == strings.Join(want, "\n") {
		return ""
	}
	var b strings.Builder
	for i := 0; i < len(got) || i < len(want); i++ {
		g, w := "", ""
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		mark := " "
		if g != w {
			mark = "!"
		}
		fmt.Fprintf(&b, "%s got  %s\n  want %s\n", mark, g, w)
	}
	return b.String()
}

// CheckMerged parses the chunks merged per flow and checks that the same
// exchanges come out, in operations and sizes: times and threads may
// differ, since merged reads have merged metadata.
func CheckMerged(t testing.TB, p protocol.Parser, chunks []protocol.Chunk, want []protocol.Exchange, bySeq bool) {
	t.Helper()
	got, err := Run(p, Merge(chunks))
	if err != nil {
		t.Fatalf("merged: %v", err)
	}
	if bySeq {
		BySeq(got)
	}
	strip := func(ex []protocol.Exchange) []string {
		out := make([]string, len(ex))
		for i, e := range ex {
			out[i] = fmt.Sprintf("%d %q %d err=%v req=%d resp=%d reqseq=%#x respseq=%#x", e.Seq, e.Operation, e.StatusCode, e.Error,
				e.ReqBytes, e.RespBytes, e.ReqTCPSeq, e.RespTCPSeq)
		}
		return out
	}
	if d := Diff(strip(got), strip(want)); d != "" {
		t.Errorf("merged:\n%s", d)
	}
}

// Secret is the password the recorded sessions log in with; no exchange
// may carry it.
const Secret = "s3cret"

// CheckRecorded replays every connection of testdata/<file>.jsonl for each
// file through a new parser and checks it exactly: the exchanges' TCP
// positions (Check), the same exchanges with the directions merged
// (CheckMerged), their summaries against want[file][conn id], no Secret in
// any tag or value, and the same exchanges when the chunks are cut into
// bytes or split at random.
func CheckRecorded(t *testing.T, newParser func() protocol.Parser, files []string, want map[string]map[int][]string, first func(flow protocol.Flow, b byte) bool) {
	t.Helper()
	for _, file := range files {
		for _, c := range Load(t, "testdata/"+file+".jsonl") {
			ex, err := Run(newParser(), c.Chunks)
			if err != nil {
				t.Fatalf("%s conn %d: %v", file, c.ID, err)
			}
			Check(t, c.Chunks, ex, first)
			CheckMerged(t, newParser(), c.Chunks, ex, false)
			got := Summaries(ex)
			if d := Diff(got, want[file][c.ID]); d != "" {
				t.Errorf("%s conn %d:\n%s", file, c.ID, d)
			}
			for _, e := range ex {
				for k, v := range e.Tags {
					if strings.Contains(v, Secret) {
						t.Errorf("%s conn %d: password in tag %s=%q", file, c.ID, k, v)
					}
				}
				for _, v := range e.Values {
					if strings.Contains(v, Secret) {
						t.Errorf("%s conn %d: password in values", file, c.ID)
					}
				}
			}
			for name, chunks := range map[string][]protocol.Chunk{"bytes": Bytes(c.Chunks), "split": Split(c.Chunks, 1)} {
				ex2, err := Run(newParser(), chunks)
				if err != nil {
					t.Fatalf("%s conn %d %s: %v", file, c.ID, name, err)
				}
				if !reflect.DeepEqual(ex, ex2) {
					t.Errorf("%s conn %d %s:\n%s", file, c.ID, name, Diff(Summaries(ex2), got))
				}
			}
		}
	}
}
