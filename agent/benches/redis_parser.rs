//! Redis parser throughput on a pipelined SET/GET stream (redis-benchmark
//! -P style): the command side alone, and commands + replies paired.
//!
//! `cargo bench -p kspan --bench redis_parser`

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kspan::protocol::redis::RedisParser;
use kspan::protocol::{Chunk, Direction, ParseStats, Role, StreamParser};

/// Commands per pipelined write (and replies per read).
const BATCH: usize = 256;
const BATCHES: usize = 8;

fn resp(args: &[&[u8]], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// One batch of alternating SET/GET commands and their replies.
fn batch() -> (Vec<u8>, Vec<u8>) {
    let (mut cmds, mut replies) = (Vec::new(), Vec::new());
    for i in 0..BATCH {
        let key = format!("key:{i:012}");
        if i % 2 == 0 {
            resp(&[b"SET", key.as_bytes(), b"xxx"], &mut cmds);
            replies.extend_from_slice(b"+OK\r\n");
        } else {
            resp(&[b"GET", key.as_bytes()], &mut cmds);
            replies.extend_from_slice(b"$3\r\nxxx\r\n");
        }
    }
    (cmds, replies)
}

fn chunk(dir: Direction, ts: u64, data: &[u8]) -> Chunk<'_> {
    Chunk { dir, ts_ns: ts, tid: 1, data, len: data.len() }
}

fn bench(c: &mut Criterion) {
    let (cmds, replies) = batch();
    let mut g = c.benchmark_group("redis");
    g.throughput(Throughput::Elements((BATCH * BATCHES) as u64));

    g.bench_function("command_stream", |b| {
        let mut out = Vec::new();
        let mut stats = ParseStats::default();
        let mut p = RedisParser::new(Role::Client);
        b.iter(|| {
            for i in 0..BATCHES {
                p.feed(&chunk(Direction::Egress, i as u64, black_box(&cmds)), &mut out, &mut stats);
                // Drop the waiting commands so the queue never overflows.
                p.close(i as u64, &mut out, &mut stats);
            }
            black_box(&stats);
        });
    });

    g.bench_function("commands_and_replies", |b| {
        let mut out = Vec::with_capacity(BATCH);
        let mut stats = ParseStats::default();
        let mut p = RedisParser::new(Role::Client);
        b.iter(|| {
            for i in 0..BATCHES {
                let ts = 2 * i as u64;
                p.feed(&chunk(Direction::Egress, ts, black_box(&cmds)), &mut out, &mut stats);
                p.feed(&chunk(Direction::Ingress, ts + 1, black_box(&replies)), &mut out, &mut stats);
                assert_eq!(out.len(), BATCH);
                out.clear();
            }
        });
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
