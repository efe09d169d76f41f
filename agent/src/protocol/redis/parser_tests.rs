use super::*;
use crate::protocol::redis::{MAX_ARG_BYTES, MAX_STORED_ARGS, describe};
use crate::protocol::testutil::{OwnedChunk, captured};
use crate::protocol::{ConnMeta, Direction, Privacy};

/// Encodes a command as a RESP array of bulk strings.
pub(super) fn resp(args: &[&[u8]]) -> Vec<u8> {
    let mut v = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        v.extend_from_slice(a);
        v.extend_from_slice(b"\r\n");
    }
    v
}

/// A client-side connection driven step by step; every feed gets a later ts.
struct Conn {
    p: RedisParser,
    out: Vec<Exchange>,
    stats: ParseStats,
    ts: u64,
}

impl Conn {
    fn client() -> Self {
        Self { p: RedisParser::new(Role::Client), out: Vec::new(), stats: ParseStats::default(), ts: 0 }
    }

    fn chunk(&mut self, dir: Direction, data: &[u8], len: usize) -> u64 {
        self.ts += 10;
        let c = Chunk { dir, ts_ns: self.ts, tid: 7, data, len, tail: &[] };
        self.p.feed(&c, &mut self.out, &mut self.stats);
        self.ts
    }

    /// `bytes` moved by one call, captured as the kernel does: a `head`
    /// prefix and, past the gap, the last `tail` bytes.
    fn cut(&mut self, dir: Direction, bytes: &[u8], head: usize, tail: usize) -> u64 {
        self.ts += 10;
        let c = OwnedChunk { ts_ns: self.ts, tid: 7, ..captured(dir, 0, bytes, head, tail) };
        self.p.feed(&c.as_chunk(), &mut self.out, &mut self.stats);
        self.ts
    }

    fn cmd(&mut self, data: &[u8]) -> u64 {
        self.chunk(Direction::Egress, data, data.len())
    }

    fn reply(&mut self, data: &[u8]) -> u64 {
        self.chunk(Direction::Ingress, data, data.len())
    }

    fn rec(&self, i: usize) -> &RedisExchange {
        match &self.out[i].record {
            Record::Redis(r) => r,
            other => panic!("not redis: {other:?}"),
        }
    }

    fn names(&self) -> Vec<String> {
        (0..self.out.len()).map(|i| self.rec(i).command.as_str().to_owned()).collect()
    }

    fn kinds(&self) -> Vec<ReplyKind> {
        (0..self.out.len()).map(|i| self.rec(i).reply).collect()
    }

    fn key(&self, i: usize) -> Option<&[u8]> {
        self.rec(i).key().map(|a| a.bytes)
    }
}

#[test]
fn commands_pair_with_replies_in_order_with_timestamps() {
    let mut c = Conn::client();
    let t1 = c.cmd(&resp(&[b"SET", b"user:42", b"alice"]));
    let t2 = c.reply(b"+OK\r\n");
    let t3 = c.cmd(&resp(&[b"GET", b"user:42"]));
    c.reply(b"$5\r\nal");
    let t5 = c.reply(b"ice\r\n");
    c.cmd(&resp(&[b"INCR", b"n"]));
    c.reply(b":7\r\n");
    assert_eq!(c.names(), ["SET", "GET", "INCR"]);
    assert_eq!(c.kinds(), [ReplyKind::Simple, ReplyKind::Bulk, ReplyKind::Integer]);
    assert_eq!((c.out[0].start_ns, c.out[0].end_ns, c.out[0].tid), (t1, t2, 7));
    assert_eq!((c.out[1].start_ns, c.out[1].end_ns), (t3, t5));
    assert_eq!(c.key(0), Some(&b"user:42"[..]));
    assert_eq!(c.rec(0).arg_count, 2);
    assert_eq!(c.stats.exchanges, 3);
    assert_eq!(c.stats, ParseStats { exchanges: 3, ..ParseStats::default() });
}

