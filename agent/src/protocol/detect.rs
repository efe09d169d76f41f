//! Content-based protocol detection across all parsers (never by port).
//!
//! Guarantees: a connection is assigned at most one protocol, from the first
//! bytes of either direction; while undecided its chunks are held (bounded:
//! [`MAX_PENDING_CHUNKS`], [`MAX_PENDING_BYTES`]) and replayed into the parser
//! once decided; when both directions rule every protocol out, or the bounds
//! are hit, the connection is opaque.
//!
//! Except HTTP/2 taken up mid-stream ([`Verdict::Joined`], a connection
//! opened before kspan started): any read or write may show it
//! ([`http2::detect_joined`](super::http2::detect_joined)), and its parser
//! is given the held chunks too (a request whose HEADERS did not tell the
//! role still pairs with the response that did). While chunks keep looking
//! like HTTP/2 frames that do not tell the role yet, the connection stays
//! undecided, at most [`MAX_JOIN_WAIT`] chunks; when the held chunks would
//! overflow their bounds they are dropped and a new run is held, so the
//! held chunks always run without a gap up to the deciding one.

use super::{Chunk, Detection, Direction, Protocol, Role, StreamReport};

/// Bytes of each direction kept for sniffing.
pub const SNIFF_BYTES: usize = 64;
/// Chunks held while undecided.
pub const MAX_PENDING_CHUNKS: usize = 8;
/// Payload bytes held while undecided.
pub const MAX_PENDING_BYTES: usize = 32 * 1024;
/// Go HTTP/2 stream-handler reports held while undecided.
pub const MAX_HELD_STREAMS: usize = 16;
/// Chunks a connection that looked like HTTP/2 frames mid-stream may wait
/// for one that tells its role (a request or response HEADERS frame), once
/// no other protocol is left.
pub const MAX_JOIN_WAIT: u32 = 256;

/// A chunk held while detection is undecided.
pub struct PendingChunk {
    pub dir: Direction,
    pub ts_ns: u64,
    pub tid: u32,
    pub data: Vec<u8>,
    pub len: usize,
    pub tail: Vec<u8>,
}

impl PendingChunk {
    pub fn as_chunk(&self) -> Chunk<'_> {
        Chunk { dir: self.dir, ts_ns: self.ts_ns, tid: self.tid, data: &self.data, len: self.len, tail: &self.tail }
    }
}

/// Outcome of offering a chunk to the detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Undecided,
    Opaque,
    Detected(Protocol, Role),
    /// HTTP/2 taken up mid-stream at this chunk: its parser is given the
    /// held chunks (a gapless run before this one), then this one, and
    /// follows each direction from its first chunk at a frame boundary.
    Joined(Role),
}

/// Per-connection detection state.
#[derive(Default)]
pub struct Detector {
    sniff: [Vec<u8>; 2],
    ruled_out: [bool; 2],
    pending: Vec<PendingChunk>,
    pending_bytes: usize,
    /// A chunk was HTTP/2 frames from its first byte.
    h2_seen: bool,
    /// Chunks seen while only HTTP/2 mid-stream was left.
    waited: u32,
    /// Go HTTP/2 stream reports (a server's handler, a grpc-go client's
    /// caller) that came while undecided (a joined connection's request
    /// may still be held).
    streams: Vec<StreamReport>,
}

fn detect_one(p: Protocol, dir: Direction, data: &[u8]) -> Detection {
    match p {
        Protocol::Http => super::http::detect(dir, data),
        Protocol::Http2 => super::http2::detect(dir, data),
        Protocol::Postgres => super::postgres::detect(dir, data),
        Protocol::Redis => super::redis::detect(dir, data),
    }
}

/// Sniffs `data` (the first bytes of one direction) against every protocol.
pub fn sniff(dir: Direction, data: &[u8]) -> Verdict {
    let mut need_more = false;
    for p in Protocol::ALL {
        match detect_one(p, dir, data) {
            Detection::Yes(role) => return Verdict::Detected(p, role),
            Detection::NeedMore => need_more = true,
            Detection::No => {}
        }
    }
    if need_more { Verdict::Undecided } else { Verdict::Opaque }
}

impl Detector {
    /// Offers the next chunk; on `Detected`, the caller replays [`Self::pending`]
    /// and then this chunk into the new parser.
    pub fn offer(&mut self, chunk: &Chunk<'_>, _known_role: Option<Role>) -> Verdict {
        let d = chunk.dir.index();
        if !self.ruled_out[d] {
            let buf = &mut self.sniff[d];
            let take = SNIFF_BYTES.saturating_sub(buf.len()).min(chunk.data.len());
            buf.extend_from_slice(&chunk.data[..take]);
            let complete = buf.len() >= SNIFF_BYTES || chunk.missing() > 0;
            match sniff(chunk.dir, buf) {
                Verdict::Detected(p, r) => return Verdict::Detected(p, r),
                // (`sniff` never gives `Joined`.)
                Verdict::Opaque | Verdict::Joined(_) => self.ruled_out[d] = true,
                Verdict::Undecided if complete => self.ruled_out[d] = true,
                Verdict::Undecided => {}
            }
        }
        match super::http2::detect_joined(chunk.dir, chunk.data, chunk.len) {
            Detection::Yes(role) => return Verdict::Joined(role),
            Detection::NeedMore => self.h2_seen = true,
            Detection::No => {}
        }
        let full =
            self.pending.len() >= MAX_PENDING_CHUNKS || self.pending_bytes + chunk.data.len() > MAX_PENDING_BYTES;
        if self.ruled_out[0] && self.ruled_out[1] {
            // Only HTTP/2 mid-stream is left.
            self.waited += 1;
            if !self.h2_seen || self.waited > MAX_JOIN_WAIT {
                return Verdict::Opaque;
            }
            // The held chunks must run without a gap up to the one that
            // decides: when they would overflow, a new run starts here.
            if full {
                self.pending.clear();
                self.pending_bytes = 0;
            }
        } else if full {
            return Verdict::Opaque;
        }
        self.pending_bytes += chunk.data.len() + chunk.tail.len();
        self.pending.push(PendingChunk {
            dir: chunk.dir,
            ts_ns: chunk.ts_ns,
            tid: chunk.tid,
            data: chunk.data.to_vec(),
            len: chunk.len,
            tail: chunk.tail.to_vec(),
        });
        Verdict::Undecided
    }

    /// Chunks held while undecided, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &PendingChunk> {
        self.pending.iter()
    }

    /// Holds a Go HTTP/2 stream report (a server's handler, a client's
    /// caller) until the parser exists (false when [`MAX_HELD_STREAMS`]
    /// are held: not held).
    pub fn hold_stream(&mut self, report: StreamReport) -> bool {
        let room = self.streams.len() < MAX_HELD_STREAMS;
        if room {
            self.streams.push(report);
        }
        room
    }

    /// Reports held by [`Self::hold_stream`], oldest first.
    pub fn held_streams(&self) -> impl Iterator<Item = StreamReport> + '_ {
        self.streams.iter().copied()
    }
}
