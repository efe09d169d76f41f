"""redis-py client, RESP2 and RESP3 (HELLO 3). Usage: redis_py_app.py PORT

For each protocol, on its own connections:
- a transaction: MULTI, SET, INCRBY, GET, EXEC sent as one pipeline;
- 20 SETs in one pipeline without a transaction;
- LPUSH on a string key (WRONGTYPE);
- Pub/Sub: SUBSCRIBE on one connection, 3 PUBLISHes from another, the 3
  messages read (RESP3: pushes), a PING answered in subscribe mode, then
  UNSUBSCRIBE;
- a GET after it all, on the connection that made the transaction.

Values hold "secret-value". Prints one JSON line per protocol.
"""
import json
import sys
import time

import redis


def run(port, protocol):
    p = f"p{protocol}:"
    r = redis.Redis(port=port, protocol=protocol)
    tx = r.pipeline(transaction=True)
    tx.set(p + "k", "secret-value-1").incrby(p + "n", 5).get(p + "k")
    executed = tx.execute()
    bulk = r.pipeline(transaction=False)
    for i in range(20):
        bulk.set(f"{p}bulk{i}", "secret-value-bulk")
    bulk.execute()
    wrongtype = None
    try:
        r.lpush(p + "k", "x")
    except redis.ResponseError as e:
        wrongtype = str(e).split()[0]
    ps = r.pubsub()
    ps.subscribe(p + "ch")
    while ps.get_message(timeout=1) is None:  # the confirmation
        pass
    publisher = redis.Redis(port=port, protocol=protocol)
    for i in range(3):
        publisher.publish(p + "ch", f"secret-value-msg{i}")
    got = []
    deadline = time.time() + 5
    while len(got) < 3 and time.time() < deadline:
        m = ps.get_message(timeout=1)
        if m and m["type"] == "message":
            got.append(m["data"].decode())
    ps.ping()
    pong = False
    while not pong and time.time() < deadline:
        m = ps.get_message(timeout=1)
        pong = bool(m and m["type"] == "pong")
    ps.unsubscribe(p + "ch")
    ps.close()
    last = r.get(p + "k")
    return {
        "protocol": protocol,
        "tx": [x.decode() if isinstance(x, bytes) else x for x in executed],
        "wrongtype": wrongtype,
        "messages": len(got),
        "pong": pong,
        "last": last.decode() if last else None,
    }


port = int(sys.argv[1])
for protocol in (2, 3):
    print(json.dumps(run(port, protocol)), flush=True)
