//! The capture thread: drains the ring buffer and runs conntrack, protocol
//! parsing and span building synchronously (no allocation per event beyond
//! what parsers keep), handing finished spans to the async side through a
//! bounded queue, one batch per drain cycle (full: dropped and counted). A
//! cycle takes at most [`MAX_EXCHANGES_PER_CYCLE`] exchanges' worth of
//! records; the rest waits in the ring buffer.
//!
//! An idle host costs few wake-ups: after a cycle that read nothing the
//! wait doubles, up to [`idle_wait`] (400 ms with the default 50 ms drain
//! interval), unless spans are held for linking or a TLS scan falls due
//! sooner. Before such a wait the kernel side is told to wake the thread
//! with the first record any CPU writes ([`Capture::wake_on_next_record`]),
//! so traffic after a quiet spell is read at once, not up to a long wait
//! later (an opaque connection is muted as soon as before); reading records
//! brings the wait back to the drain interval. Stop and pause do not wait
//! either: they [`Nudge`] the thread.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::metrics::{PipelineCounters, STAGE_BUILD, STAGE_DRAIN, STAGE_LINK, STAGE_OTHER};
use super::queue::SpanSender;
use super::select::{KernelUpdate, Selector};
use crate::capture::Capture;
use crate::capture::decode::{RawEvent, decode};
use crate::capture::go_proc::GoProcs;
use crate::capture::tls::TlsAttacher;
use crate::conntrack::{ConnExchange, ConnTable};
use crate::enrich::k8s::PodStore;
use crate::enrich::process::ProcessTable;
use crate::protocol::Protocol;
use crate::span::builder::{Clock, SpanBuilder};
use crate::span::link::{LinkInput, Linker};
use crate::span::model::{ProcessResource, Span};

/// Exchanges collected per drain cycle before spans are built and handed
/// on. Without this bound a cycle drained the ring until it was empty: when
/// the agent falls behind (redis-benchmark -P 16) the kernel keeps refilling
/// it, and one cycle held hundreds of thousands of exchanges and spans
/// (RSS above 200 MiB) only for the span queue to drop most of them. Records
/// left in the ring wait for the next cycle; if the kernel runs out of room
/// it drops and counts them (`kspan_kernel_lost_total`).
pub const MAX_EXCHANGES_PER_CYCLE: usize = 1024;

/// Everything the capture thread owns.
pub struct Pipeline {
    pub capture: Capture,
    pub selector: Selector,
    pub conns: ConnTable,
    pub procs: ProcessTable,
    /// Pod metadata (read for its counters; the watcher writes it).
    pub pods: Option<PodStore>,
    pub builder: SpanBuilder,
    /// Joins spans of one request into one trace; `None`: spans leave as built.
    pub linker: Option<Linker>,
    /// Finds OpenSSL and GnuTLS in selected processes and attaches the TLS uprobes
    /// (`None`: TLS capture is off).
    pub tls: Option<TlsAttacher>,
    /// The Go programs among the selected processes (goroutine nesting).
    pub go: GoProcs,
    pub spans: SpanSender,
    pub drain_interval: Duration,
    pub counters: PipelineCounters,
    /// Set (by SIGUSR1) to pause capture, cleared to resume it.
    pub pause: Arc<AtomicBool>,
    /// Ends the wait on the ring buffer early (stop, pause).
    pub nudge: Arc<Nudge>,
}

/// Wakes the capture thread out of its wait on the ring buffer, so that a
/// stop or pause is acted on at once however long the thread sleeps.
pub struct Nudge(OwnedFd);

