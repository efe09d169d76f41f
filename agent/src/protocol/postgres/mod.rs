//! PostgreSQL wire protocol v3: detection, an incremental per-connection
//! parser, and the mapping of its exchanges to OpenTelemetry DB attributes.
//!
//! ```text
//! bytes -> framing (per direction) -> frontend/backend decode -> session (pairing) -> PgExchange
//!                                                                   describe() + sql::{sanitize, summarize}
//! ```
//!
//! Guarantees:
//! - One exchange per simple `Query` (ended by ReadyForQuery) and one per
//!   extended-protocol `Execute` (ended by its CommandComplete, ErrorResponse,
//!   EmptyQueryResponse or PortalSuspended), paired in order, pipelines included.
//! - After an `S`/`G` answer to SSLRequest/GSSENCRequest the connection is
//!   encrypted: both directions become opaque and nothing more is counted.
//! - Password, SASL and GSS messages are never buffered, stored or exported;
//!   neither are DataRow or CopyData contents.
//! - All state is bounded (see [`framing`] and [`session`] constants), and any
//!   input is handled without panicking: bad framing is counted and resynced.

mod backend;
mod describe;
mod framing;
mod frontend;
mod lexer;
mod session;
pub mod sql;

use compact_str::CompactString;
use std::sync::{Arc, OnceLock};

pub use backend::PgError;
pub use describe::describe;
pub use session::{MAX_PENDING, MAX_PORTALS, MAX_STATEMENTS};

use super::{Chunk, Detection, Direction, Exchange, ParseStats, Role, StreamParser};
use framing::{Event, Framer, Input, Side};
use session::{Effect, Session};

/// SQL text of a query or prepared statement, shared by every Execute of it.
#[derive(Debug)]
pub struct Statement {
    /// Captured text (lossy UTF-8), at most 64 KiB.
    pub text: Box<str>,
    /// The text was cut (capture limit or size cap): only a prefix is known.
    pub truncated: bool,
    analysis: OnceLock<Analysis>,
}

/// Sanitised text and summary of a statement, computed once per statement.
#[derive(Debug)]
pub struct Analysis {
    pub sanitized: String,
    pub operation: Option<String>,
    pub collection: Option<String>,
    pub summary: Option<String>,
}

impl Statement {
    pub fn new(sql: &[u8], truncated: bool) -> Arc<Self> {
        Arc::new(Self { text: String::from_utf8_lossy(sql).into(), truncated, analysis: OnceLock::new() })
    }

    /// Sanitised text and summary (computed on first use).
    pub fn analysis(&self) -> &Analysis {
        self.analysis.get_or_init(|| {
            let (operation, collection) = sql::summarize(&self.text);
            let summary = sql::summary_text(operation.as_deref(), collection.as_deref());
            Analysis { sanitized: sql::sanitize(&self.text), operation, collection, summary }
        })
    }
}

/// One request/response pair: a simple query or an extended-protocol Execute.
#[derive(Clone, Debug, Default)]
pub struct PgExchange {
    /// The SQL; None when the statement was prepared before kspan saw the
    /// connection (then `prepared_unknown` is true).
    pub statement: Option<Arc<Statement>>,
    /// An Execute of a statement (or portal) whose Parse/Bind kspan never saw.
    pub prepared_unknown: bool,
    /// Name of that unknown statement or portal (client-chosen identifier).
    pub unknown_statement_name: Option<Box<str>>,
    /// Extended protocol (Parse/Bind/Execute) rather than a simple Query.
    pub extended: bool,
    /// `database` from the StartupMessage.
    pub database: Option<Arc<str>>,
    /// `user` from the StartupMessage (private: never exported).
    pub user: Option<Arc<str>>,
    /// Command of the first CommandComplete tag (`SELECT`, `INSERT`, ...).
    pub command: Option<CompactString>,
    /// Rows from the CommandComplete tag(s), else the number of DataRows.
    pub rows: Option<u64>,
    pub error: Option<PgError>,
    /// Backend bytes were lost while this request was answered: rows and
    /// status may be incomplete.
    pub response_truncated: bool,
    /// Execute stopped at its row limit (PortalSuspended).
    pub suspended: bool,
}

