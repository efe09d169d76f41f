//! Parser tests: golden fixtures recorded from PostgreSQL 15, and hand-built
//! streams for the cases real traffic rarely shows.

use std::path::Path;

use super::*;
use crate::protocol::testutil::{OwnedChunk, check_golden_dir, run};
use crate::protocol::{ConnMeta, Privacy, Record};

pub(super) fn m(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![ty];
    v.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    v.extend_from_slice(body);
    v
}

fn cs(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

fn startup(db: &str) -> Vec<u8> {
    let mut body = 196_608u32.to_be_bytes().to_vec();
    for s in ["user", "bob", "database", db, ""] {
        body.extend(cs(s));
    }
    let mut v = (body.len() as u32 + 4).to_be_bytes().to_vec();
    v.extend(body);
    v
}

pub(super) fn query(sql: &str) -> Vec<u8> {
    m(b'Q', &cs(sql))
}
pub(super) fn parse(name: &str, sql: &str) -> Vec<u8> {
    m(b'P', &[cs(name), cs(sql), vec![0, 0]].concat())
}
pub(super) fn bind(portal: &str, stmt: &str) -> Vec<u8> {
    m(b'B', &[cs(portal), cs(stmt), vec![0; 6]].concat())
}
pub(super) fn execute(portal: &str) -> Vec<u8> {
    m(b'E', &[cs(portal), vec![0; 4]].concat())
}
pub(super) fn sync() -> Vec<u8> {
    m(b'S', b"")
}
pub(super) fn complete(tag: &str) -> Vec<u8> {
    m(b'C', &cs(tag))
}
pub(super) fn ready() -> Vec<u8> {
    m(b'Z', b"I")
}
fn row() -> Vec<u8> {
    m(b'D', b"\0\x01\0\0\0\x011")
}
fn error(code: &str, msg: &str) -> Vec<u8> {
    let body =
        [b"SERROR\0VERROR\0C".to_vec(), cs(code), b"M".to_vec(), cs(msg), b"DKey (x)=(secret)\0\0".to_vec()].concat();
    m(b'E', &body)
}

/// A client-side conversation: `out` = the client wrote, `inn` = it read.
#[derive(Default)]
pub(super) struct Conv {
    chunks: Vec<OwnedChunk>,
}

impl Conv {
    pub(super) fn push(&mut self, dir: Direction, data: Vec<u8>, len: usize) -> &mut Self {
        let ts = 1000 * (self.chunks.len() as u64 + 1);
        self.chunks.push(OwnedChunk { dir, ts_ns: ts, tid: 7, data, len, tail: Vec::new() });
        self
    }
    pub(super) fn out(&mut self, parts: &[Vec<u8>]) -> &mut Self {
        let data = parts.concat();
        let len = data.len();
        self.push(Direction::Egress, data, len)
    }
    pub(super) fn inn(&mut self, parts: &[Vec<u8>]) -> &mut Self {
        let data = parts.concat();
        let len = data.len();
        self.push(Direction::Ingress, data, len)
    }
    pub(super) fn run(&self) -> (Vec<Exchange>, ParseStats) {
        run(&mut PgParser::new(Role::Client), &self.chunks, Some(1_000_000))
    }
}

pub(super) fn pg(e: &Exchange) -> &PgExchange {
    match &e.record {
        Record::Postgres(p) => p,
        other => panic!("not postgres: {other:?}"),
    }
}

fn sql_of(e: &Exchange) -> Option<&str> {
    pg(e).statement.as_deref().map(|s| &*s.text)
}

#[test]
fn golden_fixtures() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/protocol/postgres/fixtures");
    check_golden_dir(&dir, &|role| Box::new(PgParser::new(role)));
}

#[test]
fn simple_query_spans_query_to_ready_for_query() {
    let mut c = Conv::default();
    c.out(&[startup("shop")]).inn(&[m(b'R', &[0; 4]), ready()]);
    c.out(&[query("SELECT * FROM t; SELECT 2")]).inn(&[row(), row(), complete("SELECT 2")]).inn(&[
        row(),
        complete("SELECT 1"),
        ready(),
    ]);
    let (exs, stats) = c.run();
    assert_eq!(exs.len(), 1);
    let (e, r) = (&exs[0], pg(&exs[0]));
    assert_eq!((e.start_ns, e.end_ns, e.tid), (3000, 5000, 7));
    assert_eq!(sql_of(e), Some("SELECT * FROM t; SELECT 2"));
    assert_eq!(r.rows, Some(3));
    assert_eq!(r.database.as_deref(), Some("shop"));
    assert_eq!(stats, ParseStats { exchanges: 1, ..ParseStats::default() });
}

