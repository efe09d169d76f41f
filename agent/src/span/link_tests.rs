//! Tests of the linking stage.

use std::net::SocketAddr;
use std::sync::Arc;

use super::*;
use crate::span::model::{Attributes, SpanStatus};

const MS: u64 = 1_000_000;
const A: u32 = 100;
const B: u32 = 200;

fn limits() -> LinkLimits {
    LinkLimits { hold_ns: 500 * MS, max_held: 64, max_per_thread: 8 }
}

fn span(kind: SpanKind, n: u8, tid: u32, start: u64, end: u64) -> Span {
    Span {
        trace_id: [n; 16],
        span_id: [n; 8],
        parent_span_id: [0; 8],
        trace_state: String::new(),
        trace_flags: 1,
        name: format!("s{n}").into(),
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

fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// A connection from `client` to `server`, seen from one end.
fn meta(local: &str, peer: &str) -> ConnMeta {
    ConnMeta { local: Some(addr(local)), peer: Some(addr(peer)), tls: false, unix: None }
}

fn remote() -> ConnMeta {
    meta("10.0.0.1:8080", "10.0.0.9:40000")
}

fn input(span: Span, pid: u32, meta: ConnMeta) -> LinkInput {
    LinkInput { span, pid, meta, peer_traced: true, serving: true, stream: 0, window: None }
}

fn find(out: &[Span], n: u8) -> &Span {
    out.iter().find(|s| s.span_id == [n; 8]).unwrap_or_else(|| panic!("span {n} not released"))
}

#[test]
fn nested_client_becomes_child_of_its_threads_server() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    l.push(input(span(SpanKind::Client, 2, 7, 20, 30), A, meta("10.0.0.1:40000", "10.0.0.5:5432")), 0, &mut out);
    assert!(out.is_empty(), "client is held until its server span arrives");
    l.push(input(span(SpanKind::Server, 1, 7, 10, 40), A, remote()), 0, &mut out);
    assert_eq!(out.len(), 2);
    let (c, s) = (find(&out, 2), find(&out, 1));
    assert_eq!(c.trace_id, s.trace_id);
    assert_eq!(c.parent_span_id, s.span_id);
    assert!(s.is_root());
    assert_eq!(l.stats.nested, 1);
    assert_eq!(l.held(), 0);
}

#[test]
fn a_pipelining_client_keeps_a_bounded_number_of_notes_per_connection() {
    let mut l = Linker::new(LinkLimits { hold_ns: 500 * MS, max_held: 100_000, max_per_thread: 8 });
    let mut out = Vec::new();
    for n in 0..200u32 {
        let s = span(SpanKind::Client, (n % 250) as u8, 7, u64::from(n) * 10, u64::from(n) * 10 + 5);
        l.push(input(s, A, meta("127.0.0.1:40000", "127.0.0.1:6379")), 0, &mut out);
    }
    assert!(
        l.notes.values().all(|v| v.len() <= MAX_NOTES_PER_CONN),
        "{:?}",
        l.notes.values().map(|v| v.len()).collect::<Vec<_>>()
    );
    l.flush(&mut out);
    assert_eq!(out.len(), 200, "no span is lost");
}

#[test]
fn client_of_another_thread_is_not_nested() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    l.push(input(span(SpanKind::Client, 2, 8, 20, 30), A, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Server, 1, 7, 10, 40), A, remote()), 0, &mut out);
    assert_eq!(out.len(), 1, "only the server leaves");
    assert_eq!(l.stats.nested, 0);
    l.tick(500 * MS, &mut out);
    let c = find(&out, 2);
    assert!(c.is_root());
    assert_eq!(c.trace_id, [2; 16]);
    assert_eq!(l.stats.released_unlinked, 1);
}

#[test]
fn client_that_ended_before_the_server_started_leaves_unlinked() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    l.push(input(span(SpanKind::Client, 2, 7, 1, 5), A, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Client, 3, 7, 60, 70), A, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Server, 1, 7, 10, 40), A, remote()), 0, &mut out);
    assert!(find(&out, 2).is_root());
    assert_eq!(l.stats.released_unlinked, 1);
    assert_eq!(l.held(), 1, "a client after the server waits for a later request");
    l.push(input(span(SpanKind::Server, 4, 7, 50, 80), A, remote()), 0, &mut out);
    assert_eq!(find(&out, 3).parent_span_id, [4; 8]);
}

