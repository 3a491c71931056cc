package eval

import (
	"sort"
	"strings"

	"github.com/deeptrace/deeptrace/schemas"
)

// slackNs is how far a span's system calls may sit outside the truth's
// application-level stamps and still be the same exchange: the truth and
// the capture read the same clock, but the agent converts monotonic to
// wall time with an offset calibrated every second.
const slackNs = 2e6

// Matching pairs truth records with spans.
type Matching struct {
	// Span is the span matched to each truth record.
	Span map[*Record]*schemas.Span
	// Record is the truth record matched to each span.
	Record map[*schemas.Span]*Record
}

type matchKey struct {
	pid          int
	role         schemas.Role
	client, serv uint16
}

// Match pairs each truth record with the span of the same exchange: same
// process, same connection ports, role (in: server, out: client), and the
// closest times that are consistent with containment (a server span's
// system calls enclose the handler's stamps; a client call's stamps
// enclose its system calls). Operations break ties; each span is used
// once.
//
// values, when known, are the identifiers each span's exchange carried (by
// span id); a gRPC record's key must then agree with them, which tells
// concurrent calls on one HTTP/2 connection apart.
func Match(t *Truth, spans []schemas.Span, values map[string][]string) *Matching {
	m := &Matching{Span: map[*Record]*schemas.Span{}, Record: map[*schemas.Span]*Record{}}
	byKey := map[matchKey][]*schemas.Span{}
	for i := range spans {
		s := &spans[i]
		k := matchKey{int(s.PID), s.Role, s.ClientPort, s.ServerPort}
		byKey[k] = append(byKey[k], s)
	}
	recs := map[matchKey][]*Record{}
	for _, r := range append(append([]*Record{}, t.Ins...), t.Outs...) {
		var k matchKey
		if r.Kind == "in" {
			k = matchKey{r.Pid, schemas.RoleServer, port(r.Peer), port(r.Local)}
		} else {
			k = matchKey{r.Pid, schemas.RoleClient, port(r.Local), port(r.Peer)}
		}
		if k.client == 0 || k.serv == 0 {
			continue
		}
		recs[k] = append(recs[k], r)
	}
	for k, rs := range recs {
		ss := byKey[k]
		if len(ss) == 0 {
			continue
		}
		type pair struct {
			r    *Record
			s    *schemas.Span
			cost int64
		}
		sort.Slice(ss, func(i, j int) bool { return ss[i].StartNs < ss[j].StartNs })
		var pairs []pair
		for _, r := range rs {
			lo := sort.Search(len(ss), func(i int) bool { return ss[i].StartNs >= r.StartNs-60e9 })
			for _, s := range ss[lo:] {
				if s.StartNs > r.EndNs+slackNs {
					break
				}
				c, ok := cost(r, s, values[s.SpanID])
				if ok {
					pairs = append(pairs, pair{r, s, c})
				}
			}
		}
		sort.SliceStable(pairs, func(i, j int) bool { return pairs[i].cost < pairs[j].cost })
		for _, p := range pairs {
			if m.Span[p.r] != nil || m.Record[p.s] != nil {
				continue
			}
			m.Span[p.r] = p.s
			m.Record[p.s] = p.r
		}
	}
	return m
}

// cost says whether span s can be record r's exchange and how far apart
// their times are (lower is closer).
func cost(r *Record, s *schemas.Span, values []string) (int64, bool) {
	var out int64 // how far containment is violated
	if r.Kind == "in" {
		// Server: read the request, the handler runs, write the response.
		out = max(0, s.StartNs-r.StartNs) + max(0, r.EndNs-s.EndNs)
	} else {
		// Client: stamp, write the request, read the response, stamp.
		out = max(0, r.StartNs-s.StartNs) + max(0, s.EndNs-r.EndNs)
	}
	if out > slackNs {
		return 0, false
	}
	c := out*1024 + abs(r.StartNs-s.StartNs) + abs(r.EndNs-s.EndNs)
	if !sameOp(r, s) {
		c += 1e15
	}
	if r.Key != "" && len(values) > 0 {
		c += int64(keyMisses(r.Key, values)) * 1e14
	}
	return c, true
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// sameOp compares what the record says was sent with what the span saw.
func sameOp(r *Record, s *schemas.Span) bool {
	op := r.Operation()
	switch r.Proto {
	case "http":
		method, target, _ := strings.Cut(op, " ")
		path, _, _ := strings.Cut(target, "?")
		return method == s.Method && path == s.Path
	case "grpc":
		return op == s.Path || op == s.Operation
	case "redis":
		stmt := s.Tags["db.statement"]
		cmd, rest, _ := strings.Cut(op, " ")
		arg, _, _ := strings.Cut(rest, " ")
		scmd, srest, _ := strings.Cut(stmt, " ")
		sarg, _, _ := strings.Cut(srest, " ")
		return strings.EqualFold(cmd, scmd) && arg == sarg
	case "postgres":
		stmt := s.Tags["db.statement"]
		return stmt == "" || strings.HasPrefix(op, stmt) || strings.HasPrefix(stmt, op)
	}
	return true
}

// keyMisses counts the numbers of a gRPC truth key ("sku=812 qty=2
// customer_id=5310") that are not among the span's values: concurrent calls
// on one connection pair with the spans whose content agrees best.
func keyMisses(key string, values []string) int {
	miss := 0
	for _, f := range strings.Fields(key) {
		_, v, ok := strings.Cut(f, "=")
		if !ok || v == "" || v[0] < '0' || v[0] > '9' {
			continue
		}
		found := false
		for _, x := range values {
			if x == v {
				found = true
				break
			}
		}
		if !found {
			miss++
		}
	}
	return miss
}
