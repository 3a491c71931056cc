// Package postgres parses PostgreSQL frontend/backend connections
// (protocol 3.0) into exchanges: the startup and authentication (one
// CONNECT exchange; password and SASL messages are never read), SSLRequest
// answered 'N', the simple query protocol, and the extended query
// protocol with named and unnamed statements.
//
// One exchange is one simple Query, or one batch of extended-protocol
// messages closed by a Sync: both end with the server's ReadyForQuery, so
// pairing is by order even when the client pipelines batches. A batch
// that only parses (Parse/Describe/Sync) is a PREPARE; its statement is
// remembered by name and named again by the batches that bind it.
package postgres

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/deeptrace/deeptrace/agent/protocol"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/pending"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/sqltext"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/stream"
	"github.com/deeptrace/deeptrace/agent/protocol/internal/values"
	"github.com/deeptrace/deeptrace/schemas"
)

const (
	protocolV3   = 196608
	sslRequest   = 80877103
	gssRequest   = 80877104
	cancelReq    = 80877102
	readLimit    = 4096
	maxMessage   = 1 << 30
	maxStmts     = 1024
	maxStartup   = 10000
	oidInt2      = 21
	oidInt4      = 23
	oidInt8      = 20
	oidText      = 25
	oidVarchar   = 1043
	oidBpchar    = 1042
	oidUUID      = 2950
	oidUnknown   = 705
	oidOIDNumber = 26
)

// ErrTLS is returned once the server accepted TLS: what follows is
// encrypted.
var ErrTLS = errors.New("postgres: connection switched to TLS")

type stmt struct {
	sql  string
	sum  sqltext.Summary
	oids []uint32
}

// Parser parses one PostgreSQL connection. Create it with New.
type Parser struct {
	reqS, respS stream.Stream
	req         clientDecoder
	resp        serverDecoder
	q           pending.Queue
	seq         uint64
	out         []protocol.Exchange
	stmts       map[string]*stmt
	sslAsked    bool // the server answers the SSL or GSS request with one byte
	tls         bool
}

// New returns a parser for one connection.
func New() *Parser {
	p := &Parser{stmts: map[string]*stmt{}}
	p.req.p = p
	p.req.reqStart = map[*protocol.Exchange]int64{}
	p.resp.p = p
	return p
}

// Protocol returns schemas.ProtocolPostgres.
func (p *Parser) Protocol() schemas.Protocol { return schemas.ProtocolPostgres }

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
		if p.tls {
			err = ErrTLS
		}
		return p.out, fmt.Errorf("postgres: %w", err)
	}
	return p.out, nil
}

// Flush completes a response cut by the close (a failed authentication
// ends so) and returns the requests still waiting.
func (p *Parser) Flush() []protocol.Exchange {
	p.out = nil
	if p.resp.started {
		p.resp.finish(p.respS.Last())
	}
	return append(p.out, p.q.Drain()...)
}

// batch is the exchange a client is building from extended-protocol
// messages until its Sync.
type batch struct {
	e        *protocol.Exchange
	parsed   *stmt // the first statement parsed in the batch
	executed bool
	count    int // statements executed
}

type clientDecoder struct {
	p       *Parser
	started bool // the first message was seen
	auth    bool // authenticating: 'p' messages belong to CONNECT
	b       *batch
	cur     *protocol.Exchange // exchange whose request message is being read
	start   stream.Mark
	syncEnd bool // the message being read closes its exchange's request
	// afterSSL: the server refused SSL, a startup message follows.
	afterSSL bool
	// reqStart is where each pending exchange's request began.
	reqStart map[*protocol.Exchange]int64
}

var clientTypes = [256]bool{'Q': true, 'P': true, 'B': true, 'E': true, 'D': true, 'C': true, 'S': true,
	'H': true, 'X': true, 'p': true, 'F': true, 'd': true, 'c': true, 'f': true}

