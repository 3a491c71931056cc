// Package assemble turns spans into traces, with no I/O: it joins the client
// and server spans of each exchange, attaches local parents, builds the
// trace forest, prunes the links that cannot be right and lays each tree out
// as a schemas.Trace.
//
// The links, in the order of the confidence they carry:
//
//   - tuple: a server span and a client span on the same normalised
//     connection with the same TCP sequence positions (confidence 1), or,
//     when either end lacks the positions, the same exchange sequence number
//     on that connection (0.95);
//   - tcpseq: the same request and response TCP sequence positions on
//     different tuples, which is what an address translation between the
//     two hosts leaves (0.9);
//   - local: the client span's ParentSpanID, chosen by the agent's local
//     correlation, with the confidence it gave.
//
// A candidate link is kept only when the child lies within its parent's
// time (a cross-host link allows Skew for the clocks of two hosts, a local
// link LocalSlack). Links are then taken greedily, most confident first:
// a span keeps one parent, an exchange's client span one server span, and a
// link that would close a cycle is refused. Whatever has no parent left is
// a root.
package assemble

import (
	"cmp"
	"slices"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
)

// Options tune assembly. The zero value uses the defaults.
type Options struct {
	// Skew is the clock difference allowed between two hosts when a
	// server span is checked against its client span (default 50ms).
	Skew time.Duration
	// LocalSlack is the tolerance when a client span is checked against
	// its local parent on the same host clock (default 1ms).
	LocalSlack time.Duration
	// Window and Margin set the trace horizon: a trace whose root starts
	// in a window (windows of length Window aligned as Time.Truncate
	// aligns them) holds the descendants that start up to Margin after
	// that window's end; a descendant starting later is cut from its
	// parent and roots a trace of its own. It is what makes one assembly
	// task per window see every span of the traces it owns. Zero Window:
	// no horizon.
	Window, Margin time.Duration
}

// Default options.
const (
	DefaultSkew       = 50 * time.Millisecond
	DefaultLocalSlack = time.Millisecond
)

func (o Options) withDefaults() Options {
	if o.Skew <= 0 {
		o.Skew = DefaultSkew
	}
	if o.LocalSlack <= 0 {
		o.LocalSlack = DefaultLocalSlack
	}
	return o
}

// Link confidences of the exchange joins.
const (
	ConfTupleTCP = 1.0
	ConfTupleSeq = 0.95
	ConfTCPSeq   = 0.9
	// ConfLocalUnset is used for a local parent the agent gave without a
	// confidence.
	ConfLocalUnset = 0.5
)

// Link kinds, as stored in TraceSpan.LinkKind.
const (
	kindNone uint8 = iota
	kindLocal
	kindTuple
	kindTCPSeq
)

func kindName(k uint8) string {
	switch k {
	case kindLocal:
		return schemas.LinkLocal
	case kindTuple:
		return schemas.LinkTuple
	case kindTCPSeq:
		return schemas.LinkTCPSeq
	}
	return ""
}

// Stats counts what one Build saw and decided.
type Stats struct {
	Spans      int // distinct spans assembled
	Duplicates int // input spans dropped because their id repeated
	Roots      int // trees in the forest

	TupleLinks  int
	TCPSeqLinks int
	LocalLinks  int
	// LocalMissing counts client spans whose local parent was named but
	// not among the input.
	LocalMissing int

	// Pruned links: a span offered a second parent (the less confident
	// lost), an exchange's client offered a second server span, a link
	// that would have closed a cycle, a child outside its parent's time.
	PrunedTwoParents int
	PrunedTwoServers int
	PrunedCycles     int
	PrunedTime       int
	// Horizon counts spans cut from their parent because they start past
	// their root window's end plus the margin.
	Horizon int
}

// Forest is the result of Build: every input span, its parent and the
// roots of the trees.
type Forest struct {
	// Spans are the distinct input spans (the first of each id), in input
	// order. They point into the slice given to Build.
	Spans []*schemas.Span
	// Parent[i] is the index of span i's parent, or -1 for a root.
	Parent []int32
	// Kind[i] is how span i's parent was found.
	Kind []uint8
	// Roots are the indices of the spans without a parent, in time order.
	Roots []int32
	Stats Stats

	// children in CSR form: the children of i are
	// child[childStart[i]:childStart[i+1]], in span order.
	childStart []int32
	child      []int32
}

// edge is a candidate parent link.
type edge struct {
	child, parent int32
	kind          uint8
	conf          float32
	// dt is how far the child's start is from the parent's, for ranking
	// equally confident candidates.
	dt int64
}

// portSeqKey narrows an exchange down by its ports and exchange number.
func portSeqKey(s *schemas.Span) uint64 {
	return uint64(s.ClientPort)<<48 | uint64(s.ServerPort)<<32 | s.Seq&0xffffffff
}

// TCPKey is the pair of TCP sequence positions of an exchange, the key that
// survives address translation; 0 means the span has none.
func TCPKey(s *schemas.Span) uint64 {
	return uint64(s.ReqTCPSeq)<<32 | uint64(s.RespTCPSeq)
}

