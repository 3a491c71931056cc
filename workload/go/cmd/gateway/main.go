// Command gateway is the entry service of the DeepTrace demo workload: a Go
// net/http server that fans out to orders (Flask), catalog (Node) over pooled
// keep-alive HTTP/1.1 connections and to inventory over a small pool of gRPC
// ClientConns. See docs/workload.md.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"net/http/httptrace"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"deeptrace-workload/internal/inventorypb"
	"deeptrace-workload/internal/rpckey"
	"deeptrace-workload/internal/rules"
	"deeptrace-workload/internal/truth"
)

type ctxKey struct{}

type gateway struct {
	tl         *truth.Log
	client     *http.Client
	ordersURL  string
	catalogURL string
	invConns   []*grpc.ClientConn
	invClients []inventorypb.InventoryClient
	rr         atomic.Uint64
}

func main() {
	listen := flag.String("listen", "127.0.0.1:18080", "listen address")
	orders := flag.String("orders", "http://127.0.0.1:18081", "orders base URL")
	catalog := flag.String("catalog", "http://127.0.0.1:18082", "catalog base URL")
	inventory := flag.String("inventory", "127.0.0.1:18083", "inventory gRPC address")
	grpcConns := flag.Int("grpc-conns", 2, "gRPC ClientConns in the inventory pool")
	maxConns := flag.Int("max-conns-per-host", 32, "HTTP connections per upstream host")
	flag.Parse()

	tl, err := truth.Open("gateway")
	if err != nil {
		log.Fatal(err)
	}
	g := &gateway{
		tl:         tl,
		ordersURL:  *orders,
		catalogURL: *catalog,
		client: &http.Client{
			Timeout: 10 * time.Second,
			Transport: &http.Transport{
				DialContext:         (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext,
				MaxIdleConns:        256,
				MaxIdleConnsPerHost: *maxConns,
				MaxConnsPerHost:     *maxConns,
				IdleConnTimeout:     30 * time.Second,
			},
		},
	}
	for i := 0; i < *grpcConns; i++ {
		cc, err := grpc.NewClient(*inventory, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			log.Fatal(err)
		}
		g.invConns = append(g.invConns, cc)
		g.invClients = append(g.invClients, inventorypb.NewInventoryClient(cc))
	}

	mux := http.NewServeMux()
	mux.HandleFunc("GET /api/orders/{id}", g.getOrder)
	mux.HandleFunc("POST /api/checkout", g.checkout)
	mux.HandleFunc("GET /api/products/{sku}", g.getProduct)
	mux.HandleFunc("GET /api/search", g.search)
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) { w.Write([]byte("ok\n")) })

	srv := &http.Server{
		Addr:              *listen,
		Handler:           g.middleware(mux),
		ReadHeaderTimeout: 10 * time.Second,
		IdleTimeout:       120 * time.Second,
	}
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("gateway listening on %s (pid %d)", ln.Addr(), os.Getpid())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Fatal(err)
		}
	}()
	<-ctx.Done()
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	for _, cc := range g.invConns {
		cc.Close()
	}
	tl.Close()
}

// statusWriter captures the status code written by a handler.
type statusWriter struct {
	http.ResponseWriter
	status int
}

func (w *statusWriter) WriteHeader(code int) {
	if w.status == 0 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *statusWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = 200
	}
	return w.ResponseWriter.Write(b)
}

// middleware records one "in" truth line per request.
func (g *gateway) middleware(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := truth.Now()
		tid := truth.Tid()
		id := g.tl.NextReqID()
		sw := &statusWriter{ResponseWriter: w}
		next.ServeHTTP(sw, r.WithContext(context.WithValue(r.Context(), ctxKey{}, id)))
		if sw.status == 0 {
			sw.status = 200
		}
		local, _ := r.Context().Value(http.LocalAddrContextKey).(net.Addr)
		g.tl.WriteIn(truth.In{
			ReqID: id, Proto: "http", Method: r.Method, Path: r.URL.RequestURI(),
			Peer: r.RemoteAddr, Local: truth.Addr(local),
			StartNs: start, EndNs: truth.Now(), Tid: tid,
			Status: sw.status, OK: sw.status < 400,
		})
	})
}

