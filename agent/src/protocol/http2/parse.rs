//! [`Http2Parser`]: the two directions' frames and HPACK decoders, and the
//! table of open streams that pairs each request with its response.

use super::frame::{Event, Framer, Lost, header_table_size, scan_from_start};
use super::hpack::{Decoder, UNKNOWN};
use super::{MAX_STREAMS, MAX_TABLE};
use crate::protocol::http::{HttpExchange, Method};
use crate::protocol::{Chunk, Exchange, ParseStats, Record, Role, StreamParser, StreamReport};

/// Fields of one decoded header block, in one buffer.
#[derive(Default)]
struct Fields {
    bytes: Vec<u8>,
    /// (name end, value end) offsets into `bytes`, each field starting where
    /// the previous one ended.
    ends: Vec<(usize, usize)>,
}

impl Fields {
    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
    }

    fn push(&mut self, name: &[u8], value: &[u8]) {
        self.bytes.extend_from_slice(name);
        let n = self.bytes.len();
        self.bytes.extend_from_slice(value);
        self.ends.push((n, self.bytes.len()));
    }

    fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> {
        let mut start = 0;
        self.ends.iter().map(move |&(n, v)| {
            let field = (&self.bytes[start..n], &self.bytes[n..v]);
            start = v;
            field
        })
    }

    fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    /// Fields a joined decoder could not know (indexed before the join).
    fn unknown(&self) -> usize {
        self.iter().filter(|(n, _)| *n == UNKNOWN).count()
    }
}

/// One open stream: its request, and what has been seen of its response.
struct Stream {
    /// The request so far; its `stream` is the stream id.
    ex: HttpExchange,
    start_ns: u64,
    tid: u32,
    /// Served by a reported handler from this time, until the given time
    /// if its goroutine went on to another stream
    /// ([`Exchange::window`]).
    handler: Option<(u64, Option<u64>)>,
    /// Response headers (a final `:status`) seen.
    answered: bool,
    request_body: u64,
    response_body: u64,
}

/// Everything but the frame readers, so events can be handled while a
/// reader is borrowed.
struct State {
    role: Role,
    /// HPACK decoders of what the process read (0) and wrote (1).
    decoders: [Decoder; 2],
    streams: Vec<Stream>,
    fields: Fields,
    /// Taken up mid-stream: header blocks may hold unknown fields.
    joined: bool,
    /// A client's calls told before their request was written: (stream,
    /// the caller's thread key), at most [`MAX_STREAMS`].
    callers: Vec<(u32, u32)>,
    /// Highest stream id of a request seen (a client numbers its streams
    /// upwards, in the order it writes them).
    last_request: u32,
}

/// Per-connection HTTP/2 parser (see the module guarantees).
pub struct Http2Parser {
    /// Frame readers of what the process read (0) and wrote (1).
    framers: [Framer; 2],
    state: State,
    /// The connection can no longer be followed (counted when it happened).
    lost: bool,
    /// Per direction: reads (0) and writes (1) are followed from a frame
    /// boundary on (false only for a joined connection's direction not yet
    /// seen at one: a read or write of whole frames).
    synced: [bool; 2],
}

impl Http2Parser {
    pub fn new(role: Role) -> Self {
        let client_writes = role == Role::Client;
        let decoders = [Decoder::default(), Decoder::default()];
        Self {
            framers: [Framer::new(!client_writes), Framer::new(client_writes)],
            state: State::new(role, decoders, false),
            lost: false,
            synced: [true; 2],
        }
    }

    /// A parser for a connection upgraded from HTTP/1.1 (`Upgrade: h2c`):
    /// the upgrading request `ex`, read (or written) at `start_ns` by
    /// `tid`, is stream 1, answered on HTTP/2; the client's preface comes
    /// next in its direction, the server's frames in the other. The
    /// request's `HTTP2-Settings` (the client's first SETTINGS, base64url)
    /// may let the server's encoder use a larger header table.
    pub fn upgraded(role: Role, mut ex: HttpExchange, start_ns: u64, tid: u32) -> Self {
        use base64::Engine as _;
        let mut p = Self::new(role);
        let settings = ex.header("http2-settings").map(|v| v.trim().trim_end_matches('='));
        let payload = settings.and_then(|v| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(v).ok());
        if let Some(n) = payload.as_deref().and_then(header_table_size) {
            // The decoder of the server's header blocks: what a server
            // wrote (1), what a client read (0).
            let d = usize::from(role == Role::Server);
            p.state.decoders[d].set_allowed((n as usize).min(MAX_TABLE));
        }
        ex.stream = 1;
        let state = &mut p.state;
        state.last_request = 1;
        let (answered, request_body, response_body) = (false, 0, 0);
        state.streams.push(Stream { ex, start_ns, tid, handler: None, answered, request_body, response_body });
        p
    }

