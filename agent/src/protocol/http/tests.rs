//! Parser-level tests: golden fixtures, detection, bounds, loss and garbage.

use std::path::Path;

use super::*;
use crate::protocol::testutil::{OwnedChunk, captured, check_golden_dir, run};
use crate::protocol::{Chunk, ConnMeta, Exchange, ParseStats, Privacy, Record, StreamParser};

fn parser(role: Role) -> Box<dyn StreamParser> {
    Box::new(HttpParser::new(role))
}

fn chunk(dir: Direction, ts: u64, data: &[u8]) -> OwnedChunk {
    OwnedChunk { dir, ts_ns: ts, tid: 1, data: data.to_vec(), len: data.len(), tail: Vec::new() }
}

fn http(e: &Exchange) -> &HttpExchange {
    match &e.record {
        Record::Http(h) => h,
        other => panic!("not http: {other:?}"),
    }
}

#[test]
fn golden_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol/http/fixtures");
    check_golden_dir(&dir, &parser);
}

#[test]
fn detect_request_and_status_lines_by_direction() {
    use Direction::{Egress, Ingress};
    assert_eq!(detect(Ingress, b"GET / HTTP/1.1\r\n"), Detection::Yes(Role::Server));
    assert_eq!(detect(Egress, b"POST /x HTTP/1.1\r\n"), Detection::Yes(Role::Client));
    assert_eq!(detect(Egress, b"HTTP/1.1 200 OK\r\n"), Detection::Yes(Role::Server));
    assert_eq!(detect(Ingress, b"HTTP/1.0 404 Not Found\r\n"), Detection::Yes(Role::Client));
    assert_eq!(detect(Ingress, b"OPTIONS * HTTP/1.1\r\n"), Detection::Yes(Role::Server));
}

#[test]
fn detect_needs_more_for_short_prefixes() {
    for p in [&b""[..], b"G", b"GE", b"GET", b"DELE", b"H", b"HT", b"HTTP/1.", b"HTTP/1.1"] {
        assert_eq!(detect(Direction::Ingress, p), Detection::NeedMore, "{p:?}");
    }
}

#[test]
fn detect_rejects_other_protocols_and_near_misses() {
    let pg_startup = b"\x00\x00\x00\x4f\x00\x03\x00\x00user\x00postgres\x00";
    let pg_ssl = b"\x00\x00\x00\x08\x04\xd2\x16\x2f";
    let tls = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03";
    let resp = b"*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n";
    for p in [
        &pg_startup[..],
        pg_ssl,
        tls,
        resp,
        b"+OK\r\n",
        b"get / HTTP/1.1",
        b"GETX / HTTP/1.1",
        b"HTTP/2 200",
        b"PRI * HTTP/2.0",
    ] {
        assert_eq!(detect(Direction::Ingress, p), Detection::No, "{p:?}");
        assert_eq!(detect(Direction::Egress, p), Detection::No, "{p:?}");
    }
}

