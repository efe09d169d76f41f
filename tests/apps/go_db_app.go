// Go web service for kspan's end-to-end tests of goroutine nesting: an
// HTTP server (HTTP/1.1, and h2c: x/net's handler, with prior knowledge or
// upgraded from HTTP/1.1) and two HTTPS servers (Go's net/http and
// crypto/tls; HTTP/1.1, and
// HTTP/2 through ALPN: net/http's own HTTP/2 server on the first,
// golang.org/x/net/http2's on the second) whose handlers query PostgreSQL
// through database/sql and lib/pq, and Redis through redigo, each from a
// shared connection pool, as Go services do. It propagates no trace
// context. Built in GOPATH mode against Debian's packaged sources
// (golang-github-lib-pq-dev, golang-github-gomodule-redigo-dev,
// golang-golang-x-net-dev).
//
//	go_db_app PG_DSN REDIS_ADDR CERT KEY
//
// prints "HTTP_PORT HTTPS_PORT XNET_HTTPS_PORT" on stdout, then serves on
// 127.0.0.1:
//
//	/pg/N      one query (SELECT ... WHERE oid > $1), answers its result
//	/redis/N   GET kspan:N, answers what it got
//	/both/N    both, in that order
//	/chain/N   GET /redis/N of its own HTTP server through net/http's
//	           client (its Transport writes on a goroutine of its own)
//	/h2chain/N the same over HTTP/2, from its first HTTPS server through
//	           net/http's client (each request written by a goroutine of
//	           its own)
//	/xchain/N  the same from its second HTTPS server through
//	           golang.org/x/net/http2's Transport
package main

import (
	cryptotls "crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"

	"github.com/gomodule/redigo/redis"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
)

func main() {
	if len(os.Args) != 5 {
		fmt.Fprintln(os.Stderr, "usage: go_db_app PG_DSN REDIS_ADDR CERT KEY")
		os.Exit(2)
	}
	db, pool := backends(os.Args[1], os.Args[2])
	pg := func(n int) (string, error) {
		var count int
		err := db.QueryRow("SELECT count(*) FROM pg_class WHERE oid > $1", n).Scan(&count)
		return strconv.Itoa(count), err
	}
	rd := func(n int) (string, error) {
		c := pool.Get()
		defer c.Close()
		v, err := redis.String(c.Do("GET", fmt.Sprintf("kspan:%d", n)))
		if err == redis.ErrNil {
			return "nil", nil
		}
		return v, err
	}
	listen := func() (net.Listener, int) {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			panic(err)
		}
		return l, l.Addr().(*net.TCPAddr).Port
	}
	plain, plainPort := listen()
	tls, tlsPort := listen()
	xnet, xnetPort := listen()
	get := func(c *http.Client, url string) (string, error) {
		resp, err := c.Get(url)
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		if resp.ProtoMajor != 2 && strings.HasPrefix(url, "https:") {
			return "", fmt.Errorf("%s: %s, not HTTP/2", url, resp.Proto)
		}
		b, err := io.ReadAll(resp.Body)
		return strings.TrimSpace(string(b)), err
	}
	skipVerify := &cryptotls.Config{InsecureSkipVerify: true}
	h2Client := &http.Client{Transport: &http.Transport{TLSClientConfig: skipVerify, ForceAttemptHTTP2: true}}
	xnetClient := &http.Client{Transport: &http2.Transport{TLSClientConfig: skipVerify}}
	via := func(c *http.Client, base string) func(int) (string, error) {
		return func(n int) (string, error) { return get(c, base+strconv.Itoa(n)) }
	}
	chain := via(http.DefaultClient, fmt.Sprintf("http://127.0.0.1:%d/redis/", plainPort))
	h2chain := via(h2Client, fmt.Sprintf("https://127.0.0.1:%d/redis/", tlsPort))
	xchain := via(xnetClient, fmt.Sprintf("https://127.0.0.1:%d/redis/", xnetPort))
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
		if len(parts) != 2 {
			http.NotFound(w, r)
			return
		}
		n, err := strconv.Atoi(parts[1])
		if err != nil {
			http.NotFound(w, r)
			return
		}
		var calls []func(int) (string, error)
		switch parts[0] {
		case "pg":
			calls = append(calls, pg)
		case "redis":
			calls = append(calls, rd)
		case "both":
			calls = append(calls, pg, rd)
		case "chain":
			calls = append(calls, chain)
		case "h2chain":
			calls = append(calls, h2chain)
		case "xchain":
			calls = append(calls, xchain)
		default:
			http.NotFound(w, r)
			return
		}
		for _, call := range calls {
			v, err := call(n)
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			fmt.Fprintln(w, v)
		}
	})
	xnetServer := &http.Server{Handler: mux}
	if err := http2.ConfigureServer(xnetServer, &http2.Server{}); err != nil {
		panic(err)
	}
	fmt.Println(plainPort, tlsPort, xnetPort)
	os.Stdout.Sync()
	// The plain server also speaks HTTP/2 without TLS (h2c): with prior
	// knowledge, or upgraded from HTTP/1.1 (`Upgrade: h2c`).
	go func() { panic(http.Serve(plain, h2c.NewHandler(mux, &http2.Server{}))) }()
	go func() { panic(xnetServer.ServeTLS(xnet, os.Args[3], os.Args[4])) }()
	panic(http.ServeTLS(tls, mux, os.Args[3], os.Args[4]))
}
