//! Cost of whole-trace linking per span (issue #6: it must fit in the capture
//! core's per-request budget): `cargo bench -p kspan --bench link`.
//!
//! - `server_remote_peer`: a server span called from another host (leaves at once).
//! - `thread_nesting`: a client span held until its thread's server span nests it.
//! - `whole_trace`: A serves, calls B on this host, B queries a database (4 spans,
//!   2 nested, 1 cross-process).
//! - `keep_alive_cross_process`: a load generator on this host calls a traced
//!   server over 32 keep-alive connections (`wrk -c32`); each server span waits
//!   for its client span, which links it (the case `cargo xtask bench --only
//!   linking` measures whole).
//!
//! Throughput is in spans, so criterion prints the time per span.

use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::Arc;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use kspan::protocol::ConnMeta;
use kspan::span::link::{LinkInput, LinkLimits, Linker};
use kspan::span::model::{Attributes, Span, SpanKind, SpanStatus};

fn span(kind: SpanKind, n: u64, tid: u32, start: u64, end: u64) -> Span {
    let b = n.to_le_bytes();
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&b);
    trace_id[8] = 1;
    let mut span_id = b;
    span_id[7] |= 0x80;
    Span {
        trace_id,
        span_id,
        parent_span_id: [0; 8],
        trace_state: String::new(),
        trace_flags: 1,
        name: "GET /api/{id}".into(),
        kind,
        start_unix_ns: start,
        end_unix_ns: end,
        status: SpanStatus::default(),
        attributes: Attributes::new(),
        private: Attributes::new(),
        events: Vec::new(),
        resource: Arc::default(),
        tid,
    }
}

fn addr(s: &str) -> Option<SocketAddr> {
    s.parse().ok()
}

fn input(span: Span, pid: u32, local: &str, peer: &str, peer_traced: bool) -> LinkInput {
    LinkInput {
        span,
        pid,
        meta: ConnMeta { local: addr(local), peer: addr(peer), tls: false, unix: None },
        peer_traced,
        serving: true,
        stream: 0,
        window: None,
    }
}

/// One request's spans; `i` makes ids, threads and ports differ between requests.
fn whole_trace(i: u64) -> Vec<LinkInput> {
    let t = i * 1_000;
    let port = 40_000 + (i % 20_000) as u16;
    let a_out = format!("127.0.0.1:{port}");
    vec![
        input(span(SpanKind::Client, 4 * i + 3, 9, t + 40, t + 50), 200, "127.0.0.1:42000", "127.0.0.1:5432", false),
        input(span(SpanKind::Server, 4 * i + 2, 9, t + 30, t + 80), 200, "127.0.0.1:9090", &a_out, true),
        input(span(SpanKind::Client, 4 * i + 1, 7, t + 20, t + 90), 100, &a_out, "127.0.0.1:9090", true),
        input(span(SpanKind::Server, 4 * i, 7, t + 10, t + 100), 100, "10.0.0.1:8080", "10.0.0.9:50000", false),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("link");
    let mut out = Vec::with_capacity(8);

    g.throughput(Throughput::Elements(1));
    let mut l = Linker::new(LinkLimits::default());
    let mut i = 0u64;
    g.bench_function("server_remote_peer", |b| {
        b.iter_batched(
            || {
                i += 1;
                input(
                    span(SpanKind::Server, i, 7, i * 100, i * 100 + 50),
                    100,
                    "10.0.0.1:8080",
                    "10.0.0.9:50000",
                    false,
                )
            },
            |s| {
                l.push(s, 0, &mut out);
                black_box(out.len());
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });

    g.throughput(Throughput::Elements(2));
    let mut l = Linker::new(LinkLimits::default());
    let mut i = 0u64;
    g.bench_function("thread_nesting", |b| {
        b.iter_batched(
            || {
                i += 1;
                let t = i * 1_000;
                [
                    input(
                        span(SpanKind::Client, 2 * i + 1, 7, t + 20, t + 30),
                        100,
                        "127.0.0.1:41000",
                        "10.0.0.5:5432",
                        false,
                    ),
                    input(
                        span(SpanKind::Server, 2 * i, 7, t + 10, t + 40),
                        100,
                        "10.0.0.1:8080",
                        "10.0.0.9:50000",
                        false,
                    ),
                ]
            },
            |pair| {
                for s in pair {
                    l.push(s, 0, &mut out);
                }
                assert_eq!(out.len(), 2);
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });

    g.throughput(Throughput::Elements(4));
    let mut l = Linker::new(LinkLimits::default());
    let mut i = 0u64;
    let mut now = 0u64;
    g.bench_function("whole_trace", |b| {
        b.iter_batched(
            || {
                i += 1;
                whole_trace(i)
            },
            |spans| {
                for s in spans {
                    l.push(s, now, &mut out);
                }
                // Notes of linked clients expire on the tick, as in the agent.
                now += 1_000;
                l.tick(now, &mut out);
                assert_eq!(out.len(), 4);
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });
    assert_eq!(l.stats.cross_process, l.stats.nested / 2, "every B span linked under its A call");

    g.throughput(Throughput::Elements(2));
    let mut l = Linker::new(LinkLimits::default());
    let mut i = 0u64;
    let mut now = 0u64;
    g.bench_function("keep_alive_cross_process", |b| {
        b.iter_batched(
            || {
                i += 1;
                let t = i * 1_000;
                let conn = format!("127.0.0.1:{}", 40_000 + i % 32);
                let client = input(span(SpanKind::Client, 2 * i, 7, t, t + 50), 100, &conn, "127.0.0.1:8080", true);
                [
                    input(span(SpanKind::Server, 2 * i + 1, 9, t + 10, t + 40), 200, "127.0.0.1:8080", &conn, true),
                    LinkInput { serving: false, ..client },
                ]
            },
            |pair| {
                for s in pair {
                    l.push(s, now, &mut out);
                }
                // 50k requests/s: notes expire on the tick, as in the agent.
                now += 20_000;
                l.tick(now, &mut out);
                assert_eq!(out.len(), 2);
                out.clear();
            },
            BatchSize::SmallInput,
        )
    });
    g.finish();
    assert_eq!((l.stats.cross_process, l.held()), (i, 0), "every server span linked to its client");
}

criterion_group!(benches, bench);
criterion_main!(benches);
