//! Connection tracking: one entry per (tgid, fd) socket of a traced process,
//! with its addresses, role and protocol parser; bytes are routed to the
//! parser and completed exchanges come out.
//!
//! Guarantees:
//! - Bounded: at most `max_connections` entries; a new socket beyond that is
//!   not tracked and counted (`rejected_full`); idle entries are swept.
//! - A reused fd (different kernel socket id) starts a fresh connection.
//! - A socket the kernel forgot while it was open (its socket map is LRU,
//!   `capture.max_sockets`) and looked up again on its next syscall keeps
//!   its state here (parser, prepared statements, TLS, role): counted in
//!   `relearned`, and muted again if it was muted.
//! - Entries are removed on close and when their process exits.
//! - [`ConnTable::peer_traced`] tells whether the other end of a loopback
//!   connection is (or was, within [`PAIR_LINGER_NS`]) a tracked socket, so
//!   cross-process linking only waits when there is something to wait for.
//! - Detection is by content ([`crate::protocol::detect`]); a connection whose
//!   first bytes match no protocol becomes opaque and its bytes are ignored,
//!   and it is queued in [`ConnTable::mutes`] so that the kernel stops
//!   copying them (at most [`MAX_MUTES`] per drain cycle; beyond that it is
//!   counted in `mute_failed` and its bytes keep arriving, ignored). A TLS
//!   handshake is not muted at once: its plaintext may come from the TLS
//!   library; only after [`TLS_EVENTS_BEFORE_MUTE`] ciphertext events
//!   without plaintext (a TLS library kspan does not probe).
//! - TLS: the first plaintext event (`DATA_TLS`) on a connection makes it a
//!   TLS connection: detection restarts on the plaintext stream (whatever the
//!   handshake's ciphertext did to it) and socket-level data on it is ignored
//!   from then on; its exchanges carry `ConnMeta::tls`.
//! - Each chunk carries the key of the thread that moved it
//!   ([`thread_key`]): for a Go program, its goroutine when the kernel could
//!   read it, so nesting follows the goroutine, not the thread it ran on.

use foldhash::{HashMap, HashMapExt};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use kspan_common::{
    ConnEvent, DATA_EGRESS, DATA_TLS, DataHeader, GoStreamEvent, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN,
};

mod threads;
mod unix;

pub use threads::ThreadTable;

pub use unix::{MAX_UNIX_NAMES, dropped as unix_names_dropped};

use crate::protocol::detect::{Detector, Verdict};
use crate::protocol::http2::Http2Parser;
use crate::protocol::{
    Chunk, ConnMeta, Direction, End, Exchange, ParseStats, Protocol, Role, StreamParser, StreamReport, UnixConn,
};

/// Limits of the connection table.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    pub max_connections: usize,
    /// Entries with no traffic for this long are dropped by [`ConnTable::sweep`].
    pub idle_timeout_ns: u64,
}

