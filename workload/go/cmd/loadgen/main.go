// Command loadgen drives the DeepTrace demo workload through its gateway with
// a fixed mix of endpoints, a configurable concurrency and rate, bounded in
// time and in count. The request sequence is a pure function of -seed. It
// predicts from the designed failure rules (internal/rules) which requests
// must fail, so any other outcome is reported as unexpected, and it writes
// its own ground truth ("out" lines of service "loadgen").
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"deeptrace-workload/internal/rules"
	"deeptrace-workload/internal/truth"
)

type request struct {
	seq      int
	endpoint string
	method   string
	path     string
	body     []byte
	expect   int
}

type result struct {
	endpoint string
	status   int
	expect   int
	latency  time.Duration
	err      error
}

// Mix: endpoint weights (percent).
var mix = []struct {
	name   string
	weight int
}{
	{"get_order", 50},
	{"checkout", 20},
	{"get_product", 20},
	{"search", 10},
}

var (
	currencies = []string{"EUR", "USD", "GBP", "JPY"}
	warehouses = []string{"eu-1", "eu-2", "us-1"}
	words      = []string{"lamp", "chair", "desk", "mug", "cable", "phone", "shoe", "book", "pen", "bag", "clock", "plant"}
)

func gen(r *rand.Rand, seq int) request {
	n := r.IntN(100)
	name := mix[len(mix)-1].name
	for _, m := range mix {
		if n < m.weight {
			name = m.name
			break
		}
		n -= m.weight
	}
	q := request{seq: seq, endpoint: name, method: "GET"}
	switch name {
	case "get_order":
		id := r.Int64N(200000) + 1
		q.path = fmt.Sprintf("/api/orders/%d", id)
		q.expect = rules.ExpectOrderGet(id)
	case "checkout":
		cust, sku, qty := r.Int64N(100000)+1, r.Int64N(rules.NumSKUs)+1, r.Int64N(5)+1
		q.method = "POST"
		q.path = "/api/checkout"
		q.body, _ = json.Marshal(map[string]int64{"customer_id": cust, "sku": sku, "qty": qty})
		q.expect = rules.ExpectCheckout(cust, sku)
	case "get_product":
		sku := r.Int64N(rules.NumSKUs) + 1
		q.path = fmt.Sprintf("/api/products/%d?currency=%s&warehouse=%s", sku, currencies[r.IntN(len(currencies))], warehouses[r.IntN(len(warehouses))])
		q.expect = rules.ExpectProduct(sku)
	case "search":
		q.path = fmt.Sprintf("/api/search?q=%s&limit=%d", words[r.IntN(len(words))], 5+r.IntN(16))
		q.expect = rules.ExpectSearch()
	}
	return q
}

