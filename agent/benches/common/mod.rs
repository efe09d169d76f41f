//! Shared by the parser benches.

use kspan::protocol::{Chunk, Direction, Exchange, ParseStats, StreamParser};

/// Feeds a connection's writes, in order, to a fresh `parser`.
pub fn feed_all<P: StreamParser>(
    mut parser: P,
    writes: &[(Direction, Vec<u8>)],
    out: &mut Vec<Exchange>,
) -> ParseStats {
    let mut stats = ParseStats::default();
    for (i, (dir, data)) in writes.iter().enumerate() {
        let chunk = Chunk { dir: *dir, ts_ns: i as u64, tid: 1, data, len: data.len(), tail: &[] };
        parser.feed(&chunk, out, &mut stats);
    }
    stats
}
