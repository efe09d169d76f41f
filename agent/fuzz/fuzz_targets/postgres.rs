//! Fuzzes the PostgreSQL parser in both roles (chunking, truncation and
//! direction chosen by the input), `describe` on every exchange, and the SQL
//! sanitiser/summariser on the raw input.
//!
//! Input layout: a sequence of records `[ctl, n, n bytes of data]` where
//! `ctl` bit 0 = direction (0 egress, 1 ingress), bit 1 = the chunk lost
//! `ctl >> 2` bytes after its data (capture truncation), of which the last
//! `n % 7` (at most all of them) are captured after all: the chunk's tail,
//! taken from the end of its data.
#![no_main]
use libfuzzer_sys::fuzz_target;

use kspan::protocol::postgres::{PgParser, describe, sql};
use kspan::protocol::{Chunk, ConnMeta, Direction, ParseStats, Privacy, Record, Role, StreamParser};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = sql::sanitize(&text);
    let _ = sql::summarize(&text);

    let conn =
        ConnMeta { local: "127.0.0.1:5432".parse().ok(), peer: "127.0.0.1:40000".parse().ok(), tls: false, unix: None };
    for role in [Role::Client, Role::Server] {
        let mut parser = PgParser::new(role);
        let mut out = Vec::new();
        let mut stats = ParseStats::default();
        let mut rest = data;
        let mut ts = 0u64;
        while let [ctl, n, tail @ ..] = rest {
            let take = (*n as usize).min(tail.len());
            let (chunk, next) = tail.split_at(take);
            let dir = if ctl & 1 == 0 { Direction::Egress } else { Direction::Ingress };
            let missing = if ctl & 2 != 0 { usize::from(ctl >> 2) } else { 0 };
            let t = (usize::from(*n) % 7).min(missing).min(chunk.len());
            let (head, tail) = chunk.split_at(chunk.len() - t);
            ts += 1;
            parser.feed(&Chunk { dir, ts_ns: ts, tid: 1, data: head, len: head.len() + missing, tail }, &mut out, &mut stats);
            rest = next;
        }
        parser.close(ts + 1, &mut out, &mut stats);
        assert_eq!(stats.exchanges, out.len() as u64);
        for e in &out {
            assert!(e.end_ns >= e.start_ns);
            if let Record::Postgres(r) = &e.record {
                let d = describe(r, role, &conn, &Privacy::default());
                assert!(!d.name.is_empty());
            }
        }
    }
});
