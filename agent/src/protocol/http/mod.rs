//! HTTP/1.0 and HTTP/1.1: detection, incremental parsing, route templating
//! and the mapping of exchanges to OpenTelemetry HTTP span conventions.
//!
//! Guarantees:
//! - [`detect`] decides from the first bytes of one direction, by content only,
//!   and answers `No` at once for TLS, PostgreSQL and Redis openings.
//! - [`HttpParser`] pairs requests and responses in FIFO order (keep-alive and
//!   pipelining), skips bodies without buffering them, and holds at most
//!   64 KiB of header bytes per direction and 64 in-flight requests.
//! - Garbage, truncated captures and over-long header blocks are counted in
//!   [`ParseStats`](super::ParseStats) (`malformed` and `truncated` count
//!   occurrences, not bytes) and the parser resynchronises. When a stream
//!   loses its place, the requests that could be mis-paired are dropped and
//!   counted rather than paired (see `parse.rs` for the exact rule).
//! - [`HttpExchange`] keeps a bounded request (64 headers, 4 KiB per value)
//!   in one text buffer, so a parsed request costs two allocations.

mod body;
mod describe;
mod head;
mod parse;
mod route;

pub use describe::describe;
pub use parse::{HttpParser, MAX_IN_FLIGHT};
pub use route::template_route;

use super::{Detection, Direction, Role};

/// Request headers kept per exchange (more are parsed for framing, not kept).
pub const MAX_KEPT_HEADERS: usize = 64;
/// Header values longer than this are cut (at a byte boundary, then decoded lossily).
pub const MAX_HEADER_VALUE: usize = 4096;

/// Request method. Unknown tokens are `Other` (OTel `_OTHER`), with the original
/// kept in [`HttpExchange::method_original`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Method {
    #[default]
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    /// Known methods with their tokens (methods are case-sensitive).
    pub const KNOWN: [(Method, &'static [u8]); 9] = [
        (Method::Get, b"GET"),
        (Method::Post, b"POST"),
        (Method::Put, b"PUT"),
        (Method::Delete, b"DELETE"),
        (Method::Head, b"HEAD"),
        (Method::Options, b"OPTIONS"),
        (Method::Patch, b"PATCH"),
        (Method::Connect, b"CONNECT"),
        (Method::Trace, b"TRACE"),
    ];

    pub fn from_token(token: &[u8]) -> Method {
        Self::KNOWN.iter().find(|(_, t)| *t == token).map_or(Method::Other, |(m, _)| *m)
    }

    /// The `http.request.method` value: the token, or `_OTHER`.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Connect => "CONNECT",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Other => "_OTHER",
        }
    }
}

/// HTTP version of the request line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Version {
    Http10,
    #[default]
    Http11,
    /// HTTP/2 (RFC 9113), parsed by [`crate::protocol::http2`].
    Http2,
}

impl Version {
    /// The `network.protocol.version` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Version::Http10 => "1.0",
            Version::Http11 => "1.1",
            Version::Http2 => "2",
        }
    }
}

/// Byte range into [`HttpExchange`]'s text buffer.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct TextRange {
    start: u32,
    end: u32,
}

/// One request and its final response.
///
/// Text fields (original method, path, query, headers) live in one buffer and
/// are read through accessors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HttpExchange {
    pub method: Method,
    pub version: Version,
    /// Request body bytes (payload of a chunked body); `None` when the request
    /// had no body framing at all.
    pub request_body_size: Option<u64>,
    /// Final response status (never 1xx except 101).
    pub status: u16,
    /// Response body bytes; `None` when the response has no body by definition
    /// (HEAD, 1xx, 204, 304) or when its framing was lost (truncated capture).
    pub response_body_size: Option<u64>,
    /// The response's `content-type` header (cut at 4 KiB).
    pub response_content_type: Option<crate::span::model::Text>,
    /// Request headers beyond [`MAX_KEPT_HEADERS`] that were not kept.
    pub headers_dropped: u32,
    /// gRPC status code from the response's `grpc-status` (HTTP/2 only).
    pub grpc_status: Option<u32>,
    /// HTTP/2 stream id (0 for HTTP/1.x).
    pub stream: u32,
    text: String,
    method_original: Option<TextRange>,
    path: TextRange,
    query: Option<TextRange>,
    headers: Vec<(TextRange, TextRange)>,
}

impl HttpExchange {
    fn with_capacity(text: usize, headers: usize) -> Self {
        Self { text: String::with_capacity(text), headers: Vec::with_capacity(headers), ..Self::default() }
    }

    fn push_text(&mut self, s: &str) -> TextRange {
        let start = self.text.len();
        self.text.push_str(s);
        TextRange { start: to_u32(start), end: to_u32(self.text.len()) }
    }

    /// Adds a request header (name lower-cased, value trimmed and cut); counts
    /// it in `headers_dropped` beyond the cap. `block` is the whole header
    /// block as text when it is valid UTF-8 (the common case), which saves
    /// validating each value again.
    fn push_header(&mut self, name: &str, value: &[u8], block: Option<(&str, usize)>) {
        if self.headers.len() >= MAX_KEPT_HEADERS {
            self.headers_dropped = self.headers_dropped.saturating_add(1);
            return;
        }
        let name = self.push_text(name);
        if let Some(n) = self.text.get_mut(name.start as usize..name.end as usize) {
            n.make_ascii_lowercase();
        }
        let value = cut_value(value);
        let start = self.text.len();
        match block.and_then(|b| subslice_str(b, value)) {
            Some(v) => self.text.push_str(v),
            None => self.text.push_str(&String::from_utf8_lossy(value)),
        }
        let value = TextRange { start: to_u32(start), end: to_u32(self.text.len()) };
        self.headers.push((name, value));
    }

