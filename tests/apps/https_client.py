"""HTTPS client (urllib + ssl, certificate not verified: the test servers
use self-signed certificates). Prints JSON.

  get URL...         one GET per URL (urllib opens a connection per request)
  late SECONDS URL   sleeps before importing ssl/urllib (libssl is loaded
                     only then), waits for a line on stdin, then GETs URL
                     and exits when stdin closes
  keepalive N PORT   N GETs of / on one TLS connection to 127.0.0.1:PORT,
                     pausing 0.5 s after the 50th (the server has then made
                     about 100 reads and writes: past the 64 ciphertext
                     events after which kspan mutes a connection whose TLS
                     library it does not probe)
  asyncio N PORT     N GETs of /items/I on one connection made with asyncio
                     streams (OpenSSL on memory BIOs); the response needs a
                     Content-Length; prints status and wall ns per request
"""
import json
import sys
import time


def get(urls):
    import ssl
    import urllib.error
    import urllib.request

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    out = []
    for url in urls:
        try:
            with urllib.request.urlopen(url, context=ctx, timeout=10) as r:
                r.read()
                out.append({"url": url, "status": r.status})
        except urllib.error.HTTPError as e:
            out.append({"url": url, "status": e.code})
    return out


async def asyncio_gets(n, port):
    import asyncio
    import ssl

    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx)
    out = []
    for i in range(n):
        t = time.monotonic_ns()
        writer.write(f"GET /items/{i} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        lines = head.split("\r\n")
        length = next(int(v) for k, _, v in (l.partition(":") for l in lines[1:]) if k.lower() == "content-length")
        await reader.readexactly(length)
        out.append({"status": int(lines[0].split()[1]), "ns": time.monotonic_ns() - t})
    writer.close()
    await writer.wait_closed()
    return out


def main():
    mode = sys.argv[1]
    if mode == "get":
        print(json.dumps(get(sys.argv[2:])), flush=True)
    elif mode == "late":
        assert "ssl" not in sys.modules and "_ssl" not in sys.modules
        time.sleep(float(sys.argv[2]))
        import ssl  # noqa: F401  (maps libssl now)
        print("loaded", flush=True)
        sys.stdin.readline()
        print(json.dumps(get(sys.argv[3:])), flush=True)
        sys.stdin.readline()  # held until stdin closes (its maps can be read)
    elif mode == "keepalive":
        import http.client
        import ssl

        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        c = http.client.HTTPSConnection("127.0.0.1", int(sys.argv[3]), context=ctx)
        codes = {}
        for i in range(int(sys.argv[2])):
            c.request("GET", "/")
            r = c.getresponse()
            r.read()
            codes[r.status] = codes.get(r.status, 0) + 1
            if i == 49:
                time.sleep(0.5)
        print(json.dumps(codes), flush=True)
    elif mode == "asyncio":
        import asyncio

        print(json.dumps(asyncio.run(asyncio_gets(int(sys.argv[2]), int(sys.argv[3])))), flush=True)
    else:
        sys.exit(f"unknown mode {mode}")


if __name__ == "__main__":
    main()
