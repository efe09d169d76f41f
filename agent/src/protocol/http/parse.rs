//! The per-connection HTTP/1.x stream parser: two half-streams (requests,
//! responses) and a FIFO of in-flight requests between them.
//!
//! Guarantees:
//! - Same exchanges whatever the chunking of the input (a header block may
//!   span chunks; a chunk may hold many messages).
//! - Bounded: at most [`MAX_HEAD`] buffered bytes per direction and
//!   [`MAX_IN_FLIGHT`] queued requests (overflowing requests are counted in
//!   `dropped_requests` and their responses skipped, keeping the pairing).
//! - A response is paired only with the request at the head of the queue.
//!   When a stream loses its place (garbage, a header block over the cap,
//!   uncaptured bytes outside a body) it is resynchronised at the next
//!   request line or status line, and pairing turns conservative: queued
//!   requests are dropped and counted (after a request-stream loss their
//!   responses are still awaited and skipped), and new requests are dropped
//!   too until the connection is quiet (nothing queued, no response in
//!   progress), since responses to requests lost inside the gap may follow.
//! - After `101 Switching Protocols` or a successful `CONNECT` the connection
//!   is opaque: later bytes are ignored. Except an upgrade to HTTP/2
//!   (`Upgrade: h2c` on the request, RFC 7540 section 3.2): the request
//!   goes on as stream 1 of an [`Http2Parser`], which takes every byte after
//!   the `101` head, in that chunk too, so that request's exchange has the
//!   HTTP/2 response, and the connection's later streams are parsed.

use std::collections::VecDeque;

use super::body::{Body, End};
use super::head::{self, Framing, MAX_HEAD, Parsed, RequestHead, ResponseHead, Side};
use super::{HttpExchange, Method, Prefix};
use crate::protocol::http2::Http2Parser;
use crate::protocol::{Chunk, Exchange, ParseStats, Record, Role, StreamParser, StreamReport};

/// Requests waiting for a response, per connection.
pub const MAX_IN_FLIGHT: usize = 64;
/// Distinct (timestamp, thread) origins remembered inside one buffered block.
const MAX_MARKS: usize = 32;
/// Bytes of a buffered block re-checked for a plausible message start.
const START_PROBE: usize = 40;
/// Bytes carried between chunks while resynchronising (a partial start).
const MAX_CARRY: usize = 48;
/// Largest buffer capacity kept between messages.
const KEEP_CAPACITY: usize = 4096;

/// When and by which thread some bytes were moved.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Origin {
    ts: u64,
    tid: u32,
}

/// A position in a buffered block and where its bytes came from.
#[derive(Clone, Copy, Debug)]
struct Mark {
    at: usize,
    origin: Origin,
}

#[derive(Debug)]
enum State {
    /// Expecting (or buffering) a header block.
    Head,
    /// Lost: searching for a message start; `buf` may hold a partial one.
    Resync,
    Body(Body),
}

/// One direction of the connection.
#[derive(Debug)]
struct Half {
    /// Partial header block, or a partial message start while resynchronising.
    buf: Vec<u8>,
    marks: Vec<Mark>,
    state: State,
}

impl Half {
    fn new() -> Self {
        Self { buf: Vec::new(), marks: Vec::new(), state: State::Head }
    }

    fn push(&mut self, bytes: &[u8], origin: Origin) {
        if self.marks.last().is_none_or(|m| m.origin != origin) && self.marks.len() < MAX_MARKS {
            self.marks.push(Mark { at: self.buf.len(), origin });
        }
        self.buf.extend_from_slice(bytes);
    }

    /// Origin of the buffered byte at `at`.
    fn origin(marks: &[Mark], at: usize) -> Origin {
        marks.iter().rev().find(|m| m.at <= at).or(marks.first()).map_or_else(Origin::default, |m| m.origin)
    }

    /// Drops the first `k` buffered bytes.
    fn drain_front(&mut self, k: usize) {
        let k = k.min(self.buf.len());
        let first = Self::origin(&self.marks, k);
        self.buf.drain(..k);
        self.marks.retain(|m| m.at > k);
        for m in &mut self.marks {
            m.at -= k;
        }
        self.marks.insert(0, Mark { at: 0, origin: first });
    }

