package assemble_test

import (
	"math/rand/v2"
	"testing"
	"time"

	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/worker/assemble"
	"github.com/deeptrace/deeptrace/worker/assemble/assembletest"
)

var window = time.Date(2026, 11, 25, 10, 0, 0, 0, time.UTC)

// Every generated trace comes out whole, with the right tree and valid,
// however the input is ordered.
func TestSyntheticTracesAssembleExactly(t *testing.T) {
	set := assembletest.Generate(assembletest.Config{Traces: 500, Start: window, Seed: 7})
	for _, shuffle := range []bool{false, true} {
		spans := append([]schemas.Span(nil), set.Spans...)
		if shuffle {
			rand.New(rand.NewPCG(1, 2)).Shuffle(len(spans), func(i, j int) { spans[i], spans[j] = spans[j], spans[i] })
		}
		f := assemble.Build(spans, assemble.Options{})
		if len(f.Roots) != len(set.Roots) {
			t.Fatalf("shuffle=%v: %d roots, want %d (stats %+v)", shuffle, len(f.Roots), len(set.Roots), f.Stats)
		}
		seen := 0
		for _, r := range f.Roots {
			tr := f.Trace(r, window, window)
			if err := set.CheckTrace(&tr); err != nil {
				t.Fatalf("shuffle=%v: %v", shuffle, err)
			}
			if err := assemble.Validate(&tr, assemble.Options{}); err != nil {
				t.Fatal(err)
			}
			seen += len(tr.Spans)
		}
		if seen != len(set.Spans) {
			t.Fatalf("traces hold %d spans, want %d", seen, len(set.Spans))
		}
		st := f.Stats
		if st.TCPSeqLinks == 0 || st.TupleLinks == 0 || st.LocalLinks == 0 {
			t.Fatalf("generator did not exercise every link kind: %+v", st)
		}
		if st.PrunedCycles+st.PrunedTwoParents+st.PrunedTwoServers+st.PrunedTime != 0 {
			t.Fatalf("clean input pruned links: %+v", st)
		}
	}
}

// span builds a span for the table tests.
func span(host string, role schemas.Role, c schemas.Conn, seq uint64, req, rsp uint32, start, end int64) schemas.Span {
	s := schemas.Span{Role: role, Host: host, Service: host, Conn: c, Seq: seq, ReqTCPSeq: req, RespTCPSeq: rsp,
		StartNs: window.UnixNano() + start*int64(time.Millisecond), EndNs: window.UnixNano() + end*int64(time.Millisecond)}
	s.SpanID = schemas.SpanID(host, c, seq, req, role)
	s.Finish()
	return s
}

func local(child schemas.Span, parent schemas.Span, conf float64) schemas.Span {
	child.ParentSpanID = parent.SpanID
	child.ParentConfidence = conf
	return child
}

var (
	direct = schemas.Conn{ClientIP: "10.0.0.1", ClientPort: 40000, ServerIP: "10.0.0.2", ServerPort: 8080}
	viaVIP = schemas.Conn{ClientIP: "10.0.0.1", ClientPort: 40000, ServerIP: "10.96.0.10", ServerPort: 80}
	other  = schemas.Conn{ClientIP: "10.0.0.3", ClientPort: 41000, ServerIP: "10.0.0.2", ServerPort: 8080}
)