#[test]
fn server_role_reads_commands_and_writes_replies() {
    let mut p = RedisParser::new(Role::Server);
    let (mut out, mut stats) = (Vec::new(), ParseStats::default());
    let cmd = resp(&[b"GET", b"k"]);
    p.feed(
        &Chunk { dir: Direction::Ingress, ts_ns: 5, tid: 3, data: &cmd, len: cmd.len(), tail: &[] },
        &mut out,
        &mut stats,
    );
    p.feed(
        &Chunk { dir: Direction::Egress, ts_ns: 9, tid: 3, data: b"$-1\r\n", len: 5, tail: &[] },
        &mut out,
        &mut stats,
    );
    assert_eq!(out.len(), 1);
    assert_eq!((out[0].role, out[0].start_ns, out[0].end_ns), (Role::Server, 5, 9));
}

#[test]
fn pipeline_with_replies_split_at_every_size_pairs_each_command() {
    for piece in 1..9 {
        let mut c = Conn::client();
        let mut cmds = Vec::new();
        let mut replies = Vec::new();
        for i in 0..30 {
            let key = format!("k{i}");
            match i % 3 {
                0 => {
                    cmds.extend(resp(&[b"SET", key.as_bytes(), b"v"]));
                    replies.extend_from_slice(b"+OK\r\n");
                }
                1 => {
                    cmds.extend(resp(&[b"GET", key.as_bytes()]));
                    replies.extend_from_slice(b"$3\r\nabc\r\n");
                }
                _ => {
                    cmds.extend(resp(&[b"INCR", key.as_bytes()]));
                    replies.extend_from_slice(format!(":{i}\r\n").as_bytes());
                }
            }
        }
        c.cmd(&cmds);
        for part in replies.chunks(piece) {
            c.reply(part);
        }
        assert_eq!(c.out.len(), 30, "piece {piece}");
        for i in 0..30 {
            let want = [ReplyKind::Simple, ReplyKind::Bulk, ReplyKind::Integer][i % 3];
            assert_eq!(c.rec(i).reply, want, "piece {piece} exchange {i}");
            assert_eq!(c.key(i), Some(format!("k{i}").as_bytes()));
        }
        assert_eq!(c.stats.unmatched_responses + c.stats.malformed + c.stats.dropped_requests, 0);
    }
}

#[test]
fn every_resp_type_is_one_reply() {
    let cases: [(&[u8], ReplyKind); 16] = [
        (b"+OK\r\n", ReplyKind::Simple),
        (b"-ERR x\r\n", ReplyKind::Error),
        (b":-5\r\n", ReplyKind::Integer),
        (b"$0\r\n\r\n", ReplyKind::Bulk),
        (b"$-1\r\n", ReplyKind::Null),
        (b"*2\r\n:1\r\n$1\r\na\r\n", ReplyKind::Array),
        (b"*-1\r\n", ReplyKind::Null),
        (b"_\r\n", ReplyKind::Null),
        (b"#t\r\n", ReplyKind::Boolean),
        (b",1.5e3\r\n", ReplyKind::Double),
        (b"(3492890328409238509324850943850943825024385\r\n", ReplyKind::BigNumber),
        (b"!21\r\nSYNTAX invalid syntax\r\n", ReplyKind::BulkError),
        (b"=15\r\ntxt:Some string\r\n", ReplyKind::Verbatim),
        (b"%2\r\n+a\r\n:1\r\n+b\r\n:2\r\n", ReplyKind::Map),
        (b"~3\r\n+a\r\n+b\r\n+c\r\n", ReplyKind::Set),
        (b"*0\r\n", ReplyKind::Array),
    ];
    let mut c = Conn::client();
    for (reply, _) in cases {
        c.cmd(&resp(&[b"XCMD"]));
        c.reply(reply);
    }
    let want: Vec<_> = cases.iter().map(|(_, k)| *k).collect();
    assert_eq!(c.kinds(), want);
    assert_eq!(c.rec(1).error.as_deref(), Some("ERR x"));
    assert_eq!(c.rec(11).error.as_deref(), Some("SYNTAX invalid syntax"));
    assert_eq!(c.stats.malformed, 0);
}