func reqID(ctx context.Context) string {
	s, _ := ctx.Value(ctxKey{}).(string)
	return s
}

// httpCall performs one HTTP request on the pooled client and records it.
func (g *gateway) httpCall(ctx context.Context, target, method, base, pathQuery string, body any) (int, []byte, error) {
	var rd io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		rd = bytes.NewReader(b)
	}
	// start_ns is taken when the pool hands out the connection, so time spent
	// waiting for a free connection is not part of the call on it.
	var mu sync.Mutex
	var local, remote net.Addr
	var gotConn int64
	trace := &httptrace.ClientTrace{GotConn: func(info httptrace.GotConnInfo) {
		t := truth.Now()
		mu.Lock()
		local, remote, gotConn = info.Conn.LocalAddr(), info.Conn.RemoteAddr(), t
		mu.Unlock()
	}}
	req, err := http.NewRequestWithContext(httptrace.WithClientTrace(ctx, trace), method, base+pathQuery, rd)
	if err != nil {
		return 0, nil, err
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	start, tid := truth.Now(), truth.Tid()
	code := 0
	var respBody []byte
	resp, err := g.client.Do(req)
	if err == nil {
		code = resp.StatusCode
		respBody, err = io.ReadAll(resp.Body)
		resp.Body.Close()
	}
	end := truth.Now()
	mu.Lock()
	if gotConn != 0 {
		start = gotConn
	}
	rec := truth.Out{
		ParentReqID: reqID(ctx), Target: target, Proto: "http", Op: method + " " + pathQuery,
		Local: truth.Addr(local), Peer: truth.Addr(remote), StartNs: start, EndNs: end, Tid: tid,
		Status: code, OK: err == nil && code < 400,
	}
	mu.Unlock()
	if err != nil {
		rec.Error = err.Error()
	}
	g.tl.WriteOut(rec)
	return code, respBody, err
}

