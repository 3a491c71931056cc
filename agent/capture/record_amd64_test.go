//go:build linux && amd64

package capture

import (
	"testing"
	"unsafe"

	"github.com/deeptrace/deeptrace/bpf"
)

// TestRecordLayout: the decoder's offsets are those of the C struct, as
// bpf2go generated it.
func TestRecordLayout(t *testing.T) {
	var h bpf.CaptureDataEvent
	for name, c := range map[string][2]uintptr{
		"kind": {offKind, unsafe.Offsetof(h.Kind)}, "dir": {offDir, unsafe.Offsetof(h.Dir)},
		"role": {offRole, unsafe.Offsetof(h.Role)}, "family": {offFamily, unsafe.Offsetof(h.Family)},
		"flags": {offFlags, unsafe.Offsetof(h.Flags)}, "lport": {offLport, unsafe.Offsetof(h.Lport)},
		"rport": {offRport, unsafe.Offsetof(h.Rport)}, "pid": {offPid, unsafe.Offsetof(h.Pid)},
		"tid": {offTid, unsafe.Offsetof(h.Tid)}, "fd": {offFd, unsafe.Offsetof(h.Fd)},
		"netns": {offNetns, unsafe.Offsetof(h.Netns)}, "seq": {offSeq, unsafe.Offsetof(h.Seq)},
		"enter": {offEnterNs, unsafe.Offsetof(h.EnterNs)}, "exit": {offExitNs, unsafe.Offsetof(h.ExitNs)},
		"sock": {offSockID, unsafe.Offsetof(h.SockId)}, "cgroup": {offCgroup, unsafe.Offsetof(h.Cgroup)},
		"goid": {offGoid, unsafe.Offsetof(h.Goid)}, "size": {offSize, unsafe.Offsetof(h.Size)},
		"offset": {offOffset, unsafe.Offsetof(h.Offset)}, "len": {offLen, unsafe.Offsetof(h.Len)},
		"laddr": {offLaddr, unsafe.Offsetof(h.Laddr)}, "raddr": {offRaddr, unsafe.Offsetof(h.Raddr)},
		"comm": {offComm, unsafe.Offsetof(h.Comm)}, "parent": {offParent, unsafe.Offsetof(h.ParentGoid)},
		"size of": {dataHdrSize, unsafe.Sizeof(h)},
	} {
		if c[0] != c[1] {
			t.Errorf("%s: decoder uses %d, C struct has %d", name, c[0], c[1])
		}
	}
}
