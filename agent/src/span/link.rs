//! Whole-trace linking on one host, without touching any bytes.
//!
//! Two rules join spans that the builder made as separate traces:
//! - Nesting: a CLIENT span issued by thread T of process P while T serves a
//!   request becomes a child of that SERVER span (same (pid, tid), client
//!   time range inside the server's).
//! - Cross-process: a SERVER span whose connection is the other end of a
//!   traced CLIENT span's connection (same 4-tuple, server time range inside
//!   the client's) becomes a child of that client span, in its trace.
//!
//! Guarantees:
//! - Context carried in the bytes wins: a span that joined a `traceparent`
//!   (client of an SDK-instrumented app, server called with a header) is never
//!   re-parented or moved to another trace; its nested clients take its trace.
//! - Trace ids are final when a span leaves the linker; spans linked under a
//!   held span leave together with it, in its final trace.
//! - Bounded: at most `max_held` spans held in total and `max_per_thread`
//!   waiting clients per thread; a span is held at most `hold_ns` (plus one
//!   tick). Spans forced out by a cap or a deadline leave unlinked and are
//!   counted. No span is ever lost: [`Linker::flush`] releases everything.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

use super::model::{Span, SpanKind};
use crate::protocol::ConnMeta;

/// Limits of the linker.
#[derive(Clone, Copy, Debug)]
pub struct LinkLimits {
    /// How long a span may wait for its parent (ns of monotonic time).
    pub hold_ns: u64,
    /// Spans held at most, in total.
    pub max_held: usize,
    /// Client spans waiting for their server span at most, per thread.
    pub max_per_thread: usize,
}

impl Default for LinkLimits {
    fn default() -> Self {
        Self { hold_ns: 500_000_000, max_held: 16_384, max_per_thread: 256 }
    }
}

/// Counters of the linker (all only grow, except `held`).
#[derive(Clone, Copy, Debug, Default)]
pub struct LinkStats {
    /// Client spans made children of the server span of their thread.
    pub nested: u64,
    /// Server spans made children of the client span at the other end.
    pub cross_process: u64,
    /// Held spans whose parent did not show up in time.
    pub released_unlinked: u64,
    /// Held spans released early (unlinked) because a cap was reached.
    pub forced_out: u64,
    /// Processes found serving overlapping requests on one thread (event
    /// loops): their client spans are not nested, since the thread does not
    /// say which request they belong to.
    pub multiplexed: u64,
    /// Spans held now.
    pub held: u64,
}

/// A span plus what the linker needs to know about where it came from.
#[derive(Debug)]
pub struct LinkInput {
    pub span: Span,
    pub pid: u32,
    pub meta: ConnMeta,
}

/// A connection as (client end, server end).
type ConnKey = (SocketAddr, SocketAddr);

/// Where a held span is indexed.
#[derive(Clone, Copy, Debug)]
enum Slot {
    /// A client waiting for the server span of its thread.
    Thread(u32, u32),
    /// A server waiting for the client span at the other end.
    Server(ConnKey),
}

struct Held {
    span: Span,
    /// Linked under `span` (directly or deeper); they take its trace on release.
    deps: Vec<Span>,
    slot: Slot,
    /// Connections of client spans in this tree that have a [`Note`].
    note_keys: Vec<ConnKey>,
}

