use loona_hpack::Encoder;

use super::*;
use crate::protocol::http::{HttpExchange, Version};
use crate::protocol::testutil::{OwnedChunk, captured};
use crate::protocol::{Chunk, ConnMeta, Exchange, ParseStats, Privacy, Record, StreamParser, StreamReport};
use crate::span::model::{AttrValue, StatusCode};

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;

use super::encode_frame as frame;

fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let p: Vec<u8> = pairs.iter().flat_map(|(k, v)| k.to_be_bytes().into_iter().chain(v.to_be_bytes())).collect();
    frame(4, 0, 0, &p)
}

/// Both ends of a connection: encoders for each side's header blocks, and a
/// parser on the traced side.
struct Conn {
    p: Http2Parser,
    role: Role,
    client_enc: Encoder<'static>,
    server_enc: Encoder<'static>,
    out: Vec<Exchange>,
    stats: ParseStats,
    ts: u64,
}

impl Conn {
    fn new(role: Role) -> Self {
        let mut c = Self {
            p: Http2Parser::new(role),
            role,
            client_enc: Encoder::new(),
            server_enc: Encoder::new(),
            out: Vec::new(),
            stats: ParseStats::default(),
            ts: 0,
        };
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(&[(3, 100), (4, 65535)]));
        c.client(&hello);
        c.server(&settings(&[(3, 128)]));
        c
    }

    fn feed(&mut self, dir: Direction, data: &[u8], len: usize) {
        self.ts += 10;
        let c = Chunk { dir, ts_ns: self.ts, tid: 7, data, len, tail: &[] };
        self.p.feed(&c, &mut self.out, &mut self.stats);
    }

    /// One call's `bytes` captured as the kernel does: a 4 KiB prefix and,
    /// past the gap, the last `tail` bytes.
    fn feed_cut(&mut self, dir: Direction, bytes: &[u8], tail: usize) {
        self.ts += 10;
        let c = OwnedChunk { ts_ns: self.ts, tid: 7, ..captured(dir, 0, bytes, 4096, tail) };
        self.p.feed(&c.as_chunk(), &mut self.out, &mut self.stats);
    }

    fn client_dir(&self) -> Direction {
        self.role.request_direction()
    }

    fn server_dir(&self) -> Direction {
        match self.client_dir() {
            Direction::Ingress => Direction::Egress,
            Direction::Egress => Direction::Ingress,
        }
    }

    fn client(&mut self, data: &[u8]) {
        self.feed(self.client_dir(), data, data.len());
    }

    fn server(&mut self, data: &[u8]) {
        self.feed(self.server_dir(), data, data.len());
    }

    fn request_frame(&mut self, stream: u32, flags: u8, fields: &[(&str, &str)]) -> Vec<u8> {
        let block = self.client_enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        frame(1, flags | END_HEADERS, stream, &block)
    }

    fn response_frame(&mut self, stream: u32, flags: u8, fields: &[(&str, &str)]) -> Vec<u8> {
        let block = self.server_enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
        frame(1, flags | END_HEADERS, stream, &block)
    }

    fn get(&mut self, stream: u32, path: &str) -> Vec<u8> {
        let f = [(":method", "GET"), (":scheme", "http"), (":path", path), (":authority", "example.test:8080")];
        self.request_frame(stream, END_STREAM, &f)
    }
}

pub(super) fn http(e: &Exchange) -> &HttpExchange {
    match &e.record {
        Record::Http(h) => h,
        other => panic!("not http: {other:?}"),
    }
}

fn attr<'a>(d: &'a crate::protocol::Described, key: &str) -> Option<&'a AttrValue> {
    d.attributes.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
}

#[test]
fn detects_the_preface_only() {
    assert_eq!(detect(Direction::Egress, PREFACE), Detection::Yes(Role::Client));
    assert_eq!(detect(Direction::Ingress, &PREFACE[..]), Detection::Yes(Role::Server));
    assert_eq!(detect(Direction::Ingress, &PREFACE[..5]), Detection::NeedMore);
    assert_eq!(detect(Direction::Ingress, b""), Detection::NeedMore);
    assert_eq!(detect(Direction::Ingress, b"PRI * HTTP/1.1\r\n"), Detection::No);
    assert_eq!(detect(Direction::Ingress, b"GET / HTTP/1.1\r\n"), Detection::No);
    assert_eq!(detect(Direction::Ingress, &settings(&[])), Detection::No);
}

