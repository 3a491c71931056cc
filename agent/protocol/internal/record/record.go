// Package record reads and writes recorded connection byte streams: one
// JSON line per read() a recording proxy did from either side of a
// connection, so the chunk boundaries in testdata are real system call
// boundaries. The recorder lives in cmd/record; the parsers' tests load the
// files with Load.
package record

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"sort"

	"github.com/deeptrace/deeptrace/agent/protocol"
)

// Line is one recorded read.
type Line struct {
	Conn int `json:"conn"`
	// Flow is "req" for bytes the client sent, "resp" for the server's.
	Flow    string `json:"flow"`
	StartNs int64  `json:"start_ns"`
	EndNs   int64  `json:"end_ns"`
	// TCPSeq is a synthetic TCP sequence position: a fixed initial value
	// per connection and direction (close to wrapping, on purpose) plus
	// the bytes before.
	TCPSeq uint32 `json:"tcp_seq"`
	Data   []byte `json:"data"`
}

// Conn is the chunks of one recorded connection, in recording order.
type Conn struct {
	ID     int
	Chunks []protocol.Chunk
}

// Load reads a recording. Each chunk's TID and GoID are its 1-based line
// number in the file, so a test can tell which read a message came from.
func Load(path string) ([]Conn, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	conns, err := Read(f)
	if err != nil {
		return nil, fmt.Errorf("load %s: %w", path, err)
	}
	return conns, nil
}

// Read parses a recording from r.
func Read(r io.Reader) ([]Conn, error) {
	byID := map[int]*Conn{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 64<<20)
	n := 0
	for sc.Scan() {
		n++
		var l Line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return nil, fmt.Errorf("line %d: %w", n, err)
		}
		flow := protocol.ToServer
		switch l.Flow {
		case "req":
		case "resp":
			flow = protocol.ToClient
		default:
			return nil, fmt.Errorf("line %d: flow %q", n, l.Flow)
		}
		c := byID[l.Conn]
		if c == nil {
			c = &Conn{ID: l.Conn}
			byID[l.Conn] = c
		}
		c.Chunks = append(c.Chunks, protocol.Chunk{Flow: flow, Data: l.Data, Size: int64(len(l.Data)),
			StartNs: l.StartNs, EndNs: l.EndNs, TCPSeq: l.TCPSeq, TID: uint32(n), GoID: uint64(n)})
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	out := make([]Conn, 0, len(byID))
	for _, c := range byID {
		out = append(out, *c)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}

// Writer appends lines to a recording; it is safe for concurrent use by
// the goroutines of a proxy only through Proxy, which serialises calls.
type Writer struct {
	enc *json.Encoder
}

// NewWriter writes lines to w.
func NewWriter(w io.Writer) *Writer { return &Writer{enc: json.NewEncoder(w)} }

// Write appends one line.
func (w *Writer) Write(l Line) error { return w.enc.Encode(l) }
