"""psycopg client whose pooled-style connection outlives the kernel's memory
of its socket: it prepares a statement, opens and closes SOCKETS loopback
connections of its own (more than kspan's socket map holds, so the kernel
evicts the idle database socket), then runs the prepared statement again
with Bind/Execute only. Usage: pg_evicted.py PORT SOCKETS

Runs on one CPU: the kernel's LRU map keeps each CPU's newest entries on a
list of that CPU's, flushed to the shared lists (where eviction happens)
only when that CPU needs room. An entry made on one CPU while the process
then fills the map from another can stay (a CI run under load kept the
database socket's)."""
import os
import sys

import psycopg

from loopback import open_pairs

port, sockets = int(sys.argv[1]), int(sys.argv[2])
os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
QUERY = "SELECT count(*) FROM pg_class WHERE relpages >= %s"
with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=kspan sslmode=disable") as conn:
    with conn.cursor() as cur:
        cur.execute(QUERY, (1,), prepare=True)
        cur.fetchall()
        # Used like the database socket was (see open_pairs).
        held = open_pairs(sockets)
        print(f"opened {len(held)}", flush=True)
        for s in held:
            s.close()
        cur.execute(QUERY, (2,), prepare=True)
        cur.fetchall()
print("done", flush=True)
