package capfile

import (
	"net/netip"
	"path/filepath"
	"reflect"
	"testing"

	"github.com/deeptrace/deeptrace/agent/event"
)

func TestRoundTrip(t *testing.T) {
	path := filepath.Join(t.TempDir(), "c.cap")
	meta := Meta{Services: map[uint32]string{7: "gateway"}, Host: "h", MaxCallBytes: 65536, GoCreation: true}
	w, err := Create(path, meta)
	if err != nil {
		t.Fatal(err)
	}
	evs := []event.Event{
		{Kind: event.KindData, Dir: event.Egress, Role: event.RoleClient, EnterNs: 10, ExitNs: 20, PID: 7, TID: 8, FD: 3,
			SockID: 0xabc, NetNS: 4026531833, Cgroup: 99, Size: 5, TCPSeq: 4000000000, GoID: 12, ParentGoID: 1,
			Local: netip.MustParseAddrPort("127.0.0.1:40000"), Remote: netip.MustParseAddrPort("[::1]:80"), Comm: "gateway", Payload: []byte("hello")},
		{Kind: event.KindData, Dir: event.Ingress, Size: -11, Offset: 4096, PID: 7, Comm: "gateway"},
	}
	g := event.GoEvent{Kind: event.GoCreate, Ns: 15, PID: 7, TID: 8, GoID: 13, ParentGoID: 12}
	w.Clock(5, -3)
	for i := range evs {
		w.Data(&evs[i])
	}
	w.Go(&g)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	var got []event.Event
	var gotGo []event.GoEvent
	var clock [2]int64
	m, err := Read(path, Handler{
		Data:  func(e *event.Event) { got = append(got, *e) },
		Go:    func(e *event.GoEvent) { gotGo = append(gotGo, *e) },
		Clock: func(mono uint64, off int64) { clock = [2]int64{int64(mono), off} },
	})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(m, meta) {
		t.Errorf("meta %+v, want %+v", m, meta)
	}
	if !reflect.DeepEqual(got, evs) {
		t.Errorf("events\n%+v\nwant\n%+v", got, evs)
	}
	if len(gotGo) != 1 || gotGo[0] != g || clock != [2]int64{5, -3} {
		t.Errorf("go %+v clock %v", gotGo, clock)
	}
	if mm, err := ReadMeta(path); err != nil || !reflect.DeepEqual(mm, meta) {
		t.Errorf("ReadMeta: %+v %v", mm, err)
	}
}
