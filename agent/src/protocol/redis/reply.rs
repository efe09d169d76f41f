//! Incremental decoder of the reply direction: every RESP2 and RESP3 type,
//! aggregates nested with an explicit stack (depth cap [`MAX_DEPTH`]).
//!
//! Guarantees:
//! - Byte-for-byte the same replies whatever the chunking.
//! - Nothing is buffered per reply beyond a small summary: the top-level
//!   type, an error text (256 bytes), the first 16 bytes of a simple string
//!   or of an aggregate's first element (to recognise Pub/Sub traffic), and
//!   the last integer among an aggregate's direct children.
//! - Bulk payloads are skipped by length, captured or not.
//! - Attributes (`|`) are consumed and never reported as replies; pushes
//!   (`>`) are reported with kind [`ReplyKind::Push`].
//! - Malformed input reports [`ReplyEvent::Malformed`] and ignores bytes
//!   until a chunk starts with a RESP type byte; uncaptured bytes that are
//!   not inside a bulk payload report [`ReplyEvent::Lost`].

use super::line::{LineBuf, LineStep, bulk_crlf, parse_i64, quick_len};
use super::{MAX_DEPTH, MAX_RESP_LEN, ReplyKind, RespError};
use crate::protocol::Chunk;

/// Longest length header line accepted.
const MAX_HEADER: usize = 24;
/// Longest simple line (`+`, `-`, `:` ...) accepted.
const MAX_LINE: usize = 1024 * 1024;
/// Bytes of an error text kept.
const ERROR_KEEP: usize = 256;
/// Bytes of a reply's leading text kept.
const TEXT_KEEP: usize = 16;

/// Summary of one top-level reply.
#[derive(Clone, Debug, Default)]
pub(super) struct ReplyInfo {
    pub kind: ReplyKind,
    /// Time of the chunk holding the reply's first byte (attributes included).
    pub start_ts: u64,
    /// Time of the chunk holding its last byte.
    pub end_ts: u64,
    text: [u8; TEXT_KEEP],
    text_len: u8,
    /// Last integer among the direct children of a top-level aggregate.
    pub last_int: Option<i64>,
    pub error: Option<Box<str>>,
    pub truncated: bool,
    /// Direct children of a top-level aggregate completed so far.
    children: u64,
}

impl ReplyInfo {
    /// Leading bytes of a top-level simple string, or of a top-level
    /// aggregate's first element when it is a string.
    pub fn text(&self) -> &[u8] {
        self.text.get(..self.text_len as usize).unwrap_or(&[])
    }

    fn push_text(&mut self, bytes: &[u8]) {
        for &b in bytes {
            let Some(slot) = self.text.get_mut(self.text_len as usize) else {
                return;
            };
            *slot = b;
            self.text_len += 1;
        }
    }
}

/// What the decoder reports to the pairing logic.
#[derive(Debug)]
pub(super) enum ReplyEvent {
    Reply(ReplyInfo),
    /// Bytes were not RESP.
    Malformed,
    /// Uncaptured bytes broke framing; `partial`: the reply that had started.
    Lost {
        partial: Option<ReplyInfo>,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Expecting a type byte.
    Type,
    /// Reading the line after a type byte.
    Line { ty: u8 },
    /// Payload bytes left, plus 2 for the CRLF.
    Body { remaining: u64, ty: u8 },
    /// Ignoring bytes until a chunk starts with a type byte.
    Resync,
}

/// An open aggregate: children still expected.
#[derive(Clone, Copy, Debug, Default)]
struct Frame {
    remaining: u32,
    /// An attribute: its completion is not a value of the parent.
    attr: bool,
}

/// Where the value being parsed sits.
#[derive(Clone, Copy)]
struct At {
    top: bool,
    first_child: bool,
    direct_child: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Keep {
    Nothing,
    Text,
    Error,
}

/// Decoder of one connection's reply direction.
pub(super) struct ReplyDecoder {
    state: State,
    line: LineBuf<ERROR_KEEP>,
    stack: [Frame; MAX_DEPTH],
    depth: usize,
    /// Attribute frames on the stack.
    attrs: usize,
    cur: ReplyInfo,
    /// A top-level reply has started.
    in_value: bool,
    keep: Keep,
    /// Bulk error payload (allocated only for `!` replies).
    kept: Vec<u8>,
}

impl Default for ReplyDecoder {
    fn default() -> Self {
        Self {
            state: State::Type,
            line: LineBuf::default(),
            stack: [Frame::default(); MAX_DEPTH],
            depth: 0,
            attrs: 0,
            cur: ReplyInfo::default(),
            in_value: false,
            keep: Keep::Nothing,
            kept: Vec::new(),
        }
    }
}

fn is_type_byte(b: u8) -> bool {
    matches!(b, b'+' | b'-' | b':' | b'$' | b'*' | b'_' | b',' | b'#' | b'(' | b'!' | b'=' | b'%' | b'~' | b'|' | b'>')
}

fn kind_of(ty: u8) -> ReplyKind {
    match ty {
        b'+' => ReplyKind::Simple,
        b'-' => ReplyKind::Error,
        b':' => ReplyKind::Integer,
        b'$' => ReplyKind::Bulk,
        b'*' => ReplyKind::Array,
        b'%' => ReplyKind::Map,
        b'~' => ReplyKind::Set,
        b'#' => ReplyKind::Boolean,
        b',' => ReplyKind::Double,
        b'(' => ReplyKind::BigNumber,
        b'!' => ReplyKind::BulkError,
        b'=' => ReplyKind::Verbatim,
        b'>' => ReplyKind::Push,
        _ => ReplyKind::Null,
    }
}

fn lossy(bytes: &[u8]) -> Box<str> {
    String::from_utf8_lossy(bytes.get(..ERROR_KEEP.min(bytes.len())).unwrap_or(&[])).into()
}

/// Checks a scalar line and records what the summary needs; returns the
/// length of a length header.
fn scalar_line(ty: u8, line: &[u8], at: At, cur: &mut ReplyInfo) -> Result<Option<i64>, RespError> {
    match ty {
        b'$' | b'=' | b'!' | b'*' | b'%' | b'~' | b'>' | b'|' => return parse_i64(line).map(Some),
        b':' => {
            let v = parse_i64(line)?;
            if at.direct_child {
                cur.last_int = Some(v);
            }
        }
        b'#' if line != b"t" && line != b"f" => return Err(RespError::Number),
        b'_' if !line.is_empty() => return Err(RespError::Number),
        b'+' if at.top || at.first_child => cur.push_text(line),
        b'-' if at.top => cur.error = Some(lossy(line)),
        _ => {}
    }
    Ok(None)
}

impl ReplyDecoder {
    /// No reply is in progress: between replies, or waiting for a chunk to
    /// resynchronise on (the next reply will start a chunk).
    pub fn is_idle(&self) -> bool {
        (self.state == State::Type && !self.in_value) || self.state == State::Resync
    }

