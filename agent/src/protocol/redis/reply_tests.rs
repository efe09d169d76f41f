use super::*;
use crate::protocol::Direction;

fn decode(parts: &[&[u8]]) -> Vec<ReplyEvent> {
    let mut d = ReplyDecoder::default();
    let mut events = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let c = Chunk { dir: Direction::Ingress, ts_ns: 10 + i as u64, tid: 1, data: p, len: p.len(), tail: &[] };
        d.feed(&c, &mut |e| events.push(e));
    }
    events
}

fn replies(parts: &[&[u8]]) -> Vec<ReplyInfo> {
    decode(parts)
        .into_iter()
        .map(|e| match e {
            ReplyEvent::Reply(r) => r,
            other => panic!("unexpected {other:?}"),
        })
        .collect()
}

#[test]
fn nested_reply_with_attributes_split_anywhere_is_one_reply() {
    let data: &[u8] = b"|1\r\n+ttl\r\n:5\r\n%2\r\n+a\r\n*2\r\n~1\r\n#t\r\n_\r\n+b\r\n=8\r\ntxt:abcd\r\n";
    for at in 0..=data.len() {
        let (a, b) = data.split_at(at);
        let r = replies(&[a, b]);
        assert_eq!(r.len(), 1, "split at {at}");
        assert_eq!(r[0].kind, ReplyKind::Map);
        assert_eq!(r[0].start_ts, if at == 0 { 11 } else { 10 });
        assert_eq!(r[0].end_ts, if at == data.len() { 10 } else { 11 });
    }
}

#[test]
fn summary_keeps_first_text_and_last_integer() {
    let r = replies(&[b"*3\r\n$11\r\nunsubscribe\r\n$2\r\nch\r\n:0\r\n"]);
    assert_eq!((r[0].text(), r[0].last_int), (&b"unsubscribe"[..], Some(0)));
    let r = replies(&[b"*2\r\n*1\r\n$7\r\nmessage\r\n:4\r\n"]);
    assert_eq!((r[0].text(), r[0].last_int), (&b""[..], Some(4)), "nested strings are not the first element");
    let r = replies(&[b"+RESET\r\n"]);
    assert_eq!(r[0].text(), b"RESET");
}

#[test]
fn error_texts_are_kept_and_bounded() {
    let r = replies(&[b"!10\r\nBUSY wait!\r\n"]);
    assert_eq!((r[0].kind, r[0].error.as_deref()), (ReplyKind::BulkError, Some("BUSY wait!")));
    let mut long = b"-ERR ".to_vec();
    long.extend(vec![b'e'; 1000]);
    long.extend_from_slice(b"\r\n");
    let r = replies(&[&long[..300], &long[300..]]);
    assert_eq!(r[0].error.as_deref().map(str::len), Some(ERROR_KEEP));
    // Errors nested in an EXEC reply do not make the reply an error.
    let r = replies(&[b"*2\r\n-ERR x\r\n:1\r\n"]);
    assert_eq!((r[0].kind, r[0].error.is_none()), (ReplyKind::Array, true));
}

#[test]
fn malformed_input_waits_for_a_chunk_starting_with_a_type_byte() {
    let v = decode(&[b"+OK\r\nhello", b"world\r\n", b":1\r\n"]);
    assert!(matches!(v.as_slice(), [ReplyEvent::Reply(_), ReplyEvent::Malformed, ReplyEvent::Reply(_)]), "{v:?}");
}

#[test]
fn uncaptured_bytes_past_a_value_report_the_partial_reply() {
    let mut d = ReplyDecoder::default();
    let mut events = Vec::new();
    let data = b"*3\r\n:1\r\n";
    d.feed(&Chunk { dir: Direction::Ingress, ts_ns: 3, tid: 1, data, len: data.len() + 50, tail: &[] }, &mut |e| {
        events.push(e)
    });
    let [ReplyEvent::Lost { partial: Some(r) }] = events.as_slice() else { panic!("{events:?}") };
    assert!(r.truncated);
    assert_eq!((r.kind, r.end_ts), (ReplyKind::Array, 3));
    assert!(d.is_idle());
}
