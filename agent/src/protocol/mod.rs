//! Protocol stage: turns one connection's two byte streams into request/response
//! exchanges (HTTP/1.x, HTTP/2 and gRPC, PostgreSQL v3, Redis RESP2/3).
//!
//! Guarantees:
//! - Detection is by content, never by port ([`detect`]).
//! - Parsers are incremental: a message may be split across any number of
//!   chunks, and one chunk may hold many messages (pipelining).
//! - Malformed, truncated or mid-stream input never panics: it is counted in
//!   [`ParseStats`] and the parser resynchronises or gives the connection up.
//! - Every parser holds bounded state (queues of in-flight requests and
//!   buffered bytes have fixed caps; overflow is counted).

pub mod detect;
pub mod http;
pub mod http2;
pub mod postgres;
pub mod redis;
#[cfg(test)]
pub mod testutil;

use crate::span::model::{Attributes, SpanStatus, Text};

/// Which way bytes moved, seen from the traced process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// The process read these bytes (recv, read, accept side input).
    Ingress,
    /// The process wrote these bytes.
    Egress,
}

impl Direction {
    /// 0 for Ingress, 1 for Egress: an index into per-direction arrays.
    pub fn index(self) -> usize {
        match self {
            Direction::Ingress => 0,
            Direction::Egress => 1,
        }
    }
}

/// The traced process's side of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// It serves requests: requests are Ingress, responses Egress.
    Server,
    /// It makes requests: requests are Egress, responses Ingress.
    Client,
}

impl Role {
    /// Direction in which this side sees requests.
    pub fn request_direction(self) -> Direction {
        match self {
            Role::Server => Direction::Ingress,
            Role::Client => Direction::Egress,
        }
    }
}

/// A piece of one direction of a connection's byte stream, as captured by one
/// syscall (all the buffers of a vectored one).
#[derive(Clone, Copy, Debug)]
pub struct Chunk<'a> {
    pub dir: Direction,
    /// Kernel monotonic time (ns) when the syscall completed.
    pub ts_ns: u64,
    /// Thread that made the syscall, or its goroutine in a Go program
    /// (`conntrack::thread_key`).
    pub tid: u32,
    /// The captured prefix of the bytes moved.
    pub data: &'a [u8],
    /// Bytes really moved (>= `data.len()`); `len - data.len()` bytes after
    /// `data` were not captured and are unknown.
    pub len: usize,
    /// The last bytes moved, when the capture has them though bytes before
    /// them are unknown: the final `tail.len()` of the `missing()` bytes
    /// (empty otherwise; a parser may ignore it and treat them as unknown).
    pub tail: &'a [u8],
}

impl<'a> Chunk<'a> {
    /// Bytes moved but not captured.
    pub fn missing(&self) -> usize {
        self.len.saturating_sub(self.data.len())
    }

    /// The uncaptured bytes before the tail, and the tail itself: empty
    /// when there is none or when it does not fit the uncaptured bytes
    /// (a hand-built chunk; the decoder refuses such a kernel record).
    pub fn gap_and_tail(&self) -> (usize, &'a [u8]) {
        let missing = self.missing();
        let tail = if self.tail.len() <= missing { self.tail } else { &[] };
        (missing - tail.len(), tail)
    }

    /// The tail as a chunk of its own: the bytes that follow the gap, all
    /// captured, at this chunk's time and thread.
    pub fn tail_chunk(&self) -> Chunk<'a> {
        let (_, tail) = self.gap_and_tail();
        Chunk { data: tail, len: tail.len(), tail: &[], ..*self }
    }
}

/// Application protocols kspan understands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http,
    /// HTTP/2 (and gRPC over it); its exchanges are [`Record::Http`] records.
    Http2,
    Postgres,
    Redis,
}

impl Protocol {
    /// Every protocol, in the order detection tries them (HTTP/2's preface
    /// before Redis, whose inline commands are also lines of text).
    pub const ALL: [Protocol; 4] = [Protocol::Http, Protocol::Http2, Protocol::Postgres, Protocol::Redis];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Http2 => "http2",
            Protocol::Postgres => "postgresql",
            Protocol::Redis => "redis",
        }
    }
}

/// One completed request/response pair (or a request that ended without a
/// response, e.g. the connection closed), ready for the span stage.
#[derive(Clone, Debug)]
pub struct Exchange {
    pub role: Role,
    /// Server: first request byte read. Client: first request byte written.
    pub start_ns: u64,
    /// Server: last response byte written. Client: last response byte read.
    pub end_ns: u64,
    /// Thread that read (server) or wrote (client) the first request byte.
    pub tid: u32,
    /// Where `tid` served the request, when narrower than the exchange: a
    /// server's stream served by a handler goroutine the process reported
    /// (see `StreamParser::stream_on`), from the handler's start until that
    /// goroutine served another stream or the exchange ended (monotonic
    /// ns). Calls nest in this window, not in the whole exchange: the
    /// reader got the request before the handler started, and Go reuses an
    /// ended goroutine's `g` for the next one, maybe before the ended one's
    /// response was written.
    pub window: Option<(u64, u64)>,
    pub record: Record,
}

