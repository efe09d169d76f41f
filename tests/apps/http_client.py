"""HTTP test client with modes the end-to-end tests need. Prints JSON.

  keepalive PORT PATH...   requests on one connection; per-request timing
  pieces PORT              POST /upload, 3000-byte body sent in 3 writes
  preopened PORT           one request, then waits for a line on stdin, then
                           a second request on the SAME connection
  garbage PORT             sends non-HTTP bytes on a connection
  load PORT N PATH [H=V]... N GETs of PATH on one keep-alive connection with
                           headers H; a `{i}` in PATH becomes the request index
"""
import json
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
        c = http.client.HTTPConnection("127.0.0.1", port)
        first = timed(c, "GET", "/users/1")
        print(json.dumps([first]), flush=True)
        sys.stdin.readline()
        second = timed(c, "GET", "/users/2")
        print(json.dumps([second]), flush=True)
    elif mode == "garbage":
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(bytes(range(256)) * 4)
        s.close()
        print("[]", flush=True)
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
    else:
        raise SystemExit("unknown mode " + mode)


if __name__ == "__main__":
    main()
