"""psycopg (extended protocol) client: parameterised queries. Usage: pg_app.py PORT [SSLMODE]"""
import sys
import psycopg

port = int(sys.argv[1])
sslmode = sys.argv[2] if len(sys.argv) > 2 else "disable"
with psycopg.connect(f"host=127.0.0.1 port={port} user=postgres dbname=kspan sslmode={sslmode}") as conn:
    if sslmode == "require":
        assert conn.pgconn.ssl_in_use, "the connection must be encrypted"
    with conn.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS orders (id int primary key, customer text, total numeric)")
        for i in range(5):
            cur.execute("INSERT INTO orders (id, customer, total) VALUES (%s, %s, %s)", (i, "alice@example.com", 12.5))
        cur.execute("SELECT customer, total FROM orders WHERE id = %s", (3,))
        cur.fetchall()
    conn.commit()
print("done", flush=True)