// Build assembles spans into a forest. It keeps pointers into spans and
// does not modify them; the same input always gives the same forest.
func Build(spans []schemas.Span, opt Options) *Forest {
	opt = opt.withDefaults()
	f := &Forest{}
	n0 := len(spans)
	byID := make(map[string]int32, n0)
	f.Spans = make([]*schemas.Span, 0, n0)
	nClients := 0
	for i := range spans {
		s := &spans[i]
		if _, dup := byID[s.SpanID]; dup {
			f.Stats.Duplicates++
			continue
		}
		byID[s.SpanID] = int32(len(f.Spans))
		f.Spans = append(f.Spans, s)
		if s.Role == schemas.RoleClient {
			nClients++
		}
	}
	n := len(f.Spans)
	f.Stats.Spans = n
	sp := f.Spans
	// Client spans by TCP positions, and all of them by ports and
	// exchange number (a numeric key; candidates are checked against the
	// whole tuple).
	clientsTCP := make(map[uint64][]int32, nClients)
	clientsPort := make(map[uint64][]int32, nClients)
	for i, s := range sp {
		if s.Role != schemas.RoleClient {
			continue
		}
		if k := TCPKey(s); k != 0 {
			clientsTCP[k] = append(clientsTCP[k], int32(i))
		}
		k := portSeqKey(s)
		clientsPort[k] = append(clientsPort[k], int32(i))
	}

	skew := int64(opt.Skew)
	slack := int64(opt.LocalSlack)
	edges := make([]edge, 0, n)
	for i, s := range sp {
		switch s.Role {
		case schemas.RoleServer:
			// The exchange's client span: by TCP positions first (same
			// tuple or translated), then by exchange number on the tuple.
			offer := func(c int32, kind uint8, conf float32) {
				cs := sp[c]
				if s.StartNs < cs.StartNs-skew || s.EndNs > cs.EndNs+skew {
					f.Stats.PrunedTime++
					return
				}
				edges = append(edges, edge{child: int32(i), parent: c, kind: kind, conf: conf, dt: abs(s.StartNs - cs.StartNs)})
			}
			sk := TCPKey(s)
			exact := false
			if sk != 0 {
				for _, c := range clientsTCP[sk] {
					if sp[c].Conn == s.Conn {
						offer(c, kindTuple, ConfTupleTCP)
						exact = true
					} else {
						offer(c, kindTCPSeq, ConfTCPSeq)
					}
				}
			}
			// When either end lacks the positions, the tuple and the
			// exchange number still join them (never better than an
			// exact match, so not looked for after one).
			if exact {
				continue
			}
			for _, c := range clientsPort[portSeqKey(s)] {
				cs := sp[c]
				if cs.Conn == s.Conn && cs.Seq == s.Seq && (sk == 0 || TCPKey(cs) == 0) {
					offer(c, kindTuple, ConfTupleSeq)
				}
			}
		case schemas.RoleClient:
			if s.ParentSpanID == "" {
				continue
			}
			p, ok := byID[s.ParentSpanID]
			if !ok {
				f.Stats.LocalMissing++
				continue
			}
			ps := sp[p]
			if s.StartNs < ps.StartNs-slack || s.EndNs > ps.EndNs+slack {
				f.Stats.PrunedTime++
				continue
			}
			conf := float32(s.ParentConfidence)
			if conf <= 0 {
				conf = ConfLocalUnset
			}
			edges = append(edges, edge{child: int32(i), parent: p, kind: kindLocal, conf: conf, dt: s.StartNs - ps.StartNs})
		}
	}

	// Most confident first; among equals the closest in time; then by
	// span ids, so the same input in any order gives the same forest.
	slices.SortFunc(edges, func(a, b edge) int {
		if c := cmp.Compare(b.conf, a.conf); c != 0 {
			return c
		}
		if c := cmp.Compare(a.dt, b.dt); c != 0 {
			return c
		}
		if a.child != b.child {
			if c := cmp.Compare(sp[a.child].SpanID, sp[b.child].SpanID); c != 0 {
				return c
			}
		}
		return cmp.Compare(sp[a.parent].SpanID, sp[b.parent].SpanID)
	})

	f.Parent = make([]int32, n)
	f.Kind = make([]uint8, n)
	set := make([]int32, n) // union-find over trees
	for i := range f.Parent {
		f.Parent[i] = -1
		set[i] = int32(i)
	}
	served := make([]bool, n) // client spans already joined to a server span
	for _, e := range edges {
		if f.Parent[e.child] >= 0 {
			f.Stats.PrunedTwoParents++
			continue
		}
		if e.kind != kindLocal && served[e.parent] {
			f.Stats.PrunedTwoServers++
			continue
		}
		// The child is a tree's root (it has no parent yet); linking it
		// under a span of its own tree closes a cycle.
		if find(set, e.parent) == find(set, e.child) {
			f.Stats.PrunedCycles++
			continue
		}
		f.Parent[e.child] = e.parent
		f.Kind[e.child] = e.kind
		set[find(set, e.child)] = find(set, e.parent)
		switch e.kind {
		case kindLocal:
			f.Stats.LocalLinks++
		case kindTuple:
			f.Stats.TupleLinks++
			served[e.parent] = true
		case kindTCPSeq:
			f.Stats.TCPSeqLinks++
			served[e.parent] = true
		}
	}

	f.link()
	if opt.Window > 0 && f.cutAtHorizon(opt) {
		f.link()
	}
	f.Stats.Roots = len(f.Roots)
	return f
}

