//! Message bodies: Content-Length, chunked (with extensions and trailers) and
//! close-delimited. Payload bytes are counted and skipped, never buffered.
//!
//! Guarantees: constant state per body; chunk-size lines, extensions and
//! trailers are bounded (longer ones are invalid); never panics on input.

use memchr::memchr;

/// Longest chunk-size line extension accepted.
const MAX_CHUNK_EXT: usize = 4096;
/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 64 * 1024;
/// Hex digits in a chunk size (2^60 bytes is far beyond any real chunk).
const MAX_SIZE_DIGITS: u8 = 15;

/// The body being skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Body {
    /// Bytes left.
    Length(u64),
    Chunked(Chunked),
    UntilClose,
}

/// Where a chunked body is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunked {
    Size {
        value: u64,
        digits: u8,
    },
    /// Skipping a chunk extension (or whitespace) up to the line end.
    Ext {
        value: u64,
        len: usize,
    },
    /// Size line's CR seen, LF expected.
    SizeLf {
        value: u64,
    },
    /// Payload bytes left in this chunk.
    Data(u64),
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final blank line).
    TrailerStart {
        total: usize,
    },
    TrailerLine {
        total: usize,
    },
    TrailerLf,
}

/// How far [`Body::advance`] got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum End {
    /// The body needs more bytes.
    More,
    /// The body ended; bytes after `consumed` belong to the next message.
    Done,
    /// Bad framing at `consumed`.
    Invalid,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Step {
    pub consumed: usize,
    /// Payload bytes among the consumed ones.
    pub payload: u64,
    pub end: End,
}

impl Body {
    pub fn chunked() -> Self {
        Body::Chunked(Chunked::Size { value: 0, digits: 0 })
    }

    /// Consumes body bytes from the start of `data`.
    pub fn advance(&mut self, data: &[u8]) -> Step {
        match self {
            Body::Length(left) => {
                let n = (*left).min(data.len() as u64);
                *left -= n;
                let end = if *left == 0 { End::Done } else { End::More };
                Step { consumed: n as usize, payload: n, end }
            }
            Body::UntilClose => Step { consumed: data.len(), payload: data.len() as u64, end: End::More },
            Body::Chunked(c) => c.advance(data),
        }
    }

    /// Skips `n` bytes that were moved but not captured. Returns how many
    /// were payload of this body and whether the body ended there; if fewer
    /// than `n` were taken and the body did not end, the framing is lost.
    pub fn skip_missing(&mut self, n: u64) -> (u64, bool) {
        match self {
            Body::Length(left) => {
                let k = (*left).min(n);
                *left -= k;
                (k, *left == 0)
            }
            Body::UntilClose => (n, false),
            Body::Chunked(Chunked::Data(left)) => {
                let left = *left;
                let k = left.min(n);
                *self = Body::Chunked(if k == left { Chunked::DataCr } else { Chunked::Data(left - k) });
                (k, false)
            }
            Body::Chunked(_) => (0, false),
        }
    }
}

impl Chunked {
    fn advance(&mut self, data: &[u8]) -> Step {
        let mut i = 0;
        let mut payload = 0u64;
        let step = |consumed, payload, end| Step { consumed, payload, end };
        while let Some(rest) = data.get(i..).filter(|r| !r.is_empty()) {
            match *self {
                Chunked::Data(left) => {
                    let n = left.min(rest.len() as u64);
                    i += n as usize;
                    payload += n;
                    *self = if n == left { Chunked::DataCr } else { Chunked::Data(left - n) };
                }
                Chunked::Ext { value, len } => match memchr(b'\n', rest) {
                    Some(p) if len + p <= MAX_CHUNK_EXT => {
                        i += p + 1;
                        *self = Self::after_size_line(value);
                    }
                    None if len + rest.len() <= MAX_CHUNK_EXT => {
                        i += rest.len();
                        *self = Chunked::Ext { value, len: len + rest.len() };
                    }
                    _ => return step(i, payload, End::Invalid),
                },
                Chunked::TrailerLine { total } => match memchr(b'\n', rest) {
                    Some(p) if total + p <= MAX_TRAILERS => {
                        i += p + 1;
                        *self = Chunked::TrailerStart { total: total + p + 1 };
                    }
                    None if total + rest.len() <= MAX_TRAILERS => {
                        i += rest.len();
                        *self = Chunked::TrailerLine { total: total + rest.len() };
                    }
                    _ => return step(i, payload, End::Invalid),
                },
                state => {
                    let Some(&b) = rest.first() else { break };
                    i += 1;
                    match Self::on_byte(state, b) {
                        Some(Some(next)) => *self = next,
                        Some(None) => return step(i, payload, End::Done),
                        None => return step(i - 1, payload, End::Invalid),
                    }
                }
            }
        }
        step(i, payload, End::More)
    }