func (d *clientDecoder) Decode(b []byte, at stream.Mark) (int, int64, bool, error) {
	p := d.p
	if b[0] != 0 || (d.started && !d.afterSSL) {
		return d.typed(b, at)
	}
	// A startup message: length, then a protocol version or request code.
	if len(b) < 8 {
		return 0, 0, false, nil
	}
	length := int64(binary.BigEndian.Uint32(b))
	code := binary.BigEndian.Uint32(b[4:])
	if length < 8 || length > maxStartup {
		return 0, 0, false, fmt.Errorf("startup message of %d bytes", length)
	}
	switch code {
	case sslRequest, gssRequest:
		d.started, d.afterSSL = true, false
		p.sslAsked = true
		return 8, 0, false, nil
	case cancelReq:
		d.started, d.afterSSL = true, false
		return 0, length, false, nil
	case protocolV3:
	default:
		return 0, 0, false, fmt.Errorf("startup protocol %#x", code)
	}
	if int64(len(b)) < length {
		return 0, 0, false, nil
	}
	d.started, d.afterSSL = true, false
	d.auth = true
	e := d.begin("CONNECT", at)
	params := b[8:length]
	for len(params) > 1 {
		k, rest, _ := bytes.Cut(params, []byte{0})
		v, rest2, _ := bytes.Cut(rest, []byte{0})
		params = rest2
		switch string(k) {
		case "user":
			e.Tags["db.user"] = string(v)
		case "database":
			e.Tags["db.name"] = string(v)
		case "application_name":
			e.Tags["db.application"] = string(v)
		}
	}
	d.cur, d.syncEnd = e, true
	return int(length), 0, true, nil
}

func (d *clientDecoder) typed(b []byte, at stream.Mark) (int, int64, bool, error) {
	p := d.p
	t := b[0]
	if !clientTypes[t] {
		return 0, 0, false, fmt.Errorf("not a PostgreSQL message type %q", t)
	}
	if len(b) < 5 {
		return 0, 0, false, nil
	}
	length := int64(binary.BigEndian.Uint32(b[1:]))
	if length < 4 || length > maxMessage {
		return 0, 0, false, fmt.Errorf("message %q of length %d", t, length)
	}
	d.started = true
	limit := int64(0)
	switch t {
	case 'Q', 'P', 'B', 'E', 'C', 'D':
		limit = readLimit
	}
	want := min(length-4, limit)
	if int64(len(b)) < 5+want {
		return 0, 0, false, nil
	}
	body := b[5 : 5+want]
	n := int(5 + want)
	skip := length - 4 - want
	d.cur, d.syncEnd = nil, false
	switch t {
	case 'p':
		// Password, SASL: part of the CONNECT exchange, never read.
		if e := p.q.Peek(); d.auth && e != nil {
			d.cur, d.syncEnd = e, true
		}
		return n, skip, true, nil
	case 'X':
		return n, skip, false, nil
	case 'd', 'c', 'f':
		// COPY FROM STDIN data: part of the query that asked for it.
		if e := p.q.Peek(); e != nil {
			d.cur, d.syncEnd = e, true
		}
		return n, skip, true, nil
	case 'Q':
		sql := cstr(body)
		e := d.begin("QUERY", at)
		setStatement(e, sql, "")
		e.Values = sqltext.Literals(e.Values, sql)
		d.cur, d.syncEnd = e, true
		return n, skip, true, nil
	}
	// Extended protocol: messages gather in a batch until Sync.
	if d.b == nil {
		d.b = &batch{e: d.begin("EXECUTE", at)}
	}
	bt := d.b
	e := bt.e
	d.cur = e
	switch t {
	case 'P':
		name, rest := cut(body)
		sql, rest := cut(rest)
		st := &stmt{sql: sql, sum: sqltext.Summarize(sql)}
		if len(rest) >= 2 {
			n := int(binary.BigEndian.Uint16(rest))
			for i := 0; i < n && 2+4*i+4 <= len(rest); i++ {
				st.oids = append(st.oids, binary.BigEndian.Uint32(rest[2+4*i:]))
			}
		}
		if len(p.stmts) >= maxStmts {
			for k := range p.stmts {
				delete(p.stmts, k)
				break
			}
		}
		p.stmts[name] = st
		if bt.parsed == nil {
			bt.parsed = st
			if name != "" {
				e.Tags["db.prepared_statement"] = name
			}
		}
	case 'B':
		_, rest := cut(body)
		name, rest := cut(rest)
		st := p.stmts[name]
		if bt.count == 0 {
			if st != nil {
				setStatement(e, st.sql, "")
			}
			if name != "" {
				e.Tags["db.prepared_statement"] = name
			}
			e.Values = bindValues(e.Values, rest, st)
		}
		bt.count++
	case 'E':
		bt.executed = true
	case 'C':
		// Close statement or portal: remember nothing more of it.
		if len(body) > 1 && body[0] == 'S' {
			name, _ := cut(body[1:])
			delete(p.stmts, name)
		}
	case 'S':
		d.b = nil
		d.finishBatch(bt)
		d.syncEnd = true
		return n, skip, true, nil
	}
	return n, skip, false, nil
}