    pub fn feed(&mut self, chunk: &Chunk<'_>, sink: &mut impl FnMut(ReplyEvent)) {
        let data = chunk.data;
        if self.state == State::Resync {
            match data.first() {
                Some(&b) if is_type_byte(b) => self.state = State::Type,
                _ => return,
            }
        }
        let mut pos = 0;
        while pos < data.len() {
            if self.step(chunk, &mut pos, sink).is_err() {
                self.enter_resync();
                sink(ReplyEvent::Malformed);
                return;
            }
        }
        let (gap, tail) = chunk.gap_and_tail();
        if gap > 0 {
            self.skip_missing(gap as u64, chunk.ts_ns, sink);
        }
        // The call's last bytes, past the gap: read in place when the gap
        // ended inside a bulk string (the replies after a large value).
        if !tail.is_empty() && self.state != State::Resync {
            self.feed(&chunk.tail_chunk(), sink);
        }
    }

    fn enter_resync(&mut self) {
        self.depth = 0;
        self.attrs = 0;
        self.in_value = false;
        self.line.reset();
        self.keep = Keep::Nothing;
        self.kept.clear();
        self.cur = ReplyInfo::default();
        self.state = State::Resync;
    }

    fn position(&self) -> At {
        let top = self.depth == 0;
        let direct_child = self.depth == 1 && self.attrs == 0;
        At { top, first_child: direct_child && self.cur.children == 0, direct_child }
    }

    fn step(&mut self, chunk: &Chunk<'_>, pos: &mut usize, sink: &mut impl FnMut(ReplyEvent)) -> Result<(), RespError> {
        let data = chunk.data;
        match self.state {
            State::Type => {
                let Some(&b) = data.get(*pos) else {
                    return Ok(());
                };
                if !is_type_byte(b) {
                    return Err(RespError::TypeByte(b));
                }
                if !self.in_value {
                    self.in_value = true;
                    self.cur = ReplyInfo { start_ts: chunk.ts_ns, ..ReplyInfo::default() };
                }
                *pos += 1;
                self.state = State::Line { ty: b };
            }
            State::Line { ty } => {
                let at = self.position();
                let header = matches!(ty, b'$' | b'=' | b'!' | b'*' | b'%' | b'~' | b'>' | b'|');
                if header
                    && self.line.is_empty()
                    && let Some((n, used)) = quick_len(data, *pos)
                {
                    // A whole `<digits>\r\n` header: no line to assemble.
                    *pos += used;
                    return self.on_line(ty, Some(n), at, chunk.ts_ns, sink);
                }
                let max = if header { MAX_HEADER } else { MAX_LINE };
                let len = match self.line.take(data, pos, max) {
                    LineStep::More => return Ok(()),
                    LineStep::TooLong => return Err(RespError::LineTooLong),
                    LineStep::Done(line) => scalar_line(ty, line, at, &mut self.cur)?,
                };
                self.on_line(ty, len, at, chunk.ts_ns, sink)?;
            }
            State::Body { remaining, ty } => {
                let rest = data.get(*pos..).unwrap_or(&[]);
                let take = remaining.min(rest.len() as u64) as usize;
                let payload = take.min(remaining.saturating_sub(2) as usize);
                let bytes = rest.get(..payload).unwrap_or(&[]);
                match self.keep {
                    Keep::Text => self.cur.push_text(bytes),
                    Keep::Error => {
                        let room = ERROR_KEEP.saturating_sub(self.kept.len());
                        self.kept.extend_from_slice(bytes.get(..room.min(bytes.len())).unwrap_or(&[]));
                    }
                    Keep::Nothing => {}
                }
                let left = bulk_crlf(rest.get(payload..take).unwrap_or(&[]), remaining - payload as u64)?;
                *pos += take;
                if left == 0 {
                    self.finish_body(chunk.ts_ns, sink);
                } else {
                    self.state = State::Body { remaining: left, ty };
                }
            }
            State::Resync => *pos = data.len(),
        }
        Ok(())
    }