    /// A parser for a connection taken up mid-stream (see the module
    /// guarantees): no preface, each direction followed from its first
    /// read or write of whole frames, HPACK decoders that
    /// report what was indexed before the join as unknown.
    pub fn joined(role: Role) -> Self {
        let decoders = [Decoder::joined(), Decoder::joined()];
        Self {
            framers: [Framer::new(false), Framer::new(false)],
            state: State::new(role, decoders, true),
            lost: false,
            synced: [false; 2],
        }
    }
}

impl Http2Parser {
    /// Bytes of direction `d` went uncaptured where the frames could not
    /// skip them (a write or read longer than the capture: a busy gRPC
    /// channel batches many frames in one). That direction is taken up
    /// again like a connection joined mid-stream: from its next read or
    /// write of whole frames, its HPACK decoder knowing only what is added
    /// from then on (an index into the older table is an unknown field,
    /// never a guess). The open streams may have lost frames in the gap:
    /// they are dropped (counted).
    fn resync(&mut self, d: usize, stats: &mut ParseStats) {
        let state = &mut self.state;
        state.drop_open_streams(stats);
        state.callers.clear();
        state.decoders[d] = Decoder::joined();
        state.joined = true;
        self.framers[d] = Framer::new(false);
        self.synced[d] = false;
    }
}

impl std::fmt::Debug for Http2Parser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Http2Parser")
            .field("role", &self.state.role)
            .field("open_streams", &self.state.streams.len())
            .field("lost", &self.lost)
            .finish()
    }
}

impl StreamParser for Http2Parser {
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        if self.lost {
            return;
        }
        let d = chunk.dir.index();
        if !self.synced[d] {
            // Mid-frame (a frame begun before the join): wait for a read or
            // write of whole frames (or one ending after a frame header).
            if scan_from_start(chunk.data, chunk.len).is_none() {
                stats.resyncs += 1;
                return;
            }
            self.synced[d] = true;
        }
        let state = &mut self.state;
        let mut on = |ev: Event<'_>| state.on_event(d, chunk, ev, out, stats);
        let (gap, tail) = chunk.gap_and_tail();
        match self.framers[d].feed(chunk.data, gap, tail, &mut on) {
            Ok(()) => {}
            Err(Lost::Truncated) => {
                stats.truncated += 1;
                self.resync(d, stats);
            }
            Err(Lost::Malformed) => {
                stats.malformed += 1;
                self.state.drop_open_streams(stats);
                self.lost = true;
            }
        }
    }

    fn close(&mut self, _ts_ns: u64, _out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        self.state.drop_open_streams(stats);
    }

    fn stream_on(&mut self, r: &StreamReport) -> bool {
        let state = &mut self.state;
        let StreamReport { role, stream, tid, ts_ns } = *r;
        if role != state.role {
            return false;
        }
        if let Some(s) = state.streams.iter_mut().find(|s| s.ex.stream == stream) {
            s.tid = tid;
            if role == Role::Server {
                s.handler = Some((ts_ns, None));
            }
            return true;
        }
        // A client's call told before its request was written (its writer
        // goroutine may write it later): kept for it.
        let ahead = role == Role::Client && stream > state.last_request;
        let kept = ahead && state.callers.len() < MAX_STREAMS && !self.lost;
        if kept {
            state.callers.push((stream, tid));
        }
        kept
    }

    fn handed_over(&mut self, stream: u32, ts_ns: u64) {
        let open = self.state.streams.iter_mut().find(|s| s.ex.stream == stream);
        if let Some((_, until @ None)) = open.and_then(|s| s.handler.as_mut()) {
            *until = Some(ts_ns);
        }
    }
}

impl State {
    /// Drops the open streams (they will never complete), counted.
    fn drop_open_streams(&mut self, stats: &mut ParseStats) {
        stats.dropped_requests += self.streams.len() as u64;
        self.streams = Vec::new();
    }

    fn new(role: Role, decoders: [Decoder; 2], joined: bool) -> Self {
        let (streams, fields, callers) = (Vec::new(), Fields::default(), Vec::new());
        Self { role, decoders, streams, fields, joined, callers, last_request: 0 }
    }

    /// The thread key a request on `stream` written by `tid` counts for: its
    /// caller's when one was told (see `stream_on`). Callers of streams
    /// before it are dropped: a client writes its streams in order, so
    /// theirs were not seen.
    fn caller_of(&mut self, stream: u32, tid: u32) -> u32 {
        self.last_request = self.last_request.max(stream);
        if self.callers.is_empty() {
            return tid;
        }
        let told = self.callers.iter().find(|c| c.0 == stream).map_or(tid, |c| c.1);
        self.callers.retain(|c| c.0 > stream);
        told
    }

