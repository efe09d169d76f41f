//! Message framing for one direction of a PostgreSQL v3 connection.
//!
//! Guarantees:
//! - Byte-driven: the same stream yields the same frames however it is cut
//!   into chunks (every decision depends only on stream bytes).
//! - Bounded: a body is buffered only for message types whose content the
//!   session needs, and only up to [`MAX_BODY_KEEP`] bytes; other bodies
//!   (DataRow, CopyData, passwords...) are skipped by length, never stored.
//! - A bad header (unknown type, length < 4 or > [`MAX_MSG_LEN`]) or bytes lost
//!   at a message boundary make the framer resynchronise on an anchor message
//!   (backend: `CommandComplete` or `ReadyForQuery`; frontend: `Query`,
//!   `Sync` or `CopyDone`); after [`MAX_SCAN`] captured bytes without one it
//!   gives the direction up (opaque). Bytes searched after a bad header
//!   count as malformed; after a capture gap (bytes not captured: valid
//!   traffic, too large for the capture) they do not, and the search limit
//!   starts again at each gap.
//! - Uncaptured bytes inside a body are skipped by length without losing sync.
//! - A chunk's tail (its last bytes, captured past a gap: `Chunk::tail`) is
//!   read where it lies: in sync if the gap ended inside a body, else
//!   searched for an anchor. A large response's CommandComplete and
//!   ReadyForQuery end the server's last write of it, so they are read
//!   there whatever the capture size.

use crate::protocol::ParseStats;

/// Largest body kept for a message whose content is needed.
pub(super) const MAX_BODY_KEEP: usize = 64 * 1024;
/// Largest message length accepted (PostgreSQL's own limit is 1 GiB).
pub(super) const MAX_MSG_LEN: usize = 1 << 30;
/// Largest untyped startup-phase message (the server refuses > 10000).
pub(super) const MAX_STARTUP_LEN: usize = 10_000;
/// Captured bytes searched for an anchor before giving a direction up.
pub(super) const MAX_SCAN: usize = 4 << 20;
/// Largest message accepted as the first one seen in a direction (a stream
/// joined mid-way): a stricter bound makes a mid-message start fail fast.
const MAX_FIRST_MSG_LEN: usize = 1 << 20;
/// Largest `Query` accepted as a resync anchor.
const MAX_ANCHOR_QUERY: usize = MAX_BODY_KEEP;
/// Largest `CommandComplete` accepted as a resync anchor (its tag, such as
/// `INSERT 0 1000000`, is short).
const MAX_ANCHOR_TAG: usize = 64;

/// Pseudo type of an untyped startup-phase message (StartupMessage,
/// SSLRequest, GSSENCRequest, CancelRequest); its body starts with the code.
pub(super) const STARTUP: u8 = 0;
/// Pseudo type of the one-byte answer to SSLRequest/GSSENCRequest.
pub(super) const SSL_REPLY: u8 = 1;

/// Message type bytes each side may send, as lookup tables.
const FRONTEND_TYPES: [bool; 256] = type_table(b"QPBEDCSHXFdcfp");
const BACKEND_TYPES: [bool; 256] = type_table(b"RSKZTDCEINn123stAGHWdcVv");

const fn type_table(types: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut i = 0;
    while i < types.len() {
        t[types[i] as usize] = true;
        i += 1;
    }
    t
}

/// Which end's messages a framer reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Frontend,
    Backend,
}

impl Side {
    fn known_type(self, ty: u8) -> bool {
        match self {
            Side::Frontend => FRONTEND_TYPES[usize::from(ty)],
            Side::Backend => BACKEND_TYPES[usize::from(ty)],
        }
    }

    /// Where the next byte that may start an anchor message is in `rest`.
    fn next_anchor_type(self, rest: &[u8]) -> Option<usize> {
        match self {
            Side::Backend => memchr::memchr2(b'Z', b'C', rest),
            Side::Frontend => memchr::memchr3(b'Q', b'S', b'c', rest),
        }
    }

