"""Threaded HTTP/1.1 test server (one thread per connection, keep-alive).

Routes: GET /users/<n> -> 200, /missing -> 404, /boom -> 500, /slow?ms=N,
/spliced?bytes=N -> 200 with N bytes sent by splice(2) from a pipe,
/stream?chunks=N&bytes=B&ms=M -> 200 with a chunked body of N chunks of B
bytes, one write each, M ms apart,
POST /upload -> 200 with the body length. Usage: http_app.py PORT [TAG]
(TAG is ignored; it lets tests select the process by command line). A PORT
that starts with `/` is the path of a Unix domain socket to serve on.
"""
import os
import socketserver
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse, parse_qs


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; without this, Nagle + delayed ACK
    # add ~40 ms to every keep-alive request.
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def reply(self, code, body=b"ok\n"):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self):
        u = urlparse(self.path)
        if u.path.startswith("/users/"):
            self.reply(200, b'{"user": "%s"}\n' % u.path[7:].encode())
        elif u.path == "/missing":
            self.reply(404, b"not found\n")
        elif u.path == "/healthz":
            self.reply(200, b"healthy\n")
        elif u.path == "/boom":
            self.reply(500, b"internal error\n")
        elif u.path == "/spliced":
            self.spliced(int(parse_qs(u.query).get("bytes", ["1000"])[0]))
        elif u.path == "/stream":
            q = parse_qs(u.query)
            self.stream(int(q["chunks"][0]), int(q["bytes"][0]), int(q["ms"][0]))
        elif u.path == "/slow":
            ms = int(parse_qs(u.query).get("ms", ["100"])[0])
            time.sleep(ms / 1000.0)
            self.reply(200)
        else:
            self.reply(200)

    do_HEAD = do_GET

    def spliced(self, n):
        # The head through the socket's write, the body (at most a pipe's
        # 64 KiB) from a pipe with splice(2): the bytes never pass through
        # this process's memory, as with HAProxy's kernel splicing.
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(n))
        self.end_headers()
        r, w = os.pipe()
        os.write(w, b"s" * n)
        os.close(w)
        sent = 0
        while sent < n:
            sent += os.splice(r, self.connection.fileno(), n - sent)
        os.close(r)

    def stream(self, chunks, size, ms):
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for i in range(chunks):
            if i:
                time.sleep(ms / 1000.0)
            self.wfile.write(b"%x\r\n%s\r\n" % (size, b"c" * size))
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(n)
        self.reply(200, b"got %d\n" % len(body))


class UnixHandler(Handler):
    # TCP_NODELAY does not apply to a Unix domain socket.
    disable_nagle_algorithm = False

    def address_string(self):
        return "unix"


class ThreadingUnixHTTPServer(socketserver.ThreadingUnixStreamServer):
    def server_bind(self):
        socketserver.UnixStreamServer.server_bind(self)
        self.server_name, self.server_port = "localhost", 0


if __name__ == "__main__":
    if sys.argv[1].startswith("/"):
        srv = ThreadingUnixHTTPServer(sys.argv[1], UnixHandler)
    else:
        srv = ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler)
    srv.daemon_threads = True
    print("ready", flush=True)
    srv.serve_forever()
