use kspan_common::{ConnEvent, DataHeader, EventKind, ROLE_SERVER};

use super::*;

fn limits(max: usize) -> ConnLimits {
    ConnLimits { max_connections: max, idle_timeout_ns: 1_000 }
}

fn open(tgid: u32, fd: u32, sock: u64) -> ConnEvent {
    ConnEvent {
        kind: EventKind::ConnOpen as u32,
        role: ROLE_SERVER,
        tgid,
        fd,
        family: 2,
        lport: 80,
        rport: 5000,
        laddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        raddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        sock_id: sock,
        ..Default::default()
    }
}

fn data(tgid: u32, fd: u32, sock: u64, ts: u64, payload: &[u8]) -> DataHeader {
    DataHeader {
        kind: EventKind::Data as u32,
        flags: 0,
        ts_ns: ts,
        tgid,
        tid: tgid,
        fd,
        captured: payload.len() as u32,
        len: payload.len() as u64,
        sock_id: sock,
        goroutine: 0,
        ..Default::default()
    }
}

#[test]
fn addresses_come_from_the_open_event() {
    let mut t = ConnTable::new(limits(4));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    assert_eq!(t.len(), 1);
    let c = &t.conns[&(1, 3)];
    assert_eq!(c.meta.local, Some("127.0.0.1:80".parse().unwrap()));
    assert_eq!(c.meta.peer, Some("10.0.0.2:5000".parse().unwrap()));
    assert_eq!(c.role, Some(Role::Server));
}

#[test]
fn table_is_bounded_and_counts_rejections() {
    let mut t = ConnTable::new(limits(2));
    let mut out = Vec::new();
    for fd in 0..5 {
        t.on_open(&open(1, fd, fd as u64 + 100), &mut out);
    }
    assert_eq!(t.len(), 2);
    assert_eq!(t.stats.rejected_full, 3);
}

#[test]
fn close_and_exit_remove_entries() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    t.on_open(&open(1, 4, 10), &mut out);
    t.on_open(&open(2, 3, 11), &mut out);
    t.on_close(1, 3, 999, 5, &mut out);
    assert_eq!(t.len(), 3, "a close for another socket on the same fd is ignored");
    t.on_close(1, 3, 9, 5, &mut out);
    assert_eq!(t.len(), 2);
    t.on_exit(1, 6, &mut out);
    assert_eq!(t.len(), 1);
    assert_eq!(t.stats.closed, 2);
}

#[test]
fn close_all_ends_every_connection_of_every_process() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    t.on_open(&open(2, 3, 10), &mut out);
    t.close_all(7, &mut out);
    assert!(t.is_empty());
    assert_eq!(t.stats.closed, 2);
    t.on_open(&open(1, 3, 11), &mut out);
    assert_eq!(t.len(), 1, "the table takes new connections after");
}

#[test]
fn reused_fd_starts_a_new_connection() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    let payload = b"\x00\x01garbage that is no protocol at all, not even close to one, really";
    t.on_data(&data(1, 3, 77, 10, payload), payload, &mut out);
    assert_eq!(t.stats.fd_reused, 1);
    assert_eq!(t.conns[&(1, 3)].sock_id, 77);
}

/// The kernel's socket map is LRU: a socket it evicted while open is looked
/// up again on its next syscall and reported as first seen (no role). The
/// connection goes on: a request split across the eviction still pairs.
#[test]
fn a_socket_the_kernel_forgot_keeps_its_connection() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    let head = b"GET /a HTTP/1.1\r\nHo";
    t.on_data(&data(1, 3, 9, 10, head), head, &mut out);
    let mut again = open(1, 3, 9);
    again.role = kspan_common::ROLE_UNKNOWN;
    again.ts_ns = 15;
    t.on_open(&again, &mut out);
    let rest = b"st: h\r\n\r\n";
    t.on_data(&data(1, 3, 9, 20, rest), rest, &mut out);
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    t.on_data(&egress(data(1, 3, 9, 30, resp)), resp, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].exchange.role, out[0].exchange.start_ns), (Role::Server, 10));
    assert_eq!((t.stats.relearned, t.stats.fd_reused, t.stats.closed), (1, 0, 0));
    // Another socket on that fd, or one made by accept or connect (a freed
    // socket's address may come back), is a new connection.
    for (role, sock) in [(kspan_common::ROLE_UNKNOWN, 10), (ROLE_SERVER, 10)] {
        let mut other = open(1, 3, sock);
        other.role = role;
        t.on_open(&other, &mut out);
    }
    assert_eq!((t.stats.relearned, t.stats.fd_reused, t.stats.closed), (1, 2, 2));
}