    /// Types whose body the session reads; all others are skipped by length.
    fn keeps_body(self, ty: u8) -> bool {
        match self {
            Side::Frontend => matches!(ty, STARTUP | b'Q' | b'P' | b'B' | b'E' | b'C'),
            Side::Backend => matches!(ty, b'C' | b'E' | b'Z'),
        }
    }
}

/// The rest of one captured chunk, consumed by [`Framer::next`].
pub(super) struct Input<'c> {
    pub data: &'c [u8],
    pub pos: usize,
    /// Uncaptured bytes that follow `data`, `tail` included.
    pub missing: usize,
    /// The last `tail.len()` of the `missing` bytes, captured after all.
    pub tail: &'c [u8],
    pub ts: u64,
    pub tid: u32,
}

/// One complete message.
#[derive(Debug)]
pub(super) struct Frame<'a> {
    pub ty: u8,
    /// Captured body prefix (empty for types whose body is not kept).
    pub body: &'a [u8],
    /// The body is whole: nothing lost to capture limits or the keep cap.
    pub complete: bool,
    /// Chunk holding the first byte.
    pub start_ts: u64,
    pub tid: u32,
    /// Chunk holding the last byte.
    pub end_ts: u64,
}

/// What [`Framer::next`] produced.
#[derive(Debug)]
pub(super) enum Event<'a> {
    Msg(Frame<'a>),
    /// Position lost: messages (and their responses) may have been missed.
    Lost,
}

#[derive(Clone, Copy, Debug)]
enum State {
    Header,
    Body {
        ty: u8,
        remaining: usize,
        keep: bool,
        lost: bool,
        capped: bool,
    },
    /// Searching for an anchor; `cand` bytes of a candidate collected so far.
    Scan {
        cand: usize,
        remaining: usize,
    },
    Opaque,
}

/// Framing state of one direction.
pub(super) struct Framer {
    side: Side,
    state: State,
    hdr: [u8; 5],
    hdr_len: usize,
    buf: Vec<u8>,
    start: (u64, u32),
    scanned: usize,
    /// The search for an anchor follows a capture gap, not a bad header.
    gap_scan: bool,
    /// Where in the current input the open anchor candidate began (None if
    /// in an earlier one): a failed candidate is searched again from there.
    cand_pos: Option<usize>,
    /// No message has been framed yet in this direction.
    first: bool,
    /// Frontend: the next message may be an untyped startup-phase message.
    pub startup_phase: bool,
    /// Backend: a one-byte SSL/GSS answer is due.
    pub expect_ssl_reply: bool,
}

impl Framer {
    pub fn new(side: Side) -> Self {
        Self {
            side,
            state: State::Header,
            hdr: [0; 5],
            hdr_len: 0,
            buf: Vec::new(),
            start: (0, 0),
            scanned: 0,
            gap_scan: false,
            cand_pos: None,
            first: true,
            startup_phase: side == Side::Frontend,
            expect_ssl_reply: false,
        }
    }

    /// Stops reading this direction (encrypted or unsupported stream).
    pub fn go_opaque(&mut self) {
        self.state = State::Opaque;
        self.buf = Vec::new();
    }

    pub fn is_opaque(&self) -> bool {
        matches!(self.state, State::Opaque)
    }

