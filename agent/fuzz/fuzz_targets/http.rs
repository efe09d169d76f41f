//! Feeds arbitrary chunk sequences to the HTTP/1.x parser in both roles.
//!
//! Input: a sequence of pieces `[ctl, len, data[..len]]`. `ctl` bit 0 picks
//! the direction, bit 1 marks the piece as partly uncaptured (the real length
//! is `len + ctl as usize * 64`, and its last `len % 5` captured bytes are
//! the call's last bytes, past the gap: `Chunk::tail`), bits 2.. advance the
//! timestamp. Then the
//! connection closes and every exchange is described. The same input fed one
//! captured byte at a time must give the same exchanges, up to where an
//! HTTP/2 connection upgraded from HTTP/1.1 (h2c) lost uncaptured bytes it
//! could not skip (from there on the HTTP/2 parser takes that direction up
//! again at a read or write of whole frames, which depends on how the bytes
//! were cut).
#![no_main]
use kspan::protocol::http::{HttpParser, detect, template_route};
use kspan::protocol::{Chunk, ConnMeta, Direction, Exchange, ParseStats, Privacy, Record, Role, StreamParser};
use libfuzzer_sys::fuzz_target;

struct Piece<'a> {
    dir: Direction,
    ts: u64,
    data: &'a [u8],
    missing: usize,
    tail: &'a [u8],
}

fn pieces(mut rest: &[u8]) -> Vec<Piece<'_>> {
    let mut v = Vec::new();
    let mut ts = 0u64;
    while let [ctl, len, tail @ ..] = rest {
        let n = (*len as usize).min(tail.len());
        let (data, next) = tail.split_at(n);
        rest = next;
        let dir = if ctl & 1 == 0 { Direction::Ingress } else { Direction::Egress };
        let missing = if ctl & 2 != 0 { *ctl as usize * 64 } else { 0 };
        let t = if missing > 0 { (*len as usize % 5).min(data.len()) } else { 0 };
        let (data, tail) = data.split_at(data.len() - t);
        ts += u64::from(ctl >> 2);
        v.push(Piece { dir, ts, data, missing: missing + t, tail });
    }
    v
}

/// The exchanges, the counters, and the time of the first piece after which
/// an upgraded connection had lost bytes (see the module comment).
fn run(role: Role, pieces: &[Piece<'_>], bytewise: bool) -> (Vec<Exchange>, ParseStats, Option<u64>) {
    let mut parser = HttpParser::new(role);
    let mut out = Vec::new();
    let mut stats = ParseStats::default();
    let mut last = 0;
    let mut cut = None;
    for p in pieces {
        last = p.ts;
        let feed = |parser: &mut HttpParser, data: &[u8], len, out: &mut Vec<Exchange>, stats: &mut ParseStats| {
            let tail = if len > data.len() { p.tail } else { &[] };
            parser.feed(&Chunk { dir: p.dir, ts_ns: p.ts, tid: 1, data, len, tail }, out, stats)
        };
        if bytewise && p.missing == 0 {
            for b in p.data.chunks(1) {
                feed(&mut parser, b, 1, &mut out, &mut stats);
            }
        } else {
            feed(&mut parser, p.data, p.data.len() + p.missing, &mut out, &mut stats);
        }
        if cut.is_none() && parser.upgraded() && stats.truncated > 0 {
            cut = Some(p.ts);
        }
    }
    parser.close(last + 1, &mut out, &mut stats);
    (out, stats, cut)
}

fn key(e: &Exchange) -> (u64, u64, u32, Option<&kspan::protocol::http::HttpExchange>) {
    let Record::Http(h) = &e.record else {
        return (e.start_ns, e.end_ns, e.tid, None);
    };
    (e.start_ns, e.end_ns, e.tid, Some(h))
}

fuzz_target!(|input: &[u8]| {
    let privacy = Privacy {
        capture_url_query: true,
        capture_headers: vec!["authorization".into(), "x-id".into()],
        ..Privacy::default()
    };
    let conn =
        ConnMeta { local: "127.0.0.1:80".parse().ok(), peer: "127.0.0.1:5000".parse().ok(), tls: false, unix: None };
    let pieces = pieces(input);
    for p in &pieces {
        let _ = detect(p.dir, p.data);
    }
    for role in [Role::Server, Role::Client] {
        let (out, stats, cut) = run(role, &pieces, false);
        assert_eq!(stats.exchanges, out.len() as u64);
        for e in &out {
            let d = e.record.describe(role, &conn, &privacy);
            assert!(
                d.attributes
                    .iter()
                    .all(|(k, v)| k != "http.request.header.authorization" || v.as_str() == Some("REDACTED"))
            );
        }
        let (bytewise, _, cut_bytewise) = run(role, &pieces, true);
        assert_eq!(cut, cut_bytewise, "the same piece is cut whatever the chunking before it");
        let cut = cut.unwrap_or(u64::MAX);
        fn before(v: &[Exchange], cut: u64) -> Vec<(u64, u64, u32, Option<&kspan::protocol::http::HttpExchange>)> {
            v.iter().filter(|e| e.end_ns < cut).map(key).collect()
        }
        assert_eq!(before(&out, cut), before(&bytewise, cut), "chunking changed the exchanges");
    }
    if let Ok(s) = std::str::from_utf8(input) {
        let _ = template_route(s);
    }
});
