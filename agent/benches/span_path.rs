//! The agent's whole user-space cost per span, as the capture thread pays it
//! (issue #2: agent CPU per 10k req/s): ring-buffer records of one keep-alive
//! connection go through conntrack, protocol detection and parsing, span
//! building (semantic-convention attributes), the linker, and the hand-off
//! to the async side (`Arc<Span>`, dropped there).
//!
//! - `http_wrk_nginx`: what `wrk` sends to nginx and what nginx answers
//!   (one read per request, one write per response), SERVER spans.
//! - `redis_pipeline16`: redis-benchmark `-P 16` SET as the client sees it
//!   (16 commands per write, 16 replies per read), CLIENT spans.
//! - `pgbench_select_prepared`: pgbench `-S -M prepared` as the client sees
//!   it (Bind/Execute/Sync of a named statement per query), CLIENT spans.
//!
//! Throughput is in spans: criterion prints the time per span, which is
//! the agent's CPU per request minus ring-buffer reading (same machine
//! noise as every micro-benchmark, none of the whole-system contention).

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group};
use kspan::conntrack::{ConnExchange, ConnLimits, ConnTable};
use kspan::protocol::Privacy;
use kspan::span::builder::{Clock, SpanBuilder};
use kspan::span::link::{LinkInput, LinkLimits, Linker};
use kspan::span::model::{ProcessResource, Span};
use kspan_common::{ConnEvent, DataHeader, EventKind, ROLE_CLIENT, ROLE_SERVER};

/// Spans per measured iteration.
const SPANS: usize = 512;

fn open(role: u32, lport: u16, rport: u16) -> ConnEvent {
    ConnEvent {
        kind: EventKind::ConnOpen as u32,
        role,
        tgid: 100,
        fd: 7,
        family: 2,
        lport,
        rport,
        laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        raddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        sock_id: 42,
        ..Default::default()
    }
}

fn data(ts: u64, payload: &[u8], egress: bool) -> DataHeader {
    DataHeader {
        kind: EventKind::Data as u32,
        flags: if egress { kspan_common::DATA_EGRESS } else { 0 },
        ts_ns: ts,
        tgid: 100,
        tid: 100,
        fd: 7,
        captured: payload.len() as u32,
        len: payload.len() as u64,
        sock_id: 42,
        goroutine: 0,
        ..Default::default()
    }
}

/// (egress, bytes) records of one connection, and the spans they make.
struct Workload {
    open: ConnEvent,
    records: Vec<(bool, Vec<u8>)>,
    spans: usize,
}

fn http_wrk_nginx() -> Workload {
    let request = b"GET / HTTP/1.1\r\nHost: 127.0.0.1:18080\r\n\r\n".to_vec();
    let body = vec![b'x'; 615];
    let mut response = format!(
        "HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Sun, 22 Nov 2026 11:00:00 GMT\r\n\
         Content-Type: text/html\r\nContent-Length: {}\r\nLast-Modified: Sat, 21 Nov 2026 10:00:00 GMT\r\n\
         Connection: keep-alive\r\nETag: \"6740a1b2-267\"\r\nAccept-Ranges: bytes\r\n\r\n",
        body.len()
    )
    .into_bytes();
    response.extend_from_slice(&body);
    let mut records = Vec::new();
    for _ in 0..SPANS {
        records.push((false, request.clone()));
        records.push((true, response.clone()));
    }
    Workload { open: open(ROLE_SERVER, 18080, 40000), records, spans: SPANS }
}

fn redis_pipeline16() -> Workload {
    let mut commands = Vec::new();
    let mut replies = Vec::new();
    for _ in 0..16 {
        commands.extend_from_slice(b"*3\r\n$3\r\nSET\r\n$16\r\nkey:__rand_int__\r\n$3\r\nxxx\r\n");
        replies.extend_from_slice(b"+OK\r\n");
    }
    let mut records = Vec::new();
    for _ in 0..SPANS / 16 {
        records.push((true, commands.clone()));
        records.push((false, replies.clone()));
    }
    Workload { open: open(ROLE_CLIENT, 40000, 6379), records, spans: SPANS }
}