func main() {
	target := flag.String("target", "http://127.0.0.1:18080", "gateway base URL")
	concurrency := flag.Int("concurrency", 8, "concurrent workers (and max connections)")
	rate := flag.Float64("rate", 0, "requests per second in total; 0 = as fast as the workers go")
	duration := flag.Duration("duration", 10*time.Second, "stop after this long (0 = no time bound, then -requests is required)")
	requests := flag.Int("requests", 0, "stop after this many requests (0 = no count bound, then -duration is required)")
	seed := flag.Uint64("seed", 1, "seed of the request sequence")
	timeout := flag.Duration("timeout", 10*time.Second, "per-request timeout")
	truthDir := flag.String("truth", os.Getenv("DEEPTRACE_WORKLOAD_TRUTH"), "ground-truth directory (writes loadgen.jsonl; empty = none)")
	jsonOut := flag.String("json", "", "also write the summary as JSON to this file")
	flag.Parse()

	if *concurrency < 1 {
		log.Fatal("-concurrency must be >= 1")
	}
	if *duration <= 0 && *requests <= 0 {
		log.Fatal("give -duration or -requests (the run must be bounded)")
	}
	if *duration <= 0 || *duration > time.Hour {
		*duration = time.Hour // hard bound even when only -requests is given
	}
	tl, err := truth.OpenDir(*truthDir, "loadgen")
	if err != nil {
		log.Fatal(err)
	}

	client := &http.Client{
		Timeout: *timeout,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 2 * time.Second}).DialContext,
			MaxIdleConns:        *concurrency,
			MaxIdleConnsPerHost: *concurrency,
			MaxConnsPerHost:     *concurrency,
			IdleConnTimeout:     30 * time.Second,
		},
	}

	// Preflight: the gateway must answer before the clock starts (recorded in
	// the truth log like any request, as seq-0 endpoint "healthz").
	pre := do(client, tl, *target, request{seq: 0, endpoint: "healthz", method: "GET", path: "/healthz", expect: 200})
	if pre.err != nil || pre.status != 200 {
		tl.Close()
		log.Fatalf("gateway at %s is not answering (status %d, %v): is the workload up?", *target, pre.status, pre.err)
	}

	ctx, cancel := context.WithTimeout(context.Background(), *duration)
	defer cancel()
	ctx, stop := signal.NotifyContext(ctx, syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	work := make(chan request)
	go func() { // dispatcher: deterministic sequence, paced
		defer close(work)
		r := rand.New(rand.NewPCG(*seed, 0x5eed))
		t0 := time.Now()
		for i := 0; *requests == 0 || i < *requests; i++ {
			q := gen(r, i+1)
			if *rate > 0 {
				due := t0.Add(time.Duration(float64(i) / *rate * float64(time.Second)))
				if d := time.Until(due); d > 0 {
					select {
					case <-time.After(d):
					case <-ctx.Done():
						return
					}
				}
			}
			select {
			case work <- q:
			case <-ctx.Done():
				return
			}
		}
	}()

	results := make([][]result, *concurrency)
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < *concurrency; w++ {
		wg.Add(1)
		go func(w int) {
			defer wg.Done()
			for q := range work {
				results[w] = append(results[w], do(client, tl, *target, q))
			}
		}(w)
	}
	wg.Wait()
	elapsed := time.Since(start)
	tl.Close()

	var all []result
	for _, rs := range results {
		all = append(all, rs...)
	}
	s := summarize(all, elapsed, *concurrency, *rate, *seed)
	s.print(os.Stdout)
	if *jsonOut != "" {
		b, _ := json.MarshalIndent(s, "", "  ")
		if err := os.WriteFile(*jsonOut, append(b, '\n'), 0o644); err != nil {
			log.Fatal(err)
		}
	}
	if s.Unexpected > 0 {
		os.Exit(2)
	}
}

func do(client *http.Client, tl *truth.Log, target string, q request) result {
	var mu sync.Mutex
	var local, remote net.Addr
	var gotConn int64
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		t := truth.Now()
		mu.Lock()
		local, remote, gotConn = info.Conn.LocalAddr(), info.Conn.RemoteAddr(), t
		mu.Unlock()
	}}
	var body io.Reader
	if q.body != nil {
		body = bytes.NewReader(q.body)
	}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(context.Background(), trace), q.method, target+q.path, body)
	if err != nil {
		return result{endpoint: q.endpoint, expect: q.expect, err: err}
	}
	if q.body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	t0 := time.Now()
	startNs, tid := t0.UnixNano(), truth.Tid()
	code := 0
	resp, err := client.Do(req)
	if err == nil {
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		code = resp.StatusCode
	}
	lat := time.Since(t0)
	mu.Lock()
	if gotConn != 0 { // truth start: when the connection was handed out
		startNs = gotConn
	}
	rec := truth.Out{
		ParentReqID: fmt.Sprintf("seq-%d", q.seq), Target: "gateway", Proto: "http", Op: q.method + " " + q.path,
		Local: truth.Addr(local), Peer: truth.Addr(remote), StartNs: startNs, EndNs: truth.Now(), Tid: tid,
		Status: code, OK: err == nil && code < 400,
	}
	mu.Unlock()
	if err != nil {
		rec.Error = err.Error()
	}
	tl.WriteOut(rec)
	return result{endpoint: q.endpoint, status: code, expect: q.expect, latency: lat, err: err}
}

type latency struct {
	P50Ms float64 `json:"p50_ms"`
	P90Ms float64 `json:"p90_ms"`
	P99Ms float64 `json:"p99_ms"`
	MaxMs float64 `json:"max_ms"`
}

type endpointSummary struct {
	Requests   int         `json:"requests"`
	Errors     int         `json:"errors"`
	Unexpected int         `json:"unexpected"`
	Statuses   map[int]int `json:"statuses"`
	Latency    latency     `json:"latency"`
}

