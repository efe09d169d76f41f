//! Header blocks: finding where one ends, parsing it (with `httparse`) into
//! what the parser and the span need, and finding where a message may start
//! after garbage.
//!
//! Guarantees: pure functions over byte slices; never panic on any input.

use std::mem::MaybeUninit;

use memchr::memchr_iter;

use super::{HttpExchange, Method, Prefix, Version, cut_value, request_line_start, status_line_start};

/// Cap on a buffered header block (request/status line included).
pub(super) const MAX_HEAD: usize = 64 * 1024;
/// Headers parsed per message (framing headers are read among all of them);
/// a message with more is malformed.
const MAX_PARSED_HEADERS: usize = 256;
/// Longest method token accepted when checking where a request starts.
const MAX_METHOD: usize = 32;

/// Why a header block was rejected.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub(super) enum HeadError {
    #[error("invalid header block: {0}")]
    Syntax(#[from] httparse::Error),
    #[error("header block ended early")]
    Incomplete,
    #[error("invalid or conflicting Content-Length")]
    ContentLength,
    #[error("request Transfer-Encoding does not end with chunked")]
    TransferEncoding,
}

/// Which stream a header block belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Side {
    Request,
    Response,
}

/// How a message body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body.
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (responses only).
    UntilClose,
}

/// A parsed request head.
#[derive(Debug)]
pub(super) struct RequestHead {
    pub ex: HttpExchange,
    pub framing: Framing,
    /// Length of the header block.
    pub len: usize,
}

/// A parsed response head; framing depends on the request, see [`ResponseHead::framing`].
#[derive(Debug)]
pub(super) struct ResponseHead {
    /// Length of the header block.
    pub len: usize,
    pub status: u16,
    pub content_type: Option<crate::span::model::Text>,
    length: Option<u64>,
    /// Some(last coding is chunked) when Transfer-Encoding was present.
    chunked: Option<bool>,
}

impl ResponseHead {
    /// Body delimitation (RFC 9112 section 6.3) given the request method.
    pub fn framing(&self, request_method: Option<Method>) -> Framing {
        if request_method == Some(Method::Head) || self.status < 200 || self.status == 204 || self.status == 304 {
            return Framing::None;
        }
        match (self.chunked, self.length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    }
}

/// Content-Length and Transfer-Encoding seen so far in one header block.
#[derive(Default)]
struct FramingHeaders {
    length: Option<u64>,
    chunked: Option<bool>,
}

impl FramingHeaders {
    fn observe(&mut self, name: &str, value: &[u8]) -> Result<(), HeadError> {
        if name.eq_ignore_ascii_case("content-length") {
            // A list of equal values ("5, 5") is allowed; anything else is not.
            for part in value.split(|b| *b == b',') {
                let n = parse_decimal(part.trim_ascii()).ok_or(HeadError::ContentLength)?;
                match self.length {
                    Some(prev) if prev != n => return Err(HeadError::ContentLength),
                    _ => self.length = Some(n),
                }
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let last = value.rsplit(|b| *b == b',').next().unwrap_or(value).trim_ascii();
            self.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
        }
        Ok(())
    }
}

fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() || s.len() > 19 {
        return None;
    }
    s.iter().try_fold(0u64, |acc, b| b.is_ascii_digit().then(|| acc * 10 + u64::from(b - b'0')))
}

fn config() -> httparse::ParserConfig {
    // Lenient: kspan observes traffic a real server accepted, it does not police it.
    let mut c = httparse::ParserConfig::default();
    c.allow_multiple_spaces_in_request_line_delimiters(true)
        .allow_multiple_spaces_in_response_status_delimiters(true)
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true);
    c
}