#[test]
fn attribute_precedes_a_reply_and_is_not_one() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"XCMD"]));
    let t = c.reply(b"|1\r\n+key-popularity\r\n%1\r\n$1\r\na\r\n,0.19\r\n");
    let end = c.reply(b":5\r\n");
    assert_eq!(c.kinds(), [ReplyKind::Integer]);
    assert_eq!((c.out[0].end_ns, t < end), (end, true));
    // Inside an aggregate, an attribute does not count as an element.
    c.cmd(&resp(&[b"XCMD"]));
    c.reply(b"*2\r\n:1\r\n|1\r\n+a\r\n+b\r\n:2\r\n");
    c.cmd(&resp(&[b"PING"]));
    c.reply(b"+PONG\r\n");
    assert_eq!(c.kinds(), [ReplyKind::Integer, ReplyKind::Array, ReplyKind::Simple]);
}

#[test]
fn nesting_to_depth_64_is_accepted_and_65_is_malformed() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"XCMD"]));
    let mut r = b"*1\r\n".repeat(64);
    r.extend_from_slice(b":1\r\n");
    c.reply(&r);
    assert_eq!(c.kinds(), [ReplyKind::Array]);
    c.cmd(&resp(&[b"XCMD"]));
    let mut r = b"*1\r\n".repeat(65);
    r.extend_from_slice(b":1\r\n");
    c.reply(&r);
    assert_eq!(c.out.len(), 1);
    assert_eq!(c.stats.malformed, 1);
    // The dropped command is counted; the next exchange pairs normally.
    assert_eq!(c.stats.dropped_requests, 1);
    c.cmd(&resp(&[b"PING"]));
    c.reply(b"+PONG\r\n");
    assert_eq!(c.names(), ["XCMD", "PING"]);
}

#[test]
fn push_between_command_and_reply_is_skipped_and_counted() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b">2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n$1\r\nv\r\n");
    assert_eq!(c.kinds(), [ReplyKind::Bulk]);
    assert_eq!(c.p.push_messages(), 1);
    assert_eq!(c.stats.unmatched_responses, 0);
}

#[test]
fn absurd_or_negative_reply_lengths_are_malformed() {
    for bad in [&b"$536870913\r\n"[..], b"$-2\r\n", b"*-5\r\n", b"%-1\r\n", b"$abc\r\n", b"?x\r\n", b"$3\r\nabcXY"] {
        let mut c = Conn::client();
        c.cmd(&resp(&[b"GET", b"k"]));
        c.reply(bad);
        assert_eq!(c.out.len(), 0, "{bad:?}");
        assert_eq!(c.stats.malformed, 1, "{bad:?}");
        // A fresh reply chunk resynchronises.
        c.cmd(&resp(&[b"GET", b"k"]));
        c.reply(b"$1\r\nv\r\n");
        assert_eq!(c.names(), ["GET"], "{bad:?}");
    }
}

#[test]
fn absurd_or_negative_command_lengths_are_malformed_and_rescanned() {
    for bad in [&b"*3\r\n$-3\r\n"[..], b"*999999999999\r\n", b"*2\r\n$536870913\r\n", b"*1\r\n+PING\r\n"] {
        let mut c = Conn::client();
        let mut data = bad.to_vec();
        data.extend(resp(&[b"GET", b"k"]));
        c.cmd(&data);
        // One reply answers the garbage, the next the GET.
        c.reply(b"-ERR Protocol error\r\n");
        c.reply(b"$1\r\nv\r\n");
        assert_eq!(c.names(), ["GET"], "{bad:?}");
        assert_eq!(c.kinds(), [ReplyKind::Bulk]);
        assert_eq!((c.stats.malformed, c.stats.resyncs), (1, 1), "{bad:?}");
    }
}

#[test]
fn huge_reply_with_uncaptured_bytes_is_skipped_by_count() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"GET", b"big"]));
    let size = 10 * 1024 * 1024;
    let mut first = format!("${size}\r\n").into_bytes();
    first.extend_from_slice(&[b'x'; 4000]);
    let total = first.len() - 4000 + size + 2;
    // Read in 3 syscalls, each capturing only its first bytes.
    let a = total / 3;
    c.chunk(Direction::Ingress, &first, a);
    c.chunk(Direction::Ingress, &[b'x'; 100], a);
    let end = c.chunk(Direction::Ingress, &[b'x'; 100], total - 2 * a);
    assert_eq!(c.names(), ["GET"]);
    assert!(c.rec(0).truncated);
    assert_eq!(c.out[0].end_ns, end);
    c.cmd(&resp(&[b"SET", b"k", b"v"]));
    c.reply(b"+OK\r\n");
    assert_eq!(c.names(), ["GET", "SET"]);
    assert_eq!(c.stats.truncated + c.stats.malformed + c.stats.unmatched_responses, 0);
}