impl Held {
    fn len(&self) -> usize {
        1 + self.deps.len()
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Target {
    /// The client span is held under this id; its trace may still change.
    Held(u64),
    /// The client span left with this trace.
    Final { trace_id: [u8; 16], flags: u8, state: String },
}

/// A client span on a local connection, remembered so that the server span
/// at the other end can find it in either arrival order.
struct Note {
    span_id: [u8; 8],
    start: u64,
    end: u64,
    target: Target,
}

/// Why a held span leaves unlinked.
#[derive(Clone, Copy)]
enum Why {
    Unlinked,
    Forced,
}

/// The linking stage.
/// Client notes kept per connection: a callee's server span matches one of the
/// caller's most recent requests on that connection, so older notes only cost
/// (a pipelining client would otherwise pile up one per command).
pub const MAX_NOTES_PER_CONN: usize = 64;

pub struct Linker {
    limits: LinkLimits,
    next_id: u64,
    held: HashMap<u64, Held>,
    held_spans: usize,
    /// Waiting clients per (pid, tid), oldest first.
    threads: HashMap<(u32, u32), VecDeque<u64>>,
    /// Time range of the last server span per (pid, tid).
    last_server: HashMap<(u32, u32), (u64, u64)>,
    /// Processes whose threads serve overlapping requests.
    multiplexed: HashSet<u32>,
    /// Waiting servers per connection.
    servers: HashMap<ConnKey, Vec<u64>>,
    /// (deadline, id), oldest first; ids no longer held are skipped.
    order: VecDeque<(u64, u64)>,
    /// Recent client notes per connection, oldest first (at most [`MAX_NOTES_PER_CONN`]).
    notes: HashMap<ConnKey, VecDeque<Note>>,
    /// (expiry, connection, span id), oldest first.
    note_order: VecDeque<(u64, ConnKey, [u8; 8])>,
    pub stats: LinkStats,
}

fn inside(inner: &Span, outer: &Span) -> bool {
    outer.start_unix_ns <= inner.start_unix_ns && inner.end_unix_ns <= outer.end_unix_ns
}

fn adopt(child: &mut Span, trace_id: [u8; 16], flags: u8, state: &str) {
    child.trace_id = trace_id;
    child.trace_flags = flags;
    if child.trace_state != state {
        child.trace_state = state.to_owned();
    }
}

/// The connection of a client span, when its peer is on this host.
fn client_key(meta: &ConnMeta) -> Option<ConnKey> {
    let (local, peer) = (meta.local?, meta.peer?);
    is_local_peer(local, peer).then_some((local, peer))
}

/// The connection of a server span, when its peer is on this host.
fn server_key(meta: &ConnMeta) -> Option<ConnKey> {
    let (local, peer) = (meta.local?, meta.peer?);
    is_local_peer(local, peer).then_some((peer, local))
}

fn is_local_peer(local: SocketAddr, peer: SocketAddr) -> bool {
    peer.ip().is_loopback() || peer.ip() == local.ip()
}

impl Linker {
    pub fn new(limits: LinkLimits) -> Self {
        Self {
            limits,
            next_id: 0,
            held: HashMap::new(),
            held_spans: 0,
            threads: HashMap::new(),
            last_server: HashMap::new(),
            multiplexed: HashSet::new(),
            servers: HashMap::new(),
            order: VecDeque::new(),
            notes: HashMap::new(),
            note_order: VecDeque::new(),
            stats: LinkStats::default(),
        }
    }

    /// Spans held now.
    pub fn held(&self) -> usize {
        self.held_spans
    }

    /// Takes one span; spans whose trace is final are appended to `out`.
    /// `now` is monotonic time (ns), used only for deadlines.
    pub fn push(&mut self, input: LinkInput, now: u64, out: &mut Vec<Span>) {
        let LinkInput { span, pid, meta } = input;
        match span.kind {
            SpanKind::Client => self.push_client(span, pid, &meta, now, out),
            SpanKind::Server => self.push_server(span, pid, &meta, now, out),
        }
        self.enforce_total_cap(out);
        self.stats.held = self.held_spans as u64;
    }

    fn push_client(&mut self, span: Span, pid: u32, meta: &ConnMeta, now: u64, out: &mut Vec<Span>) {
        let joined = !span.is_root();
        let key = client_key(meta);
        let id = self.new_id();
        let mut deps = Vec::new();
        let mut note_keys = Vec::new();
        // The server at the other end arrived first and waits.
        if let Some(k) = key
            && let Some(sid) = self.waiting_server(k, &span)
            && let Some(s) = self.take(sid)
        {
            self.stats.cross_process += 1;
            self.absorb(id, &span, sid, s, &mut deps, &mut note_keys);
        }
        if let Some(k) = key {
            note_keys.push(k);
            self.add_note(k, &span, Target::Held(id), now);
        }
        if joined || self.multiplexed.contains(&pid) {
            // The app's own context wins: the span leaves now, as built.
            // (In an event loop, nothing says which request it serves.)
            self.emit(id, span, deps, &note_keys, out);
            return;
        }
        let thread = (pid, span.tid);
        let held = Held { span, deps, slot: Slot::Thread(pid, thread.1), note_keys };
        self.insert(id, held, now);
        let queue = self.threads.entry(thread).or_default();
        queue.push_back(id);
        if queue.len() > self.limits.max_per_thread
            && let Some(oldest) = queue.front().copied()
        {
            self.release(oldest, Why::Forced, out);
        }
    }

    fn push_server(&mut self, mut span: Span, pid: u32, meta: &ConnMeta, now: u64, out: &mut Vec<Span>) {
        let joined = !span.is_root();
        let id = self.new_id();
        let mut deps = Vec::new();
        let mut note_keys = Vec::new();
        self.note_server_range(pid, &span);
        // Clients of this thread: nested ones become children; older ones
        // can no longer be nested in anything and leave.
        let multiplexed = self.multiplexed.contains(&pid);
        let waiting: Vec<u64> =
            self.threads.get(&(pid, span.tid)).map(|q| q.iter().copied().collect()).unwrap_or_default();
        for cid in waiting {
            let Some(h) = self.held.get(&cid) else { continue };
            if multiplexed {
                self.release(cid, Why::Unlinked, out);
            } else if inside(&h.span, &span) {
                if let Some(c) = self.take(cid) {
                    self.stats.nested += 1;
                    self.absorb(id, &span, cid, c, &mut deps, &mut note_keys);
                }
            } else if h.span.start_unix_ns < span.start_unix_ns {
                self.release(cid, Why::Unlinked, out);
            }
        }
        if !joined && let Some(k) = server_key(meta) {
            // The client at the other end arrived first.
            if let Some(note) = self.take_note(k, &span) {
                span.parent_span_id = note.span_id;
                self.stats.cross_process += 1;
                match note.target {
                    Target::Held(cid) if self.held.contains_key(&cid) => {
                        let n = 1 + deps.len();
                        self.redirect(&note_keys, id, &Target::Held(cid));
                        if let Some(c) = self.held.get_mut(&cid) {
                            c.deps.push(span);
                            c.deps.append(&mut deps);
                            c.note_keys.append(&mut note_keys);
                            self.held_spans += n;
                        }
                        return;
                    }
                    Target::Held(_) => {}
                    Target::Final { trace_id, flags, state } => adopt(&mut span, trace_id, flags, &state),
                }
                self.emit(id, span, deps, &note_keys, out);
                return;
            }
            // Wait for the client at the other end.
            self.servers.entry(k).or_default().push(id);
            self.insert(id, Held { span, deps, slot: Slot::Server(k), note_keys }, now);
            return;
        }
        self.emit(id, span, deps, &note_keys, out);
    }

    /// Remembers the thread's last server span; one that overlaps it means
    /// the thread multiplexes requests and nesting is off for its process.
    fn note_server_range(&mut self, pid: u32, span: &Span) {
        let range = (span.start_unix_ns, span.end_unix_ns);
        if self.last_server.len() >= self.limits.max_held && !self.last_server.contains_key(&(pid, span.tid)) {
            self.last_server.clear();
        }
        let Some((start, end)) = self.last_server.insert((pid, span.tid), range) else { return };
        if range.0 < end && start < range.1 && !self.multiplexed.contains(&pid) {
            if self.multiplexed.len() >= self.limits.max_held {
                self.multiplexed.clear();
            }
            self.multiplexed.insert(pid);
            self.stats.multiplexed += 1;
        }
    }

    /// Releases spans whose deadline passed and forgets expired notes.
    pub fn tick(&mut self, now: u64, out: &mut Vec<Span>) {
        while let Some(&(deadline, id)) = self.order.front() {
            if deadline > now {
                break;
            }
            self.order.pop_front();
            if self.held.contains_key(&id) {
                self.release(id, Why::Unlinked, out);
            }
        }
        while let Some(&(expiry, k, span_id)) = self.note_order.front() {
            if expiry > now {
                break;
            }
            self.note_order.pop_front();
            self.forget_note(k, span_id);
        }
        self.stats.held = self.held_spans as u64;
    }

    /// Releases every held span (shutdown).
    pub fn flush(&mut self, out: &mut Vec<Span>) {
        while let Some((_, id)) = self.order.pop_front() {
            if self.held.contains_key(&id) {
                self.release(id, Why::Unlinked, out);
            }
        }
        self.notes.clear();
        self.note_order.clear();
        self.stats.held = self.held_spans as u64;
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn insert(&mut self, id: u64, held: Held, now: u64) {
        self.held_spans += held.len();
        self.held.insert(id, held);
        self.order.push_back((now.saturating_add(self.limits.hold_ns), id));
        // Ids absorbed into other trees stay queued until their deadline:
        // compact when they dominate.
        if self.order.len() > 2 * self.limits.max_held.max(self.held.len()) + 64 {
            let held = &self.held;
            self.order.retain(|(_, id)| held.contains_key(id));
        }
    }

    fn enforce_total_cap(&mut self, out: &mut Vec<Span>) {
        while self.held_spans > self.limits.max_held {
            let Some((_, id)) = self.order.pop_front() else { break };
            if self.held.contains_key(&id) {
                self.release(id, Why::Forced, out);
            }
        }
    }

    /// Removes a held tree and its index entries.
    fn take(&mut self, id: u64) -> Option<Held> {
        let h = self.held.remove(&id)?;
        self.held_spans = self.held_spans.saturating_sub(h.len());
        match h.slot {
            Slot::Thread(pid, tid) => {
                if let Some(q) = self.threads.get_mut(&(pid, tid)) {
                    // Waiting clients leave oldest first: usually the front one.
                    if q.front() == Some(&id) {
                        q.pop_front();
                    } else {
                        q.retain(|x| *x != id);
                    }
                    if q.is_empty() {
                        self.threads.remove(&(pid, tid));
                    }
                }
            }
            Slot::Server(k) => {
                if let Some(v) = self.servers.get_mut(&k) {
                    v.retain(|x| *x != id);
                    if v.is_empty() {
                        self.servers.remove(&k);
                    }
                }
            }
        }
        Some(h)
    }

    fn release(&mut self, id: u64, why: Why, out: &mut Vec<Span>) {
        let Some(h) = self.take(id) else { return };
        match why {
            Why::Unlinked => self.stats.released_unlinked += 1,
            Why::Forced => self.stats.forced_out += 1,
        }
        self.emit(id, h.span, h.deps, &h.note_keys, out);
    }

    /// Links the held tree `child` under `parent` (to be held or sent as `id`).
    fn absorb(
        &mut self,
        id: u64,
        parent: &Span,
        old: u64,
        mut child: Held,
        deps: &mut Vec<Span>,
        note_keys: &mut Vec<ConnKey>,
    ) {
        // The child tree's id is gone: notes now follow the new root.
        self.redirect(&child.note_keys, old, &Target::Held(id));
        child.span.parent_span_id = parent.span_id;
        deps.push(child.span);
        deps.append(&mut child.deps);
        note_keys.append(&mut child.note_keys);
    }

    /// Points notes of clients held under `from` at `to`.
    fn redirect(&mut self, keys: &[ConnKey], from: u64, to: &Target) {
        for k in keys {
            if let Some(v) = self.notes.get_mut(k) {
                for n in v.iter_mut().filter(|n| n.target == Target::Held(from)) {
                    n.target = to.clone();
                }
            }
        }
    }

    /// Sends a root (id `id`) and its dependents out, all in the root's trace.
    fn emit(&mut self, id: u64, root: Span, deps: Vec<Span>, note_keys: &[ConnKey], out: &mut Vec<Span>) {
        if !note_keys.is_empty() {
            let target =
                Target::Final { trace_id: root.trace_id, flags: root.trace_flags, state: root.trace_state.clone() };
            self.redirect(note_keys, id, &target);
        }
        for mut d in deps {
            adopt(&mut d, root.trace_id, root.trace_flags, &root.trace_state);
            out.push(d);
        }
        out.push(root);
    }

    /// A held server on connection `k` whose request lies inside `client`.
    fn waiting_server(&self, k: ConnKey, client: &Span) -> Option<u64> {
        let ids = self.servers.get(&k)?;
        ids.iter().copied().find(|id| self.held.get(id).is_some_and(|h| inside(&h.span, client)))
    }

    fn add_note(&mut self, k: ConnKey, span: &Span, target: Target, now: u64) {
        let note = Note { span_id: span.span_id, start: span.start_unix_ns, end: span.end_unix_ns, target };
        let v = self.notes.entry(k).or_default();
        if v.len() >= MAX_NOTES_PER_CONN {
            v.pop_front();
        }
        v.push_back(note);
        self.note_order.push_back((now.saturating_add(self.limits.hold_ns.saturating_mul(2)), k, span.span_id));
        while self.note_order.len() > self.limits.max_held {
            let Some((_, k, id)) = self.note_order.pop_front() else { break };
            self.forget_note(k, id);
        }
    }

    /// Takes the note of a client on connection `k` whose request encloses `server`.
    fn take_note(&mut self, k: ConnKey, server: &Span) -> Option<Note> {
        let v = self.notes.get_mut(&k)?;
        let i = v.iter().position(|n| n.start <= server.start_unix_ns && server.end_unix_ns <= n.end)?;
        let note = v.remove(i)?;
        if v.is_empty() {
            self.notes.remove(&k);
        }
        Some(note)
    }

    fn forget_note(&mut self, k: ConnKey, span_id: [u8; 8]) {
        if let Some(v) = self.notes.get_mut(&k) {
            // Notes expire in the order they were added: usually the front one.
            if v.front().is_some_and(|n| n.span_id == span_id) {
                v.pop_front();
            } else {
                v.retain(|n| n.span_id != span_id);
            }
            if v.is_empty() {
                self.notes.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::span::model::{Attributes, SpanStatus};

    const MS: u64 = 1_000_000;
    const A: u32 = 100;
    const B: u32 = 200;

    fn limits() -> LinkLimits {
        LinkLimits { hold_ns: 500 * MS, max_held: 64, max_per_thread: 8 }
    }

    fn span(kind: SpanKind, n: u8, tid: u32, start: u64, end: u64) -> Span {
        Span {
            trace_id: [n; 16],
            span_id: [n; 8],
            parent_span_id: [0; 8],
            trace_state: String::new(),
            trace_flags: 1,
            name: format!("s{n}"),
            kind,
            start_unix_ns: start,
            end_unix_ns: end,
            status: SpanStatus::default(),
            attributes: Attributes::new(),
            private: Attributes::new(),
            events: Vec::new(),
            resource: Arc::default(),
            tid,
        }
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    /// A connection from `client` to `server`, seen from one end.
    fn meta(local: &str, peer: &str) -> ConnMeta {
        ConnMeta { local: Some(addr(local)), peer: Some(addr(peer)), tls: false }
    }

    fn remote() -> ConnMeta {
        meta("10.0.0.1:8080", "10.0.0.9:40000")
    }

    fn input(span: Span, pid: u32, meta: ConnMeta) -> LinkInput {
        LinkInput { span, pid, meta }
    }

    fn find(out: &[Span], n: u8) -> &Span {
        out.iter().find(|s| s.span_id == [n; 8]).unwrap_or_else(|| panic!("span {n} not released"))
    }

    #[test]
    fn nested_client_becomes_child_of_its_threads_server() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        l.push(input(span(SpanKind::Client, 2, 7, 20, 30), A, meta("10.0.0.1:40000", "10.0.0.5:5432")), 0, &mut out);
        assert!(out.is_empty(), "client is held until its server span arrives");
        l.push(input(span(SpanKind::Server, 1, 7, 10, 40), A, remote()), 0, &mut out);
        assert_eq!(out.len(), 2);
        let (c, s) = (find(&out, 2), find(&out, 1));
        assert_eq!(c.trace_id, s.trace_id);
        assert_eq!(c.parent_span_id, s.span_id);
        assert!(s.is_root());
        assert_eq!(l.stats.nested, 1);
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn a_pipelining_client_keeps_a_bounded_number_of_notes_per_connection() {
        let mut l = Linker::new(LinkLimits { hold_ns: 500 * MS, max_held: 100_000, max_per_thread: 8 });
        let mut out = Vec::new();
        for n in 0..200u32 {
            let s = span(SpanKind::Client, (n % 250) as u8, 7, u64::from(n) * 10, u64::from(n) * 10 + 5);
            l.push(input(s, A, meta("127.0.0.1:40000", "127.0.0.1:6379")), 0, &mut out);
        }
        assert!(
            l.notes.values().all(|v| v.len() <= MAX_NOTES_PER_CONN),
            "{:?}",
            l.notes.values().map(|v| v.len()).collect::<Vec<_>>()
        );
        l.flush(&mut out);
        assert_eq!(out.len(), 200, "no span is lost");
    }

    #[test]
    fn client_of_another_thread_is_not_nested() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        l.push(input(span(SpanKind::Client, 2, 8, 20, 30), A, remote()), 0, &mut out);
        l.push(input(span(SpanKind::Server, 1, 7, 10, 40), A, remote()), 0, &mut out);
        assert_eq!(out.len(), 1, "only the server leaves");
        assert_eq!(l.stats.nested, 0);
        l.tick(500 * MS, &mut out);
        let c = find(&out, 2);
        assert!(c.is_root());
        assert_eq!(c.trace_id, [2; 16]);
        assert_eq!(l.stats.released_unlinked, 1);
    }

    #[test]
    fn client_that_ended_before_the_server_started_leaves_unlinked() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        l.push(input(span(SpanKind::Client, 2, 7, 1, 5), A, remote()), 0, &mut out);
        l.push(input(span(SpanKind::Client, 3, 7, 60, 70), A, remote()), 0, &mut out);
        l.push(input(span(SpanKind::Server, 1, 7, 10, 40), A, remote()), 0, &mut out);
        assert!(find(&out, 2).is_root());
        assert_eq!(l.stats.released_unlinked, 1);
        assert_eq!(l.held(), 1, "a client after the server waits for a later request");
        l.push(input(span(SpanKind::Server, 4, 7, 50, 80), A, remote()), 0, &mut out);
        assert_eq!(find(&out, 3).parent_span_id, [4; 8]);
    }

    #[test]
    fn event_loop_thread_with_overlapping_requests_stops_nesting() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        // Two requests in flight on one thread: the second ends first.
        l.push(input(span(SpanKind::Server, 1, 7, 15, 40), A, remote()), 0, &mut out);
        l.push(input(span(SpanKind::Server, 2, 7, 10, 50), A, remote()), 0, &mut out);
        assert_eq!(l.stats.multiplexed, 1);
        l.push(input(span(SpanKind::Client, 3, 7, 60, 70), A, remote()), 0, &mut out);
        assert_eq!(l.held(), 0, "clients of an event loop are not held");
        l.push(input(span(SpanKind::Server, 4, 7, 55, 80), A, remote()), 0, &mut out);
        assert!(find(&out, 3).is_root());
        assert_eq!(l.stats.nested, 0);
        // Another process keeps nesting.
        l.push(input(span(SpanKind::Client, 5, 7, 60, 70), B, remote()), 0, &mut out);
        l.push(input(span(SpanKind::Server, 6, 7, 55, 80), B, remote()), 0, &mut out);
        assert_eq!(find(&out, 5).parent_span_id, [6; 8]);
    }

    #[test]
    fn sequential_requests_on_one_thread_keep_nesting() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        for i in 0..5u8 {
            let t = u64::from(i) * 100;
            l.push(input(span(SpanKind::Client, 2 * i + 1, 7, t + 20, t + 30), A, remote()), 0, &mut out);
            l.push(input(span(SpanKind::Server, 2 * i + 2, 7, t + 10, t + 40), A, remote()), 0, &mut out);
            assert_eq!(find(&out, 2 * i + 1).parent_span_id, [2 * i + 2; 8]);
        }
        assert_eq!((l.stats.nested, l.stats.multiplexed), (5, 0));
    }

    #[test]
    fn sdk_client_keeps_its_own_context() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        let mut c = span(SpanKind::Client, 2, 7, 20, 30);
        c.trace_id = [9; 16];
        c.parent_span_id = [9; 8];
        l.push(input(c, A, remote()), 0, &mut out);
        assert_eq!(out.len(), 1, "an SDK client is not held");
        l.push(input(span(SpanKind::Server, 1, 7, 10, 40), A, remote()), 0, &mut out);
        let c = find(&out, 2);
        assert_eq!((c.trace_id, c.parent_span_id), ([9; 16], [9; 8]));
        assert_eq!(l.stats.nested, 0);
    }

    #[test]
    fn server_that_joined_a_traceparent_gives_its_trace_to_nested_clients() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        l.push(input(span(SpanKind::Client, 2, 7, 20, 30), A, remote()), 0, &mut out);
        let mut s = span(SpanKind::Server, 1, 7, 10, 40);
        s.trace_id = [0xab; 16];
        s.parent_span_id = [0xcd; 8];
        s.trace_state = "k=v".into();
        // Peer is loopback, but a server with incoming context is never held.
        l.push(input(s, A, meta("127.0.0.1:8080", "127.0.0.1:40000")), 0, &mut out);
        assert_eq!(out.len(), 2);
        let (c, s) = (find(&out, 2), find(&out, 1));
        assert_eq!((s.trace_id, s.parent_span_id), ([0xab; 16], [0xcd; 8]));
        assert_eq!((c.trace_id, c.parent_span_id), ([0xab; 16], [1; 8]));
        assert_eq!(c.trace_state, "k=v");
    }

    /// A's server (1) on thread 7 calls B over loopback with client span (2);
    /// B's server (3) on thread 9 queries a database (4).
    fn whole_trace(order: &[u8]) -> Vec<Span> {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        let front = meta("127.0.0.1:8080", "127.0.0.1:50000");
        let a_to_b = meta("127.0.0.1:41000", "127.0.0.1:9090");
        let b_from_a = meta("127.0.0.1:9090", "127.0.0.1:41000");
        for n in order {
            let i = match n {
                1 => input(span(SpanKind::Server, 1, 7, 10, 100), A, front),
                2 => input(span(SpanKind::Client, 2, 7, 20, 90), A, a_to_b),
                3 => input(span(SpanKind::Server, 3, 9, 30, 80), B, b_from_a),
                _ => input(span(SpanKind::Client, 4, 9, 40, 50), B, meta("127.0.0.1:42000", "127.0.0.1:5432")),
            };
            l.push(i, 0, &mut out);
        }
        l.tick(10_000 * MS, &mut out);
        assert_eq!(l.stats.cross_process, 1, "order {order:?}");
        assert_eq!(l.stats.nested, 2, "order {order:?}");
        assert_eq!(l.held(), 0);
        out
    }

    #[test]
    fn cross_process_call_joins_one_trace_in_any_arrival_order() {
        for order in [[4, 3, 2, 1], [4, 2, 3, 1], [2, 4, 3, 1], [2, 1, 4, 3], [4, 2, 1, 3]] {
            let out = whole_trace(&order);
            assert_eq!(out.len(), 4, "order {order:?}");
            let root = find(&out, 1);
            assert!(root.is_root());
            for s in &out {
                assert_eq!(s.trace_id, root.trace_id, "span {:?} order {order:?}", s.span_id);
            }
            assert_eq!(find(&out, 2).parent_span_id, [1; 8]);
            assert_eq!(find(&out, 3).parent_span_id, [2; 8]);
            assert_eq!(find(&out, 4).parent_span_id, [3; 8]);
        }
    }

    #[test]
    fn server_with_incoming_traceparent_is_not_moved_to_the_callers_trace() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        let mut b = span(SpanKind::Server, 3, 9, 30, 80);
        b.trace_id = [0xee; 16];
        b.parent_span_id = [0xef; 8];
        l.push(input(b, B, meta("127.0.0.1:9090", "127.0.0.1:41000")), 0, &mut out);
        assert_eq!(out.len(), 1, "not held");
        l.push(input(span(SpanKind::Client, 2, 7, 20, 90), A, meta("127.0.0.1:41000", "127.0.0.1:9090")), 0, &mut out);
        l.flush(&mut out);
        let b = find(&out, 3);
        assert_eq!((b.trace_id, b.parent_span_id), ([0xee; 16], [0xef; 8]));
        assert_eq!(l.stats.cross_process, 0);
    }

