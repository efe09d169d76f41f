//! HTTP/2 taken up mid-stream: frame-boundary scanning, role detection from
//! the first header field, the joined HPACK decoder (never a wrong field)
//! and the joined parser.

use std::collections::VecDeque;

use super::hpack::{Decoder, STATIC, UNKNOWN, first_name};
use super::tests::http;
use super::*;
use crate::protocol::{Chunk, ConnMeta, Exchange, ParseStats, Privacy, StreamParser};

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

use super::encode_frame as frame;

/// An HPACK encoder that indexes like Go's and most others (loona-hpack's
/// adds only new names): an exact match in either table is sent as its
/// index; anything else as a literal added to the dynamic table (its name
/// as an index when a table has it), so a 4 KiB table cycles as new values
/// come. Strings are sent raw.
struct Encoder {
    table: VecDeque<(String, String)>,
    size: usize,
}

impl Encoder {
    fn new() -> Self {
        Self { table: VecDeque::new(), size: 0 }
    }

    fn integer(out: &mut Vec<u8>, first: u8, prefix: u8, mut v: usize) {
        let mask = (1usize << prefix) - 1;
        if v < mask {
            out.push(first | v as u8);
            return;
        }
        out.push(first | mask as u8);
        v -= mask;
        while v >= 128 {
            out.push(0x80 | (v & 0x7f) as u8);
            v >>= 7;
        }
        out.push(v as u8);
    }

    fn string(out: &mut Vec<u8>, s: &str) {
        Self::integer(out, 0, 7, s.len());
        out.extend_from_slice(s.as_bytes());
    }

    /// Index of (name, value), or of the name alone, in either table.
    fn find(&self, name: &str, value: &str) -> (Option<usize>, Option<usize>) {
        let dynamic = self.table.iter().enumerate().map(|(i, (n, v))| (i + 62, n.as_str(), v.as_str()));
        let all = STATIC.iter().enumerate().map(|(i, (n, v))| (i + 1, *n, *v)).chain(dynamic);
        let (mut exact, mut named) = (None, None);
        for (i, n, v) in all {
            if n == name {
                named = named.or(Some(i));
                if v == value {
                    exact = exact.or(Some(i));
                }
            }
        }
        (exact, named)
    }