#[test]
fn a_request_and_its_response_make_an_http2_exchange() {
    let mut c = Conn::new(Role::Server);
    let req = c.get(1, "/users/42?x=1");
    c.client(&req);
    let start = c.ts;
    let head = c.response_frame(1, 0, &[(":status", "200"), ("content-type", "text/plain")]);
    c.server(&head);
    assert!(c.out.is_empty(), "the response has not ended");
    c.server(&frame(0, END_STREAM, 1, b"hello"));
    assert_eq!(c.out.len(), 1);
    let (e, h) = (&c.out[0], http(&c.out[0]));
    assert_eq!((e.role, e.start_ns, e.end_ns, e.tid), (Role::Server, start, c.ts, 7));
    assert_eq!(
        (h.method, h.path(), h.query(), h.status),
        (crate::protocol::http::Method::Get, "/users/42", Some("x=1"), 200)
    );
    assert_eq!(h.version, Version::Http2);
    assert_eq!(h.header("host"), Some("example.test:8080"));
    assert_eq!(h.response_body_size, Some(5));
    assert_eq!(h.request_body_size, None);
    assert_eq!(h.response_content_type.as_deref(), Some("text/plain"));
    let d = e.record.describe(e.role, &ConnMeta::default(), &Privacy::default());
    assert_eq!(d.name, "GET /users/{id}");
    assert_eq!(attr(&d, "network.protocol.version"), Some(&AttrValue::from("2")));
    assert_eq!(attr(&d, "server.port"), Some(&AttrValue::Int(8080)));
    assert_eq!(c.stats.exchanges, 1);
}

#[test]
fn interleaved_streams_pair_by_id_and_end_in_their_own_order() {
    let mut c = Conn::new(Role::Client);
    for (id, path) in [(1, "/a"), (3, "/b"), (5, "/c")] {
        let f = c.get(id, path);
        c.client(&f);
    }
    // Answers in another order, the HPACK table shared across them.
    for (id, status) in [(5, "404"), (1, "200"), (3, "500")] {
        let mut bytes = c.response_frame(id, 0, &[(":status", status)]);
        bytes.extend(frame(0, END_STREAM, id, b"x"));
        c.server(&bytes);
    }
    let got: Vec<_> = c.out.iter().map(|e| (http(e).path(), http(e).status)).collect();
    assert_eq!(got, [("/c", 404), ("/a", 200), ("/b", 500)]);
    let d = c.out[0].record.describe(Role::Client, &ConnMeta::default(), &Privacy::default());
    assert_eq!(d.status.code, StatusCode::Error, "4xx is an error for a client");
}

#[test]
fn continuation_padding_and_priority_are_handled() {
    let mut c = Conn::new(Role::Server);
    let fields =
        [(":method", "POST"), (":scheme", "https"), (":path", "/upload"), (":authority", "h"), ("x-tenant-id", "acme")];
    let block = c.client_enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())));
    let (first, rest) = block.split_at(block.len() / 2);
    // HEADERS with padding (2 bytes) and a priority block, then CONTINUATION.
    let mut payload = vec![2u8, 0, 0, 0, 0, 16];
    payload.extend_from_slice(first);
    payload.extend_from_slice(&[0, 0]);
    let mut bytes = frame(1, PADDED | PRIORITY, 1, &payload);
    bytes.extend(frame(9, END_HEADERS, 1, rest));
    // A padded DATA frame: 3 bytes of body, 4 of padding.
    bytes.extend(frame(0, PADDED | END_STREAM, 1, &[4, b'a', b'b', b'c', 0, 0, 0, 0]));
    c.client(&bytes);
    let resp = c.response_frame(1, END_STREAM, &[(":status", "201")]);
    c.server(&resp);
    assert_eq!(c.out.len(), 1, "{:?}", c.stats);
    let h = http(&c.out[0]);
    assert_eq!((h.path(), h.status, h.header("x-tenant-id")), ("/upload", 201, Some("acme")));
    assert_eq!(h.request_body_size, Some(3));
    assert_eq!(h.response_body_size, Some(0));
}