    #[test]
    fn other_request_on_the_same_connection_is_not_linked() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        let b = meta("127.0.0.1:9090", "127.0.0.1:41000");
        l.push(input(span(SpanKind::Server, 3, 9, 100, 180), B, b), 0, &mut out);
        l.push(input(span(SpanKind::Client, 2, 7, 20, 90), A, meta("127.0.0.1:41000", "127.0.0.1:9090")), 0, &mut out);
        l.flush(&mut out);
        assert!(find(&out, 3).is_root());
        assert_eq!(l.stats.cross_process, 0);
    }

    #[test]
    fn server_with_remote_peer_is_not_held() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        l.push(input(span(SpanKind::Server, 1, 7, 10, 40), A, remote()), 0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn held_server_waits_for_its_client_until_the_deadline() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        l.push(
            input(span(SpanKind::Server, 3, 9, 30, 80), B, meta("127.0.0.1:9090", "127.0.0.1:41000")),
            1000,
            &mut out,
        );
        l.tick(1000 + 499 * MS, &mut out);
        assert!(out.is_empty(), "held while the client may still come");
        l.tick(1000 + 500 * MS, &mut out);
        assert_eq!(out.len(), 1);
        assert!(out[0].is_root());
        assert_eq!(l.stats.released_unlinked, 1);
        assert_eq!(l.stats.held, 0);
    }

    #[test]
    fn per_thread_cap_forces_out_the_oldest_client() {
        let mut l = Linker::new(limits());
        let mut out = Vec::new();
        for n in 0..9u8 {
            let s = u64::from(n) * 10;
            l.push(input(span(SpanKind::Client, n + 1, 7, s + 1, s + 2), A, remote()), 0, &mut out);
        }
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].span_id, [1; 8], "oldest first");
        assert_eq!(l.stats.forced_out, 1);
        assert_eq!(l.held(), 8);
    }

    #[test]
    fn total_cap_forces_out_the_oldest_and_loses_nothing() {
        let mut l = Linker::new(LinkLimits { hold_ns: 500 * MS, max_held: 4, max_per_thread: 8 });
        let mut out = Vec::new();
        for n in 1..=10u8 {
            l.push(input(span(SpanKind::Client, n, u32::from(n), 1, 2), A, remote()), u64::from(n), &mut out);
            assert!(l.held() <= 4);
        }
        assert_eq!(l.stats.forced_out, 6);
        assert_eq!(out.iter().map(|s| s.span_id[0]).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5, 6]);
        l.flush(&mut out);
        assert_eq!(out.len(), 10);
        assert_eq!(l.held(), 0);
    }

    #[test]
    fn tree_counts_toward_the_total_cap_as_a_whole() {
        let mut l = Linker::new(LinkLimits { hold_ns: 500 * MS, max_held: 2, max_per_thread: 8 });
        let mut out = Vec::new();
        // B's server with one nested client: a held tree of two spans.
        l.push(input(span(SpanKind::Client, 4, 9, 40, 50), B, remote()), 0, &mut out);
        l.push(input(span(SpanKind::Server, 3, 9, 30, 80), B, meta("127.0.0.1:9090", "127.0.0.1:41000")), 0, &mut out);
        assert_eq!(l.held(), 2);
        l.push(input(span(SpanKind::Client, 5, 1, 1, 2), A, remote()), 0, &mut out);
        assert_eq!(l.held(), 1);
        assert_eq!(out.len(), 2, "the oldest tree leaves whole");
        assert_eq!(find(&out, 4).trace_id, find(&out, 3).trace_id);
    }

    #[test]
    fn notes_are_bounded_and_expire() {
        let mut l = Linker::new(LinkLimits { hold_ns: 10, max_held: 4, max_per_thread: 8 });
        let mut out = Vec::new();
        for n in 1..=10u8 {
            let port = 41000 + u16::from(n);
            let m = meta(&format!("127.0.0.1:{port}"), "127.0.0.1:9090");
            l.push(input(span(SpanKind::Client, n, u32::from(n), 1, 2), A, m), 0, &mut out);
        }
        assert!(l.note_order.len() <= 4);
        l.tick(100, &mut out);
        assert!(l.notes.is_empty() && l.note_order.is_empty());
        assert_eq!(out.len(), 10);
    }
}
