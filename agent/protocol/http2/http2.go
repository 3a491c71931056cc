// Package http2 parses HTTP/2 connections in cleartext (h2c with prior
// knowledge, and TLS connections whose plaintext capture sees) into
// exchanges, one per stream, and gRPC on top of them: service and method
// from :path, status from grpc-status in the trailers or in a
// Trailers-Only response.
//
// HPACK state is kept per connection and direction with
// golang.org/x/net/http2/hpack. DATA frames are counted, never buffered.
// Because the header tables depend on every HEADERS frame, a gap in the
// capture that hides a frame header ends the parse with an error.
package http2

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/net/http2/hpack"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/stream"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/values"
	"github.com/deeptrace/deeptrace/schemas"
)

// Preface is what an HTTP/2 client sends first.
const Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"

// Frame types.
const (
	frameData         = 0x0
	frameHeaders      = 0x1
	framePriority     = 0x2
	frameRSTStream    = 0x3
	frameSettings     = 0x4
	framePushPromise  = 0x5
	framePing         = 0x6
	frameGoAway       = 0x7
	frameWindowUpdate = 0x8
	frameContinuation = 0x9
)

// Frame flags.
const (
	flagEndStream  = 0x1
	flagAck        = 0x1
	flagEndHeaders = 0x4
	flagPadded     = 0x8
	flagPriority   = 0x20
)

// maxTableSize bounds the HPACK dynamic table a peer may ask for.
const maxTableSize = 64 << 10

var errCodes = map[uint32]string{
	0x0: "NO_ERROR", 0x1: "PROTOCOL_ERROR", 0x2: "INTERNAL_ERROR", 0x3: "FLOW_CONTROL_ERROR",
	0x4: "SETTINGS_TIMEOUT", 0x5: "STREAM_CLOSED", 0x6: "FRAME_SIZE_ERROR", 0x7: "REFUSED_STREAM",
	0x8: "CANCEL", 0x9: "COMPRESSION_ERROR", 0xa: "CONNECT_ERROR", 0xb: "ENHANCE_YOUR_CALM",
	0xc: "INADEQUATE_SECURITY", 0xd: "HTTP_1_1_REQUIRED",
}

// h2stream is one stream's exchange in progress.
type h2stream struct {
	ex                protocol.Exchange
	grpc              bool
	reqDone, respDone bool
	respStarted       bool
	contentType       string
	respJSON          bool
	grpcStatusSeen    bool
	// The first bytes of the bodies, for identifiers.
	reqBody, respBody []byte
}

// bodyValues adds the identifiers of the stream's captured bodies: the
// protobuf of gRPC messages, JSON documents.
func (s *h2stream) bodyValues() {
	switch {
	case s.grpc:
		s.ex.Values = grpcValues(s.ex.Values, s.reqBody)
		s.ex.Values = grpcValues(s.ex.Values, s.respBody)
	default:
		if strings.Contains(s.contentType, "json") {
			s.ex.Values = values.FromJSON(s.ex.Values, s.reqBody)
		}
		if s.respJSON {
			s.ex.Values = values.FromJSON(s.ex.Values, s.respBody)
		}
	}
	s.reqBody, s.respBody = nil, nil
}

// grpcValues reads length-prefixed gRPC messages; compressed ones are
// skipped.
func grpcValues(vs []string, b []byte) []string {
	for len(b) >= 5 {
		l := int(binary.BigEndian.Uint32(b[1:]))
		msg := b[5:]
		if l < len(msg) {
			msg = msg[:l]
		}
		if b[0] == 0 {
			vs = values.FromProtobuf(vs, msg)
		}
		if l >= len(b)-5 {
			break
		}
		b = b[5+l:]
	}
	return vs
}

// Parser parses one HTTP/2 connection. Create it with New.
type Parser struct {
	reqS, respS stream.Stream
	req, resp   decoder
	streams     map[uint32]*h2stream
	order       []uint32 // open streams, oldest first, for eviction
	seq         uint64
	out         []protocol.Exchange
}