func TestLinks(t *testing.T) {
	gwIn := span("gw", schemas.RoleServer, schemas.Conn{ClientIP: "1.1.1.1", ClientPort: 1, ServerIP: "10.0.0.1", ServerPort: 80}, 0, 0, 0, 0, 100)
	cases := []struct {
		name string
		in   []schemas.Span
		// parents maps the index of each span to the index of its
		// expected parent (-1 for a root).
		parents []int
		kinds   []string
		check   func(t *testing.T, st assemble.Stats)
	}{
		{
			name:    "same tuple and TCP positions",
			in:      []schemas.Span{gwIn, local(span("gw", schemas.RoleClient, direct, 3, 1000, 5000, 10, 50), gwIn, 0.9), span("be", schemas.RoleServer, direct, 3, 1000, 5000, 11, 49)},
			parents: []int{-1, 0, 1},
			kinds:   []string{"", schemas.LinkLocal, schemas.LinkTuple},
		},
		{
			name:    "DNAT: VIP at the client, pod at the server, same TCP positions",
			in:      []schemas.Span{gwIn, local(span("gw", schemas.RoleClient, viaVIP, 0, 1000, 5000, 10, 50), gwIn, 0.9), span("be", schemas.RoleServer, direct, 0, 1000, 5000, 11, 49)},
			parents: []int{-1, 0, 1},
			kinds:   []string{"", schemas.LinkLocal, schemas.LinkTCPSeq},
		},
		{
			name:    "no TCP positions: tuple and exchange number",
			in:      []schemas.Span{span("gw", schemas.RoleClient, direct, 7, 0, 0, 10, 50), span("be", schemas.RoleServer, direct, 7, 0, 0, 11, 49), span("be", schemas.RoleServer, direct, 8, 0, 0, 60, 70)},
			parents: []int{-1, 0, -1},
			kinds:   []string{"", schemas.LinkTuple, ""},
		},
		{
			name:    "positions at one end only",
			in:      []schemas.Span{span("gw", schemas.RoleClient, direct, 7, 1000, 5000, 10, 50), span("be", schemas.RoleServer, direct, 7, 0, 0, 11, 49)},
			parents: []int{-1, 0},
			kinds:   []string{"", schemas.LinkTuple},
		},
		{
			name: "server outside its client's time is not joined",
			in:   []schemas.Span{span("gw", schemas.RoleClient, direct, 3, 1000, 5000, 10, 50), span("be", schemas.RoleServer, direct, 3, 1000, 5000, 200, 300)},
			// Beyond the 50ms skew: the server span stands alone.
			parents: []int{-1, -1},
			check: func(t *testing.T, st assemble.Stats) {
				if st.PrunedTime != 1 {
					t.Errorf("pruned time %d, want 1", st.PrunedTime)
				}
			},
		},
		{
			name:    "local child outside its parent's time is cut off",
			in:      []schemas.Span{gwIn, local(span("gw", schemas.RoleClient, direct, 3, 1000, 5000, 90, 150), gwIn, 1)},
			parents: []int{-1, -1},
		},
		{
			name: "two client spans claim one server span: the more confident link wins",
			// A tuple match (1.0) and a translated-tuple match (0.9) with
			// the same TCP positions.
			in:      []schemas.Span{span("gw", schemas.RoleClient, direct, 3, 1000, 5000, 10, 50), span("x", schemas.RoleClient, viaVIP, 3, 1000, 5000, 10, 50), span("be", schemas.RoleServer, direct, 3, 1000, 5000, 11, 49)},
			parents: []int{-1, -1, 0},
			check: func(t *testing.T, st assemble.Stats) {
				if st.PrunedTwoParents != 1 {
					t.Errorf("two-parent prunes %d, want 1", st.PrunedTwoParents)
				}
			},
		},
		{
			name: "one client span claimed by two server spans: the closer in time wins",
			in: []schemas.Span{span("gw", schemas.RoleClient, viaVIP, 3, 1000, 5000, 10, 50),
				span("be", schemas.RoleServer, direct, 3, 1000, 5000, 20, 40), span("be2", schemas.RoleServer, other, 3, 1000, 5000, 11, 49)},
			parents: []int{-1, -1, 0},
			check: func(t *testing.T, st assemble.Stats) {
				if st.PrunedTwoServers != 1 {
					t.Errorf("two-server prunes %d, want 1", st.PrunedTwoServers)
				}
			},
		},
		{
			name:    "local parent missing from the input: the client span is a root",
			in:      []schemas.Span{local(span("gw", schemas.RoleClient, direct, 3, 1000, 5000, 10, 50), span("gw", schemas.RoleServer, other, 0, 0, 0, 0, 100), 1)},
			parents: []int{-1},
			check: func(t *testing.T, st assemble.Stats) {
				if st.LocalMissing != 1 {
					t.Errorf("local missing %d", st.LocalMissing)
				}
			},
		},
		{
			name:    "duplicate span ids count once",
			in:      []schemas.Span{gwIn, gwIn, local(span("gw", schemas.RoleClient, direct, 3, 1000, 5000, 10, 50), gwIn, 0.9), span("be", schemas.RoleServer, direct, 3, 1000, 5000, 11, 49)},
			parents: []int{-1, -1, 0, 2}, // index 1 is the duplicate, never checked
			check: func(t *testing.T, st assemble.Stats) {
				if st.Duplicates != 1 || st.Spans != 3 {
					t.Errorf("stats %+v", st)
				}
			},
		},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			f := assemble.Build(c.in, assemble.Options{})
			idx := map[string]int32{}
			for i := range f.Spans {
				idx[f.Spans[i].SpanID] = int32(i)
			}
			for i, want := range c.parents {
				if i > 0 && c.in[i].SpanID == c.in[i-1].SpanID {
					continue
				}
				got := f.Parent[idx[c.in[i].SpanID]]
				wantIdx := int32(-1)
				if want >= 0 {
					wantIdx = idx[c.in[want].SpanID]
				}
				if got != wantIdx {
					t.Errorf("span %d: parent %d, want %d (stats %+v)", i, got, wantIdx, f.Stats)
				}
			}
			for _, r := range f.Roots {
				tr := f.Trace(r, window, window)
				if err := assemble.Validate(&tr, assemble.Options{}); err != nil {
					t.Errorf("invalid trace: %v", err)
				}
				for _, ts := range tr.Spans {
					for i, k := range c.kinds {
						if c.in[i].SpanID == ts.SpanID && ts.LinkKind != k {
							t.Errorf("span %d link %q, want %q", i, ts.LinkKind, k)
						}
					}
				}
			}
			if c.check != nil {
				c.check(t, f.Stats)
			}
		})
	}
}