#[test]
fn grpc_calls_are_named_by_service_and_method_with_their_status() {
    for role in [Role::Client, Role::Server] {
        let mut c = Conn::new(role);
        for (id, code) in [(1u32, "0"), (3, "5"), (5, "13")] {
            let f = [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", "/kspan.test.Echo/Say"),
                (":authority", "localhost:50051"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ];
            let mut bytes = c.request_frame(id, 0, &f);
            bytes.extend(frame(0, END_STREAM, id, &[0, 0, 0, 0, 2, 1, 2]));
            c.client(&bytes);
            let mut bytes = c.response_frame(id, 0, &[(":status", "200"), ("content-type", "application/grpc")]);
            bytes.extend(frame(0, 0, id, &[0, 0, 0, 0, 0]));
            bytes.extend(c.response_frame(id, END_STREAM, &[("grpc-status", code), ("grpc-message", "x")]));
            c.server(&bytes);
        }
        assert_eq!(c.out.len(), 3);
        let d: Vec<_> =
            c.out.iter().map(|e| e.record.describe(role, &ConnMeta::default(), &Privacy::default())).collect();
        assert!(d.iter().all(|d| d.name == "kspan.test.Echo/Say"));
        assert_eq!(attr(&d[0], "rpc.system"), Some(&AttrValue::from("grpc")));
        assert_eq!(attr(&d[0], "rpc.service"), Some(&AttrValue::from("kspan.test.Echo")));
        assert_eq!(attr(&d[0], "rpc.method"), Some(&AttrValue::from("Say")));
        let codes: Vec<_> = d.iter().map(|d| attr(d, "rpc.grpc.status_code").cloned()).collect();
        assert_eq!(codes, [Some(AttrValue::Int(0)), Some(AttrValue::Int(5)), Some(AttrValue::Int(13))]);
        let errors: Vec<_> = d.iter().map(|d| d.status.code == StatusCode::Error).collect();
        // NOT_FOUND (5) is an error for the caller only; INTERNAL (13) for both.
        let want = match role {
            Role::Client => [false, true, true],
            Role::Server => [false, false, true],
        };
        assert_eq!(errors, want, "{role:?}");
        assert_eq!(http(&c.out[0]).request_body_size, Some(7));
    }
}

#[test]
fn bytes_not_captured_in_a_data_frame_are_skipped() {
    let mut c = Conn::new(Role::Client);
    let f = c.get(1, "/big");
    c.client(&f);
    let mut bytes = c.response_frame(1, 0, &[(":status", "200")]);
    bytes.extend(frame(0, END_STREAM, 1, &[b'z'; 9000]));
    // Only the first 4 KiB captured: the rest of the DATA frame is skipped.
    let data = bytes[..4096].to_vec();
    c.feed(Direction::Ingress, &data, bytes.len());
    assert_eq!(c.out.len(), 1);
    assert_eq!(http(&c.out[0]).response_body_size, Some(9000));
    // The connection goes on.
    let f = c.get(3, "/next");
    c.client(&f);
    let r = c.response_frame(3, END_STREAM, &[(":status", "204")]);
    c.server(&r);
    assert_eq!(c.out.len(), 2);
    assert_eq!(c.stats.truncated, 0);
}

#[test]
fn trailers_after_a_large_message_are_read_in_the_tail() {
    // A gRPC reply of 10 KB: response headers, one DATA frame and the
    // trailers in one write, as grpc-go writes them.
    for (tail, ends) in [(256, true), (0, false)] {
        let mut c = Conn::new(Role::Client);
        let f = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/kspan.test.Echo/Say"),
            ("content-type", "application/grpc"),
        ];
        let mut req = c.request_frame(1, 0, &f);
        req.extend(frame(0, END_STREAM, 1, &[0, 0, 0, 0, 1, 7]));
        c.client(&req);
        let mut bytes = c.response_frame(1, 0, &[(":status", "200"), ("content-type", "application/grpc")]);
        bytes.extend(frame(0, 0, 1, &[b'm'; 10_005]));
        bytes.extend(c.response_frame(1, END_STREAM, &[("grpc-status", "0")]));
        let dir = c.server_dir();
        c.feed_cut(dir, &bytes, tail);
        if ends {
            assert_eq!(c.out.len(), 1, "ended by its trailers");
            assert_eq!(http(&c.out[0]).grpc_status, Some(0));
            assert_eq!(http(&c.out[0]).response_body_size, Some(10_005));
            assert_eq!((c.stats.truncated, c.stats.dropped_requests), (0, 0));
        } else {
            assert!(c.out.is_empty(), "the trailers' frame header went uncaptured");
            assert_eq!(c.stats.truncated, 1);
        }
    }
}

