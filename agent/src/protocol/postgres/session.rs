//! Per-connection PostgreSQL state: prepared statements, portals and the
//! FIFO of in-flight requests that responses are paired with.
//!
//! Guarantees:
//! - Responses are paired with requests strictly in order. Requests are
//!   grouped in batches closed by `Sync` (or a simple `Query`), each answered
//!   by one `ReadyForQuery`; an error fails the request it answers and the
//!   rest of its batch, which the server skips (counted as dropped).
//! - Bounded: at most [`MAX_PENDING`] in-flight requests, [`MAX_STATEMENTS`]
//!   named statements (least recently used evicted) and [`MAX_PORTALS`]
//!   named portals; drops and evictions are counted.
//! - Housekeeping (startup, authentication, `Sync` alone, prepare-only
//!   batches that succeed, empty queries) produces no exchange.

use std::collections::VecDeque;
use std::num::NonZeroUsize;
use std::sync::Arc;

use compact_str::CompactString;
use lru::LruCache;

use super::backend::{self, PgError};
use super::framing::{Frame, SSL_REPLY};
use super::frontend::{self, FrontMsg};
use super::{PgExchange, Statement};
use crate::protocol::{Exchange, ParseStats, Record, Role};

/// In-flight requests (simple queries, Executes, prepares) per connection.
pub const MAX_PENDING: usize = 128;
/// Named prepared statements remembered per connection.
pub const MAX_STATEMENTS: usize = 256;
/// Named portals remembered per connection.
pub const MAX_PORTALS: usize = 64;
/// Longest database or user name kept.
const MAX_NAME: usize = 256;

/// What the parser must do to its framers after a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Effect {
    None,
    /// SSLRequest/GSSENCRequest sent: a one-byte answer is due.
    ExpectSslReply,
    /// Encrypted or unsupported from here on: stop reading both directions.
    Opaque,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Simple,
    Execute,
    /// A batch with Parse but no Execute: reported only if it fails.
    Prepare,
}

#[derive(Debug)]
struct Pending {
    batch: u64,
    kind: Kind,
    start_ts: u64,
    tid: u32,
    statement: Option<Arc<Statement>>,
    /// Name of a statement kspan never saw prepared.
    unknown_name: Option<Box<str>>,
    data_rows: u64,
    command: Option<CompactString>,
    tag_rows: Option<u64>,
    error: Option<PgError>,
    empty: bool,
    suspended: bool,
    last_resp_ts: Option<u64>,
}

/// A portal's statement: known, or known only by name.
#[derive(Clone, Debug)]
struct Binding {
    statement: Option<Arc<Statement>>,
    name: Box<[u8]>,
}

pub(super) struct Session {
    role: Role,
    database: Option<Arc<str>>,
    user: Option<Arc<str>>,
    statements: LruCache<Box<[u8]>, Arc<Statement>>,
    unnamed: Option<Arc<Statement>>,
    unnamed_portal: Option<Binding>,
    portals: VecDeque<(Box<[u8]>, Binding)>,
    pending: VecDeque<Pending>,
    /// Batch number of the next frontend message; closed by Sync/Query.
    front_batch: u64,
    /// Batch the backend is answering; advanced by ReadyForQuery.
    back_batch: u64,
    /// Start of the Parse/Bind group that precedes the next Execute.
    group_start: Option<(u64, u32)>,
    /// First Parse of the open batch, if the batch has no Execute yet.
    batch_parse: Option<(Arc<Statement>, u64, u32)>,
    batch_has_execute: bool,
    /// Batch whose remaining messages the server skips after an error.
    errored_batch: Option<u64>,
    /// Backend bytes were lost since the last ReadyForQuery (at this time).
    back_lost: Option<u64>,
    /// Named statements and portals evicted to respect the caps.
    pub evictions: u64,
}

fn name_text(b: &[u8]) -> Arc<str> {
    String::from_utf8_lossy(b.get(..MAX_NAME).unwrap_or(b)).into()
}

