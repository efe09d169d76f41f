"""Service A for the whole-trace test: a threaded HTTP/1.1 server whose
GET /order queries PostgreSQL (psycopg), runs a Redis command and calls
service B over HTTP, then replies 200. The app propagates no trace context.

Usage: service_a.py PORT PG_PORT REDIS_PORT B_PORT
"""
import http.client
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg
import redis

port, pg_port, redis_port, b_port = (int(a) for a in sys.argv[1:5])


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def do_GET(self):
        if self.path != "/order":
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        dsn = f"host=127.0.0.1 port={pg_port} user=postgres dbname=kspan sslmode=disable"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT 1").fetchall()
        r = redis.Redis(host="127.0.0.1", port=redis_port)
        r.set("order:1", "placed")
        r.close()
        b = http.client.HTTPConnection("127.0.0.1", b_port, timeout=10)
        b.request("GET", "/users/1")
        b.getresponse().read()
        b.close()
        body = b"ordered\n"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("ready", flush=True)
server.serve_forever()