#[test]
fn big_command_cut_by_capture_still_pairs_as_truncated() {
    let mut c = Conn::client();
    let big = vec![b'v'; 100_000];
    let cmd = resp(&[b"SET", b"k", &big, b"EX", b"60"]);
    let start = c.chunk(Direction::Egress, &cmd[..4096], cmd.len());
    c.reply(b"+OK\r\n");
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b"$1\r\nv\r\n");
    assert_eq!(c.names(), ["SET", "GET"]);
    assert!(c.rec(0).truncated);
    assert_eq!(c.out[0].start_ns, start);
    assert_eq!(c.key(0), Some(&b"k"[..]));
    assert_eq!(c.rec(0).arg_count, 4);
    assert_eq!(c.stats.truncated, 1);
}

#[test]
fn command_name_not_captured_counts_truncated_and_skips_its_reply() {
    let mut c = Conn::client();
    let cmd = resp(&[b"SET", b"k", b"v"]);
    c.chunk(Direction::Egress, &cmd[..6], cmd.len());
    c.reply(b"+OK\r\n");
    c.cmd(&resp(&[b"INCR", b"n"]));
    c.reply(b":1\r\n");
    assert_eq!(c.names(), ["INCR"]);
    assert_eq!(c.stats.truncated, 1);
    assert_eq!(c.stats.unmatched_responses, 0);
}

#[test]
fn commands_and_replies_after_a_large_value_are_read_in_the_tail() {
    let big = vec![b'v'; 100_000];
    let cmds = [resp(&[b"SET", b"k", &big]), resp(&[b"GET", b"k"]), resp(&[b"INCR", b"n"])].concat();
    let mut replies = b"+OK\r\n$100000\r\n".to_vec();
    replies.extend_from_slice(&big);
    replies.extend_from_slice(b"\r\n:1\r\n");
    for tail in [256, 0] {
        let mut c = Conn::client();
        c.cut(Direction::Egress, &cmds, 4096, tail);
        let end = c.cut(Direction::Ingress, &replies, 4096, tail);
        if tail > 0 {
            // Both gaps end inside the value: GET and INCR, and their
            // replies, are read in place.
            assert_eq!(c.names(), ["SET", "GET", "INCR"]);
            assert_eq!(c.out[2].end_ns, end);
            assert_eq!(c.stats.dropped_requests + c.stats.unmatched_responses + c.stats.resyncs, 0);
        } else {
            // Without it the rest of the pipeline is unknown: SET, cut
            // short, still pairs (its reply comes first), then pairing is
            // suspended, not guessed.
            assert_eq!(c.names(), ["SET"], "{:?}", c.stats);
            assert!(c.rec(0).truncated);
        }
    }
}

#[test]
fn lost_bytes_inside_a_pipeline_pair_what_came_before_and_suspend_the_rest() {
    let mut c = Conn::client();
    let mut data = resp(&[b"PING"]);
    data.extend(resp(&[b"SET", b"k", b"hello"]));
    // The write held more commands than were captured: PING whole, SET cut
    // short, then commands of unknown count.
    c.chunk(Direction::Egress, &data[..data.len() - 8], data.len() + 500);
    c.reply(b"+PONG\r\n+OK\r\n+OK\r\n:1\r\n");
    // Replies come in order: the first two are PING's and SET's; the
    // others answer lost commands and pair with nothing.
    assert_eq!(c.names(), ["PING", "SET"]);
    assert!(!c.rec(0).truncated && c.rec(1).truncated);
    assert_eq!((c.stats.dropped_requests, c.stats.unmatched_responses), (0, 2));
    // Once replies have caught up, a new command pairs again.
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b"$5\r\nhello\r\n");
    assert_eq!(c.names(), ["PING", "SET", "GET"]);
}

