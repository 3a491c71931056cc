package export

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
)

func testSpans(from, n int) []schemas.Span {
	out := make([]schemas.Span, n)
	base := time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC).UnixNano()
	for i := range out {
		k := from + i
		s := schemas.Span{Role: schemas.RoleServer, Host: "h", Service: "svc", Operation: fmt.Sprintf("GET /%d", k),
			StartNs: base + int64(k)*1e6, EndNs: base + int64(k)*1e6 + 5e5,
			Conn: schemas.Conn{ClientIP: "10.0.0.1", ClientPort: uint16(30000 + k%30000), ServerIP: "10.0.0.2", ServerPort: 80}, Seq: uint64(k)}
		s.SpanID = schemas.SpanID(s.Host, s.Conn, s.Seq, 0, s.Role)
		s.Finish()
		out[i] = s
	}
	return out
}

// readAll replays the spool as the exporter does and returns the spans in
// replay order.
func readAll(t *testing.T, sp *spool) []schemas.Span {
	t.Helper()
	var out []schemas.Span
	for {
		seg, err := sp.Next()
		if err != nil {
			t.Fatal(err)
		}
		if seg == nil {
			return out
		}
		r, err := openSegment(seg.path)
		if err != nil {
			t.Fatal(err)
		}
		for {
			b, err := r.Next(7)
			out = append(out, b...)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Logf("segment %s: %v", seg.path, err)
				break
			}
		}
		r.Close()
		if err := sp.Done(seg); err != nil {
			t.Fatal(err)
		}
	}
}

func checkOrder(t *testing.T, got []schemas.Span, from, n int) {
	t.Helper()
	if len(got) != n {
		t.Fatalf("replayed %d spans, want %d", len(got), n)
	}
	for i, s := range got {
		if want := fmt.Sprintf("GET /%d", from+i); s.Operation != want {
			t.Fatalf("span %d is %q, want %q: order lost", i, s.Operation, want)
		}
	}
}

// Batches come back in the order they were spooled, across segments, and
// the spool is empty after.
func TestSpoolOrder(t *testing.T) {
	sp, err := openSpool(t.TempDir(), 1<<30, 8<<10, false)
	if err != nil {
		t.Fatal(err)
	}
	for b := 0; b < 20; b++ {
		if _, err := sp.Append(testSpans(b*50, 50)); err != nil {
			t.Fatal(err)
		}
	}
	if _, n, segs := sp.Size(); n != 1000 || segs < 2 {
		t.Fatalf("spool holds %d spans in %d segments; want 1000 in several", n, segs)
	}
	checkOrder(t, readAll(t, sp), 0, 1000)
	if !sp.Empty() {
		t.Fatal("spool not empty after replay")
	}
	if b, n, _ := sp.Size(); b != 0 || n != 0 {
		t.Fatalf("size after replay %d bytes %d spans", b, n)
	}
}

// A full spool evicts its oldest segments, reports how many spans that
// cost, and keeps the newest in order.
func TestSpoolLimitEvictsOldest(t *testing.T) {
	dir := t.TempDir()
	member, _ := encodeBatch(testSpans(0, 100))
	// Room for about four batches, one batch per segment.
	sp, err := openSpool(dir, int64(len(member))*4+100, int64(len(member)), false)
	if err != nil {
		t.Fatal(err)
	}
	var evicted int64
	for b := 0; b < 10; b++ {
		res, err := sp.Append(testSpans(b*100, 100))
		if err != nil {
			t.Fatal(err)
		}
		evicted += res.EvictedSpans
	}
	_, n, _ := sp.Size()
	if n+evicted != 1000 || evicted == 0 {
		t.Fatalf("kept %d + evicted %d, want 1000 with some evicted", n, evicted)
	}
	got := readAll(t, sp)
	checkOrder(t, got, 1000-int(n), int(n))
}

// A batch larger than the whole spool is refused, not half-written.
func TestSpoolRefusesWhatCannotFit(t *testing.T) {
	sp, err := openSpool(t.TempDir(), 100, 50, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := sp.Append(testSpans(0, 100)); !errors.Is(err, errSpoolFull) {
		t.Fatalf("append to a tiny spool: %v, want errSpoolFull", err)
	}
	if !sp.Empty() {
		t.Fatal("refused batch left something behind")
	}
}

// After a crash the open tail is recovered (a torn last member costs only
// itself) and the sealed segments keep their order.
func TestSpoolRecoversAfterCrash(t *testing.T) {
	dir := t.TempDir()
	sp, err := openSpool(dir, 1<<30, 1<<30, false)
	if err != nil {
		t.Fatal(err)
	}
	for b := 0; b < 3; b++ {
		if _, err := sp.Append(testSpans(b*10, 10)); err != nil {
			t.Fatal(err)
		}
	}
	// Crash: no Close. Tear the end of the file as a half-written append
	// would.
	path := sp.tail.path
	sp.tailFile.Close()
	torn, _ := encodeBatch(testSpans(30, 10))
	f, _ := os.OpenFile(path, os.O_APPEND|os.O_WRONLY, 0)
	f.Write(torn[:len(torn)/2])
	f.Close()

	sp2, err := openSpool(dir, 1<<30, 1<<30, false)
	if err != nil {
		t.Fatal(err)
	}
	if _, n, _ := sp2.Size(); n != 30 {
		t.Fatalf("recovered %d spans, want 30", n)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.open")); len(m) != 0 {
		t.Fatalf("open tail not sealed at recovery: %v", m)
	}
	if _, err := sp2.Append(testSpans(40, 10)); err != nil {
		t.Fatal(err)
	}
	got := readAll(t, sp2)
	if len(got) != 40 {
		t.Fatalf("replayed %d, want 40", len(got))
	}
	checkOrder(t, got[:30], 0, 30)
	checkOrder(t, got[30:], 40, 10)
}

// BenchmarkSpoolAppend is one batch of 1000 spans appended to the spool's
// tail, with and without SpoolSync's fsync per batch. A SIGKILLed agent
// loses neither way (what was written is in the page cache); the fsync
// only keeps the tail through a kernel crash or power loss
// (docs/reliability.md, "Agent killed").
func BenchmarkSpoolAppend(b *testing.B) {
	spans := testSpans(0, 1000)
	for _, sync := range []bool{false, true} {
		b.Run(fmt.Sprintf("sync=%v", sync), func(b *testing.B) {
			sp, err := openSpool(b.TempDir(), 1<<40, 4<<20, sync)
			if err != nil {
				b.Fatal(err)
			}
			defer sp.Close()
			for b.Loop() {
				if _, err := sp.Append(spans); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/1000, "ns/span")
		})
	}
}