/// Bytes that cannot be skipped went uncaptured (a read longer than the
/// capture, frame headers in the gap): the open streams are dropped
/// (counted), and that direction is taken up again at its next read of
/// whole frames, its HPACK decoder as if joined mid-stream.
#[test]
fn a_header_block_not_captured_resyncs_the_direction_counted() {
    let mut c = Conn::new(Role::Client);
    for id in [1, 3] {
        let f = c.get(id, "/x");
        c.client(&f);
    }
    let mut bytes = c.response_frame(1, 0, &[(":status", "200")]);
    bytes.extend(frame(0, 0, 1, &[b'z'; 5000]));
    bytes.extend(c.response_frame(3, END_STREAM, &[(":status", "200")]));
    // The capture ends inside the DATA frame, and more than its payload is missing.
    let data = bytes[..100].to_vec();
    c.feed(Direction::Ingress, &data, bytes.len());
    assert_eq!((c.stats.truncated, c.stats.dropped_requests), (1, 2));
    // A read that starts inside a frame is skipped until one starts at a
    // frame boundary.
    let f = c.get(5, "/y");
    c.client(&f);
    c.feed(Direction::Ingress, &[b'z'; 40], 40);
    assert_eq!(c.stats.resyncs, 1);
    let r = c.response_frame(5, END_STREAM, &[(":status", "200")]);
    c.server(&r);
    assert_eq!(c.out.len(), 1, "{:?}", c.stats);
    let h = http(&c.out[0]);
    assert_eq!((h.stream, h.status, h.path()), (5, 200, "/y"));
}

#[test]
fn garbage_or_bad_hpack_is_malformed_and_never_panics() {
    let mut c = Conn::new(Role::Server);
    c.client(&frame(1, END_HEADERS | END_STREAM, 1, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff]));
    assert_eq!(c.stats.malformed, 1);
    let mut c = Conn::new(Role::Server);
    // A CONTINUATION nobody opened.
    c.client(&frame(9, END_HEADERS, 1, b"abc"));
    assert_eq!(c.stats.malformed, 1);
    // A preface that is not one.
    let mut p = Http2Parser::new(Role::Server);
    let mut stats = ParseStats::default();
    let chunk = Chunk {
        dir: Direction::Ingress,
        ts_ns: 1,
        tid: 1,
        data: b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n",
        len: 24,
        tail: &[],
    };
    p.feed(&chunk, &mut Vec::new(), &mut stats);
    assert_eq!(stats.malformed, 1);
    // A header block over the bound.
    let mut c = Conn::new(Role::Server);
    c.client(&frame(1, 0, 1, &vec![0u8; MAX_BLOCK + 1]));
    assert_eq!(c.stats.malformed, 1);
}

#[test]
fn reset_streams_are_dropped_or_ended_and_closes_count_the_rest() {
    let mut c = Conn::new(Role::Server);
    for id in [1, 3, 5] {
        let f = c.get(id, "/r");
        c.client(&f);
    }
    // Stream 1: reset before any response; stream 3: reset after its headers.
    c.client(&frame(3, 0, 1, &8u32.to_be_bytes()));
    let r = c.response_frame(3, 0, &[(":status", "200")]);
    c.server(&r);
    c.server(&frame(3, 0, 3, &8u32.to_be_bytes()));
    assert_eq!(c.out.len(), 1);
    assert_eq!(http(&c.out[0]).status, 200);
    assert_eq!(c.stats.dropped_requests, 1);
    c.p.close(c.ts, &mut c.out, &mut c.stats);
    assert_eq!(c.stats.dropped_requests, 2, "stream 5 never answered");
}

#[test]
fn open_streams_are_bounded() {
    let mut c = Conn::new(Role::Client);
    for i in 0..=MAX_STREAMS as u32 {
        let f = c.get(2 * i + 1, "/s");
        c.client(&f);
    }
    assert_eq!(c.stats.dropped_requests, 1);
    let r = c.response_frame(1, END_STREAM, &[(":status", "200"), ("grpc-status", "0")]);
    c.server(&r);
    assert_eq!(c.out.len(), 1);
}