#[test]
fn a_pipeline_of_values_larger_than_the_capture_pairs_the_commands_it_shows() {
    // redis-benchmark -P 16 -d 1000: 16 SETs of 1,000 bytes in one write
    // of 16.7 KB, captured as the kernel does (4 KiB, then the last 256
    // bytes); the 16 replies are read whole.
    let mut c = Conn::client();
    let value = vec![b'x'; 1000];
    let pipeline: Vec<u8> = (0..16).flat_map(|i| resp(&[b"SET", format!("key:{i:012}").as_bytes(), &value])).collect();
    c.cut(Direction::Egress, &pipeline, 4096, 256);
    c.reply(&b"+OK\r\n".repeat(16));
    // The three SETs captured whole and the fourth, cut short, pair with the
    // first four replies; the other twelve answer unseen commands.
    assert_eq!(c.names(), ["SET"; 4]);
    assert!((0..3).all(|i| !c.rec(i).truncated) && c.rec(3).truncated);
    assert_eq!((c.stats.unmatched_responses, c.stats.dropped_requests), (12, 0));
    // The next pipeline, captured whole, pairs from its first command.
    c.cmd(&[resp(&[b"GET", b"a"]), resp(&[b"GET", b"b"])].concat());
    c.reply(b"$1\r\n1\r\n$-1\r\n");
    assert_eq!(c.names()[4..], ["GET", "GET"]);
}

#[test]
fn a_command_whose_name_was_not_captured_is_not_named_by_its_first_bytes() {
    let mut c = Conn::client();
    // "HGE" captured, "TALL\r\n" not: the call moved 6 more bytes; the
    // next call carries the rest of the command.
    let head = b"*2\r\n$7\r\nHGE";
    c.chunk(Direction::Egress, head, head.len() + 6);
    c.cmd(b"$1\r\nh\r\n");
    c.reply(b"*0\r\n");
    c.cmd(&resp(&[b"PING"]));
    c.reply(b"+PONG\r\n");
    // Its reply is skipped; it was a span named "HGE".
    assert_eq!(c.names(), ["PING"]);
    assert_eq!((c.stats.truncated, c.stats.unmatched_responses, c.stats.dropped_requests), (1, 0, 0));
}

#[test]
fn a_command_cut_short_while_blind_leaves_the_reply_count_as_any_loss() {
    let mut c = Conn::client();
    let mut data = resp(&[b"INCR", b"a"]);
    data.extend(resp(&[b"SET", b"k", b"hello"]));
    c.chunk(Direction::Egress, &data[..data.len() - 22], data.len() + 500);
    c.reply(b":1\r\n");
    assert!(c.p.pair.blind);
    // While blind: PING, then GET cut inside its key's header.
    let mut more = resp(&[b"PING"]);
    more.extend(b"*2\r\n$3\r\nGET\r\n$1");
    c.chunk(Direction::Egress, &more, more.len() + 500);
    // As for any loss while blind: one reply owed, the cut command's.
    assert!(c.p.pair.blind);
    assert_eq!(c.p.pair.balance, 1);
}

#[test]
fn commands_sent_behind_lost_ones_are_not_paired_with_their_replies() {
    let mut c = Conn::client();
    let mut data = resp(&[b"INCR", b"a"]);
    data.extend(resp(&[b"SET", b"k", b"hello"]));
    // INCR whole; SET's name cut off, then more lost commands.
    c.chunk(Direction::Egress, &data[..data.len() - 22], data.len() + 500);
    // Sent before INCR's reply came: behind the lost commands, so its
    // reply's place is unknown.
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b":1\r\n+OK\r\n+OK\r\n$5\r\nhello\r\n");
    assert_eq!(c.names(), ["INCR"]);
    assert_eq!(c.stats.dropped_requests, 1);
    // Realigned once the replies owed are in and the reply side is idle.
    c.cmd(&resp(&[b"PING"]));
    c.reply(b"+PONG\r\n");
    assert_eq!(c.names(), ["INCR", "PING"]);
}

