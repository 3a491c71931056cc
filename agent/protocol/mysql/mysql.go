// Package mysql parses MySQL and MariaDB client/server connections into
// exchanges: the handshake (one CONNECT exchange, credentials never read),
// COM_QUERY, COM_STMT_PREPARE/EXECUTE (statement ids mapped to their SQL),
// COM_PING, COM_INIT_DB and the other simple commands, OK/ERR/EOF, text
// and binary result sets (rows counted, not read) in both EOF and
// deprecate-EOF modes, and multi-result responses.
//
// Commands that have no response (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA,
// COM_QUIT) make no exchange and take no sequence number.
package mysql

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/pending"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/sqltext"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/stream"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/values"
	"github.com/deeptrace/deeptrace/schemas"
)

// Commands.
const (
	comQuit          = 0x01
	comInitDB        = 0x02
	comQuery         = 0x03
	comFieldList     = 0x04
	comStatistics    = 0x09
	comPing          = 0x0e
	comChangeUser    = 0x11
	comStmtPrepare   = 0x16
	comStmtExecute   = 0x17
	comStmtSendLong  = 0x18
	comStmtClose     = 0x19
	comStmtReset     = 0x1a
	comSetOption     = 0x1b
	comStmtFetch     = 0x1c
	comResetConn     = 0x1f
	comHandshake     = 0xff // not a command: the client's handshake response
	maxPacket        = 0xffffff
	capDeprecateEOF  = 1 << 24
	capSSL           = 0x800
	capProtocol41    = 0x200
	statusMoreResult = 0x0008
	// maxStmts bounds the prepared statements remembered per connection.
	maxStmts = 1024
	// readLimit is the most payload bytes of a packet the parser reads.
	readLimit = 4096
)

var commandNames = map[byte]string{
	comInitDB: "INIT_DB", comQuery: "QUERY", comFieldList: "FIELD_LIST", comStatistics: "STATISTICS",
	comPing: "PING", comChangeUser: "CHANGE_USER", comStmtPrepare: "PREPARE", comStmtExecute: "EXECUTE",
	comStmtReset: "STMT_RESET", comSetOption: "SET_OPTION", comStmtFetch: "FETCH", comResetConn: "RESET_CONNECTION",
	comHandshake: "CONNECT", 0x05: "CREATE_DB", 0x06: "DROP_DB", 0x07: "REFRESH", 0x0a: "PROCESS_INFO",
	0x0c: "PROCESS_KILL", 0x0d: "DEBUG", 0x12: "BINLOG_DUMP",
}

type stmt struct {
	sql    string
	sum    sqltext.Summary
	params int
	types  []byte   // parameter types, two bytes each, from the last execute
	cols   []column // result columns, from the prepare response
}

// maxRowsRead is how many rows of a result the parser reads for Values.
const maxRowsRead = 8

// Parser parses one MySQL connection. Create it with New.
type Parser struct {
	reqS, respS stream.Stream
	req         clientDecoder
	resp        serverDecoder
	q           pending.Queue
	seq         uint64
	out         []protocol.Exchange
	stmts       map[uint32]*stmt
	serverCaps  uint32
	clientCaps  uint32
	handshaking bool
	tls         bool
}

// New returns a parser for one connection.
func New() *Parser {
	p := &Parser{stmts: map[uint32]*stmt{}}
	p.req.p = p
	p.resp.p = p
	return p
}

// Protocol returns schemas.ProtocolMySQL.
func (p *Parser) Protocol() schemas.Protocol { return schemas.ProtocolMySQL }

// ErrTLS is returned once the client asked for TLS: what follows is
// encrypted.
var ErrTLS = errors.New("mysql: connection switched to TLS")

// Feed consumes one chunk.
func (p *Parser) Feed(c protocol.Chunk) ([]protocol.Exchange, error) {
	p.out = nil
	if p.tls {
		return nil, ErrTLS
	}
	var err error
	if c.Flow == protocol.ToServer {
		err = p.reqS.Feed(c, &p.req)
	} else {
		err = p.respS.Feed(c, &p.resp)
	}
	if err != nil {
		return p.out, fmt.Errorf("mysql: %w", err)
	}
	return p.out, nil
}