    /// Next message or sync loss from `inp`; None once `inp` is used up.
    pub fn next(&mut self, inp: &mut Input<'_>, stats: &mut ParseStats) -> Option<Event<'_>> {
        loop {
            let Some(&b) = inp.data.get(inp.pos) else {
                self.cand_pos = None;
                if inp.missing == 0 {
                    return None;
                }
                if inp.missing == inp.tail.len() {
                    // The gap is behind: the call's last bytes follow it.
                    inp.data = std::mem::take(&mut inp.tail);
                    inp.pos = 0;
                    inp.missing = 0;
                    continue;
                }
                match self.skip_missing(inp, stats) {
                    Step::Continue => continue,
                    Step::Frame => return Some(Event::Msg(self.frame(inp.ts, stats))),
                    Step::Lost => return Some(Event::Lost),
                }
            };
            match self.state {
                State::Opaque => {
                    inp.pos = inp.data.len();
                    inp.missing = 0;
                    return None;
                }
                State::Header => {
                    if let Some(done) = self.whole_header(inp) {
                        if done {
                            return Some(Event::Msg(self.frame(inp.ts, stats)));
                        }
                        continue;
                    }
                    inp.pos += 1;
                    if self.header_byte(b, inp) {
                        return Some(Event::Msg(self.frame(inp.ts, stats)));
                    }
                    if matches!(self.state, State::Scan { .. }) {
                        stats.malformed += self.hdr_len as u64;
                        stats.resyncs += 1;
                        self.hdr_len = 0;
                        return Some(Event::Lost);
                    }
                }
                State::Body { ty, remaining, keep, lost, capped } => {
                    let avail = inp.data.len() - inp.pos;
                    let n = remaining.min(avail);
                    let mut capped = capped;
                    if keep && !lost {
                        let room = MAX_BODY_KEEP.saturating_sub(self.buf.len());
                        let take = n.min(room);
                        self.buf.extend_from_slice(inp.data.get(inp.pos..inp.pos + take).unwrap_or_default());
                        capped |= take < n;
                    }
                    inp.pos += n;
                    self.state = State::Body { ty, remaining: remaining - n, keep, lost, capped };
                    if remaining == n {
                        return Some(Event::Msg(self.frame(inp.ts, stats)));
                    }
                }
                State::Scan { cand: 0, .. } if !self.is_anchor_type(b) => {
                    // No candidate open: jump to the next byte that could start one.
                    let rest = inp.data.get(inp.pos..).unwrap_or_default();
                    let skip = self.side.next_anchor_type(rest).unwrap_or(rest.len());
                    inp.pos += skip;
                    if self.scanned_past(skip, stats) {
                        return Some(Event::Lost);
                    }
                }
                State::Scan { .. } => {
                    inp.pos += 1;
                    if self.scan_byte(b, inp, stats) {
                        return Some(Event::Msg(self.frame(inp.ts, stats)));
                    }
                    if self.is_opaque() {
                        return Some(Event::Lost);
                    }
                }
            }
        }
    }

    /// Fast path for the common case: a valid typed header whose five bytes
    /// are all in this chunk is read at once (the same outcome as five calls
    /// of [`Self::header_byte`]). `None` leaves everything else, including
    /// every error, to the byte-wise path; `Some(true)` when the message has
    /// no body.
    fn whole_header(&mut self, inp: &mut Input<'_>) -> Option<bool> {
        if self.hdr_len != 0 || self.expect_ssl_reply {
            return None;
        }
        let &[ty, a, b, c, d] = inp.data.get(inp.pos..inp.pos + 5)? else {
            return None;
        };
        let untyped = self.side == Side::Frontend && self.startup_phase && ty == 0;
        if untyped || !self.side.known_type(ty) {
            return None;
        }
        let len = u32::from_be_bytes([a, b, c, d]) as usize;
        let max = if self.first { MAX_FIRST_MSG_LEN } else { MAX_MSG_LEN };
        if !(4..=max).contains(&len) {
            return None;
        }
        inp.pos += 5;
        self.start = (inp.ts, inp.tid);
        self.buf.clear();
        self.hdr = [ty, a, b, c, d];
        if self.side == Side::Frontend {
            self.startup_phase = false;
        }
        let keep = self.side.keeps_body(ty);
        self.state = State::Body { ty, remaining: len - 4, keep, lost: false, capped: false };
        Some(len == 4)
    }

    /// Handles one header byte at a message boundary; true when a message
    /// without body (or the one-byte SSL answer) is complete.
    fn header_byte(&mut self, b: u8, inp: &Input<'_>) -> bool {
        if self.hdr_len == 0 {
            self.start = (inp.ts, inp.tid);
            self.buf.clear();
            if self.expect_ssl_reply && matches!(b, b'S' | b'N' | b'G') {
                self.expect_ssl_reply = false;
                self.buf.push(b);
                self.state = State::Body { ty: SSL_REPLY, remaining: 0, keep: true, lost: false, capped: false };
                return true;
            }
            self.expect_ssl_reply = false;
        }
        if let Some(slot) = self.hdr.get_mut(self.hdr_len) {
            *slot = b;
        }
        self.hdr_len += 1;
        let untyped = self.side == Side::Frontend && self.startup_phase && self.hdr[0] == 0;
        let (ty, need) = if untyped {
            if self.hdr_len < 4 {
                return false;
            }
            let len = be32(&self.hdr[0..4]);
            if !(8..=MAX_STARTUP_LEN).contains(&len) {
                self.lose_sync(false);
                return false;
            }
            (STARTUP, len - 4)
        } else {
            if self.hdr_len == 1 {
                if !self.side.known_type(b) {
                    self.lose_sync(false);
                }
                return false;
            }
            if self.hdr_len < 5 {
                return false;
            }
            let len = be32(&self.hdr[1..5]);
            let max = if self.first { MAX_FIRST_MSG_LEN } else { MAX_MSG_LEN };
            if !(4..=max).contains(&len) {
                self.lose_sync(false);
                return false;
            }
            (self.hdr[0], len - 4)
        };
        self.hdr_len = 0;
        if self.side == Side::Frontend && ty != STARTUP {
            self.startup_phase = false;
        }
        self.state = State::Body { ty, remaining: need, keep: self.side.keeps_body(ty), lost: false, capped: false };
        need == 0
    }

    /// Starts the search for an anchor: after a capture gap (`gap`) or a
    /// bad header.
    fn lose_sync(&mut self, gap: bool) {
        self.state = State::Scan { cand: 0, remaining: 0 };
        self.scanned = 0;
        self.gap_scan = gap;
    }

    /// Counts `n` bytes searched past without an anchor; true when that
    /// ends the search (the direction is given up).
    fn scanned_past(&mut self, n: usize, stats: &mut ParseStats) -> bool {
        if !self.gap_scan {
            stats.malformed += n as u64;
        }
        self.scanned += n;
        if self.scanned > MAX_SCAN {
            self.go_opaque();
            return true;
        }
        false
    }

    /// Skips the uncaptured bytes after the captured data of a chunk, up
    /// to its tail (if any).
    fn skip_missing(&mut self, inp: &mut Input<'_>, stats: &mut ParseStats) -> Step {
        let gap = inp.missing.saturating_sub(inp.tail.len());
        match self.state {
            State::Body { ty, remaining, keep, lost, capped } => {
                let n = remaining.min(gap);
                inp.missing -= n;
                self.state = State::Body { ty, remaining: remaining - n, keep, lost: lost || n > 0, capped };
                if remaining == n { Step::Frame } else { Step::Continue }
            }
            State::Header => {
                // Valid traffic too large for the capture: not malformed.
                inp.missing -= gap;
                stats.resyncs += 1;
                stats.truncated += 1;
                self.hdr_len = 0;
                self.lose_sync(true);
                Step::Lost
            }
            State::Scan { .. } => {
                inp.missing -= gap;
                self.lose_sync(true);
                Step::Continue
            }
            State::Opaque => {
                inp.missing = 0;
                inp.tail = &[];
                Step::Continue
            }
        }
    }

    /// Feeds one byte to the anchor search; true when an anchor message is complete.
    fn scan_byte(&mut self, b: u8, inp: &mut Input<'_>, stats: &mut ParseStats) -> bool {
        let State::Scan { cand, remaining } = self.state else {
            return false;
        };
        let accepted = match cand {
            0 => self.is_anchor_type(b),
            1..=4 => {
                if let Some(slot) = self.hdr.get_mut(cand) {
                    *slot = b;
                }
                cand < 4 || self.anchor_len_ok()
            }
            _ => self.anchor_body_byte_ok(b, remaining),
        };
        if !accepted {
            self.state = State::Scan { cand: 0, remaining: 0 };
            // A candidate that failed in its length, or a short anchor, is
            // searched again from its second byte when that byte is still in
            // this input: a tag's text or a length can hide the start of the
            // anchor that follows (`...SELECT\0` then `Z`). A Query's text
            // (up to 64 KiB) is not searched twice.
            let short = cand <= 4 || self.hdr[0] != b'Q';
            if let Some(start) = self.cand_pos.take().filter(|_| short && cand > 0) {
                inp.pos = start + 1;
                self.scanned_past(1, stats);
                return false;
            }
            // This byte may still start a new one.
            let past = if self.is_anchor_type(b) {
                self.begin_candidate(b, inp);
                cand
            } else {
                cand + 1
            };
            self.scanned_past(past, stats);
            return false;
        }
        match cand {
            0 => {
                self.begin_candidate(b, inp);
                false
            }
            1..=3 => {
                self.state = State::Scan { cand: cand + 1, remaining: 0 };
                false
            }
            4 => {
                let body = be32(&self.hdr[1..5]) - 4;
                self.state = State::Scan { cand: 5, remaining: body };
                if body == 0 { self.finish_anchor() } else { false }
            }
            _ => {
                self.buf.push(b);
                self.state = State::Scan { cand: cand + 1, remaining: remaining - 1 };
                if remaining == 1 { self.finish_anchor() } else { false }
            }
        }
    }

    fn begin_candidate(&mut self, b: u8, inp: &Input<'_>) {
        self.hdr[0] = b;
        self.cand_pos = inp.pos.checked_sub(1);
        self.start = (inp.ts, inp.tid);
        self.buf.clear();
        self.state = State::Scan { cand: 1, remaining: 0 };
    }

    fn finish_anchor(&mut self) -> bool {
        let ty = self.hdr[0];
        self.cand_pos = None;
        self.state = State::Body { ty, remaining: 0, keep: true, lost: false, capped: false };
        if self.side == Side::Frontend {
            self.startup_phase = false;
        }
        true
    }

    fn is_anchor_type(&self, b: u8) -> bool {
        match self.side {
            Side::Backend => matches!(b, b'Z' | b'C'),
            Side::Frontend => matches!(b, b'Q' | b'S' | b'c'),
        }
    }

    fn anchor_len_ok(&self) -> bool {
        let len = be32(&self.hdr[1..5]);
        match self.hdr[0] {
            b'Z' => len == 5,
            b'C' => (6..=MAX_ANCHOR_TAG + 4).contains(&len),
            b'S' | b'c' => len == 4,
            b'Q' => (6..=MAX_ANCHOR_QUERY + 4).contains(&len),
            _ => false,
        }
    }

    /// Body byte check for anchors: ReadyForQuery's status, a command tag
    /// (an upper-case word, then upper-case words and numbers: `SELECT 3`,
    /// `INSERT 0 1`, `CREATE TABLE`), or a Query's text (no control bytes);
    /// a tag or a text has its NUL exactly at the end.
    fn anchor_body_byte_ok(&self, b: u8, remaining: usize) -> bool {
        match self.hdr[0] {
            b'Z' => matches!(b, b'I' | b'T' | b'E'),
            b'C' if remaining == 1 => b == 0,
            b'C' if self.buf.is_empty() => b.is_ascii_uppercase(),
            b'C' => b.is_ascii_uppercase() || b.is_ascii_digit() || b == b' ',
            b'Q' if remaining == 1 => b == 0,
            b'Q' => b >= 0x20 || matches!(b, b'\t' | b'\n' | b'\r'),
            _ => false,
        }
    }

    /// The finished message; the framer is back at a message boundary.
    fn frame(&mut self, end_ts: u64, stats: &mut ParseStats) -> Frame<'_> {
        let (ty, complete) = match self.state {
            State::Body { ty, keep, lost, capped, .. } => {
                if keep && lost {
                    stats.truncated += 1;
                }
                (ty, !lost && !capped)
            }
            _ => (0, false),
        };
        self.state = State::Header;
        self.hdr_len = 0;
        self.first = false;
        Frame { ty, body: &self.buf, complete, start_ts: self.start.0, tid: self.start.1, end_ts }
    }
}

