// The backends of kspan's Go test services (go_db_app, go_grpc_app): a
// PostgreSQL pool through database/sql and lib/pq, and a Redis pool
// through redigo, 4 connections each, as Go services keep them.
package main

import (
	"database/sql"

	"github.com/gomodule/redigo/redis"
	_ "github.com/lib/pq"
)

// backends opens the pools for the PostgreSQL at dsn and the Redis at addr.
func backends(dsn, addr string) (*sql.DB, *redis.Pool) {
	db, err := sql.Open("postgres", dsn)
	if err != nil {
		panic(err)
	}
	db.SetMaxOpenConns(4)
	db.SetMaxIdleConns(4)
	pool := &redis.Pool{
		MaxIdle: 4,
		Dial:    func() (redis.Conn, error) { return redis.Dial("tcp", addr) },
	}
	return db, pool
}