// Flush completes a response cut by the close and returns the commands
// still waiting.
func (p *Parser) Flush() []protocol.Exchange {
	p.out = nil
	if p.resp.started {
		p.resp.finish(p.respS.Last())
	}
	p.resp.cmds = nil
	return append(p.out, p.q.Drain()...)
}

func (p *Parser) deprecateEOF() bool {
	switch {
	case p.clientCaps == 0:
		return true // handshake not seen: assume a current client
	case p.serverCaps == 0:
		// The greeting was missed: servers since MySQL 5.7 and MariaDB
		// 10.2 grant what the client asks.
		return p.clientCaps&capDeprecateEOF != 0
	}
	return p.serverCaps&p.clientCaps&capDeprecateEOF != 0
}

// header reads a packet header; ok is false when b is too short.
func header(b []byte) (length int64, seq byte, ok bool) {
	if len(b) < 4 {
		return 0, 0, false
	}
	return int64(b[0]) | int64(b[1])<<8 | int64(b[2])<<16, b[3], true
}

// readPacket returns how much of the packet at b to read now: its header
// and up to limit payload bytes. ok is false when more must be buffered.
func readPacket(b []byte, limit int64) (length int64, seq byte, payload []byte, ok bool) {
	length, seq, ok = header(b)
	if !ok {
		return 0, 0, nil, false
	}
	want := min(length, limit)
	if int64(len(b)) < 4+want {
		return 0, 0, nil, false
	}
	return length, seq, b[4 : 4+want], true
}

type clientDecoder struct {
	p       *Parser
	cont    bool // the next packet continues a 16 MiB one
	started bool // the first packet was seen
	cur     *protocol.Exchange
	start   stream.Mark
}

func (d *clientDecoder) Decode(b []byte, at stream.Mark) (int, int64, bool, error) {
	// Reject what cannot be a client packet before waiting for its bytes.
	if l, seq, ok := header(b); ok && !d.cont && !d.p.handshaking {
		switch {
		case !d.started && seq == 1:
			if l < 32 {
				return 0, 0, false, fmt.Errorf("handshake response of %d bytes", l)
			}
		case seq != 0 || l == 0:
			return 0, 0, false, fmt.Errorf("command packet with sequence %d and length %d", seq, l)
		case len(b) > 4 && commandNames[b[4]] == "" && b[4] != comQuit && b[4] != comStmtClose && b[4] != comStmtSendLong:
			return 0, 0, false, fmt.Errorf("unknown command %#x", b[4])
		}
	}
	length, seq, payload, ok := readPacket(b, readLimit)
	if !ok {
		return 0, 0, false, nil
	}
	n := 4 + len(payload)
	skip := length - int64(len(payload))
	if d.cont {
		d.cont = length == maxPacket
		return n, skip, !d.cont, nil
	}
	d.cont = length == maxPacket
	p := d.p
	if !d.started {
		d.started = true
		if seq == 1 {
			// The handshake response (or an SSL request).
			if length < 32 || len(payload) < 32 {
				return 0, 0, false, fmt.Errorf("handshake response of %d bytes", length)
			}
			caps := binary.LittleEndian.Uint32(payload)
			if caps&capProtocol41 == 0 {
				return 0, 0, false, errors.New("client without CLIENT_PROTOCOL_41")
			}
			p.clientCaps = caps
			if caps&capSSL != 0 && length == 32 {
				p.tls = true
				return n, skip, false, nil
			}
			p.handshaking = true
			e := d.begin(comHandshake, at)
			e.Tags["db.user"] = cstring(payload[32:])
			if db := handshakeDB(payload, caps); db != "" {
				e.Tags["db.name"] = db
			}
			return n, skip, !d.cont, nil
		}
	}
	if p.handshaking {
		// Auth data after an auth switch or more-data request: part of the
		// CONNECT exchange, never read.
		d.cur = p.q.Peek()
		return n, skip, !d.cont, nil
	}
	if seq != 0 || length == 0 {
		return 0, 0, false, fmt.Errorf("command packet with sequence %d and length %d", seq, length)
	}
	cmd := payload[0]
	name, known := commandNames[cmd]
	switch cmd {
	case comQuit, comStmtClose, comStmtSendLong:
		if cmd == comStmtClose && len(payload) >= 5 {
			delete(p.stmts, binary.LittleEndian.Uint32(payload[1:]))
		}
		d.cur = nil
		return n, skip, false, nil
	}
	if !known {
		return 0, 0, false, fmt.Errorf("unknown command %#x", cmd)
	}
	e := d.begin(cmd, at)
	e.Method = name
	e.Operation = name
	body := payload[1:]
	switch cmd {
	case comQuery, comStmtPrepare:
		sql := string(body)
		sum := sqltext.Summarize(sql)
		e.Tags["db.statement"] = sqltext.Truncate(sql)
		if sum.Verb != "" {
			e.Operation = sum.Operation()
			e.Tags["db.operation"] = sum.Verb
			if cmd == comStmtPrepare {
				e.Operation = "PREPARE " + e.Operation
			}
		}
		if sum.Table != "" {
			e.Tags["db.table"] = sum.Table
		}
		if cmd == comQuery {
			e.Values = sqltext.Literals(e.Values, sql)
		}
	case comStmtExecute:
		if len(body) >= 4 {
			id := binary.LittleEndian.Uint32(body)
			e.Tags["mysql.stmt_id"] = strconv.FormatUint(uint64(id), 10)
			if st := p.stmts[id]; st != nil {
				e.Tags["db.statement"] = sqltext.Truncate(st.sql)
				if st.sum.Verb != "" {
					e.Operation = st.sum.Operation()
					e.Tags["db.operation"] = st.sum.Verb
				}
				if st.sum.Table != "" {
					e.Tags["db.table"] = st.sum.Table
				}
				e.Values = executeValues(e.Values, st, body)
			}
		}
	case comInitDB:
		e.Tags["db.name"] = string(body)
	}
	return n, skip, !d.cont, nil
}