#[test]
fn extended_execute_starts_at_its_parse_and_ends_at_command_complete() {
    let mut c = Conv::default();
    c.out(&[parse("", "UPDATE t SET a = $1")]).out(&[bind("", ""), execute(""), sync()]);
    c.inn(&[m(b'1', b""), m(b'2', b""), complete("UPDATE 4")]).inn(&[ready()]);
    let (exs, _) = c.run();
    assert_eq!(exs.len(), 1);
    assert_eq!((exs[0].start_ns, exs[0].end_ns), (1000, 3000));
    assert_eq!(sql_of(&exs[0]), Some("UPDATE t SET a = $1"));
    assert_eq!((pg(&exs[0]).rows, pg(&exs[0]).extended), (Some(4), true));
}

#[test]
fn pipelined_executes_pair_in_order_and_error_drops_the_rest_of_the_batch() {
    let mut c = Conv::default();
    c.out(&[parse("a", "SELECT 1"), parse("b", "INSERT INTO t VALUES (1)"), parse("c", "SELECT 3"), sync()]);
    c.inn(&[m(b'1', b""), m(b'1', b""), m(b'1', b""), ready()]);
    c.out(&[bind("", "a"), execute(""), bind("", "b"), execute(""), bind("", "c"), execute(""), sync()]);
    c.inn(&[
        m(b'2', b""),
        row(),
        complete("SELECT 1"),
        m(b'2', b""),
        error("23505", "duplicate key value violates unique constraint \"t_pkey\""),
        ready(),
    ]);
    c.out(&[bind("", "c"), execute(""), sync()]).inn(&[m(b'2', b""), row(), complete("SELECT 1"), ready()]);
    let (exs, stats) = c.run();
    let sqls: Vec<_> = exs.iter().map(sql_of).collect();
    assert_eq!(sqls, vec![Some("SELECT 1"), Some("INSERT INTO t VALUES (1)"), Some("SELECT 3")]);
    assert_eq!(pg(&exs[1]).error.as_ref().map(|e| e.code.as_str()), Some("23505"));
    assert!(pg(&exs[0]).error.is_none() && pg(&exs[2]).error.is_none());
    assert_eq!(stats.dropped_requests, 1, "the skipped third Execute");
    assert_eq!(stats.exchanges, 3);
}

#[test]
fn failing_prepare_without_execute_is_reported() {
    let mut c = Conv::default();
    c.out(&[parse("s", "SELEC 1"), sync()]).inn(&[error("42601", "syntax error at or near \"SELEC\""), ready()]);
    c.out(&[parse("ok", "SELECT 1"), sync()]).inn(&[m(b'1', b""), ready()]);
    let (exs, stats) = c.run();
    assert_eq!(exs.len(), 1, "a successful prepare is housekeeping");
    assert_eq!(sql_of(&exs[0]), Some("SELEC 1"));
    assert_eq!(pg(&exs[0]).error.as_ref().map(|e| e.code.as_str()), Some("42601"));
    assert_eq!(stats.unmatched_responses, 0);
}

#[test]
fn execute_of_statement_prepared_before_start_is_flagged() {
    let mut c = Conv::default();
    c.out(&[bind("", "P_1"), execute(""), sync()]).inn(&[m(b'2', b""), complete("UPDATE 1"), ready()]);
    let (exs, _) = c.run();
    assert_eq!(exs.len(), 1);
    let r = pg(&exs[0]);
    assert!(r.prepared_unknown && r.statement.is_none());
    assert_eq!((r.unknown_statement_name.as_deref(), r.command.as_deref()), (Some("P_1"), Some("UPDATE")));
}

#[test]
fn named_statements_are_capped_and_evictions_counted() {
    let mut p = PgParser::new(Role::Client);
    let mut stats = ParseStats::default();
    let mut out = Vec::new();
    for i in 0..MAX_STATEMENTS + 10 {
        let data = parse(&format!("s{i}"), "SELECT 1");
        p.feed(
            &Chunk { dir: Direction::Egress, ts_ns: 1, tid: 1, data: &data, len: data.len(), tail: &[] },
            &mut out,
            &mut stats,
        );
    }
    assert_eq!(p.evictions(), 10);
    // The oldest statement is gone, the newest is known.
    let data =
        [bind("", "s0"), execute(""), bind("", &format!("s{}", MAX_STATEMENTS + 9)), execute(""), sync()].concat();
    p.feed(
        &Chunk { dir: Direction::Egress, ts_ns: 2, tid: 1, data: &data, len: data.len(), tail: &[] },
        &mut out,
        &mut stats,
    );
    let resp = [complete("SELECT 1"), complete("SELECT 1"), ready()].concat();
    p.feed(
        &Chunk { dir: Direction::Ingress, ts_ns: 3, tid: 1, data: &resp, len: resp.len(), tail: &[] },
        &mut out,
        &mut stats,
    );
    assert_eq!(out.iter().map(|e| pg(e).prepared_unknown).collect::<Vec<_>>(), vec![true, false]);
}