    fn encode(&mut self, fields: &[(&str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for &(n, v) in fields {
            match self.find(n, v) {
                (Some(i), _) => Self::integer(&mut out, 0x80, 7, i),
                (None, named) => {
                    Self::integer(&mut out, 0x40, 6, named.unwrap_or(0));
                    if named.is_none() {
                        Self::string(&mut out, n);
                    }
                    Self::string(&mut out, v);
                    let size = n.len() + v.len() + 32;
                    while self.size + size > 4096 {
                        let Some((on, ov)) = self.table.pop_back() else { break };
                        self.size -= on.len() + ov.len() + 32;
                    }
                    self.table.push_front((n.to_owned(), v.to_owned()));
                    self.size += size;
                }
            }
        }
        out
    }
}

fn block(enc: &mut Encoder, fields: &[(&str, &str)]) -> Vec<u8> {
    enc.encode(fields)
}

fn ping() -> Vec<u8> {
    frame(6, 0, 0, &[1; 8])
}

#[test]
fn whole_frames_from_the_first_byte_are_recognised() {
    let mut enc = Encoder::new();
    let headers = frame(1, END_HEADERS, 1, &block(&mut enc, &[(":method", "GET"), (":path", "/")]));
    let mut bytes = ping();
    bytes.extend(frame(8, 0, 0, &[0, 0, 1, 0]));
    bytes.extend(&headers);
    bytes.extend(frame(0, END_STREAM, 1, &[b'x'; 100]));
    // The last frame may go on past the captured bytes.
    for cut in [bytes.len(), bytes.len() - 50, ping().len() + 9 + 4 + 3] {
        let got = frame::scan_from_start(&bytes[..cut], bytes.len());
        let want = (cut > ping().len() + 13 + headers.len()).then_some(&headers[9..]);
        assert_eq!(got, Some(want), "cut at {cut}");
    }
    assert_eq!(frame::scan_from_start(&ping(), 17), Some(None), "frames without HEADERS");
    // Captured in part: the frames may end anywhere in the rest, not before it.
    assert_eq!(frame::scan_from_start(&bytes[..40], bytes.len()), Some(None));
    assert_eq!(frame::scan_from_start(&bytes[..40], 41), Some(None), "the HEADERS frame ends at 41");
    assert_eq!(frame::scan_from_start(&bytes[..bytes.len() - 1], bytes.len() - 1), None, "ends inside a frame");
    // A frame's header read alone, its payload read next (Go).
    let head = ping().len() + 13 + 9;
    assert_eq!(frame::scan_from_start(&bytes[..head], head), Some(None));
    assert_eq!(frame::scan_from_start(&bytes[..head + 1], head + 1), None);
    // Not a frame boundary, or not HTTP/2 frames at all.
    let not = [
        &bytes[1..],
        &bytes[..5],
        &headers[9..],
        b"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
        b"*1\r\n$4\r\nPING\r\n",
        &[0, 0, 0, 8, 4, 0xd2, 0x16, 0x2f], // PostgreSQL SSLRequest
        &[0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc], // TLS ClientHello
        &frame(9, END_HEADERS, 1, b"abc"),  // a CONTINUATION first
        &frame(6, 0, 1, &[0; 8]),           // PING on a stream
        &frame(0, 0, 0, b"x"),              // DATA on stream 0
        &frame(1, 0x40, 1, b"x"),           // an undefined flag
        &frame(8, 0, 0, &[0, 0, 1]),        // WINDOW_UPDATE of 3 bytes
        &frame(12, 0, 0, b""),              // an unknown type
    ];
    for n in not {
        assert_eq!(frame::scan_from_start(n, n.len()), None, "{n:02x?}");
    }
}

#[test]
fn the_first_field_tells_requests_from_responses() {
    let mut enc = Encoder::new();
    let req = block(&mut enc, &[(":method", "POST"), (":path", "/a")]);
    assert_eq!(first_name(&req).as_deref(), Some(&b":method"[..]));
    let resp = block(&mut enc, &[(":status", "503")]);
    assert_eq!(first_name(&resp).as_deref(), Some(&b":status"[..]));
    // A size update first, then a literal name.
    let mut literal = vec![0x3f, 0xe1, 0x1f, 0x00, 0x05];
    literal.extend_from_slice(b":path\x01/");
    assert_eq!(first_name(&literal).as_deref(), Some(&b":path"[..]));
    // The first field from the dynamic table, or no field: unknown.
    assert_eq!(first_name(&[0x80 | 62]), None);
    assert_eq!(first_name(&[0x40 | 62]), None);
    assert_eq!(first_name(&[]), None);
    assert_eq!(first_name(&[0x80]), None);
}

#[test]
fn detection_mid_stream_gives_the_role_from_a_headers_frame() {
    let mut enc = Encoder::new();
    let req = frame(1, END_HEADERS, 3, &block(&mut enc, &[(":method", "GET"), (":path", "/x")]));
    let resp = frame(1, END_HEADERS, 3, &block(&mut enc, &[(":status", "200")]));
    use Direction::{Egress, Ingress};
    assert_eq!(detect_joined(Egress, &req, req.len()), Detection::Yes(Role::Client));
    assert_eq!(detect_joined(Ingress, &req, req.len()), Detection::Yes(Role::Server));
    assert_eq!(detect_joined(Egress, &resp, resp.len()), Detection::Yes(Role::Server));
    assert_eq!(detect_joined(Ingress, &resp, resp.len()), Detection::Yes(Role::Client));
    // Frames that do not tell: no HEADERS, or one starting from the dynamic table.
    assert_eq!(detect_joined(Ingress, &ping(), 17), Detection::NeedMore);
    for first in [0x80 | 62, 0x80 | 20] {
        let f = frame(1, END_HEADERS, 5, &[first]);
        assert_eq!(detect_joined(Ingress, &f, f.len()), Detection::NeedMore, "{first:02x}");
    }
    assert_eq!(detect_joined(Ingress, &req[1..], req.len() - 1), Detection::No);
    assert_eq!(detect_joined(Ingress, PREFACE, PREFACE.len()), Detection::No);
}

/// Blocks one encoder writes: a few paths again and again (indexed once,
/// then referenced), a new value each time, and fields that come and go.
/// Fields sent, and the block they were encoded as.
type Sent = (Vec<(String, String)>, Vec<u8>);

fn blocks(n: usize) -> Vec<Sent> {
    let mut enc = Encoder::new();
    (0..n)
        .map(|i| {
            let fields = vec![
                (":method".to_owned(), if i % 3 == 0 { "POST" } else { "GET" }.to_owned()),
                (":path".to_owned(), format!("/api/{}", i % 5)),
                (":authority".to_owned(), "svc.test:8080".to_owned()),
                ("x-request-id".to_owned(), format!("{i:040}")),
                ("x-tenant".to_owned(), format!("tenant-{}", i % 7)),
            ];
            let pairs: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
            let b = enc.encode(&pairs);
            (fields, b)
        })
        .collect()
}

fn decode(d: &mut Decoder, block: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v = Vec::new();
    d.decode(block, |n, val| v.push((n.to_vec(), val.to_vec()))).expect("decodes");
    v
}

/// The guarantee: whatever block the join happens at, every field a joined
/// decoder gives is the field sent, or unknown; never another one.
#[test]
fn a_joined_decoder_never_gives_a_wrong_field_and_learns_what_is_sent_again() {
    let all = blocks(300);
    for join in [1, 4, 37, 150] {
        let mut d = Decoder::joined();
        let mut unknown_at = Vec::new();
        for (i, (sent, b)) in all.iter().enumerate().skip(join) {
            let got = decode(&mut d, b);
            assert_eq!(got.len(), sent.len(), "block {i}");
            let mut unknown = 0;
            for ((n, v), (sn, sv)) in got.iter().zip(sent) {
                if n == UNKNOWN {
                    unknown += 1;
                    assert!(v.is_empty() || v == sv.as_bytes(), "block {i}: {sn}: {v:?}");
                } else {
                    assert_eq!((n.as_slice(), v.as_slice()), (sn.as_bytes(), sv.as_bytes()), "block {i}");
                }
            }
            unknown_at.push(unknown);
        }
        assert!(unknown_at[0] > 0, "join at {join}: the first block refers to older entries");
        // New request ids push the old entries out of the encoder's table,
        // so fields whose names the static table has are sent again and
        // known; a name only the dynamic table had stays unknown (each new
        // value names the previous entry), its values known.
        let mut d = Decoder::joined();
        let last: Vec<_> = all.iter().skip(join).map(|(_, b)| decode(&mut d, b)).collect();
        for got in last.iter().rev().take(50) {
            let names: Vec<&[u8]> = got.iter().map(|(n, _)| n.as_slice()).collect();
            assert_eq!(&names[..3], [&b":method"[..], b":path", b":authority"], "join at {join}");
            assert!(got[3..].iter().all(|(_, v)| !v.is_empty()), "join at {join}: {got:?}");
        }
    }
}

#[test]
fn a_joined_decoder_takes_any_table_size_and_a_normal_one_refuses_it() {
    let update = [0x3f, 0xe1, 0xff, 0x03]; // 65536 + ... > 4096
    assert!(Decoder::default().decode(&update, |_, _| {}).is_err());
    let mut d = Decoder::joined();
    d.set_allowed(0);
    assert_eq!(d.decode(&update, |_, _| {}), Ok(()));
    // Other errors stay errors.
    assert!(d.decode(&[0x80], |_, _| {}).is_err());
    assert!(d.decode(&[0x40, 0x85, 0xff], |_, _| {}).is_err());
}

/// A connection whose first requests kspan missed: both sides' encoders
/// carry state from before, the parser starts at a later write.
struct Joined {
    client_enc: Encoder,
    server_enc: Encoder,
    p: Http2Parser,
    out: Vec<Exchange>,
    stats: ParseStats,
    ts: u64,
}

const REQ: [(&str, &str); 4] =
    [(":method", "GET"), (":scheme", "http"), (":path", "/seen-before"), (":authority", "svc.test")];

impl Joined {
    /// The traced process is the server; two requests went by unseen.
    fn new() -> Self {
        let (mut client_enc, mut server_enc) = (Encoder::new(), Encoder::new());
        for _ in 0..2 {
            block(&mut client_enc, &REQ);
            block(&mut server_enc, &[(":status", "200"), ("content-type", "text/plain")]);
        }
        let p = Http2Parser::joined(Role::Server);
        Self { client_enc, server_enc, p, out: Vec::new(), stats: ParseStats::default(), ts: 0 }
    }

    fn feed(&mut self, dir: Direction, data: &[u8]) {
        self.ts += 10;
        let c = Chunk { dir, ts_ns: self.ts, tid: 7, data, len: data.len(), tail: &[] };
        self.p.feed(&c, &mut self.out, &mut self.stats);
    }

    fn request(&mut self, stream: u32, fields: &[(&str, &str)]) {
        let f = frame(1, END_HEADERS | END_STREAM, stream, &block(&mut self.client_enc, fields));
        self.feed(Direction::Ingress, &f);
    }

    fn response(&mut self, stream: u32) {
        let mut f = frame(1, END_HEADERS, stream, &block(&mut self.server_enc, &[(":status", "200")]));
        f.extend(frame(0, END_STREAM, stream, b"ok"));
        self.feed(Direction::Egress, &f);
    }
}

#[test]
fn a_joined_parser_pairs_what_it_sees_and_leaves_unknown_fields_out() {
    let mut c = Joined::new();
    // The tail of a DATA frame begun before the join: skipped, counted.
    c.feed(Direction::Egress, &[b'z'; 40]);
    assert_eq!(c.stats.resyncs, 1);
    // The path was indexed before the join; the method is in the static table.
    c.request(5, &REQ);
    c.response(5);
    // A path sent for the first time is known, and so is it later.
    let new = [(":method", "POST"), (":scheme", "http"), (":path", "/orders/7"), (":authority", "svc.test")];
    c.request(7, &new);
    c.response(7);
    c.request(9, &new);
    c.response(9);
    let got: Vec<_> =
        c.out.iter().map(|e| (http(e).stream, http(e).method.as_str(), http(e).path(), http(e).status)).collect();
    assert_eq!(got, [(5, "GET", "", 200), (7, "POST", "/orders/7", 200), (9, "POST", "/orders/7", 200)]);
    assert!(c.stats.unknown_fields >= 2, "path and authority of stream 5: {:?}", c.stats);
    assert_eq!((c.stats.malformed, c.stats.unmatched_responses), (0, 0));
    // No path: named by the method alone, no route, no URL.
    let d = c.out[0].record.describe(Role::Server, &ConnMeta::default(), &Privacy::default());
    assert_eq!(d.name, "GET");
    assert!(d.attributes.get("url.path").is_none() && d.attributes.get("http.route").is_none());
    let d = c.out[1].record.describe(Role::Server, &ConnMeta::default(), &Privacy::default());
    assert_eq!(d.name, "POST /orders/{id}");
}

#[test]
fn a_request_whose_method_is_unknown_still_opens_its_stream() {
    let mut c = Joined::new();
    // A method the encoder indexed before the join (not in the static table).
    let mut enc = Encoder::new();
    let purge = [(":method", "PURGE"), (":path", "/cache")];
    block(&mut enc, &purge);
    c.client_enc = enc;
    c.request(11, &purge);
    c.response(11);
    assert_eq!(c.out.len(), 1, "{:?}", c.stats);
    let h = http(&c.out[0]);
    assert_eq!((h.method, h.path(), h.status), (crate::protocol::http::Method::Other, "", 200));
    let d = c.out[0].record.describe(Role::Server, &ConnMeta::default(), &Privacy::default());
    assert_eq!(d.name, "HTTP");
    // Trailers of a stream opened before the join start nothing.
    let t = frame(1, END_HEADERS | END_STREAM, 13, &block(&mut c.client_enc, &[("x-checksum", "1")]));
    c.feed(Direction::Ingress, &t);
    c.response(13);
    assert_eq!((c.out.len(), c.stats.unmatched_responses), (1, 1));
}

#[test]
fn a_response_status_indexed_before_the_join_is_unknown_not_guessed() {
    let mut c = Joined::new();
    let mut enc = Encoder::new();
    block(&mut enc, &[(":status", "503")]);
    c.server_enc = enc;
    c.request(15, &[(":method", "GET"), (":path", "/")]);
    let f = frame(1, END_HEADERS | END_STREAM, 15, &block(&mut c.server_enc, &[(":status", "503")]));
    c.feed(Direction::Egress, &f);
    assert_eq!(c.out.len(), 1, "{:?}", c.stats);
    assert_eq!(http(&c.out[0]).status, 0);
    let d = c.out[0].record.describe(Role::Server, &ConnMeta::default(), &Privacy::default());
    assert!(d.attributes.get("http.response.status_code").is_none());
}
