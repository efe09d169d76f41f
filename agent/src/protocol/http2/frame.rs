//! One direction of an HTTP/2 connection cut into frames, incrementally:
//! bytes arrive in any pieces, header blocks are reassembled across
//! CONTINUATION frames, DATA and other frames are skipped by length (bytes
//! not captured there are fine), and only what the parser needs is kept.

use super::{MAX_BLOCK, PREFACE};

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY_FRAME: u8 = 2;
const RST_STREAM: u8 = 3;
const SETTINGS: u8 = 4;
const PUSH_PROMISE: u8 = 5;
const PING: u8 = 6;
const GOAWAY: u8 = 7;
const WINDOW_UPDATE: u8 = 8;
const CONTINUATION: u8 = 9;

const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

const SETTINGS_HEADER_TABLE_SIZE: u16 = 1;

/// The bytes of one frame: the 9-byte header (24-bit length, type, flags,
/// stream id) and `payload`, for the unit tests, benches and fuzz seeds that
/// write connections (the parser itself never writes a frame).
pub fn encode(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len();
    let mut v = vec![(n >> 16) as u8, (n >> 8) as u8, n as u8, ty, flags];
    v.extend_from_slice(&stream.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// The payload length of a frame header (24 bits).
fn payload_len(h: &[u8; 9]) -> usize {
    usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2])
}

/// Bytes of a HEADERS payload before its block fragment (after the pad
/// length): the priority fields, when flagged.
fn priority_skip(flags: u8) -> usize {
    if flags & PRIORITY != 0 { 5 } else { 0 }
}

/// Whether a frame header could start a frame a real HTTP/2 peer sends:
/// a known type, only the flags that type defines, the stream id that type
/// needs (none for connection frames, one for stream frames), the reserved
/// bit clear, and a length the type allows.
fn plausible_head(h: &[u8; 9]) -> bool {
    let len = payload_len(h);
    let (ty, flags) = (h[3], h[4]);
    if h[5] & 0x80 != 0 {
        return false;
    }
    let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]);
    let (allowed, on_stream, len_ok) = match ty {
        DATA => (END_STREAM | PADDED, true, true),
        HEADERS => (END_STREAM | END_HEADERS | PADDED | PRIORITY, true, len > 0),
        PRIORITY_FRAME => (0, true, len == 5),
        RST_STREAM => (0, true, len == 4),
        SETTINGS => (ACK, false, if flags & ACK != 0 { len == 0 } else { len.is_multiple_of(6) }),
        PUSH_PROMISE => (END_HEADERS | PADDED, true, len >= 4),
        PING => (ACK, false, len == 8),
        GOAWAY => (0, false, len >= 8),
        WINDOW_UPDATE => (0, stream != 0, len == 4),
        CONTINUATION => (END_HEADERS, true, len > 0),
        _ => return false,
    };
    flags & !allowed == 0 && (stream != 0) == on_stream && len_ok
}

/// The last `SETTINGS_HEADER_TABLE_SIZE` in a SETTINGS payload (whole
/// 6-byte settings; a trailing part is ignored).
pub fn header_table_size(payload: &[u8]) -> Option<u32> {
    payload
        .chunks_exact(6)
        .filter(|s| u16::from_be_bytes([s[0], s[1]]) == SETTINGS_HEADER_TABLE_SIZE)
        .map(|s| u32::from_be_bytes([s[2], s[3], s[4], s[5]]))
        .next_back()
}

/// Reads one read or write (`data` captured of `len` bytes) as HTTP/2
/// frames from its first byte, for a connection kspan did not see open:
/// `None` unless every frame header in it is [plausible](plausible_head),
/// the first frame is not a CONTINUATION (whose block began earlier), and
/// the frames end exactly where the read or write did (or, when not all of
/// it was captured, somewhere in the part not captured), or right after a
/// frame header whose payload is read next (Go reads a frame's header and
/// its payload with two calls). A chunk that starts inside a frame rarely
/// passes all of that. `Some(block)`: the header block of the first
/// HEADERS frame, when that frame is whole in `data` and ends its block
/// (END_HEADERS).
pub fn scan_from_start(data: &[u8], len: usize) -> Option<Option<&[u8]>> {
    let (mut pos, mut first, mut last_head) = (0, None, 0);
    while let Some(h) = data.get(pos..pos + 9) {
        last_head = pos + 9;
        let h: &[u8; 9] = h.try_into().ok()?;
        if !plausible_head(h) || (pos == 0 && h[3] == CONTINUATION) {
            return None;
        }
        let end = pos + 9 + payload_len(h);
        if h[3] == HEADERS && first.is_none() {
            let payload = data.get(pos + 9..end).filter(|_| h[4] & END_HEADERS != 0);
            first = Some(payload.and_then(|p| unpad(p, h[4], priority_skip(h[4])).ok()));
        }
        pos = end;
    }
    let captured = data.len();
    let ends_right = if captured < len {
        // Past the last whole frame header seen, but not past the end.
        pos > 0 && pos + 9 > captured && pos <= len
    } else {
        pos > 0 && (pos == captured || last_head == captured)
    };
    ends_right.then_some(first.flatten())
}