/// Counters of the connection table (all only grow).
#[derive(Clone, Copy, Debug, Default)]
pub struct ConnStats {
    pub opened: u64,
    pub closed: u64,
    pub rejected_full: u64,
    pub swept_idle: u64,
    pub opaque: u64,
    pub fd_reused: u64,
    /// Sockets the kernel reported again as first seen (no accept or
    /// connect), with the same socket id as the open connection on that fd:
    /// its socket map had evicted them while they were open (LRU, full).
    pub relearned: u64,
    /// Connections switched to TLS plaintext.
    pub tls: u64,
    /// Connections that began with TLS records: a handshake, or application
    /// data of a connection opened before kspan started (ignored like opaque
    /// ones, not counted as opaque); they switch to plaintext when the
    /// process's TLS library is probed.
    pub tls_handshake: u64,
    /// HTTP/2 connections taken up mid-stream (opened before kspan started).
    pub http2_joined: u64,
    /// Socket-level (ciphertext) data events ignored on TLS connections.
    pub tls_ciphertext_ignored: u64,
    /// TLS connections muted after [`TLS_EVENTS_BEFORE_MUTE`] ciphertext
    /// events without plaintext (a TLS library kspan does not probe).
    pub tls_unprobed: u64,
    /// Opaque connections whose bytes the kernel stopped copying.
    pub muted: u64,
    /// Opaque connections that could not be muted (closed or reused first,
    /// or more than [`MAX_MUTES`] in one drain cycle): their bytes still
    /// arrive and are ignored.
    pub mute_failed: u64,
    /// Unix domain connections reported unnamed because the process's
    /// table of socket names was full ([`MAX_UNIX_NAMES`]); read from that
    /// table ([`unix_names_dropped`]) when counters are published.
    pub unix_names_dropped: u64,
    /// Go HTTP/2 streams keyed by their handler's goroutine.
    pub go_streams: u64,
    /// grpc-go client calls keyed by their caller's goroutine (counted when
    /// the report is taken, which may be before its request is written).
    pub go_calls: u64,
    /// Go HTTP/2 stream handlers (or grpc-go callers) reported for no open
    /// request (its connection or stream unknown here, e.g. lost data): that
    /// request keeps the goroutine that read (or wrote) it.
    pub go_streams_unmatched: u64,
    /// Handler goroutines forgotten because [`MAX_GO_HANDLERS`] were
    /// remembered: a stream those served before is not known to have ended
    /// when its goroutine serves another (its process may then be seen as
    /// multiplexed: nesting off, never a wrong parent).
    pub go_handlers_forgotten: u64,
}

/// Go handler goroutines remembered at most, over all processes (see
/// [`ConnTable::on_go_stream`]); beyond, the table starts over (counted).
pub const MAX_GO_HANDLERS: usize = 65_536;

/// A stream of a connection: its key, socket id and stream id.
type StreamAt = ((u32, u32), u64, u32);

/// A Go server stream whose handler goroutine went on to serve another
/// stream at `ts_ns` (see [`StreamParser::handed_over`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Handover {
    key: (u32, u32),
    sock_id: u64,
    stream: u32,
    ts_ns: u64,
}

/// Most mute requests queued in one drain cycle.
pub const MAX_MUTES: usize = 1024;

/// A socket whose bytes the kernel should stop copying (see [`ConnTable::mutes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mute {
    pub tgid: u32,
    pub fd: u32,
    /// Muted only while the kernel's entry for (tgid, fd) is this socket.
    pub sock_id: u64,
}

/// An exchange plus the connection it happened on.
#[derive(Debug)]
pub struct ConnExchange {
    pub tgid: u32,
    pub fd: u32,
    pub meta: ConnMeta,
    pub exchange: Exchange,
    /// [`ConnTable::peer_traced`] when the exchange completed.
    pub peer_traced: bool,
    /// [`ConnTable::serves`] for the process when the exchange completed
    /// (events of one batch are handled before its spans are built, so this
    /// cannot be asked later).
    pub serving: bool,
}

enum State {
    Detecting(Detector),
    Parsing(Protocol, Box<dyn StreamParser>),
    Opaque,
    /// Began with a TLS handshake and no plaintext came from the TLS
    /// library yet: socket-level (ciphertext) events seen since.
    Tls(u32),
}

/// Ciphertext events after a TLS handshake with no plaintext from the TLS
/// library, after which the connection is muted: its process encrypts with
/// a library kspan does not probe (Go's crypto/tls, rustls, a static
/// BoringSSL). A probed library call produces plaintext at the first read
/// or write after the handshake, and the syscalls inside it no socket
/// events at all, so a probed connection never gets this far; but the
/// handshake itself is socket events, and GnuTLS reads each record in two
/// (its 5-byte header, then the body): wget's TLS 1.3 handshake with
/// gnutls-serv is 20 events, so the bound leaves room for three times that.
pub const TLS_EVENTS_BEFORE_MUTE: u32 = 64;