// link builds the children lists (CSR, each in time order) and the roots
// from Parent.
func (f *Forest) link() {
	n := len(f.Spans)
	sp := f.Spans
	f.Roots = f.Roots[:0]
	// Children lists (CSR), each in time order.
	f.childStart = make([]int32, n+1)
	for i := range n {
		if p := f.Parent[i]; p >= 0 {
			f.childStart[p+1]++
		} else {
			f.Roots = append(f.Roots, int32(i))
		}
	}
	for i := range n {
		f.childStart[i+1] += f.childStart[i]
	}
	f.child = make([]int32, f.childStart[n])
	fill := slices.Clone(f.childStart[:n])
	for i := range n {
		if p := f.Parent[i]; p >= 0 {
			f.child[fill[p]] = int32(i)
			fill[p]++
		}
	}
	byTime := func(a, b int32) int {
		if c := cmp.Compare(sp[a].StartNs, sp[b].StartNs); c != 0 {
			return c
		}
		return cmp.Compare(sp[a].SpanID, sp[b].SpanID)
	}
	for i := range n {
		if ch := f.child[f.childStart[i]:f.childStart[i+1]]; len(ch) > 1 {
			slices.SortFunc(ch, byTime)
		}
	}
	slices.SortFunc(f.Roots, byTime)
}

// cutAtHorizon cuts, top down, every span that starts past the horizon of
// its tree's root (the root window's end plus the margin); a cut span roots
// its own tree and horizon. It reports whether it cut anything.
func (f *Forest) cutAtHorizon(opt Options) bool {
	horizon := make([]int64, len(f.Spans)) // of each span's (possibly cut) root
	queue := make([]int32, 0, len(f.Spans))
	for _, r := range f.Roots {
		horizon[r] = HorizonOf(f.Spans[r].StartNs, opt.Window, opt.Margin)
		queue = append(queue, r)
	}
	cut := false
	for k := 0; k < len(queue); k++ {
		p := queue[k]
		for _, c := range f.Children(p) {
			if f.Spans[c].StartNs > horizon[p] {
				f.Parent[c] = -1
				f.Kind[c] = kindNone
				f.Stats.Horizon++
				cut = true
				horizon[c] = HorizonOf(f.Spans[c].StartNs, opt.Window, opt.Margin)
			} else {
				horizon[c] = horizon[p]
			}
			queue = append(queue, c)
		}
	}
	return cut
}

// HorizonOf is the latest start (ns) of a span in the trace of a root
// starting at rootStart: the end of the root's window plus the margin.
func HorizonOf(rootStart int64, window, margin time.Duration) int64 {
	ws := time.Unix(0, rootStart).UTC().Truncate(window)
	return ws.Add(window + margin).UnixNano()
}

func find(set []int32, x int32) int32 {
	for set[x] != x {
		set[x] = set[set[x]]
		x = set[x]
	}
	return x
}

func abs(x int64) int64 {
	if x < 0 {
		return -x
	}
	return x
}

// Children returns the children of span i, in time order. The slice is
// the forest's; do not modify it.
func (f *Forest) Children(i int32) []int32 {
	return f.child[f.childStart[i]:f.childStart[i+1]]
}

// Tree returns the spans of the tree rooted at root in depth-first
// preorder, with the depth of each.
func (f *Forest) Tree(root int32, order []int32, depth []int) ([]int32, []int) {
	order, depth = order[:0], depth[:0]
	type item struct {
		i int32
		d int
	}
	stack := []item{{root, 0}}
	for len(stack) > 0 {
		it := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		order = append(order, it.i)
		depth = append(depth, it.d)
		ch := f.Children(it.i)
		for k := len(ch) - 1; k >= 0; k-- {
			stack = append(stack, item{ch[k], it.d + 1})
		}
	}
	return order, depth
}

// Trace lays out the tree rooted at root as a trace document, stamped with
// the window that assembled it and when.
func (f *Forest) Trace(root int32, window, assembledAt time.Time) schemas.Trace {
	order, depth := f.Tree(root, nil, nil)
	t := schemas.Trace{Window: window.UTC(), AssembledAt: assembledAt.UTC(), Spans: make([]schemas.TraceSpan, len(order))}
	for k, i := range order {
		ts := &t.Spans[k]
		ts.Span = *f.Spans[i]
		ts.Depth = depth[k]
		if p := f.Parent[i]; p >= 0 {
			ts.TraceParentID = f.Spans[p].SpanID
			ts.LinkKind = kindName(f.Kind[i])
		}
	}
	t.Summarize(f.Spans[root])
	return t
}

// Size returns the number of spans in the tree rooted at root.
func (f *Forest) Size(root int32) int {
	n := 0
	stack := []int32{root}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		n++
		stack = append(stack, f.Children(i)...)
	}
	return n
}
