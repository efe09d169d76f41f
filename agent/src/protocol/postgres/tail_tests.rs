//! Responses and COPY streams larger than the capture: what a chunk's tail
//! (its last bytes, captured past the gap) recovers, and what is never
//! guessed without it.

use super::tests::{Conv, bind, complete, execute, m, parse, pg, query, ready, sync};
use super::*;
use crate::protocol::testutil::{OwnedChunk, captured};

/// A DataRow of one text column of `n` bytes.
fn wide_row(n: usize) -> Vec<u8> {
    let mut body = vec![0, 1];
    body.extend_from_slice(&(n as u32).to_be_bytes());
    body.extend(std::iter::repeat_n(b'x', n));
    m(b'D', &body)
}

/// Cuts `stream` into writes of `write` bytes, each captured as the kernel
/// would with a `head` prefix and a `tail`.
fn writes(dir: Direction, ts: u64, stream: &[u8], write: usize, head: usize, tail: usize) -> Vec<OwnedChunk> {
    stream.chunks(write).map(|w| captured(dir, ts, w, head, tail)).collect()
}

fn run_client(chunks: &[OwnedChunk]) -> (Vec<Exchange>, ParseStats) {
    crate::protocol::testutil::run(&mut PgParser::new(Role::Client), chunks, Some(1_000_000))
}

fn big_result(rows: usize) -> Vec<u8> {
    let mut resp = m(b'T', b"\0\x01");
    for _ in 0..rows {
        resp.extend(wide_row(90));
    }
    resp.extend([complete(&format!("SELECT {rows}")), ready()].concat());
    resp
}

#[test]
fn a_large_result_keeps_its_row_count_through_the_tail() {
    let resp = big_result(1000);
    for (write, what) in [(resp.len(), "one write"), (8192, "8 KiB writes")] {
        let mut chunks = vec![captured(Direction::Egress, 1000, &query("SELECT * FROM big"), 4096, 256)];
        chunks.extend(writes(Direction::Ingress, 2000, &resp, write, 4096, 256));
        let (exs, stats) = run_client(&chunks);
        assert_eq!(exs.len(), 1, "{what}");
        assert_eq!(pg(&exs[0]).rows, Some(1000), "{what}: from CommandComplete");
        assert_eq!(pg(&exs[0]).command.as_deref(), Some("SELECT"), "{what}");
        assert!(pg(&exs[0]).response_truncated, "{what}");
        assert_eq!((exs[0].start_ns, exs[0].end_ns), (1000, 2000), "{what}");
        assert_eq!(stats.malformed, 0, "{what}: valid traffic, only too large");
        assert!(stats.truncated >= 1 && stats.resyncs >= 1, "{what}: {stats:?}");
        assert_eq!((stats.dropped_requests, stats.unmatched_responses), (0, 0), "{what}");
    }
}

#[test]
fn an_extended_execute_ends_at_its_tag_in_the_tail() {
    let mut resp = [m(b'1', b""), m(b'2', b"")].concat();
    resp.extend(big_result(1999));
    let req = [parse("", "SELECT * FROM big WHERE id < $1"), bind("", ""), execute(""), sync()].concat();
    let mut chunks = vec![captured(Direction::Egress, 1000, &req, 4096, 256)];
    chunks.extend(writes(Direction::Ingress, 2000, &resp, 8192, 4096, 256));
    let (exs, stats) = run_client(&chunks);
    assert_eq!(exs.len(), 1);
    assert_eq!(pg(&exs[0]).rows, Some(1999));
    assert_eq!(stats.malformed, 0);
}

#[test]
fn a_gap_that_ends_inside_a_body_keeps_sync() {
    let resp = [m(b'T', b"\0\x01"), wide_row(8000), complete("SELECT 1"), ready()].concat();
    // The tail starts inside the DataRow: its end, then the tags, in sync.
    let chunks = [
        captured(Direction::Egress, 1000, &query("SELECT 1"), 4096, 0),
        captured(Direction::Ingress, 2000, &resp, 4096, 256),
    ];
    let (exs, stats) = run_client(&chunks);
    assert_eq!(exs.len(), 1);
    assert_eq!(pg(&exs[0]).rows, Some(1));
    assert!(!pg(&exs[0]).response_truncated, "no message was lost");
    assert_eq!((stats.resyncs, stats.malformed), (0, 0));
}

#[test]
fn without_a_tail_rows_seen_before_a_loss_are_not_reported_as_the_count() {
    let resp = big_result(1000);
    let mut c = Conv::default();
    c.out(&[query("SELECT * FROM big")]);
    c.push(Direction::Ingress, resp[..4096].to_vec(), resp.len());
    c.out(&[query("SELECT 1")]).inn(&[m(b'T', b"\0\x01"), wide_row(1), complete("SELECT 1"), ready()]);
    let (exs, _) = c.run();
    assert_eq!(exs.len(), 2);
    assert_eq!(pg(&exs[0]).rows, None, "40-odd rows were seen of an unknown number");
    assert!(pg(&exs[0]).response_truncated);
}

