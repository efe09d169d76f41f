// Go gRPC service for kspan's end-to-end tests of goroutine nesting:
// grpc-go's server (Debian's golang-google-grpc-dev) answering the standard
// health service's Check, whose "service" field names what the handler
// does, like go_db_app's routes: "pg/N" (one PostgreSQL query through
// database/sql and lib/pq), "redis/N" (GET kspan:N through redigo),
// "both/N", "chain/N" (Check "redis/N" on this very server through
// grpc-go's client, one channel for all calls). grpc-go reads every
// request of a connection on one goroutine and serves each stream on a
// goroutine of its own; its client writes every call of a connection on
// one goroutine. It propagates no trace context. Built in GOPATH mode
// against Debian's packaged sources.
//
//	go_grpc_app PG_DSN REDIS_ADDR
//
// prints "PORT" on stdout, then serves gRPC (HTTP/2 without TLS) on
// 127.0.0.1.
package main

import (
	"context"
	"database/sql"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"sync"

	"github.com/gomodule/redigo/redis"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

type health struct {
	grpc_health_v1.UnimplementedHealthServer
	db   *sql.DB
	pool *redis.Pool
	addr string
	once sync.Once
	self grpc_health_v1.HealthClient
}

func (h *health) Check(ctx context.Context, req *grpc_health_v1.HealthCheckRequest) (*grpc_health_v1.HealthCheckResponse, error) {
	parts := strings.Split(req.Service, "/")
	if len(parts) != 2 {
		return nil, status.Error(codes.NotFound, req.Service)
	}
	n, err := strconv.Atoi(parts[1])
	if err != nil {
		return nil, status.Error(codes.NotFound, req.Service)
	}
	if parts[0] == "pg" || parts[0] == "both" {
		var count int
		if err := h.db.QueryRowContext(ctx, "SELECT count(*) FROM pg_class WHERE oid > $1", n).Scan(&count); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	if parts[0] == "chain" {
		// Dialled at the first chain call (grpc.Dial connects at once),
		// so the channel's connection opens while kspan runs.
		h.once.Do(func() {
			cc, err := grpc.Dial(h.addr, grpc.WithInsecure())
			if err != nil {
				panic(err)
			}
			h.self = grpc_health_v1.NewHealthClient(cc)
		})
		in := &grpc_health_v1.HealthCheckRequest{Service: fmt.Sprintf("redis/%d", n)}
		if _, err := h.self.Check(ctx, in); err != nil {
			return nil, err
		}
	}
	if parts[0] == "redis" || parts[0] == "both" {
		c := h.pool.Get()
		defer c.Close()
		if _, err := redis.String(c.Do("GET", fmt.Sprintf("kspan:%d", n))); err != nil {
			return nil, status.Error(codes.Internal, err.Error())
		}
	}
	return &grpc_health_v1.HealthCheckResponse{Status: grpc_health_v1.HealthCheckResponse_SERVING}, nil
}

func main() {
	if len(os.Args) != 3 {
		fmt.Fprintln(os.Stderr, "usage: go_grpc_app PG_DSN REDIS_ADDR")
		os.Exit(2)
	}
	db, pool := backends(os.Args[1], os.Args[2])
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	s := grpc.NewServer()
	grpc_health_v1.RegisterHealthServer(s, &health{db: db, pool: pool, addr: l.Addr().String()})
	fmt.Println(l.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	panic(s.Serve(l))
}
