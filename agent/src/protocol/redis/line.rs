//! CRLF-terminated line accumulation across chunks, and RESP number parsing.
//!
//! Guarantees: a line is returned whole when it was contiguous in one chunk,
//! otherwise its first `CAP` bytes are kept (the rest is counted, not
//! stored); lines longer than the caller's maximum are reported, never
//! buffered without bound. A bare `\n` ends a line too; one `\r` before it is
//! stripped.

use super::RespError;

/// Result of feeding bytes to a [`LineBuf`].
pub(super) enum LineStep<'a> {
    /// A complete line without its terminator (possibly cut to `CAP` bytes
    /// when it spanned chunks).
    Done(&'a [u8]),
    /// The line continues in later bytes.
    More,
    /// The line exceeded the maximum length.
    TooLong,
}

/// Bytes of a line that spans chunks.
pub(super) struct LineBuf<const CAP: usize> {
    buf: [u8; CAP],
    /// Bytes stored in `buf`.
    len: usize,
    /// Bytes seen in this line so far (stored or not).
    total: usize,
    /// Last byte seen (to strip a `\r` that was not stored).
    last: u8,
}

impl<const CAP: usize> Default for LineBuf<CAP> {
    fn default() -> Self {
        Self { buf: [0; CAP], len: 0, total: 0, last: 0 }
    }
}

impl<const CAP: usize> LineBuf<CAP> {
    pub fn reset(&mut self) {
        self.len = 0;
        self.total = 0;
        self.last = 0;
    }

    /// Whether no part of a line is pending.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Pre-loads bytes (used when a resync scan already consumed them).
    pub fn seed(&mut self, bytes: &[u8]) {
        self.reset();
        self.append(bytes);
    }

    fn append(&mut self, bytes: &[u8]) {
        if let Some(&b) = bytes.last() {
            self.last = b;
        }
        let room = CAP.saturating_sub(self.len);
        let take = room.min(bytes.len());
        if let (Some(dst), Some(src)) = (self.buf.get_mut(self.len..self.len + take), bytes.get(..take)) {
            dst.copy_from_slice(src);
            self.len += take;
        }
        self.total += bytes.len();
    }

    /// Consumes bytes of `data` from `*pos` up to and including the next
    /// `\n`. A line longer than `max` bytes yields [`LineStep::TooLong`] (and
    /// the buffer is reset).
    pub fn take<'a>(&'a mut self, data: &'a [u8], pos: &mut usize, max: usize) -> LineStep<'a> {
        let rest = data.get(*pos..).unwrap_or(&[]);
        let Some(nl) = find_newline(rest) else {
            self.append(rest);
            *pos = data.len();
            if self.total > max + 1 {
                self.reset();
                return LineStep::TooLong;
            }
            return LineStep::More;
        };
        *pos += nl + 1;
        let head = rest.get(..nl).unwrap_or(&[]);
        if self.total == 0 {
            let line = head.strip_suffix(b"\r").unwrap_or(head);
            if line.len() > max {
                return LineStep::TooLong;
            }
            return LineStep::Done(line);
        }
        self.append(head);
        let mut total = self.total;
        let mut len = self.len;
        if self.last == b'\r' {
            total -= 1;
            if len > total {
                len = total;
            }
        }
        self.reset();
        if total > max {
            return LineStep::TooLong;
        }
        LineStep::Done(self.buf.get(..len).unwrap_or(&[]))
    }
}

/// Bytes searched with a plain loop before handing over to `memchr`: RESP
/// lines are mostly a few bytes (`+OK`, `$3`, `:1`), where the call costs
/// more than the search.
const SHORT_SCAN: usize = 16;

fn find_newline(rest: &[u8]) -> Option<usize> {
    let head = rest.get(..SHORT_SCAN).unwrap_or(rest);
    if let Some(i) = head.iter().position(|&b| b == b'\n') {
        return Some(i);
    }
    let tail = rest.get(SHORT_SCAN..)?;
    memchr::memchr(b'\n', tail).map(|i| i + SHORT_SCAN)
}