#[test]
fn informational_responses_and_table_size_settings_are_followed() {
    let mut c = Conn::new(Role::Client);
    // The server lets the client's encoder use no dynamic table at all.
    c.server(&settings(&[(1, 0)]));
    c.client_enc.set_max_table_size(0);
    let f = c.get(1, "/slow");
    c.client(&f);
    let early = c.response_frame(1, 0, &[(":status", "103"), ("link", "</s.css>")]);
    c.server(&early);
    let r = c.response_frame(1, END_STREAM, &[(":status", "200")]);
    c.server(&r);
    assert_eq!(c.out.len(), 1, "{:?}", c.stats);
    assert_eq!(http(&c.out[0]).status, 200);
}

#[test]
fn golden_fixtures_recorded_from_real_servers() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol/http2/fixtures");
    crate::protocol::testutil::check_golden_dir(&dir, &|role| Box::new(Http2Parser::new(role)));
}

/// A Go program's report that `tid` serves (or made) `stream`, at time 0.
fn report(role: Role, stream: u32, tid: u32) -> StreamReport {
    StreamReport { role, stream, tid, ts_ns: 0 }
}

/// A Go HTTP/2 server reads every request on one goroutine and runs each
/// stream's handler on another: the handler's key replaces the reader's for
/// that stream alone, and a stream not open is refused.
#[test]
fn a_stream_served_on_another_thread_carries_that_thread() {
    let mut c = Conn::new(Role::Server);
    for id in [1, 3] {
        let req = c.get(id, "/a");
        c.client(&req);
    }
    assert!(c.p.stream_on(&report(Role::Server, 3, 0x8000_0042)));
    assert!(!c.p.stream_on(&report(Role::Server, 5, 0x8000_0043)), "no request on stream 5");
    for id in [1, 3] {
        let resp = c.response_frame(id, END_STREAM, &[(":status", "200")]);
        c.server(&resp);
    }
    let tids: Vec<(u32, u32)> = c.out.iter().map(|e| (http(e).stream, e.tid)).collect();
    assert_eq!(tids, [(1, 7), (3, 0x8000_0042)]);
    assert!(!c.p.stream_on(&report(Role::Server, 3, 0x8000_0042)), "stream 3 is over");
    assert!(!c.p.stream_on(&report(Role::Client, 1, 0x8000_0042)), "a client's report on a server connection");
}

/// grpc-go's client writes every call on one goroutine and tells each
/// call's caller on its own (before or after the request is written): the
/// caller's key replaces the writer's for that stream alone. A caller told
/// for a stream whose request is never seen is dropped once a later stream
/// is written (a client writes its streams in order); a stream already
/// over, or a server's report, is refused.
#[test]
fn a_client_call_carries_the_thread_that_made_it() {
    let mut c = Conn::new(Role::Client);
    assert!(c.p.stream_on(&report(Role::Client, 3, 0x8000_0003)), "told before its request");
    assert!(c.p.stream_on(&report(Role::Client, 5, 0x8000_0005)), "one whose request is lost");
    for id in [1, 3, 7] {
        let req = c.get(id, "/a");
        c.client(&req);
    }
    assert!(c.p.stream_on(&report(Role::Client, 7, 0x8000_0007)), "told after its request");
    assert!(!c.p.stream_on(&report(Role::Server, 1, 0x8000_0001)), "a server's report on a client connection");
    assert!(!c.p.stream_on(&report(Role::Client, 5, 0x8000_0005)), "stream 5 is behind the last request");
    for id in [1, 3, 7] {
        let resp = c.response_frame(id, END_STREAM, &[(":status", "200")]);
        c.server(&resp);
    }
    let tids: Vec<(u32, u32)> = c.out.iter().map(|e| (http(e).stream, e.tid)).collect();
    assert_eq!(tids, [(1, 7), (3, 0x8000_0003), (7, 0x8000_0007)]);
    assert!(!c.p.stream_on(&report(Role::Client, 7, 0x8000_0007)), "stream 7 is over");
    // Stream 5's caller went when stream 7 was written: a request on 5 now
    // (impossible from a real client) keeps its writer.
    let req = c.get(5, "/late");
    c.client(&req);
    let resp = c.response_frame(5, END_STREAM, &[(":status", "200")]);
    c.server(&resp);
    assert_eq!((http(&c.out[3]).stream, c.out[3].tid), (5, 7));
}