/// The kernel's new entry for a socket it had forgotten copies bytes again:
/// a muted connection is muted again.
#[test]
fn a_muted_socket_the_kernel_forgot_is_muted_again() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    let payload = [0xffu8; 100];
    t.on_data(&data(1, 3, 9, 10, &payload), &payload, &mut out);
    t.on_data(&egress(data(1, 3, 9, 11, &payload)), &payload, &mut out);
    assert_eq!(t.mutes.drain(..).count(), 1);
    let mut again = open(1, 3, 9);
    again.role = kspan_common::ROLE_UNKNOWN;
    t.on_open(&again, &mut out);
    assert_eq!(t.mutes, [Mute { tgid: 1, fd: 3, sock_id: 9 }]);
    assert_eq!((t.stats.relearned, t.stats.opaque), (1, 1));
}

#[test]
fn idle_connections_are_swept() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    assert_eq!(t.sweep(500), 0);
    assert_eq!(t.sweep(5_000), 1);
    assert!(t.is_empty());
}

#[test]
fn unknown_bytes_make_the_connection_opaque() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    let payload = [0xffu8; 100];
    t.on_data(&data(1, 3, 9, 10, &payload), &payload, &mut out);
    let mut h = data(1, 3, 9, 11, &payload);
    h.flags = DATA_EGRESS;
    t.on_data(&h, &payload, &mut out);
    assert_eq!(t.stats.opaque, 1);
    assert!(out.is_empty());
    assert_eq!(t.mutes, [Mute { tgid: 1, fd: 3, sock_id: 9 }], "the kernel may stop copying its bytes");
}

#[test]
fn the_two_ends_of_a_unix_domain_connection_know_each_other() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    let end = |tgid: u32, sock: u64, peer: u64| {
        let mut ev = ConnEvent {
            family: 1,
            role: kspan_common::ROLE_CLIENT,
            lport: 0,
            rport: 0,
            laddr: [0; 16],
            raddr: [0; 16],
            ..open(tgid, 4, sock)
        };
        ev.raddr[..8].copy_from_slice(&peer.to_le_bytes());
        let name = b"/run/app.sock\0";
        ev.path[..name.len()].copy_from_slice(name);
        ev.path_len = name.len() as u16;
        ev
    };
    t.on_open(&end(1, 0xa0, 0xb0), &mut out);
    let server =
        ConnMeta { unix: Some(UnixConn { name: "/run/app.sock", sock: 0xb0, peer: 0xa0 }), ..ConnMeta::default() };
    assert!(t.peer_traced(&server), "the client end is tracked");
    let other = ConnMeta { unix: Some(UnixConn { name: "/run/app.sock", sock: 0xb1, peer: 0xa1 }), ..server };
    assert!(!t.peer_traced(&other));
    let req = b"GET / HTTP/1.1\r\nHost: app\r\n\r\n";
    t.on_data(&egress(data(1, 4, 0xa0, 10, req)), req, &mut out);
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    t.on_data(&data(1, 4, 0xa0, 20, resp), resp, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    let meta = out[0].meta;
    assert_eq!((meta.local, meta.peer), (None, None));
    assert_eq!(meta.unix, Some(UnixConn { name: "/run/app.sock", sock: 0xa0, peer: 0xb0 }));
}

#[test]
fn mute_requests_are_bounded_per_drain_cycle() {
    let mut t = ConnTable::new(limits(MAX_MUTES + 8));
    let mut out = Vec::new();
    let payload = [0xffu8; 100];
    for fd in 0..MAX_MUTES as u32 + 3 {
        t.on_open(&open(1, fd, 9), &mut out);
        t.on_data(&data(1, fd, 9, 10, &payload), &payload, &mut out);
        t.on_data(&egress(data(1, fd, 9, 11, &payload)), &payload, &mut out);
    }
    assert_eq!(t.stats.opaque, MAX_MUTES as u64 + 3);
    assert_eq!(t.mutes.len(), MAX_MUTES);
    assert_eq!(t.stats.mute_failed, 3);
}