func (d *clientDecoder) finishBatch(bt *batch) {
	e := bt.e
	switch {
	case bt.executed:
		if e.Tags["db.statement"] == "" && bt.parsed != nil {
			setStatement(e, bt.parsed.sql, "")
		}
		if bt.count > 1 {
			e.Tags["db.batch_size"] = strconv.Itoa(bt.count)
		}
	case bt.parsed != nil:
		setStatement(e, bt.parsed.sql, "PREPARE")
	default:
		e.Method = "SYNC"
		e.Operation = "SYNC"
	}
}

func setStatement(e *protocol.Exchange, sql, prefix string) {
	sum := sqltext.Summarize(sql)
	e.Tags["db.statement"] = sqltext.Truncate(sql)
	if prefix != "" {
		e.Method = prefix
	}
	op := sum.Operation()
	if op == "" {
		op = e.Method
	} else {
		e.Tags["db.operation"] = sum.Verb
		if prefix != "" {
			op = prefix + " " + op
		}
	}
	e.Operation = op
	if sum.Table != "" {
		e.Tags["db.table"] = sum.Table
	}
}

func (d *clientDecoder) begin(method string, at stream.Mark) *protocol.Exchange {
	p := d.p
	e := &protocol.Exchange{
		Protocol:   schemas.ProtocolPostgres,
		Seq:        p.seq,
		ReqStartNs: at.StartNs,
		ReqTCPSeq:  at.TCPSeq,
		ReqTID:     at.TID,
		ReqGoID:    at.GoID,
		Method:     method,
		Operation:  method,
		Tags:       map[string]string{"db.system": "postgresql"},
	}
	p.seq++
	if dropped := p.q.Push(e); dropped != nil {
		dropped.NoResponse = true
		p.out = append(p.out, *dropped)
		delete(d.reqStart, dropped)
	}
	p.resp.discard = false
	d.start = at
	d.reqStart[e] = at.Pos
	return e
}

func (d *clientDecoder) End(last stream.Mark) {
	e := d.cur
	if e == nil || !d.syncEnd {
		return
	}
	e.ReqEndNs = last.EndNs
	if start, ok := d.reqStart[e]; ok {
		e.ReqBytes = last.Pos + 1 - start
	}
	d.cur = nil
}

func (d *clientDecoder) Lost(partial []byte, first, last stream.Mark) bool { return false }

func cut(b []byte) (string, []byte) {
	i := bytes.IndexByte(b, 0)
	if i < 0 {
		return string(b), nil
	}
	return string(b[:i]), b[i+1:]
}

func cstr(b []byte) string {
	s, _ := cut(b)
	return s
}