impl Session {
    pub fn new(role: Role) -> Self {
        Self {
            role,
            database: None,
            user: None,
            statements: LruCache::new(NonZeroUsize::new(MAX_STATEMENTS).unwrap_or(NonZeroUsize::MIN)),
            unnamed: None,
            unnamed_portal: None,
            portals: VecDeque::new(),
            pending: VecDeque::new(),
            front_batch: 0,
            back_batch: 0,
            group_start: None,
            batch_parse: None,
            batch_has_execute: false,
            errored_batch: None,
            back_lost: None,
            evictions: 0,
        }
    }

    pub fn on_frontend(&mut self, f: &Frame<'_>, stats: &mut ParseStats) -> Effect {
        match frontend::decode(f) {
            FrontMsg::Startup { database, user } => {
                self.database = database.map(name_text);
                self.user = user.map(name_text);
                self.front_batch += 1;
            }
            FrontMsg::EncryptionRequest => return Effect::ExpectSslReply,
            FrontMsg::Cancel => {}
            FrontMsg::UnsupportedStartup => return Effect::Opaque,
            FrontMsg::Query { sql } => {
                self.close_batch();
                let statement = Statement::new(sql, !f.complete);
                self.push(self.pending_for(Kind::Simple, (f.start_ts, f.tid), Some(statement), None), stats);
                self.front_batch += 1;
            }
            FrontMsg::Parse { name, sql } => {
                let statement = Statement::new(sql, !f.complete);
                self.group_start.get_or_insert((f.start_ts, f.tid));
                if !self.batch_has_execute && self.batch_parse.is_none() {
                    self.batch_parse = Some((statement.clone(), f.start_ts, f.tid));
                }
                if name.is_empty() {
                    self.unnamed = Some(statement);
                } else {
                    let key: Box<[u8]> = name.into();
                    if !self.statements.contains(&key) && self.statements.len() == MAX_STATEMENTS {
                        self.evictions += 1;
                    }
                    self.statements.put(key, statement);
                }
            }
            FrontMsg::Bind { portal, statement } => {
                self.group_start.get_or_insert((f.start_ts, f.tid));
                let known =
                    if statement.is_empty() { self.unnamed.clone() } else { self.statements.get(statement).cloned() };
                self.bind(portal, Binding { statement: known, name: statement.into() });
            }
            FrontMsg::Execute { portal } => self.execute(portal, f, stats),
            FrontMsg::Close { kind, name } => self.close_object(kind, name),
            FrontMsg::Sync => {
                self.close_batch();
                self.front_batch += 1;
            }
            FrontMsg::Other => {}
        }
        Effect::None
    }

    fn pending_for(
        &self,
        kind: Kind,
        start: (u64, u32),
        statement: Option<Arc<Statement>>,
        unknown_name: Option<Box<str>>,
    ) -> Pending {
        Pending {
            batch: self.front_batch,
            kind,
            start_ts: start.0,
            tid: start.1,
            statement,
            unknown_name,
            data_rows: 0,
            command: None,
            tag_rows: None,
            error: None,
            empty: false,
            suspended: false,
            last_resp_ts: None,
        }
    }

    fn push(&mut self, p: Pending, stats: &mut ParseStats) {
        if self.pending.len() >= MAX_PENDING {
            stats.dropped_requests += 1;
        } else {
            self.pending.push_back(p);
        }
    }

    fn bind(&mut self, portal: &[u8], b: Binding) {
        if portal.is_empty() {
            self.unnamed_portal = Some(b);
            return;
        }
        self.portals.retain(|(name, _)| **name != *portal);
        if self.portals.len() >= MAX_PORTALS {
            self.portals.pop_front();
            self.evictions += 1;
        }
        self.portals.push_back((portal.into(), b));
    }