fn loopback(tgid: u32, fd: u32, sock: u64, lport: u16, rport: u16) -> ConnEvent {
    let lo = [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    ConnEvent { lport, rport, laddr: lo, raddr: lo, ..open(tgid, fd, sock) }
}

#[test]
fn knows_whether_the_other_end_of_a_loopback_connection_is_tracked() {
    let mut t = ConnTable::new(limits(16));
    let mut out = Vec::new();
    // Server side only (pid 2 accepted 127.0.0.1:80 <- 127.0.0.1:5000).
    t.on_open(&loopback(2, 7, 70, 80, 5000), &mut out);
    let server_meta =
        ConnMeta { local: "127.0.0.1:80".parse().ok(), peer: "127.0.0.1:5000".parse().ok(), tls: false, unix: None };
    assert!(!t.peer_traced(&server_meta), "the client is not traced");
    // The client (pid 1) is traced too.
    t.on_open(&loopback(1, 3, 30, 5000, 80), &mut out);
    assert!(t.peer_traced(&server_meta));
    let client_meta = ConnMeta { local: server_meta.peer, peer: server_meta.local, tls: false, unix: None };
    assert!(t.peer_traced(&client_meta));
    t.on_close(1, 3, 30, 10, &mut out);
    assert!(t.peer_traced(&server_meta), "a closed client lingers (its span may still come)");
    t.sweep(10 + PAIR_LINGER_NS);
    assert!(!t.peer_traced(&server_meta), "closed client forgotten after the linger time");
    assert!(!t.peer_traced(&client_meta), "idle server swept, then forgotten");
    // A remote peer is never "traced".
    t.on_open(&open(3, 4, 40), &mut out);
    let remote =
        ConnMeta { local: "10.0.0.2:5000".parse().ok(), peer: "127.0.0.1:80".parse().ok(), tls: false, unix: None };
    assert!(!t.peer_traced(&remote));
}

fn tls(mut h: DataHeader) -> DataHeader {
    h.flags |= DATA_TLS;
    h
}

fn egress(mut h: DataHeader) -> DataHeader {
    h.flags |= DATA_EGRESS;
    h
}

/// A server connection (1, 3) whose first bytes are a TLS handshake.
fn tls_handshake() -> (ConnTable, Vec<ConnExchange>) {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 client hello ciphertext, not a protocol";
    t.on_data(&data(1, 3, 9, 10, hello), hello, &mut out);
    let server_hello = b"\x16\x03\x03\x00\x7a\x02\x00\x00\x76\x03\x03 server hello";
    t.on_data(&egress(data(1, 3, 9, 11, server_hello)), server_hello, &mut out);
    assert_eq!(t.stats.tls_handshake, 1, "a TLS handshake is not an unknown protocol");
    (t, out)
}

#[test]
fn tls_plaintext_replaces_the_handshake_and_ciphertext_is_ignored() {
    let (mut t, mut out) = tls_handshake();
    assert!(t.mutes.is_empty(), "its plaintext may come from the TLS library");
    let req = b"GET /secure HTTP/1.1\r\nHost: h\r\n\r\n";
    t.on_data(&tls(data(1, 3, 9, 20, req)), req, &mut out);
    // The ciphertext the socket saw for the same bytes is ignored.
    let rec = b"\x17\x03\x03\x00\x40 application data record";
    t.on_data(&egress(data(1, 3, 9, 25, rec)), rec, &mut out);
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";
    t.on_data(&egress(tls(data(1, 3, 9, 30, resp))), resp, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].meta.tls);
    assert_eq!(out[0].exchange.start_ns, 20);
    assert_eq!(out[0].exchange.end_ns, 30);
    assert_eq!(t.stats.tls, 1);
    assert_eq!(t.stats.tls_ciphertext_ignored, 1);
    assert_eq!(t.stats.opaque, 0);
    let d = out[0].exchange.record.describe(Role::Server, &out[0].meta, &Default::default());
    assert_eq!(d.attributes.get_str("url.scheme"), Some("https"));
}

