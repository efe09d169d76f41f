"""HTTPS server on asyncio streams (Python's ssl on memory BIOs: the event
loop moves the ciphertext, outside any OpenSSL call).

  asyncio_https_server.py CERT KEY PORT
      GET /items/N -> 200 JSON, anything else -> 404; keep-alive;
      prints "listening" once bound.
"""
import asyncio
import ssl
import sys


async def handle(reader, writer):
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            path = head.split(b" ")[1].decode()
            body = ('{"path": "%s"}' % path).encode()
            status = b"200 OK" if path.startswith("/items/") else b"404 Not Found"
            writer.write(
                b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body
            )
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    writer.close()


async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(sys.argv[1], sys.argv[2])
    server = await asyncio.start_server(handle, "127.0.0.1", int(sys.argv[3]), ssl=ctx)
    print("listening", flush=True)
    await server.serve_forever()


asyncio.run(main())
