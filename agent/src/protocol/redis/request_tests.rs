use super::*;
use crate::protocol::Direction;

fn decode(parts: &[&[u8]]) -> Vec<CmdEvent> {
    let mut d = RequestDecoder::default();
    let mut events = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let c = Chunk { dir: Direction::Egress, ts_ns: i as u64, tid: 1, data: p, len: p.len(), tail: &[] };
        d.feed(&c, &mut |e| events.push(e));
    }
    events
}

fn commands(parts: &[&[u8]]) -> Vec<ParsedCommand> {
    decode(parts)
        .into_iter()
        .filter_map(|e| match e {
            CmdEvent::Command(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn one(data: &[u8]) -> ParsedCommand {
    let mut v = commands(&[data]);
    assert_eq!(v.len(), 1, "{:?}", String::from_utf8_lossy(data));
    v.remove(0)
}

fn key(c: &ParsedCommand) -> Option<&[u8]> {
    c.key_index.and_then(|i| c.args.get(i as usize)).map(|a| a.bytes)
}

#[test]
fn command_split_at_every_byte_decodes_the_same() {
    let data = b"*3\r\n$6\r\nclient\r\n$7\r\nsetname\r\n$4\r\nconn\r\n";
    for at in 0..=data.len() {
        let (a, b) = data.split_at(at);
        let v = commands(&[a, b]);
        assert_eq!(v.len(), 1, "split at {at}");
        assert_eq!(v[0].name.as_str(), "CLIENT SETNAME");
        assert_eq!(v[0].arg_count, 2);
        assert_eq!(v[0].args.get(1).map(|a| a.bytes), Some(&b"conn"[..]));
        assert_eq!(v[0].start_ts, u64::from(at == 0), "start is the chunk of the first byte");
    }
}

#[test]
fn container_commands_keep_two_words_and_subcommand_keys() {
    let c = one(b"*3\r\n$6\r\nOBJECT\r\n$8\r\nencoding\r\n$4\r\nuser\r\n");
    assert_eq!((c.name.as_str(), key(&c)), ("OBJECT ENCODING", Some(&b"user"[..])));
    let c = one(b"*3\r\n$5\r\nXINFO\r\n$6\r\nSTREAM\r\n$2\r\ns1\r\n");
    assert_eq!((c.name.as_str(), key(&c)), ("XINFO STREAM", Some(&b"s1"[..])));
    let c = one(b"*4\r\n$6\r\nCONFIG\r\n$3\r\nSET\r\n$11\r\nrequirepass\r\n$6\r\nsecret\r\n");
    assert_eq!(c.name.as_str(), "CONFIG SET");
    assert_eq!(c.args.len(), 1, "values after CONFIG SET are not kept");
    assert_eq!(c.arg_count, 3);
}

#[test]
fn keys_follow_the_command_table() {
    let c = one(b"*5\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n1\r\n$3\r\nk:1\r\n$1\r\nx\r\n");
    assert_eq!(key(&c), Some(&b"k:1"[..]));
    let c = one(b"*3\r\n$4\r\nEVAL\r\n$8\r\nreturn 1\r\n$1\r\n0\r\n");
    assert_eq!(key(&c), None);
    let c = one(b"*6\r\n$5\r\nXREAD\r\n$5\r\nCOUNT\r\n$1\r\n2\r\n$7\r\nstreams\r\n$2\r\ns1\r\n$1\r\n0\r\n");
    assert_eq!(key(&c), Some(&b"s1"[..]));
    let c = one(b"*3\r\n$5\r\nBITOP\r\n$3\r\nAND\r\n$4\r\ndest\r\n");
    assert_eq!(key(&c), Some(&b"dest"[..]));
    // Unknown commands never report a key (argument 1 may be a secret).
    let c = one(b"*2\r\n$8\r\nMYMODULE\r\n$6\r\nhunter\r\n");
    assert_eq!((c.name.as_str(), key(&c), c.info.is_none()), ("MYMODULE", None, true));
}

#[test]
fn resync_scan_works_across_chunk_boundaries() {
    let v = decode(&[b"garbage*", b"2\r", b"\n$3\r\nGET\r\n$1\r\nk\r\n"]);
    assert!(matches!(v[0], CmdEvent::Garbage));
    let CmdEvent::Command(c) = &v[1] else { panic!("{v:?}") };
    assert_eq!((c.name.as_str(), c.start_ts), ("GET", 0));
    assert_eq!(v.len(), 2);
}

#[test]
fn inline_lines_split_on_spaces_and_cut_long_lines() {
    let c = one(b"SET  k   v\r\n");
    assert_eq!((c.name.as_str(), c.arg_count, c.inline), ("SET", 2, true));
    let mut long = b"RPUSH l ".to_vec();
    long.extend(vec![b'x'; 5000]);
    long.extend_from_slice(b"\r\n");
    let c = one(&long);
    assert!(c.truncated);
    assert!(c.args.get(1).is_some_and(|a| a.truncated));
    let v = decode(&[b"NOTACMD x\r\n"]);
    assert!(matches!(v.as_slice(), [CmdEvent::Garbage]));
}

#[test]
fn uncaptured_bytes_inside_a_value_are_skipped_by_count() {
    let mut d = RequestDecoder::default();
    let mut events = Vec::new();
    let head = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1000\r\nabc";
    let c = Chunk { dir: Direction::Egress, ts_ns: 1, tid: 1, data: head, len: head.len() + 997 + 2, tail: &[] };
    d.feed(&c, &mut |e| events.push(e));
    let [CmdEvent::Command(cmd)] = events.as_slice() else { panic!("{events:?}") };
    assert!(cmd.truncated);
    assert_eq!(cmd.args.get(1).map(|a| (a.bytes, a.truncated)), Some((&b"abc"[..], true)));
    assert!(!d.in_command());
}