/// Parses the request header block at the start of `data`.
pub(super) fn parse_request(data: &[u8]) -> Result<RequestHead, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_PARSED_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let httparse::Status::Complete(len) = config().parse_request_with_uninit_headers(&mut req, data, &mut slots)?
    else {
        return Err(HeadError::Incomplete);
    };
    let block = data.get(..len).unwrap_or(data);
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(HeadError::Incomplete);
    };
    let mut ex = HttpExchange::with_capacity(block.len(), req.headers.len().min(super::MAX_KEPT_HEADERS));
    ex.method = Method::from_token(method.as_bytes());
    if ex.method == Method::Other {
        ex.method_original = Some(ex.push_text(method));
    }
    ex.version = if version == 0 { Version::Http10 } else { Version::Http11 };
    let (path, query) = split_target(target);
    ex.path = ex.push_text(path);
    ex.query = query.map(|q| ex.push_text(q));
    let text = std::str::from_utf8(block).ok().map(|t| (t, block.as_ptr() as usize));
    let mut framing = FramingHeaders::default();
    for h in req.headers.iter() {
        framing.observe(h.name, h.value)?;
        ex.push_header(h.name, h.value, text);
    }
    let declared = framing.chunked.is_some() || framing.length.is_some();
    let framing = match (framing.chunked, framing.length) {
        (Some(true), _) => Framing::Chunked,
        (Some(false), _) => return Err(HeadError::TransferEncoding),
        (None, Some(0) | None) => Framing::None,
        (None, Some(n)) => Framing::Length(n),
    };
    // Known (possibly zero) when the request declares a body framing.
    ex.request_body_size = declared.then_some(0);
    Ok(RequestHead { ex, framing, len })
}

/// Parses the response header block at the start of `data`.
pub(super) fn parse_response(data: &[u8]) -> Result<ResponseHead, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_PARSED_HEADERS];
    let mut resp = httparse::Response::new(&mut []);
    let httparse::Status::Complete(len) = config().parse_response_with_uninit_headers(&mut resp, data, &mut slots)?
    else {
        return Err(HeadError::Incomplete);
    };
    let status = resp.code.ok_or(HeadError::Incomplete)?;
    let mut framing = FramingHeaders::default();
    let mut content_type = None;
    for h in resp.headers.iter() {
        framing.observe(h.name, h.value)?;
        if content_type.is_none() && h.name.eq_ignore_ascii_case("content-type") {
            let v = cut_value(h.value);
            // Inline (no allocation) up to 24 bytes, which covers the usual types.
            content_type = Some(crate::span::model::Text::from_utf8_lossy(v));
        }
    }
    Ok(ResponseHead { len, status, content_type, length: framing.length, chunked: framing.chunked })
}

/// A parsed header block of either side.
#[derive(Debug)]
pub(super) enum Parsed {
    Request(RequestHead),
    Response(ResponseHead),
}

impl Parsed {
    pub fn len(&self) -> usize {
        match self {
            Parsed::Request(r) => r.len,
            Parsed::Response(r) => r.len,
        }
    }
}

/// Parses the header block of `side` at the start of `data`.
pub(super) fn parse(side: Side, data: &[u8]) -> Result<Parsed, HeadError> {
    match side {
        Side::Request => parse_request(data).map(Parsed::Request),
        Side::Response => parse_response(data).map(Parsed::Response),
    }
}

/// Splits a request target into path and query. An absolute-form target
/// (`http://host/p?q`, sent to proxies) loses its scheme and authority; a
/// fragment (never sent by conforming clients) is dropped.
pub(super) fn split_target(target: &str) -> (&str, Option<&str>) {
    let target = target.split_once('#').map_or(target, |(t, _)| t);
    // Origin form ("/p?q") is by far the most common: skip the scheme search.
    let absolute = if target.starts_with('/') { None } else { target.find("://") };
    let target = match absolute {
        Some(i) if !target[..i].contains(['/', '?']) => {
            let rest = &target[i + 3..];
            rest.find(['/', '?']).map_or("/", |j| &rest[j..])
        }
        _ => target,
    };
    match target.split_once('?') {
        Some((p, q)) => (if p.is_empty() { "/" } else { p }, Some(q)),
        None => (target, None),
    }
}