    fn clear(&mut self) {
        self.buf.clear();
        self.marks.clear();
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }
}

/// A request waiting for its response.
#[derive(Debug)]
struct Pending {
    seq: u64,
    origin: Origin,
    ex: HttpExchange,
}

#[derive(Debug)]
enum Slot {
    Request(Pending),
    /// Requests dropped (queue full, or in flight when the request stream
    /// lost its place): their responses are expected and skipped.
    Skip(u32),
}

/// Which request a response in progress answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Pair {
    Request(u64),
    Skip,
    Unmatched,
}

/// A response whose head was parsed and whose body is being skipped.
#[derive(Debug)]
struct Answer {
    pair: Pair,
    status: u16,
    content_type: Option<crate::span::model::Text>,
    body: Option<u64>,
}

/// How a stream lost its place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Loss {
    Malformed,
    Truncated,
}

/// Per-connection HTTP/1.x parser; one instance sees both directions.
#[derive(Debug)]
pub struct HttpParser {
    role: Role,
    req: Half,
    resp: Half,
    queue: VecDeque<Slot>,
    next_seq: u64,
    /// Queued request whose body the request stream is reading.
    req_body: Option<u64>,
    answer: Option<Answer>,
    /// A stream lost its place, so an unknown number of responses may still
    /// come for requests never seen: new requests are not paired until the
    /// connection is quiet (nothing queued, no response in progress).
    uncertain: bool,
    /// Upgraded, tunnelled or closed: ignore everything.
    opaque: bool,
    /// Upgraded to HTTP/2 (h2c): it takes everything from here on.
    h2: Option<Box<Http2Parser>>,
}

