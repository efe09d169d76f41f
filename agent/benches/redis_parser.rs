//! Redis parser throughput on a pipelined SET/GET stream (redis-benchmark
//! -P style): the command side alone, commands + replies paired, and the
//! describe step (exchange -> span name and attributes) per command.
//!
//! Times are the benchmark thread's CPU time, not wall time: the machine is
//! shared, and wall time mostly measures the neighbours' builds.
//!
//! `cargo bench -p kspan --bench redis_parser`

use std::hint::black_box;
use std::time::Duration;

use criterion::measurement::{Measurement, ValueFormatter, WallTime};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kspan::protocol::redis::RedisParser;
use kspan::protocol::{Chunk, ConnMeta, Direction, ParseStats, Privacy, Role, StreamParser};

/// CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`).
struct ThreadCpu;

fn thread_cpu_now() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the call's duration.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

impl Measurement for ThreadCpu {
    type Intermediate = Duration;
    type Value = Duration;

    fn start(&self) -> Duration {
        thread_cpu_now()
    }
    fn end(&self, start: Duration) -> Duration {
        thread_cpu_now().saturating_sub(start)
    }
    fn add(&self, a: &Duration, b: &Duration) -> Duration {
        *a + *b
    }
    fn zero(&self) -> Duration {
        Duration::ZERO
    }
    fn to_f64(&self, v: &Duration) -> f64 {
        v.as_nanos() as f64
    }
    fn formatter(&self) -> &dyn ValueFormatter {
        // Same unit (nanoseconds) as wall time, so its formatter fits.
        WallTime.formatter()
    }
}

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
    Chunk { dir, ts_ns: ts, tid: 1, data, len: data.len(), tail: &[] }
}

fn bench(c: &mut Criterion<ThreadCpu>) {
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

    g.bench_function("describe", |b| {
        let mut out = Vec::with_capacity(BATCH);
        let mut stats = ParseStats::default();
        let mut p = RedisParser::new(Role::Client);
        for i in 0..BATCHES {
            let ts = 2 * i as u64;
            p.feed(&chunk(Direction::Egress, ts, &cmds), &mut out, &mut stats);
            p.feed(&chunk(Direction::Ingress, ts + 1, &replies), &mut out, &mut stats);
        }
        assert_eq!(out.len(), BATCH * BATCHES);
        let conn = ConnMeta {
            local: "10.0.0.1:40000".parse().ok(),
            peer: "10.0.0.2:6379".parse().ok(),
            tls: false,
            unix: None,
        };
        let privacy = Privacy::default();
        b.iter(|| {
            for e in black_box(&out) {
                black_box(e.record.describe(e.role, &conn, &privacy));
            }
        });
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().with_measurement(ThreadCpu);
    targets = bench
}
criterion_main!(benches);
