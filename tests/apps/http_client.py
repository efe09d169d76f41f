"""HTTP test client with modes the end-to-end tests need. Prints JSON.

  keepalive PORT PATH...   requests on one connection; per-request timing
  pieces PORT              POST /upload, 3000-byte body sent in 3 writes
  preopened PORT [tls]     one request, then waits for a line on stdin, then
                           a second request on the SAME connection (with
                           `tls`: HTTPS through Python's ssl, which is
                           OpenSSL; the certificate is not checked)
  garbage PORT             sends non-HTTP bytes on a connection
  opaque PORT N            prints its pid, waits for a line on stdin, then
                           makes N round trips of binary frames over a
                           loopback connection to an echo thread of its
                           own (pausing 0.5 s after the 10th), closes it,
                           and makes one GET /users/9 on a new connection
                           to PORT
  load PORT N PATH [H=V]... N GETs of PATH on one keep-alive connection with
                           headers H; a `{i}` in PATH becomes the request index
  vectored PORT            on one connection: a GET sent with sendmsg in 4
                           buffers and read with recvmsg_into into 3; then a
                           POST whose head and 1100-byte body go in one
                           sendmsg of 12 buffers (more than the 8 kspan
                           captures without bpf_loop); then GET
                           /stream?chunks=3&bytes=10000&ms=30, each of its
                           chunks (over the 4 KiB capture) read with one
                           recvmsg_into into 2 buffers; then a GET /users/7
  spliced PORT             on one connection: GET /spliced?bytes=3000,
                           GET /users/5, GET /spliced?bytes=500; each head
                           read with 1-byte recvs, each body moved out of the
                           socket into a pipe with splice(2)
  peeked PORT              on one connection: four GETs, each response
                           peeked at (recv, then recvmsg, with MSG_PEEK)
                           before it is read
"""
import json
import os
import select
import socket
import sys
import time
import http.client


def timed(conn, method, path, body=None, headers=None):
    t0 = time.time_ns()
    conn.request(method, path, body=body, headers=headers or {})
    r = conn.getresponse()
    r.read()
    t1 = time.time_ns()
    return {"path": path, "status": r.status, "start": t0, "end": t1}


