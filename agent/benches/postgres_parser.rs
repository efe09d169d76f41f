//! PostgreSQL parser throughput: queries/s through `PgParser` + `describe`
//! for pgbench-like streams (extended protocol with a Parse per query, and
//! prepared statements bound by name), and bytes/s through the sanitiser.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kspan::protocol::postgres::{PgParser, describe, sql};
use kspan::protocol::{Chunk, ConnMeta, Direction, ParseStats, Privacy, Record, Role, StreamParser};

const TRANSACTION: [(&str, &str); 7] = [
    ("BEGIN;", "BEGIN"),
    ("UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2;", "UPDATE 1"),
    ("SELECT abalance FROM pgbench_accounts WHERE aid = $1;", "SELECT 1"),
    ("UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2;", "UPDATE 1"),
    ("UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2;", "UPDATE 1"),
    (
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP);",
        "INSERT 0 1",
    ),
    ("END;", "COMMIT"),
];

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cstr(s: &str) -> Vec<u8> {
    [s.as_bytes(), b"\0"].concat()
}

/// (direction, bytes) per syscall for `n` transactions; `prepared` names the
/// statements once (pgbench -M prepared), else each query is Parsed unnamed.
fn stream(n: usize, prepared: bool) -> Vec<(Direction, Vec<u8>)> {
    let mut chunks = Vec::new();
    if prepared {
        for (i, (sql, _)) in TRANSACTION.iter().enumerate() {
            let name = format!("P_{i}");
            chunks.push((
                Direction::Egress,
                [msg(b'P', &[cstr(&name), cstr(sql), vec![0, 0]].concat()), msg(b'S', b"")].concat(),
            ));
            chunks.push((Direction::Ingress, [msg(b'1', b""), msg(b'Z', b"I")].concat()));
        }
    }
    for _ in 0..n {
        for (i, (sql, tag)) in TRANSACTION.iter().enumerate() {
            let name = if prepared { format!("P_{i}") } else { String::new() };
            let mut req = Vec::new();
            if !prepared {
                req.extend(msg(b'P', &[cstr(""), cstr(sql), vec![0, 0]].concat()));
            }
            req.extend(msg(
                b'B',
                &[cstr(""), cstr(&name), vec![0, 0, 0, 1], b"\0\0\0\x044242".to_vec(), vec![0, 0]].concat(),
            ));
            req.extend(msg(b'D', b"P\0"));
            req.extend(msg(b'E', b"\0\0\0\0\0"));
            req.extend(msg(b'S', b""));
            chunks.push((Direction::Egress, req));
            let mut resp = Vec::new();
            if !prepared {
                resp.extend(msg(b'1', b""));
            }
            resp.extend(msg(b'2', b""));
            resp.extend(msg(b'D', b"\0\x01\0\0\0\x044242"));
            resp.extend(msg(b'C', &cstr(tag)));
            resp.extend(msg(b'Z', b"T"));
            chunks.push((Direction::Ingress, resp));
        }
    }
    chunks
}

fn run(chunks: &[(Direction, Vec<u8>)]) -> usize {
    let conn = ConnMeta::default();
    let privacy = Privacy::default();
    let mut parser = PgParser::new(Role::Client);
    let mut out = Vec::new();
    let mut stats = ParseStats::default();
    let mut described = 0;
    for (i, (dir, data)) in chunks.iter().enumerate() {
        parser.feed(
            &Chunk { dir: *dir, ts_ns: i as u64, tid: 1, data, len: data.len(), tail: &[] },
            &mut out,
            &mut stats,
        );
        for e in out.drain(..) {
            if let Record::Postgres(r) = &e.record {
                described += describe(r, e.role, &conn, &privacy).attributes.len();
            }
        }
    }
    described
}

fn parser(c: &mut Criterion) {
    const TX: usize = 200;
    let mut g = c.benchmark_group("postgres_parser");
    g.throughput(Throughput::Elements((TX * TRANSACTION.len()) as u64));
    for (label, prepared) in [("pgbench_extended_queries", false), ("pgbench_prepared_queries", true)] {
        let chunks = stream(TX, prepared);
        g.bench_function(label, |b| b.iter(|| run(black_box(&chunks))));
    }
    g.finish();
}

fn sanitize(c: &mut Criterion) {
    let sqls = [
        "SELECT id, email FROM users WHERE email = 'alice@example.com' AND created_at > '2024-01-01' AND id IN (1, 2, 3, 4)",
        "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (7, 1, 28400, -1654, CURRENT_TIMESTAMP)",
        "UPDATE \"Accounts\" SET balance = balance - 12.50, note = E'refund\\'s' WHERE id = $1 -- trailing comment",
        "WITH t AS (SELECT * FROM orders WHERE total > 100.0) SELECT count(*) FROM t JOIN customers c ON c.id = t.customer_id",
    ];
    let bytes: usize = sqls.iter().map(|s| s.len()).sum();
    let mut g = c.benchmark_group("postgres_sql");
    g.throughput(Throughput::Bytes(bytes as u64));
    g.bench_function("sanitize", |b| b.iter(|| sqls.iter().map(|s| sql::sanitize(black_box(s)).len()).sum::<usize>()));
    g.bench_function("summarize", |b| {
        b.iter(|| sqls.iter().filter(|s| sql::summarize(black_box(s)).1.is_some()).count())
    });
    g.finish();
}

criterion_group!(benches, parser, sanitize);
criterion_main!(benches);