#[test]
fn event_loop_thread_with_overlapping_requests_stops_nesting() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    // Two requests in flight on one thread: the second ends first.
    l.push(input(span(SpanKind::Server, 1, 7, 15, 40), A, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Server, 2, 7, 10, 50), A, remote()), 0, &mut out);
    assert_eq!(l.stats.multiplexed, 1);
    l.push(input(span(SpanKind::Client, 3, 7, 60, 70), A, remote()), 0, &mut out);
    assert_eq!(l.held(), 0, "clients of an event loop are not held");
    l.push(input(span(SpanKind::Server, 4, 7, 55, 80), A, remote()), 0, &mut out);
    assert!(find(&out, 3).is_root());
    assert_eq!(l.stats.nested, 0);
    // Another process keeps nesting.
    l.push(input(span(SpanKind::Client, 5, 7, 60, 70), B, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Server, 6, 7, 55, 80), B, remote()), 0, &mut out);
    assert_eq!(find(&out, 5).parent_span_id, [6; 8]);
}

#[test]
fn a_process_given_an_exited_event_loops_pid_nests_again() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    l.push(input(span(SpanKind::Server, 1, 7, 15, 40), A, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Server, 2, 7, 10, 50), A, remote()), 0, &mut out);
    assert_eq!(l.stats.multiplexed, 1);
    l.push(input(span(SpanKind::Server, 3, 8, 10, 20), A, remote()), 0, &mut out);
    assert_eq!(table(&l, "link_last_server"), 2);
    assert_eq!(table(&l, "link_multiplexed_processes"), 1);
    // A exits; a new process gets its pid and serves one request at a time.
    l.forget_process(A);
    assert_eq!((table(&l, "link_last_server"), table(&l, "link_multiplexed_processes")), (0, 0));
    l.push(input(span(SpanKind::Client, 4, 7, 120, 130), A, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Server, 5, 7, 110, 140), A, remote()), 0, &mut out);
    assert_eq!(find(&out, 4).parent_span_id, [5; 8]);
    assert_eq!(l.stats.multiplexed, 1);
}

#[test]
fn ranges_of_threads_that_served_nothing_for_a_while_are_forgotten() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    let s = 1_000_000_000;
    // Thread-per-connection: threads 1..=3 serve once each, then thread 9
    // serves 11 s later.
    for tid in 1..=3u32 {
        let t = u64::from(tid) * s;
        l.push(input(span(SpanKind::Server, tid as u8, tid, t, t + 10), A, remote()), 0, &mut out);
    }
    l.tick(0, &mut out);
    assert_eq!(table(&l, "link_last_server"), 3);
    l.push(input(span(SpanKind::Server, 9, 9, 14 * s, 14 * s + 10), A, remote()), 0, &mut out);
    // Swept at most once a second: not yet.
    l.tick(500_000_000, &mut out);
    assert_eq!(table(&l, "link_last_server"), 4);
    l.tick(1_000_000_000, &mut out);
    // Threads 1-3 ended more than 10 s before thread 9's span did.
    assert_eq!(table(&l, "link_last_server"), 1);
    // Thread 9 still tells an overlap.
    l.push(input(span(SpanKind::Server, 10, 9, 14 * s + 5, 14 * s + 20), A, remote()), 0, &mut out);
    assert_eq!(l.stats.multiplexed, 1);
}

fn table(l: &Linker, name: &str) -> usize {
    l.table_sizes().into_iter().find(|(n, _)| *n == name).map(|(_, v)| v).unwrap()
}

#[test]
fn sequential_requests_on_one_thread_keep_nesting() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    for i in 0..5u8 {
        let t = u64::from(i) * 100;
        l.push(input(span(SpanKind::Client, 2 * i + 1, 7, t + 20, t + 30), A, remote()), 0, &mut out);
        l.push(input(span(SpanKind::Server, 2 * i + 2, 7, t + 10, t + 40), A, remote()), 0, &mut out);
        assert_eq!(find(&out, 2 * i + 1).parent_span_id, [2 * i + 2; 8]);
    }
    assert_eq!((l.stats.nested, l.stats.multiplexed), (5, 0));
}