    fn on_event(
        &mut self,
        d: usize,
        chunk: &Chunk<'_>,
        ev: Event<'_>,
        out: &mut Vec<Exchange>,
        stats: &mut ParseStats,
    ) -> Result<(), Lost> {
        let request = chunk.dir == self.role.request_direction();
        match ev {
            Event::Headers { stream, end_stream, block } => {
                self.decode(d, block)?;
                if request {
                    self.request_headers(stream, chunk, stats);
                } else {
                    self.response_headers(stream, stats);
                    if end_stream {
                        self.finish(stream, chunk.ts_ns, out, stats);
                    }
                }
            }
            Event::PushPromise { block } => self.decode(d, block)?,
            Event::Data { stream, len, end_stream } => {
                if let Some(s) = self.streams.iter_mut().find(|s| s.ex.stream == stream) {
                    if request {
                        s.request_body += len;
                    } else {
                        s.response_body += len;
                    }
                }
                if !request && end_stream {
                    self.finish(stream, chunk.ts_ns, out, stats);
                }
            }
            // A reset ends the stream: its exchange if answered, else dropped.
            Event::RstStream { stream } => self.finish(stream, chunk.ts_ns, out, stats),
            // The sender's table size bounds what the other side's encoder
            // may use: the decoder of the other direction.
            Event::Settings { header_table_size: Some(n) } => {
                self.decoders[1 - d].set_allowed((n as usize).min(MAX_TABLE));
            }
            Event::Settings { header_table_size: None } => {}
        }
        Ok(())
    }

    /// Decodes a header block into `fields`, keeping the HPACK table in step.
    fn decode(&mut self, d: usize, block: &[u8]) -> Result<(), Lost> {
        let fields = &mut self.fields;
        fields.clear();
        self.decoders[d].decode(block, |n, v| fields.push(n, v)).map_err(|_| Lost::Malformed)
    }

    /// Whether the decoded block may hold pseudo-headers it does not show
    /// (a joined connection's field indexed before the join); counted.
    fn unknown_fields(&self, stats: &mut ParseStats) -> bool {
        let n = if self.joined { self.fields.unknown() } else { 0 };
        stats.unknown_fields += n as u64;
        n > 0
    }

    fn request_headers(&mut self, stream: u32, chunk: &Chunk<'_>, stats: &mut ParseStats) {
        // Trailers of a request already open, or a header block without a
        // method (unless it may be among the unknown fields of a joined
        // connection): nothing to start.
        let unknown = self.unknown_fields(stats);
        let has_method = self.fields.get(b":method").is_some();
        if (!has_method && !unknown) || self.streams.iter().any(|s| s.ex.stream == stream) {
            return;
        }
        if self.streams.len() >= MAX_STREAMS {
            stats.dropped_requests += 1;
            return;
        }
        let mut ex = HttpExchange::from_h2_fields(self.fields.iter());
        if !has_method {
            // Among the unknown fields: no method is assumed.
            ex.method = Method::Other;
        }
        ex.stream = stream;
        let tid = self.caller_of(stream, chunk.tid);
        self.streams.push(Stream {
            ex,
            start_ns: chunk.ts_ns,
            tid,
            handler: None,
            answered: false,
            request_body: 0,
            response_body: 0,
        });
    }

    fn response_headers(&mut self, stream: u32, stats: &mut ParseStats) {
        let unknown = self.unknown_fields(stats);
        let Some(s) = self.streams.iter_mut().find(|s| s.ex.stream == stream) else {
            if self.fields.get(b":status").is_some() {
                stats.unmatched_responses += 1;
            }
            return;
        };
        // A joined connection's first response block whose `:status` was
        // indexed before the join: answered, status unknown (0).
        if unknown && !s.answered && self.fields.get(b":status").is_none() {
            s.answered = true;
        }
        if let Some(status) = self.fields.get(b":status") {
            let status = std::str::from_utf8(status).ok().and_then(|t| t.parse::<u16>().ok()).unwrap_or(0);
            // Informational responses (100-continue, 103) precede the final one.
            if (100..200).contains(&status) {
                return;
            }
            s.answered = true;
            s.ex.status = status;
            s.ex.response_content_type =
                self.fields.get(b"content-type").map(|v| String::from_utf8_lossy(v).as_ref().into());
        }
        // In the response headers of a trailers-only reply, else in trailers.
        if let Some(g) = self.fields.get(b"grpc-status") {
            s.ex.grpc_status = std::str::from_utf8(g).ok().and_then(|t| t.parse().ok());
        }
    }

    /// `stream` ended at `ts`: its exchange is complete if it was answered,
    /// else its request is dropped (counted).
    fn finish(&mut self, stream: u32, ts: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        let Some(i) = self.streams.iter().position(|s| s.ex.stream == stream) else { return };
        let mut s = self.streams.swap_remove(i);
        if !s.answered {
            stats.dropped_requests += 1;
            return;
        }
        let bodiless = s.ex.method == Method::Head || matches!(s.ex.status, 204 | 304);
        s.ex.response_body_size = (!bodiless).then_some(s.response_body);
        s.ex.request_body_size = (s.request_body > 0).then_some(s.request_body);
        stats.exchanges += 1;
        out.push(Exchange {
            role: self.role,
            start_ns: s.start_ns,
            end_ns: ts,
            tid: s.tid,
            window: s.handler.map(|(from, until)| (from.min(ts), until.unwrap_or(ts).clamp(from.min(ts), ts))),
            record: Record::Http(s.ex),
        });
    }
}
