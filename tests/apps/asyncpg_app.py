"""asyncpg client: its own implementation of the extended protocol (no
libpq). Usage: asyncpg_app.py PORT

- executemany: 20 INSERTs sent as one pipeline (Bind/Execute each, one Sync);
- a cursor over 50 rows fetched 20 at a time (Execute with a row limit: the
  server stops with PortalSuspended twice);
- a prepared statement run 3 times;
- an INSERT that violates the primary key (SQLSTATE 23505).

Prints one JSON line: {"inserted": N, "cursor_rows": N, "prepared": [...],
"error": SQLSTATE}.
"""
import asyncio
import json
import sys

import asyncpg


async def main(port):
    c = await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="kspan", ssl=False)
    await c.execute("DROP TABLE IF EXISTS apg; CREATE TABLE apg (id int primary key, email text)")
    await c.executemany("INSERT INTO apg VALUES ($1, $2)", [(i, f"user{i}@secret.example") for i in range(20)])
    await c.executemany("INSERT INTO apg VALUES ($1, $2)", [(i, "bulk@secret.example") for i in range(20, 50)])
    rows = 0
    async with c.transaction():
        async for _ in c.cursor("SELECT id FROM apg ORDER BY id", prefetch=20):
            rows += 1
    st = await c.prepare("SELECT email FROM apg WHERE id = $1")
    prepared = [await st.fetchval(i) is not None for i in (1, 2, 3)]
    error = None
    try:
        await c.execute("INSERT INTO apg VALUES (1, 'dup@secret.example')")
    except asyncpg.PostgresError as e:
        error = e.sqlstate
    inserted = await c.fetchval("SELECT count(*) FROM apg")
    await c.close()
    print(json.dumps({"inserted": inserted, "cursor_rows": rows, "prepared": prepared, "error": error}), flush=True)


asyncio.run(main(int(sys.argv[1])))