/// Go reuses an ended handler goroutine's `g` for the next stream's
/// handler, maybe before the ended one's response is written: the two
/// server spans overlap on one thread key, but their handler windows do
/// not. That is no multiplexing, and each call nests in the window it was
/// made in, even where it lies inside both spans.
#[test]
fn handler_windows_on_a_reused_goroutine_are_not_multiplexing() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    let g = 0x8000_0042;
    let windowed = |s: Span, w| LinkInput { window: Some(w), ..input(s, A, remote()) };
    // Stream 1: read at 10, handler 12..30, response written at 45.
    // Stream 2: read at 11, its handler on the same goroutine from 30.
    l.push(input(span(SpanKind::Client, 3, g, 14, 20), A, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Client, 4, g, 32, 40), A, remote()), 0, &mut out);
    l.push(windowed(span(SpanKind::Server, 1, g, 10, 45), (12, 30)), 0, &mut out);
    l.push(windowed(span(SpanKind::Server, 2, g, 11, 60), (30, 60)), 0, &mut out);
    assert_eq!(l.stats.multiplexed, 0);
    assert_eq!(find(&out, 3).parent_span_id, [1; 8]);
    assert_eq!(find(&out, 4).parent_span_id, [2; 8], "inside span 1 too, but made in stream 2's window");
    assert_eq!(l.stats.nested, 2);
    // The later handler's span may come first (the earlier one's response
    // written after it): the earlier handler's call waits for its own.
    let mut l = Linker::new(limits());
    l.push(input(span(SpanKind::Client, 5, g, 14, 20), A, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Client, 6, g, 32, 40), A, remote()), 0, &mut out);
    l.push(windowed(span(SpanKind::Server, 7, g, 11, 50), (30, 50)), 0, &mut out);
    l.push(windowed(span(SpanKind::Server, 8, g, 10, 60), (12, 30)), 0, &mut out);
    assert_eq!(find(&out, 6).parent_span_id, [7; 8]);
    assert_eq!(find(&out, 5).parent_span_id, [8; 8], "not released by the later window");
    assert_eq!((l.stats.nested, l.stats.multiplexed), (2, 0));
    // Without windows the same spans overlap: multiplexing.
    let mut l = Linker::new(limits());
    l.push(input(span(SpanKind::Server, 1, g, 10, 45), A, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Server, 2, g, 11, 60), A, remote()), 0, &mut out);
    assert_eq!(l.stats.multiplexed, 1);
}

#[test]
fn sdk_client_keeps_its_own_context() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    let mut c = span(SpanKind::Client, 2, 7, 20, 30);
    c.trace_id = [9; 16];
    c.parent_span_id = [9; 8];
    l.push(input(c, A, remote()), 0, &mut out);
    assert_eq!(out.len(), 1, "an SDK client is not held");
    l.push(input(span(SpanKind::Server, 1, 7, 10, 40), A, remote()), 0, &mut out);
    let c = find(&out, 2);
    assert_eq!((c.trace_id, c.parent_span_id), ([9; 16], [9; 8]));
    assert_eq!(l.stats.nested, 0);
}

#[test]
fn server_that_joined_a_traceparent_gives_its_trace_to_nested_clients() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    l.push(input(span(SpanKind::Client, 2, 7, 20, 30), A, remote()), 0, &mut out);
    let mut s = span(SpanKind::Server, 1, 7, 10, 40);
    s.trace_id = [0xab; 16];
    s.parent_span_id = [0xcd; 8];
    s.trace_state = "k=v".into();
    // Peer is loopback, but a server with incoming context is never held.
    l.push(input(s, A, meta("127.0.0.1:8080", "127.0.0.1:40000")), 0, &mut out);
    assert_eq!(out.len(), 2);
    let (c, s) = (find(&out, 2), find(&out, 1));
    assert_eq!((s.trace_id, s.parent_span_id), ([0xab; 16], [0xcd; 8]));
    assert_eq!((c.trace_id, c.parent_span_id), ([0xab; 16], [1; 8]));
    assert_eq!(c.trace_state, "k=v");
}