#[test]
fn a_tag_found_after_a_loss_with_two_requests_waiting_is_not_guessed() {
    // Two Executes in one batch; the loss may have hidden the first one's
    // CommandComplete, so the tag in the tail may answer either.
    let req = [parse("", "SELECT * FROM big"), bind("", ""), execute(""), bind("", ""), execute(""), sync()].concat();
    let mut resp = [m(b'1', b""), m(b'2', b"")].concat();
    for _ in 0..100 {
        resp.extend(wide_row(90));
    }
    resp.extend([complete("SELECT 100"), m(b'2', b""), wide_row(90), complete("SELECT 1"), ready()].concat());
    let chunks =
        [captured(Direction::Egress, 1000, &req, 4096, 0), captured(Direction::Ingress, 2000, &resp, 4096, 256)];
    let (exs, _) = run_client(&chunks);
    assert_eq!(exs.len(), 2, "both end at ReadyForQuery");
    assert_eq!(exs.iter().map(|e| pg(e).rows).collect::<Vec<_>>(), vec![None, None]);
    assert!(exs.iter().all(|e| pg(e).response_truncated));
}

#[test]
fn copy_in_data_too_large_for_the_capture_is_not_malformed() {
    let mut data = Vec::new();
    for i in 0..5000 {
        data.extend(m(b'd', format!("{i}\tsome text\t{i}\n").as_bytes()));
    }
    data.extend(m(b'c', b""));
    let mut chunks = vec![
        captured(Direction::Egress, 1000, &query("COPY t FROM STDIN"), 4096, 256),
        captured(Direction::Ingress, 1500, &m(b'G', b"\0\0\x01\0\0"), 4096, 256),
    ];
    chunks.extend(writes(Direction::Egress, 2000, &data, 8192, 4096, 256));
    chunks.push(captured(Direction::Ingress, 3000, &[complete("COPY 5000"), ready()].concat(), 4096, 256));
    chunks.push(captured(Direction::Egress, 4000, &query("SELECT 1"), 4096, 256));
    chunks.push(captured(Direction::Ingress, 5000, &[complete("SELECT 0"), ready()].concat(), 4096, 256));
    let (exs, stats) = run_client(&chunks);
    assert_eq!(
        exs.iter().map(|e| (pg(e).command.as_deref(), pg(e).rows)).collect::<Vec<_>>(),
        vec![(Some("COPY"), Some(5000)), (Some("SELECT"), Some(0))]
    );
    assert_eq!(stats.malformed, 0);
}

#[test]
fn searching_across_many_gaps_does_not_give_the_connection_up() {
    // More than MAX_SCAN bytes searched in all, but never that many since
    // the last gap: a long COPY out is not a stream to give up on.
    let per = 4096;
    let n = framing::MAX_SCAN / per + 10;
    let mut chunks = vec![captured(Direction::Egress, 1000, &query("COPY big TO STDOUT"), 4096, 0)];
    chunks.push(captured(Direction::Ingress, 1500, &m(b'H', b"\0\0\0"), 4096, 0));
    // Two CopyData messages, the second one's header lost: the search starts.
    chunks.push(captured(Direction::Ingress, 1600, &[m(b'd', &[b'x'; 100]), m(b'd', &[b'x'; 100])].concat(), 20, 0));
    let junk = vec![b'x'; 2 * per];
    for _ in 0..n {
        chunks.push(captured(Direction::Ingress, 2000, &junk, per, 0));
    }
    chunks.push(captured(Direction::Ingress, 3000, &[complete("COPY 7"), ready()].concat(), 4096, 0));
    let (exs, stats) = run_client(&chunks);
    assert_eq!(exs.len(), 1);
    assert_eq!(pg(&exs[0]).rows, Some(7));
    assert_eq!(stats.malformed, 0);
}

#[test]
fn a_lower_case_or_unterminated_tag_is_no_anchor() {
    for bogus in [m(b'C', b"select 5\0"), m(b'C', b"SELECT 5x"), m(b'C', b"5 SELECT\0")] {
        let resp = [m(b'T', b"\0\x01"), wide_row(5000)].concat();
        let mut tail = bogus.clone();
        tail.extend(ready());
        let mut chunk = captured(Direction::Ingress, 2000, &resp, 100, 0);
        chunk.len += tail.len() + 1000;
        chunk.tail = tail;
        let chunks = [captured(Direction::Egress, 1000, &query("SELECT 5"), 4096, 0), chunk];
        let (exs, _) = run_client(&chunks);
        assert_eq!(exs.len(), 1, "{bogus:?}: ended by ReadyForQuery");
        assert_eq!(pg(&exs[0]).command, None, "{bogus:?}");
    }
}