// New returns a parser for one connection.
func New() *Parser {
	p := &Parser{streams: map[uint32]*h2stream{}}
	p.req = decoder{p: p, client: true, needPreface: true}
	p.resp = decoder{p: p}
	p.req.hpack = hpack.NewDecoder(4096, nil)
	p.resp.hpack = hpack.NewDecoder(4096, nil)
	for _, d := range []*decoder{&p.req, &p.resp} {
		d.hpack.SetMaxStringLength(protocol.MaxBuffer)
		d.hpack.SetEmitFunc(d.emit)
	}
	return p
}

// NewUpgraded returns a parser for a connection that an HTTP/1.1 request
// upgraded to h2c ("Upgrade: h2c", answered 101): that request is stream
// 1, already sent, answered in HTTP/2; its exchange is req, with the
// response's start (the 101) already set. The streams that follow are
// numbered from req.Seq+1.
func NewUpgraded(req protocol.Exchange) *Parser {
	p := New()
	req.Protocol = schemas.ProtocolHTTP2
	if req.Tags == nil {
		req.Tags = map[string]string{}
	}
	req.Tags["http.upgrade"] = "h2c"
	s := &h2stream{ex: req, reqDone: true, respStarted: req.RespStartNs != 0}
	p.streams[1] = s
	p.order = append(p.order, 1)
	p.seq = req.Seq + 1
	return p
}

// Protocol returns schemas.ProtocolHTTP2; the exchanges of gRPC streams
// say schemas.ProtocolGRPC.
func (p *Parser) Protocol() schemas.Protocol { return schemas.ProtocolHTTP2 }

// Feed consumes one chunk.
func (p *Parser) Feed(c protocol.Chunk) ([]protocol.Exchange, error) {
	p.out = nil
	var err error
	if c.Flow == protocol.ToServer {
		err = p.reqS.Feed(c, &p.req)
	} else {
		err = p.respS.Feed(c, &p.resp)
	}
	if err != nil {
		return p.out, fmt.Errorf("http2: %w", err)
	}
	return p.out, nil
}

// Flush returns the streams still open, unanswered or half answered.
func (p *Parser) Flush() []protocol.Exchange {
	p.out = nil
	for _, id := range p.order {
		s := p.streams[id]
		if s == nil {
			continue
		}
		if !s.respStarted {
			s.ex.NoResponse = true
		}
		p.finish(id, s)
	}
	p.order = nil
	return p.out
}

// finish emits a stream's exchange and forgets the stream.
func (p *Parser) finish(id uint32, s *h2stream) {
	delete(p.streams, id)
	s.bodyValues()
	if s.ex.ReqEndNs == 0 {
		s.ex.ReqEndNs = s.ex.ReqStartNs
	}
	p.out = append(p.out, s.ex)
	if len(p.order) > 2*len(p.streams)+64 {
		kept := p.order[:0]
		for _, id := range p.order {
			if p.streams[id] != nil {
				kept = append(kept, id)
			}
		}
		p.order = kept
	}
}

// decoder reads the frames of one direction.
type decoder struct {
	p           *Parser
	client      bool
	needPreface bool
	seenFrame   bool
	hpack       *hpack.Decoder

	// The frame whose end the stream will report.
	ftype, fflags byte
	fstream       uint32
	fsize         int64
	fstart        stream.Mark
	rstCode       uint32
	dataOff       int64 // bytes of the current DATA frame's payload seen

	// A header block continued in CONTINUATION frames.
	block       []byte
	blockStream uint32
	blockEnd    bool // END_STREAM of the HEADERS that began it
	blockStart  stream.Mark
	blockPush   bool

	// Fields of the header block being decoded.
	fields map[string]string
}

func (d *decoder) emit(f hpack.HeaderField) {
	switch f.Name {
	case ":method", ":path", ":authority", ":status", "content-type", "grpc-status", "grpc-message":
		v := f.Value
		if len(v) > 1024 {
			v = v[:1024]
		}
		d.fields[f.Name] = v
	}
}

