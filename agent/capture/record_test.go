package capture

import (
	"encoding/binary"
	"net/netip"
	"reflect"
	"testing"

	"github.com/deeptrace/deeptrace/agent/event"
)

func rawData(payload []byte, v6 bool) []byte {
	b := make([]byte, dataHdrSize+len(payload))
	b[0] = recData
	b[offKind] = byte(event.KindData)
	b[offDir] = byte(event.Ingress)
	b[offRole] = byte(event.RoleServer)
	b[offFamily] = afInet
	binary.LittleEndian.PutUint16(b[offLport:], 8080)
	binary.LittleEndian.PutUint16(b[offRport:], 45678)
	binary.LittleEndian.PutUint32(b[offPid:], 100)
	binary.LittleEndian.PutUint32(b[offTid:], 101)
	binary.LittleEndian.PutUint32(b[offFd:], 7)
	binary.LittleEndian.PutUint32(b[offNetns:], 4026531840)
	binary.LittleEndian.PutUint32(b[offSeq:], 0xfffffff0)
	binary.LittleEndian.PutUint64(b[offEnterNs:], 1000)
	binary.LittleEndian.PutUint64(b[offExitNs:], 2000)
	binary.LittleEndian.PutUint64(b[offSockID:], 555)
	binary.LittleEndian.PutUint64(b[offCgroup:], 9)
	binary.LittleEndian.PutUint64(b[offGoid:], 33)
	binary.LittleEndian.PutUint64(b[offParent:], 1)
	size := int64(-104)
	binary.LittleEndian.PutUint64(b[offSize:], uint64(size))
	binary.LittleEndian.PutUint32(b[offOffset:], 4096)
	binary.LittleEndian.PutUint32(b[offLen:], uint32(len(payload)))
	if v6 {
		b[offFamily] = afInet6
		// ::ffff:127.0.0.1 (a dual-stack socket) and ::1
		copy(b[offLaddr:], netip.MustParseAddr("::ffff:127.0.0.1").AsSlice())
		copy(b[offRaddr:], netip.MustParseAddr("::1").AsSlice())
	} else {
		copy(b[offLaddr:], []byte{127, 0, 0, 1})
		copy(b[offRaddr:], []byte{10, 1, 2, 3})
	}
	copy(b[offComm:], "nginx")
	copy(b[dataHdrSize:], payload)
	return b
}

func TestDecodeData(t *testing.T) {
	d := newDecoder()
	var e event.Event
	if err := d.data(rawData([]byte("GET / HTTP/1.1\r\n"), false), &e); err != nil {
		t.Fatal(err)
	}
	want := event.Event{
		Kind: event.KindData, Dir: event.Ingress, Role: event.RoleServer,
		EnterNs: 1000, ExitNs: 2000, PID: 100, TID: 101, Comm: "nginx", FD: 7,
		SockID: 555, NetNS: 4026531840, Cgroup: 9,
		Local:  netip.MustParseAddrPort("127.0.0.1:8080"),
		Remote: netip.MustParseAddrPort("10.1.2.3:45678"),
		Size:   -104, Offset: 4096, TCPSeq: 0xfffffff0, GoID: 33, ParentGoID: 1,
	}
	got := e
	got.Payload = nil
	if !reflect.DeepEqual(got, want) {
		t.Errorf("decoded\n%+v\nwant\n%+v", got, want)
	}
	if string(e.Payload) != "GET / HTTP/1.1\r\n" {
		t.Errorf("payload %q", e.Payload)
	}
	if err := d.data(rawData(nil, true), &e); err != nil {
		t.Fatal(err)
	}
	if e.Local.Addr().String() != "127.0.0.1" || e.Remote.Addr().String() != "::1" || e.Payload != nil {
		t.Errorf("v6: local %s remote %s payload %q", e.Local, e.Remote, e.Payload)
	}
}

func TestDecodeShort(t *testing.T) {
	d := newDecoder()
	var e event.Event
	raw := rawData([]byte("abcdef"), false)
	for _, n := range []int{0, 10, dataHdrSize - 1, len(raw) - 1} {
		if err := d.data(raw[:n], &e); err == nil {
			t.Errorf("%d bytes decoded", n)
		}
	}
	var g event.GoEvent
	if err := d.goEvent(make([]byte, goRecSize-1), &g); err == nil {
		t.Error("short Go record decoded")
	}
}

func FuzzDecode(f *testing.F) {
	f.Add(rawData([]byte("hello"), false))
	f.Add(rawData(nil, true))
	f.Fuzz(func(t *testing.T, b []byte) {
		d := newDecoder()
		var e event.Event
		if d.data(b, &e) == nil && len(e.Payload) > len(b) {
			t.Fatal("payload longer than the record")
		}
		var g event.GoEvent
		_ = d.goEvent(b, &g)
	})
}

func BenchmarkDecode(b *testing.B) {
	raw := rawData(make([]byte, 200), false)
	d := newDecoder()
	b.ReportAllocs()
	b.SetBytes(int64(len(raw)))
	for b.Loop() {
		var e event.Event
		if err := d.data(raw, &e); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkPipeline is the reader's user-space work per data event:
// decode, role, stream order, batch. 64 connections take turns, each
// event next in its stream.
func BenchmarkPipeline(b *testing.B) {
	raws := make([][]byte, 64)
	for i := range raws {
		raws[i] = rawData(make([]byte, 200), false)
		binary.LittleEndian.PutUint64(raws[i][offSockID:], uint64(1000+i))
		binary.LittleEndian.PutUint32(raws[i][offSeq:], 0)
		binary.LittleEndian.PutUint64(raws[i][offSize:], 200)
		binary.LittleEndian.PutUint32(raws[i][offOffset:], 0)
		raws[i][offDir] = byte(event.Egress)
	}
	d := newDecoder()
	r := newRoles(b.TempDir())
	batch := make([]event.Event, 0, maxBatchBench)
	o := newOrderer(20e6, 1<<16, func(e *event.Event) {
		if batch = append(batch, *e); len(batch) == cap(batch) {
			batch = batch[:0]
		}
	})
	seqs := make([]uint32, len(raws))
	for i := range raws {
		// Each connection starts in view: its stream position is known.
		o.push(&event.Event{Kind: event.KindConnect, Dir: event.Egress, PID: 100, SockID: uint64(1000 + i), Role: event.RoleClient}, 0)
	}
	var ev event.Event
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; b.Loop(); i++ {
		k := i % len(raws)
		binary.LittleEndian.PutUint32(raws[k][offSeq:], seqs[k])
		seqs[k] += 200
		if err := d.data(raws[k], &ev); err != nil {
			b.Fatal(err)
		}
		r.resolve(&ev, uint64(i))
		o.push(&ev, uint64(i))
	}
	if o.heldCount() > len(raws) {
		b.Fatalf("%d events held", o.heldCount())
	}
}

const maxBatchBench = 4096
