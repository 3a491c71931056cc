package sample

import (
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"

	"github.com/deeptrace/deeptrace/schemas"
)

func server(service string, i int) schemas.Span {
	return schemas.Span{SpanID: fmt.Sprintf("%016x", uint64(i)*0x9e3779b97f4a7c15), Role: schemas.RoleServer, Service: service}
}

// The kept fraction is the rate; a client span follows the decision of
// the server span that is its local parent; other services keep the
// default rate; the rates change while spans flow.
func TestRatesAndInheritance(t *testing.T) {
	var s Sampler
	if err := s.Set(Rates{Default: 1, Services: map[string]float64{"gw": 0.25}}); err != nil {
		t.Fatal(err)
	}
	const n = 40000
	kept, followed, other := 0, 0, 0
	for i := range n {
		srv := server("gw", i)
		k := s.Keep(&srv)
		if k {
			kept++
			if srv.SampleRate != 0.25 {
				t.Fatalf("a span kept at 0.25 carries sample rate %v", srv.SampleRate)
			}
		}
		for j := range 3 {
			cl := schemas.Span{SpanID: fmt.Sprintf("c%d-%d", i, j), Role: schemas.RoleClient, Service: "gw", ParentSpanID: srv.SpanID}
			if s.Keep(&cl) == k {
				followed++
			}
		}
		b := server("backend", i)
		if s.Keep(&b) {
			other++
			if b.SampleRate != 0 {
				t.Fatalf("a span of a service kept whole carries sample rate %v", b.SampleRate)
			}
		}
	}
	if f := float64(kept) / n; math.Abs(f-0.25) > 0.01 {
		t.Errorf("kept %.4f of gw's requests, want 0.25±0.01", f)
	}
	if followed != 3*n {
		t.Errorf("%d of %d client spans did not follow their parent's decision", 3*n-followed, 3*n)
	}
	if other != n {
		t.Errorf("backend (default rate 1): kept %d of %d", other, n)
	}
	// A client span without a local parent (a trace root) is decided on
	// its own id, at its service's rate.
	roots := 0
	for i := range n {
		cl := schemas.Span{SpanID: fmt.Sprintf("root-%d", i), Role: schemas.RoleClient, Service: "gw"}
		if s.Keep(&cl) {
			roots++
		}
	}
	if f := float64(roots) / n; math.Abs(f-0.25) > 0.01 {
		t.Errorf("kept %.4f of gw's own calls, want 0.25±0.01", f)
	}
	// Same span, same decision (a replay, a restart).
	for i := range 100 {
		a, b := server("gw", i), server("gw", i)
		if s.Keep(&a) != s.Keep(&b) {
			t.Fatal("decision not deterministic")
		}
	}
	// A lower rate keeps a subset of what a higher one kept.
	if err := s.Set(Rates{Default: 0.1}); err != nil {
		t.Fatal(err)
	}
	var low Sampler
	low.Set(Rates{Default: 0.05})
	for i := range n {
		sp := server("x", i)
		if low.Keep(&sp) && !s.Keep(&sp) {
			t.Fatal("a span kept at rate 0.05 dropped at 0.1")
		}
	}
	// Back to everything.
	if err := s.Set(Rates{}); err != nil {
		t.Fatal(err)
	}
	for i := range 1000 {
		sp := server("gw", i)
		if !s.Keep(&sp) {
			t.Fatal("rate 1 dropped a span")
		}
	}
}

func TestInvalidRatesRefused(t *testing.T) {
	var s Sampler
	if err := s.Set(Rates{Default: 0.5}); err != nil {
		t.Fatal(err)
	}
	for _, r := range []Rates{{Default: 1.5}, {Default: -0.1}, {Services: map[string]float64{"a": 0}}, {Services: map[string]float64{"a": 2}}, {Services: map[string]float64{"": 0.5}}} {
		if err := s.Set(r); err == nil {
			t.Errorf("%+v accepted", r)
		}
	}
	kept := 0
	for i := range 10000 {
		sp := server("a", i)
		if s.Keep(&sp) {
			kept++
		}
	}
	if kept < 4700 || kept > 5300 {
		t.Errorf("after refused rates, kept %d of 10000, want the old rate 0.5", kept)
	}
}

// BenchmarkKeep is the per-span cost on the agent's output path.
func BenchmarkKeep(b *testing.B) {
	var s Sampler
	s.Set(Rates{Default: 1, Services: map[string]float64{"gw": 0.1}})
	spans := make([]schemas.Span, 1024)
	for i := range spans {
		spans[i] = server("gw", i)
	}
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		s.Keep(&spans[i&1023])
	}
}

type progressOut struct{ w int64 }

func (p *progressOut) Add(schemas.Span) {}
func (p *progressOut) Progress(w int64) { p.w = w }

// The sampler's output passes the pipeline's progress on to the exporter.
func TestOutputPassesProgressOn(t *testing.T) {
	next := &progressOut{}
	out := (&Sampler{}).Output(next)
	p, ok := out.(interface{ Progress(int64) })
	if !ok {
		t.Fatal("the sampled output drops the pipeline's progress")
	}
	p.Progress(42)
	if next.w != 42 {
		t.Fatalf("progress %d reached the next output, want 42", next.w)
	}
}

func TestValidateNamesEveryBadRate(t *testing.T) {
	err := Rates{Default: 2, Services: map[string]float64{"a": 0, "b": 0.5, "": 1}}.Validate()
	var re *RateError
	if !errors.As(err, &re) || !re.Default || re.Rate != 2 {
		t.Fatalf("first error %v, want the default rate's", err)
	}
	for _, want := range []string{"sampling rate 2: want 0..1", `sampling rate of service "a" 0: want more than 0`, "sampling: a service name is required"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q, want it to contain %q", err, want)
		}
	}
	if strings.Contains(err.Error(), `"b"`) {
		t.Errorf("error %q names the valid rate of b", err)
	}
	if err := (Rates{Services: map[string]float64{"a": 1}}).Validate(); err != nil {
		t.Errorf("valid rates: %v", err)
	}
}