func (d *decoder) Decode(b []byte, at stream.Mark) (int, int64, bool, error) {
	if d.needPreface {
		n := min(len(b), len(Preface))
		if !bytes.Equal(b[:n], []byte(Preface[:n])) {
			return 0, 0, false, fmt.Errorf("no HTTP/2 client preface: %q", b[:n])
		}
		if n < len(Preface) {
			return 0, 0, false, nil
		}
		d.needPreface = false
		return len(Preface), 0, false, nil
	}
	if len(b) < 9 {
		if !d.seenFrame && d.client && len(b) >= 4 && b[3] != frameSettings {
			return 0, 0, false, fmt.Errorf("first frame is type %d, not SETTINGS", b[3])
		}
		return 0, 0, false, nil
	}
	length := int64(b[0])<<16 | int64(b[1])<<8 | int64(b[2])
	ftype, flags := b[3], b[4]
	sid := binary.BigEndian.Uint32(b[5:9]) & 0x7fffffff
	if !d.seenFrame {
		// The client's first frame is its SETTINGS. The server's should
		// be too, but a tracker that starts parsing at the client's first
		// bytes may have missed it: any known frame type will do.
		if (d.client && (ftype != frameSettings || sid != 0 || length%6 != 0)) || ftype > frameContinuation {
			return 0, 0, false, fmt.Errorf("first frame is type %d on stream %d, not SETTINGS", ftype, sid)
		}
		d.seenFrame = true
	}
	d.ftype, d.fflags, d.fstream, d.fsize, d.fstart = ftype, flags, sid, 9+length, at
	if d.block != nil && ftype != frameContinuation {
		return 0, 0, false, fmt.Errorf("frame type %d inside a header block", ftype)
	}
	if ftype == frameData || ftype > frameContinuation {
		d.dataOff = 0
		return 9, length, true, nil
	}
	if 9+length > protocol.MaxBuffer {
		return 0, 0, false, fmt.Errorf("frame type %d of %d bytes", ftype, length)
	}
	if int64(len(b)) < 9+length {
		return 0, 0, false, nil
	}
	if err := d.control(b[9:9+length], at); err != nil {
		return 0, 0, false, err
	}
	return int(9 + length), 0, true, nil
}

// control handles every frame but DATA once its payload is whole.
func (d *decoder) control(payload []byte, at stream.Mark) error {
	switch d.ftype {
	case frameSettings:
		if d.fflags&flagAck != 0 {
			return nil
		}
		if len(payload)%6 != 0 {
			return errors.New("SETTINGS payload not a multiple of 6")
		}
		for i := 0; i+6 <= len(payload); i += 6 {
			id := binary.BigEndian.Uint16(payload[i:])
			v := binary.BigEndian.Uint32(payload[i+2:])
			if id == 0x1 { // SETTINGS_HEADER_TABLE_SIZE: what the sender decodes
				if v > maxTableSize {
					v = maxTableSize
				}
				other := &d.p.resp
				if !d.client {
					other = &d.p.req
				}
				other.hpack.SetAllowedMaxDynamicTableSize(v)
			}
		}
	case frameHeaders, framePushPromise:
		frag, err := headerFragment(d.ftype, d.fflags, payload)
		if err != nil {
			return err
		}
		d.blockStream = d.fstream
		d.blockEnd = d.fflags&flagEndStream != 0 && d.ftype == frameHeaders
		d.blockStart = at
		d.blockPush = d.ftype == framePushPromise
		if d.fflags&flagEndHeaders != 0 {
			return d.headers(frag)
		}
		d.block = append(d.block[:0:0], frag...)
	case frameContinuation:
		if d.block == nil || d.fstream != d.blockStream {
			return errors.New("CONTINUATION without a header block")
		}
		if len(d.block)+len(payload) > protocol.MaxBuffer {
			return errors.New("header block larger than the parser's buffer")
		}
		d.block = append(d.block, payload...)
		if d.fflags&flagEndHeaders != 0 {
			blk := d.block
			d.block = nil
			return d.headers(blk)
		}
	case frameRSTStream:
		if len(payload) != 4 {
			return errors.New("RST_STREAM payload not 4 bytes")
		}
		d.rstCode = binary.BigEndian.Uint32(payload)
	}
	return nil
}

