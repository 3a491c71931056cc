// Package eval measures local correlation against the workload's ground
// truth (docs/workload.md, "Ground truth: the contract"): it matches each
// truth record to the span the agent made of the same exchange (by
// connection ports and time), then scores the parent links the agent chose
// and the whole traces they add up to.
package eval

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
)

// Record is one line of a truth log: an incoming request ("in") or an
// outgoing call ("out").
type Record struct {
	Kind        string `json:"kind"`
	Service     string `json:"service"`
	ReqID       string `json:"req_id,omitempty"`
	CallID      string `json:"call_id,omitempty"`
	ParentReqID string `json:"parent_req_id,omitempty"`
	Target      string `json:"target,omitempty"`
	Proto       string `json:"proto"`
	Method      string `json:"method,omitempty"`
	Path        string `json:"path,omitempty"`
	RPC         string `json:"rpc,omitempty"`
	Key         string `json:"key,omitempty"`
	Op          string `json:"op,omitempty"`
	Local       string `json:"local"`
	Peer        string `json:"peer"`
	StartNs     int64  `json:"start_ns"`
	EndNs       int64  `json:"end_ns"`
	Pid         int    `json:"pid"`
	Tid         int    `json:"tid"`
	Status      int    `json:"status"`
	OK          bool   `json:"ok"`
	Error       string `json:"error,omitempty"`

	// Filled by Load: the in an out serves (same service), the outs an in
	// made, and across services the in an out caused.
	parent   *Record
	children []*Record
	callee   *Record
}

// Operation is what the record says travelled on the wire: "METHOD
// /path?query", the gRPC method, or the Redis/SQL op.
func (r *Record) Operation() string {
	if r.Kind == "out" {
		return r.Op
	}
	if r.RPC != "" {
		return r.RPC
	}
	return r.Method + " " + r.Path
}

// Truth is the ground truth of one run: every service's records, linked.
type Truth struct {
	Ins, Outs []*Record
	// Roots are the ins of the entry service (the load generator's
	// targets): one per trace.
	Roots []*Record
	// Traced names the services that wrote ins (the traced ones).
	Traced map[string]bool
	// Problems counts records that could not be linked, by kind.
	Problems map[string]int
}

// RootService is the service the load generator calls.
const RootService = "gateway"

// rootCaller is the truth log's name for the load generator.
const rootCaller = "loadgen"

// LoadTruth reads every <service>.jsonl of dir and links the records.
func LoadTruth(dir string) (*Truth, error) {
	files, err := filepath.Glob(filepath.Join(dir, "*.jsonl"))
	if err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("eval: no truth logs (*.jsonl) in %s", dir)
	}
	t := &Truth{Traced: map[string]bool{}, Problems: map[string]int{}}
	for _, f := range files {
		if err := t.read(f); err != nil {
			return nil, err
		}
	}
	t.link()
	return t, nil
}

func (t *Truth) read(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("eval: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for n := 1; sc.Scan(); n++ {
		line := bytes.TrimSpace(sc.Bytes())
		if len(line) == 0 {
			continue
		}
		r := &Record{}
		if err := json.Unmarshal(line, r); err != nil {
			t.Problems["malformed line"]++
			continue
		}
		switch r.Kind {
		case "in":
			t.Ins = append(t.Ins, r)
			t.Traced[r.Service] = true
		case "out":
			t.Outs = append(t.Outs, r)
		default:
			t.Problems["malformed line"]++
		}
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("eval: read %s: %w", path, err)
	}
	return nil
}

type svcReq struct{ service, req string }

// link finds each out's parent in and each traced callee's in, with the
// rules of workload/check_truth.py.
func (t *Truth) link() {
	byReq := make(map[svcReq]*Record, len(t.Ins))
	for _, r := range t.Ins {
		byReq[svcReq{r.Service, r.ReqID}] = r
	}
	for _, o := range t.Outs {
		if o.Service == rootCaller {
			continue
		}
		p := byReq[svcReq{o.Service, o.ParentReqID}]
		if p == nil {
			t.Problems["out without parent in"]++
			continue
		}
		o.parent = p
		p.children = append(p.children, o)
	}
	for _, r := range t.Ins {
		sort.Slice(r.children, func(i, j int) bool { return r.children[i].StartNs < r.children[j].StartNs })
	}
	// Callers' outs by (target, local address), sorted by start.
	type connKey struct{ target, local string }
	outs := map[connKey][]*Record{}
	for _, o := range t.Outs {
		if t.Traced[o.Target] && o.Local != "" {
			k := connKey{o.Target, o.Local}
			outs[k] = append(outs[k], o)
		}
	}
	maxDur := map[connKey]int64{}
	for k, l := range outs {
		sort.Slice(l, func(i, j int) bool { return l[i].StartNs < l[j].StartNs })
		for _, o := range l {
			maxDur[k] = max(maxDur[k], o.EndNs-o.StartNs)
		}
	}
	for _, r := range t.Ins {
		k := connKey{r.Service, r.Peer}
		l := outs[k]
		i := sort.Search(len(l), func(i int) bool { return l[i].StartNs > r.StartNs })
		var cands []*Record
		for j := i - 1; j >= 0 && l[j].StartNs >= r.StartNs-maxDur[k]; j-- {
			if l[j].EndNs >= r.EndNs {
				cands = append(cands, l[j])
			}
		}
		if len(cands) > 1 {
			var same []*Record
			for _, o := range cands {
				if o.Op == r.Operation() && o.Key == r.Key {
					same = append(same, o)
				}
			}
			cands = same
		}
		switch {
		case len(cands) == 1:
			cands[0].callee = r
			if cands[0].Service == rootCaller {
				t.Roots = append(t.Roots, r)
			}
		case len(cands) == 0 && r.Service == RootService:
			t.Roots = append(t.Roots, r) // the load generator kept no truth
		case len(cands) == 0:
			t.Problems["in without caller out"]++
		default:
			t.Problems["in matching several outs"]++
		}
	}
	sort.Slice(t.Roots, func(i, j int) bool { return t.Roots[i].StartNs < t.Roots[j].StartNs })
}

// Links counts the parent links the truth holds: outs of traced services
// with a parent in.
func (t *Truth) Links() int {
	n := 0
	for _, o := range t.Outs {
		if o.parent != nil {
			n++
		}
	}
	return n
}

// Parent is the in an out serves (nil for the load generator's calls).
func (r *Record) Parent() *Record { return r.parent }

// Children are the outs an in made, by start.
func (r *Record) Children() []*Record { return r.children }

// Callee is the in an out caused in a traced service, if any.
func (r *Record) Callee() *Record { return r.callee }

func port(addr string) uint16 {
	i := strings.LastIndexByte(addr, ':')
	if i < 0 {
		return 0
	}
	var p int
	for _, c := range addr[i+1:] {
		if c < '0' || c > '9' {
			return 0
		}
		p = p*10 + int(c-'0')
	}
	if p > 65535 {
		return 0
	}
	return uint16(p)
}