/// Sniffs the first bytes seen in one direction: a startup-phase message, or
/// a message whose type and layout only one side sends.
pub fn detect(dir: Direction, data: &[u8]) -> Detection {
    let frontend_role = match dir {
        Direction::Egress => Role::Client,
        Direction::Ingress => Role::Server,
    };
    let backend_role = match dir {
        Direction::Egress => Role::Server,
        Direction::Ingress => Role::Client,
    };
    let Some(&ty) = data.first() else {
        return Detection::NeedMore;
    };
    if ty == 0 {
        return detect_startup(data, frontend_role);
    }
    if !b"QPBZR12nIsTKE".contains(&ty) {
        return Detection::No;
    }
    let Some(len) = data.get(1..5).map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize) else {
        // Reject early when the first length byte is already implausible.
        return if data.get(1).is_some_and(|&b| b != 0) { Detection::No } else { Detection::NeedMore };
    };
    if !(4..(1 << 24)).contains(&len) {
        return Detection::No;
    }
    let body = data.get(5..).unwrap_or_default();
    let first = body.first().copied();
    let need_more_or = |ok: bool| {
        if first.is_none() {
            Detection::NeedMore
        } else if ok {
            Detection::Yes(frontend_role)
        } else {
            Detection::No
        }
    };
    match ty {
        // Query text or a statement name: printable bytes.
        b'Q' => need_more_or(len > 5 && first.is_some_and(|b| b >= 0x20 || b.is_ascii_whitespace())),
        b'P' | b'B' => need_more_or(first.is_some_and(|b| b == 0 || b.is_ascii_graphic())),
        b'Z' => match first {
            None => Detection::NeedMore,
            Some(b'I' | b'T' | b'E') if len == 5 => Detection::Yes(backend_role),
            Some(_) => Detection::No,
        },
        b'1' | b'2' | b'n' | b'I' | b's' if len == 4 => Detection::Yes(backend_role),
        b'R' if (8..=2048).contains(&len) => Detection::Yes(backend_role),
        b'K' if len == 12 => Detection::Yes(backend_role),
        b'T' if len >= 6 => Detection::Yes(backend_role),
        // ErrorResponse starts with its severity field; Execute with a portal name.
        b'E' => match first {
            None => Detection::NeedMore,
            Some(b'S') if body.get(1).is_none_or(|b| b.is_ascii_uppercase()) => Detection::Yes(backend_role),
            Some(_) => Detection::No,
        },
        _ => Detection::No,
    }
}

fn detect_startup(data: &[u8], role: Role) -> Detection {
    let (Some(len), Some(code)) = (data.get(0..4), data.get(4..8)) else {
        return if data.get(1).is_some_and(|&b| b != 0) { Detection::No } else { Detection::NeedMore };
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]);
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    let ok = match code {
        80_877_103 | 80_877_104 => len == 8,
        80_877_102 => len == 16,
        c if c >> 16 == 3 => (8..=10_000).contains(&len),
        _ => false,
    };
    if ok { Detection::Yes(role) } else { Detection::No }
}

/// Per-connection parser state.
pub struct PgParser {
    role: Role,
    front: Framer,
    back: Framer,
    session: Session,
}

impl PgParser {
    pub fn new(role: Role) -> Self {
        Self { role, front: Framer::new(Side::Frontend), back: Framer::new(Side::Backend), session: Session::new(role) }
    }

    /// Named statements and portals evicted to respect the caps (grows only).
    pub fn evictions(&self) -> u64 {
        self.session.evictions
    }

    fn apply(&mut self, effect: Effect) {
        match effect {
            Effect::None => {}
            Effect::ExpectSslReply => self.back.expect_ssl_reply = true,
            Effect::Opaque => {
                self.front.go_opaque();
                self.back.go_opaque();
            }
        }
    }
}

impl StreamParser for PgParser {
    fn feed(&mut self, chunk: &Chunk<'_>, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        let (_, tail) = chunk.gap_and_tail();
        let mut inp =
            Input { data: chunk.data, pos: 0, missing: chunk.missing(), tail, ts: chunk.ts_ns, tid: chunk.tid };
        if chunk.dir == self.role.request_direction() {
            while let Some(ev) = self.front.next(&mut inp, stats) {
                let effect = match ev {
                    Event::Msg(f) => self.session.on_frontend(&f, stats),
                    Event::Lost => {
                        self.session.on_frontend_lost();
                        Effect::None
                    }
                };
                self.apply(effect);
            }
        } else {
            while let Some(ev) = self.back.next(&mut inp, stats) {
                let effect = match ev {
                    Event::Msg(f) => self.session.on_backend(&f, out, stats),
                    Event::Lost => {
                        self.session.on_backend_lost(chunk.ts_ns);
                        Effect::None
                    }
                };
                self.apply(effect);
            }
        }
    }

    fn close(&mut self, _ts_ns: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        self.session.close(out, stats);
    }
}

#[cfg(test)]
mod tail_tests;
#[cfg(test)]
mod tests;