func headerFragment(ftype, flags byte, p []byte) ([]byte, error) {
	pad := 0
	if flags&flagPadded != 0 {
		if len(p) < 1 {
			return nil, errors.New("padded frame without pad length")
		}
		pad = int(p[0])
		p = p[1:]
	}
	if ftype == frameHeaders && flags&flagPriority != 0 {
		if len(p) < 5 {
			return nil, errors.New("HEADERS priority too short")
		}
		p = p[5:]
	}
	if ftype == framePushPromise {
		if len(p) < 4 {
			return nil, errors.New("PUSH_PROMISE too short")
		}
		p = p[4:]
	}
	if pad > len(p) {
		return nil, errors.New("padding longer than the frame")
	}
	return p[:len(p)-pad], nil
}

// headers decodes a complete header block, keeping the HPACK table in
// step, and applies it to its stream.
func (d *decoder) headers(block []byte) error {
	if d.fields == nil {
		d.fields = map[string]string{}
	}
	clear(d.fields)
	if _, err := d.hpack.Write(block); err != nil {
		return fmt.Errorf("hpack: %w", err)
	}
	if err := d.hpack.Close(); err != nil {
		return fmt.Errorf("hpack: %w", err)
	}
	if d.blockPush {
		return nil // a pushed request: no exchange of its own
	}
	if d.client {
		d.p.requestHeaders(d.blockStream, d.fields, d.blockStart)
	} else {
		d.p.responseHeaders(d.blockStream, d.fields, d.blockStart)
	}
	return nil
}

func (p *Parser) requestHeaders(id uint32, f map[string]string, at stream.Mark) {
	if s := p.streams[id]; s != nil {
		return // request trailers
	}
	if len(p.streams) >= protocol.MaxPending {
		for len(p.order) > 0 {
			old := p.order[0]
			p.order = p.order[1:]
			if s := p.streams[old]; s != nil {
				s.ex.NoResponse = !s.respStarted
				p.finish(old, s)
				break
			}
		}
	}
	method, path := f[":method"], f[":path"]
	s := &h2stream{contentType: f["content-type"]}
	s.ex = protocol.Exchange{
		Protocol:   schemas.ProtocolHTTP2,
		Seq:        p.seq,
		ReqStartNs: at.StartNs,
		ReqTCPSeq:  at.TCPSeq,
		ReqTID:     at.TID,
		ReqGoID:    at.GoID,
		Method:     method,
	}
	p.seq++
	query := ""
	if i := strings.IndexByte(path, '?'); i >= 0 {
		path, query = path[:i], path[i+1:]
	}
	s.ex.Path = path
	if strings.HasPrefix(s.contentType, "application/grpc") {
		s.grpc = true
		s.ex.Protocol = schemas.ProtocolGRPC
		s.ex.Operation = path
		s.ex.Tags = map[string]string{"rpc.system": "grpc"}
		if svc, m, ok := strings.Cut(strings.TrimPrefix(path, "/"), "/"); ok {
			s.ex.Tags["rpc.service"] = svc
			s.ex.Tags["rpc.method"] = m
		}
	} else {
		s.ex.Operation = method + " " + path
		s.ex.Tags = map[string]string{"http.method": method, "http.flavor": "2"}
		s.ex.Values = values.FromPath(s.ex.Values, path)
		s.ex.Values = values.FromQuery(s.ex.Values, query)
	}
	if a := f[":authority"]; a != "" {
		s.ex.Tags["http.host"] = a
	}
	p.streams[id] = s
	p.order = append(p.order, id)
}

