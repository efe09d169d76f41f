//! Test harness shared by the protocol parsers: golden fixtures (recorded
//! byte streams -> expected exchanges) and split-at-every-byte checks.
//!
//! Fixture format (`*.json` next to each parser, in `fixtures/`):
//! ```json
//! { "role": "server",                    // or "client": the traced side
//!   "conn": { "local": "10.0.0.1:80", "peer": "10.0.0.2:5555" },   // optional
//!   "chunks": [
//!     { "dir": "in",  "ts": 1000, "tid": 7, "text": "GET / HTTP/1.1\r\n\r\n" },
//!     { "dir": "out", "ts": 2000, "tid": 7, "hex": "4854..." , "len": 9000 }
//!   ],
//!   "close_ts": 3000 }                   // optional: connection closed then
//! ```
//! `dir` is seen from the traced process (`in` = it read, `out` = it wrote);
//! each chunk has `text` (JSON string, escapes allowed) or `hex`; `len`
//! (optional) is the real length when the capture was truncated, and
//! `tail_hex` (optional) the last bytes of those `len`, captured past the
//! gap (`Chunk::tail`).
//! The expected output lives in `<name>.expected.json`; run the tests with
//! `KSPAN_BLESS=1` to rewrite it after an intended change, then review the diff.

use std::path::Path;

use serde_json::{Value, json};

use super::{Chunk, ConnMeta, Direction, Exchange, ParseStats, Privacy, Role, StreamParser};
use crate::span::model::{AttrValue, Attributes};

/// One chunk of a fixture, owning its bytes.
#[derive(Clone, Debug)]
pub struct OwnedChunk {
    pub dir: Direction,
    pub ts_ns: u64,
    pub tid: u32,
    pub data: Vec<u8>,
    pub len: usize,
    /// The last bytes moved, within the uncaptured ones (`Chunk::tail`).
    pub tail: Vec<u8>,
}

impl OwnedChunk {
    pub fn as_chunk(&self) -> Chunk<'_> {
        Chunk { dir: self.dir, ts_ns: self.ts_ns, tid: self.tid, data: &self.data, len: self.len, tail: &self.tail }
    }
}

/// A parsed fixture file.
#[derive(Clone, Debug)]
pub struct Fixture {
    pub role: Role,
    pub conn: ConnMeta,
    pub chunks: Vec<OwnedChunk>,
    pub close_ts: Option<u64>,
}

fn hex_decode(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).expect("hex is ascii"), 16).expect("valid hex"))
        .collect()
}

/// Loads a fixture (panics on a malformed fixture: it is test input we own).
pub fn load(path: &Path) -> Fixture {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let role = match v["role"].as_str() {
        Some("server") => Role::Server,
        Some("client") => Role::Client,
        other => panic!("{}: bad role {other:?}", path.display()),
    };
    let conn = ConnMeta {
        local: v["conn"]["local"].as_str().map(|s| s.parse().expect("local addr")),
        peer: v["conn"]["peer"].as_str().map(|s| s.parse().expect("peer addr")),
        tls: v["conn"]["tls"].as_bool().unwrap_or(false),
        // Fixtures name a Unix socket as "unix": "/path" (leaked: tests only).
        unix: v["conn"]["unix"].as_str().map(|s| crate::protocol::UnixConn {
            name: Box::leak(s.to_owned().into_boxed_str()),
            ..Default::default()
        }),
    };
    let chunks = v["chunks"]
        .as_array()
        .expect("chunks array")
        .iter()
        .map(|c| {
            let dir = match c["dir"].as_str() {
                Some("in") => Direction::Ingress,
                Some("out") => Direction::Egress,
                other => panic!("{}: bad dir {other:?}", path.display()),
            };
            let data = match (c["text"].as_str(), c["hex"].as_str()) {
                (Some(t), _) => t.as_bytes().to_vec(),
                (None, Some(h)) => hex_decode(h),
                _ => panic!("{}: chunk needs text or hex", path.display()),
            };
            let len = c["len"].as_u64().map_or(data.len(), |l| l as usize);
            let tail = c["tail_hex"].as_str().map(hex_decode).unwrap_or_default();
            assert!(data.len() + tail.len() <= len, "{}: tail_hex needs a len past data and tail", path.display());
            OwnedChunk {
                dir,
                ts_ns: c["ts"].as_u64().unwrap_or(0),
                tid: c["tid"].as_u64().unwrap_or(1) as u32,
                data,
                len,
                tail,
            }
        })
        .collect();
    Fixture { role, conn, chunks, close_ts: v["close_ts"].as_u64() }
}

/// Feeds chunks to a fresh parser, then closes if asked; returns exchanges and stats.
pub fn run(parser: &mut dyn StreamParser, chunks: &[OwnedChunk], close_ts: Option<u64>) -> (Vec<Exchange>, ParseStats) {
    let mut out = Vec::new();
    let mut stats = ParseStats::default();
    for c in chunks {
        parser.feed(&c.as_chunk(), &mut out, &mut stats);
    }
    if let Some(ts) = close_ts {
        parser.close(ts, &mut out, &mut stats);
    }
    (out, stats)
}

