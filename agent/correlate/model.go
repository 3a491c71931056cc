package correlate

import "math"

// model is what one process has taught correlation: how often each context
// rule named the right request when the answer was known (calls with one
// candidate, or whose ids name one request alone), and which operations
// call which (API affinity).
type model struct {
	hits, votes [numRules]float64
	// pair counts confident (parent op, call op) pairs; parentOps the
	// parent ops seen.
	pair      map[[2]string]float64
	parentOps map[string]float64
	callOps   map[string]bool
	learned   float64
	// counts[(parent op, call op)][k] counts finished requests that made
	// k such calls (k capped at maxCount): how many of a kind a request
	// makes.
	counts map[[2]string]*[maxCount + 1]float64
	// goroutines says the process is a Go program whose goroutines are
	// known: its threads say little, its goroutines' lineage much.
	goroutines bool
}

func newModel() model {
	return model{pair: map[[2]string]float64{}, parentOps: map[string]float64{}, callOps: map[string]bool{},
		counts: map[[2]string]*[maxCount + 1]float64{}}
}

// priors are the reliabilities assumed before the process has taught
// anything, as (hits, votes) pseudo-counts; goPriors for Go programs,
// where goroutines move between threads and a goroutine's lineage is
// the structural fact.
var priors = [numRules][2]float64{
	ruleThread:   {4, 5},
	ruleLineage:  {4, 5},
	ruleRunnable: {2, 5},
	ruleNextResp: {3, 5},
	ruleRecent:   {1, 5},
}

var goPriors = [numRules][2]float64{
	ruleThread:   {3, 5},
	ruleLineage:  {9, 10},
	ruleRunnable: {1, 5},
	ruleNextResp: {2, 5},
	ruleRecent:   {1, 5},
}

// reliability is the share of the rule's votes that were right.
func (m *model) reliability(r int) float64 {
	pr := priors[r]
	if m.goroutines {
		pr = goPriors[r]
	}
	return (m.hits[r] + pr[0]) / (m.votes[r] + pr[1])
}

// ruleLLR is the log-likelihood ratio of "the rule names this request"
// among n candidates: right with its reliability, else anyone of the
// other n-1. A rule no better than chance says nothing (it never counts
// against the request it names).
func (m *model) ruleLLR(r, n int) float64 {
	rel := min(max(m.reliability(r), 0.02), 0.998)
	return max(0, math.Log(rel*float64(n-1)/(1-rel)))
}

// decay keeps the model following the process as it changes.
const decay = 0.999

// learn records an anchor: s is c's parent for sure.
func (m *model) learn(c *client, s *server, votes []*server, cands []*server) {
	if len(cands) > 1 {
		m.learnRules(s, votes)
	}
	m.learnShape(c, s)
}

// learnRules scores the rules' votes against the known answer s.
func (m *model) learnRules(s *server, votes []*server) {
	for r, v := range votes {
		if v == nil {
			continue
		}
		m.votes[r] = m.votes[r]*decay + 1
		m.hits[r] *= decay
		if v == s {
			m.hits[r]++
		}
	}
}

// learnShape records which operation called which.
func (m *model) learnShape(c *client, s *server) {
	m.pair[[2]string{s.op, c.op}]++
	m.parentOps[s.op]++
	m.callOps[c.op] = true
	m.learned++
}

// affinity scores how usual it is for requests of s's operation to make a
// call like c: log P(call op | parent op), smoothed, and zero until the
// process has taught enough.
func (m *model) affinity(s *server, c *client) float64 {
	if m.learned < 50 {
		return 0
	}
	k := float64(len(m.callOps)) + 1
	p := (m.pair[[2]string{s.op, c.op}] + 0.1) / (m.parentOps[s.op] + 0.1*k)
	return max(math.Log(p), -4)
}

// maxCount caps the per-request call counts the model keeps.
const maxCount = 8

// learnCounts records, for a finished request, how many calls of each
// operation it made (operations it never called count as zero only once
// the pair is known).
func (m *model) learnCounts(s *server) {
	for op, k := range s.children {
		h := m.counts[[2]string{s.op, op}]
		if h == nil {
			h = &[maxCount + 1]float64{}
			m.counts[[2]string{s.op, op}] = h
		}
		h[min(k, maxCount)]++
	}
}

// moreCalls scores one more call of c's operation for s, which already
// made k of them: log P(count > k | count >= k). A request of a kind that
// always makes one such call does not make a second.
func (m *model) moreCalls(s *server, c *client) float64 {
	k := s.children[c.op]
	if k == 0 {
		return 0
	}
	h := m.counts[[2]string{s.op, c.op}]
	if h == nil {
		return 0
	}
	var atLeast, more float64
	for i := min(k, maxCount); i <= maxCount; i++ {
		atLeast += h[i]
		if i > k {
			more += h[i]
		}
	}
	if atLeast < 20 {
		return 0
	}
	return max(math.Log((more+0.5)/(atLeast+1)), -4)
}
