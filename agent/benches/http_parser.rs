//! HTTP/1.x parser throughput on a realistic keep-alive stream: requests with
//! browser/SDK-like headers, JSON responses, one write per message (and a
//! variant with headers and body in separate writes). Reports requests/s.

use std::hint::black_box;

mod common;

use common::feed_all;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kspan::protocol::http::HttpParser;
use kspan::protocol::{ConnMeta, Direction, Privacy, Role};

const EXCHANGES: usize = 1000;

fn request(i: usize) -> Vec<u8> {
    format!(
        "GET /api/v1/users/{i}/orders?page=2&limit=50 HTTP/1.1\r\n\
         Host: orders.internal:8080\r\n\
         User-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/124.0 Safari/537.36\r\n\
         Accept: application/json, text/plain, */*\r\n\
         Accept-Encoding: gzip, deflate, br\r\n\
         Accept-Language: en-US,en;q=0.9\r\n\
         Authorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc\r\n\
         traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n\
         X-Request-Id: 7f1c2a9e-{i:08}\r\n\
         Connection: keep-alive\r\n\r\n"
    )
    .into_bytes()
}

fn response_head(body_len: usize) -> Vec<u8> {
    format!(
        "HTTP/1.1 200 OK\r\n\
         Date: Sat, 21 Nov 2026 10:00:00 GMT\r\n\
         Content-Type: application/json; charset=utf-8\r\n\
         Content-Length: {body_len}\r\n\
         Cache-Control: no-cache\r\n\
         X-Request-Id: 7f1c2a9e\r\n\
         Connection: keep-alive\r\n\r\n"
    )
    .into_bytes()
}

/// (direction, bytes) writes of one connection.
fn stream(split_body: bool) -> Vec<(Direction, Vec<u8>)> {
    let body = br#"{"orders":[{"id":1,"total":12.5},{"id":2,"total":7.25}],"page":2}"#;
    let mut writes = Vec::with_capacity(EXCHANGES * 3);
    for i in 0..EXCHANGES {
        writes.push((Direction::Ingress, request(i)));
        let mut head = response_head(body.len());
        if split_body {
            writes.push((Direction::Egress, head));
            writes.push((Direction::Egress, body.to_vec()));
        } else {
            head.extend_from_slice(body);
            writes.push((Direction::Egress, head));
        }
    }
    writes
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("http_parser");
    g.throughput(Throughput::Elements(EXCHANGES as u64));
    for (name, split) in [("keepalive_one_write_per_message", false), ("keepalive_body_separate_write", true)] {
        let writes = stream(split);
        let mut out = Vec::with_capacity(EXCHANGES);
        assert_eq!(
            feed_all(HttpParser::new(Role::Server), &writes, &mut out).exchanges,
            EXCHANGES as u64,
            "bench stream must parse cleanly"
        );
        g.bench_function(name, |b| {
            b.iter(|| {
                out.clear();
                black_box(feed_all(HttpParser::new(Role::Server), black_box(&writes), &mut out));
            })
        });
    }
    let writes = stream(false);
    let mut exchanges = Vec::with_capacity(EXCHANGES);
    feed_all(HttpParser::new(Role::Server), &writes, &mut exchanges);
    let conn =
        ConnMeta { local: "10.0.0.1:8080".parse().ok(), peer: "10.0.0.2:40000".parse().ok(), tls: false, unix: None };
    let privacy = Privacy::default();
    g.bench_function("describe", |b| {
        b.iter(|| {
            for e in &exchanges {
                black_box(e.record.describe(e.role, &conn, &privacy));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
