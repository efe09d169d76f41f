//! Feeds arbitrary chunk sequences to the HTTP/1.x parser in both roles.
//!
//! Input: a sequence of pieces `[ctl, len, data[..len]]`. `ctl` bit 0 picks
//! the direction, bit 1 marks the piece as partly uncaptured (the real length
//! is `len + ctl as usize * 64`), bits 2.. advance the timestamp. Then the
//! connection closes and every exchange is described.
#![no_main]
use kspan::protocol::http::{HttpParser, detect, template_route};
use kspan::protocol::{Chunk, ConnMeta, Direction, ParseStats, Privacy, Role, StreamParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: &[u8]| {
    let privacy = Privacy {
        capture_url_query: true,
        capture_headers: vec!["authorization".into(), "x-id".into()],
        ..Privacy::default()
    };
    let conn = ConnMeta {
        local: "127.0.0.1:80".parse().ok(),
        peer: "127.0.0.1:5000".parse().ok(),
    };
    for role in [Role::Server, Role::Client] {
        let mut parser = HttpParser::new(role);
        let mut out = Vec::new();
        let mut stats = ParseStats::default();
        let mut rest = input;
        let mut ts = 0u64;
        while let [ctl, len, tail @ ..] = rest {
            let n = (*len as usize).min(tail.len());
            let (data, next) = tail.split_at(n);
            rest = next;
            let dir = if ctl & 1 == 0 {
                Direction::Ingress
            } else {
                Direction::Egress
            };
            let missing = if ctl & 2 != 0 { *ctl as usize * 64 } else { 0 };
            ts += u64::from(ctl >> 2);
            let _ = detect(dir, data);
            parser.feed(
                &Chunk {
                    dir,
                    ts_ns: ts,
                    tid: 1,
                    data,
                    len: n + missing,
                },
                &mut out,
                &mut stats,
            );
        }
        parser.close(ts + 1, &mut out, &mut stats);
        assert_eq!(stats.exchanges, out.len() as u64);
        for e in &out {
            let d = e.record.describe(role, &conn, &privacy);
            assert!(
                d.attributes
                    .iter()
                    .all(|(k, v)| k != "http.request.header.authorization"
                        || v.as_str() == Some("REDACTED"))
            );
        }
    }
    if let Ok(s) = std::str::from_utf8(input) {
        let _ = template_route(s);
    }
});