/// Index just past the blank line ending a header block in `input`, if any.
/// `before` holds up to the last two bytes of the same block seen earlier
/// (a terminator may straddle chunks). Lines may end in CRLF or bare LF.
pub(super) fn find_end(before: &[u8], input: &[u8]) -> Option<usize> {
    let at = |i: usize, back: usize| -> Option<u8> {
        match i.checked_sub(back) {
            Some(j) => input.get(j).copied(),
            None => before.len().checked_sub(back - i).and_then(|j| before.get(j).copied()),
        }
    };
    memchr_iter(b'\n', input).find_map(|i| match at(i, 1) {
        Some(b'\n') => Some(i + 1),
        Some(b'\r') if at(i, 2) == Some(b'\n') => Some(i + 1),
        _ => None,
    })
}

/// Whether `data` (the first bytes of a message on `side`) can start a
/// message: any method token then a space for requests (extension methods
/// exist), a status line for responses.
pub(super) fn plausible_start(side: Side, data: &[u8]) -> Prefix {
    match side {
        Side::Request => {
            let n = data.iter().take(MAX_METHOD + 1).take_while(|b| is_tchar(**b)).count();
            match data.get(n) {
                // At most MAX_METHOD bytes, as a partial start is judged:
                // a longer token is refused whatever the chunking.
                Some(b' ') if n > 0 && n <= MAX_METHOD => Prefix::Yes,
                None if n <= MAX_METHOD => Prefix::Partial,
                _ => Prefix::No,
            }
        }
        Side::Response => status_line_start(data),
    }
}

/// Strict start used when resynchronising: a known method and a space, or a
/// status line.
pub(super) fn strict_start(side: Side, data: &[u8]) -> Prefix {
    match side {
        Side::Request => request_line_start(data),
        Side::Response => status_line_start(data),
    }
}