    fn execute(&mut self, portal: &[u8], f: &Frame<'_>, stats: &mut ParseStats) {
        let start = self.group_start.take().unwrap_or((f.start_ts, f.tid));
        self.batch_has_execute = true;
        self.batch_parse = None;
        if self.errored_batch == Some(self.front_batch) {
            // The server skips everything up to Sync after an error.
            stats.dropped_requests += 1;
            return;
        }
        let binding = if portal.is_empty() {
            self.unnamed_portal.clone()
        } else {
            self.portals.iter().find(|(name, _)| **name == *portal).map(|(_, b)| b.clone())
        };
        let (statement, unknown_name) = match binding {
            Some(Binding { statement: Some(s), .. }) => (Some(s), None),
            Some(Binding { statement: None, name }) => (None, Some(String::from_utf8_lossy(&name).into())),
            None => (None, Some(String::from_utf8_lossy(portal).into())),
        };
        self.push(self.pending_for(Kind::Execute, start, statement, unknown_name), stats);
    }

    fn close_object(&mut self, kind: u8, name: &[u8]) {
        match (kind, name.is_empty()) {
            (b'S', true) => self.unnamed = None,
            (b'S', false) => {
                self.statements.pop(name);
            }
            (_, true) => self.unnamed_portal = None,
            (_, false) => self.portals.retain(|(n, _)| **n != *name),
        }
    }

    /// End of a frontend batch: a batch that only prepared is tracked so a
    /// failing Parse is still reported.
    fn close_batch(&mut self) {
        if let Some((statement, ts, tid)) = self.batch_parse.take() {
            let p = self.pending_for(Kind::Prepare, (ts, tid), Some(statement), None);
            if self.pending.len() < MAX_PENDING {
                self.pending.push_back(p);
            }
        }
        self.batch_has_execute = false;
        self.group_start = None;
    }

    pub fn on_frontend_lost(&mut self) {
        self.group_start = None;
    }

    pub fn on_backend_lost(&mut self, ts: u64) {
        self.back_lost.get_or_insert(ts);
    }

    /// The request the backend is answering now, if any.
    fn current(&mut self) -> Option<&mut Pending> {
        let batch = self.back_batch;
        self.pending.front_mut().filter(|p| p.batch == batch && p.kind != Kind::Prepare)
    }

    pub fn on_backend(&mut self, f: &Frame<'_>, out: &mut Vec<Exchange>, stats: &mut ParseStats) -> Effect {
        match f.ty {
            SSL_REPLY => {
                if matches!(f.body.first(), Some(b'S' | b'G')) {
                    return Effect::Opaque;
                }
            }
            b'D' => {
                if let Some(p) = self.current() {
                    p.data_rows += 1;
                }
            }
            b'C' => {
                if self.back_lost.is_some() && self.pending.len() > 1 {
                    // Found after a loss with several requests waiting: the
                    // lost bytes may have answered some; ReadyForQuery sorts
                    // them out.
                    return Effect::None;
                }
                let tag = backend::parse_tag(f.body);
                let Some(p) = self.current() else {
                    stats.unmatched_responses += 1;
                    return Effect::None;
                };
                p.last_resp_ts = Some(f.end_ts);
                if let Some(rows) = tag.rows {
                    p.tag_rows = Some(p.tag_rows.unwrap_or(0).saturating_add(rows));
                }
                p.command.get_or_insert(tag.command);
                if p.kind == Kind::Execute {
                    self.complete_front(f.end_ts, out, stats);
                }
            }
            b'I' | b's' => {
                let Some(p) = self.current() else {
                    stats.unmatched_responses += 1;
                    return Effect::None;
                };
                p.last_resp_ts = Some(f.end_ts);
                if f.ty == b'I' {
                    p.empty = true;
                } else {
                    p.suspended = true;
                }
                if p.kind == Kind::Execute {
                    self.complete_front(f.end_ts, out, stats);
                }
            }
            b'E' => self.on_error(backend::parse_error(f.body), f.end_ts, out, stats),
            b'Z' => self.on_ready(f.end_ts, out, stats),
            _ => {}
        }
        Effect::None
    }

