//! HTTP/2 parser throughput on a gRPC-like connection: unary calls with
//! realistic headers, each request HEADERS + DATA, each response HEADERS,
//! DATA and trailers, header blocks HPACK-encoded (dynamic table in use, as
//! real clients and servers do), one write per message. Reports calls/s.

use std::hint::black_box;

mod common;

use common::feed_all;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kspan::protocol::http2::{Http2Parser, PREFACE, encode_frame as frame};
use kspan::protocol::{Direction, Role};
use loona_hpack::Encoder;

const CALLS: usize = 1000;

fn headers(enc: &mut Encoder<'_>, stream: u32, end_stream: bool, fields: &[(&str, &str)]) -> Vec<u8> {
    let block = enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    frame(1, 0x4 | u8::from(end_stream), stream, &block)
}

/// (direction, bytes) writes of one server connection.
fn stream() -> Vec<(Direction, Vec<u8>)> {
    let (mut client, mut server) = (Encoder::new(), Encoder::new());
    let mut hello = PREFACE.to_vec();
    hello.extend(frame(4, 0, 0, &[0, 3, 0, 0, 0, 100]));
    let mut writes = vec![(Direction::Ingress, hello), (Direction::Egress, frame(4, 0, 0, &[]))];
    let message =
        [0u8, 0, 0, 0, 24, 10, 22, 111, 114, 100, 101, 114, 115, 47, 52, 50, 47, 105, 116, 101, 109, 115, 16, 1, 24, 2];
    for i in 0..CALLS {
        let id = 2 * i as u32 + 1;
        let deadline = format!("{}m", 900 + i % 100);
        let req = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/shop.orders.v1.OrderService/GetOrder"),
            (":authority", "orders.internal:50051"),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-accept-encoding", "identity, deflate, gzip"),
            ("user-agent", "grpc-go/1.64.0"),
            ("grpc-timeout", deadline.as_str()),
            ("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        ];
        let mut w = headers(&mut client, id, false, &req);
        w.extend(frame(0, 0x1, id, &message));
        writes.push((Direction::Ingress, w));
        let mut w = headers(&mut server, id, false, &[(":status", "200"), ("content-type", "application/grpc")]);
        w.extend(frame(0, 0, id, &message));
        w.extend(headers(&mut server, id, true, &[("grpc-status", "0"), ("grpc-message", "")]));
        writes.push((Direction::Egress, w));
    }
    writes
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("http2_parser");
    g.throughput(Throughput::Elements(CALLS as u64));
    let writes = stream();
    let mut out = Vec::with_capacity(CALLS);
    assert_eq!(
        feed_all(Http2Parser::new(Role::Server), &writes, &mut out).exchanges,
        CALLS as u64,
        "bench stream must parse cleanly"
    );
    g.bench_function("grpc_unary_calls_one_connection", |b| {
        b.iter(|| {
            out.clear();
            black_box(feed_all(Http2Parser::new(Role::Server), black_box(&writes), &mut out));
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
