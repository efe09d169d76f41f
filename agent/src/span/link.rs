//! Whole-trace linking on one host, without touching any bytes.
//!
//! Two rules join spans that the builder made as separate traces:
//! - Nesting: a CLIENT span issued by thread T of process P while T serves a
//!   request becomes a child of that SERVER span (same (pid, tid), client
//!   time range inside the server's). In a Go program the "thread" is the
//!   goroutine (`conntrack::thread_key`).
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
//! - What is learnt of a process's threads (the last server span's range
//!   per thread, whether it multiplexes) is forgotten when it exits, and a
//!   thread's range [`SERVER_RANGE_TTL_NS`] after it ended: churning
//!   processes and threads leave nothing behind.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use smallvec::SmallVec;

use super::model::{Span, SpanKind};
use crate::conntrack::ThreadTable;
use crate::protocol::{ConnMeta, End};

/// How long the range of a thread's last server span is remembered after
/// it ended (unix ns; see [`Linker::tick`]). A thread-per-connection server
/// makes a new thread for each connection, and thread exits are not
/// reported: without this the ranges of ended threads would pile up.
pub const SERVER_RANGE_TTL_NS: u64 = 10_000_000_000;

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
    /// The other end of the connection is a tracked socket of a traced
    /// process on this host: only then can a span at that end appear to be
    /// linked with (so only then is this span held for it).
    pub peer_traced: bool,
    /// The process has an open server connection (it may be serving a
    /// request); a client span of a process that serves nothing cannot be
    /// nested and leaves at once.
    pub serving: bool,
    /// The exchange's stream on a multiplexed connection (HTTP/2 stream id;
    /// 0 for protocols with one request at a time on a connection): both
    /// ends see the same id, so concurrent requests on one connection link
    /// each to its own peer.
    pub stream: u32,
    /// A server span whose request a reported handler goroutine served
    /// (`Exchange::window`, in unix ns): its thread serves it only in
    /// this window, so calls nest in the window, and windows on one thread
    /// never overlap (Go reuses an ended goroutine for the next handler,
    /// maybe before the ended one's response is written).
    pub window: Option<(u64, u64)>,
}

/// A connection as (client end, server end), and a stream on it.
type ConnKey = (End, End, u32);

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
    /// Time range of the last server span per thread, per process
    /// (forgotten when it exits; at most `max_held` in all).
    last_server: ThreadTable<(u64, u64)>,
    /// The latest end among the ranges noted (unix ns): a range that ended
    /// [`SERVER_RANGE_TTL_NS`] before it is forgotten at the next sweep.
    latest_server_end: u64,
    /// When (monotonic ns) `last_server` is swept next.
    next_range_sweep: u64,
    /// Processes whose threads serve overlapping requests.
    multiplexed: HashSet<u32>,
    /// Waiting servers per connection (usually one: no allocation for it).
    servers: HashMap<ConnKey, SmallVec<[u64; 2]>>,
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
fn client_key(meta: &ConnMeta, stream: u32) -> Option<ConnKey> {
    meta.local_ends().map(|(local, peer)| (local, peer, stream))
}

/// The connection of a server span, when its peer is on this host.
fn server_key(meta: &ConnMeta, stream: u32) -> Option<ConnKey> {
    meta.local_ends().map(|(local, peer)| (peer, local, stream))
}

impl Linker {
    pub fn new(limits: LinkLimits) -> Self {
        Self {
            limits,
            next_id: 0,
            held: HashMap::new(),
            held_spans: 0,
            threads: HashMap::new(),
            last_server: ThreadTable::new(limits.max_held),
            latest_server_end: 0,
            next_range_sweep: 0,
            multiplexed: HashSet::new(),
            servers: HashMap::new(),
            order: VecDeque::new(),
            notes: HashMap::new(),
            note_order: VecDeque::new(),
            stats: LinkStats::default(),
        }
    }