    fn on_error(&mut self, error: PgError, ts: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        let batch = self.back_batch;
        let Some(p) = self.pending.front_mut().filter(|p| p.batch == batch) else {
            // Errors outside a request: startup/authentication or a Sync-only batch.
            if !(self.pending.is_empty() && self.back_batch < self.front_batch) {
                stats.unmatched_responses += 1;
            }
            return;
        };
        p.last_resp_ts = Some(ts);
        p.error.get_or_insert(error);
        if p.kind == Kind::Simple {
            return; // completed by ReadyForQuery
        }
        self.complete_front(ts, out, stats);
        // The server skips the rest of the batch up to Sync.
        while self.pending.front().is_some_and(|p| p.batch == batch) {
            self.pending.pop_front();
            stats.dropped_requests += 1;
        }
        self.errored_batch = Some(batch);
    }

    fn on_ready(&mut self, ts: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        if let Some(lost_ts) = self.back_lost {
            // The first ReadyForQuery after a loss answers the latest batch the
            // client closed; older batches had their answers in the lost bytes.
            let latest = self.front_batch.saturating_sub(1);
            while let Some(p) = self.pending.pop_front_if(|p| p.batch < latest) {
                if p.kind != Kind::Prepare {
                    self.emit(p, lost_ts, out, stats);
                }
            }
            self.back_batch = self.back_batch.max(latest);
        }
        let batch = self.back_batch;
        while let Some(p) = self.pending.pop_front_if(|p| p.batch <= batch) {
            match p.kind {
                Kind::Simple if p.empty && p.error.is_none() => {}
                Kind::Simple => self.emit(p, ts, out, stats),
                Kind::Execute if self.back_lost.is_some() => self.emit(p, ts, out, stats),
                Kind::Execute => stats.dropped_requests += 1,
                Kind::Prepare => {}
            }
        }
        if self.back_batch < self.front_batch {
            self.back_batch += 1;
        }
        if self.errored_batch.is_some_and(|b| b < self.back_batch) {
            self.errored_batch = None;
        }
        self.back_lost = None;
    }

    fn complete_front(&mut self, ts: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        if let Some(p) = self.pending.pop_front() {
            if p.empty && p.error.is_none() {
                return;
            }
            self.emit(p, ts, out, stats);
        }
    }

    /// Connection closed: a simple query that already got its result is
    /// reported; requests still waiting are dropped.
    pub fn close(&mut self, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        while let Some(p) = self.pending.pop_front() {
            match (p.kind, p.last_resp_ts) {
                (Kind::Simple, Some(ts)) if !(p.empty && p.error.is_none()) => self.emit(p, ts, out, stats),
                (Kind::Prepare, _) => {}
                _ => stats.dropped_requests += 1,
            }
        }
    }

    fn emit(&self, p: Pending, end_ts: u64, out: &mut Vec<Exchange>, stats: &mut ParseStats) {
        stats.exchanges += 1;
        // DataRows counted before a loss are not all of them.
        let rows = p.tag_rows.or((p.data_rows > 0 && self.back_lost.is_none()).then_some(p.data_rows));
        let record = PgExchange {
            prepared_unknown: p.statement.is_none(),
            statement: p.statement,
            unknown_statement_name: p.unknown_name,
            extended: p.kind != Kind::Simple,
            database: self.database.clone(),
            user: self.user.clone(),
            command: p.command.filter(|c| !c.is_empty()),
            rows,
            error: p.error,
            response_truncated: self.back_lost.is_some(),
            suspended: p.suspended,
        };
        out.push(Exchange {
            role: self.role,
            start_ns: p.start_ts,
            end_ns: end_ts.max(p.start_ts),
            tid: p.tid,
            window: None,
            record: Record::Postgres(record),
        });
    }
}