    fn after_size_line(value: u64) -> Chunked {
        if value == 0 { Chunked::TrailerStart { total: 0 } } else { Chunked::Data(value) }
    }

    /// One framing byte: the next state, `Some(None)` when the body ended,
    /// `None` when the byte is invalid here.
    fn on_byte(state: Chunked, b: u8) -> Option<Option<Chunked>> {
        let next = match state {
            Chunked::Size { value, digits } => match b {
                b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' if digits < MAX_SIZE_DIGITS => {
                    let d = u64::from((b as char).to_digit(16)?);
                    Chunked::Size { value: value * 16 + d, digits: digits + 1 }
                }
                b';' | b' ' | b'\t' if digits > 0 => Chunked::Ext { value, len: 0 },
                b'\r' if digits > 0 => Chunked::SizeLf { value },
                b'\n' if digits > 0 => Self::after_size_line(value),
                _ => return None,
            },
            Chunked::SizeLf { value } if b == b'\n' => Self::after_size_line(value),
            Chunked::DataCr if b == b'\r' => Chunked::DataLf,
            Chunked::DataCr | Chunked::DataLf if b == b'\n' => Chunked::Size { value: 0, digits: 0 },
            Chunked::TrailerStart { total } => match b {
                b'\r' => Chunked::TrailerLf,
                b'\n' => return Some(None),
                _ => Chunked::TrailerLine { total: total + 1 },
            },
            Chunked::TrailerLf if b == b'\n' => return Some(None),
            _ => return None,
        };
        Some(Some(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(body: &mut Body, parts: &[&[u8]]) -> (usize, u64, End) {
        let (mut consumed, mut payload) = (0, 0);
        for p in parts {
            let s = body.advance(p);
            consumed += s.consumed;
            payload += s.payload;
            if s.end != End::More {
                return (consumed, payload, s.end);
            }
        }
        (consumed, payload, End::More)
    }

    #[test]
    fn chunked_body_with_extensions_and_trailers_ends_at_the_blank_line() {
        let wire = b"5;name=v\r\nhello\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\nNEXT";
        let mut b = Body::chunked();
        assert_eq!(run(&mut b, &[wire]), (wire.len() - 4, 21, End::Done));
        // Same result one byte at a time.
        let mut b = Body::chunked();
        let bytes: Vec<&[u8]> = wire.chunks(1).collect();
        assert_eq!(run(&mut b, &bytes), (wire.len() - 4, 21, End::Done));
    }

    #[test]
    fn chunked_body_rejects_bad_size_lines() {
        for wire in [&b"zz\r\n"[..], b"\r\n", b"5\rX", b"5\r\nhelloXX", b"1234567890123456\r\n"] {
            let mut b = Body::chunked();
            assert_eq!(run(&mut b, &[wire]).2, End::Invalid, "{wire:?}");
        }
    }

    #[test]
    fn uncaptured_bytes_advance_inside_payload_only() {
        let mut b = Body::Length(100);
        assert_eq!(b.skip_missing(40), (40, false));
        assert_eq!(b.skip_missing(100), (60, true));
        let mut b = Body::chunked();
        b.advance(b"100\r\n");
        assert_eq!(b.skip_missing(0x100), (0x100, false));
        assert_eq!(run(&mut b, &[b"\r\n0\r\n\r\n"]).2, End::Done);
        let mut b = Body::chunked();
        b.advance(b"10\r\n");
        assert_eq!(b.skip_missing(0x20), (0x10, false));
        assert_eq!(b.skip_missing(1), (0, false));
    }

    #[test]
    fn long_extensions_and_trailers_are_invalid() {
        let mut wire = b"5;".to_vec();
        wire.extend(std::iter::repeat_n(b'x', MAX_CHUNK_EXT + 1));
        assert_eq!(run(&mut Body::chunked(), &[&wire]).2, End::Invalid);
        let mut wire = b"0\r\nX: ".to_vec();
        wire.extend(std::iter::repeat_n(b'x', MAX_TRAILERS + 1));
        assert_eq!(run(&mut Body::chunked(), &[&wire]).2, End::Invalid);
    }
}