func (d *clientDecoder) begin(cmd byte, at stream.Mark) *protocol.Exchange {
	p := d.p
	e := &protocol.Exchange{
		Protocol:   schemas.ProtocolMySQL,
		Seq:        p.seq,
		ReqStartNs: at.StartNs,
		ReqTCPSeq:  at.TCPSeq,
		ReqTID:     at.TID,
		ReqGoID:    at.GoID,
		Method:     commandNames[cmd],
		Operation:  commandNames[cmd],
		Tags:       map[string]string{"db.system": "mysql"},
	}
	p.seq++
	if dropped := p.q.Push(e); dropped != nil {
		dropped.NoResponse = true
		p.out = append(p.out, *dropped)
		p.resp.cmds = p.resp.cmds[1:]
	}
	p.resp.cmds = append(p.resp.cmds, cmd)
	p.resp.discard = false
	d.cur = e
	d.start = at
	return e
}

func (d *clientDecoder) End(last stream.Mark) {
	if d.cur == nil {
		return
	}
	d.cur.ReqEndNs = last.EndNs
	d.cur.ReqBytes = last.Pos + 1 - d.start.Pos
	d.cur = nil
}

func (d *clientDecoder) Lost(partial []byte, first, last stream.Mark) bool {
	d.End(last)
	return false
}

// handshakeDB finds the database name of a HandshakeResponse41, after
// the user name and the auth response (which it skips, unread).
func handshakeDB(p []byte, caps uint32) string {
	const capConnectWithDB, capLenencAuth, capSecure = 0x8, 0x200000, 0x8000
	if caps&capConnectWithDB == 0 {
		return ""
	}
	i := 32
	for i < len(p) && p[i] != 0 {
		i++
	}
	i++
	if i >= len(p) {
		return ""
	}
	switch {
	case caps&capLenencAuth != 0:
		n, w := lenenc(p[i:])
		if w == 0 {
			return ""
		}
		i += w + int(n)
	case caps&capSecure != 0:
		i += 1 + int(p[i])
	default:
		for i < len(p) && p[i] != 0 {
			i++
		}
		i++
	}
	if i < 0 || i >= len(p) {
		return ""
	}
	return cstring(p[i:])
}