enum Step {
    Continue,
    Frame,
    Lost,
}

fn be32(b: &[u8]) -> usize {
    match b {
        [a, b, c, d, ..] => u32::from_be_bytes([*a, *b, *c, *d]) as usize,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![ty];
        v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

    /// (type, body, complete) of one frame.
    type Got = (u8, Vec<u8>, bool);

    /// Frames and sync losses from feeding `parts` (data, missing bytes after it).
    fn frames(side: Side, parts: &[(&[u8], usize)]) -> (Vec<Got>, usize, ParseStats) {
        let mut f = Framer::new(side);
        f.startup_phase = false;
        let mut stats = ParseStats::default();
        let (mut out, mut lost) = (Vec::new(), 0);
        for (i, (data, missing)) in parts.iter().enumerate() {
            let mut inp = Input { data, pos: 0, missing: *missing, tail: &[], ts: i as u64, tid: 1 };
            while let Some(ev) = f.next(&mut inp, &mut stats) {
                match ev {
                    Event::Msg(m) => out.push((m.ty, m.body.to_vec(), m.complete)),
                    Event::Lost => lost += 1,
                }
            }
        }
        (out, lost, stats)
    }

    #[test]
    fn frames_split_anywhere_are_identical() {
        let mut stream = msg(b'T', b"rowdesc");
        stream.extend(msg(b'D', b"\0\x01\0\0\0\x01x"));
        stream.extend(msg(b'C', b"SELECT 1\0"));
        stream.extend(msg(b'Z', b"I"));
        let (whole, _, _) = frames(Side::Backend, &[(&stream, 0)]);
        assert_eq!(whole.len(), 4);
        assert_eq!(whole[2], (b'C', b"SELECT 1\0".to_vec(), true));
        assert_eq!(whole[1].1, b"", "DataRow bodies are not kept");
        for at in 0..stream.len() {
            let (a, b) = stream.split_at(at);
            assert_eq!(frames(Side::Backend, &[(a, 0), (b, 0)]).0, whole, "split at {at}");
        }
    }

    #[test]
    fn absurd_and_short_lengths_resync_on_ready_for_query() {
        let mut stream = b"C\xff\xff\xff\xffgarbage".to_vec();
        stream.extend(msg(b'Z', b"I"));
        stream.extend(msg(b'C', b"BEGIN\0"));
        let (out, lost, stats) = frames(Side::Backend, &[(&stream, 0)]);
        assert_eq!(lost, 1);
        assert_eq!(out.iter().map(|m| m.0).collect::<Vec<_>>(), vec![b'Z', b'C']);
        assert_eq!(stats.resyncs, 1);
        assert!(stats.malformed >= 12);
        let (_, lost, _) = frames(Side::Backend, &[(b"C\0\0\0\x02", 0)]);
        assert_eq!(lost, 1, "length < 4 is malformed");
    }

    #[test]
    fn missing_bytes_inside_a_body_keep_sync() {
        let big = msg(b'D', &[7u8; 100]);
        let z = msg(b'Z', b"T");
        // Capture stops 10 bytes into the DataRow; the rest of it is missing.
        let (out, lost, stats) = frames(Side::Backend, &[(&big[..10], big.len() - 10), (&z, 0)]);
        assert_eq!(lost, 0);
        assert_eq!(out.iter().map(|m| m.0).collect::<Vec<_>>(), vec![b'D', b'Z']);
        assert_eq!(stats.truncated, 0, "DataRow content is not needed");
    }

    #[test]
    fn truncated_query_keeps_its_prefix_and_is_counted() {
        let q = msg(b'Q', b"SELECT * FROM t WHERE a = 'xxxxxxxx'\0");
        let (out, lost, stats) = frames(Side::Frontend, &[(&q[..20], q.len() - 20)]);
        assert_eq!(lost, 0);
        assert_eq!(out, vec![(b'Q', b"SELECT * FROM t".to_vec(), false)]);
        assert_eq!(stats.truncated, 1);
    }

    #[test]
    fn missing_bytes_past_a_message_end_lose_sync_then_resync() {
        let mut s = msg(b'Q', b"SELECT 1\0");
        let q2 = msg(b'Q', b"SELECT 2\0");
        s.extend_from_slice(&q2[..3]);
        let mut next = b"\x00junk".to_vec();
        next.extend(msg(b'Q', b"SELECT 3\0"));
        let (out, lost, stats) = frames(Side::Frontend, &[(&s[..8], s.len() - 8 + 40), (&next, 0)]);
        assert_eq!(lost, 1);
        assert_eq!(out.iter().map(|m| (m.0, m.2)).collect::<Vec<_>>(), vec![(b'Q', false), (b'Q', true)]);
        assert_eq!(out[1].1, b"SELECT 3\0");
        assert_eq!(stats.resyncs, 1);
    }

    #[test]
    fn frontend_anchor_rejects_control_bytes_and_early_nul() {
        let mut s = vec![0xee];
        s.extend(msg(b'Q', b"SE\0ECT 1\0"));
        s.extend(msg(b'Q', b"\x01\x02\x03\x04\0"));
        s.extend(msg(b'S', b""));
        let (out, _, _) = frames(Side::Frontend, &[(&s, 0)]);
        assert_eq!(out.iter().map(|m| m.0).collect::<Vec<_>>(), vec![b'S']);
    }

    #[test]
    fn long_scan_without_anchor_gives_up() {
        let junk = vec![0xaau8; MAX_SCAN + 10];
        let mut f = Framer::new(Side::Backend);
        let mut stats = ParseStats::default();
        let mut inp = Input { data: &junk, pos: 0, missing: 0, tail: &[], ts: 0, tid: 0 };
        while f.next(&mut inp, &mut stats).is_some() {}
        assert!(f.is_opaque());
    }

    #[test]
    fn oversized_kept_bodies_are_capped_not_buffered_whole() {
        let mut body = vec![b'a'; MAX_BODY_KEEP + 100];
        body.push(0);
        let q = msg(b'Q', &body);
        let (out, _, stats) = frames(Side::Frontend, &[(&q, 0)]);
        assert_eq!(out[0].1.len(), MAX_BODY_KEEP);
        assert!(!out[0].2);
        assert_eq!(stats.truncated, 0, "cut by the cap, not by capture");
    }

    #[test]
    fn ssl_reply_is_one_untyped_byte() {
        let mut f = Framer::new(Side::Backend);
        f.expect_ssl_reply = true;
        let mut stats = ParseStats::default();
        let mut inp = Input { data: b"N", pos: 0, missing: 0, tail: &[], ts: 0, tid: 0 };
        match f.next(&mut inp, &mut stats) {
            Some(Event::Msg(m)) => assert_eq!((m.ty, m.body), (SSL_REPLY, &b"N"[..])),
            other => panic!("{other:?}"),
        }
    }
}