/// First position in `data` from `from` where [`strict_start`] says `Yes`
/// or `Partial`, with which.
pub(super) fn find_start(side: Side, data: &[u8], from: usize) -> Option<(usize, Prefix)> {
    let first: &[u8] = match side {
        Side::Request => b"GPHDOCT",
        Side::Response => b"H",
    };
    let rest = data.get(from..)?;
    rest.iter().enumerate().filter(|(_, b)| first.contains(b)).find_map(|(i, _)| {
        let at = from + i;
        match strict_start(side, data.get(at..)?) {
            Prefix::No => None,
            p => Some((at, p)),
        }
    })
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_end_handles_crlf_bare_lf_and_straddling_terminators() {
        assert_eq!(find_end(b"", b"GET / HTTP/1.1\r\nA: b\r\n\r\nBODY"), Some(24));
        assert_eq!(find_end(b"", b"GET / HTTP/1.1\nA: b\n\nBODY"), Some(21));
        assert_eq!(find_end(b"", b"GET / HTTP/1.1\r\nA: b\r\n"), None);
        assert_eq!(find_end(b"\r\n", b"\r\nX"), Some(2));
        assert_eq!(find_end(b"\n\r", b"\nX"), Some(1));
        assert_eq!(find_end(b"b\r", b"\n\r\n"), Some(3));
        assert_eq!(find_end(b"", b"\n"), None);
    }

    #[test]
    fn target_split_removes_query_fragment_and_absolute_form() {
        assert_eq!(split_target("/a/b?x=1&y=2"), ("/a/b", Some("x=1&y=2")));
        assert_eq!(split_target("/a#frag"), ("/a", None));
        assert_eq!(split_target("http://example.com/p?q=1"), ("/p", Some("q=1")));
        assert_eq!(split_target("http://example.com"), ("/", None));
        assert_eq!(split_target("/redirect?to=http://x/y"), ("/redirect", Some("to=http://x/y")));
        assert_eq!(split_target("*"), ("*", None));
        assert_eq!(split_target("?q"), ("/", Some("q")));
    }

    #[test]
    fn request_framing_follows_rfc_9112() {
        let h = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\n").map(|h| h.framing);
        assert_eq!(h.ok(), Some(Framing::Length(5)));
        let h = parse_request(b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n");
        assert_eq!(h.err(), Some(HeadError::ContentLength));
        let h = parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nContent-Length: 5\r\n\r\n");
        assert_eq!(h.map(|h| h.framing).ok(), Some(Framing::Chunked));
        let h = parse_request(b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(h.err(), Some(HeadError::TransferEncoding));
        let h = parse_request(b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n");
        assert_eq!(h.err(), Some(HeadError::ContentLength));
    }

    #[test]
    fn response_framing_depends_on_status_and_method() {
        let r = parse_response(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n").expect("valid");
        assert_eq!(r.framing(Some(Method::Get)), Framing::Length(10));
        assert_eq!(r.framing(Some(Method::Head)), Framing::None);
        let r = parse_response(b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n").expect("valid");
        assert_eq!(r.framing(Some(Method::Get)), Framing::None);
        let r = parse_response(b"HTTP/1.0 200 OK\r\nContent-Type: text/html\r\n\r\n").expect("valid");
        assert_eq!(r.framing(None), Framing::UntilClose);
        assert_eq!(r.content_type.as_deref(), Some("text/html"));
        let r = parse_response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n")
            .expect("valid");
        assert_eq!(r.framing(None), Framing::Chunked);
    }

    #[test]
    fn request_headers_are_lowercased_trimmed_and_bounded() {
        let mut block = b"GET /x HTTP/1.1\r\nX-Big: ".to_vec();
        block.extend(std::iter::repeat_n(b'v', 5000));
        block.extend_from_slice(b"\r\n");
        for i in 0..70 {
            block.extend_from_slice(format!("H{i}: v{i}  \r\n").as_bytes());
        }
        block.extend_from_slice(b"\r\n");
        let ex = parse_request(&block).expect("valid").ex;
        assert_eq!(ex.header("x-big").map(str::len), Some(super::super::MAX_HEADER_VALUE));
        assert_eq!(ex.header("h0"), Some("v0"));
        assert_eq!(ex.headers().count(), super::super::MAX_KEPT_HEADERS);
        assert_eq!(ex.headers_dropped, 71 - 64);
    }

    #[test]
    fn resync_finds_known_methods_and_status_lines_only() {
        assert_eq!(find_start(Side::Request, b"\x00\x01xxGET / HTTP/1.1", 0), Some((4, Prefix::Yes)));
        assert_eq!(find_start(Side::Request, b"garbage PROPFIND / HTTP/1.1", 0), None);
        assert_eq!(find_start(Side::Request, b"zzzzPO", 0), Some((4, Prefix::Partial)));
        assert_eq!(find_start(Side::Response, b"xHTTP/1.1 200", 0), Some((1, Prefix::Yes)));
        assert_eq!(plausible_start(Side::Request, b"PROPFIND /x HTTP/1.1"), Prefix::Yes);
        assert_eq!(plausible_start(Side::Request, b"\x16\x03\x01"), Prefix::No);
        // The method length bound holds for a whole line and its prefixes alike.
        let long = [b'X'; MAX_METHOD + 1];
        assert_eq!(plausible_start(Side::Request, &long), Prefix::No);
        assert_eq!(plausible_start(Side::Request, &[&long[..], b" / HTTP/1.1"].concat()), Prefix::No);
        assert_eq!(plausible_start(Side::Request, &long[..MAX_METHOD]), Prefix::Partial);
        assert_eq!(plausible_start(Side::Request, &[&long[..MAX_METHOD], b" / HTTP/1.1"].concat()), Prefix::Yes);
    }
}
