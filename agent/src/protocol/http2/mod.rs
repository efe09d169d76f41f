//! HTTP/2 (RFC 9113) and gRPC over it: detection, frame and HPACK decoding,
//! and per-stream pairing of requests and responses into
//! [`HttpExchange`](crate::protocol::http::HttpExchange)s
//! (the HTTP/1.x record, with
//! [`Version::Http2`](crate::protocol::http::Version::Http2), so spans, routes, privacy
//! and trace context work the same; gRPC calls are named by
//! [`crate::protocol::http::describe`]).
//!
//! Guarantees:
//! - [`detect`] needs the client connection preface, so only connections
//!   seen from their first byte are parsed: HPACK's dynamic table cannot be
//!   rebuilt mid-stream (a connection opened before kspan started, or with
//!   prior knowledge unseen, stays opaque).
//! - Streams are paired by stream id, so concurrent and interleaved streams
//!   on one connection each give their own exchange, in the order they end.
//! - Header blocks are decoded by kspan's own HPACK decoder ([`hpack`]),
//!   checked against loona-hpack in the tests and the fuzz target.
//! - Bounded: 256 open streams per connection, 64 KiB per header block and
//!   per kept frame, a 64 KiB HPACK table per direction. Overflow of the
//!   stream table drops (and counts) the new stream; anything that would put
//!   the HPACK decoders out of step (a header block that was not captured,
//!   a bad HPACK block, an over-long block) ends parsing of the connection:
//!   counted once (`truncated` or `malformed`), with its open streams counted
//!   as dropped. Bytes not captured inside DATA and other skipped frames are
//!   skipped by length and lose nothing.

mod frame;
pub mod hpack;
mod parse;

pub use frame::encode as encode_frame;
pub use parse::Http2Parser;

use super::{Detection, Direction, Role};

/// The client connection preface (RFC 9113 section 3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Open streams tracked per connection.
pub const MAX_STREAMS: usize = 256;
/// Largest header block (all its frames) or kept frame payload.
pub const MAX_BLOCK: usize = 64 * 1024;
/// Largest HPACK dynamic table kspan keeps per direction.
pub const MAX_TABLE: usize = 64 * 1024;

/// Sniffs the first bytes of one direction: the preface written means the
/// traced process is the client, read means it is the server.
pub fn detect(dir: Direction, data: &[u8]) -> Detection {
    let n = data.len().min(PREFACE.len());
    if n == 0 {
        return Detection::NeedMore;
    }
    if data[..n] != PREFACE[..n] {
        return Detection::No;
    }
    if n < PREFACE.len() {
        return Detection::NeedMore;
    }
    Detection::Yes(match dir {
        Direction::Egress => Role::Client,
        Direction::Ingress => Role::Server,
    })
}

#[cfg(test)]
mod tests;