/// A's server (1) on thread 7 calls B over loopback with client span (2);
/// B's server (3) on thread 9 queries a database (4).
fn whole_trace(order: &[u8]) -> Vec<Span> {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    let front = meta("127.0.0.1:8080", "127.0.0.1:50000");
    let a_to_b = meta("127.0.0.1:41000", "127.0.0.1:9090");
    let b_from_a = meta("127.0.0.1:9090", "127.0.0.1:41000");
    for n in order {
        let i = match n {
            1 => input(span(SpanKind::Server, 1, 7, 10, 100), A, front),
            2 => input(span(SpanKind::Client, 2, 7, 20, 90), A, a_to_b),
            3 => input(span(SpanKind::Server, 3, 9, 30, 80), B, b_from_a),
            _ => input(span(SpanKind::Client, 4, 9, 40, 50), B, meta("127.0.0.1:42000", "127.0.0.1:5432")),
        };
        l.push(i, 0, &mut out);
    }
    l.tick(10_000 * MS, &mut out);
    assert_eq!(l.stats.cross_process, 1, "order {order:?}");
    assert_eq!(l.stats.nested, 2, "order {order:?}");
    assert_eq!(l.held(), 0);
    out
}

#[test]
fn cross_process_call_joins_one_trace_in_any_arrival_order() {
    for order in [[4, 3, 2, 1], [4, 2, 3, 1], [2, 4, 3, 1], [2, 1, 4, 3], [4, 2, 1, 3]] {
        let out = whole_trace(&order);
        assert_eq!(out.len(), 4, "order {order:?}");
        let root = find(&out, 1);
        assert!(root.is_root());
        for s in &out {
            assert_eq!(s.trace_id, root.trace_id, "span {:?} order {order:?}", s.span_id);
        }
        assert_eq!(find(&out, 2).parent_span_id, [1; 8]);
        assert_eq!(find(&out, 3).parent_span_id, [2; 8]);
        assert_eq!(find(&out, 4).parent_span_id, [3; 8]);
    }
}

/// One end of a Unix domain connection (kernel socket ids `sock`, `peer`).
fn unix(sock: u64, peer: u64) -> ConnMeta {
    let name = "/run/app.sock";
    ConnMeta { unix: Some(crate::protocol::UnixConn { name, sock, peer }), ..ConnMeta::default() }
}

#[test]
fn a_call_over_a_unix_domain_socket_joins_the_callers_trace() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    // B serves on socket 0xb0, whose peer is A's socket 0xa0.
    l.push(input(span(SpanKind::Server, 3, 9, 30, 80), B, unix(0xb0, 0xa0)), 0, &mut out);
    assert!(out.is_empty(), "held for its client");
    // A request on another connection is not its caller.
    l.push(input(span(SpanKind::Client, 5, 8, 20, 90), A, unix(0xa1, 0xb1)), 0, &mut out);
    l.push(input(span(SpanKind::Client, 2, 7, 20, 90), A, unix(0xa0, 0xb0)), 0, &mut out);
    l.flush(&mut out);
    assert_eq!(find(&out, 3).parent_span_id, [2; 8]);
    assert_eq!(find(&out, 3).trace_id, find(&out, 2).trace_id);
    assert!(find(&out, 5).is_root());
    assert_eq!(l.stats.cross_process, 1);
    // Without the peer's id there is nothing to pair with.
    assert_eq!(unix(0xb0, 0).local_ends(), None);
}

#[test]
fn server_with_incoming_traceparent_is_not_moved_to_the_callers_trace() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    let mut b = span(SpanKind::Server, 3, 9, 30, 80);
    b.trace_id = [0xee; 16];
    b.parent_span_id = [0xef; 8];
    l.push(input(b, B, meta("127.0.0.1:9090", "127.0.0.1:41000")), 0, &mut out);
    assert_eq!(out.len(), 1, "not held");
    l.push(input(span(SpanKind::Client, 2, 7, 20, 90), A, meta("127.0.0.1:41000", "127.0.0.1:9090")), 0, &mut out);
    l.flush(&mut out);
    let b = find(&out, 3);
    assert_eq!((b.trace_id, b.parent_span_id), ([0xee; 16], [0xef; 8]));
    assert_eq!(l.stats.cross_process, 0);
}

