"""psycopg client whose pooled-style connection outlives the kernel's memory
of its socket: it prepares a statement, opens and closes SOCKETS loopback
connections of its own (more than kspan's socket map holds, so the kernel
evicts the idle database socket), then runs the prepared statement again
with Bind/Execute only. Usage: pg_evicted.py PORT SOCKETS"""
import resource
import socket
import sys

import psycopg

port, sockets = int(sys.argv[1]), int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (2 * sockets + 256, 2 * sockets + 256))
QUERY = "SELECT count(*) FROM pg_class WHERE relpages >= %s"
with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=kspan sslmode=disable") as conn:
    with conn.cursor() as cur:
        cur.execute(QUERY, (1,), prepare=True)
        cur.fetchall()
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        held = []
        for _ in range(sockets // 2):
            c = socket.create_connection(listener.getsockname())
            s, _ = listener.accept()
            # Used like the database socket was: the kernel's LRU evicts
            # first what was never used after its insert.
            c.sendall(b"x")
            s.recv(1)
            held += [c, s]
        print(f"opened {len(held)}", flush=True)
        for s in held:
            s.close()
        cur.execute(QUERY, (2,), prepare=True)
        cur.fetchall()
print("done", flush=True)