#[test]
fn capture_starting_mid_stream_drops_orphans_and_resyncs() {
    let mut c = Conn::client();
    c.reply(b":99\r\n");
    assert_eq!(c.stats.unmatched_responses, 1);
    let mut data = b"lue\r\n$2\r\nEX\r\n$2\r\n10\r\n".to_vec();
    data.extend(resp(&[b"GET", b"k"]));
    data.extend(resp(&[b"GET", b"k2"]));
    c.cmd(&data);
    c.reply(b"+OK\r\n$1\r\na\r\n$-1\r\n");
    assert_eq!(c.names(), ["GET", "GET"]);
    assert_eq!(c.kinds(), [ReplyKind::Bulk, ReplyKind::Null]);
    assert_eq!(c.key(1), Some(&b"k2"[..]));
    assert_eq!(c.stats.malformed, 1);
}

#[test]
fn reply_that_began_before_the_command_is_not_paired() {
    let mut c = Conn::client();
    c.reply(b"$5\r\nhel");
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b"lo\r\n");
    assert!(c.out.is_empty());
    c.reply(b"$1\r\nv\r\n");
    assert_eq!(c.names(), ["GET"]);
    assert_eq!(c.stats.unmatched_responses, 1);
}

#[test]
fn reply_of_the_wrong_shape_resets_instead_of_mispairing() {
    let mut c = Conn::client();
    let mut data = resp(&[b"GET", b"k"]);
    data.extend(resp(&[b"INCR", b"n"]));
    c.cmd(&data);
    c.reply(b":1\r\n:2\r\n");
    assert!(c.out.is_empty());
    assert_eq!((c.stats.unmatched_responses, c.stats.dropped_requests), (2, 2));
    c.cmd(&resp(&[b"PING"]));
    c.reply(b"+PONG\r\n");
    assert_eq!(c.names(), ["PING"]);
}

#[test]
fn queue_overflow_drops_commands_but_keeps_later_pairs_aligned() {
    let mut c = Conn::client();
    let n = MAX_IN_FLIGHT + 76;
    let mut cmds = Vec::new();
    let mut replies = Vec::new();
    for i in 0..n {
        cmds.extend(resp(&[b"GET", format!("k{i}").as_bytes()]));
        replies.extend_from_slice(b"$1\r\nv\r\n");
    }
    c.cmd(&cmds);
    c.cmd(&resp(&[b"INCR", b"n"]));
    replies.extend_from_slice(b":5\r\n");
    c.reply(&replies);
    assert_eq!(c.out.len(), MAX_IN_FLIGHT);
    assert_eq!(c.stats.dropped_requests, 77);
    assert_eq!(c.stats.unmatched_responses, 0);
    // After the skipped replies the queue is empty and in step again.
    c.cmd(&resp(&[b"INCR", b"n"]));
    c.reply(b":6\r\n");
    assert_eq!(c.names().last().map(String::as_str), Some("INCR"));
    assert_eq!(c.kinds().last(), Some(&ReplyKind::Integer));
}

#[test]
fn multi_exec_spans_end_at_queued_and_exec_reply() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"MULTI"]));
    c.reply(b"+OK\r\n");
    c.cmd(&resp(&[b"SET", b"a", b"1"]));
    let q1 = c.reply(b"+QUEUED\r\n");
    c.cmd(&resp(&[b"INCR", b"a"]));
    c.reply(b"+QUEUED\r\n");
    c.cmd(&resp(&[b"EXEC"]));
    let end = c.reply(b"*2\r\n+OK\r\n:2\r\n");
    assert_eq!(c.names(), ["MULTI", "SET", "INCR", "EXEC"]);
    let tx: Vec<_> = (0..4).map(|i| c.rec(i).in_transaction).collect();
    assert_eq!(tx, [false, true, true, false]);
    assert_eq!(c.out[1].end_ns, q1);
    assert_eq!((c.out[3].end_ns, c.rec(3).reply), (end, ReplyKind::Array));
    // DISCARD ends the transaction too.
    c.cmd(&resp(&[b"MULTI"]));
    c.reply(b"+OK\r\n");
    c.cmd(&resp(&[b"DISCARD"]));
    c.reply(b"+OK\r\n");
    c.cmd(&resp(&[b"GET", b"a"]));
    c.reply(b"$1\r\n2\r\n");
    assert!(!c.rec(6).in_transaction);
}