    /// Acts on a complete line (`len` is the length of a length header).
    fn on_line(
        &mut self,
        ty: u8,
        len: Option<i64>,
        at: At,
        ts: u64,
        sink: &mut impl FnMut(ReplyEvent),
    ) -> Result<(), RespError> {
        let Some(n) = len else {
            if at.top {
                self.cur.kind = kind_of(ty);
            }
            self.complete(ts, sink);
            return Ok(());
        };
        if n == -1 && matches!(ty, b'$' | b'*') {
            if at.top {
                self.cur.kind = ReplyKind::Null;
            }
            self.complete(ts, sink);
            return Ok(());
        }
        if !(0..=MAX_RESP_LEN).contains(&n) {
            return Err(RespError::Length(n));
        }
        match ty {
            b'$' | b'=' | b'!' => {
                if at.top {
                    self.cur.kind = kind_of(ty);
                }
                self.keep = match ty {
                    b'!' if at.top => Keep::Error,
                    b'$' if at.first_child => Keep::Text,
                    _ => Keep::Nothing,
                };
                self.state = State::Body { remaining: n as u64 + 2, ty };
            }
            _ => {
                let count = if matches!(ty, b'%' | b'|') { n * 2 } else { n };
                let count = u32::try_from(count).map_err(|_| RespError::Length(n))?;
                let attr = ty == b'|';
                if !attr && at.top {
                    self.cur.kind = kind_of(ty);
                }
                if count == 0 {
                    self.state = State::Type;
                    if !attr {
                        self.complete(ts, sink);
                    }
                    return Ok(());
                }
                let slot = self.stack.get_mut(self.depth).ok_or(RespError::TooDeep)?;
                *slot = Frame { remaining: count, attr };
                self.depth += 1;
                self.attrs += usize::from(attr);
                self.state = State::Type;
            }
        }
        Ok(())
    }

    fn finish_body(&mut self, ts: u64, sink: &mut impl FnMut(ReplyEvent)) {
        if self.keep == Keep::Error {
            self.cur.error = Some(lossy(&self.kept));
            self.kept.clear();
        }
        self.keep = Keep::Nothing;
        self.complete(ts, sink);
    }

    /// A value ended: pops finished aggregates and reports a finished reply.
    fn complete(&mut self, ts: u64, sink: &mut impl FnMut(ReplyEvent)) {
        self.state = State::Type;
        loop {
            let Some(i) = self.depth.checked_sub(1) else {
                self.cur.end_ts = ts;
                self.in_value = false;
                sink(ReplyEvent::Reply(std::mem::take(&mut self.cur)));
                return;
            };
            let Some(top) = self.stack.get_mut(i) else {
                return;
            };
            if i == 0 && !top.attr {
                self.cur.children += 1;
            }
            top.remaining = top.remaining.saturating_sub(1);
            if top.remaining > 0 {
                return;
            }
            let attr = top.attr;
            self.depth = i;
            if attr {
                // An attribute annotates the value that follows it.
                self.attrs -= 1;
                return;
            }
        }
    }

    /// `n` bytes after the captured data were not captured.
    fn skip_missing(&mut self, mut n: u64, ts: u64, sink: &mut impl FnMut(ReplyEvent)) {
        if let State::Body { remaining, ty } = self.state {
            let take = n.min(remaining);
            n -= take;
            self.cur.truncated = true;
            if take == remaining {
                self.finish_body(ts, sink);
            } else {
                self.state = State::Body { remaining: remaining - take, ty };
            }
        }
        if n == 0 || self.state == State::Resync {
            return;
        }
        let partial = self.in_value.then(|| {
            let mut c = std::mem::take(&mut self.cur);
            c.truncated = true;
            c.end_ts = ts;
            c
        });
        self.enter_resync();
        sink(ReplyEvent::Lost { partial });
    }
}

#[cfg(test)]
#[path = "reply_tests.rs"]
mod tests;
