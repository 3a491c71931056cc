package rollup

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/deeptrace/deeptrace/jobs"
	"github.com/deeptrace/deeptrace/schemas"
	"github.com/deeptrace/deeptrace/store"
)

// Config tunes a Roller. Zero values take the defaults in parentheses.
type Config struct {
	// Margin is how far around the minute the server end of a client span
	// is looked for (10s): the callee's span may start in a neighbour
	// minute when the clocks of the two hosts differ.
	Margin time.Duration
	// TermsBatch is the TCP positions per terms query when joining client
	// and server spans (1000).
	TermsBatch int
	// LockTTL bounds a dead run's hold on its (minute, shard) (30s).
	LockTTL time.Duration
	Logger  *slog.Logger
}

func (c *Config) defaults() {
	if c.Margin <= 0 {
		c.Margin = 10 * time.Second
	}
	if c.TermsBatch <= 0 {
		c.TermsBatch = 1000
	}
	if c.LockTTL <= 0 {
		c.LockTTL = 30 * time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
}

// Roller computes and writes the metrics of (minute, shard) tasks.
type Roller struct {
	cfg Config
	es  *store.Store
	rdb redis.UniversalClient
}

// New builds a Roller. rdb holds the locks and the done records the
// scheduler's late-span check reads; nil runs without them (benchmarks).
func New(cfg Config, es *store.Store, rdb redis.UniversalClient) *Roller {
	cfg.defaults()
	return &Roller{cfg: cfg, es: es, rdb: rdb}
}

// Result says what a run did.
type Result struct {
	Spans    int // spans of the shard's services in the minute
	Docs     int // metric documents written
	Stale    int // documents of an earlier run deleted (a key that no longer exists)
	Services int
}

// key identifies one metric document within a minute.
type key struct {
	scope                 schemas.Scope
	service, op, peerName string
}

// acc gathers one metric's spans. A sampled span counts for the requests
// it stands for (schemas.Span.Weight) in the count, the errors and the
// sum; percentiles are those of the kept spans, a fair sample since one
// service's spans are kept at one rate.
type acc struct {
	durations     []int64
	count, errors float64
	sum           float64
}

// Run rolls up one (minute, shard).
func (r *Roller) Run(ctx context.Context, p Payload) (Result, error) {
	var res Result
	if err := p.Validate(); err != nil {
		return res, err
	}
	if r.rdb != nil {
		lk := fmt.Sprintf("deeptrace:rollup:lock:%d:%d/%d", p.Minute.UnixNano(), p.Shard, p.Shards)
		ok, err := r.rdb.SetNX(ctx, lk, 1, r.cfg.LockTTL).Result()
		if err != nil {
			return res, fmt.Errorf("rollup lock: %w", err)
		}
		if !ok {
			return res, ErrLocked
		}
		defer r.rdb.Del(context.WithoutCancel(ctx), lk)
	}
	readAt := time.Now().UTC()
	from, to := p.Minute, p.Minute.Add(time.Minute-time.Nanosecond)
	services, err := r.services(ctx, from, to, p.Shard, p.Shards)
	if err != nil {
		return res, err
	}
	res.Services = len(services)
	var spans []schemas.Span
	if len(services) > 0 {
		spans, err = r.es.Spans(ctx, store.Query{From: from, To: to, Terms: map[string][]any{"service": toAny(services)}, PageSize: 5000})
		if err != nil {
			return res, err
		}
	}
	res.Spans = len(spans)
	peers, err := r.callees(ctx, p.Minute, spans)
	if err != nil {
		return res, err
	}
	docs := Compute(p.Minute, spans, peers, readAt)
	out := make([]store.Doc, 0, len(docs))
	ids := make([]any, 0, len(docs))
	ix := r.es.Indices()
	for i := range docs {
		d := &docs[i]
		b, err := json.Marshal(d)
		if err != nil {
			return res, err
		}
		id := schemas.MetricID(d.Timestamp, d.Scope, d.Service, d.Operation, d.PeerService)
		out = append(out, store.Doc{Index: ix.Name(schemas.KindMetrics, d.Timestamp), ID: id, Body: b})
		ids = append(ids, id)
	}
	if len(out) > 0 {
		br, err := r.es.Bulk(ctx, out, "false")
		if err != nil {
			return res, err
		}
		if len(br.Failed) > 0 {
			return res, fmt.Errorf("rollup %s shard %d: %d of %d documents refused, first: %v", p.Minute, p.Shard, len(br.Failed), len(out), br.Failed[0])
		}
		res.Docs = br.Indexed
	}
	if len(services) > 0 {
		n, err := r.deleteStale(ctx, p.Minute, services, ids)
		if err != nil {
			return res, err
		}
		res.Stale = n
	}
	if r.rdb != nil {
		k := doneKey(p.Minute)
		pipe := r.rdb.TxPipeline()
		pipe.HSet(ctx, k, fmt.Sprintf("%d/%d", p.Shard, p.Shards), readAt.UnixNano())
		pipe.Expire(ctx, k, 48*time.Hour)
		if _, err := pipe.Exec(ctx); err != nil {
			return res, fmt.Errorf("record rollup: %w", err)
		}
	}
	return res, nil
}

// Compute turns a minute's spans into metric documents: server spans give
// the service and operation scopes; client spans give edges from their
// service to the callee (peers maps a client span id to the service of
// its server end; untraced callees are named protocol://ip:port). The
// result is sorted by key.
func Compute(minute time.Time, spans []schemas.Span, peers map[string]string, at time.Time) []schemas.Metric {
	groups := map[key]*acc{}
	add := func(k key, sp *schemas.Span) {
		a := groups[k]
		if a == nil {
			a = &acc{}
			groups[k] = a
		}
		a.durations = append(a.durations, sp.DurationNs)
		w := sp.Weight()
		a.count += w
		a.sum += w * float64(sp.DurationNs)
		if sp.Error {
			a.errors += w
		}
	}
	for i := range spans {
		sp := &spans[i]
		switch sp.Role {
		case schemas.RoleServer:
			add(key{scope: schemas.ScopeService, service: sp.Service}, sp)
			add(key{scope: schemas.ScopeOperation, service: sp.Service, op: sp.Operation}, sp)
		case schemas.RoleClient:
			peer := peers[sp.SpanID]
			if peer == "" {
				peer = store.PeerName(sp)
			}
			add(key{scope: schemas.ScopeEdge, service: sp.Service, peerName: peer}, sp)
		}
	}
	out := make([]schemas.Metric, 0, len(groups))
	for k, a := range groups {
		slices.Sort(a.durations)
		sum := int64(math.Round(a.sum))
		out = append(out, schemas.Metric{
			Timestamp: minute.UTC(), Scope: k.scope, Service: k.service, Operation: k.op, PeerService: k.peerName,
			Count: int64(math.Round(a.count)), Errors: int64(math.Round(a.errors)),
			P50Ns: schemas.Percentile(a.durations, 0.50), P90Ns: schemas.Percentile(a.durations, 0.90),
			P99Ns: schemas.Percentile(a.durations, 0.99), MaxNs: a.durations[len(a.durations)-1], SumNs: sum,
			Sketch: schemas.SketchOf(a.durations), RolledUpAt: at,
		})
	}
	slices.SortFunc(out, func(a, b schemas.Metric) int {
		return cmpKeys(a, b)
	})
	return out
}

func cmpKeys(a, b schemas.Metric) int {
	for _, p := range [][2]string{{string(a.Scope), string(b.Scope)}, {a.Service, b.Service}, {a.Operation, b.Operation}, {a.PeerService, b.PeerService}} {
		if p[0] != p[1] {
			if p[0] < p[1] {
				return -1
			}
			return 1
		}
	}
	return 0
}

// services lists the services with spans in [from, to] that fall in shard.
func (r *Roller) services(ctx context.Context, from, to time.Time, shard, shards int) ([]string, error) {
	body := map[string]any{
		"size": 0,
		"query": map[string]any{"range": map[string]any{"timestamp": map[string]any{
			"gte": from.Format(time.RFC3339Nano), "lte": to.Format(time.RFC3339Nano)}}},
		"aggs": map[string]any{"s": map[string]any{"terms": map[string]any{"field": "service", "size": 10000}}},
	}
	res, err := r.es.Search(ctx, r.es.Indices().ForRange(schemas.KindSpans, from, to), body)
	if err != nil {
		return nil, fmt.Errorf("rollup services: %w", err)
	}
	var aggs struct {
		S struct {
			Buckets []struct {
				Key string `json:"key"`
			} `json:"buckets"`
		} `json:"s"`
	}
	if len(res.Aggregations) > 0 {
		if err := json.Unmarshal(res.Aggregations, &aggs); err != nil {
			return nil, fmt.Errorf("rollup services: %w", err)
		}
	}
	var out []string
	for _, b := range aggs.S.Buckets {
		if jobs.ShardOf(b.Key, shards) == shard {
			out = append(out, b.Key)
		}
	}
	return out, nil
}

// callees finds the server end of each client span: the server span that
// saw the same request and response TCP positions (both ends of a
// connection see the same positions, even through a NAT), around the
// minute. It maps client span id → the server span's service.
func (r *Roller) callees(ctx context.Context, minute time.Time, spans []schemas.Span) (map[string]string, error) {
	type tcpKey struct{ req, resp uint32 }
	want := map[tcpKey][]string{}
	var seqs []any
	for i := range spans {
		sp := &spans[i]
		if sp.Role != schemas.RoleClient {
			continue
		}
		k := tcpKey{sp.ReqTCPSeq, sp.RespTCPSeq}
		if _, ok := want[k]; !ok {
			seqs = append(seqs, int64(sp.ReqTCPSeq))
		}
		want[k] = append(want[k], sp.SpanID)
	}
	out := map[string]string{}
	from, to := minute.Add(-r.cfg.Margin), minute.Add(time.Minute+r.cfg.Margin)
	for len(seqs) > 0 {
		n := min(len(seqs), r.cfg.TermsBatch)
		batch := seqs[:n]
		seqs = seqs[n:]
		servers, err := r.es.Spans(ctx, store.Query{From: from, To: to, PageSize: 5000,
			Terms: map[string][]any{"role": {string(schemas.RoleServer)}, "req_tcp_seq": batch}})
		if err != nil {
			return nil, fmt.Errorf("rollup callees: %w", err)
		}
		for i := range servers {
			sv := &servers[i]
			for _, id := range want[tcpKey{sv.ReqTCPSeq, sv.RespTCPSeq}] {
				out[id] = sv.Service
			}
		}
	}
	return out, nil
}

// deleteStale removes the minute's documents of services that this run
// did not write: keys an earlier run saw that no longer exist (an edge
// first written to protocol://ip:port whose callee's spans arrived late).
func (r *Roller) deleteStale(ctx context.Context, minute time.Time, services []string, keep []any) (int, error) {
	ids := make([]string, len(keep))
	for i, v := range keep {
		ids[i] = v.(string)
	}
	q := map[string]any{"query": map[string]any{"bool": map[string]any{
		"filter": []any{
			map[string]any{"term": map[string]any{"timestamp": minute.Format(time.RFC3339Nano)}},
			map[string]any{"terms": map[string]any{"service": services}},
		},
		"must_not": []any{map[string]any{"ids": map[string]any{"values": ids}}},
	}}}
	b, _ := json.Marshal(q)
	es := r.es.Client()
	resp, err := es.DeleteByQuery([]string{r.es.Indices().Name(schemas.KindMetrics, minute)}, bytesReader(b),
		es.DeleteByQuery.WithContext(ctx), es.DeleteByQuery.WithIgnoreUnavailable(true),
		es.DeleteByQuery.WithAllowNoIndices(true), es.DeleteByQuery.WithConflicts("proceed"))
	if err != nil {
		return 0, fmt.Errorf("rollup delete stale: %w", err)
	}
	defer resp.Body.Close()
	var out struct {
		Deleted int `json:"deleted"`
	}
	if resp.IsError() {
		return 0, fmt.Errorf("rollup delete stale: %s", resp.String())
	}
	_ = json.NewDecoder(resp.Body).Decode(&out)
	return out.Deleted, nil
}

func doneKey(minute time.Time) string {
	return "deeptrace:rollup:done:" + strconv.FormatInt(minute.UnixNano(), 10)
}

// RolledUp says whether every shard of minute has been rolled up at least
// once (under any one shard count), so that its metrics can be read as
// complete: an absent document then means no traffic, not "not yet".
func RolledUp(ctx context.Context, rdb redis.UniversalClient, minute time.Time) (bool, error) {
	done, err := rdb.HKeys(ctx, doneKey(minute.UTC().Truncate(time.Minute))).Result()
	if err != nil {
		return false, fmt.Errorf("rollup done record of %s: %w", minute, err)
	}
	shardsDone := map[int]int{}
	for _, k := range done {
		var shard, shards int
		if _, err := fmt.Sscanf(k, "%d/%d", &shard, &shards); err != nil || shards < 1 {
			continue
		}
		if shardsDone[shards]++; shardsDone[shards] == shards {
			return true, nil
		}
	}
	return false, nil
}

func toAny(ss []string) []any {
	out := make([]any, len(ss))
	for i, s := range ss {
		out[i] = s
	}
	return out
}