impl HttpParser {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            req: Half::new(),
            resp: Half::new(),
            queue: VecDeque::new(),
            next_seq: 0,
            req_body: None,
            answer: None,
            uncertain: false,
            opaque: false,
            h2: None,
        }
    }

    /// Upgraded to HTTP/2 (h2c): an [`Http2Parser`] has the connection.
    pub fn upgraded(&self) -> bool {
        self.h2.is_some()
    }

    /// Queue slots in use (requests waiting, plus at most one run of skipped ones).
    #[cfg(test)]
    pub(super) fn in_flight(&self) -> usize {
        self.queue.len()
    }

    /// Header bytes buffered in the larger direction.
    #[cfg(test)]
    pub(super) fn buffered(&self) -> usize {
        self.req.buf.len().max(self.resp.buf.len())
    }

    fn half(&mut self, side: Side) -> &mut Half {
        match side {
            Side::Request => &mut self.req,
            Side::Response => &mut self.resp,
        }
    }

    /// Processes captured bytes of one side until they are used up, or
    /// until the connection turns opaque: what is left then.
    fn feed_bytes<'a>(
        &mut self,
        side: Side,
        mut input: &'a [u8],
        origin: Origin,
        out: &mut Vec<Exchange>,
        stats: &mut ParseStats,
    ) -> &'a [u8] {
        while !input.is_empty() && !self.opaque {
            input = match &mut self.half(side).state {
                State::Body(body) => {
                    let step = body.advance(input);
                    self.body_bytes(side, step.payload);
                    let rest = input.get(step.consumed..).unwrap_or_default();
                    match step.end {
                        End::More => {}
                        End::Done => self.end_body(side, origin.ts, out, stats),
                        End::Invalid => self.lose(side, Loss::Malformed, origin.ts, out, stats),
                    }
                    rest
                }
                State::Resync => self.resync(side, input, origin),
                State::Head => self.head(side, input, origin, out, stats),
            };
        }
        input
    }

    /// Header-block state: returns the input left after what was used.
    fn head<'a>(
        &mut self,
        side: Side,
        input: &'a [u8],
        origin: Origin,
        out: &mut Vec<Exchange>,
        stats: &mut ParseStats,
    ) -> &'a [u8] {
        let half = self.half(side);
        if half.buf.is_empty() {
            // Blank lines between messages are allowed (RFC 9112 section 2.2).
            let skip = input.iter().position(|b| !matches!(b, b'\r' | b'\n')).unwrap_or(input.len());
            let input = input.get(skip..).unwrap_or_default();
            if input.is_empty() {
                return input;
            }
            if head::plausible_start(side, input) == Prefix::No {
                self.lose(side, Loss::Malformed, origin.ts, out, stats);
                return input.get(1..).unwrap_or_default();
            }
            // Fast path: a whole header block in this chunk, parsed in one pass.
            if let Ok(p) = head::parse(side, input)
                && p.len() <= MAX_HEAD
            {
                let rest = input.get(p.len()..).unwrap_or_default();
                self.on_parsed(p, origin, origin, out, stats);
                return rest;
            }
            return match head::find_end(&[], input) {
                Some(end) if end <= MAX_HEAD => {
                    let (block, rest) = input.split_at(end);
                    self.complete_head(side, block, &[Mark { at: 0, origin }], origin, out, stats);
                    rest
                }
                // Too long: given up at byte MAX_HEAD, whatever the chunking.
                _ if input.len() > MAX_HEAD => {
                    self.lose(side, Loss::Malformed, origin.ts, out, stats);
                    input.get(MAX_HEAD..).unwrap_or_default()
                }
                _ => {
                    half.push(input, origin);
                    &[]
                }
            };
        }
        if half.buf.len() < START_PROBE {
            let mut probe = [0u8; START_PROBE];
            let n = half.buf.len();
            let m = input.len().min(START_PROBE - n);
            probe[..n].copy_from_slice(&half.buf);
            probe[n..n + m].copy_from_slice(&input[..m]);
            if head::plausible_start(side, &probe[..n + m]) == Prefix::No {
                // Rescan the buffered bytes after the first one, then the input.
                half.drain_front(1);
                self.lose(side, Loss::Malformed, origin.ts, out, stats);
                return input;
            }
        }
        let tail = half.buf.get(half.buf.len().saturating_sub(2)..).unwrap_or_default();
        match head::find_end(tail, input) {
            Some(end) if half.buf.len() + end <= MAX_HEAD => {
                let (block, rest) = input.split_at(end);
                half.push(block, origin);
                let buf = std::mem::take(&mut half.buf);
                let marks = std::mem::take(&mut half.marks);
                self.complete_head(side, &buf, &marks, origin, out, stats);
                let half = self.half(side);
                if half.buf.is_empty() && buf.capacity() <= KEEP_CAPACITY {
                    half.buf = buf;
                    half.buf.clear();
                }
                rest
            }
            _ if half.buf.len() + input.len() > MAX_HEAD => {
                let skip = MAX_HEAD.saturating_sub(half.buf.len());
                half.clear();
                self.lose(side, Loss::Malformed, origin.ts, out, stats);
                input.get(skip..).unwrap_or_default()
            }
            _ => {
                half.push(input, origin);
                &[]
            }
        }
    }

    /// Parses a complete header block; when it is invalid, tries the later
    /// positions in it where a message could start, then gives the stream up.
    fn complete_head(
        &mut self,
        side: Side,
        block: &[u8],
        marks: &[Mark],
        now: Origin,
        out: &mut Vec<Exchange>,
        stats: &mut ParseStats,
    ) {
        let mut at = 0;
        loop {
            let part = block.get(at..).unwrap_or_default();
            match head::parse(side, part) {
                Ok(p) => {
                    if at > 0 {
                        self.lose(side, Loss::Malformed, now.ts, out, stats);
                    }
                    self.on_parsed(p, Half::origin(marks, at), now, out, stats);
                    return;
                }
                Err(_) => match head::find_start(side, block, at + 1) {
                    Some((k, Prefix::Yes)) => at = k,
                    _ => break,
                },
            }
        }
        self.lose(side, Loss::Malformed, now.ts, out, stats);
    }

    /// Resync state: looks for a message start in the carried bytes and the input.
    fn resync<'a>(&mut self, side: Side, input: &'a [u8], origin: Origin) -> &'a [u8] {
        let half = self.half(side);
        if !half.buf.is_empty() {
            let mut probe = [0u8; MAX_CARRY + 16];
            let n = half.buf.len().min(MAX_CARRY);
            let m = input.len().min(probe.len() - n);
            probe[..n].copy_from_slice(&half.buf[..n]);
            probe[n..n + m].copy_from_slice(&input[..m]);
            match head::find_start(side, &probe[..n + m], 0) {
                Some((k, Prefix::Yes)) if k < n => {
                    half.buf.truncate(n);
                    half.drain_front(k);
                    half.state = State::Head;
                    return input;
                }
                Some((k, Prefix::Partial)) if k < n && m == input.len() => {
                    half.buf.truncate(n);
                    half.drain_front(k);
                    half.push(input, origin);
                    return &[];
                }
                _ => half.clear(),
            }
        }
        match head::find_start(side, input, 0) {
            Some((k, Prefix::Yes)) => {
                half.state = State::Head;
                input.get(k..).unwrap_or_default()
            }
            Some((k, _)) => {
                let carry = input.get(k..).unwrap_or_default();
                half.push(carry.get(..MAX_CARRY).unwrap_or(carry), origin);
                &[]
            }
            None => &[],
        }
    }

    /// A header block was parsed; `first` is where its first byte came from,
    /// `now` the chunk holding its last byte. A request starts when its
    /// first byte came and belongs to the thread that completed its head:
    /// Go's net/http server reads the first byte of a keep-alive
    /// connection's next request on a background goroutine, the rest on
    /// the goroutine that serves it.
    fn on_parsed(&mut self, p: Parsed, first: Origin, now: Origin, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        match p {
            Parsed::Request(r) => {
                self.req.state = State::Head;
                self.on_request(r, Origin { ts: first.ts, tid: now.tid }, stats);
            }
            Parsed::Response(r) => {
                self.resp.state = State::Head;
                self.on_response(r, now.ts, out, stats);
            }
        }
    }

    fn on_request(&mut self, r: RequestHead, origin: Origin, stats: &mut ParseStats) {
        let seq = self.next_seq;
        self.next_seq += 1;
        if self.uncertain && self.queue.is_empty() && self.answer.is_none() && self.resp.buf.is_empty() {
            self.uncertain = false;
        }
        if self.uncertain {
            stats.dropped_requests += 1;
            self.req_body = None;
        } else if self.queue.len() >= MAX_IN_FLIGHT {
            stats.dropped_requests += 1;
            match self.queue.back_mut() {
                Some(Slot::Skip(n)) => *n = n.saturating_add(1),
                _ => self.queue.push_back(Slot::Skip(1)),
            }
            self.req_body = None;
        } else {
            self.queue.push_back(Slot::Request(Pending { seq, origin, ex: r.ex }));
            self.req_body = Some(seq);
        }
        self.req.state = match r.framing {
            Framing::None | Framing::Length(0) => State::Head,
            Framing::Length(n) => State::Body(Body::Length(n)),
            Framing::Chunked => State::Body(Body::chunked()),
            Framing::UntilClose => State::Body(Body::UntilClose),
        };
    }

    fn on_response(&mut self, r: ResponseHead, ts: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        if (100..200).contains(&r.status) && r.status != 101 {
            return; // Interim (e.g. 100 Continue): the final response follows.
        }
        let (pair, method) = match self.queue.front() {
            Some(Slot::Request(p)) => (Pair::Request(p.seq), Some(p.ex.method)),
            Some(Slot::Skip(_)) => (Pair::Skip, None),
            None => {
                stats.unmatched_responses += 1;
                (Pair::Unmatched, None)
            }
        };
        if r.status == 101 && self.upgrade_to_h2() {
            return;
        }
        let tunnel = r.status == 101 || (method == Some(Method::Connect) && (200..300).contains(&r.status));
        let framing = if tunnel { Framing::None } else { r.framing(method) };
        let body = (framing != Framing::None).then_some(0);
        let answer = Answer { pair, status: r.status, content_type: r.content_type, body };
        match framing {
            Framing::None | Framing::Length(0) => {
                self.finish(answer, ts, out, stats);
                self.opaque |= tunnel;
            }
            Framing::Length(n) => self.start_body(answer, Body::Length(n)),
            Framing::Chunked => self.start_body(answer, Body::chunked()),
            Framing::UntilClose => self.start_body(answer, Body::UntilClose),
        }
    }

    /// A `101` answers the request at the head of the queue: if that asked
    /// for h2c, it becomes stream 1 of an HTTP/2 parser that takes the
    /// connection over (true).
    fn upgrade_to_h2(&mut self) -> bool {
        let h2c = |p: &Pending| {
            p.ex.header("upgrade").is_some_and(|u| u.split(',').any(|t| t.trim().eq_ignore_ascii_case("h2c")))
        };
        // Only the one request, whole (its body sent before the switch).
        let whole = self.queue.len() == 1 && matches!(self.req.state, State::Head);
        if !whole || !matches!(self.queue.front(), Some(Slot::Request(p)) if h2c(p)) {
            return false;
        }
        let Some(Slot::Request(p)) = self.queue.pop_front() else { return false };
        self.req_body = None;
        self.h2 = Some(Box::new(Http2Parser::upgraded(self.role, p.ex, p.origin.ts, p.origin.tid)));
        self.opaque = true;
        true
    }

    fn start_body(&mut self, answer: Answer, body: Body) {
        self.answer = Some(answer);
        self.resp.state = State::Body(body);
    }

    fn body_bytes(&mut self, side: Side, n: u64) {
        if n == 0 {
            return;
        }
        match side {
            Side::Request => {
                let Some(seq) = self.req_body else { return };
                let slot = self.queue.iter_mut().rev().find_map(|s| match s {
                    Slot::Request(p) if p.seq == seq => Some(p),
                    _ => None,
                });
                if let Some(size) = slot.and_then(|p| p.ex.request_body_size.as_mut()) {
                    *size = size.saturating_add(n);
                }
            }
            Side::Response => {
                if let Some(size) = self.answer.as_mut().and_then(|a| a.body.as_mut()) {
                    *size = size.saturating_add(n);
                }
            }
        }
    }

    fn end_body(&mut self, side: Side, ts: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        self.half(side).state = State::Head;
        match side {
            Side::Request => self.req_body = None,
            Side::Response => {
                if let Some(answer) = self.answer.take() {
                    self.finish(answer, ts, out, stats);
                }
            }
        }
    }

    /// A final response ended at `ts`: emits its exchange (or settles a skipped one).
    fn finish(&mut self, answer: Answer, ts: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        match (answer.pair, self.queue.front_mut()) {
            (Pair::Request(seq), Some(Slot::Request(p))) if p.seq == seq => {
                if let Some(Slot::Request(mut p)) = self.queue.pop_front() {
                    p.ex.status = answer.status;
                    p.ex.response_body_size = answer.body;
                    p.ex.response_content_type = answer.content_type;
                    if self.req_body == Some(seq) {
                        self.req_body = None;
                    }
                    stats.exchanges += 1;
                    out.push(Exchange {
                        role: self.role,
                        start_ns: p.origin.ts,
                        end_ns: ts,
                        tid: p.origin.tid,
                        window: None,
                        record: Record::Http(p.ex),
                    });
                }
            }
            (Pair::Skip, Some(Slot::Skip(n))) => {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    self.queue.pop_front();
                }
            }
            // Unmatched, or its request was dropped since (already counted).
            _ => {}
        }
    }

    /// One stream lost its place: count, drop what could be mis-paired, resync.
    fn lose(&mut self, side: Side, loss: Loss, ts: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        match loss {
            Loss::Malformed => stats.malformed += 1,
            Loss::Truncated => stats.truncated += 1,
        }
        stats.resyncs += 1;
        self.half(side).state = State::Resync;
        if side == Side::Response
            && let Some(mut answer) = self.answer.take()
        {
            // Its head was fine: report the exchange, body size unknown.
            answer.body = None;
            self.finish(answer, ts, out, stats);
        }
        // The request whose response is being read was received before the
        // loss: it keeps its pairing. The rest are dropped; after a request
        // stream loss their responses are still due, so they are skipped.
        let keep = match self.answer {
            Some(Answer { pair: Pair::Request(seq), .. }) => Some(seq),
            _ => None,
        };
        let mut kept = None;
        let mut skip = 0u32;
        for slot in self.queue.drain(..) {
            match slot {
                Slot::Request(p) if Some(p.seq) == keep => kept = Some(p),
                Slot::Request(_) => {
                    stats.dropped_requests += 1;
                    skip = skip.saturating_add(1);
                }
                Slot::Skip(n) => skip = skip.saturating_add(n),
            }
        }
        self.queue.extend(kept.map(Slot::Request));
        if side == Side::Request {
            self.req_body = None;
            if skip > 0 {
                self.queue.push_back(Slot::Skip(skip));
            }
        }
        self.uncertain = true;
    }

    /// Bytes moved but not captured: fine inside a body, a loss elsewhere.
    fn skip_missing(&mut self, side: Side, mut n: u64, ts: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        while n > 0 && !self.opaque {
            let half = self.half(side);
            match &mut half.state {
                State::Body(body) => {
                    let (k, done) = body.skip_missing(n);
                    n -= k;
                    self.body_bytes(side, k);
                    if done {
                        self.end_body(side, ts, out, stats);
                    } else if n > 0 {
                        self.lose(side, Loss::Truncated, ts, out, stats);
                        return;
                    }
                }
                State::Head => {
                    half.clear();
                    self.lose(side, Loss::Truncated, ts, out, stats);
                    return;
                }
                State::Resync => {
                    half.clear();
                    return;
                }
            }
        }
    }
}