def main():
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "keepalive":
        c = http.client.HTTPConnection("127.0.0.1", port)
        out = [timed(c, "GET", p) for p in sys.argv[3:]]
        print(json.dumps(out), flush=True)
    elif mode == "pieces":
        s = socket.create_connection(("127.0.0.1", port))
        body = b"x" * 3000
        t0 = time.time_ns()
        s.sendall(b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 3000\r\n\r\n")
        for i in range(3):
            time.sleep(0.05)
            s.sendall(body[i * 1000:(i + 1) * 1000])
        resp = b""
        while b"got 3000" not in resp:
            chunk = s.recv(4096)
            if not chunk:
                break
            resp += chunk
        t1 = time.time_ns()
        print(json.dumps([{"path": "/upload", "status": int(resp.split()[1]), "start": t0, "end": t1}]), flush=True)
    elif mode == "preopened":
        if sys.argv[3:] == ["tls"]:
            import ssl

            c = http.client.HTTPSConnection("127.0.0.1", port, context=ssl._create_unverified_context())
        else:
            c = http.client.HTTPConnection("127.0.0.1", port)
        first = timed(c, "GET", "/users/1")
        first["local_port"] = c.sock.getsockname()[1]
        print(json.dumps([first]), flush=True)
        sys.stdin.readline()
        second = timed(c, "GET", "/users/2")
        print(json.dumps([second]), flush=True)
    elif mode == "garbage":
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(bytes(range(256)) * 4)
        s.close()
        print("[]", flush=True)
    elif mode == "opaque":
        import threading
        n = int(sys.argv[3])
        srv = socket.create_server(("127.0.0.1", 0))

        def echo():
            c, _ = srv.accept()
            while True:
                d = c.recv(65536)
                if not d:
                    break
                c.sendall(d)
            c.close()

        threading.Thread(target=echo, daemon=True).start()
        print(json.dumps({"pid": __import__("os").getpid()}), flush=True)
        sys.stdin.readline()
        s = socket.create_connection(srv.getsockname())
        for i in range(n):
            frame = b"\x00\x01frame %d\xff" % i
            s.sendall(frame)
            got = b""
            while len(got) < len(frame):
                got += s.recv(65536)
            if i == 9:
                time.sleep(0.5)
        s.close()
        c = http.client.HTTPConnection("127.0.0.1", port)
        print(json.dumps([timed(c, "GET", "/users/9")]), flush=True)
    elif mode == "load":
        n, path = int(sys.argv[3]), sys.argv[4]
        headers = dict(h.split("=", 1) for h in sys.argv[5:])
        c = http.client.HTTPConnection("127.0.0.1", port)
        codes = {}
        for i in range(n):
            c.request("GET", path.replace("{i}", str(i)), headers=headers)
            r = c.getresponse()
            r.read()
            codes[r.status] = codes.get(r.status, 0) + 1
        print(json.dumps([{"codes": codes}]), flush=True)
    elif mode == "vectored":
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out = []

        def reply(path, t0):
            bufs = [bytearray(16), bytearray(16), bytearray(4096)]
            resp = b""
            while b"\r\n\r\n" not in resp or len(resp) < head_and_body(resp):
                n = s.recvmsg_into(bufs)[0]
                if n == 0:
                    break
                joined = b"".join(bytes(b) for b in bufs)
                resp += joined[:n]
            out.append({"path": path, "status": int(resp.split()[1]), "start": t0, "end": time.time_ns()})

        t0 = time.time_ns()
        s.sendmsg([b"GET /users/", b"31 HTTP/1.1\r\n", b"Host: test\r\n", b"\r\n"])
        reply("/users/31", t0)
        body = [b"y" * 100] * 11
        head = b"POST /upload HTTP/1.1\r\nHost: test\r\nContent-Length: 1100\r\n\r\n"
        t0 = time.time_ns()
        s.sendmsg([head] + body)
        reply("/upload", t0)
        t0 = time.time_ns()
        s.sendall(b"GET /stream?chunks=3&bytes=10000&ms=30 HTTP/1.1\r\nHost: test\r\n\r\n")
        bufs = [bytearray(16), bytearray(65536)]
        resp = b""
        while not resp.endswith(b"\r\n0\r\n\r\n"):
            n = s.recvmsg_into(bufs)[0]
            if n == 0:
                break
            resp += (bytes(bufs[0]) + bytes(bufs[1]))[:n]
        out.append({"path": "/stream", "status": int(resp.split()[1]), "start": t0, "end": time.time_ns()})
        t0 = time.time_ns()
        s.sendall(b"GET /users/7 HTTP/1.1\r\nHost: test\r\n\r\n")
        reply("/users/7", t0)
        print(json.dumps(out), flush=True)
    elif mode == "spliced":
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out = []
        for path in ["/spliced?bytes=3000", "/users/5", "/spliced?bytes=500"]:
            t0 = time.time_ns()
            s.sendall(b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % path.encode())
            head = b""
            while not head.endswith(b"\r\n\r\n"):
                head += s.recv(1)
            left = head_and_body(head) - len(head)
            r, w = os.pipe()
            while left > 0:
                n = os.splice(s.fileno(), w, left)
                os.read(r, n)
                left -= n
            os.close(r)
            os.close(w)
            out.append({"path": path, "status": int(head.split()[1]), "start": t0, "end": time.time_ns()})
        print(json.dumps(out), flush=True)
    elif mode == "peeked":
        s = socket.create_connection(("127.0.0.1", port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        out = []
        for i, path in enumerate(["/users/1", "/users/2", "/users/3", "/users/4"]):
            t0 = time.time_ns()
            s.sendall(b"GET %s HTTP/1.1\r\nHost: test\r\n\r\n" % path.encode())
            select.select([s], [], [])
            time.sleep(0.05)
            # A look before the read, as curl takes one at a kept-alive
            # connection before it reuses it: the bytes stay in the socket.
            if i % 2 == 0:
                s.recv(1, socket.MSG_PEEK)
            else:
                s.recvmsg(16, 0, socket.MSG_PEEK)
            resp = b""
            while b"\r\n\r\n" not in resp or len(resp) < head_and_body(resp):
                resp += s.recv(4096)
            out.append({"path": path, "status": int(resp.split()[1]), "start": t0, "end": time.time_ns()})
        print(json.dumps(out), flush=True)
    else:
        raise SystemExit("unknown mode " + mode)


def head_and_body(resp):
    """Length of a response (head + Content-Length body) once its head is in."""
    head, _, _ = resp.partition(b"\r\n\r\n")
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(head) + 4 + int(value)
    return len(head) + 4


if __name__ == "__main__":
    main()