// bindValues reads the parameters of a Bind message after the statement
// name: text ones as they are, binary integers and UUIDs by their types.
func bindValues(vs []string, b []byte, st *stmt) []string {
	if len(b) < 2 {
		return vs
	}
	nf := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	if len(b) < 2*nf {
		return vs
	}
	formats := b[:2*nf]
	b = b[2*nf:]
	if len(b) < 2 {
		return vs
	}
	np := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for i := 0; i < np && len(vs) < protocol.MaxValues; i++ {
		if len(b) < 4 {
			return vs
		}
		l := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if l < 0 {
			continue
		}
		if int(l) > len(b) {
			return vs
		}
		v := b[:l]
		b = b[l:]
		binaryFmt := false
		switch {
		case nf == 1:
			binaryFmt = binary.BigEndian.Uint16(formats) == 1
		case i < nf:
			binaryFmt = binary.BigEndian.Uint16(formats[2*i:]) == 1
		}
		if !binaryFmt {
			vs = values.Add(vs, string(v))
			continue
		}
		var oid uint32
		if st != nil && i < len(st.oids) {
			oid = st.oids[i]
		}
		switch {
		case (oid == oidInt2 || oid == 0) && len(v) == 2:
			vs = values.Add(vs, strconv.Itoa(int(int16(binary.BigEndian.Uint16(v)))))
		case (oid == oidInt4 || oid == oidOIDNumber || oid == 0) && len(v) == 4:
			vs = values.Add(vs, strconv.Itoa(int(int32(binary.BigEndian.Uint32(v)))))
		case (oid == oidInt8 || oid == 0) && len(v) == 8:
			vs = values.Add(vs, strconv.FormatInt(int64(binary.BigEndian.Uint64(v)), 10))
		case oid == oidUUID && len(v) == 16:
			vs = values.Add(vs, fmt.Sprintf("%x-%x-%x-%x-%x", v[:4], v[4:6], v[6:8], v[8:10], v[10:]))
		case oid == oidText || oid == oidVarchar || oid == oidBpchar || oid == oidUnknown:
			vs = values.Add(vs, string(v))
		}
	}
	return vs
}

var serverTypes = [256]bool{'R': true, 'S': true, 'K': true, 'Z': true, 'T': true, 'D': true, 'C': true,
	'E': true, 'N': true, 'I': true, '1': true, '2': true, '3': true, 'n': true, 't': true, 's': true,
	'A': true, 'G': true, 'H': true, 'W': true, 'd': true, 'c': true, 'v': true, 'V': true}

// maxRowsRead is how many rows of a result the parser reads for Values.
const maxRowsRead = 8

// column is what a row value needs of its RowDescription.
type column struct {
	oid    uint32
	binary bool
}