#[test]
fn in_flight_queue_is_capped() {
    let mut c = Conv::default();
    let batch: Vec<Vec<u8>> = (0..MAX_PENDING + 5).flat_map(|_| [bind("", ""), execute("")]).collect();
    c.out(&[vec![parse("", "SELECT 1")], batch, vec![sync()]].concat());
    let (exs, stats) = c.run();
    assert!(exs.is_empty());
    assert_eq!(stats.dropped_requests, (MAX_PENDING + 5) as u64, "5 on overflow, the rest at close");
}

#[test]
fn absurd_length_resyncs_on_the_next_anchor() {
    let mut c = Conv::default();
    c.out(&[b"Q\x7f\xff\xff\xffjunk".to_vec(), query("SELECT 1")]).inn(&[complete("SELECT 0"), ready()]);
    c.inn(&[b"D\0\0\0\x01".to_vec(), ready()]);
    let (exs, stats) = c.run();
    assert_eq!(exs.len(), 1);
    assert_eq!(sql_of(&exs[0]), Some("SELECT 1"));
    assert_eq!(stats.resyncs, 2);
    assert!(stats.malformed >= 9);
}

#[test]
fn stream_joined_mid_message_resyncs() {
    let mut c = Conv::default();
    let q1 = query("SELECT 'first'");
    let r1 = [row(), complete("SELECT 1"), ready()].concat();
    c.out(&[q1[7..].to_vec()]).inn(&[r1[3..].to_vec()]);
    c.out(&[query("SELECT 2")]).inn(&[row(), complete("SELECT 1"), ready()]);
    let (exs, stats) = c.run();
    assert_eq!(exs.len(), 1);
    assert_eq!(sql_of(&exs[0]), Some("SELECT 2"));
    assert_eq!(pg(&exs[0]).rows, Some(1));
    assert!(stats.resyncs >= 1);
}

#[test]
fn truncated_query_keeps_captured_prefix() {
    let mut c = Conv::default();
    let q = query("INSERT INTO t VALUES ('a secret that was not captured')");
    c.push(Direction::Egress, q[..30].to_vec(), q.len());
    c.inn(&[complete("INSERT 0 1"), ready()]);
    let (exs, stats) = c.run();
    assert_eq!(exs.len(), 1);
    let st = pg(&exs[0]).statement.as_deref().map(|s| (&*s.text, s.truncated));
    assert_eq!(st, Some(("INSERT INTO t VALUES ('a ", true)));
    assert_eq!(stats.truncated, 1);
    let d = describe(pg(&exs[0]), Role::Client, &ConnMeta::default(), &Privacy::default());
    assert_eq!(d.name, "INSERT t");
}

#[test]
fn lost_response_bytes_end_the_request_and_realign() {
    let mut c = Conv::default();
    c.out(&[query("SELECT * FROM big")]);
    let resp = [m(b'T', b"\0\0"), row(), row(), complete("SELECT 2"), ready()].concat();
    // Only the RowDescription and half a DataRow were captured.
    c.push(Direction::Ingress, resp[..10].to_vec(), resp.len());
    c.out(&[query("SELECT 2")]).inn(&[row(), complete("SELECT 1"), ready()]);
    c.out(&[query("SELECT 3")]).inn(&[row(), complete("SELECT 1"), ready()]);
    let (exs, stats) = c.run();
    let got: Vec<_> = exs.iter().map(|e| (sql_of(e), pg(e).response_truncated, e.end_ns)).collect();
    assert_eq!(
        got,
        vec![(Some("SELECT * FROM big"), true, 2000), (Some("SELECT 2"), true, 4000), (Some("SELECT 3"), false, 6000)]
    );
    assert_eq!(pg(&exs[2]).rows, Some(1));
    assert_eq!(stats.resyncs, 1);
}