/// Checks bytes of the `\r\n` that ends a bulk payload, where `left` bytes of
/// it (2 or 1) were still expected; returns how many are still expected after
/// `tail`, or an error if a byte is not the expected one.
pub(super) fn bulk_crlf(tail: &[u8], mut left: u64) -> Result<u64, RespError> {
    for &b in tail {
        let want = if left == 2 { b'\r' } else { b'\n' };
        if b != want {
            return Err(RespError::MissingCrlf);
        }
        left -= 1;
    }
    Ok(left)
}

/// Fast path for a complete `<digits>\r\n` at `data[pos..]` (the common
/// case): the value and the bytes used. Anything else (a sign, a split line,
/// junk) returns None and takes the general path.
#[inline]
pub(super) fn quick_len(data: &[u8], pos: usize) -> Option<(i64, usize)> {
    let rest = data.get(pos..)?;
    let mut n: i64 = 0;
    for (i, &b) in rest.iter().enumerate().take(12) {
        match b {
            b'0'..=b'9' => n = n * 10 + i64::from(b - b'0'),
            b'\r' if i > 0 && rest.get(i + 1) == Some(&b'\n') => return Some((n, i + 2)),
            _ => return None,
        }
    }
    None
}

/// Parses an optionally negative decimal integer (no sign-only, no spaces).
pub(super) fn parse_i64(b: &[u8]) -> Result<i64, RespError> {
    let (neg, digits) = match b.split_first() {
        Some((b'-', rest)) => (true, rest),
        Some((b'+', rest)) => (false, rest),
        _ => (false, b),
    };
    if digits.is_empty() || digits.len() > 19 {
        return Err(RespError::Number);
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(RespError::Number);
        }
        v = v.checked_mul(10).and_then(|v| v.checked_add(i64::from(d - b'0'))).ok_or(RespError::Number)?;
    }
    Ok(if neg { -v } else { v })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed_all<const C: usize>(lb: &mut LineBuf<C>, parts: &[&[u8]], max: usize) -> Option<Vec<u8>> {
        let mut got = None;
        for p in parts {
            let mut pos = 0;
            match lb.take(p, &mut pos, max) {
                LineStep::Done(l) => got = Some(l.to_vec()),
                LineStep::More => {}
                LineStep::TooLong => return None,
            }
        }
        got
    }

    #[test]
    fn line_split_anywhere_gives_same_line() {
        let whole: &[u8] = b"-ERR wrong\r\n";
        for at in 0..whole.len() {
            let mut lb = LineBuf::<64>::default();
            let (a, b) = whole.split_at(at);
            assert_eq!(feed_all(&mut lb, &[a, b], 100).as_deref(), Some(&b"-ERR wrong"[..]), "split at {at}");
        }
    }

    #[test]
    fn long_split_line_is_cut_to_capacity() {
        let mut lb = LineBuf::<4>::default();
        assert_eq!(feed_all(&mut lb, &[b"abcdef", b"gh\r\n"], 100).as_deref(), Some(&b"abcd"[..]));
        assert!(lb.is_empty());
    }

    #[test]
    fn line_over_max_is_too_long() {
        let mut lb = LineBuf::<4>::default();
        assert_eq!(feed_all(&mut lb, &[b"123456\r\n"], 3), None);
        let mut lb = LineBuf::<4>::default();
        assert_eq!(feed_all(&mut lb, &[b"12", b"3456", b"\r\n"], 3), None);
        assert_eq!(feed_all(&mut lb, &[b"12\r", b"\n"], 3).as_deref(), Some(&b"12"[..]));
    }

    #[test]
    fn numbers_parse_strictly() {
        assert_eq!(parse_i64(b"-1"), Ok(-1));
        assert_eq!(parse_i64(b"536870912"), Ok(536870912));
        assert_eq!(parse_i64(b"9223372036854775807"), Ok(i64::MAX));
        for bad in [&b""[..], b"-", b"1x", b" 1", b"99999999999999999999"] {
            assert_eq!(parse_i64(bad), Err(RespError::Number));
        }
    }
}