#[test]
fn other_request_on_the_same_connection_is_not_linked() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    let b = meta("127.0.0.1:9090", "127.0.0.1:41000");
    l.push(input(span(SpanKind::Server, 3, 9, 100, 180), B, b), 0, &mut out);
    l.push(input(span(SpanKind::Client, 2, 7, 20, 90), A, meta("127.0.0.1:41000", "127.0.0.1:9090")), 0, &mut out);
    l.flush(&mut out);
    assert!(find(&out, 3).is_root());
    assert_eq!(l.stats.cross_process, 0);
}

#[test]
fn concurrent_streams_on_one_connection_link_each_to_its_own_client() {
    // HTTP/2: two requests in flight at once on one connection, each
    // server span inside both client spans; only the stream id tells them
    // apart. Both arrival orders.
    for server_first in [true, false] {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        let (cm, sm) = (meta("127.0.0.1:41000", "127.0.0.1:9090"), meta("127.0.0.1:9090", "127.0.0.1:41000"));
        let clients = [
            LinkInput { stream: 1, ..input(span(SpanKind::Client, 1, 7, 10, 100), A, cm) },
            LinkInput { stream: 3, ..input(span(SpanKind::Client, 2, 7, 12, 110), A, cm) },
        ];
        // Stream 3's server span starts first and lies inside both clients.
        let servers = [
            LinkInput { stream: 3, ..input(span(SpanKind::Server, 4, 9, 20, 60), B, sm) },
            LinkInput { stream: 1, ..input(span(SpanKind::Server, 3, 9, 30, 90), B, sm) },
        ];
        let (first, second) = if server_first { (servers, clients) } else { (clients, servers) };
        for i in first.into_iter().chain(second) {
            l.push(i, 0, &mut out);
        }
        l.flush(&mut out);
        assert_eq!(find(&out, 3).parent_span_id, [1; 8], "stream 1's server under stream 1's client");
        assert_eq!(find(&out, 4).parent_span_id, [2; 8], "stream 3's server under stream 3's client");
        assert_eq!(l.stats.cross_process, 2);
    }
}

#[test]
fn server_with_remote_peer_is_not_held() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    l.push(input(span(SpanKind::Server, 1, 7, 10, 40), A, remote()), 0, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(l.held(), 0);
}

#[test]
fn held_server_waits_for_its_client_until_the_deadline() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    l.push(input(span(SpanKind::Server, 3, 9, 30, 80), B, meta("127.0.0.1:9090", "127.0.0.1:41000")), 1000, &mut out);
    l.tick(1000 + 499 * MS, &mut out);
    assert!(out.is_empty(), "held while the client may still come");
    l.tick(1000 + 500 * MS, &mut out);
    assert_eq!(out.len(), 1);
    assert!(out[0].is_root());
    assert_eq!(l.stats.released_unlinked, 1);
    assert_eq!(l.stats.held, 0);
}

#[test]
fn a_server_span_whose_client_is_not_traced_leaves_at_once() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    let m = meta("127.0.0.1:9090", "127.0.0.1:41000");
    l.push(
        LinkInput {
            span: span(SpanKind::Server, 3, 9, 30, 80),
            pid: B,
            meta: m,
            peer_traced: false,
            serving: true,
            stream: 0,
            window: None,
        },
        1000,
        &mut out,
    );
    assert_eq!(out.len(), 1, "nothing to wait for");
    assert_eq!(l.held(), 0);
    // And a client span to an untraced local server is not noted for linking.
    let c = span(SpanKind::Client, 4, 9, 100, 120);
    let cm = meta("127.0.0.1:41001", "127.0.0.1:9091");
    l.push(
        LinkInput { span: c, pid: A, meta: cm, peer_traced: false, serving: true, stream: 0, window: None },
        1000,
        &mut out,
    );
    l.tick(1000 + 500 * MS, &mut out);
    assert_eq!(out.len(), 2);
    assert_eq!(l.stats.cross_process, 0);
}

#[test]
fn a_client_of_a_process_that_serves_nothing_leaves_at_once() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    let c = span(SpanKind::Client, 2, 7, 20, 30);
    l.push(
        LinkInput { span: c, pid: A, meta: remote(), peer_traced: false, serving: false, stream: 0, window: None },
        0,
        &mut out,
    );
    assert_eq!(out.len(), 1, "nothing it could be nested in");
    assert!(out[0].is_root());
    assert_eq!(l.held(), 0);
}