// rowDescription reads the type and format of each column.
func rowDescription(cols []column, b []byte) []column {
	if len(b) < 2 {
		return cols
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for i := 0; i < n; i++ {
		_, rest := cut(b)
		if len(rest) < 18 {
			return cols
		}
		cols = append(cols, column{oid: binary.BigEndian.Uint32(rest[6:]), binary: binary.BigEndian.Uint16(rest[16:]) == 1})
		b = rest[18:]
	}
	return cols
}

// rowValues adds the id-like values of a DataRow.
func rowValues(vs []string, b []byte, cols []column) []string {
	if len(b) < 2 {
		return vs
	}
	n := int(binary.BigEndian.Uint16(b))
	b = b[2:]
	for i := 0; i < n && len(b) >= 4; i++ {
		l := int32(binary.BigEndian.Uint32(b))
		b = b[4:]
		if l < 0 {
			continue
		}
		if int(l) > len(b) {
			return vs
		}
		v := b[:l]
		b = b[l:]
		var c column
		if i < len(cols) {
			c = cols[i]
		}
		if !c.binary {
			vs = values.FromCell(vs, string(v))
			continue
		}
		vs = values.FromCell(vs, binaryValue(c.oid, v))
	}
	return vs
}

// binaryValue formats the binary value of the types that hold ids.
func binaryValue(oid uint32, v []byte) string {
	switch {
	case oid == oidInt2 && len(v) == 2:
		return strconv.Itoa(int(int16(binary.BigEndian.Uint16(v))))
	case (oid == oidInt4 || oid == oidOIDNumber) && len(v) == 4:
		return strconv.Itoa(int(int32(binary.BigEndian.Uint32(v))))
	case oid == oidInt8 && len(v) == 8:
		return strconv.FormatInt(int64(binary.BigEndian.Uint64(v)), 10)
	case oid == oidUUID && len(v) == 16:
		return fmt.Sprintf("%x-%x-%x-%x-%x", v[:4], v[4:6], v[6:8], v[8:10], v[10:])
	case oid == oidText || oid == oidVarchar || oid == oidBpchar:
		return string(v)
	}
	return ""
}

type serverDecoder struct {
	p       *Parser
	cols    []column // the current result's columns
	started bool
	start   stream.Mark
	rows    int64
	end     bool
	discard bool // after a gap: drop bytes until the client's next request
}

func (d *serverDecoder) Decode(b []byte, at stream.Mark) (int, int64, bool, error) {
	p := d.p
	if d.discard {
		return len(b), 0, false, nil
	}
	if p.sslAsked {
		p.sslAsked = false
		switch b[0] {
		case 'N':
			p.req.afterSSL = true
			return 1, 0, false, nil
		case 'S', 'G':
			p.tls = true
			return 0, 0, false, ErrTLS
		}
		return 0, 0, false, fmt.Errorf("SSL answer %q", b[0])
	}
	t := b[0]
	if !serverTypes[t] {
		return 0, 0, false, fmt.Errorf("not a PostgreSQL message type %q", t)
	}
	if len(b) < 5 {
		return 0, 0, false, nil
	}
	length := int64(binary.BigEndian.Uint32(b[1:]))
	if length < 4 || length > maxMessage {
		return 0, 0, false, fmt.Errorf("message %q of length %d", t, length)
	}
	limit := int64(0)
	switch t {
	case 'E', 'C', 'Z', 'T':
		limit = readLimit
	case 'D':
		if d.rows < maxRowsRead {
			limit = 512
		}
	}
	want := min(length-4, limit)
	if int64(len(b)) < 5+want {
		return 0, 0, false, nil
	}
	body := b[5 : 5+want]
	n := int(5 + want)
	skip := length - 4 - want
	e := p.q.Peek()
	if e == nil {
		// Asynchronous messages (notices, notifications, parameter
		// changes) or answers to requests sent before capture began.
		return n, skip, false, nil
	}
	if !d.started {
		d.started = true
		d.start = at
		d.rows = 0
		e.RespStartNs = at.StartNs
		e.RespTCPSeq = at.TCPSeq
		e.RespTID = at.TID
		e.RespGoID = at.GoID
	}
	d.end = false
	switch t {
	case 'D':
		if d.rows < maxRowsRead {
			e.Values = rowValues(e.Values, body, d.cols)
		}
		d.rows++
	case 'T':
		d.cols = rowDescription(d.cols[:0], body)
	case 'C':
		tag := cstr(body)
		if i := strings.LastIndexByte(tag, ' '); i >= 0 {
			e.Tags["db.rows"] = tag[i+1:]
		}
		if e.Tags["db.command_tag"] == "" {
			e.Tags["db.command_tag"] = tag
		}
	case 'E':
		if !e.Error {
			e.Error = true
			for f := body; len(f) > 1; {
				code := f[0]
				var v string
				v, f = cut(f[1:])
				switch code {
				case 'C':
					e.Tags["db.sqlstate"] = v
				case 'M':
					if len(v) > 128 {
						v = v[:128]
					}
					e.StatusText = v
				case 'S':
					e.Tags["db.severity"] = v
				}
			}
		}
	case 'Z':
		d.end = true
	}
	return n, skip, d.end, nil
}

func (d *serverDecoder) End(last stream.Mark) {
	if d.end {
		d.finish(last)
	}
}

func (d *serverDecoder) finish(last stream.Mark) {
	d.end = false
	d.started = false
	p := d.p
	e := p.q.Pop()
	if e == nil {
		return
	}
	if p.req.auth && e.Method == "CONNECT" {
		p.req.auth = false
	}
	if d.rows > 0 {
		e.Tags["db.rows"] = strconv.FormatInt(d.rows, 10)
	}
	e.RespEndNs = last.EndNs
	e.RespBytes = last.Pos + 1 - d.start.Pos
	if e.ReqEndNs == 0 {
		e.ReqEndNs = e.ReqStartNs
	}
	delete(p.req.reqStart, e)
	p.out = append(p.out, *e)
}

// Lost closes the response in progress at the gap, gives up on the
// responses of requests already sent, and resumes with the answer to the
// client's next request.
func (d *serverDecoder) Lost(partial []byte, first, last stream.Mark) bool {
	p := d.p
	if d.started {
		p.q.Peek().Tags["db.truncated"] = "true"
		d.finish(last)
	}
	p.out = append(p.out, p.q.Drain()...)
	clear(p.req.reqStart)
	d.discard = true
	return true
}