#[test]
fn ssl_accepted_makes_the_connection_opaque() {
    let mut c = Conv::default();
    c.out(&[b"\0\0\0\x08\x04\xd2\x16\x2f".to_vec()]).inn(&[b"S".to_vec()]);
    c.out(&[b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03".to_vec(), query("SELECT 1")])
        .inn(&[b"\x16\x03\x03\x00\x7a".to_vec(), ready()]);
    let (exs, stats) = c.run();
    assert!(exs.is_empty());
    assert_eq!(stats, ParseStats::default());
}

#[test]
fn ssl_refused_continues_in_plaintext() {
    let mut c = Conv::default();
    c.out(&[b"\0\0\0\x08\x04\xd2\x16\x2f".to_vec()]).inn(&[b"N".to_vec()]);
    c.out(&[startup("db")])
        .inn(&[m(b'R', &[0; 4]), ready()])
        .out(&[query("SELECT 1")])
        .inn(&[complete("SELECT 0"), ready()]);
    let (exs, stats) = c.run();
    assert_eq!(exs.len(), 1);
    assert_eq!(pg(&exs[0]).database.as_deref(), Some("db"));
    assert_eq!(stats.malformed, 0);
}

#[test]
fn password_messages_are_never_kept() {
    let mut c = Conv::default();
    c.out(&[startup("db")])
        .inn(&[m(b'R', &[0, 0, 0, 3])])
        .out(&[m(b'p', &cs("hunter2"))])
        .inn(&[m(b'R', &[0; 4]), ready()]);
    c.out(&[query("SELECT 1")]).inn(&[complete("SELECT 0"), ready()]);
    let (exs, _) = c.run();
    assert_eq!(exs.len(), 1);
    assert!(!format!("{exs:?}").contains("hunter2"));
}

#[test]
fn empty_query_and_sync_alone_make_no_exchange() {
    let mut c = Conv::default();
    c.out(&[query("")]).inn(&[m(b'I', b""), ready()]).out(&[sync()]).inn(&[ready()]);
    let (exs, stats) = c.run();
    assert!(exs.is_empty());
    assert_eq!(stats.unmatched_responses + stats.dropped_requests, 0);
}

#[test]
fn close_reports_finished_simple_query_and_drops_the_rest() {
    let mut c = Conv::default();
    c.out(&[query("SELECT 1")]).inn(&[complete("SELECT 0")]).out(&[query("SELECT 2")]);
    let (exs, stats) = c.run();
    assert_eq!(exs.len(), 1);
    assert_eq!(exs[0].end_ns, 2000);
    assert_eq!(stats.dropped_requests, 1);
}

#[test]
fn server_role_reads_requests_as_ingress() {
    let chunks = [
        OwnedChunk { dir: Direction::Ingress, ts_ns: 10, tid: 3, data: query("SELECT 1"), len: 13, tail: Vec::new() },
        OwnedChunk {
            dir: Direction::Egress,
            ts_ns: 20,
            tid: 3,
            data: [complete("SELECT 0"), ready()].concat(),
            len: 22,
            tail: Vec::new(),
        },
    ];
    let (exs, _) = run(&mut PgParser::new(Role::Server), &chunks, None);
    assert_eq!(exs.len(), 1);
    assert_eq!((exs[0].role, exs[0].start_ns, exs[0].end_ns), (Role::Server, 10, 20));
}

#[test]
fn detect_accepts_postgres_openings() {
    let su = startup("db");
    assert_eq!(detect(Direction::Egress, &su), Detection::Yes(Role::Client));
    assert_eq!(detect(Direction::Ingress, &su), Detection::Yes(Role::Server));
    assert_eq!(detect(Direction::Egress, b"\0\0\0\x08\x04\xd2\x16\x2f"), Detection::Yes(Role::Client));
    assert_eq!(detect(Direction::Egress, &query("SELECT 1")), Detection::Yes(Role::Client));
    assert_eq!(detect(Direction::Ingress, &parse("", "SELECT 1")), Detection::Yes(Role::Server));
    assert_eq!(detect(Direction::Ingress, &ready()), Detection::Yes(Role::Client));
    assert_eq!(detect(Direction::Egress, &error("42601", "x")), Detection::Yes(Role::Server));
    assert_eq!(detect(Direction::Egress, b"\0\0"), Detection::NeedMore);
    assert_eq!(detect(Direction::Egress, b"Q\0\0"), Detection::NeedMore);
    assert_eq!(detect(Direction::Egress, b""), Detection::NeedMore);
}

#[test]
fn detect_rejects_other_protocols() {
    let others: [&[u8]; 10] = [
        b"GET / HTTP/1.1\r\n",
        b"POST /api HTTP/1.1\r\n",
        b"PUT /x HTTP/1.1\r\n",
        b"DELETE /x HTTP/1.1\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n",
        b"+OK\r\n",
        b"$5\r\nhello\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"\x17\x03\x03\x00\x20",
    ];
    for o in others {
        assert_eq!(detect(Direction::Egress, o), Detection::No, "{:?}", String::from_utf8_lossy(o));
        assert_eq!(detect(Direction::Ingress, o), Detection::No, "{:?}", String::from_utf8_lossy(o));
    }
    assert_eq!(detect(Direction::Egress, b"Q\x7f\xff\xff\xff"), Detection::No, "absurd length");
    assert_eq!(detect(Direction::Egress, b"\0\0\0\x08\0\0\0\0"), Detection::No, "unknown startup code");
}
