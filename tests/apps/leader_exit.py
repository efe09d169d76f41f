"""A process whose main thread ends first: it calls pthread_exit while
another thread keeps using its keep-alive connection. Usage:
leader_exit.py PORT

The worker makes one HTTP/1.1 request, waits until the main thread is gone
(a zombie in /proc/self/task), then makes two more on the same connection
and prints `done`. The process ends when the worker does. Its traffic after
the main thread's end is still its own: the process has not exited."""
import ctypes
import http.client
import os
import sys
import threading
import time


def get(conn):
    conn.request("GET", "/users/1")
    resp = conn.getresponse()
    resp.read()


def leader_gone():
    with open(f"/proc/self/task/{os.getpid()}/stat") as f:
        return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")


def worker(port, started):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    get(conn)
    started.set()
    deadline = time.monotonic() + 10
    while not leader_gone():
        assert time.monotonic() < deadline, "the main thread did not end"
        time.sleep(0.01)
    get(conn)
    get(conn)
    conn.close()
    print("done", flush=True)


def main():
    started = threading.Event()
    threading.Thread(target=worker, args=(int(sys.argv[1]), started)).start()
    started.wait()
    # CDLL releases the GIL around the call, which never returns.
    ctypes.CDLL(None).pthread_exit(None)


main()