/// The "thread" a call is nested by: the thread itself, or for a Go program
/// the goroutine that made it (a goroutine moves between threads and a
/// thread runs many goroutines). Goroutine keys have the top bit set; Linux
/// thread ids stay below 2^22, so the two never meet. A `g` is an 8-aligned
/// heap object of a few hundred bytes: 31 bits of its address over 8 tell
/// apart any two inside 16 GiB, and the higher bits are folded in.
pub fn thread_key(tid: u32, goroutine: u64) -> u32 {
    if goroutine == 0 {
        return tid;
    }
    let g = goroutine >> 3;
    0x8000_0000 | ((g ^ (g >> 31)) as u32 & 0x7fff_ffff)
}

/// Queues `m` (at most [`MAX_MUTES`] per drain cycle; beyond: counted).
fn queue_mute(mutes: &mut Vec<Mute>, stats: &mut ConnStats, m: Mute) {
    if mutes.len() < MAX_MUTES {
        mutes.push(m);
    } else {
        stats.mute_failed += 1;
    }
}

struct Conn {
    sock_id: u64,
    role: Option<Role>,
    meta: ConnMeta,
    state: State,
    last_ts: u64,
}

/// The connection table.
pub struct ConnTable {
    conns: HashMap<(u32, u32), Conn>,
    limits: ConnLimits,
    pub stats: ConnStats,
    parse: [ParseStats; Protocol::ALL.len()],
    scratch: Vec<Exchange>,
    /// (local, peer) of tracked connections whose peer is on this host.
    local_pairs: HashMap<(End, End), PairState>,
    /// Open server-role connections per process (no entry: none).
    serving: HashMap<u32, u32>,
    /// Opaque connections found since the caller last drained this: the
    /// kernel need not copy their bytes any more.
    pub mutes: Vec<Mute>,
    /// The server stream each Go handler goroutine serves or served last.
    go_handlers: ThreadTable<StreamAt>,
    /// Handovers found while a connection was borrowed, applied after.
    handovers: Vec<Handover>,
}

fn count_server(serving: &mut HashMap<u32, u32>, tgid: u32, role: Option<Role>, up: bool) {
    if role != Some(Role::Server) {
        return;
    }
    if up {
        *serving.entry(tgid).or_insert(0) += 1;
    } else if let Some(n) = serving.get_mut(&tgid) {
        *n -= 1;
        if *n == 0 {
            serving.remove(&tgid);
        }
    }
}

/// How long a closed connection's address pair is remembered: the span at
/// the other end may complete after this end closed (HTTP/1.0 bodies end at
/// close, so the client's span is built after the server closed).
pub const PAIR_LINGER_NS: u64 = 5_000_000_000;

#[derive(Clone, Copy, Debug)]
struct PairState {
    /// Open entries with this pair (a reused fd may briefly add a second).
    live: u32,
    /// When the last one closed (kernel monotonic ns).
    closed_at: u64,
}

fn unindex(pairs: &mut HashMap<(End, End), PairState>, meta: &ConnMeta, ts: u64) {
    if let Some(k) = meta.local_ends()
        && let Some(p) = pairs.get_mut(&k)
    {
        p.live = p.live.saturating_sub(1);
        p.closed_at = ts;
    }
}

fn proto_index(p: Protocol) -> usize {
    match p {
        Protocol::Http => 0,
        Protocol::Http2 => 1,
        Protocol::Postgres => 2,
        Protocol::Redis => 3,
    }
}

