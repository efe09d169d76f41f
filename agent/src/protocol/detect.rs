//! Content-based protocol detection across all parsers (never by port).
//!
//! Guarantees: a connection is assigned at most one protocol, from the first
//! bytes of either direction; while undecided its chunks are held (bounded:
//! [`MAX_PENDING_CHUNKS`], [`MAX_PENDING_BYTES`]) and replayed into the parser
//! once decided; when both directions rule every protocol out, or the bounds
//! are hit, the connection is opaque.

use super::{Chunk, Detection, Direction, Protocol, Role};

/// Bytes of each direction kept for sniffing.
pub const SNIFF_BYTES: usize = 64;
/// Chunks held while undecided.
pub const MAX_PENDING_CHUNKS: usize = 8;
/// Payload bytes held while undecided.
pub const MAX_PENDING_BYTES: usize = 32 * 1024;

/// A chunk held while detection is undecided.
pub struct PendingChunk {
    pub dir: Direction,
    pub ts_ns: u64,
    pub tid: u32,
    pub data: Vec<u8>,
    pub len: usize,
}

impl PendingChunk {
    pub fn as_chunk(&self) -> Chunk<'_> {
        Chunk { dir: self.dir, ts_ns: self.ts_ns, tid: self.tid, data: &self.data, len: self.len }
    }
}

/// Outcome of offering a chunk to the detector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Undecided,
    Opaque,
    Detected(Protocol, Role),
}

/// Per-connection detection state.
#[derive(Default)]
pub struct Detector {
    sniff: [Vec<u8>; 2],
    ruled_out: [bool; 2],
    pending: Vec<PendingChunk>,
    pending_bytes: usize,
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
                Verdict::Opaque => self.ruled_out[d] = true,
                Verdict::Undecided if complete => self.ruled_out[d] = true,
                Verdict::Undecided => {}
            }
        }
        if self.ruled_out[0] && self.ruled_out[1] {
            return Verdict::Opaque;
        }
        if self.pending.len() >= MAX_PENDING_CHUNKS || self.pending_bytes + chunk.data.len() > MAX_PENDING_BYTES {
            return Verdict::Opaque;
        }
        self.pending_bytes += chunk.data.len();
        self.pending.push(PendingChunk {
            dir: chunk.dir,
            ts_ns: chunk.ts_ns,
            tid: chunk.tid,
            data: chunk.data.to_vec(),
            len: chunk.len,
        });
        Verdict::Undecided
    }

    /// Chunks held while undecided, oldest first.
    pub fn pending(&self) -> impl Iterator<Item = &PendingChunk> {
        self.pending.iter()
    }
}