#[test]
fn select_sets_namespace_for_later_commands() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b"$-1\r\n");
    c.cmd(&resp(&[b"SELECT", b"2"]));
    c.reply(b"+OK\r\n");
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b"$-1\r\n");
    c.cmd(&resp(&[b"SELECT", b"99"]));
    c.reply(b"-ERR DB index is out of range\r\n");
    c.cmd(&resp(&[b"MULTI"]));
    c.reply(b"+OK\r\n");
    c.cmd(&resp(&[b"SELECT", b"5"]));
    c.reply(b"+QUEUED\r\n");
    c.cmd(&resp(&[b"EXEC"]));
    c.reply(b"*1\r\n+OK\r\n");
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b"$-1\r\n");
    let dbs: Vec<_> = (0..c.out.len()).map(|i| c.rec(i).db).collect();
    assert_eq!(dbs, [0, 0, 2, 2, 2, 2, 2, 5]);
}

#[test]
fn resp2_subscribe_mode_spans_only_commands() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"SUBSCRIBE", b"a", b"b"]));
    let confirm = c.reply(b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
    c.reply(b"*3\r\n$9\r\nsubscribe\r\n$1\r\nb\r\n:2\r\n");
    c.reply(b"*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n*3\r\n$7\r\nmessage\r\n$1\r\nb\r\n$2\r\nyo\r\n");
    c.cmd(&resp(&[b"PING"]));
    c.reply(b"*2\r\n$4\r\npong\r\n$0\r\n\r\n");
    c.cmd(&resp(&[b"UNSUBSCRIBE"]));
    c.reply(b"*3\r\n$11\r\nunsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$11\r\nunsubscribe\r\n$1\r\nb\r\n:0\r\n");
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b"$1\r\nv\r\n");
    assert_eq!(c.names(), ["SUBSCRIBE", "PING", "UNSUBSCRIBE", "GET"]);
    assert_eq!(c.out[0].end_ns, confirm);
    assert_eq!(c.p.push_messages(), 4);
    assert_eq!(c.stats.unmatched_responses + c.stats.dropped_requests, 0);
    // Close while subscribed: nothing is left hanging.
    c.cmd(&resp(&[b"PSUBSCRIBE", b"n*"]));
    c.reply(b"*3\r\n$10\r\npsubscribe\r\n$2\r\nn*\r\n:1\r\n");
    c.reply(b"*4\r\n$8\r\npmessage\r\n$2\r\nn*\r\n$2\r\nn1\r\n$1\r\nx\r\n");
    c.p.close(c.ts + 1, &mut c.out, &mut c.stats);
    assert_eq!(c.names().last().map(String::as_str), Some("PSUBSCRIBE"));
    assert_eq!(c.stats.dropped_requests, 0);
}

#[test]
fn resp3_pushes_never_pair_but_subscribe_confirmation_does() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"HELLO", b"3"]));
    c.reply(b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n");
    c.cmd(&resp(&[b"SUBSCRIBE", b"a"]));
    c.reply(b">3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n");
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b">3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n$1\r\nv\r\n");
    c.cmd(&resp(&[b"HGETALL", b"h"]));
    c.reply(b"%1\r\n$1\r\nf\r\n$1\r\nv\r\n");
    assert_eq!(c.names(), ["HELLO", "SUBSCRIBE", "GET", "HGETALL"]);
    assert_eq!(c.kinds(), [ReplyKind::Map, ReplyKind::Push, ReplyKind::Bulk, ReplyKind::Map]);
    assert_eq!(c.p.push_messages(), 1);
    assert!(c.rec(0).args.is_empty(), "HELLO may carry AUTH: values not kept");
}