    /// Entries of the linker's tables now, by name (`kspan_table_entries`).
    pub fn table_sizes(&self) -> [(&'static str, usize); 8] {
        [
            ("link_held", self.held.len()),
            ("link_threads", self.threads.len()),
            ("link_last_server", self.last_server.len()),
            ("link_multiplexed_processes", self.multiplexed.len()),
            ("link_servers", self.servers.len()),
            ("link_deadlines", self.order.len()),
            ("link_notes", self.notes.len()),
            ("link_note_deadlines", self.note_order.len()),
        ]
    }

    /// Spans held now.
    pub fn held(&self) -> usize {
        self.held_spans
    }

    /// Takes one span; spans whose trace is final are appended to `out`.
    /// `now` is monotonic time (ns), used only for deadlines.
    pub fn push(&mut self, input: LinkInput, now: u64, out: &mut Vec<Span>) {
        let LinkInput { span, pid, meta, peer_traced, serving, stream, window } = input;
        // Only a peer that is traced can have a span to link with.
        match span.kind {
            SpanKind::Client => {
                let key = if peer_traced { client_key(&meta, stream) } else { None };
                self.push_client(span, pid, key, serving, now, out)
            }
            SpanKind::Server => {
                let key = if peer_traced { server_key(&meta, stream) } else { None };
                self.push_server(span, pid, (key, window), now, out)
            }
        }
        self.enforce_total_cap(out);
        self.stats.held = self.held_spans as u64;
    }

    #[allow(clippy::too_many_arguments)]
    fn push_client(
        &mut self,
        span: Span,
        pid: u32,
        key: Option<ConnKey>,
        serving: bool,
        now: u64,
        out: &mut Vec<Span>,
    ) {
        let joined = !span.is_root();
        let id = self.new_id();
        let mut deps = Vec::new();
        let mut note_keys = Vec::new();
        // The server at the other end arrived first and waits.
        let mut matched = false;
        if let Some(k) = key
            && let Some(sid) = self.waiting_server(k, &span)
            && let Some(s) = self.take(sid)
        {
            self.stats.cross_process += 1;
            self.absorb(id, &span, sid, s, &mut deps, &mut note_keys);
            matched = true;
        }
        // Otherwise the server may still come: leave a note for it. (A request
        // is served by one server span, so a matched client needs none: notes
        // of matched clients would only pile up on a keep-alive connection and
        // be scanned by every later server span.)
        if let Some(k) = key
            && !matched
        {
            note_keys.push(k);
            self.add_note(k, &span, Target::Held(id), now);
        }
        if joined || !serving || self.multiplexed.contains(&pid) {
            // The app's own context wins: the span leaves now, as built.
            // (In an event loop, nothing says which request it serves; a
            // process with no server connection serves no request.)
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

    fn push_server(
        &mut self,
        mut span: Span,
        pid: u32,
        (key, window): (Option<ConnKey>, Option<(u64, u64)>),
        now: u64,
        out: &mut Vec<Span>,
    ) {
        let joined = !span.is_root();
        let id = self.new_id();
        let mut deps = Vec::new();
        let mut note_keys = Vec::new();
        // Where its thread serves it.
        let range = window.unwrap_or((span.start_unix_ns, span.end_unix_ns));
        self.note_server_range(pid, span.tid, range);
        // Clients of this thread: nested ones become children; older ones
        // can no longer be nested in anything and leave. (Not so under a
        // handler window: a goroutine's handlers may end out of order, an
        // earlier one's response written after a later one's, so older
        // clients wait for theirs, or their deadline.)
        let multiplexed = self.multiplexed.contains(&pid);
        let waiting: Vec<u64> =
            self.threads.get(&(pid, span.tid)).map(|q| q.iter().copied().collect()).unwrap_or_default();
        for cid in waiting {
            let Some(h) = self.held.get(&cid) else { continue };
            if multiplexed {
                self.release(cid, Why::Unlinked, out);
            } else if range.0 <= h.span.start_unix_ns && h.span.end_unix_ns <= range.1 {
                if let Some(c) = self.take(cid) {
                    self.stats.nested += 1;
                    self.absorb(id, &span, cid, c, &mut deps, &mut note_keys);
                }
            } else if window.is_none() && h.span.start_unix_ns < range.0 {
                self.release(cid, Why::Unlinked, out);
            }
        }
        if !joined && let Some(k) = key {
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

    /// Remembers where thread `tid` served its last server span; one that
    /// overlaps it means the thread multiplexes requests and nesting is off
    /// for its process.
    fn note_server_range(&mut self, pid: u32, tid: u32, range: (u64, u64)) {
        self.latest_server_end = self.latest_server_end.max(range.1);
        let Some((start, end)) = self.last_server.insert(pid, tid, range).0 else { return };
        if range.0 < end && start < range.1 && !self.multiplexed.contains(&pid) {
            if self.multiplexed.len() >= self.limits.max_held {
                self.multiplexed.clear();
            }
            self.multiplexed.insert(pid);
            self.stats.multiplexed += 1;
        }
    }

    /// Forgets what was learnt of process `pid`'s threads: it exited, and
    /// a later process given the same pid may serve differently (one found
    /// multiplexing would have nesting off).
    pub fn forget_process(&mut self, pid: u32) {
        self.last_server.forget_process(pid);
        self.multiplexed.remove(&pid);
    }

    /// Releases spans whose deadline passed and forgets expired notes;
    /// once a second, forgets the server ranges of threads that served
    /// nothing for [`SERVER_RANGE_TTL_NS`] (a server span overlapping one
    /// that ended that long before it is not seen as multiplexing; any
    /// other overlap on the process's threads still is).
    pub fn tick(&mut self, now: u64, out: &mut Vec<Span>) {
        if now >= self.next_range_sweep {
            self.next_range_sweep = now.saturating_add(1_000_000_000);
            let horizon = self.latest_server_end.saturating_sub(SERVER_RANGE_TTL_NS);
            self.last_server.retain(|&(_, end)| end >= horizon);
        }
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
#[path = "link_tests.rs"]
mod tests;