func (p *Parser) responseHeaders(id uint32, f map[string]string, at stream.Mark) {
	s := p.streams[id]
	if s == nil {
		return
	}
	if !s.respStarted {
		s.respStarted = true
		s.ex.RespStartNs = at.StartNs
		s.ex.RespTCPSeq = at.TCPSeq
		s.ex.RespTID = at.TID
		s.ex.RespGoID = at.GoID
	}
	if ct := f["content-type"]; ct != "" {
		s.respJSON = strings.Contains(ct, "json")
	}
	if st := f[":status"]; st != "" {
		code, _ := strconv.Atoi(st)
		if code >= 200 || s.ex.StatusCode == 0 {
			s.ex.Tags["http.status_code"] = st
			if !s.grpc {
				s.ex.StatusCode = code
				s.ex.Error = code >= 500
			} else if code != 200 {
				s.ex.Error = true
				s.ex.StatusText = "HTTP " + st
			}
		}
	}
	if gs, ok := f["grpc-status"]; ok && s.grpc {
		code, _ := strconv.Atoi(gs)
		s.grpcStatusSeen = true
		s.ex.StatusCode = code
		s.ex.Error = code != 0
		s.ex.Tags["grpc.status_code"] = gs
		s.ex.StatusText = f["grpc-message"]
		if len(s.ex.StatusText) > 128 {
			s.ex.StatusText = s.ex.StatusText[:128]
		}
	}
}

// Skipped keeps the first bytes of DATA payloads of streams whose bodies
// may hold identifiers.
func (d *decoder) Skipped(b []byte) {
	off := d.dataOff
	d.dataOff += int64(len(b))
	if d.ftype != frameData {
		return
	}
	s := d.p.streams[d.fstream]
	if s == nil {
		return
	}
	if d.fflags&flagPadded != 0 && off == 0 && len(b) > 0 {
		b = b[1:] // the pad length; the padding itself is zeros
	}
	switch {
	case d.client && (s.grpc || strings.Contains(s.contentType, "json")):
		s.reqBody = values.AppendBody(s.reqBody, b)
	case !d.client && (s.grpc || s.respJSON):
		s.respBody = values.AppendBody(s.respBody, b)
	}
}

// End is called at the last byte of every frame.
func (d *decoder) End(last stream.Mark) {
	p := d.p
	switch d.ftype {
	case frameData, frameHeaders, frameContinuation:
	case frameRSTStream:
		if s := p.streams[d.fstream]; s != nil {
			code := "RST_STREAM"
			if name, ok := errCodes[d.rstCode]; ok {
				code += " " + name
			}
			s.ex.Error = true
			if s.ex.StatusText == "" {
				s.ex.StatusText = code
			}
			s.ex.Tags["h2.rst_stream"] = errCodes[d.rstCode]
			if !s.respStarted {
				s.respStarted = true
				s.ex.RespStartNs = d.fstart.StartNs
				s.ex.RespTCPSeq = d.fstart.TCPSeq
				s.ex.RespTID = d.fstart.TID
				s.ex.RespGoID = d.fstart.GoID
				if d.client {
					// The client gave up before any answer.
					s.ex.NoResponse = true
					s.ex.RespStartNs = 0
				}
			}
			if !d.client || s.ex.RespEndNs == 0 {
				s.ex.RespEndNs = last.EndNs
			}
			if !d.client {
				s.ex.RespBytes += d.fsize
			}
			p.finish(d.fstream, s)
		}
		return
	default:
		return
	}
	s := p.streams[d.fstream]
	if s == nil {
		return
	}
	end := d.fflags&flagEndStream != 0
	if d.ftype == frameContinuation {
		end = d.blockEnd && d.fflags&flagEndHeaders != 0
	}
	if d.client {
		s.ex.ReqBytes += d.fsize
		if end {
			s.reqDone = true
			s.ex.ReqEndNs = last.EndNs
		}
		return
	}
	s.ex.RespBytes += d.fsize
	if end {
		s.respDone = true
		s.ex.RespEndNs = last.EndNs
		if s.grpc && !s.grpcStatusSeen {
			s.ex.Error = true
			if s.ex.StatusText == "" {
				s.ex.StatusText = "no grpc-status"
			}
		}
		p.finish(d.fstream, s)
	}
}

func (d *decoder) Lost(partial []byte, first, last stream.Mark) bool { return false }