// Links that would close a loop are refused: a chain of exchanges that
// comes back to its start (bogus positions, a port reused in a loop) still
// yields a tree.
func TestCycleRefused(t *testing.T) {
	c1 := schemas.Conn{ClientIP: "10.0.0.1", ClientPort: 1, ServerIP: "10.0.0.2", ServerPort: 80}
	c2 := schemas.Conn{ClientIP: "10.0.0.2", ClientPort: 2, ServerIP: "10.0.0.1", ServerPort: 80}
	// Host a: server P1 (called on c2), client C1 (calls on c1) under P1.
	// Host b: server P2 (called on c1), client C2 (calls on c2) under P2.
	p1 := span("a", schemas.RoleServer, c2, 0, 200, 300, 0, 100)
	p2 := span("b", schemas.RoleServer, c1, 0, 100, 400, 0, 100)
	cl1 := local(span("a", schemas.RoleClient, c1, 0, 100, 400, 0, 100), p1, 0.9)
	cl2 := local(span("b", schemas.RoleClient, c2, 0, 200, 300, 0, 100), p2, 0.8)
	f := assemble.Build([]schemas.Span{p1, p2, cl1, cl2}, assemble.Options{})
	if f.Stats.PrunedCycles != 1 || len(f.Roots) != 1 {
		t.Fatalf("roots %d, stats %+v; want one root after one refused link", len(f.Roots), f.Stats)
	}
	tr := f.Trace(f.Roots[0], window, window)
	if err := assemble.Validate(&tr, assemble.Options{}); err != nil || len(tr.Spans) != 4 {
		t.Fatalf("trace of %d spans: %v", len(tr.Spans), err)
	}
	// The least confident link is the one refused: C2's local parent.
	for _, s := range tr.Spans {
		if s.SpanID == cl2.SpanID && s.TraceParentID != "" {
			t.Fatalf("C2 kept parent %s; the 0.8 local link should have been refused", s.TraceParentID)
		}
	}
}