#[test]
fn per_thread_cap_forces_out_the_oldest_client() {
    let mut l = Linker::new(limits());
    let mut out = Vec::new();
    for n in 0..9u8 {
        let s = u64::from(n) * 10;
        l.push(input(span(SpanKind::Client, n + 1, 7, s + 1, s + 2), A, remote()), 0, &mut out);
    }
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].span_id, [1; 8], "oldest first");
    assert_eq!(l.stats.forced_out, 1);
    assert_eq!(l.held(), 8);
}

#[test]
fn total_cap_forces_out_the_oldest_and_loses_nothing() {
    let mut l = Linker::new(LinkLimits { hold_ns: 500 * MS, max_held: 4, max_per_thread: 8 });
    let mut out = Vec::new();
    for n in 1..=10u8 {
        l.push(input(span(SpanKind::Client, n, u32::from(n), 1, 2), A, remote()), u64::from(n), &mut out);
        assert!(l.held() <= 4);
    }
    assert_eq!(l.stats.forced_out, 6);
    assert_eq!(out.iter().map(|s| s.span_id[0]).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
    l.flush(&mut out);
    assert_eq!(out.len(), 10);
    assert_eq!(l.held(), 0);
}

#[test]
fn tree_counts_toward_the_total_cap_as_a_whole() {
    let mut l = Linker::new(LinkLimits { hold_ns: 500 * MS, max_held: 2, max_per_thread: 8 });
    let mut out = Vec::new();
    // B's server with one nested client: a held tree of two spans.
    l.push(input(span(SpanKind::Client, 4, 9, 40, 50), B, remote()), 0, &mut out);
    l.push(input(span(SpanKind::Server, 3, 9, 30, 80), B, meta("127.0.0.1:9090", "127.0.0.1:41000")), 0, &mut out);
    assert_eq!(l.held(), 2);
    l.push(input(span(SpanKind::Client, 5, 1, 1, 2), A, remote()), 0, &mut out);
    assert_eq!(l.held(), 1);
    assert_eq!(out.len(), 2, "the oldest tree leaves whole");
    assert_eq!(find(&out, 4).trace_id, find(&out, 3).trace_id);
}

#[test]
fn notes_are_bounded_and_expire() {
    let mut l = Linker::new(LinkLimits { hold_ns: 10, max_held: 4, max_per_thread: 8 });
    let mut out = Vec::new();
    for n in 1..=10u8 {
        let port = 41000 + u16::from(n);
        let m = meta(&format!("127.0.0.1:{port}"), "127.0.0.1:9090");
        l.push(input(span(SpanKind::Client, n, u32::from(n), 1, 2), A, m), 0, &mut out);
    }
    assert!(l.note_order.len() <= 4);
    l.tick(100, &mut out);
    assert!(l.notes.is_empty() && l.note_order.is_empty());
    assert_eq!(out.len(), 10);
}

#[test]
fn a_client_that_found_its_server_leaves_no_note_on_a_keep_alive_connection() {
    let mut l = Linker::new(LinkLimits { hold_ns: 500 * MS, max_held: 100_000, max_per_thread: 8 });
    let mut out = Vec::new();
    let (cm, sm) = (meta("127.0.0.1:40000", "127.0.0.1:8080"), meta("127.0.0.1:8080", "127.0.0.1:40000"));
    for n in 0..100u8 {
        let t = u64::from(n) * 100;
        // The server span usually completes first: it waits for its client.
        l.push(input(span(SpanKind::Server, 2 * n + 1, 9, t + 10, t + 40), B, sm), 0, &mut out);
        let client = LinkInput { serving: false, ..input(span(SpanKind::Client, 2 * n, 7, t, t + 50), A, cm) };
        l.push(client, 0, &mut out);
        assert!(l.notes.is_empty(), "request {n}: a matched client leaves no note to scan");
    }
    assert_eq!((out.len(), l.stats.cross_process, l.held()), (200, 100, 0));
    for n in 0..100u8 {
        assert_eq!(find(&out, 2 * n + 1).parent_span_id, [2 * n; 8]);
    }
}