#[test]
fn tls_without_plaintext_is_muted_after_a_few_ciphertext_events() {
    let (mut t, mut out) = tls_handshake();
    let rec = b"\x17\x03\x03\x00\x40 application data record";
    for i in 0..TLS_EVENTS_BEFORE_MUTE - 1 {
        t.on_data(&egress(data(1, 3, 9, 20 + u64::from(i), rec)), rec, &mut out);
    }
    assert!(t.mutes.is_empty(), "a probed library's plaintext may still come");
    t.on_data(&data(1, 3, 9, 99, rec), rec, &mut out);
    assert_eq!(t.mutes, [Mute { tgid: 1, fd: 3, sock_id: 9 }], "no TLS library kspan probes: muted");
    assert_eq!((t.stats.tls_handshake, t.stats.tls_unprobed, t.stats.opaque), (1, 1, 0));
    t.on_data(&data(1, 3, 9, 100, rec), rec, &mut out);
    assert_eq!(t.mutes.len(), 1, "queued once");
    assert!(out.is_empty());
}

#[test]
fn plaintext_connections_are_not_tls() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    let req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    t.on_data(&data(1, 3, 9, 20, req), req, &mut out);
    let resp = b"HTTP/1.1 204 No Content\r\n\r\n";
    t.on_data(&egress(data(1, 3, 9, 30, resp)), resp, &mut out);
    assert_eq!(out.len(), 1);
    assert!(!out[0].meta.tls);
    assert_eq!(t.stats.tls, 0);
}

/// A PostgreSQL message: type byte, big-endian length, body.
fn pg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![ty];
    m.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    m.extend_from_slice(body);
    m
}

#[test]
fn postgres_sslrequest_then_tls_startup_still_names_the_database() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    // Plaintext SSLRequest and the server's 'S', then the handshake's ciphertext.
    let ssl_request = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    t.on_data(&data(1, 3, 9, 1, &ssl_request), &ssl_request, &mut out);
    t.on_data(&egress(data(1, 3, 9, 2, b"S")), b"S", &mut out);
    let hello = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03 ciphertext";
    t.on_data(&data(1, 3, 9, 3, hello), hello, &mut out);
    // The plaintext stream starts with the startup message.
    let params = b"user\0alice\0database\0shop\0\0";
    let mut startup = ((params.len() + 8) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(&196_608u32.to_be_bytes());
    startup.extend_from_slice(params);
    t.on_data(&tls(data(1, 3, 9, 4, &startup)), &startup, &mut out);
    let mut ready = pg(b'R', &0u32.to_be_bytes());
    ready.extend(pg(b'Z', b"I"));
    t.on_data(&egress(tls(data(1, 3, 9, 5, &ready))), &ready, &mut out);
    let q = pg(b'Q', b"SELECT 1\0");
    t.on_data(&tls(data(1, 3, 9, 6, &q)), &q, &mut out);
    let mut resp = pg(b'C', b"SELECT 1\0");
    resp.extend(pg(b'Z', b"I"));
    t.on_data(&egress(tls(data(1, 3, 9, 7, &resp))), &resp, &mut out);
    let select = out.iter().find(|cx| cx.exchange.start_ns == 6).expect("SELECT exchange");
    assert!(select.meta.tls);
    let d = select.exchange.record.describe(Role::Server, &select.meta, &Default::default());
    assert_eq!(d.attributes.get_str("db.namespace"), Some("shop"));
    assert_eq!(d.attributes.get_str("db.operation.name"), Some("SELECT"));
}

#[test]
fn knows_which_processes_serve() {
    let mut t = ConnTable::new(limits(16));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 30), &mut out);
    assert!(t.serves(1), "an accepted connection");
    t.on_open(&ConnEvent { role: kspan_common::ROLE_CLIENT, ..open(2, 3, 31) }, &mut out);
    assert!(!t.serves(2), "a client connection only");
    t.on_open(&open(1, 4, 32), &mut out);
    t.on_close(1, 3, 30, 5, &mut out);
    assert!(t.serves(1), "one server connection left");
    t.on_exit(1, 6, &mut out);
    assert!(!t.serves(1));
    // A socket found by its first bytes takes the role detection gives it.
    let req = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    t.on_data(&data(3, 5, 33, 7, req), req, &mut out);
    assert!(t.serves(3), "a request read: the process serves");
    t.sweep(10_000);
    assert!(!t.serves(3), "swept");
}