/// What a frame (or a completed header block) means to the parser.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete header block of a HEADERS frame (and its CONTINUATIONs).
    Headers {
        stream: u32,
        end_stream: bool,
        block: &'a [u8],
    },
    /// A complete PUSH_PROMISE header block (decoded only to keep HPACK in step).
    PushPromise {
        block: &'a [u8],
    },
    /// A whole DATA frame: `len` payload bytes without padding.
    Data {
        stream: u32,
        len: u64,
        end_stream: bool,
    },
    RstStream {
        stream: u32,
    },
    /// SETTINGS (not an ACK) from this direction's sender, with its
    /// SETTINGS_HEADER_TABLE_SIZE if it set one.
    Settings {
        header_table_size: Option<u32>,
    },
}

/// Why a direction cannot be followed any more.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lost {
    /// Bytes that matter (a frame header, a header block) were not captured.
    Truncated,
    /// Not HTTP/2 framing, or a frame or header block over [`MAX_BLOCK`].
    Malformed,
}

/// A frame whose payload is being read.
#[derive(Clone, Copy, Debug)]
struct Frame {
    ty: u8,
    flags: u8,
    stream: u32,
    len: usize,
    /// Payload bytes still to come.
    left: usize,
    /// Whether the payload is kept (in `payload`) or skipped.
    keep: bool,
}

/// A header block waiting for CONTINUATION frames.
#[derive(Clone, Copy, Debug)]
struct OpenBlock {
    stream: u32,
    end_stream: bool,
    push: bool,
}

/// Frame reader of one direction.
pub struct Framer {
    /// Preface bytes still expected (the client-to-server direction only).
    preface_left: usize,
    head: [u8; 9],
    head_len: usize,
    frame: Option<Frame>,
    /// First payload byte of a padded DATA frame (its pad length), once seen.
    data_pad: Option<u8>,
    payload: Vec<u8>,
    block: Vec<u8>,
    open: Option<OpenBlock>,
}

impl Framer {
    /// A reader for bytes the client sends (`client_side`, starting with the
    /// preface) or the server sends.
    pub fn new(client_side: bool) -> Self {
        Self {
            preface_left: if client_side { PREFACE.len() } else { 0 },
            head: [0; 9],
            head_len: 0,
            frame: None,
            data_pad: None,
            payload: Vec::new(),
            block: Vec::new(),
            open: None,
        }
    }

