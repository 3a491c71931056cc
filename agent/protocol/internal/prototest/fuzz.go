package prototest

import (
	"syscall"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/record"
)

// Encode packs chunks into a fuzz input: per chunk a flags byte (bit 0:
// to the client; bit 1: capture cut it, the rest of the byte times 61 is
// the uncaptured count), a length byte, then the data. Chunks longer than
// 255 bytes are split.
func Encode(chunks []protocol.Chunk) []byte {
	var out []byte
	for _, c := range chunks {
		flags := byte(0)
		if c.Flow == protocol.ToClient {
			flags = 1
		}
		data := c.Data
		for len(data) > 0 {
			n := min(len(data), 255)
			out = append(out, flags, byte(n))
			out = append(out, data[:n]...)
			data = data[n:]
		}
	}
	return out
}

// Decode unpacks a fuzz input made by Encode (or by the fuzzer).
func Decode(in []byte) []protocol.Chunk {
	var out []protocol.Chunk
	var seq [2]uint32
	seq[0], seq[1] = 0xfffff000, 1000
	ns := int64(1)
	for len(in) >= 2 {
		flags, n := in[0], int(in[1])
		in = in[2:]
		n = min(n, len(in))
		dir := flags & 1
		c := protocol.Chunk{Flow: protocol.ToServer, Data: in[:n], Size: int64(n),
			StartNs: ns, EndNs: ns + 1, TCPSeq: seq[dir], TID: uint32(len(out) + 1)}
		if dir == 1 {
			c.Flow = protocol.ToClient
		}
		if flags&2 != 0 {
			c.Size += int64(flags>>2) * 61
		}
		seq[dir] += uint32(c.Size)
		ns += 2
		in = in[n:]
		out = append(out, c)
	}
	return out
}

// Seeds adds the connections of recordings as fuzz seeds.
func Seeds(f *testing.F, paths ...string) {
	for _, path := range paths {
		conns, err := record.Load(path)
		if err != nil {
			f.Fatal(err)
		}
		for _, c := range conns {
			chunks := c.Chunks
			if len(chunks) > 40 {
				chunks = chunks[:40]
			}
			f.Add(Encode(Truncate(chunks, 2048)))
		}
	}
}

// FuzzParser feeds a decoded fuzz input to a new parser and checks what
// must hold whatever the input: no panic, exchanges within bounds.
func FuzzParser(t *testing.T, newParser func() protocol.Parser, in []byte) {
	p := newParser()
	requests := 0
	check := func(ex []protocol.Exchange) {
		for _, e := range ex {
			requests++
			if len(e.Values) > protocol.MaxValues {
				t.Fatalf("%d values", len(e.Values))
			}
			for _, v := range e.Values {
				if len(v) > protocol.MaxValueLen {
					t.Fatalf("value of %d bytes", len(v))
				}
			}
			for k, v := range e.Tags {
				if len(v) > 4096 {
					t.Fatalf("tag %s of %d bytes", k, len(v))
				}
			}
			if e.ReqBytes < 0 || e.RespBytes < 0 {
				t.Fatalf("negative size: %+v", e)
			}
			if e.Protocol == "" {
				t.Fatalf("no protocol: %+v", e)
			}
		}
	}
	for _, c := range Decode(in) {
		ex, err := p.Feed(c)
		check(ex)
		if err != nil {
			if err.Error() == "" {
				t.Fatal("empty error")
			}
			return
		}
	}
	check(p.Flush())
}

// Bench feeds the recorded connections to new parsers b.N times and
// reports MB/s and exchanges per second.
func Bench(b *testing.B, newParser func() protocol.Parser, conns []record.Conn) {
	var size int64
	for _, c := range conns {
		for _, ch := range c.Chunks {
			size += int64(len(ch.Data))
		}
	}
	b.SetBytes(size)
	b.ReportAllocs()
	spans := 0
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		for _, c := range conns {
			p := newParser()
			for _, ch := range c.Chunks {
				ex, err := p.Feed(ch)
				if err != nil {
					b.Fatal(err)
				}
				spans += len(ex)
			}
			spans += len(p.Flush())
		}
	}
	cpu := (cpuTime() - cpu0).Seconds()
	b.ReportMetric(float64(spans)/b.Elapsed().Seconds(), "spans/s")
	// On a shared machine wall time counts the waits for a core; CPU time
	// does not.
	if cpu > 0 {
		b.ReportMetric(float64(size)*float64(b.N)/cpu/1e6, "cpu-MB/s")
		b.ReportMetric(float64(spans)/cpu, "cpu-spans/s")
	}
}

// cpuTime is the user and system CPU time the process used so far.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