impl StreamParser for HttpParser {
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        if let Some(h2) = &mut self.h2 {
            return h2.feed(chunk, out, stats);
        }
        if self.opaque {
            return;
        }
        let side = if chunk.dir == self.role.request_direction() { Side::Request } else { Side::Response };
        let origin = Origin { ts: chunk.ts_ns, tid: chunk.tid };
        let rest = self.feed_bytes(side, chunk.data, origin, out, stats);
        if let Some(h2) = &mut self.h2 {
            // Upgraded in this chunk: the rest of it is HTTP/2.
            let rest = Chunk { data: rest, len: rest.len() + chunk.missing(), ..*chunk };
            if rest.len > 0 {
                h2.feed(&rest, out, stats);
            }
            return;
        }
        let (gap, tail) = chunk.gap_and_tail();
        if gap > 0 {
            self.skip_missing(side, gap as u64, chunk.ts_ns, out, stats);
        }
        // The call's last bytes, captured past the gap: read in place when
        // the gap ended inside a body (a chunked body's CRLF and next size
        // line, or its last chunk, are there), dropped once the place is lost.
        if !tail.is_empty() && !self.opaque && !matches!(self.half(side).state, State::Resync) {
            let rest = self.feed_bytes(side, tail, origin, out, stats);
            if let Some(h2) = self.h2.as_mut().filter(|_| !rest.is_empty()) {
                h2.feed(&Chunk { data: rest, len: rest.len(), tail: &[], ..*chunk }, out, stats);
            }
        }
    }

    fn stream_on(&mut self, report: &StreamReport) -> bool {
        self.h2.as_mut().is_some_and(|h2| h2.stream_on(report))
    }

    fn handed_over(&mut self, stream: u32, ts_ns: u64) {
        if let Some(h2) = &mut self.h2 {
            h2.handed_over(stream, ts_ns);
        }
    }

    fn close(&mut self, ts_ns: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        if let Some(h2) = &mut self.h2 {
            return h2.close(ts_ns, out, stats);
        }
        if !self.opaque
            && matches!(self.resp.state, State::Body(Body::UntilClose))
            && let Some(answer) = self.answer.take()
        {
            self.finish(answer, ts_ns, out, stats);
        }
        for slot in self.queue.drain(..) {
            if let Slot::Request(_) = slot {
                stats.dropped_requests += 1;
            }
        }
        self.req = Half::new();
        self.resp = Half::new();
        self.answer = None;
        self.req_body = None;
        self.opaque = true;
    }
}
