//! http parser (placeholder: replaced by the real parser).

use super::{Chunk, ConnMeta, Described, Detection, Direction, Exchange, ParseStats, Privacy, Role, StreamParser};

/// One parsed request/response pair.
#[derive(Clone, Debug, Default)]
pub struct HttpExchange {}

/// Sniffs the first bytes of one direction.
pub fn detect(_dir: Direction, _data: &[u8]) -> Detection {
    Detection::No
}

/// Per-connection parser state.
pub struct HttpParser {
    _role: Role,
}

impl HttpParser {
    pub fn new(role: Role) -> Self {
        Self { _role: role }
    }
}

impl StreamParser for HttpParser {
    fn feed(&mut self, _chunk: &Chunk<'_>, _out: &mut Vec<Exchange>, _stats: &mut ParseStats) {}
    fn close(&mut self, _ts_ns: u64, _out: &mut Vec<Exchange>, _stats: &mut ParseStats) {}
}

/// Semantic-convention name, attributes and status of an exchange.
pub fn describe(_r: &HttpExchange, _role: Role, _conn: &ConnMeta, _privacy: &Privacy) -> Described {
    Described::default()
}