func cstring(b []byte) string {
	for i, c := range b {
		if c == 0 {
			return string(b[:i])
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	return string(b)
}

// lenenc reads a length-encoded integer; w is 0 when b is too short.
func lenenc(b []byte) (v uint64, w int) {
	if len(b) == 0 {
		return 0, 0
	}
	switch c := b[0]; {
	case c < 0xfb:
		return uint64(c), 1
	case c == 0xfc && len(b) >= 3:
		return uint64(binary.LittleEndian.Uint16(b[1:])), 3
	case c == 0xfd && len(b) >= 4:
		return uint64(b[1]) | uint64(b[2])<<8 | uint64(b[3])<<16, 4
	case c == 0xfe && len(b) >= 9:
		return binary.LittleEndian.Uint64(b[1:]), 9
	case c == 0xfb:
		return 0, 1 // NULL
	}
	return 0, 0
}

// executeValues reads the string and integer parameters of a
// COM_STMT_EXECUTE, as far as the captured bytes allow.
func executeValues(vs []string, st *stmt, body []byte) []string {
	n := st.params
	if n == 0 || len(body) < 9 {
		return vs
	}
	b := body[9:]
	nullLen := (n + 7) / 8
	if len(b) < nullLen+1 {
		return vs
	}
	nulls := b[:nullLen]
	b = b[nullLen:]
	if b[0] == 1 {
		if len(b) < 1+2*n {
			return vs
		}
		st.types = append(st.types[:0], b[1:1+2*n]...)
		b = b[1+2*n:]
	} else {
		b = b[1:]
	}
	if len(st.types) != 2*n {
		return vs
	}
	for i := 0; i < n; i++ {
		if nulls[i/8]&(1<<(i%8)) != 0 {
			continue
		}
		v, size := binaryValue(st.types[2*i], st.types[2*i+1]&0x80 != 0, b)
		if size < 0 {
			return vs
		}
		vs = values.Add(vs, v)
		b = b[size:]
	}
	return vs
}

// binaryValue reads one value of the binary protocol of type t at the
// start of b: its text (empty for types that hold no ids) and its size,
// or -1 when b is too short or the type unknown.
func binaryValue(t byte, unsigned bool, b []byte) (string, int) {
	var size int
	switch t {
	case 0x01: // TINY
		size = 1
	case 0x02, 0x0d: // SHORT, YEAR
		size = 2
	case 0x03, 0x09, 0x04: // LONG, INT24, FLOAT
		size = 4
	case 0x08, 0x05: // LONGLONG, DOUBLE
		size = 8
	case 0x07, 0x0a, 0x0b, 0x0c: // TIMESTAMP, DATE, TIME, DATETIME
		if len(b) < 1 {
			return "", -1
		}
		size = 1 + int(b[0])
	case 0x00, 0x0f, 0x10, 0xf5, 0xf6, 0xf7, 0xf8, 0xf9, 0xfa, 0xfb, 0xfc, 0xfd, 0xfe:
		// Strings, decimals, blobs, JSON, enums, sets: length-encoded.
		l, w := lenenc(b)
		if w == 0 || uint64(len(b)-w) < l {
			return "", -1
		}
		return string(b[w : w+int(l)]), w + int(l)
	default:
		return "", -1
	}
	if len(b) < size {
		return "", -1
	}
	switch t {
	case 0x01:
		return intString(uint64(b[0]), 8, unsigned), 1
	case 0x02, 0x0d:
		return intString(uint64(binary.LittleEndian.Uint16(b)), 16, unsigned), 2
	case 0x03, 0x09:
		return intString(uint64(binary.LittleEndian.Uint32(b)), 32, unsigned), 4
	case 0x08:
		return intString(binary.LittleEndian.Uint64(b), 64, unsigned), 8
	case 0x04:
		return strconv.FormatFloat(float64(math.Float32frombits(binary.LittleEndian.Uint32(b))), 'g', -1, 32), 4
	case 0x05:
		return strconv.FormatFloat(math.Float64frombits(binary.LittleEndian.Uint64(b)), 'g', -1, 64), 8
	}
	return "", size
}

// column is what a row value needs of its column definition.
type column struct {
	typ      byte
	unsigned bool
}

// columnDef reads the type of a column definition packet.
func columnDef(p []byte) (column, bool) {
	i := 0
	for f := 0; f < 6; f++ { // catalog, schema, table, org_table, name, org_name
		l, w := lenenc(p[i:])
		if w == 0 {
			return column{}, false
		}
		i += w + int(l)
		if i > len(p) {
			return column{}, false
		}
	}
	// Length of the fixed fields, charset (2), column length (4), type,
	// flags (2).
	if i+10 > len(p) {
		return column{}, false
	}
	return column{typ: p[i+7], unsigned: binary.LittleEndian.Uint16(p[i+8:])&0x20 != 0}, true
}

// rowValues adds the id-like values of a result row: length-encoded
// strings in the text protocol, typed values in the binary one.
func rowValues(vs []string, p []byte, binaryRow bool, cols []column) []string {
	if !binaryRow {
		for len(p) > 0 {
			if p[0] == 0xfb { // NULL
				p = p[1:]
				continue
			}
			l, w := lenenc(p)
			if w == 0 || uint64(len(p)-w) < l {
				return vs
			}
			vs = values.FromCell(vs, string(p[w:w+int(l)]))
			p = p[w+int(l):]
		}
		return vs
	}
	nullLen := (len(cols) + 7 + 2) / 8
	if len(cols) == 0 || len(p) < 1+nullLen {
		return vs
	}
	nulls := p[1 : 1+nullLen]
	p = p[1+nullLen:]
	for i, c := range cols {
		bit := i + 2
		if nulls[bit/8]&(1<<(bit%8)) != 0 {
			continue
		}
		v, size := binaryValue(c.typ, c.unsigned, p)
		if size < 0 {
			return vs
		}
		vs = values.FromCell(vs, v)
		p = p[size:]
	}
	return vs
}

func intString(v uint64, bits uint, unsigned bool) string {
	if unsigned {
		return strconv.FormatUint(v, 10)
	}
	shift := 64 - bits
	return strconv.FormatInt(int64(v<<shift)>>shift, 10)
}

// Response phases.
type phase uint8

const (
	phFirst   phase = iota // the response's first packet
	phColumns              // column definitions
	phColEOF               // the EOF after column definitions (EOF mode)
	phRows                 // rows until EOF/OK or ERR
	phPrepParams
	phPrepParamsEOF
	phPrepCols
	phPrepColsEOF
)

type serverDecoder struct {
	p          *Parser
	cont       bool
	greeted    bool
	started    bool
	start      stream.Mark
	phase      phase
	left       uint64 // definitions still to come
	prepCols   uint64
	prepParams uint64
	discard    bool // after a gap: drop bytes until the next command
	rows       int64
	cmds       []byte   // commands of the pending exchanges, in order
	cols       []column // the current result's columns
	prep       *stmt    // the statement a prepare response defines
	end        bool     // the packet being read ends the response
}

func (d *serverDecoder) Decode(b []byte, at stream.Mark) (int, int64, bool, error) {
	if d.discard {
		return len(b), 0, false, nil
	}
	length, _, ok := header(b)
	if !ok {
		return 0, 0, false, nil
	}
	if d.cont {
		d.cont = length == maxPacket
		return 4, length, d.end && !d.cont, nil
	}
	// Read the whole of the packets that carry status; of rows and
	// definitions just the first byte.
	limit := int64(1)
	switch {
	case d.phase == phFirst || length < 256:
		limit = readLimit
	case d.phase == phRows && d.rows < maxRowsRead:
		limit = 512
	}
	length, seq, payload, ok := readPacket(b, limit)
	if !ok {
		return 0, 0, false, nil
	}
	n := 4 + len(payload)
	skip := length - int64(len(payload))
	d.cont = length == maxPacket
	p := d.p
	if !d.greeted && !d.started && p.q.Len() == 0 && seq == 0 && len(payload) > 0 && payload[0] == 0x0a {
		d.greeted = true
		d.greeting(payload)
		return n, skip, false, nil
	}
	d.greeted = true
	e := p.q.Peek()
	if e == nil {
		if p.tls {
			return n, skip, false, nil
		}
		return 0, 0, false, fmt.Errorf("response packet (sequence %d) without a command", seq)
	}
	if !d.started {
		d.started = true
		d.start = at
		d.phase = phFirst
		d.rows = 0
		e.RespStartNs = at.StartNs
		e.RespTCPSeq = at.TCPSeq
		e.RespTID = at.TID
		e.RespGoID = at.GoID
	}
	d.end = d.packet(e, payload, length)
	return n, skip, d.end && !d.cont, nil
}

func (d *serverDecoder) greeting(p []byte) {
	// version NUL, thread id 4, auth data 8, filler 1, caps low 2,
	// charset 1, status 2, caps high 2.
	i := 1
	for i < len(p) && p[i] != 0 {
		i++
	}
	i += 1 + 4 + 8 + 1
	if i+2 > len(p) {
		return
	}
	caps := uint32(binary.LittleEndian.Uint16(p[i:]))
	i += 2 + 1 + 2
	if i+2 <= len(p) {
		caps |= uint32(binary.LittleEndian.Uint16(p[i:])) << 16
	}
	d.p.serverCaps = caps
}

// packet advances the response state machine and reports whether the
// packet ends the response.
func (d *serverDecoder) packet(e *protocol.Exchange, payload []byte, length int64) bool {
	var cmd byte
	if len(d.cmds) > 0 {
		cmd = d.cmds[0]
	}
	if length == 0 || len(payload) == 0 {
		return d.phase == phFirst
	}
	h := payload[0]
	isEOF := h == 0xfe && length < 9
	switch d.phase {
	case phFirst:
		switch {
		case h == 0xff:
			d.err(e, payload)
			return true
		case cmd == comHandshake:
			if h == 0x00 {
				d.p.handshaking = false
				return true
			}
			return false // auth switch or more data: the client answers
		case h == 0x00 && cmd == comStmtPrepare && len(payload) >= 12:
			id := binary.LittleEndian.Uint32(payload[1:])
			cols := uint64(binary.LittleEndian.Uint16(payload[5:]))
			params := uint64(binary.LittleEndian.Uint16(payload[7:]))
			d.remember(e, id, int(params))
			d.prepCols, d.prepParams = cols, params
			d.left = params
			d.phase = phPrepParams
			return d.prepNext()
		case h == 0x00 || isEOF:
			return d.ok(e, payload)
		case cmd == comQuery || cmd == comStmtExecute || cmd == comStmtFetch:
			if h == 0xfb {
				e.Tags["mysql.local_infile"] = "true"
				return true
			}
			cols, w := lenenc(payload)
			if w == 0 {
				return true
			}
			d.left = cols
			d.phase = phColumns
			d.cols = d.cols[:0]
			e.Tags["mysql.columns"] = strconv.FormatUint(cols, 10)
			if len(payload) == w+1 && payload[w] == 0 {
				// MariaDB's cached metadata: no definitions follow; the
				// prepare response had them.
				d.phase = phRows
				if id, err := strconv.ParseUint(e.Tags["mysql.stmt_id"], 10, 32); err == nil && d.p.stmts[uint32(id)] != nil {
					d.cols = append(d.cols, d.p.stmts[uint32(id)].cols...)
				}
			}
			return false
		case cmd == comFieldList:
			d.phase = phRows // column definitions until EOF
			return false
		}
		return true // STATISTICS and the like: one packet
	case phColumns:
		if c, ok := columnDef(payload); ok && len(d.cols) < 4096 {
			d.cols = append(d.cols, c)
		}
		d.left--
		if d.left == 0 {
			d.phase = phRows
			if !d.p.deprecateEOF() {
				d.phase = phColEOF
			}
		}
		return false
	case phColEOF:
		d.phase = phRows
		if isEOF {
			return false
		}
		fallthrough
	case phRows:
		switch {
		case h == 0xff:
			d.err(e, payload)
			return true
		case h == 0xfe && length < maxPacket && (isEOF || d.p.deprecateEOF()):
			e.Tags["db.rows"] = strconv.FormatInt(d.rows, 10)
			return d.ok(e, payload)
		}
		if d.rows < maxRowsRead {
			e.Values = rowValues(e.Values, payload, cmd == comStmtExecute && h == 0x00, d.cols)
		}
		d.rows++
		return false
	case phPrepParams, phPrepCols:
		if d.phase == phPrepCols && d.prep != nil && len(d.prep.cols) < 4096 {
			if c, ok := columnDef(payload); ok {
				d.prep.cols = append(d.prep.cols, c)
			}
		}
		d.left--
		return d.prepNext()
	case phPrepParamsEOF:
		d.phase, d.left = phPrepCols, d.prepCols
		return d.prepNext()
	case phPrepColsEOF:
		return true
	}
	return true
}

// prepNext moves through a prepare response's definitions and reports
// whether it is over.
func (d *serverDecoder) prepNext() bool {
	for {
		switch d.phase {
		case phPrepParams:
			if d.left > 0 {
				return false
			}
			if d.prepParams > 0 && !d.p.deprecateEOF() {
				d.phase = phPrepParamsEOF
				return false
			}
			d.phase, d.left = phPrepCols, d.prepCols
		case phPrepCols:
			if d.left > 0 {
				return false
			}
			if d.prepCols > 0 && !d.p.deprecateEOF() {
				d.phase = phPrepColsEOF
				return false
			}
			return true
		default:
			return false
		}
	}
}

func (d *serverDecoder) remember(e *protocol.Exchange, id uint32, params int) {
	p := d.p
	e.Tags["mysql.stmt_id"] = strconv.FormatUint(uint64(id), 10)
	if len(p.stmts) >= maxStmts {
		for k := range p.stmts {
			delete(p.stmts, k)
			break
		}
	}
	sql := e.Tags["db.statement"]
	d.prep = &stmt{sql: sql, sum: sqltext.Summarize(sql), params: params}
	p.stmts[id] = d.prep
}

// ok reads an OK or EOF packet and reports whether the response ends
// (no more results follow).
func (d *serverDecoder) ok(e *protocol.Exchange, p []byte) bool {
	var status uint16
	if len(p) == 5 && p[0] == 0xfe {
		status = binary.LittleEndian.Uint16(p[3:])
	} else {
		i := 1
		affected, w := lenenc(p[i:])
		if w == 0 {
			return true
		}
		i += w
		_, w = lenenc(p[i:])
		if w == 0 {
			return true
		}
		i += w
		if i+2 <= len(p) {
			status = binary.LittleEndian.Uint16(p[i:])
		}
		if affected > 0 {
			e.Tags["db.affected_rows"] = strconv.FormatUint(affected, 10)
		}
	}
	if status&statusMoreResult != 0 {
		d.phase = phFirst
		return false
	}
	return true
}

func (d *serverDecoder) err(e *protocol.Exchange, p []byte) {
	e.Error = true
	if len(p) >= 3 {
		e.StatusCode = int(binary.LittleEndian.Uint16(p[1:]))
		e.Tags["db.error_code"] = strconv.Itoa(e.StatusCode)
	}
	msg := ""
	if len(p) > 3 {
		msg = string(p[3:])
		if strings.HasPrefix(msg, "#") && len(msg) >= 6 {
			e.Tags["db.sqlstate"] = msg[1:6]
			msg = msg[6:]
		}
	}
	if len(msg) > 128 {
		msg = msg[:128]
	}
	e.StatusText = msg
	if e.Method == "CONNECT" {
		d.p.handshaking = false
	}
}

func (d *serverDecoder) End(last stream.Mark) {
	if d.end {
		d.finish(last)
	}
}

// finish completes the pending exchange with its response.
func (d *serverDecoder) finish(last stream.Mark) {
	d.end = false
	p := d.p
	e := p.q.Pop()
	if len(d.cmds) > 0 {
		d.cmds = d.cmds[1:]
	}
	if !d.started || e == nil {
		d.started = false
		return
	}
	d.started = false
	d.phase = phFirst
	e.RespEndNs = last.EndNs
	e.RespBytes = last.Pos + 1 - d.start.Pos
	if e.ReqEndNs == 0 {
		e.ReqEndNs = e.ReqStartNs
	}
	p.out = append(p.out, *e)
}

// Lost closes the response in progress at the gap and resumes at the
// next read: a new response starts only after a new command, which
// resynchronises the stream.
func (d *serverDecoder) Lost(partial []byte, first, last stream.Mark) bool {
	if d.started {
		d.p.q.Peek().Tags["mysql.truncated"] = "true"
		d.finish(last)
	}
	d.cont = false
	d.discard = true
	return true
}