#[test]
fn go_calls_are_keyed_by_goroutine() {
    assert_eq!(thread_key(1234, 0), 1234, "no goroutine: the thread");
    let g = 0x00c0_000a_01a0_u64;
    let key = thread_key(1234, g);
    assert!(key >= 0x8000_0000, "never a thread id: {key:#x}");
    assert_eq!(thread_key(77, g), key, "the goroutine, whatever thread it ran on");
    // Neighbouring goroutines (a `g` is a few hundred bytes) differ.
    assert_ne!(thread_key(1234, g + 0x1a0), key);

    let mut t = ConnTable::new(limits(4));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    let req = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    t.on_data(&DataHeader { goroutine: g, ..data(1, 3, 9, 10, req) }, req, &mut out);
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    t.on_data(&DataHeader { goroutine: g, ..egress(data(1, 3, 9, 20, resp)) }, resp, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].exchange.tid, key, "the exchange carries the goroutine's key");
}

/// A Go HTTP/2 stream handler's report reaches the stream's request on
/// that socket only: another socket at the same descriptor, an unknown
/// descriptor or a connection that is not parsed count as unmatched.
#[test]
fn go_stream_handlers_key_their_stream() {
    use kspan_common::{EventKind, GoStreamEvent};
    let mut t = ConnTable::new(limits(4));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    let mut h = vec![];
    h.extend_from_slice(crate::protocol::http2::PREFACE);
    h.extend(crate::protocol::http2::encode_frame(4, 0, 0, &[]));
    // HEADERS, END_STREAM | END_HEADERS, stream 1: GET / (static table).
    h.extend(crate::protocol::http2::encode_frame(1, 0x5, 1, &[0x82, 0x84, 0x86, 0x41, 0x01, b'x']));
    t.on_data(&data(1, 3, 9, 10, &h), &h, &mut out);
    let g = 0x00c0_0001_0000_u64;
    let ev = |fd, sock_id, stream| GoStreamEvent {
        kind: EventKind::GoStream as u32,
        stream,
        tgid: 1,
        fd,
        sock_id,
        goroutine: g,
        ..Default::default()
    };
    t.on_go_stream(&ev(3, 8, 1));
    t.on_go_stream(&ev(4, 9, 1));
    t.on_go_stream(&ev(3, 9, 7));
    assert_eq!((t.stats.go_streams, t.stats.go_streams_unmatched), (0, 3));
    t.on_go_stream(&ev(3, 9, 1));
    assert_eq!((t.stats.go_streams, t.stats.go_streams_unmatched), (1, 3));
    let resp = crate::protocol::http2::encode_frame(1, 0x5, 1, &[0x88]);
    t.on_data(&egress(data(1, 3, 9, 20, &resp)), &resp, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(out[0].exchange.tid, thread_key(0, g), "served by the handler's goroutine");
}

/// Go reuses an ended handler goroutine's `g`: a report of the same
/// goroutine for another stream (here on another connection, then on the
/// same one) ends the earlier stream's handler window there, before its
/// response is written. A stream whose goroutine is not reused keeps its
/// window until its end.
#[test]
fn a_reused_handler_goroutine_ends_the_earlier_streams_window() {
    use crate::protocol::Record;
    use crate::protocol::http2::{PREFACE, encode_frame as frame};
    use kspan_common::GoStreamEvent;
    let mut t = ConnTable::new(limits(4));
    let mut out = Vec::new();
    let g = 0x00c0_0004_0000_u64;
    for (fd, sock) in [(3, 9), (4, 10)] {
        t.on_open(&open(1, fd, sock), &mut out);
        let mut h = PREFACE.to_vec();
        h.extend(frame(4, 0, 0, &[]));
        for stream in [1, 3] {
            // HEADERS, END_STREAM | END_HEADERS: GET / (static table).
            h.extend(frame(1, 0x5, stream, &[0x82, 0x84, 0x86, 0x41, 0x01, b'x']));
        }
        t.on_data(&data(1, fd, sock, 10, &h), &h, &mut out);
    }
    let ev = |fd, sock_id, stream, ts_ns| GoStreamEvent {
        stream,
        ts_ns,
        tgid: 1,
        fd,
        sock_id,
        goroutine: g,
        ..Default::default()
    };
    t.on_go_stream(&ev(3, 9, 1, 20));
    t.on_go_stream(&ev(4, 10, 1, 30));
    t.on_go_stream(&ev(3, 9, 3, 40));
    assert_eq!(t.stats.go_streams, 3);
    for (fd, sock, stream, ts) in [(3, 9, 1, 50), (4, 10, 1, 60), (3, 9, 3, 70)] {
        let resp = frame(1, 0x5, stream, &[0x88]);
        t.on_data(&egress(data(1, fd, sock, ts, &resp)), &resp, &mut out);
    }
    let windows: Vec<_> = out
        .iter()
        .map(|cx| match &cx.exchange.record {
            Record::Http(h) => (cx.fd, h.stream, cx.exchange.window),
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(windows, [(3, 1, Some((20, 30))), (4, 1, Some((30, 40))), (3, 3, Some((40, 70)))]);
    // One goroutine remembered, forgotten with its process.
    assert_eq!(t.go_handlers.len(), 1);
    t.on_exit(1, 80, &mut out);
    assert_eq!((t.go_handlers.len(), t.go_handlers.processes()), (0, 0));
}

/// grpc-go's client writes every call on one goroutine and reports each
/// call's caller on its own, here before the connection's first bytes: the
/// report waits for the parser, then for the call's request, which then
/// carries the caller. A server's report on that client connection is
/// refused (unmatched).
#[test]
fn grpc_go_callers_key_their_calls() {
    use crate::protocol::http2::{PREFACE, encode_frame as frame};
    use kspan_common::{GoStreamEvent, ROLE_CLIENT};
    let mut t = ConnTable::new(limits(4));
    let mut out = Vec::new();
    let mut c = open(1, 3, 9);
    c.role = ROLE_CLIENT;
    t.on_open(&c, &mut out);
    let g = 0x00c0_0003_0000_u64;
    let ev =
        |role, stream| GoStreamEvent { stream, tgid: 1, fd: 3, sock_id: 9, role, goroutine: g, ..Default::default() };
    t.on_go_stream(&ev(ROLE_CLIENT, 1));
    assert_eq!((t.stats.go_calls, t.stats.go_streams_unmatched), (0, 0), "held, not counted yet");
    let mut w = PREFACE.to_vec();
    w.extend(frame(4, 0, 0, &[]));
    // HEADERS, END_STREAM | END_HEADERS, stream 1: GET / (static table).
    w.extend(frame(1, 0x5, 1, &[0x82, 0x84, 0x86, 0x41, 0x01, b'x']));
    t.on_data(&egress(data(1, 3, 9, 10, &w)), &w, &mut out);
    assert_eq!((t.stats.go_calls, t.stats.go_streams_unmatched), (1, 0));
    t.on_go_stream(&ev(ROLE_SERVER, 1));
    assert_eq!((t.stats.go_streams, t.stats.go_streams_unmatched), (0, 1), "a server's report on a client");
    let resp = frame(1, 0x5, 1, &[0x88]);
    t.on_data(&data(1, 3, 9, 20, &resp), &resp, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].exchange.role, out[0].exchange.tid), (Role::Client, thread_key(0, g)), "the caller's call");
}

/// An HTTP/2 connection opened before kspan started: no preface, and its
/// first frames (pings) do not tell the role; it stays undecided, not muted,
/// until a HEADERS frame does, and the request held before that pairs.
#[test]
fn http2_opened_before_kspan_is_taken_up_mid_stream() {
    use crate::protocol::http2::encode_frame as frame;
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    let mut unseen = open(1, 3, 9);
    unseen.role = kspan_common::ROLE_UNKNOWN;
    t.on_open(&unseen, &mut out);
    let ping = frame(6, 0, 0, &[7; 8]);
    let pong = frame(6, 1, 0, &[7; 8]);
    let mut ts = 10;
    for _ in 0..20 {
        t.on_data(&data(1, 3, 9, ts, &ping), &ping, &mut out);
        t.on_data(&egress(data(1, 3, 9, ts + 1, &pong)), &pong, &mut out);
        ts += 2;
    }
    assert!(t.mutes.is_empty() && t.stats.opaque == 0, "HTTP/2 frames: not opaque");
    // The request starts from the dynamic table (its :path first): it does
    // not tell the role, the response (`:status 200`, static) does.
    let mut request = vec![0x80 | 62];
    request.extend([0x83, 0x86]); // POST, http
    let request = frame(1, 0x4 | 0x1, 5, &request);
    t.on_data(&data(1, 3, 9, ts, &request), &request, &mut out);
    assert!(out.is_empty() && t.stats.http2_joined == 0);
    // A Go server's handler for that request starts while it is held.
    let g = 0x00c0_0002_0000_u64;
    let ev = kspan_common::GoStreamEvent { stream: 5, tgid: 1, fd: 3, sock_id: 9, goroutine: g, ..Default::default() };
    t.on_go_stream(&ev);
    assert_eq!((t.stats.go_streams, t.stats.go_streams_unmatched), (0, 0), "held, not counted yet");
    let mut response = frame(1, 0x4, 5, &[0x88]);
    response.extend(frame(0, 0x1, 5, b"ok"));
    t.on_data(&egress(data(1, 3, 9, ts + 5, &response)), &response, &mut out);
    assert_eq!(t.stats.http2_joined, 1);
    assert_eq!(out.len(), 1, "{:?}", t.parse_stats(Protocol::Http2));
    assert_eq!((out[0].exchange.role, out[0].exchange.start_ns, out[0].exchange.end_ns), (Role::Server, ts, ts + 5));
    assert_eq!(out[0].exchange.tid, thread_key(1, g), "the handler's goroutine serves it");
    assert_eq!((t.stats.go_streams, t.stats.go_streams_unmatched), (1, 0));
    assert_eq!(t.conns[&(1, 3)].role, Some(Role::Server));
}

/// Binary bytes that are no HTTP/2 frames are opaque as before.
#[test]
fn bytes_that_are_not_http2_frames_are_still_opaque() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    let junk = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08];
    t.on_data(&data(1, 3, 9, 10, &junk), &junk, &mut out);
    t.on_data(&egress(data(1, 3, 9, 11, &junk)), &junk, &mut out);
    assert_eq!((t.stats.opaque, t.stats.http2_joined), (1, 0));
}

