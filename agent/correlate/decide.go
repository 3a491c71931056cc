package correlate

import (
	"math"
	"sort"
)

// valueAnchor is the value score above which a call whose ids name one
// candidate alone teaches the model (a full id, unique among 2+).
const valueAnchor = 8.5

// maxValueScore caps the value evidence for one candidate.
const maxValueScore = 14

// lookback bounds how far back a thread's timeline is searched for the
// context of a call.
const (
	lookbackMarks = 256
	lookbackNs    = int64(200e6)
)

// candidates are the requests of the process in progress when the call's
// request was written. Requests known only from conntrack's in-flight
// report count only when no finished one does.
func (p *proc) candidates(c *client) []*server {
	var done, hints []*server
	for _, s := range p.inProgress(c.reqStart) {
		if s.done {
			done = append(done, s)
		} else {
			hints = append(hints, s)
		}
	}
	if len(done) > 0 {
		return done
	}
	return hints
}

// inProgress lists, by start, the requests in progress at t. Only requests
// that started within the longest request seen (or MaxWait, for those still
// in flight) before t can be.
func (p *proc) inProgress(t int64) []*server {
	hi := sort.Search(len(p.servers), func(i int) bool { return p.servers[i].start > t })
	from := t - max(p.longest, int64(p.cfg.MaxWait))
	lo := hi
	for lo > 0 && p.servers[lo-1].start >= from {
		lo--
	}
	var out []*server
	for _, s := range p.servers[lo:hi] {
		if s.contains(t) {
			out = append(out, s)
		}
	}
	return out
}

func (p *proc) decide(c *client, m Method) {
	c.decided = true
	cands := p.candidates(c)
	if len(cands) == 0 {
		c.noCandidate = true
		return
	}
	switch m {
	case Thread:
		var best *server
		n := 0
		for _, s := range cands {
			if s.tid == c.tid {
				n++
				if best == nil || s.start >= best.start {
					best = s
				}
			}
		}
		if best != nil {
			p.assign(c, best, 1/float64(n), false)
		}
	case FIFO:
		best := cands[0]
		for _, s := range cands {
			if s.start >= best.start {
				best = s
			}
		}
		p.assign(c, best, 1/float64(len(cands)), false)
	default:
		p.decideOurs(c, cands)
	}
}

// assign records c's parent and what it teaches about s.
func (p *proc) assign(c *client, s *server, conf float64, confident bool) {
	c.parent, c.conf, c.confident = s, conf, confident
	if s.children == nil {
		s.children = map[string]int{}
	}
	s.children[c.op]++
	i := len(s.calls)
	for i > 0 && s.calls[i-1].reqStart > c.reqStart {
		i--
	}
	s.calls = append(s.calls, nil)
	copy(s.calls[i+1:], s.calls[i:])
	s.calls[i] = c
	if confident && s.lent < maxLenders {
		// A confidently placed call lends its ids to the request, so that
		// the request's later calls that carry them find it. Only a few
		// calls lend: a request that collects ids from many (a span that
		// conntrack stretched over others) would attract everything.
		s.lent++
		for _, t := range c.tokens {
			if isID(t) && !hasToken(s.tokens, t) {
				s.adopted = addToken(s.adopted, t)
			}
		}
	}
}

// maxLenders is how many calls may lend their ids to one request.
const maxLenders = 4

// The context rules: each names the request it thinks the call serves.
const (
	ruleThread   = iota // latest context on the call's thread (DeepFlow-like)
	ruleLineage         // the call's goroutine descends from the request's
	ruleRunnable        // the request woken earliest and not yet acted on (event loop)
	ruleNextResp        // the next response written by the call's thread
	ruleRecent          // the most recent request (timing only)
	numRules
)

var ruleNames = [numRules]string{"thread", "lineage", "runnable", "next-response", "recent"}