impl Nudge {
    pub fn new() -> std::io::Result<Self> {
        // SAFETY: eventfd takes no pointers; a valid fd is owned below.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `fd` is a new descriptor nothing else owns.
        Ok(Self(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Wakes the thread (a counter add: never blocks, cannot fail short of
    /// 2^64 nudges).
    pub fn nudge(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: 8 readable bytes for the duration of the call.
        unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), one.len()) };
    }

    /// Takes the pending nudges (the fd reads as not ready again).
    fn clear(&self) {
        let mut buf = [0u8; 8];
        // SAFETY: 8 writable bytes; the fd is non-blocking.
        unsafe { libc::read(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    }

    fn fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// The longest wait on an idle ring buffer: 8 drain intervals, at most 1 s
/// (never below the interval itself).
pub fn idle_wait(drain_interval: Duration) -> Duration {
    (drain_interval * 8).min(Duration::from_secs(1)).max(drain_interval)
}

/// The next wait: the drain interval after a cycle that read records,
/// doubled after one that read none, up to `idle_max`.
fn next_wait(wait: Duration, read: usize, drain_interval: Duration, idle_max: Duration) -> Duration {
    if read > 0 { drain_interval } else { (wait * 2).clamp(drain_interval, idle_max) }
}

/// This thread's CPU time in ns (read a few times per drain cycle).
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec for the duration of the call.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Process lifecycle seen in one batch, acted on after it.
#[derive(Default)]
struct ProcChanges {
    /// Exited processes, forgotten after this batch's spans are built.
    exited: Vec<u32>,
    /// Selected processes that exec'd (TLS library scan).
    execs: Vec<u32>,
    /// Selected processes that loaded or unloaded a library (TLS library scan).
    lib_loads: Vec<u32>,
    /// Forget every process after this batch (capture resumed after a pause).
    forget_all: bool,
    /// `(tgid, n, resource)`: the exchanges of `tgid` among the first `n`
    /// of this batch came before its exec (`n` was the batch's count at the
    /// exec), and their spans get the resource it had then, not the one
    /// the exec'd program has. At most one per exchange, so bounded by
    /// [`MAX_EXCHANGES_PER_CYCLE`].
    pinned: Vec<(u32, usize, Arc<ProcessResource>)>,
}

impl ProcChanges {
    /// The resource an exchange at `index` of this batch had before an exec
    /// of its process, if there was one in the batch after it.
    fn pinned(&self, index: usize, tgid: u32) -> Option<Arc<ProcessResource>> {
        self.pinned.iter().find(|(t, n, _)| *t == tgid && index < *n).map(|(_, _, r)| r.clone())
    }
}

/// Processes one ring buffer record.
fn handle(
    bytes: &[u8],
    selector: &mut Selector,
    conns: &mut ConnTable,
    procs: &mut ProcessTable,
    counters: &mut PipelineCounters,
    out: &mut Vec<ConnExchange>,
    changes: &mut ProcChanges,
) {
    counters.events_read += 1;
    let ev = match decode(bytes) {
        Ok(ev) => ev,
        Err(e) => {
            counters.events_undecodable += 1;
            tracing::debug!("undecodable ring buffer record: {e}");
            return;
        }
    };
    match ev {
        RawEvent::Data { hdr, payload } => {
            if selector.allows(hdr.tgid) {
                conns.on_data(&hdr, payload, out);
            } else {
                counters.events_unselected += 1;
            }
        }
        RawEvent::ConnOpen(c) => {
            if selector.allows(c.tgid) {
                // Read /proc while the process surely lives (clients may be short-lived).
                procs.resource(c.tgid);
                conns.on_open(&c, out);
            } else {
                counters.events_unselected += 1;
            }
        }
        RawEvent::Close(c) => conns.on_close(c.tgid, c.fd, c.sock_id, c.ts_ns, out),
        RawEvent::GoStream(g) => conns.on_go_stream(&g),
        RawEvent::Exec(e) => {
            let (tgid, file) = (e.proc.tgid, crate::capture::decode::exec_filename(&e));
            // Exchanges before the exec (the closes of its close-on-exec
            // sockets come just before it) keep the old program's identity.
            if out.iter().any(|cx| cx.tgid == tgid)
                && let Some(old) = procs.cached(tgid)
            {
                changes.pinned.push((tgid, out.len(), old));
            }
            procs.forget(tgid);
            if selector.on_exec(tgid, &file) {
                procs.exec(tgid, &file);
                changes.execs.push(tgid);
            }
        }
        RawEvent::LibLoad(p) => {
            if selector.allows(p.tgid) && !changes.lib_loads.contains(&p.tgid) && changes.lib_loads.len() < 64 {
                changes.lib_loads.push(p.tgid);
            }
        }
        RawEvent::Fork(p) => {
            if selector.on_fork(p.tid, p.tgid) {
                procs.inherit(p.tid, p.tgid);
            }
        }
        RawEvent::Exit(p) => {
            conns.on_exit(p.tgid, p.ts_ns, out);
            selector.on_exit(p.tgid);
            // Forgotten after this batch's spans are built (they need the resource).
            changes.exited.push(p.tgid);
        }
    }
}

impl Pipeline {
    /// Runs until `stop` is set; then closes nothing (connections may live
    /// on), hands on the spans built so far, closes the span queue and
    /// returns its counters and the capture, still attached: detaching
    /// takes seconds ([`Capture::drop_links`]), and the caller does it while
    /// the outputs flush, so a stop's grace period goes to exporting first.
    pub fn run(
        mut self,
        stop: Arc<AtomicBool>,
        mut publish: impl FnMut(&PipelineCounters),
    ) -> (PipelineCounters, Capture) {
        let mut out = Vec::new();
        let mut changes = ProcChanges::default();
        let mut ready = Vec::new();
        // Spans built in this cycle, before linking (kept apart so each
        // stage's CPU time is read twice per cycle, not per span).
        let mut built: Vec<LinkInput> = Vec::new();
        let mut last_housekeeping = Instant::now();
        let idle_max = idle_wait(self.drain_interval);
        let mut wait = self.drain_interval;
        while !stop.load(Ordering::Relaxed) {
            let paused = self.pause.load(Ordering::Relaxed);
            if paused != self.capture.paused() {
                self.set_paused(paused, &mut out, &mut changes);
                self.snapshot();
                publish(&self.counters);
            }
            let t_drain = thread_cpu_ns();
            let Self { capture, selector, conns, procs, counters, nudge, .. } = &mut self;
            let drain = |b: &[u8]| {
                handle(b, selector, conns, procs, counters, &mut out, &mut changes);
                out.len() < MAX_EXCHANGES_PER_CYCLE
            };
            let read = match capture.poll(wait, nudge.fd(), drain) {
                Ok((read, nudged)) => {
                    if nudged {
                        nudge.clear();
                    }
                    read
                }
                Err(e) => {
                    tracing::error!("{e}");
                    std::thread::sleep(self.drain_interval);
                    0
                }
            };
            let t_other = thread_cpu_ns();
            self.mute_opaque();
            for u in self.selector.updates.drain(..) {
                match u {
                    KernelUpdate::Select(pid) => {
                        if let Err(e) = self.capture.select(pid) {
                            tracing::warn!("cannot select pid {pid}: {e}");
                        }
                    }
                    KernelUpdate::Unselect(pid) => self.capture.unselect(pid),
                }
            }
            let Self { tls, capture, selector, go, .. } = &mut self;
            for pid in &changes.execs {
                go.on_selected(capture, *pid);
            }
            if let Some(tls) = tls {
                let wall = Instant::now();
                for pid in changes.execs.drain(..) {
                    tls.on_exec(pid, wall);
                }
                for pid in changes.lib_loads.drain(..) {
                    tls.on_lib_load(capture, pid);
                }
                tls.tick(capture, wall, || selector.selected());
            }
            changes.execs.clear();
            changes.lib_loads.clear();
            let now = Clock::monotonic_now();
            let t_build = thread_cpu_ns();
            for (i, cx) in out.drain(..).enumerate() {
                let resource = changes.pinned(i, cx.tgid).unwrap_or_else(|| self.procs.resource(cx.tgid));
                let span = self.builder.build(&cx, resource);
                self.counters.spans_built += 1;
                let (peer_traced, serving, stream) = (cx.peer_traced, cx.serving, cx.exchange.record.stream());
                let unix = |mono| self.builder.unix_ns(mono);
                let window = cx.exchange.window.map(|(from, until)| (unix(from), unix(until)));
                built.push(LinkInput { span, pid: cx.tgid, meta: cx.meta, peer_traced, serving, stream, window });
            }
            changes.pinned.clear();
            let t_link = thread_cpu_ns();
            match &mut self.linker {
                Some(l) => {
                    for input in built.drain(..) {
                        l.push(input, now, &mut ready);
                    }
                    l.tick(now, &mut ready);
                }
                None => ready.extend(built.drain(..).map(|i| i.span)),
            }
            let t_send = thread_cpu_ns();
            self.send(&mut ready);
            for pid in changes.exited.drain(..) {
                self.procs.forget(pid);
                if let Some(l) = &mut self.linker {
                    l.forget_process(pid);
                }
                self.go.on_exit(&mut self.capture, pid);
                if let Some(tls) = &mut self.tls {
                    tls.on_exit(&mut self.capture, pid);
                }
            }
            if std::mem::take(&mut changes.forget_all) {
                self.procs.clear();
            }
            if last_housekeeping.elapsed() >= Duration::from_secs(1) {
                last_housekeeping = Instant::now();
                if let Some(step) = self.builder.resync_clock() {
                    self.counters.clock_steps += 1;
                    tracing::info!("the wall clock moved by {:+.3} s: span times follow it", step as f64 / 1e9);
                }
                let swept = self.conns.sweep(Clock::monotonic_now());
                if swept > 0 {
                    tracing::debug!("forgot {swept} idle connections");
                }
                self.snapshot();
                publish(&self.counters);
            }
            let stage = &mut self.counters.stage_cpu_ns;
            stage[STAGE_DRAIN] += t_other.saturating_sub(t_drain);
            stage[STAGE_BUILD] += t_link.saturating_sub(t_build);
            stage[STAGE_LINK] += t_send.saturating_sub(t_link);
            stage[STAGE_OTHER] += t_build.saturating_sub(t_other) + thread_cpu_ns().saturating_sub(t_send);
            let next = self.bound_wait(next_wait(wait, read, self.drain_interval, idle_max));
            if next > self.drain_interval && wait <= self.drain_interval {
                // Entering a long wait: the counts stay armed until a record comes.
                self.capture.wake_on_next_record();
            }
            wait = next;
        }
        if let Some(l) = &mut self.linker {
            l.flush(&mut ready);
        }
        self.send(&mut ready);
        self.snapshot();
        publish(&self.counters);
        // Everything else, the span queue's sender among it, is dropped here.
        (self.counters, self.capture)
    }

    /// Pauses capture (every program detached; records already written are
    /// still read) or resumes it. On resume, what the pause hid is made
    /// good first: connections end (their closes and fd reuse went unseen,
    /// and the kernel forgets its sockets too), processes that exited are
    /// forgotten and processes that started are decided.
    fn set_paused(&mut self, paused: bool, out: &mut Vec<ConnExchange>, changes: &mut ProcChanges) {
        if !paused {
            self.conns.close_all(Clock::monotonic_now(), out);
            // Spans of those connections are built in this cycle and need
            // resources: exec'd and exited processes are forgotten after it.
            for pid in self.selector.vanished() {
                self.selector.on_exit(pid);
                self.capture.unselect(pid);
                self.go.on_exit(&mut self.capture, pid);
                if let Some(tls) = &mut self.tls {
                    tls.on_exit(&mut self.capture, pid);
                }
            }
            changes.forget_all = true;
            for pid in self.selector.initial() {
                if let Err(e) = self.capture.select(pid) {
                    tracing::warn!("cannot select pid {pid}: {e}");
                }
                changes.execs.push(pid);
            }
        }
        self.counters.resume_failures += self.capture.set_paused(paused) as u64;
        self.counters.paused = paused;
        self.counters.pauses += 1;
        if paused {
            tracing::info!("capture paused (SIGUSR1): every kspan program is detached until the next SIGUSR1");
        } else {
            tracing::info!("capture resumed (SIGUSR1)");
        }
    }

    /// Tells the kernel to stop copying the bytes of connections found
    /// opaque in this cycle (their closes are still reported).
    fn mute_opaque(&mut self) {
        let Self { capture, conns, .. } = self;
        for m in conns.mutes.drain(..) {
            match capture.mute(m.tgid, m.fd, m.sock_id) {
                Ok(true) => conns.stats.muted += 1,
                Ok(false) => conns.stats.mute_failed += 1,
                Err(e) => {
                    conns.stats.mute_failed += 1;
                    tracing::debug!("cannot mute an opaque connection: {e}");
                }
            }
        }
    }

    /// `wait`, shortened to the drain interval while spans are held for
    /// linking (they leave on time) and to a TLS scan that falls due sooner.
    fn bound_wait(&self, wait: Duration) -> Duration {
        if self.linker.as_ref().is_some_and(|l| l.held() > 0) {
            return self.drain_interval;
        }
        match self.tls.as_ref().and_then(TlsAttacher::next_due) {
            Some(due) => wait.min(due.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))),
            None => wait,
        }
    }

    /// Hands spans whose trace is final to the async side.
    fn send(&mut self, ready: &mut Vec<Span>) {
        self.counters.spans_queue_full += self.spans.send(ready);
    }

    fn snapshot(&mut self) {
        self.counters.kernel = self.capture.kernel_counters();
        self.counters.conns = self.conns.stats;
        self.counters.conns.unix_names_dropped = crate::conntrack::unix_names_dropped();
        self.counters.go = self.go.stats;
        if let Some(tls) = &self.tls {
            self.counters.tls = tls.stats;
        }
        self.counters.bad_traceparent = self.builder.stats.bad_traceparent;
        if let Some(l) = &self.linker {
            self.counters.links = l.stats;
        }
        self.counters.open_connections = self.conns.len() as u64;
        let mut tables = crate::run::metrics::TableSizes::default();
        tables.extend(self.conns.table_sizes());
        tables.extend([("process_resources", self.procs.len())]);
        tables.extend(self.selector.table_sizes());
        tables.extend(self.go.table_sizes());
        if let Some(tls) = &self.tls {
            tables.extend(tls.table_sizes());
        }
        if let Some(l) = &self.linker {
            tables.extend(l.table_sizes());
        }
        self.counters.tables = tables;
        let mut maps = crate::run::metrics::TableSizes::default();
        maps.extend(self.capture.map_bytes());
        self.counters.kernel_maps = maps;
        self.counters.lru = self.capture.lru_tally();
        self.counters.resources_refreshed = self.procs.refreshed;
        if let Some(p) = &self.pods {
            self.counters.k8s_pods = p.len() as u64;
            self.counters.k8s_pods_dropped = p.dropped();
            self.counters.k8s_watch_errors = p.watch_errors();
        }
        for (i, p) in Protocol::ALL.iter().enumerate() {
            self.counters.parse[i] = self.conns.parse_stats(*p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchanges_before_an_exec_keep_the_resource_of_their_program() {
        let res = |pid| Arc::new(ProcessResource { pid, ..Default::default() });
        // Process 7 exec'd twice in the batch: after 2 exchanges and after 5;
        // process 9 once, after 3.
        let changes =
            ProcChanges { pinned: vec![(7, 2, res(1)), (9, 3, res(2)), (7, 5, res(3))], ..Default::default() };
        let pid = |i, tgid| changes.pinned(i, tgid).map(|r| r.pid);
        assert_eq!((pid(0, 7), pid(1, 7), pid(2, 7), pid(4, 7), pid(5, 7)), (Some(1), Some(1), Some(3), Some(3), None));
        assert_eq!((pid(2, 9), pid(3, 9), pid(0, 8)), (Some(2), None, None));
    }

    #[test]
    fn an_idle_ring_is_waited_on_longer_and_a_record_brings_the_interval_back() {
        let ms = Duration::from_millis;
        let (interval, max) = (ms(50), idle_wait(ms(50)));
        assert_eq!(max, ms(400));
        let mut wait = interval;
        let mut seen = Vec::new();
        for _ in 0..5 {
            wait = next_wait(wait, 0, interval, max);
            seen.push(wait.as_millis());
        }
        assert_eq!(seen, [100, 200, 400, 400, 400]);
        assert_eq!(next_wait(wait, 3, interval, max), interval);
        // Long intervals are not shortened; the idle wait stays under 1 s.
        assert_eq!((idle_wait(ms(2000)), idle_wait(ms(500)), idle_wait(ms(1))), (ms(2000), ms(1000), ms(8)));
    }

    #[test]
    fn a_nudge_ends_a_wait_and_is_cleared() {
        let n = Nudge::new().expect("eventfd");
        let ready = |n: &Nudge| {
            let mut p = libc::pollfd { fd: n.0.as_raw_fd(), events: libc::POLLIN, revents: 0 };
            // SAFETY: one valid pollfd; zero timeout.
            unsafe { libc::poll(&mut p, 1, 0) == 1 }
        };
        assert!(!ready(&n));
        n.nudge();
        n.nudge();
        assert!(ready(&n));
        n.clear();
        assert!(!ready(&n), "one read takes every pending nudge");
    }
}