/// A TLS connection opened before kspan started shows application data
/// records first, both ways, maybe before the TLS library's plaintext
/// (a probe that reports at a call's return): it waits for the plaintext
/// like a handshake does, it is not muted as opaque.
#[test]
fn tls_application_data_first_waits_for_plaintext() {
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    let sent = b"\x17\x03\x03\x00\x20 encrypted request record.......";
    let got = b"\x17\x03\x03\x00\x2a encrypted response record......";
    t.on_data(&egress(data(1, 3, 9, 10, sent)), sent, &mut out);
    t.on_data(&data(1, 3, 9, 11, got), got, &mut out);
    assert!(t.mutes.is_empty(), "{:?}", t.stats);
    assert_eq!((t.stats.tls_handshake, t.stats.opaque), (1, 0));
    let req = b"GET /late HTTP/1.1\r\nHost: h\r\n\r\n";
    t.on_data(&tls(data(1, 3, 9, 20, req)), req, &mut out);
    let resp = b"HTTP/1.1 204 No Content\r\n\r\n";
    t.on_data(&egress(tls(data(1, 3, 9, 30, resp))), resp, &mut out);
    assert_eq!(out.len(), 1, "{out:?}");
    assert!(out[0].meta.tls);
}

/// A connection that once looked like HTTP/2 frames but never tells a
/// role waits a bounded number of reads and writes, then is opaque.
#[test]
fn waiting_for_http2_mid_stream_is_bounded() {
    use crate::protocol::detect::MAX_JOIN_WAIT;
    let mut t = ConnTable::new(limits(8));
    let mut out = Vec::new();
    t.on_open(&open(1, 3, 9), &mut out);
    // Four pings: enough bytes to rule every other protocol out.
    let pings = crate::protocol::http2::encode_frame(6, 0, 0, &[7; 8]).repeat(4);
    t.on_data(&data(1, 3, 9, 1, &pings), &pings, &mut out);
    let junk = [0xde, 0xad, 0xbe, 0xef, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x07, 0x08];
    let mut n = 0;
    while t.stats.opaque == 0 && n < 10 * MAX_JOIN_WAIT {
        t.on_data(&egress(data(1, 3, 9, 2 + u64::from(n), &junk)), &junk, &mut out);
        n += 1;
    }
    assert_eq!(t.stats.opaque, 1);
    assert!(n > MAX_JOIN_WAIT && n <= MAX_JOIN_WAIT + 2, "{n}");
    assert_eq!(t.mutes.len(), 1);
}
