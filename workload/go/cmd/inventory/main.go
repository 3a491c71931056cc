// Command inventory is the gRPC service of the DeepTrace demo workload
// (grpc-go, unary RPCs) backed by PostgreSQL through a pgx connection pool.
// Queries use the simple protocol with literal values in the SQL text, as many
// real applications do. See docs/workload.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net"
	"os"
	"os/signal"
	"regexp"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"deeptrace-workload/internal/inventorypb"
	"deeptrace-workload/internal/rpckey"
	"deeptrace-workload/internal/truth"
)

type ctxKey struct{}

type server struct {
	inventorypb.UnimplementedInventoryServer
	tl   *truth.Log
	pool *pgxpool.Pool
}

func main() {
	listen := flag.String("listen", "127.0.0.1:18083", "listen address")
	dsn := flag.String("pg", "postgres://postgres@127.0.0.1:5432/workload?sslmode=disable", "PostgreSQL DSN")
	maxConns := flag.Int("pg-conns", 8, "max PostgreSQL connections in the pool")
	flag.Parse()

	tl, err := truth.Open("inventory")
	if err != nil {
		log.Fatal(err)
	}
	cfg, err := pgxpool.ParseConfig(*dsn)
	if err != nil {
		log.Fatal(err)
	}
	cfg.MaxConns = int32(*maxConns)
	cfg.MinConns = 2
	cfg.ConnConfig.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	pool, err := pgxpool.NewWithConfig(context.Background(), cfg)
	if err != nil {
		log.Fatal(err)
	}
	s := &server{tl: tl, pool: pool}

	gs := grpc.NewServer(grpc.UnaryInterceptor(s.interceptor))
	inventorypb.RegisterInventoryServer(gs, s)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatal(err)
	}
	log.Printf("inventory listening on %s (pid %d)", ln.Addr(), os.Getpid())
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	go func() {
		if err := gs.Serve(ln); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			log.Fatal(err)
		}
	}()
	<-ctx.Done()
	done := make(chan struct{})
	go func() { gs.GracefulStop(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		gs.Stop()
	}
	pool.Close()
	tl.Close()
}

// interceptor records one "in" truth line per RPC.
func (s *server) interceptor(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	start, tid := truth.Now(), truth.Tid()
	id := s.tl.NextReqID()
	resp, err := handler(context.WithValue(ctx, ctxKey{}, id), req)
	var from, local net.Addr
	if p, ok := peer.FromContext(ctx); ok {
		from, local = p.Addr, p.LocalAddr
	}
	code := status.Code(err)
	s.tl.WriteIn(truth.In{
		ReqID: id, Proto: "grpc", Method: "POST", RPC: info.FullMethod, Key: rpckey.Key(req),
		Peer: truth.Addr(from), Local: truth.Addr(local),
		StartNs: start, EndNs: truth.Now(), Tid: tid,
		Status: int(code), OK: err == nil,
	})
	return resp, err
}

// query runs fn on one pooled connection and records each statement it runs
// with the connection's local address.
type stmt func(sql string, scan ...any) error

func (s *server) withConn(ctx context.Context, fn func(run stmt) error) error {
	c, err := s.pool.Acquire(ctx)
	if err != nil {
		return err
	}
	defer c.Release()
	nc := c.Conn().PgConn().Conn()
	local, remote := truth.Addr(nc.LocalAddr()), truth.Addr(nc.RemoteAddr())
	parent, _ := ctx.Value(ctxKey{}).(string)
	run := func(sql string, scan ...any) error {
		start, tid := truth.Now(), truth.Tid()
		err := c.QueryRow(ctx, sql).Scan(scan...)
		rec := truth.Out{
			ParentReqID: parent, Target: "postgres", Proto: "postgres", Op: sql,
			Local: local, Peer: remote, StartNs: start, EndNs: truth.Now(), Tid: tid,
			OK: err == nil || errors.Is(err, pgx.ErrNoRows),
		}
		if !rec.OK {
			rec.Status = -1
			rec.Error = err.Error()
		}
		s.tl.WriteOut(rec)
		return err
	}
	return fn(run)
}

var warehouseRe = regexp.MustCompile(`^[a-z0-9-]{1,16}$`)

func (s *server) GetStock(ctx context.Context, r *inventorypb.GetStockRequest) (*inventorypb.GetStockReply, error) {
	if r.Sku <= 0 || !warehouseRe.MatchString(r.Warehouse) {
		return nil, status.Error(codes.InvalidArgument, "bad sku or warehouse")
	}
	var avail int64
	err := s.withConn(ctx, func(run stmt) error {
		return run(fmt.Sprintf("SELECT available FROM stock WHERE sku = %d AND warehouse = '%s' AND listed", r.Sku, r.Warehouse), &avail)
	})
	if errors.Is(err, pgx.ErrNoRows) {
		return nil, status.Errorf(codes.NotFound, "sku %d is not listed in %s", r.Sku, r.Warehouse)
	}
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	return &inventorypb.GetStockReply{Sku: r.Sku, Available: avail, Warehouse: r.Warehouse}, nil
}

func (s *server) Reserve(ctx context.Context, r *inventorypb.ReserveRequest) (*inventorypb.ReserveReply, error) {
	if r.Sku <= 0 || r.Qty <= 0 || r.CustomerId <= 0 {
		return nil, status.Error(codes.InvalidArgument, "bad reservation")
	}
	var total, resID int64
	exhausted := false
	err := s.withConn(ctx, func(run stmt) error {
		if err := run(fmt.Sprintf("SELECT coalesce(sum(available), 0) FROM stock WHERE sku = %d", r.Sku), &total); err != nil {
			return err
		}
		if total < r.Qty {
			exhausted = true
			return nil
		}
		return run(fmt.Sprintf("INSERT INTO reservations (sku, qty, customer_id) VALUES (%d, %d, %d) RETURNING id", r.Sku, r.Qty, r.CustomerId), &resID)
	})
	if err != nil {
		return nil, status.Error(codes.Internal, err.Error())
	}
	if exhausted {
		return nil, status.Errorf(codes.ResourceExhausted, "sku %d: %d available, %d requested", r.Sku, total, r.Qty)
	}
	return &inventorypb.ReserveReply{ReservationId: resID, Remaining: total - r.Qty}, nil
}