#[test]
fn oversized_header_block_is_counted_and_the_stream_recovers() {
    let mut big = b"GET /big HTTP/1.1\r\nHost: h\r\n".to_vec();
    while big.len() <= 70 * 1024 {
        big.extend_from_slice(
            b"X-Filler: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        );
    }
    big.extend_from_slice(b"\r\n");
    let ok = b"GET /ok HTTP/1.1\r\nHost: h\r\n\r\n";
    let resp = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
    // Whole, and in 1000-byte writes (the buffered path).
    for piece in [big.len(), 1000] {
        let mut chunks: Vec<OwnedChunk> = big.chunks(piece).map(|c| chunk(Direction::Ingress, 1, c)).collect();
        chunks.push(chunk(Direction::Ingress, 2, ok));
        chunks.push(chunk(Direction::Egress, 3, resp));
        let (out, stats) = run(&mut HttpParser::new(Role::Server), &chunks, None);
        assert!(stats.malformed >= 1, "{stats:?}");
        assert_eq!(out.len(), 1, "{stats:?}");
        assert_eq!(http(&out[0]).path(), "/ok");
        assert_eq!(out[0].start_ns, 2);
    }
}

#[test]
fn pipelining_beyond_the_queue_cap_keeps_pairs_right() {
    let n = MAX_IN_FLIGHT + 6;
    let mut reqs = Vec::new();
    let mut resps = Vec::new();
    for i in 0..n {
        reqs.extend_from_slice(format!("GET /r{i} HTTP/1.1\r\nHost: h\r\n\r\n").as_bytes());
        resps.extend_from_slice(
            format!("HTTP/1.1 200 OK\r\nContent-Type: t{i}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
    }
    let chunks = [chunk(Direction::Ingress, 1, &reqs), chunk(Direction::Egress, 2, &resps)];
    let (out, stats) = run(&mut HttpParser::new(Role::Server), &chunks, Some(3));
    assert_eq!(out.len(), MAX_IN_FLIGHT);
    assert_eq!(stats.dropped_requests, 6);
    for e in &out {
        let h = http(e);
        assert_eq!(Some(&h.path()[2..]), h.response_content_type.as_deref().map(|t| &t[1..]), "mis-paired");
    }
}

#[test]
fn request_stream_loss_never_pairs_a_response_with_a_later_request() {
    // /a is in flight when garbage arrives; /c follows. The response to /a
    // (and maybe to a request lost in the garbage) must not go to /c.
    let chunks = [
        chunk(Direction::Ingress, 1, b"GET /a HTTP/1.1\r\n\r\n"),
        chunk(Direction::Ingress, 2, b"\x00\x01garbage\xff"),
        chunk(Direction::Ingress, 3, b"GET /c HTTP/1.1\r\n\r\n"),
        chunk(Direction::Egress, 4, b"HTTP/1.1 200 OK\r\nContent-Type: a\r\nContent-Length: 0\r\n\r\n"),
        chunk(Direction::Egress, 5, b"HTTP/1.1 200 OK\r\nContent-Type: c\r\nContent-Length: 0\r\n\r\n"),
        // Quiet again: the next request pairs normally.
        chunk(Direction::Ingress, 6, b"GET /d HTTP/1.1\r\n\r\n"),
        chunk(Direction::Egress, 7, b"HTTP/1.1 200 OK\r\nContent-Type: d\r\nContent-Length: 0\r\n\r\n"),
    ];
    let (out, stats) = run(&mut HttpParser::new(Role::Server), &chunks, Some(8));
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(http(&out[0]).path(), "/d");
    assert_eq!(http(&out[0]).response_content_type.as_deref(), Some("d"));
    assert_eq!(stats.dropped_requests, 2);
    assert_eq!(stats.malformed, 1);
}

#[test]
fn requests_without_response_are_dropped_at_close() {
    let chunks = [chunk(Direction::Egress, 1, b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n")];
    let (out, stats) = run(&mut HttpParser::new(Role::Client), &chunks, Some(2));
    assert!(out.is_empty());
    assert_eq!(stats.dropped_requests, 2);
}

#[test]
fn response_without_request_is_counted_not_emitted() {
    let chunks = [
        chunk(Direction::Egress, 1, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"),
        chunk(Direction::Ingress, 2, b"GET /x HTTP/1.1\r\n\r\n"),
        chunk(Direction::Egress, 3, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nxyz"),
    ];
    let (out, stats) = run(&mut HttpParser::new(Role::Server), &chunks, None);
    assert_eq!(stats.unmatched_responses, 1);
    assert_eq!(out.len(), 1);
    assert_eq!(http(&out[0]).response_body_size, Some(3));
}

#[test]
fn connect_tunnel_makes_the_connection_opaque() {
    let chunks = [
        chunk(Direction::Egress, 1, b"CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n"),
        chunk(Direction::Ingress, 2, b"HTTP/1.1 200 Connection Established\r\n\r\n"),
        chunk(Direction::Egress, 3, b"GET /inside HTTP/1.1\r\n\r\n"),
        chunk(Direction::Ingress, 4, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"),
    ];
    let (out, stats) = run(&mut HttpParser::new(Role::Client), &chunks, Some(5));
    assert_eq!(out.len(), 1);
    assert_eq!(http(&out[0]).method, Method::Connect);
    assert_eq!(stats, ParseStats { exchanges: 1, ..ParseStats::default() });
}

/// xorshift64*: deterministic pseudo-random numbers for the garbage test.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[test]
fn random_garbage_and_mangled_http_never_panic_and_stay_bounded() {
    const PIECES: [&[u8]; 12] = [
        b"GET /a HTTP/1.1\r\nHost: h\r\n\r\n",
        b"POST /p HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
        b"PUT /c HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\nT: 1\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil close",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
        b"\r\n",
        b"GE",
        b"ffff\r\n",
        b"HTTP/1.1 204 No Content\r\n\r\n",
    ];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let privacy = Privacy { capture_url_query: true, capture_headers: vec!["host".into()], ..Privacy::default() };
    for round in 0..300 {
        for role in [Role::Server, Role::Client] {
            let mut p = HttpParser::new(role);
            let mut out = Vec::new();
            let mut stats = ParseStats::default();
            for step in 0..40u64 {
                let mut data = PIECES[rng.below(PIECES.len())].to_vec();
                match rng.below(4) {
                    0 => data = (0..rng.below(64)).map(|_| rng.next() as u8).collect(),
                    1 if !data.is_empty() => {
                        let i = rng.below(data.len());
                        data[i] = rng.next() as u8;
                    }
                    2 if !data.is_empty() => data.truncate(rng.below(data.len())),
                    _ => {}
                }
                let dir = if rng.below(2) == 0 { Direction::Ingress } else { Direction::Egress };
                let len = data.len() + if rng.below(10) == 0 { rng.below(100_000) } else { 0 };
                p.feed(&Chunk { dir, ts_ns: step, tid: round, data: &data, len, tail: &[] }, &mut out, &mut stats);
                assert!(p.in_flight() <= MAX_IN_FLIGHT + 1);
                assert!(p.buffered() <= head::MAX_HEAD);
            }
            p.close(1000, &mut out, &mut stats);
            assert_eq!(stats.exchanges, out.len() as u64);
            for e in &out {
                assert!(e.start_ns <= e.end_ns, "{e:?}");
                let _ = e.record.describe(role, &ConnMeta::default(), &privacy);
            }
        }
    }
}

/// Go's net/http server reads the first byte of a keep-alive connection's
/// next request on a background goroutine and the rest on the goroutine
/// that serves it: the request starts at the first byte and belongs to the
/// one that completed its head.
#[test]
fn a_request_belongs_to_the_thread_that_completed_its_head() {
    use Direction::{Egress, Ingress};
    let (background, serving) = (0x8000_0001, 0x8000_0002);
    let chunks = [
        OwnedChunk { tid: background, ..chunk(Ingress, 10, b"G") },
        OwnedChunk { tid: serving, ..chunk(Ingress, 20, b"ET /x HTTP/1.1\r\nHost: a\r\n\r\n") },
        OwnedChunk { tid: serving, ..chunk(Egress, 30, b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n") },
    ];
    let (out, _) = run(&mut *parser(Role::Server), &chunks, None);
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!((out[0].start_ns, out[0].end_ns, out[0].tid), (10, 30, serving));
}

/// An h2c upgrade whose `HTTP2-Settings` let the server's encoder use an
/// 8 KiB header table: the server's first header block resizes to it and
/// is decoded; without that header the same block is beyond what the
/// client allowed (malformed).
#[test]
fn h2c_upgrade_takes_the_clients_http2_settings() {
    use crate::protocol::http2::encode_frame as frame;
    let request = |settings: &str| {
        format!("GET /up HTTP/1.1\r\nHost: h\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n{settings}\r\n")
    };
    let mut response = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: h2c\r\n\r\n".to_vec();
    response.extend(frame(4, 0, 0, &[]));
    // Table size update to 8192, then `:status 200`; END_STREAM | END_HEADERS.
    response.extend(frame(1, 0x5, 1, &[0x3f, 0xe1, 0x3f, 0x88]));
    for (settings, exchanges, malformed) in [("HTTP2-Settings: AAEAACAA\r\n", 1, 0), ("", 0, 1)] {
        let chunks =
            [chunk(Direction::Ingress, 1, request(settings).as_bytes()), chunk(Direction::Egress, 2, &response)];
        let (out, stats) = run(parser(Role::Server).as_mut(), &chunks, None);
        assert_eq!((out.len(), stats.malformed), (exchanges, malformed), "{settings:?}: {stats:?}");
        if let Some(e) = out.first() {
            assert_eq!((http(e).status, http(e).path(), http(e).stream), (200, "/up", 1));
        }
    }
}

#[test]
fn a_chunked_body_in_writes_larger_than_the_capture_ends_at_its_last_chunk() {
    // Go's net/http writes a chunked response in chunks of its 4 KiB
    // buffer, each write a few bytes over a 4 KiB capture; Python's
    // http.server writes what the handler writes.
    let piece = [b"1000\r\n".to_vec(), vec![b'j'; 4096], b"\r\n".to_vec()].concat();
    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
    for (last, what) in [
        (b"0\r\n\r\n".to_vec(), "last chunk alone"),
        ([piece.clone(), b"0\r\n\r\n".to_vec()].concat(), "last chunk in the tail"),
    ] {
        for tail in [256, 0] {
            let mut chunks = vec![
                chunk(Direction::Egress, 10, b"GET /big HTTP/1.1\r\nHost: a\r\n\r\n"),
                chunk(Direction::Ingress, 20, head),
            ];
            for i in 0..5 {
                chunks.push(captured(Direction::Ingress, 30 + i, &piece, 4096, tail));
            }
            chunks.push(captured(Direction::Ingress, 50, &last, 4096, tail));
            chunks.push(chunk(Direction::Egress, 60, b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n"));
            chunks.push(chunk(Direction::Ingress, 70, b"HTTP/1.1 204 No Content\r\n\r\n"));
            let (exs, stats) = run(parser(Role::Client).as_mut(), &chunks, None);
            let got: Vec<_> = exs.iter().map(|e| (http(e).path(), e.end_ns)).collect();
            if tail > 0 {
                assert_eq!(got, vec![("/big", 50), ("/next", 70)], "{what}");
                assert_eq!((stats.truncated, stats.resyncs), (0, 0), "{what}: in sync throughout");
                let body = 4096 * (5 + u64::from(last.len() > 5));
                assert_eq!(http(&exs[0]).response_body_size, Some(body), "{what}");
            } else {
                // Without the tail the chunk framing is lost at the first
                // cut: the response is ended there, its length unknown.
                assert_eq!(got, vec![("/big", 30), ("/next", 70)], "{what}");
                assert_eq!(stats.truncated, 1, "{what}");
                assert_eq!(http(&exs[0]).response_body_size, None, "{what}");
            }
        }
    }
}
