package bench

import (
	"github.com/deeptrace/deeptrace/agent/conntrack"
	"github.com/deeptrace/deeptrace/agent/event"
	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/detect"
	"github.com/deeptrace/deeptrace/eval/capfile"
	"github.com/deeptrace/deeptrace/schemas"
)

// Sink is what a replay feeds: conntrack's output, goroutine events and the
// passing of time (wall-clock ns of the latest event), which is what the
// agent hands its correlator.
type Sink interface {
	conntrack.Sink
	// GoEvent receives a goroutine event with Ns already in wall-clock ns.
	GoEvent(g event.GoEvent)
	// Advance says events up to about now (wall-clock ns) were handed on.
	Advance(now int64)
}

type protocols struct{}

// Protocols is the protocol detection and parser factory replays use.
func Protocols() conntrack.Protocols { return protocols{} }

func (protocols) Detect(b []byte, f protocol.Flow) schemas.Protocol { return detect.Detect(b, f) }
func (protocols) New(p schemas.Protocol) protocol.Parser {
	if p == schemas.ProtocolHTTP2 || p == schemas.ProtocolGRPC {
		return &serverFirst{Parser: detect.New(p)}
	}
	return detect.New(p)
}

// mergeWindow is how far capture may hand one stream's events on ahead of
// another's: its reorder window is 20ms, but a stream whose start it did
// not see was measured held back by up to 370ms under load.
const mergeWindow = 2e9

// Replay runs a capture file through connection tracking into sink, as the
// agent would have live, and flushes the tracker at the end (the sink's own
// flush is the caller's).
func Replay(path string, sink Sink) (capfile.Meta, conntrack.Stats, error) {
	var (
		tr     *conntrack.Tracker
		offset int64
		last   uint64
		expire uint64
		terr   error
		merge  *timeMerge
	)
	wall := func(mono uint64) int64 { return int64(mono) + offset }
	meta, err := capfile.Read(path, capfile.Handler{
		Meta: func(m capfile.Meta) {
			tr, terr = newTracker(m, wall, sink)
			if terr != nil {
				return
			}
			merge = newTimeMerge(mergeWindow, func(e *event.Event) {
				tr.Handle(e)
				if e.ExitNs > last {
					last = e.ExitNs
					sink.Advance(wall(last))
				}
				if last > expire+1e9 {
					expire = last
					tr.Expire(last)
				}
			})
		},
		Clock: func(mono uint64, off int64) { offset = off },
		Data: func(e *event.Event) {
			if merge != nil {
				merge.push(e)
			}
		},
		Go: func(g *event.GoEvent) {
			ge := *g
			ge.Ns = uint64(wall(g.Ns))
			sink.GoEvent(ge)
		},
	})
	if err == nil {
		err = terr
	}
	if err != nil {
		return meta, conntrack.Stats{}, err
	}
	merge.flush()
	tr.Flush()
	return meta, tr.Stats(), nil
}

// newTracker makes the tracker for a capture's metadata.
func newTracker(meta capfile.Meta, wall func(uint64) int64, sink conntrack.Sink) (*conntrack.Tracker, error) {
	svc := meta.Services
	return conntrack.New(conntrack.Config{
		Host:         meta.Host,
		MaxCallBytes: meta.MaxCallBytes,
		Wall:         wall,
		Service: func(pid uint32, comm string) string {
			if s, ok := svc[pid]; ok {
				return s
			}
			return comm
		},
	}, protocols{}, sink)
}

// serverFirst works around conntrack dropping what a server says before the
// client's first bytes (an HTTP/2 server's SETTINGS): the HTTP/2 parser
// then sees a HEADERS frame first and gives up. Until conntrack hands those
// bytes on, the replay puts an empty SETTINGS frame in front.
// TODO(correlate): remove once conntrack feeds server-first bytes.
type serverFirst struct {
	protocol.Parser
	seen bool
}

var emptySettings = []byte{0, 0, 0, 4, 0, 0, 0, 0, 0}

func (s *serverFirst) Feed(c protocol.Chunk) ([]protocol.Exchange, error) {
	if !s.seen && c.Flow == protocol.ToClient {
		s.seen = true
		if len(c.Data) < 4 || c.Data[3] != 4 {
			pre := protocol.Chunk{Flow: protocol.ToClient, Data: emptySettings, Size: int64(len(emptySettings)),
				StartNs: c.StartNs, EndNs: c.StartNs, TCPSeq: c.TCPSeq - uint32(len(emptySettings)), TID: c.TID, GoID: c.GoID}
			if _, err := s.Parser.Feed(pre); err != nil {
				return nil, err
			}
		}
	}
	return s.Parser.Feed(c)
}