type summary struct {
	Concurrency    int                         `json:"concurrency"`
	Rate           float64                     `json:"rate"`
	Seed           uint64                      `json:"seed"`
	ElapsedS       float64                     `json:"elapsed_s"`
	Requests       int                         `json:"requests"`
	Throughput     float64                     `json:"throughput_rps"`
	Errors         int                         `json:"errors"`
	ExpectedErrors int                         `json:"expected_errors"`
	Unexpected     int                         `json:"unexpected"`
	TransportErrs  int                         `json:"transport_errors"`
	Latency        latency                     `json:"latency"`
	Endpoints      map[string]*endpointSummary `json:"endpoints"`
	UnexpectedEx   []string                    `json:"unexpected_examples,omitempty"`
}

func pct(ds []time.Duration) latency {
	if len(ds) == 0 {
		return latency{}
	}
	slices.Sort(ds)
	at := func(p float64) float64 {
		i := int(p * float64(len(ds)-1))
		return float64(ds[i].Microseconds()) / 1000
	}
	return latency{P50Ms: at(0.50), P90Ms: at(0.90), P99Ms: at(0.99), MaxMs: at(1)}
}

func summarize(all []result, elapsed time.Duration, conc int, rate float64, seed uint64) *summary {
	s := &summary{Concurrency: conc, Rate: rate, Seed: seed, ElapsedS: elapsed.Seconds(), Requests: len(all), Endpoints: map[string]*endpointSummary{}}
	var lats []time.Duration
	per := map[string][]time.Duration{}
	for _, r := range all {
		e := s.Endpoints[r.endpoint]
		if e == nil {
			e = &endpointSummary{Statuses: map[int]int{}}
			s.Endpoints[r.endpoint] = e
		}
		e.Requests++
		e.Statuses[r.status]++
		lats = append(lats, r.latency)
		per[r.endpoint] = append(per[r.endpoint], r.latency)
		failed := r.err != nil || r.status >= 400
		if failed {
			s.Errors++
			e.Errors++
		}
		if r.err != nil {
			s.TransportErrs++
		}
		if r.err != nil || r.status != r.expect {
			s.Unexpected++
			e.Unexpected++
			if len(s.UnexpectedEx) < 10 {
				msg := fmt.Sprintf("%s: status %d, expected %d", r.endpoint, r.status, r.expect)
				if r.err != nil {
					msg += ": " + r.err.Error()
				}
				s.UnexpectedEx = append(s.UnexpectedEx, msg)
			}
		} else if failed {
			s.ExpectedErrors++
		}
	}
	s.Latency = pct(lats)
	for name, ds := range per {
		s.Endpoints[name].Latency = pct(ds)
	}
	if elapsed > 0 {
		s.Throughput = float64(len(all)) / elapsed.Seconds()
	}
	return s
}

func (s *summary) print(w io.Writer) {
	fmt.Fprintf(w, "loadgen: concurrency=%d rate=%g seed=%d elapsed=%.2fs\n", s.Concurrency, s.Rate, s.Seed, s.ElapsedS)
	fmt.Fprintf(w, "requests=%d throughput=%.1f req/s errors=%d (designed=%d unexpected=%d transport=%d)\n",
		s.Requests, s.Throughput, s.Errors, s.ExpectedErrors, s.Unexpected, s.TransportErrs)
	fmt.Fprintf(w, "latency p50=%.2fms p90=%.2fms p99=%.2fms max=%.2fms\n", s.Latency.P50Ms, s.Latency.P90Ms, s.Latency.P99Ms, s.Latency.MaxMs)
	names := make([]string, 0, len(s.Endpoints))
	for n := range s.Endpoints {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		e := s.Endpoints[n]
		fmt.Fprintf(w, "  %-12s n=%-6d errors=%-5d unexpected=%-4d p50=%.2fms p99=%.2fms statuses=%v\n",
			n, e.Requests, e.Errors, e.Unexpected, e.Latency.P50Ms, e.Latency.P99Ms, e.Statuses)
	}
	for _, m := range s.UnexpectedEx {
		fmt.Fprintf(w, "  unexpected: %s\n", m)
	}
}
