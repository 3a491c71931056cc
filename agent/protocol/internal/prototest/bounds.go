package prototest

import (
	"testing"

	"github.com/deeptrace/deeptrace/agent/protocol"
)

// CheckPendingBound feeds n copies of request, never answered, and checks
// that the parser gives up the oldest ones unanswered instead of holding
// more than protocol.MaxPending.
func CheckPendingBound(t *testing.T, p protocol.Parser, request []byte, n int) {
	t.Helper()
	emitted := 0
	for i := 0; i < n; i++ {
		ex, err := p.Feed(protocol.Chunk{Flow: protocol.ToServer, Data: request, Size: int64(len(request)),
			StartNs: int64(i + 1), EndNs: int64(i + 2), TCPSeq: uint32(i * len(request))})
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range ex {
			if !e.NoResponse {
				t.Fatalf("exchange %d answered", e.Seq)
			}
		}
		emitted += len(ex)
	}
	if emitted < n-protocol.MaxPending {
		t.Errorf("%d requests given up while feeding, want at least %d", emitted, n-protocol.MaxPending)
	}
	if rest := len(p.Flush()); emitted+rest != n {
		t.Errorf("%d given up + %d flushed, want %d", emitted, rest, n)
	}
}