#[test]
fn monitor_output_never_makes_spans() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"MONITOR"]));
    c.reply(b"+OK\r\n");
    c.reply(b"+1700000000.1 [0 127.0.0.1:5555] \"get\" \"k\"\r\n");
    c.reply(b"+1700000000.2 [0 127.0.0.1:5555] \"set\" \"k\" \"v\"\r\n");
    c.cmd(&resp(&[b"PING"]));
    c.reply(b"+1700000000.3 [0 127.0.0.1:5555] \"ping\"\r\n");
    assert_eq!(c.names(), ["MONITOR"]);
    assert_eq!(c.p.push_messages(), 3);
    c.cmd(&resp(&[b"RESET"]));
    c.reply(b"+RESET\r\n");
    c.cmd(&resp(&[b"GET", b"k"]));
    c.reply(b"$-1\r\n");
    assert_eq!(c.names(), ["MONITOR", "RESET", "GET"]);
}

#[test]
fn inline_commands_are_parsed() {
    let mut c = Conn::client();
    c.cmd(b"PING\r\nset user:1 hello\r\n");
    c.reply(b"+PONG\r\n+OK\r\n");
    c.cmd(b"GET user:1\n");
    c.reply(b"$5\r\nhello\r\n");
    assert_eq!(c.names(), ["PING", "SET", "GET"]);
    assert!(c.rec(1).inline);
    assert_eq!(c.key(1), Some(&b"user:1"[..]));
    assert_eq!(c.rec(1).arg_count, 2);
    // Unknown inline words are garbage, not commands.
    c.cmd(b"HELO there\r\n");
    c.reply(b"-ERR unknown command\r\n");
    assert_eq!(c.out.len(), 3);
    assert_eq!(c.stats.malformed, 1);
}

#[test]
fn argument_values_are_bounded() {
    let mut c = Conn::client();
    let long = vec![b'x'; 300];
    let mut args: Vec<&[u8]> = vec![b"RPUSH", b"list"];
    args.extend(std::iter::repeat_n(&long[..], 40));
    c.cmd(&resp(&args));
    c.reply(b":40\r\n");
    let r = c.rec(0);
    assert_eq!(r.arg_count, 41);
    assert_eq!(r.args.len(), MAX_STORED_ARGS);
    assert!(r.args.iter().skip(1).all(|a| a.truncated && a.bytes.len() == MAX_ARG_BYTES));
    assert_eq!(c.key(0), Some(&b"list"[..]));
}

#[test]
fn auth_arguments_are_never_kept() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"AUTH", b"admin", b"hunter2"]));
    c.reply(b"+OK\r\n");
    let privacy = Privacy { redis_values: true, ..Privacy::default() };
    let d = describe(c.rec(0), Role::Client, &ConnMeta::default(), &privacy);
    assert!(c.rec(0).args.is_empty());
    assert_eq!(d.attributes.get_str("db.query.text"), Some("AUTH ..."));
}

#[test]
fn values_reach_describe_only_on_opt_in() {
    let mut c = Conn::client();
    c.cmd(&resp(&[b"SET", b"session:9", b"token-abc"]));
    c.reply(b"+OK\r\n");
    let plain = describe(c.rec(0), Role::Client, &ConnMeta::default(), &Privacy::default());
    assert_eq!(plain.attributes.get_str("db.query.text"), Some("SET session:9"));
    let open =
        describe(c.rec(0), Role::Client, &ConnMeta::default(), &Privacy { redis_values: true, ..Privacy::default() });
    assert_eq!(open.attributes.get_str("db.query.text"), Some("SET session:9 token-abc"));
}

#[test]
fn close_counts_waiting_commands_as_dropped() {
    let mut c = Conn::client();
    let mut data = resp(&[b"GET", b"a"]);
    data.extend(resp(&[b"GET", b"b"]));
    data.extend(b"*2\r\n$3\r\nGET");
    c.cmd(&data);
    c.reply(b"$1\r\n1\r\n");
    c.p.close(c.ts + 1, &mut c.out, &mut c.stats);
    assert_eq!(c.out.len(), 1);
    assert_eq!((c.stats.dropped_requests, c.stats.truncated), (1, 1));
}

#[test]
fn golden_fixtures() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol/redis/fixtures");
    crate::protocol::testutil::check_golden_dir(&dir, &|role| Box::new(RedisParser::new(role)));
}