// FuzzBuild holds Build to its invariants on arbitrary span sets: every
// span in exactly one valid trace.
func FuzzBuild(f *testing.F) {
	f.Add(uint64(1), uint8(20))
	f.Add(uint64(99), uint8(200))
	f.Fuzz(func(t *testing.T, seed uint64, n uint8) {
		rng := rand.New(rand.NewPCG(seed, 3))
		conns := []schemas.Conn{direct, viaVIP, other}
		var spans []schemas.Span
		for i := 0; i < int(n); i++ {
			role := schemas.RoleServer
			if rng.IntN(2) == 0 {
				role = schemas.RoleClient
			}
			st := rng.Int64N(100)
			s := span([]string{"a", "b", "c"}[rng.IntN(3)], role, conns[rng.IntN(3)], uint64(rng.IntN(3)),
				uint32(rng.IntN(3)*1000), uint32(rng.IntN(2)*5000), st, st+rng.Int64N(100))
			if role == schemas.RoleClient && len(spans) > 0 && rng.IntN(3) > 0 {
				s = local(s, spans[rng.IntN(len(spans))], rng.Float64())
			}
			spans = append(spans, s)
		}
		fo := assemble.Build(spans, assemble.Options{})
		total := 0
		for _, r := range fo.Roots {
			tr := fo.Trace(r, window, window)
			if err := assemble.Validate(&tr, assemble.Options{}); err != nil {
				t.Fatal(err)
			}
			total += len(tr.Spans)
		}
		if total != fo.Stats.Spans {
			t.Fatalf("traces hold %d of %d spans", total, fo.Stats.Spans)
		}
	})
}

// A trace holds what starts up to the margin past its root window's end;
// what starts later roots a trace of its own (and its own horizon).
func TestHorizonCut(t *testing.T) {
	at := func(sec float64) int64 { return int64(sec * 1000) } // ms offsets for span()
	root := span("gw", schemas.RoleServer, schemas.Conn{ClientIP: "1.1.1.1", ClientPort: 1, ServerIP: "10.0.0.1", ServerPort: 80}, 0, 0, 0, at(30), at(100))
	c1 := local(span("gw", schemas.RoleClient, direct, 0, 1000, 5000, at(64), at(99)), root, 1) // 10:01:04, inside 10:01:10
	s1 := span("be", schemas.RoleServer, direct, 0, 1000, 5000, at(64.001), at(98.9))           // joins c1
	c2 := local(span("be", schemas.RoleClient, other, 0, 2000, 6000, at(75), at(90)), s1, 1)    // 10:01:15: past the horizon
	s2 := span("db", schemas.RoleServer, other, 0, 2000, 6000, at(75.001), at(89))              // under c2
	opt := assemble.Options{Window: time.Minute, Margin: 10 * time.Second}
	f := assemble.Build([]schemas.Span{root, c1, s1, c2, s2}, opt)
	if len(f.Roots) != 2 || f.Stats.Horizon != 1 {
		t.Fatalf("roots %d, stats %+v; want the trace cut in two at c2", len(f.Roots), f.Stats)
	}
	sizes := map[string]int{}
	for _, r := range f.Roots {
		tr := f.Trace(r, window, window)
		if err := assemble.Validate(&tr, opt); err != nil {
			t.Fatal(err)
		}
		sizes[tr.RootSpanID] = len(tr.Spans)
	}
	if sizes[root.SpanID] != 3 || sizes[c2.SpanID] != 2 {
		t.Fatalf("trace sizes %v", sizes)
	}
	// Without a horizon it is one trace.
	if f := assemble.Build([]schemas.Span{root, c1, s1, c2, s2}, assemble.Options{}); len(f.Roots) != 1 {
		t.Fatalf("no horizon: %d roots", len(f.Roots))
	}
}