// decideOurs scores each candidate with the evidence and the weights the
// process's model has learnt, and takes the best.
func (p *proc) decideOurs(c *client, cands []*server) {
	p.learnFromResponses(c.reqStart)
	pt := callPoint(c)
	var votes [numRules]*server
	votes[ruleThread] = p.threadContext(pt)
	votes[ruleLineage] = p.lineage(pt)
	votes[ruleRunnable] = p.runnable(pt, cands)
	votes[ruleNextResp] = p.nextResponse(c, cands)
	best := cands[0]
	for _, s := range cands {
		if s.start >= best.start {
			best = s
		}
	}
	votes[ruleRecent] = best

	n := len(cands)
	if n == 1 {
		s := cands[0]
		p.model.learn(c, s, votes[:], cands)
		p.assign(c, s, 1, true)
		return
	}
	val := p.valueScores(c, cands)
	scores := make([]float64, n)
	var llrs [numRules]float64
	for i, s := range cands {
		// Rules that agree are not independent witnesses (they often
		// read the same recent event): the strongest counts fully, the
		// next ones less and less.
		k := 0
		for r, v := range votes {
			if v == s {
				llrs[k] = p.model.ruleLLR(r, n)
				k++
			}
		}
		sort.Float64s(llrs[:k])
		sc, w := val[i], 1.0
		for j := k - 1; j >= 0; j-- {
			sc += w * llrs[j]
			w /= 2
		}
		sc += p.model.affinity(s, c) + p.model.moreCalls(s, c)
		scores[i] = sc
	}
	bi := 0
	for i := range scores {
		if scores[i] > scores[bi] || scores[i] == scores[bi] && cands[i].start > cands[bi].start {
			bi = i
		}
	}
	// Confidence: the winner's share of the softmax.
	var z float64
	for _, sc := range scores {
		z += math.Exp(sc - scores[bi])
	}
	conf := 1 / z
	s := cands[bi]
	if p.explain != nil {
		e := Explanation{Call: c.span.SpanID, Op: c.op, Tokens: c.tokens, Chosen: s.id, Confidence: conf}
		for i, k := range cands {
			ce := CandidateScore{SpanID: k.id, Op: k.op, Start: k.start, Score: scores[i], Value: val[i], Affinity: p.model.affinity(k, c) + p.model.moreCalls(k, c)}
			for r, v := range votes {
				if v == k {
					ce.Rules = append(ce.Rules, ruleNames[r])
				}
			}
			e.Candidates = append(e.Candidates, ce)
		}
		p.explain(e)
	}
	// An anchor: the content names the parent alone.
	vi, vmax, vties := 0, 0.0, 0
	for i, v := range val {
		if v > vmax {
			vi, vmax, vties = i, v, 1
		} else if v == vmax && v > 0 {
			vties++
		}
	}
	anchor := vmax >= valueAnchor && vties == 1 && vi == bi
	if anchor {
		p.model.learn(c, s, votes[:], cands)
	} else if conf > 0.98 {
		p.model.learnShape(c, s)
	}
	p.assign(c, s, conf, anchor || conf > 0.98)
}

// valueScores is the log-likelihood ratio, per candidate, of the ids the
// call shares with it: each token weighs by its class and by how few
// candidates share it; an id shared by one candidate alone is near proof.

func (p *proc) valueScores(c *client, cands []*server) []float64 {
	out := make([]float64, len(cands))
	if len(c.tokens) == 0 {
		return out
	}
	n := float64(len(cands))
	// A request's own ids weigh fully; ids it adopted from its calls
	// (which may come from their responses) half.
	share := func(s *server, t string) float64 {
		if hasToken(s.tokens, t) {
			return 1
		}
		if hasToken(s.adopted, t) {
			return 0.5
		}
		return 0
	}
	for _, t := range c.tokens {
		df := 0
		for _, s := range cands {
			if share(s, t) > 0 {
				df++
			}
		}
		if df == 0 || df == len(cands) {
			continue
		}
		w := tokenWeight(t) * (math.Log(n/float64(df)) + 8/float64(df))
		for i, s := range cands {
			out[i] += w * share(s, t)
		}
	}
	// The ids of one exchange are not independent witnesses (a list of
	// SKUs, a key and its parts): their evidence saturates, so that when
	// two requests share the call's content, execution context decides.
	for i := range out {
		out[i] = min(out[i], maxValueScore)
	}
	return out
}

// binding is the request goroutine g was working for at t: one whose first
// bytes it read, or, for a goroutine started by another, what its creator
// was working for when it started it. A request that is over binds
// nothing.
func (p *proc) binding(g uint64, t int64, depth int) *server {
	gr := p.gor[g]
	if gr == nil || depth > 8 {
		return nil
	}
	if s := p.ownRequest(gr, t); s != nil {
		if s.contains(t) {
			return s
		}
		return nil
	}
	if gr.parent != 0 && gr.created != 0 && gr.created <= t {
		if s := p.binding(gr.parent, gr.created, depth+1); s != nil && s.contains(t) {
			return s
		}
	}
	return nil
}