    /// A request built from HTTP/2 header fields: pseudo-header fields set
    /// the method and target (`:authority` becomes `host` unless a `host`
    /// field is also sent), other fields are kept like HTTP/1.x headers.
    pub(crate) fn from_h2_fields<'a>(fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) -> Self {
        let mut ex = Self::with_capacity(256, 8);
        ex.version = Version::Http2;
        let mut authority = None;
        let mut has_host = false;
        for (name, value) in fields {
            match name {
                b":method" => {
                    ex.method = Method::from_token(value);
                    if ex.method == Method::Other {
                        ex.method_original = Some(ex.push_text(&String::from_utf8_lossy(cut_value(value))));
                    }
                }
                b":path" => {
                    let target = String::from_utf8_lossy(cut_value(value));
                    let (path, query) = head::split_target(&target);
                    ex.path = ex.push_text(path);
                    ex.query = query.map(|q| ex.push_text(q));
                }
                b":authority" => authority = Some(value),
                // Pseudo-headers not used, and fields unknown on a connection
                // joined mid-stream (`hpack::UNKNOWN`, an empty name).
                _ if name.starts_with(b":") || name.is_empty() => {}
                _ => {
                    has_host |= name == b"host";
                    ex.push_header(&String::from_utf8_lossy(name), value, None);
                }
            }
        }
        if let Some(a) = authority.filter(|_| !has_host) {
            ex.push_header("host", a, None);
        }
        ex
    }

    fn get(&self, r: TextRange) -> &str {
        self.text.get(r.start as usize..r.end as usize).unwrap_or("")
    }

    /// The method token as sent when it is not a known method.
    pub fn method_original(&self) -> Option<&str> {
        self.method_original.map(|r| self.get(r))
    }

    /// The path of the request target (origin form; scheme and authority of
    /// an absolute-form target removed), without the query.
    pub fn path(&self) -> &str {
        self.get(self.path)
    }

    /// The raw query string (after `?`), if the target had one.
    pub fn query(&self) -> Option<&str> {
        self.query.map(|r| self.get(r))
    }

    /// Kept request headers in order: (lower-case name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.headers.iter().map(|(n, v)| (self.get(*n), self.get(*v)))
    }

    /// First value of a request header; `name` must be lower-case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

fn to_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// `part` (a subslice of the block whose text and start address are given)
/// as text, if it starts and ends on character boundaries.
fn subslice_str<'a>((text, base): (&'a str, usize), part: &[u8]) -> Option<&'a str> {
    let start = (part.as_ptr() as usize).checked_sub(base)?;
    text.get(start..start.checked_add(part.len())?)
}

/// Trims optional whitespace and cuts a header value to [`MAX_HEADER_VALUE`].
fn cut_value(v: &[u8]) -> &[u8] {
    let v = v.trim_ascii();
    v.get(..MAX_HEADER_VALUE).unwrap_or(v)
}

/// Whether `data` starts like a request line: `Yes` for a known method and a
/// space, `Partial` when `data` is a strict prefix of one.
fn request_line_start(data: &[u8]) -> Prefix {
    let mut partial = false;
    for (_, m) in Method::KNOWN {
        match data.get(..m.len()) {
            Some(tok) if tok == m => match data.get(m.len()) {
                Some(b' ') => return Prefix::Yes,
                Some(_) => {}
                None => partial = true,
            },
            Some(_) => {}
            None => partial |= m.starts_with(data),
        }
    }
    if partial { Prefix::Partial } else { Prefix::No }
}

/// Whether `data` starts like a status line (`HTTP/1.0 ` or `HTTP/1.1 `).
fn status_line_start(data: &[u8]) -> Prefix {
    const A: &[u8] = b"HTTP/1.0 ";
    const B: &[u8] = b"HTTP/1.1 ";
    match data.get(..A.len()) {
        Some(p) if p == A || p == B => Prefix::Yes,
        Some(_) => Prefix::No,
        None if A.starts_with(data) || B.starts_with(data) => Prefix::Partial,
        None => Prefix::No,
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Prefix {
    Yes,
    Partial,
    No,
}

/// Sniffs the first bytes seen in one direction of a connection.
///
/// A request line read by the process means it is the server; written, the
/// client. A status line is the other way round.
pub fn detect(dir: Direction, data: &[u8]) -> Detection {
    if data.is_empty() {
        return Detection::NeedMore;
    }
    let (req_role, resp_role) = match dir {
        Direction::Ingress => (Role::Server, Role::Client),
        Direction::Egress => (Role::Client, Role::Server),
    };
    match (request_line_start(data), status_line_start(data)) {
        (Prefix::Yes, _) => Detection::Yes(req_role),
        (_, Prefix::Yes) => Detection::Yes(resp_role),
        (Prefix::Partial, _) | (_, Prefix::Partial) => Detection::NeedMore,
        (Prefix::No, Prefix::No) => Detection::No,
    }
}

#[cfg(test)]
mod tests;
