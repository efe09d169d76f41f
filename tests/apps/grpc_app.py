"""gRPC test server and client (grpcio, no generated code: raw bytes messages).

Service `kspan.test.Echo`: `Say` answers with the request bytes (status OK),
`Fail` aborts with NOT_FOUND, details "no such thing".

  server PORT             plaintext (h2c) on 127.0.0.1:PORT; prints "ready"
                          once listening
  client PORT N [TAG]     one channel: Say N times, then Fail once, in
                          sequence; prints one line per call and exits 0 if
                          every outcome was the expected one (TAG is ignored;
                          it lets tests select the process by command line)
                          (KSPAN_MSG_BYTES=B pads each Say message to B bytes)
  joined PORT N [TAG]     like client, on a channel that first calls Say
                          three times, prints "warm" and waits for a line on
                          stdin (a connection open before kspan starts)
"""
import os
import sys
import time
from concurrent import futures

import grpc

SERVICE = "kspan.test.Echo"


def identity(b):
    return b


def say(request, context):
    return request


def fail(request, context):
    context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")


def serve(port):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handlers = {
        "Say": grpc.unary_unary_rpc_method_handler(say, request_deserializer=identity, response_serializer=identity),
        "Fail": grpc.unary_unary_rpc_method_handler(fail, request_deserializer=identity, response_serializer=identity),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    if server.add_insecure_port("127.0.0.1:%d" % port) != port:
        raise SystemExit("cannot listen on port %d" % port)
    server.start()
    print("ready", flush=True)
    server.wait_for_termination()


def call(channel, method):
    return channel.unary_unary("/%s/%s" % (SERVICE, method), request_serializer=identity, response_deserializer=identity)


def client(port, n, warm=False):
    ok = True
    with grpc.insecure_channel("127.0.0.1:%d" % port) as channel:
        say_rpc, fail_rpc = call(channel, "Say"), call(channel, "Fail")
        if warm:
            for _ in range(3):
                ok = ok and say_rpc(b"warm", timeout=10) == b"warm"
            print("warm", flush=True)
            sys.stdin.readline()
        size = int(os.environ.get("KSPAN_MSG_BYTES", "0"))
        for i in range(n):
            msg = (b"hello %d " % i).ljust(size, b".")
            t0 = time.time_ns()
            got = say_rpc(msg, timeout=10)
            print("Say %d OK %r %d" % (i, got[:32], time.time_ns() - t0), flush=True)
            ok = ok and got == msg
        try:
            fail_rpc(b"missing", timeout=10)
            print("Fail unexpectedly OK", flush=True)
            ok = False
        except grpc.RpcError as e:
            print("Fail %s %r" % (e.code().name, e.details()), flush=True)
            ok = ok and e.code() == grpc.StatusCode.NOT_FOUND and e.details() == "no such thing"
    return ok


if __name__ == "__main__":
    mode, port = sys.argv[1], int(sys.argv[2])
    if mode == "server":
        serve(port)
    elif mode in ("client", "joined"):
        sys.exit(0 if client(port, int(sys.argv[3]), warm=mode == "joined") else 1)
    else:
        raise SystemExit("unknown mode " + mode)