fn addr(family: u16, raw: &[u8; 16], port: u16) -> Option<SocketAddr> {
    let ip = match family {
        2 => IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3])),
        10 => {
            let v6 = Ipv6Addr::from(*raw);
            v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

/// A TLS record header, version 3.0 to 3.4: a handshake (22), or for a
/// connection opened before kspan started application data (23), an alert
/// (21) or a cipher change (20).
fn looks_like_tls(data: &[u8]) -> bool {
    matches!(data, [0x14..=0x17, 0x03, 0x00..=0x04, ..])
}

/// Remembers that a Go server's handler goroutine serves `r.stream` of the
/// connection `at` (key, socket id); the stream it served before, if
/// another, is handed over: Go reuses an ended goroutine's `g`, so that
/// handler had ended. Client reports name callers, not handlers: none.
fn note_handler(
    handlers: &mut ThreadTable<StreamAt>,
    stats: &mut ConnStats,
    at: ((u32, u32), u64),
    r: &StreamReport,
) -> Option<Handover> {
    if r.role != Role::Server {
        return None;
    }
    let (previous, dropped) = handlers.insert(at.0.0, r.tid, (at.0, at.1, r.stream));
    stats.go_handlers_forgotten += dropped as u64;
    let (key, sock_id, stream) = previous?;
    ((key, sock_id, stream) != (at.0, at.1, r.stream)).then_some(Handover { key, sock_id, stream, ts_ns: r.ts_ns })
}

/// A Go stream report (a server's handler, a client's caller: `role`),
/// taken by its parser or not.
fn count_go_stream(stats: &mut ConnStats, role: Role, taken: bool) {
    match (taken, role) {
        (false, _) => stats.go_streams_unmatched += 1,
        (true, Role::Server) => stats.go_streams += 1,
        (true, Role::Client) => stats.go_calls += 1,
    }
}

/// Go stream reports a detector held, dropped with it: counted as
/// unmatched.
fn drop_held_streams(stats: &mut ConnStats, det: &Detector) {
    stats.go_streams_unmatched += det.held_streams().count() as u64;
}

/// Builds the per-protocol parser for a detected protocol.
pub fn new_parser(p: Protocol, role: Role) -> Box<dyn StreamParser> {
    match p {
        Protocol::Http => Box::new(crate::protocol::http::HttpParser::new(role)),
        Protocol::Http2 => Box::new(Http2Parser::new(role)),
        Protocol::Postgres => Box::new(crate::protocol::postgres::PgParser::new(role)),
        Protocol::Redis => Box::new(crate::protocol::redis::RedisParser::new(role)),
    }
}

impl ConnTable {
    pub fn new(limits: ConnLimits) -> Self {
        Self {
            conns: HashMap::new(),
            limits,
            stats: ConnStats::default(),
            parse: Default::default(),
            scratch: Vec::new(),
            local_pairs: HashMap::new(),
            serving: HashMap::new(),
            mutes: Vec::new(),
            go_handlers: ThreadTable::new(MAX_GO_HANDLERS),
            handovers: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Entries of the table's parts now, by name (`kspan_table_entries`).
    pub fn table_sizes(&self) -> [(&'static str, usize); 5] {
        [
            ("connections", self.conns.len()),
            ("connection_pairs", self.local_pairs.len()),
            ("serving_processes", self.serving.len()),
            ("go_handlers", self.go_handlers.len()),
            ("unix_socket_names", unix::len()),
        ]
    }

    /// Parse counters of one protocol.
    pub fn parse_stats(&self, p: Protocol) -> ParseStats {
        self.parse[proto_index(p)]
    }

    fn insert(&mut self, key: (u32, u32), sock_id: u64, role: Option<Role>, meta: ConnMeta, ts: u64) -> bool {
        if !self.conns.contains_key(&key) && self.conns.len() >= self.limits.max_connections {
            self.stats.rejected_full += 1;
            return false;
        }
        self.stats.opened += 1;
        if let Some(old) = self.conns.get(&key) {
            unindex(&mut self.local_pairs, &old.meta, ts);
            count_server(&mut self.serving, key.0, old.role, false);
        }
        count_server(&mut self.serving, key.0, role, true);
        if let Some(k) = meta.local_ends() {
            if self.local_pairs.len() >= 2 * self.limits.max_connections {
                // Bounded: closed pairs go first (only linking precision suffers).
                self.local_pairs.retain(|_, p| p.live > 0);
            }
            self.local_pairs.entry(k).or_insert(PairState { live: 0, closed_at: 0 }).live += 1;
        }
        let conn = Conn { sock_id, role, meta, state: State::Detecting(Detector::default()), last_ts: ts };
        self.conns.insert(key, conn);
        true
    }

    /// A socket seen for the first time (accept, connect or first data).
    pub fn on_open(&mut self, ev: &ConnEvent, out: &mut Vec<ConnExchange>) {
        let key = (ev.tgid, ev.fd);
        if ev.role == ROLE_UNKNOWN && self.relearn(key, ev) {
            return;
        }
        if self.conns.contains_key(&key) {
            self.close_key(key, ev.ts_ns, out);
            self.stats.fd_reused += 1;
        }
        let role = match ev.role {
            ROLE_SERVER => Some(Role::Server),
            ROLE_CLIENT => Some(Role::Client),
            _ => None,
        };
        const AF_UNIX: u16 = 1;
        let meta = ConnMeta {
            local: addr(ev.family, &ev.laddr, ev.lport),
            peer: addr(ev.family, &ev.raddr, ev.rport),
            tls: false,
            unix: (ev.family == AF_UNIX).then(|| UnixConn {
                name: unix::intern(ev.unix_path()),
                sock: ev.sock_id,
                peer: ev.unix_peer(),
            }),
        };
        self.insert(key, ev.sock_id, role, meta, ev.ts_ns);
    }

    /// `ev` reports a socket met on a syscall, not made by accept or connect:
    /// if it is the open connection on its fd, the kernel had forgotten it
    /// (evicted from its full socket map) and the connection goes on as it
    /// was. The kernel's new entry is not muted: one that was is muted again.
    fn relearn(&mut self, key: (u32, u32), ev: &ConnEvent) -> bool {
        let Some(conn) = self.conns.get_mut(&key).filter(|c| c.sock_id == ev.sock_id) else {
            return false;
        };
        self.stats.relearned += 1;
        conn.last_ts = conn.last_ts.max(ev.ts_ns);
        let muted = match conn.state {
            State::Opaque => true,
            State::Tls(events) => events >= TLS_EVENTS_BEFORE_MUTE,
            _ => false,
        };
        if muted {
            queue_mute(&mut self.mutes, &mut self.stats, Mute { tgid: key.0, fd: key.1, sock_id: ev.sock_id });
        }
        true
    }

    /// Bytes moved on a socket.
    pub fn on_data(&mut self, hdr: &DataHeader, payload: &[u8], out: &mut Vec<ConnExchange>) {
        let key = (hdr.tgid, hdr.fd);
        let stale = self.conns.get(&key).is_some_and(|c| c.sock_id != hdr.sock_id);
        if stale {
            self.stats.fd_reused += 1;
            self.close_key(key, hdr.ts_ns, out);
        }
        if !self.conns.contains_key(&key) && !self.insert(key, hdr.sock_id, None, ConnMeta::default(), hdr.ts_ns) {
            return;
        }
        let Some(conn) = self.conns.get_mut(&key) else { return };
        conn.last_ts = hdr.ts_ns;
        match (conn.meta.tls, hdr.flags & DATA_TLS != 0) {
            (true, false) => {
                self.stats.tls_ciphertext_ignored += 1;
                return;
            }
            (false, true) => {
                // Plaintext from the TLS library: what the socket showed so
                // far (handshake, or a protocol's TLS negotiation) is over.
                self.stats.tls += 1;
                conn.meta.tls = true;
                if let State::Detecting(det) = &conn.state {
                    drop_held_streams(&mut self.stats, det);
                }
                conn.state = State::Detecting(Detector::default());
            }
            _ => {}
        }
        // The decoder checked that the tail fits the payload.
        let (data, tail) = payload.split_at(payload.len().saturating_sub(hdr.tail as usize));
        let chunk = Chunk {
            dir: if hdr.flags & DATA_EGRESS != 0 { Direction::Egress } else { Direction::Ingress },
            ts_ns: hdr.ts_ns,
            tid: thread_key(hdr.tid, hdr.goroutine),
            data,
            len: usize::try_from(hdr.len).unwrap_or(usize::MAX),
            tail,
        };
        let scratch = &mut self.scratch;
        scratch.clear();
        let mute = Mute { tgid: key.0, fd: key.1, sock_id: conn.sock_id };
        match &mut conn.state {
            State::Opaque => return,
            State::Tls(events) => {
                *events += 1;
                if *events == TLS_EVENTS_BEFORE_MUTE {
                    self.stats.tls_unprobed += 1;
                    queue_mute(&mut self.mutes, &mut self.stats, mute);
                }
                return;
            }
            State::Parsing(p, parser) => parser.feed(&chunk, scratch, &mut self.parse[proto_index(*p)]),
            State::Detecting(det) => {
                let (proto, detected, joined) = match det.offer(&chunk, conn.role) {
                    Verdict::Undecided => return,
                    Verdict::Opaque => {
                        drop_held_streams(&mut self.stats, det);
                        if looks_like_tls(chunk.data) || det.pending().any(|c| looks_like_tls(&c.data)) {
                            self.stats.tls_handshake += 1;
                            conn.state = State::Tls(0);
                        } else {
                            self.stats.opaque += 1;
                            queue_mute(&mut self.mutes, &mut self.stats, mute);
                            conn.state = State::Opaque;
                        }
                        return;
                    }
                    Verdict::Detected(proto, role) => (proto, role, false),
                    Verdict::Joined(role) => (Protocol::Http2, role, true),
                };
                if conn.role.is_none() {
                    count_server(&mut self.serving, key.0, Some(detected), true);
                }
                let role = *conn.role.get_or_insert(detected);
                let mut parser = if joined {
                    self.stats.http2_joined += 1;
                    Box::new(Http2Parser::joined(role))
                } else {
                    new_parser(proto, role)
                };
                let stats = &mut self.parse[proto_index(proto)];
                for c in det.pending() {
                    parser.feed(&c.as_chunk(), scratch, stats);
                }
                // Before this chunk, which may end a stream reported held.
                for r in det.held_streams() {
                    let taken = parser.stream_on(&r);
                    count_go_stream(&mut self.stats, r.role, taken);
                    let at = (key, conn.sock_id);
                    match taken.then(|| note_handler(&mut self.go_handlers, &mut self.stats, at, &r)).flatten() {
                        Some(h) if (h.key, h.sock_id) == at => parser.handed_over(h.stream, h.ts_ns),
                        Some(h) => self.handovers.push(h),
                        None => {}
                    }
                }
                parser.feed(&chunk, scratch, stats);
                conn.state = State::Parsing(proto, parser);
            }
        }
        let meta = conn.meta;
        let done = scratch.is_empty();
        for h in std::mem::take(&mut self.handovers) {
            self.hand_over(h);
        }
        if done {
            return;
        }
        let (peer_traced, serving) = (self.peer_traced(&meta), self.serves(key.0));
        let tagged = |exchange| ConnExchange { tgid: key.0, fd: key.1, meta, exchange, peer_traced, serving };
        out.extend(self.scratch.drain(..).map(tagged));
    }

    /// A Go HTTP/2 server runs `ev.stream`'s handler on `ev.goroutine`, or
    /// a grpc-go client made the call on `ev.stream` there: the calls made
    /// on that goroutine nest under that request, and that call under the
    /// request the goroutine serves (see [`thread_key`]).
    pub fn on_go_stream(&mut self, ev: &GoStreamEvent) {
        let conn = self.conns.get_mut(&(ev.tgid, ev.fd)).filter(|c| c.sock_id == ev.sock_id);
        let key = thread_key(ev.tid, ev.goroutine);
        let role = if ev.role == ROLE_CLIENT { Role::Client } else { Role::Server };
        // The kernel also reports sockets of no known role (opened before
        // kspan started): the parser takes only reports of its own role.
        let conn = conn.filter(|c| c.role.is_none_or(|r| r == role));
        let report = StreamReport { role, stream: ev.stream, tid: key, ts_ns: ev.ts_ns };
        let taken = match conn.map(|c| &mut c.state) {
            Some(State::Parsing(_, parser)) => parser.stream_on(&report),
            // A connection taken up mid-stream may still be undecided, its
            // request held: counted once the parser had it.
            Some(State::Detecting(det)) => {
                if det.hold_stream(report) {
                    return;
                }
                false
            }
            _ => false,
        };
        count_go_stream(&mut self.stats, role, taken);
        let at = ((ev.tgid, ev.fd), ev.sock_id);
        if taken && let Some(h) = note_handler(&mut self.go_handlers, &mut self.stats, at, &report) {
            self.hand_over(h);
        }
    }

    /// The stream `h` names ended its handler before `h.ts_ns`.
    fn hand_over(&mut self, h: Handover) {
        let conn = self.conns.get_mut(&h.key).filter(|c| c.sock_id == h.sock_id);
        if let Some(State::Parsing(_, parser)) = conn.map(|c| &mut c.state) {
            parser.handed_over(h.stream, h.ts_ns);
        }
    }

    fn close_key(&mut self, key: (u32, u32), ts: u64, out: &mut Vec<ConnExchange>) {
        let Some(mut conn) = self.conns.remove(&key) else { return };
        let (peer_traced, serving) = (self.peer_traced(&conn.meta), self.serves(key.0));
        unindex(&mut self.local_pairs, &conn.meta, ts);
        count_server(&mut self.serving, key.0, conn.role, false);
        self.stats.closed += 1;
        if let State::Parsing(p, parser) = &mut conn.state {
            let mut v = Vec::new();
            parser.close(ts, &mut v, &mut self.parse[proto_index(*p)]);
            let meta = conn.meta;
            let tagged = |exchange| ConnExchange { tgid: key.0, fd: key.1, meta, exchange, peer_traced, serving };
            out.extend(v.into_iter().map(tagged));
        }
        if let State::Detecting(det) = &conn.state {
            drop_held_streams(&mut self.stats, det);
        }
    }

    /// Whether the other end of a connection with `meta` is, or was until
    /// recently, a tracked socket of a traced process on this host (false
    /// for remote peers).
    pub fn peer_traced(&self, meta: &ConnMeta) -> bool {
        meta.local_ends().is_some_and(|(local, peer)| self.local_pairs.contains_key(&(peer, local)))
    }

    /// Whether process `tgid` has an open server-role connection, i.e. may
    /// be serving a request its client calls could be nested in.
    pub fn serves(&self, tgid: u32) -> bool {
        self.serving.contains_key(&tgid)
    }

    /// A socket was closed.
    pub fn on_close(&mut self, tgid: u32, fd: u32, sock_id: u64, ts: u64, out: &mut Vec<ConnExchange>) {
        if self.conns.get(&(tgid, fd)).is_some_and(|c| c.sock_id == sock_id) {
            self.close_key((tgid, fd), ts, out);
        }
    }

    /// A process exited: all its connections end.
    pub fn on_exit(&mut self, tgid: u32, ts: u64, out: &mut Vec<ConnExchange>) {
        let keys: Vec<_> = self.conns.keys().filter(|k| k.0 == tgid).copied().collect();
        for k in keys {
            self.close_key(k, ts, out);
        }
        self.go_handlers.forget_process(tgid);
    }

    /// Every connection ends (capture resumes after a pause in which closes
    /// and fd reuse went unseen).
    pub fn close_all(&mut self, ts: u64, out: &mut Vec<ConnExchange>) {
        let keys: Vec<_> = self.conns.keys().copied().collect();
        for k in keys {
            self.close_key(k, ts, out);
        }
    }

    /// Drops connections idle for longer than the limit (their close was
    /// never seen, e.g. lost); returns how many.
    pub fn sweep(&mut self, now_ns: u64) -> usize {
        let limit = self.limits.idle_timeout_ns;
        let before = self.conns.len();
        let pairs = &mut self.local_pairs;
        let serving = &mut self.serving;
        self.conns.retain(|k, c| {
            let keep = now_ns.saturating_sub(c.last_ts) < limit;
            if !keep {
                unindex(pairs, &c.meta, c.last_ts);
                count_server(serving, k.0, c.role, false);
            }
            keep
        });
        pairs.retain(|_, p| p.live > 0 || now_ns.saturating_sub(p.closed_at) < PAIR_LINGER_NS);
        let n = before - self.conns.len();
        self.stats.swept_idle += n as u64;
        n
    }
}

#[cfg(test)]
mod tests;