/// Splits chunk `i` at byte `at` (both halves keep the chunk's timestamp;
/// uncaptured bytes stay with the second half).
pub fn split_at(chunks: &[OwnedChunk], i: usize, at: usize) -> Vec<OwnedChunk> {
    let mut v = Vec::with_capacity(chunks.len() + 1);
    v.extend_from_slice(&chunks[..i]);
    let c = &chunks[i];
    let (a, b) = c.data.split_at(at);
    v.push(OwnedChunk { data: a.to_vec(), len: a.len(), tail: Vec::new(), ..c.clone() });
    v.push(OwnedChunk { data: b.to_vec(), len: c.len - a.len(), ..c.clone() });
    v.extend_from_slice(&chunks[i + 1..]);
    v
}

/// `bytes` moved by one call, as the kernel captures them: a `head`-byte
/// prefix and, past the gap, the call's last `tail` bytes (`Chunk::tail`).
pub fn captured(dir: Direction, ts: u64, bytes: &[u8], head: usize, tail: usize) -> OwnedChunk {
    let head = head.min(bytes.len());
    let tail = tail.min(bytes.len() - head);
    OwnedChunk {
        dir,
        ts_ns: ts,
        tid: 1,
        data: bytes[..head].to_vec(),
        len: bytes.len(),
        tail: bytes[bytes.len() - tail..].to_vec(),
    }
}

/// Splits every chunk into one-byte chunks.
pub fn one_byte_chunks(chunks: &[OwnedChunk]) -> Vec<OwnedChunk> {
    let mut v = Vec::new();
    for c in chunks {
        if c.len != c.data.len() {
            v.push(c.clone());
            continue;
        }
        for b in &c.data {
            v.push(OwnedChunk { data: vec![*b], len: 1, ..c.clone() });
        }
    }
    v
}

fn attrs_json(a: &Attributes) -> Value {
    let mut m = serde_json::Map::new();
    for (k, v) in a.iter() {
        let v = match v {
            AttrValue::Str(s) => json!(s),
            AttrValue::Int(i) => json!(i),
            AttrValue::F64(f) => json!(f),
            AttrValue::Bool(b) => json!(b),
        };
        m.insert(k.to_owned(), v);
    }
    Value::Object(m)
}

/// Stable JSON of exchanges as the span stage would see them.
pub fn exchanges_json(exs: &[Exchange], conn: &ConnMeta, privacy: &Privacy) -> Value {
    Value::Array(
        exs.iter()
            .map(|e| {
                let d = e.record.describe(e.role, conn, privacy);
                json!({
                    "role": format!("{:?}", e.role),
                    "start_ns": e.start_ns,
                    "end_ns": e.end_ns,
                    "tid": e.tid,
                    "name": d.name,
                    "status": format!("{:?}", d.status.code),
                    "status_message": d.status.message,
                    "attributes": attrs_json(&d.attributes),
                    "private": attrs_json(&d.private),
                    "traceparent": d.traceparent,
                })
            })
            .collect(),
    )
}

fn stats_json(s: &ParseStats) -> Value {
    json!({
        "exchanges": s.exchanges, "malformed": s.malformed, "truncated": s.truncated,
        "resyncs": s.resyncs, "unmatched_responses": s.unmatched_responses,
        "dropped_requests": s.dropped_requests,
    })
}

/// Runs every `*.json` fixture (not `*.expected.json`) in `dir` through a fresh
/// parser from `make`, compares with the expected file (or rewrites it when
/// `KSPAN_BLESS=1`), and checks that splitting any chunk at any byte, and
/// feeding one byte at a time, yields the same exchanges.
pub fn check_golden_dir(dir: &Path, make: &dyn Fn(Role) -> Box<dyn StreamParser>) {
    let privacy = Privacy::default();
    let bless = std::env::var_os("KSPAN_BLESS").is_some_and(|v| v == "1");
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json") && !p.to_string_lossy().ends_with(".expected.json"))
        .collect();
    entries.sort();
    assert!(!entries.is_empty(), "no fixtures in {}", dir.display());
    for path in entries {
        let fx = load(&path);
        let (exs, stats) = run(make(fx.role).as_mut(), &fx.chunks, fx.close_ts);
        let got = json!({ "exchanges": exchanges_json(&exs, &fx.conn, &privacy), "stats": stats_json(&stats) });
        let expected_path = path.with_extension("expected.json");
        if bless {
            let text = serde_json::to_string_pretty(&got).expect("json") + "\n";
            std::fs::write(&expected_path, text).expect("write expected");
        } else {
            let text = std::fs::read_to_string(&expected_path)
                .unwrap_or_else(|e| panic!("{}: {e} (run with KSPAN_BLESS=1 to create it)", expected_path.display()));
            let want: Value = serde_json::from_str(&text).expect("expected json");
            assert_eq!(got, want, "golden mismatch for {} (KSPAN_BLESS=1 rewrites)", path.display());
        }
        // Same exchanges whatever the chunking.
        let whole = exchanges_json(&exs, &fx.conn, &privacy);
        for i in 0..fx.chunks.len() {
            if fx.chunks[i].len != fx.chunks[i].data.len() {
                continue;
            }
            for at in 1..fx.chunks[i].data.len() {
                let split = split_at(&fx.chunks, i, at);
                let (e2, _) = run(make(fx.role).as_mut(), &split, fx.close_ts);
                assert_eq!(
                    exchanges_json(&e2, &fx.conn, &privacy),
                    whole,
                    "{}: chunk {i} split at {at}",
                    path.display()
                );
            }
        }
        let bytes = one_byte_chunks(&fx.chunks);
        let (e3, _) = run(make(fx.role).as_mut(), &bytes, fx.close_ts);
        assert_eq!(exchanges_json(&e3, &fx.conn, &privacy), whole, "{}: one byte at a time", path.display());
    }
}