    /// Reads `data`, then `gap` bytes that moved but were not captured,
    /// then `tail` (the call's last bytes, captured past the gap: read in
    /// place when the gap ended inside a DATA payload, as a message's
    /// trailers often are), calling `on` for every event. On `Err` the
    /// direction is lost: later calls must not be made.
    pub fn feed(
        &mut self,
        mut data: &[u8],
        gap: usize,
        tail: &[u8],
        on: &mut dyn FnMut(Event<'_>) -> Result<(), Lost>,
    ) -> Result<(), Lost> {
        while !data.is_empty() {
            if self.preface_left > 0 {
                let at = PREFACE.len() - self.preface_left;
                let n = self.preface_left.min(data.len());
                if data[..n] != PREFACE[at..at + n] {
                    return Err(Lost::Malformed);
                }
                self.preface_left -= n;
                data = &data[n..];
                continue;
            }
            let Some(f) = self.frame.as_mut() else {
                let n = (9 - self.head_len).min(data.len());
                self.head[self.head_len..self.head_len + n].copy_from_slice(&data[..n]);
                self.head_len += n;
                data = &data[n..];
                if self.head_len == 9 {
                    self.start_frame()?;
                    self.end_frame_if_done(on)?;
                }
                continue;
            };
            let n = f.left.min(data.len());
            if f.keep {
                self.payload.extend_from_slice(&data[..n]);
            } else if f.ty == DATA && f.flags & PADDED != 0 && f.left == f.len {
                self.data_pad = Some(data[0]);
            }
            f.left -= n;
            data = &data[n..];
            self.end_frame_if_done(on)?;
        }
        if gap > 0 {
            match self.frame.as_mut() {
                Some(f) if !f.keep && gap <= f.left && self.preface_left == 0 => {
                    f.left -= gap;
                    self.end_frame_if_done(on)?;
                }
                _ => return Err(Lost::Truncated),
            }
        }
        if !tail.is_empty() {
            return self.feed(tail, 0, &[], on);
        }
        Ok(())
    }

    fn start_frame(&mut self) -> Result<(), Lost> {
        let h = self.head;
        self.head_len = 0;
        let len = payload_len(&h);
        let (ty, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        // A header block must go on in CONTINUATION frames of its stream.
        if let Some(open) = self.open
            && (ty != CONTINUATION || stream != open.stream)
        {
            return Err(Lost::Malformed);
        }
        let keep = matches!(ty, HEADERS | CONTINUATION | PUSH_PROMISE | SETTINGS | RST_STREAM);
        if keep && len > MAX_BLOCK {
            return Err(Lost::Malformed);
        }
        self.payload.clear();
        self.data_pad = None;
        self.frame = Some(Frame { ty, flags, stream, len, left: len, keep });
        Ok(())
    }

    fn end_frame_if_done(&mut self, on: &mut dyn FnMut(Event<'_>) -> Result<(), Lost>) -> Result<(), Lost> {
        let Some(f) = self.frame.filter(|f| f.left == 0) else { return Ok(()) };
        self.frame = None;
        let end_stream = f.flags & END_STREAM != 0;
        match f.ty {
            DATA => {
                let pad = if f.flags & PADDED != 0 { usize::from(self.data_pad.unwrap_or(0)) + 1 } else { 0 };
                let len = f.len.saturating_sub(pad) as u64;
                on(Event::Data { stream: f.stream, len, end_stream })
            }
            HEADERS => self.open_block(
                f.flags,
                priority_skip(f.flags),
                OpenBlock { stream: f.stream, end_stream, push: false },
                on,
            ),
            // The promised stream id (4 bytes) precedes the fragment.
            PUSH_PROMISE => {
                self.open_block(f.flags, 4, OpenBlock { stream: f.stream, end_stream: false, push: true }, on)
            }
            CONTINUATION => {
                if self.open.is_none() || self.block.len() + self.payload.len() > MAX_BLOCK {
                    return Err(Lost::Malformed);
                }
                self.block.extend_from_slice(&self.payload);
                self.block_done_if(f.flags, on)
            }
            RST_STREAM => on(Event::RstStream { stream: f.stream }),
            SETTINGS if f.flags & ACK == 0 => {
                if !self.payload.len().is_multiple_of(6) {
                    return Err(Lost::Malformed);
                }
                on(Event::Settings { header_table_size: header_table_size(&self.payload) })
            }
            _ => Ok(()),
        }
    }

    /// Starts `open`'s header block with the fragment of the kept HEADERS or
    /// PUSH_PROMISE payload (`skip` bytes after the pad length left out).
    fn open_block(
        &mut self,
        flags: u8,
        skip: usize,
        open: OpenBlock,
        on: &mut dyn FnMut(Event<'_>) -> Result<(), Lost>,
    ) -> Result<(), Lost> {
        let fragment = unpad(&self.payload, flags, skip)?;
        self.block.clear();
        self.block.extend_from_slice(fragment);
        self.open = Some(open);
        self.block_done_if(flags, on)
    }

    fn block_done_if(&mut self, flags: u8, on: &mut dyn FnMut(Event<'_>) -> Result<(), Lost>) -> Result<(), Lost> {
        if flags & END_HEADERS == 0 {
            return Ok(());
        }
        let Some(open) = self.open.take() else { return Err(Lost::Malformed) };
        if open.push {
            on(Event::PushPromise { block: &self.block })
        } else {
            on(Event::Headers { stream: open.stream, end_stream: open.end_stream, block: &self.block })
        }
    }
}

/// The fragment of a HEADERS or PUSH_PROMISE payload: padding (PADDED)
/// and `skip` bytes before the fragment removed.
fn unpad(payload: &[u8], flags: u8, skip: usize) -> Result<&[u8], Lost> {
    let (pad, rest) = if flags & PADDED != 0 {
        let (&p, rest) = payload.split_first().ok_or(Lost::Malformed)?;
        (usize::from(p), rest)
    } else {
        (0, payload)
    };
    let end = rest.len().checked_sub(pad).ok_or(Lost::Malformed)?;
    rest.get(skip..end).ok_or(Lost::Malformed)
}