/// A PostgreSQL message: type byte, length, body.
fn pg_msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn pgbench_select_prepared() -> Workload {
    let mut startup = Vec::new();
    let params = b"\0\x03\0\0user\0postgres\0database\0kspan\0\0";
    startup.extend_from_slice(&(params.len() as u32 + 4).to_be_bytes());
    startup.extend_from_slice(params);
    let ready = pg_msg(b'Z', b"I");
    let sql = b"SELECT abalance FROM pgbench_accounts WHERE aid = $1;\0";
    let parse = [pg_msg(b'P', &[b"P_0\0".as_slice(), sql, &[0, 0]].concat()), pg_msg(b'S', b"")].concat();
    let bind = [pg_msg(b'B', b"\0P_0\0\0\0\0\x01\0\0\0\x054242\0\0\0"), pg_msg(b'E', b"\0\0\0\0\0"), pg_msg(b'S', b"")]
        .concat();
    let result =
        [pg_msg(b'2', b""), pg_msg(b'D', b"\0\x01\0\0\0\x01\x30"), pg_msg(b'C', b"SELECT 1\0"), ready.clone()].concat();
    let mut records = vec![
        (true, startup),
        (false, [pg_msg(b'R', &[0, 0, 0, 0]), ready.clone()].concat()),
        (true, parse),
        (false, [pg_msg(b'1', b""), ready].concat()),
    ];
    for _ in 0..SPANS {
        records.push((true, bind.clone()));
        records.push((false, result.clone()));
    }
    Workload { open: open(ROLE_CLIENT, 40000, 5432), records, spans: SPANS }
}

/// Runs one connection's records through the capture thread's stages.
/// Buffers the capture thread keeps from one drain cycle to the next.
#[derive(Default)]
struct Buffers {
    out: Vec<ConnExchange>,
    ready: Vec<Span>,
}

fn run(w: &Workload, builder: &mut SpanBuilder, resource: &Arc<ProcessResource>, buf: &mut Buffers) -> usize {
    let mut conns = ConnTable::new(ConnLimits { max_connections: 16, idle_timeout_ns: u64::MAX });
    let mut linker = Linker::new(LinkLimits::default());
    let Buffers { out, ready } = buf;
    conns.on_open(&w.open, out);
    let mut ts = 1_000_000u64;
    for (egress, bytes) in &w.records {
        ts += 10_000;
        conns.on_data(&data(ts, bytes, *egress), bytes, out);
    }
    let mut sent = 0;
    for cx in out.drain(..) {
        let span = builder.build(&cx, resource.clone());
        let stream = cx.exchange.record.stream();
        let window = cx.exchange.window.map(|(from, until)| (builder.unix_ns(from), builder.unix_ns(until)));
        let (meta, peer_traced, serving) = (cx.meta, cx.peer_traced, cx.serving);
        let input = LinkInput { span, pid: cx.tgid, meta, peer_traced, serving, stream, window };
        linker.push(input, ts, ready);
        for s in ready.drain(..) {
            // The hand-off to the exporters; dropped here instead of there.
            drop(black_box(Arc::new(s)));
            sent += 1;
        }
    }
    sent
}

fn workloads() -> [(&'static str, Workload); 3] {
    [
        ("http_wrk_nginx", http_wrk_nginx()),
        ("redis_pipeline16", redis_pipeline16()),
        ("pgbench_select_prepared", pgbench_select_prepared()),
    ]
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("span_path");
    let resource = Arc::new(ProcessResource::default());
    let mut builder = SpanBuilder::new(Clock::with_offset(0), no_rules());
    for (name, w) in workloads() {
        let mut buf = Buffers::default();
        // At least one span per request (set-up exchanges may add some).
        let made = run(&w, &mut builder, &resource, &mut buf);
        assert!((w.spans..w.spans + 4).contains(&made), "{name}: {made} spans for {} requests", w.spans);
        g.throughput(Throughput::Elements(w.spans as u64));
        g.bench_function(name, |b| b.iter(|| black_box(run(black_box(&w), &mut builder, &resource, &mut buf))));
    }
    g.finish();
}

criterion_group!(benches, bench);

/// `SPAN_PATH_REPEAT=N`: run each workload N times outside criterion, for
/// a deterministic instruction count per span under
/// `valgrind --tool=callgrind` (this VM's timings swing by tens of percent;
/// instruction counts do not).
fn main() {
    if let Some(n) = std::env::var("SPAN_PATH_REPEAT").ok().and_then(|v| v.parse::<usize>().ok()) {
        let resource = Arc::new(ProcessResource::default());
        let mut builder = SpanBuilder::new(Clock::with_offset(0), no_rules());
        let only = std::env::args().skip(1).find(|a| !a.starts_with('-'));
        for (name, w) in workloads() {
            if only.as_deref().is_none_or(|o| name.contains(o)) {
                let mut buf = Buffers::default();
                for _ in 0..n {
                    black_box(run(&w, &mut builder, &resource, &mut buf));
                }
            }
        }
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}

/// What the agent builds with when no rules file is configured.
fn no_rules() -> Privacy {
    Privacy { skip_private: true, ..Privacy::default() }
}