/// Protocol-specific content of an exchange.
#[derive(Clone, Debug)]
pub enum Record {
    Http(http::HttpExchange),
    Postgres(postgres::PgExchange),
    Redis(redis::RedisExchange),
}

impl Record {
    pub fn protocol(&self) -> Protocol {
        match self {
            Record::Http(_) => Protocol::Http,
            Record::Postgres(_) => Protocol::Postgres,
            Record::Redis(_) => Protocol::Redis,
        }
    }

    /// The stream of a multiplexed connection the exchange was on (the
    /// HTTP/2 stream id); 0 for one request at a time.
    pub fn stream(&self) -> u32 {
        match self {
            Record::Http(h) => h.stream,
            _ => 0,
        }
    }
}

/// What the span stage needs from a record: a name, attributes and a status.
/// Each protocol maps its record to OpenTelemetry semantic conventions.
#[derive(Clone, Debug, Default)]
pub struct Described {
    pub name: crate::span::model::Text,
    /// Exported attributes (already privacy-filtered).
    pub attributes: Attributes,
    /// Attributes rules may read but that are never exported (raw header
    /// values, query string, Redis keys...). Keys follow OTel naming, e.g.
    /// `http.request.header.x-tenant-id`, `url.query`.
    pub private: Attributes,
    pub status: SpanStatus,
    /// W3C trace context found in the request (HTTP only), raw header values.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

/// Privacy switches shared by all protocols. Everything is off by default.
#[derive(Clone, Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Privacy {
    /// Export `url.query` (query strings often carry tokens and PII).
    pub capture_url_query: bool,
    /// Export SQL text as sent, literals included.
    pub raw_sql: bool,
    /// Export Redis argument values (not only command and key).
    pub redis_values: bool,
    /// Extra request headers exported as `http.request.header.<name>`
    /// (lower-case names). Authorization, Proxy-Authorization, Cookie and
    /// Set-Cookie are never exported raw even if listed.
    pub capture_headers: Vec<String>,
    /// Leave [`Described::private`] empty. Not a user setting: the agent sets
    /// it when no rules file is configured, because only rules and sampling
    /// read private attributes (raw headers, raw SQL, Redis keys), and
    /// building them is a good part of the cost of a span.
    #[serde(skip)]
    pub skip_private: bool,
}

/// Header names whose values are never exported raw.
pub const SENSITIVE_HEADERS: [&str; 4] = ["authorization", "proxy-authorization", "cookie", "set-cookie"];

/// Per-protocol parse counters (summed per protocol by the agent and exposed
/// as metrics). Every counter only grows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Exchanges produced.
    pub exchanges: u64,
    /// Bytes that could not be parsed as the protocol (garbage, bad framing).
    pub malformed: u64,
    /// Messages that could not be fully understood because bytes were not
    /// captured (capture limit, lost events).
    pub truncated: u64,
    /// Times the parser dropped its position and searched for a new message start.
    pub resyncs: u64,
    /// Responses that arrived with no request waiting (dropped).
    pub unmatched_responses: u64,
    /// Requests dropped: in-flight queue full, or connection closed before a response.
    pub dropped_requests: u64,
    /// Header fields of an HTTP/2 connection taken up mid-stream that the
    /// peer had indexed before kspan joined (not decodable, left out).
    pub unknown_fields: u64,
}

impl ParseStats {
    pub fn add(&mut self, o: &ParseStats) {
        self.exchanges += o.exchanges;
        self.malformed += o.malformed;
        self.truncated += o.truncated;
        self.resyncs += o.resyncs;
        self.unmatched_responses += o.unmatched_responses;
        self.dropped_requests += o.dropped_requests;
        self.unknown_fields += o.unknown_fields;
    }
}

/// The interface every protocol's per-connection parser implements.
pub trait StreamParser: Send {
    /// Feeds one captured chunk; completed exchanges are appended to `out`.
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, stats: &mut ParseStats);
    /// The connection closed at `ts_ns`: emit what can still be emitted
    /// (e.g. a response delimited by close) and count what is dropped.
    fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats);
    /// The request on `report.stream` of a multiplexed connection belongs
    /// to thread (or goroutine) key `report.tid`, not to the one that read
    /// or wrote it: on a `Server` connection it is served there from
    /// `report.ts_ns` on (a Go HTTP/2 server's stream handler); on a
    /// `Client` connection the call was made there (grpc-go's client, whose
    /// writer goroutine writes every call), and it may be told before its
    /// request is written. False when the report's role is not the
    /// connection's, or no such request is (or can still be) open
    /// (protocols with one request at a time have no streams).
    fn stream_on(&mut self, _report: &StreamReport) -> bool {
        false
    }

    /// The goroutine serving `stream` went on to serve another stream at
    /// `ts_ns` (Go reuses an ended goroutine's `g`): its handler ended
    /// before that.
    fn handed_over(&mut self, _stream: u32, _ts_ns: u64) {}
}

