// Go HTTPS server and client for kspan's end-to-end tests: Go's own
// crypto/tls and net/http, no cgo, standard library only.
//
//	go_tls_app server CERT KEY     serves on 127.0.0.1 (a free port), prints
//	                               the port on stdout; HTTP/1.1 and HTTP/2 (ALPN)
//	go_tls_app client [-h2] URL... GETs each URL on one keep-alive connection
//	                               (HTTP/2 with -h2), certificate not checked;
//	                               prints "STATUS PROTO" per URL
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
)

func serve(cert, key string) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/" || r.URL.Path == "/index.html":
			io.WriteString(w, "hello from go\n")
		case strings.HasPrefix(r.URL.Path, "/items/"):
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"item":"`+strings.TrimPrefix(r.URL.Path, "/items/")+`"}`)
		case r.URL.Path == "/err":
			http.Error(w, "boom", http.StatusInternalServerError)
		default:
			http.NotFound(w, r)
		}
	})
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	os.Stdout.Sync()
	if err := http.ServeTLS(ln, mux, cert, key); err != nil {
		panic(err)
	}
}

func client(args []string) {
	h2 := len(args) > 0 && args[0] == "-h2"
	if h2 {
		args = args[1:]
	}
	tr := &http.Transport{
		TLSClientConfig:   &tls.Config{InsecureSkipVerify: true},
		ForceAttemptHTTP2: h2,
		MaxConnsPerHost:   1,
	}
	c := &http.Client{Transport: tr}
	for _, u := range args {
		resp, err := c.Get(u)
		if err != nil {
			panic(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		fmt.Println(resp.StatusCode, resp.Proto)
	}
}

func main() {
	if len(os.Args) >= 4 && os.Args[1] == "server" {
		serve(os.Args[2], os.Args[3])
	} else if len(os.Args) >= 3 && os.Args[1] == "client" {
		client(os.Args[2:])
	} else {
		fmt.Fprintln(os.Stderr, "usage: go_tls_app server CERT KEY | client [-h2] URL...")
		os.Exit(2)
	}
}
