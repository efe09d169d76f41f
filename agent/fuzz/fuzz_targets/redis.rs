//! Feeds arbitrary bytes to the Redis parser as a chunk sequence, for both
//! roles, then closes and describes every exchange. Must never panic.
//!
//! Input layout: repeated records of `[ctl: u8][len: u8][bytes; len]`.
//! `ctl` bit 0: direction; bit 1: mark part of the chunk as uncaptured
//! (`len` grows by `ctl >> 2` times 97 bytes), of which the last `len % 7`
//! captured bytes (at most all of them) are the call's last bytes, past the
//! gap (`Chunk::tail`).
#![no_main]
use kspan::protocol::redis::{RedisParser, describe};
use kspan::protocol::{Chunk, ConnMeta, Direction, ParseStats, Privacy, Record, Role, StreamParser};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for role in [Role::Client, Role::Server] {
        let mut p = RedisParser::new(role);
        let mut out = Vec::new();
        let mut stats = ParseStats::default();
        let mut rest = data;
        let mut ts = 0u64;
        while let [ctl, len, tail @ ..] = rest {
            let n = (*len as usize).min(tail.len());
            let (bytes, next) = tail.split_at(n);
            rest = next;
            ts += 1;
            let dir = if ctl & 1 == 0 { Direction::Egress } else { Direction::Ingress };
            let missing = if ctl & 2 != 0 { usize::from(ctl >> 2) * 97 } else { 0 };
            let t = if missing > 0 { (*len as usize % 7).min(bytes.len()) } else { 0 };
            let (head, tail) = bytes.split_at(bytes.len() - t);
            let chunk = Chunk { dir, ts_ns: ts, tid: 1, data: head, len: head.len() + missing + t, tail };
            p.feed(&chunk, &mut out, &mut stats);
        }
        p.close(ts + 1, &mut out, &mut stats);
        assert_eq!(stats.exchanges as usize, out.len());
        let privacy = Privacy { redis_values: true, ..Privacy::default() };
        for e in &out {
            assert!(e.end_ns >= e.start_ns);
            if let Record::Redis(r) = &e.record {
                let _ = describe(r, role, &ConnMeta::default(), &privacy);
                let _ = describe(r, role, &ConnMeta::default(), &Privacy::default());
            }
        }
    }
});