/// A Go program's report of who serves or made the request on a stream
/// (see [`StreamParser::stream_on`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StreamReport {
    /// The connection's side the report is for.
    pub role: Role,
    pub stream: u32,
    /// The handler's (or caller's) thread key.
    pub tid: u32,
    /// When the handler started (or the call's stream was made).
    pub ts_ns: u64,
}

/// Result of sniffing the first bytes seen in one direction of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detection {
    /// Definitely not this protocol.
    No,
    /// Could be; more bytes are needed to decide.
    NeedMore,
    /// This protocol, and the traced process has this role.
    Yes(Role),
}

/// The text of an IP address, from a small per-thread cache: a capture
/// thread sees few distinct addresses, and formatting one costs more than
/// building the rest of an attribute.
pub fn ip_text(ip: std::net::IpAddr) -> Text {
    use std::cell::RefCell;
    const SLOTS: usize = 8;
    /// (next slot to replace, slots).
    type Cache = (usize, [Option<(std::net::IpAddr, Text)>; SLOTS]);
    thread_local! {
        static CACHE: RefCell<Cache> = RefCell::new((0, Default::default()));
    }
    CACHE.with_borrow_mut(|(next, slots)| {
        if let Some((_, t)) = slots.iter().flatten().find(|(a, _)| *a == ip) {
            return t.clone();
        }
        let t = compact_str::ToCompactString::to_compact_string(&ip);
        slots[*next % SLOTS] = Some((ip, t.clone()));
        *next = next.wrapping_add(1);
        t
    })
}

/// Addresses of a connection, from the traced process's point of view.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnMeta {
    pub local: Option<std::net::SocketAddr>,
    pub peer: Option<std::net::SocketAddr>,
    /// The bytes were TLS plaintext (captured at the TLS library, not the socket).
    pub tls: bool,
    /// A Unix domain stream socket (`local` and `peer` are `None` then).
    pub unix: Option<UnixConn>,
}

/// The ends of a Unix domain stream connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnixConn {
    /// The name of the server's socket: a file system path, `@name` for an
    /// abstract one, empty when unnamed.
    pub name: &'static str,
    /// This end's and the other end's kernel socket ids (`sock_id`; 0: none).
    pub sock: u64,
    pub peer: u64,
}

/// One end of a connection, for pairing it with the other end on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum End {
    Ip(std::net::SocketAddr),
    /// A Unix domain socket, by kernel socket id.
    Unix(u64),
}

impl ConnMeta {
    /// (this end, the other end) when the other end is on this host: a TCP
    /// peer on a loopback or this connection's own address, or the peer of
    /// a Unix domain socket.
    pub fn local_ends(&self) -> Option<(End, End)> {
        if let Some(u) = self.unix {
            return (u.sock != 0 && u.peer != 0).then_some((End::Unix(u.sock), End::Unix(u.peer)));
        }
        let (local, peer) = (self.local?, self.peer?);
        (peer.ip().is_loopback() || peer.ip() == local.ip()).then_some((End::Ip(local), End::Ip(peer)))
    }
}

/// Address attributes of a database span (the protocol names no server
/// itself): `server.address`/`server.port` of the server's end (the peer of
/// a client, the local end of a server), `network.peer.address`/`.port`,
/// and for a Unix domain socket its name in their place ([`push_unix`]).
pub fn push_db_addresses(a: &mut Attributes, role: Role, conn: &ConnMeta) {
    let server = match role {
        Role::Client => conn.peer,
        Role::Server => conn.local,
    };
    if let Some(s) = server {
        a.push_unique("server.address", ip_text(s.ip()));
        a.push_unique("server.port", i64::from(s.port()));
    }
    if let Some(p) = conn.peer {
        a.push_unique("network.peer.address", ip_text(p.ip()));
        a.push_unique("network.peer.port", i64::from(p.port()));
    }
    push_unix(a, role, conn, true);
}

/// Attributes of a Unix domain connection, where OpenTelemetry puts the
/// socket's name in place of an IP address: `network.transport=unix`, the
/// name as `network.peer.address` of a client or `network.local.address`
/// of a server, and as `server.address` when `server_address` (the
/// protocol knows no better server name). Nothing for other connections.
pub fn push_unix(a: &mut Attributes, role: Role, conn: &ConnMeta, server_address: bool) {
    let Some(UnixConn { name: path, .. }) = conn.unix else { return };
    a.push_unique("network.transport", "unix");
    if path.is_empty() {
        return;
    }
    if server_address {
        a.push_unique("server.address", path);
    }
    let key = match role {
        Role::Client => "network.peer.address",
        Role::Server => "network.local.address",
    };
    a.push_unique(key, path);
}

impl Record {
    /// Maps the record to a span name, attributes and status (semantic conventions).
    pub fn describe(&self, role: Role, conn: &ConnMeta, privacy: &Privacy) -> Described {
        match self {
            Record::Http(r) => http::describe(r, role, conn, privacy),
            Record::Postgres(r) => postgres::describe(r, role, conn, privacy),
            Record::Redis(r) => redis::describe(r, role, conn, privacy),
        }
    }
}