// invCall runs one unary inventory RPC on a ClientConn of the pool.
func (g *gateway) invCall(ctx context.Context, rpc string, req any, call func(context.Context, inventorypb.InventoryClient, ...grpc.CallOption) error) error {
	i := g.rr.Add(1) % uint64(len(g.invClients))
	var p peer.Peer
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	start, tid := truth.Now(), truth.Tid()
	err := call(ctx, g.invClients[i], grpc.Peer(&p))
	end := truth.Now()
	st := status.Convert(err)
	rec := truth.Out{
		ParentReqID: reqID(ctx), Target: "inventory", Proto: "grpc",
		Op: "/deeptrace.workload.inventory.v1.Inventory/" + rpc, Key: rpckey.Key(req),
		Local: truth.Addr(p.LocalAddr), Peer: truth.Addr(p.Addr), StartNs: start, EndNs: end, Tid: tid,
		Status: int(st.Code()), OK: err == nil,
	}
	if err != nil {
		rec.Error = st.Message()
	}
	g.tl.WriteOut(rec)
	return err
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func parseID(s string) (int64, bool) {
	n, err := strconv.ParseInt(s, 10, 64)
	return n, err == nil && n > 0
}

// GET /api/orders/{id}: orders and catalog in parallel.
func (g *gateway) getOrder(w http.ResponseWriter, r *http.Request) {
	id, ok := parseID(r.PathValue("id"))
	if !ok {
		writeJSON(w, 400, map[string]string{"error": "bad order id"})
		return
	}
	sku := rules.SKUForOrder(id)
	var wg sync.WaitGroup
	var oCode, cCode int
	var oBody, cBody []byte
	var oErr, cErr error
	wg.Add(2)
	go func() {
		defer wg.Done()
		oCode, oBody, oErr = g.httpCall(r.Context(), "orders", "GET", g.ordersURL, fmt.Sprintf("/orders/%d", id), nil)
	}()
	go func() {
		defer wg.Done()
		cCode, cBody, cErr = g.httpCall(r.Context(), "catalog", "GET", g.catalogURL, fmt.Sprintf("/items/%d?fields=name,price", sku), nil)
	}()
	wg.Wait()
	if oErr != nil || cErr != nil || oCode != 200 || cCode != 200 {
		writeJSON(w, 502, map[string]any{"error": "upstream failure", "orders": oCode, "catalog": cCode})
		return
	}
	writeJSON(w, 200, map[string]any{"order": json.RawMessage(oBody), "item": json.RawMessage(cBody)})
}

type checkoutReq struct {
	CustomerID int64 `json:"customer_id"`
	SKU        int64 `json:"sku"`
	Qty        int64 `json:"qty"`
}

// POST /api/checkout: inventory.Reserve, then orders POST /orders (sequential).
func (g *gateway) checkout(w http.ResponseWriter, r *http.Request) {
	var in checkoutReq
	if err := json.NewDecoder(io.LimitReader(r.Body, 1<<16)).Decode(&in); err != nil || in.CustomerID <= 0 || in.SKU <= 0 || in.Qty <= 0 {
		writeJSON(w, 400, map[string]string{"error": "bad checkout body"})
		return
	}
	rreq := &inventorypb.ReserveRequest{Sku: in.SKU, Qty: in.Qty, CustomerId: in.CustomerID}
	var rrep *inventorypb.ReserveReply
	err := g.invCall(r.Context(), "Reserve", rreq, func(ctx context.Context, c inventorypb.InventoryClient, opts ...grpc.CallOption) error {
		var err error
		rrep, err = c.Reserve(ctx, rreq, opts...)
		return err
	})
	if err != nil {
		writeJSON(w, 409, map[string]string{"error": "reservation failed: " + status.Convert(err).Message()})
		return
	}
	code, body, err := g.httpCall(r.Context(), "orders", "POST", g.ordersURL, "/orders",
		map[string]any{"customer_id": in.CustomerID, "sku": in.SKU, "qty": in.Qty, "reservation_id": rrep.ReservationId})
	switch {
	case err != nil:
		writeJSON(w, 502, map[string]string{"error": err.Error()})
	case code == 201:
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(201)
		w.Write(body)
	case code == 402:
		writeJSON(w, 402, map[string]any{"error": "payment declined", "detail": json.RawMessage(body)})
	default:
		writeJSON(w, 502, map[string]any{"error": "orders failed", "status": code})
	}
}

// GET /api/products/{sku}?currency=..&warehouse=..: catalog and
// inventory.GetStock in parallel.
func (g *gateway) getProduct(w http.ResponseWriter, r *http.Request) {
	sku, ok := parseID(r.PathValue("sku"))
	if !ok {
		writeJSON(w, 400, map[string]string{"error": "bad sku"})
		return
	}
	currency := r.URL.Query().Get("currency")
	if currency == "" {
		currency = "EUR"
	}
	warehouse := r.URL.Query().Get("warehouse")
	if warehouse == "" {
		warehouse = "eu-1"
	}
	var wg sync.WaitGroup
	var cCode int
	var cBody []byte
	var cErr, sErr error
	var stock *inventorypb.GetStockReply
	wg.Add(2)
	go func() {
		defer wg.Done()
		cCode, cBody, cErr = g.httpCall(r.Context(), "catalog", "GET", g.catalogURL, fmt.Sprintf("/items/%d?currency=%s", sku, currency), nil)
	}()
	go func() {
		defer wg.Done()
		sreq := &inventorypb.GetStockRequest{Sku: sku, Warehouse: warehouse}
		sErr = g.invCall(r.Context(), "GetStock", sreq, func(ctx context.Context, c inventorypb.InventoryClient, opts ...grpc.CallOption) error {
			var err error
			stock, err = c.GetStock(ctx, sreq, opts...)
			return err
		})
	}()
	wg.Wait()
	switch {
	case sErr != nil:
		writeJSON(w, 404, map[string]string{"error": "no stock record: " + status.Convert(sErr).Message()})
	case cErr != nil || cCode != 200:
		writeJSON(w, 502, map[string]any{"error": "catalog failure", "catalog": cCode})
	default:
		writeJSON(w, 200, map[string]any{"item": json.RawMessage(cBody), "available": stock.Available, "warehouse": stock.Warehouse})
	}
}

// GET /api/search?q=..&limit=..: one catalog call.
func (g *gateway) search(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	code, body, err := g.httpCall(r.Context(), "catalog", "GET", g.catalogURL, "/search?"+q.Encode(), nil)
	if err != nil || code != 200 {
		writeJSON(w, 502, map[string]any{"error": "catalog failure", "catalog": code})
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.Write(body)
}