// ownRequest is the latest request gr read at or before t. When one read
// carried several requests (HTTP/2 streams), a dispatching reader starts
// one goroutine per request in order: the k-th creation since the read
// goes with the k-th request.
func (p *proc) ownRequest(gr *goroutine, t int64) *server {
	i := len(gr.reqs)
	for i > 0 && gr.reqs[i-1].start > t {
		i--
	}
	if i == 0 {
		return nil
	}
	last := gr.reqs[i-1]
	j := i - 1
	for j > 0 && gr.reqs[j-1].start == last.start {
		j--
	}
	if j == i-1 {
		return last
	}
	k := 0
	for _, ct := range gr.creations {
		if ct >= last.start && ct <= t {
			k++
		}
	}
	if k == 0 {
		k = 1
	}
	return gr.reqs[min(j+k-1, i-1)]
}

// resolve is the request a timeline mark says was running.
func (p *proc) resolve(m *mark) *server {
	switch m.kind {
	case markReqRead:
		return m.srv
	case markCallWrite, markCallRead:
		if m.cli.decided {
			return m.cli.parent
		}
		return nil
	case markGoCreate, markGoRun:
		return p.binding(m.g, m.t, 0)
	}
	return nil
}

// threadContext walks the call's thread back from its write to the latest
// mark that names a request still in progress: the request read just
// before, the call whose answer was just read, the goroutine that ran or
// started another just before.
func (p *proc) threadContext(pt point) *server {
	tl := p.threads[pt.tid]
	if tl == nil {
		return nil
	}
	i := tl.before(pt.t)
	for j, n := i-1, 0; j >= 0 && n < lookbackMarks; j, n = j-1, n+1 {
		m := &tl.marks[j]
		if pt.t-m.t > lookbackNs {
			break
		}
		if pt.self != nil && (m.cli == pt.self || m.srv == pt.self) {
			continue
		}
		if s := p.resolve(m); s != nil && s.contains(pt.t) {
			return s
		}
	}
	return nil
}

// point is where a write happened: a call's request, or (for learning) a
// response whose request is known.
type point struct {
	t    int64
	tid  uint32
	g    uint64
	self any // the call or request itself, whose own marks say nothing
	call *client
}

func callPoint(c *client) point {
	return point{t: c.reqStart, tid: c.tid, g: c.goid, self: c, call: c}
}

// lineage is the request the call's own goroutine works for.
func (p *proc) lineage(pt point) *server {
	if pt.g == 0 {
		return nil
	}
	return p.binding(pt.g, pt.t, 0)
}

// runnable models an event loop: a request acts (writes) only after
// something woke it (its request was read, or the answer of its last call);
// the loop runs woken tasks in the order they were woken. The vote is the
// candidate woken earliest that has not acted since.
func (p *proc) runnable(pt point, cands []*server) *server {
	var best *server
	var bestWake int64
	t := pt.t
	for _, s := range cands {
		if s.tid != pt.tid {
			continue
		}
		wake, ok := s.start, true
		for _, k := range s.calls {
			if k.reqStart >= t {
				break
			}
			if k == pt.call {
				continue
			}
			if k.respAt == 0 || k.respAt > t {
				ok = false // waiting for this call's answer
				break
			}
			wake = k.respAt
		}
		if !ok {
			continue
		}
		if best == nil || wake < bestWake {
			best, bestWake = s, wake
		}
	}
	return best
}

// nextResponse models a thread per request: the request a thread works on
// is the one whose response it writes next.
func (p *proc) nextResponse(c *client, cands []*server) *server {
	var best *server
	for _, s := range cands {
		if !s.done || s.respTID != c.tid || s.respAt < c.reqStart {
			continue
		}
		if best == nil || s.respAt < best.respAt {
			best = s
		}
	}
	return best
}

// learnFromResponses uses the responses written before t as anchors: a
// response is a write whose request is known, so some context rules can be
// checked on it the way they will be used on calls, without any shared
// ids. Only lineage and the event-loop order: the next-response rule is
// trivially right there, the thread and recency rules flatter themselves
// (a response follows its own request's last read on the same thread, and
// comes late in its request's life, more often than a call does).
func (p *proc) learnFromResponses(t int64) {
	for len(p.responses) > 0 && p.responses[0].respAt < t {
		s := p.responses[0]
		p.responses = p.responses[1:]
		if s.respTID == 0 {
			continue
		}
		pt := point{t: s.respAt, tid: s.respTID, g: s.respGoID, self: s}
		var cands []*server
		for _, o := range p.inProgress(pt.t) {
			if o.done {
				cands = append(cands, o)
			}
		}
		if len(cands) < 2 {
			continue
		}
		var votes [numRules]*server
		votes[ruleLineage] = p.lineage(pt)
		votes[ruleRunnable] = p.runnable(pt, cands)
		p.model.learnRules(s, votes[:])
	}
}
