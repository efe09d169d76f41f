//! Feeds arbitrary frames to the HTTP/2 parser in both roles, after a real
//! connection preface (without it the parser never starts), then closes and
//! describes every exchange. Must never panic, and feeding the captured
//! bytes one at a time must give the same exchanges. The records are also
//! header blocks for kspan's HPACK decoder, which must agree with
//! loona-hpack's wherever that one decodes a block.
//!
//! Input: repeated `[ctl: u8][len: u8][bytes; len]`. `ctl` bit 0: the
//! client's (0) or the server's (1) bytes; bit 1: `(ctl >> 2) * 113` more
//! bytes moved but were not captured.
#![no_main]
use kspan::protocol::http2::{Http2Parser, PREFACE, hpack};
use kspan::protocol::{Chunk, ConnMeta, Direction, Exchange, ParseStats, Privacy, Record, Role, StreamParser};
use libfuzzer_sys::fuzz_target;

/// (from the client, bytes, uncaptured length) of each record.
fn records(mut input: &[u8]) -> Vec<(bool, &[u8], usize)> {
    let mut v = vec![(true, &PREFACE[..], 0)];
    while let [ctl, len, tail @ ..] = input {
        let (bytes, next) = tail.split_at((*len as usize).min(tail.len()));
        input = next;
        let missing = if ctl & 2 != 0 { usize::from(ctl >> 2) * 113 } else { 0 };
        v.push((ctl & 1 == 0, bytes, missing));
    }
    v
}

fn run(role: Role, records: &[(bool, &[u8], usize)], bytewise: bool) -> (Vec<Exchange>, ParseStats) {
    let mut p = Http2Parser::new(role);
    let (mut out, mut stats) = (Vec::new(), ParseStats::default());
    for (i, &(from_client, bytes, missing)) in records.iter().enumerate() {
        let dir = if from_client == (role == Role::Client) { Direction::Egress } else { Direction::Ingress };
        let ts = i as u64;
        let mut feed = |data: &[u8], len| p.feed(&Chunk { dir, ts_ns: ts, tid: 1, data, len }, &mut out, &mut stats);
        if bytewise && missing == 0 {
            bytes.chunks(1).for_each(|b| feed(b, 1));
        } else {
            feed(bytes, bytes.len() + missing);
        }
    }
    p.close(records.len() as u64, &mut out, &mut stats);
    (out, stats)
}

/// Decodes the records as consecutive header blocks with both decoders.
fn hpack_agrees(records: &[(bool, &[u8], usize)]) {
    let mut ours = hpack::Decoder::default();
    let mut reference = loona_hpack::Decoder::new();
    reference.set_max_allowed_table_size(4096);
    for &(_, block, _) in &records[1..] {
        let mut got = Vec::new();
        let ok = ours.decode(block, |n, v| got.push((n.to_vec(), v.to_vec())));
        let Ok(want) = reference.decode(block) else { return };
        assert_eq!(ok, Ok(()), "loona-hpack decoded {block:02x?} as {want:?}");
        assert_eq!(got, want);
    }
}

fuzz_target!(|input: &[u8]| {
    let conn =
        ConnMeta { local: "127.0.0.1:443".parse().ok(), peer: "127.0.0.1:5000".parse().ok(), tls: true, unix: None };
    let privacy = Privacy { capture_headers: vec!["cookie".into()], ..Privacy::default() };
    let records = records(input);
    hpack_agrees(&records);
    for role in [Role::Client, Role::Server] {
        let (out, stats) = run(role, &records, false);
        assert_eq!(stats.exchanges as usize, out.len());
        for e in &out {
            assert!(matches!(e.record, Record::Http(_)));
            let d = e.record.describe(role, &conn, &privacy);
            assert!(
                d.attributes.iter().all(|(k, v)| k != "http.request.header.cookie" || v.as_str() == Some("REDACTED"))
            );
        }
        let (bytewise, _) = run(role, &records, true);
        let key = |e: &Exchange| (e.start_ns, e.end_ns, format!("{:?}", e.record));
        assert_eq!(out.iter().map(key).collect::<Vec<_>>(), bytewise.iter().map(key).collect::<Vec<_>>());
    }
});
