//! Feeds arbitrary frames to the HTTP/2 parser in both roles, after a real
//! connection preface (without it the parser never starts), then closes and
//! describes every exchange. Must never panic, and feeding the captured
//! bytes one at a time must give the same exchanges, up to the first record
//! whose uncaptured bytes the frames could not skip (from there on the
//! parser takes that direction up again at a read or write of whole
//! frames, which depends on how the bytes were cut). The records are also
//! header blocks for kspan's HPACK decoder, which must agree with
//! loona-hpack's wherever that one decodes a block; and for a decoder
//! joined after some of them (a connection kspan did not see open), which
//! must give every field the full decoder gives, or an unknown one, never
//! another. A parser joined mid-stream gets the records too (no preface).
//!
//! Input: repeated `[ctl: u8][len: u8][bytes; len]`. `ctl` bit 0: the
//! client's (0) or the server's (1) bytes; bit 1: `(ctl >> 2) * 113` more
//! bytes moved but were not captured, and then the last `len % 5` bytes are
//! the call's last bytes, past the gap (`Chunk::tail`).
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

fn run_with(
    mut p: Http2Parser,
    role: Role,
    records: &[(bool, &[u8], usize)],
    bytewise: bool,
) -> (Vec<Exchange>, ParseStats) {
    run_cut(&mut p, role, records, bytewise).0
}

/// [`run_with`], and the index of the first record the parser could not
/// skip the uncaptured bytes of.
fn run_cut(
    p: &mut Http2Parser,
    role: Role,
    records: &[(bool, &[u8], usize)],
    bytewise: bool,
) -> ((Vec<Exchange>, ParseStats), Option<usize>) {
    let (mut out, mut stats, mut cut) = (Vec::new(), ParseStats::default(), None);
    for (i, &(from_client, bytes, missing)) in records.iter().enumerate() {
        let dir = if from_client == (role == Role::Client) { Direction::Egress } else { Direction::Ingress };
        let ts = i as u64;
        let mut feed = |data: &[u8], len, tail| p.feed(&Chunk { dir, ts_ns: ts, tid: 1, data, len, tail }, &mut out, &mut stats);
        if bytewise && missing == 0 {
            bytes.chunks(1).for_each(|b| feed(b, 1, &[]));
        } else {
            let t = if missing > 0 { bytes.len() % 5 } else { 0 };
            let (head, tail) = bytes.split_at(bytes.len() - t);
            feed(head, bytes.len() + missing, tail);
        }
        if stats.truncated > 0 && cut.is_none() {
            cut = Some(i);
        }
    }
    p.close(records.len() as u64, &mut out, &mut stats);
    ((out, stats), cut)
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

/// The records as header blocks for a full decoder and for one joined
/// after the first `join` of them: where the full one decodes a block, the
/// joined one does too, each field the same or unknown (empty name; its
/// value, if any, the same).
fn joined_is_never_wrong(records: &[(bool, &[u8], usize)], join: usize) {
    let mut full = hpack::Decoder::default();
    let mut joined = hpack::Decoder::joined();
    for (i, &(_, block, _)) in records[1..].iter().enumerate() {
        let mut want = Vec::new();
        let ok = full.decode(block, |n, v| want.push((n.to_vec(), v.to_vec())));
        if i >= join {
            let mut got = Vec::new();
            let joined_ok = joined.decode(block, |n, v| got.push((n.to_vec(), v.to_vec())));
            if ok.is_err() {
                return;
            }
            assert_eq!(joined_ok, Ok(()), "{block:02x?}");
            assert_eq!(got.len(), want.len());
            for ((n, v), (wn, wv)) in got.iter().zip(&want) {
                if n.as_slice() == hpack::UNKNOWN {
                    assert!(v.is_empty() || v == wv, "{v:?} for {wn:?}: {wv:?}");
                } else {
                    assert_eq!((n, v), (wn, wv));
                }
            }
        } else if ok.is_err() {
            return;
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let conn =
        ConnMeta { local: "127.0.0.1:443".parse().ok(), peer: "127.0.0.1:5000".parse().ok(), tls: true, unix: None };
    let privacy = Privacy { capture_headers: vec!["cookie".into()], ..Privacy::default() };
    let records = records(input);
    hpack_agrees(&records);
    joined_is_never_wrong(&records, usize::from(input.first().copied().unwrap_or(0) % 8));
    for role in [Role::Client, Role::Server] {
        let ((out, stats), cut) = run_cut(&mut Http2Parser::new(role), role, &records, false);
        assert_eq!(stats.exchanges as usize, out.len());
        for e in &out {
            assert!(matches!(e.record, Record::Http(_)));
            let d = e.record.describe(role, &conn, &privacy);
            assert!(
                d.attributes.iter().all(|(k, v)| k != "http.request.header.cookie" || v.as_str() == Some("REDACTED"))
            );
        }
        let (joined, stats) = run_with(Http2Parser::joined(role), role, &records[1..], false);
        assert_eq!(stats.exchanges as usize, joined.len());
        for e in &joined {
            e.record.describe(role, &conn, &privacy);
        }
        let ((bytewise, _), cut_bytewise) = run_cut(&mut Http2Parser::new(role), role, &records, true);
        assert_eq!(cut, cut_bytewise, "the same record is cut whatever the chunking before it");
        // Exchanges that ended before the cut (a record's index is its time).
        let cut = cut.map_or(u64::MAX, |i| i as u64);
        let key = |e: &Exchange| (e.start_ns, e.end_ns, format!("{:?}", e.record));
        let before = |v: &[Exchange]| v.iter().filter(|e| e.end_ns < cut).map(key).collect::<Vec<_>>();
        assert_eq!(before(&out), before(&bytewise));
    }
});
