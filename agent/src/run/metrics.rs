//! The pipeline's own metrics: capture, conntrack, parse and span counters,
//! published from the pipeline thread's plain counters as deltas.

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::capture::COUNTER_NAMES;
use crate::capture::go_proc::GoProcStats;
use crate::capture::tls::{FAILURE_REASONS, TlsStats};
use crate::conntrack::ConnStats;
use crate::protocol::{ParseStats, Protocol};
use crate::span::link::LinkStats;
use crate::telemetry::Telemetry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeReason {
    probe: String,
    reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Stage {
    stage: String,
}

/// Stages of the capture thread whose CPU time is counted (see
/// [`PipelineCounters::stage_cpu_ns`]).
pub const STAGES: [&str; 4] = ["drain", "build", "link", "other"];
pub const STAGE_DRAIN: usize = 0;
pub const STAGE_BUILD: usize = 1;
pub const STAGE_LINK: usize = 2;
pub const STAGE_OTHER: usize = 3;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TableLabel {
    table: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

/// Most tables [`TableSizes`] holds.
pub const MAX_TABLES: usize = 24;

/// Sizes by name: entries of the capture thread's tables
/// (`kspan_table_entries{table}`) or bytes of the kernel's maps
/// (`kspan_kernel_map_bytes{map}`). Every table is bounded; one whose size
/// follows the host's history rather than what is live on it is a leak.
#[derive(Clone, Copy, Debug)]
pub struct TableSizes {
    len: usize,
    entries: [(&'static str, u64); MAX_TABLES],
}

impl Default for TableSizes {
    fn default() -> Self {
        Self { len: 0, entries: [("", 0); MAX_TABLES] }
    }
}

impl TableSizes {
    /// Adds tables (beyond [`MAX_TABLES`] they are left out; tests/churn.rs
    /// checks that the last one the pipeline adds is published).
    pub fn extend(&mut self, sizes: impl IntoIterator<Item = (&'static str, usize)>) {
        for (name, n) in sizes {
            if let Some(slot) = self.entries.get_mut(self.len) {
                *slot = (name, n as u64);
                self.len += 1;
            }
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        self.entries[..self.len].iter().copied()
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProtoKind {
    protocol: String,
    kind: String,
}

/// Plain counters owned by the pipeline thread.
#[derive(Clone, Copy, Debug, Default)]
pub struct PipelineCounters {
    pub events_read: u64,
    pub events_undecodable: u64,
    pub events_unselected: u64,
    pub spans_built: u64,
    pub spans_queue_full: u64,
    pub bad_traceparent: u64,
    pub kernel: [u64; kspan_common::counter::COUNT as usize],
    pub conns: ConnStats,
    pub parse: [ParseStats; Protocol::ALL.len()],
    pub open_connections: u64,
    pub links: LinkStats,
    /// Pods in the metadata cache now.
    pub k8s_pods: u64,
    /// Pods not cached because the cache was full.
    pub k8s_pods_dropped: u64,
    /// Pod watch errors (each followed by a backoff and a retry).
    pub k8s_watch_errors: u64,
    /// Cached process resources rebuilt after their pod metadata changed.
    pub resources_refreshed: u64,
    /// Steps of the wall clock (or suspends) that span times now follow.
    pub clock_steps: u64,
    pub tls: TlsStats,
    pub go: GoProcStats,
    /// Capture is paused (SIGUSR1): no program attached.
    pub paused: bool,
    /// Pauses and resumes so far.
    pub pauses: u64,
    /// Links that could not be made again, or maps not cleared, on a resume.
    pub resume_failures: u64,
    /// The capture thread's CPU time (ns) by stage ([`STAGES`]): drain (ring
    /// buffer, decoding, connection tracking, protocol parsing), build (span
    /// building and enrichment), link, other (selection, TLS attach,
    /// hand-off, housekeeping).
    pub stage_cpu_ns: [u64; 4],
    pub tables: TableSizes,
    /// Kernel memory of each eBPF map (bytes).
    pub kernel_maps: TableSizes,
    /// Evictions, sweeps and deletions of each kernel LRU map.
    pub lru: crate::capture::census::LruTally,
}

/// Registered metric handles plus what was last published.
pub struct PipelineMetrics {
    events_read: Counter,
    events_dropped: Family<Reason, Counter>,
    spans_built: Counter,
    spans_dropped: Family<Reason, Counter>,
    bad_traceparent: Counter,
    kernel_lost: Family<Reason, Counter>,
    conns: Family<Reason, Counter>,
    parse: Family<ProtoKind, Counter>,
    open_connections: Gauge,
    links: Family<Kind, Counter>,
    link_released: Family<Reason, Counter>,
    link_held: Gauge,
    link_multiplexed: Counter,
    k8s_pods: Gauge,
    paused: Gauge,
    stage_cpu: Family<Stage, Counter<f64>>,
    pauses: Counter,
    resume_failures: Counter,
    k8s_pods_dropped: Counter,
    k8s_watch_errors: Counter,
    resources_refreshed: Counter,
    clock_steps: Counter,
    tls_attached: Counter,
    tls_failed: Family<Reason, Counter>,
    go_processes: Gauge,
    go_full: Counter,
    go_probes: Family<ProbeReason, Counter>,
    go_streams: Family<Reason, Counter>,
    tables: Family<TableLabel, Gauge>,
    kernel_maps: Family<MapLabel, Gauge>,
    lru_evicted: Family<MapLabel, Counter>,
    lru_swept: Family<MapLabel, Counter>,
    lru_deleted: Family<MapLabel, Counter>,
    last: PipelineCounters,
}

fn delta(c: &Counter, now: u64, before: u64) {
    if now > before {
        c.inc_by(now - before);
    }
}

impl PipelineMetrics {
    pub fn register(t: &Arc<Telemetry>) -> Self {
        let m = Self {
            events_read: Counter::default(),
            events_dropped: Family::default(),
            spans_built: Counter::default(),
            spans_dropped: Family::default(),
            bad_traceparent: Counter::default(),
            kernel_lost: Family::default(),
            conns: Family::default(),
            parse: Family::default(),
            open_connections: Gauge::default(),
            links: Family::default(),
            link_released: Family::default(),
            link_held: Gauge::default(),
            link_multiplexed: Counter::default(),
            k8s_pods: Gauge::default(),
            paused: Gauge::default(),
            stage_cpu: Family::default(),
            pauses: Counter::default(),
            resume_failures: Counter::default(),
            k8s_pods_dropped: Counter::default(),
            k8s_watch_errors: Counter::default(),
            resources_refreshed: Counter::default(),
            clock_steps: Counter::default(),
            tls_attached: Counter::default(),
            tls_failed: Family::default(),
            go_processes: Gauge::default(),
            go_full: Counter::default(),
            go_probes: Family::default(),
            go_streams: Family::default(),
            tables: Family::default(),
            kernel_maps: Family::default(),
            lru_evicted: Family::default(),
            lru_swept: Family::default(),
            lru_deleted: Family::default(),
            last: PipelineCounters::default(),
        };
        t.register("kspan_events_read", "Ring buffer records read", m.events_read.clone());
        t.register("kspan_events_dropped", "Records read but not used, by reason", m.events_dropped.clone());
        t.register("kspan_kernel_lost", "Events lost or not produced in the kernel, by reason", m.kernel_lost.clone());
        t.register("kspan_spans_built", "Spans built from exchanges", m.spans_built.clone());
        t.register("kspan_spans_dropped", "Spans dropped before export, by reason", m.spans_dropped.clone());
        t.register("kspan_bad_traceparent", "Requests with an invalid traceparent header", m.bad_traceparent.clone());
        t.register("kspan_connections", "Connection table events, by reason", m.conns.clone());
        t.register("kspan_parse", "Protocol parser outcomes, by protocol and kind", m.parse.clone());
        t.register("kspan_open_connections", "Connections tracked now", m.open_connections.clone());
        t.register(
            "kspan_links",
            "Spans linked to a parent on this host, by kind (nested, cross_process)",
            m.links.clone(),
        );
        t.register(
            "kspan_link_released_unlinked",
            "Held spans released without a parent, by reason (no_parent: none in time, forced_out: a cap)",
            m.link_released.clone(),
        );
        t.register("kspan_link_held", "Spans held by the linker now", m.link_held.clone());
        t.register(
            "kspan_link_multiplexed_processes",
            "Processes serving overlapping requests on one thread (event loops): client spans not nested",
            m.link_multiplexed.clone(),
        );
        t.register(
            "kspan_capture_paused",
            "1 while capture is paused (SIGUSR1): no kspan program is attached",
            m.paused.clone(),
        );
        t.register(
            "kspan_capture_thread_cpu_seconds",
            "CPU time of the capture thread by stage (drain: ring buffer, connection tracking and parsing; \
             build: spans and enrichment; link; other)",
            m.stage_cpu.clone(),
        );
        t.register("kspan_capture_pauses", "Times capture was paused (SIGUSR1)", m.pauses.clone());
        t.register(
            "kspan_capture_resume_failures",
            "Program links that could not be made again, or kernel maps that could not be cleared, when capture resumed",
            m.resume_failures.clone(),
        );
        t.register("kspan_k8s_pods", "Pods of this node with metadata cached", m.k8s_pods.clone());
        t.register("kspan_k8s_pods_dropped", "Pods not cached because the cache was full", m.k8s_pods_dropped.clone());
        t.register("kspan_k8s_watch_errors", "Pod watch errors (retried with backoff)", m.k8s_watch_errors.clone());
        t.register(
            "kspan_resources_refreshed",
            "Cached process resources rebuilt after their pod metadata arrived or changed",
            m.resources_refreshed.clone(),
        );
        t.register(
            "kspan_clock_steps",
            "Steps of the wall clock against the monotonic clock (NTP steps, date -s, a suspended host) that span \
             times were moved to follow",
            m.clock_steps.clone(),
        );
        t.register(
            "kspan_tls_libraries_attached",
            "TLS library files (libssl, libgnutls, static executables) with the TLS uprobes attached",
            m.tls_attached.clone(),
        );
        t.register(
            "kspan_tls_attach_failures",
            "TLS library files not attached, by reason (files_full, pending_full, hooks_full: a cap was hit)",
            m.tls_failed.clone(),
        );
        t.register(
            "kspan_go_processes",
            "Selected Go programs whose calls nest by goroutine (the kernel reads the goroutine at each data call)",
            m.go_processes.clone(),
        );
        t.register(
            "kspan_go_processes_unregistered",
            "Go programs keyed by thread instead of goroutine because the kernel map was full",
            m.go_full.clone(),
        );
        t.register(
            "kspan_go_nesting_probes",
            "Go functions probed so that calls nest by goroutine, one per function of an executable, by probe (http_client: net/http's HTTP/1 round trip; http2_server: a stream handler's start; http2_client: an HTTP/2 request's writer) and reason (attached, or failed: logged)",
            m.go_probes.clone(),
        );
        t.register(
            "kspan_go_http2_streams",
            "Go HTTP/2 streams reported by a nesting probe, by reason: handler_goroutine (a server's request is keyed by its handler's goroutine), caller_goroutine (a grpc-go client's call is keyed by its caller's goroutine), unmatched (no open request found: it keeps the goroutine that read or wrote it), or handlers_forgotten (handler goroutines dropped from the table of 65,536 kept to tell when a reused goroutine's earlier stream ended)",
            m.go_streams.clone(),
        );
        t.register(
            "kspan_table_entries",
            "Entries of the agent's tables now, by table (each is bounded; see the README's limits): connections, \
             connection_pairs, serving_processes, go_handlers, unix_socket_names, process_resources, \
             selector_decisions, pod_decisions, go_executables, go_processes, tls_files, tls_executables, \
             tls_pending, link_*",
            m.tables.clone(),
        );
        t.register(
            "kspan_kernel_map_bytes",
            "Kernel memory of each eBPF map now, by map (what the kernel charges to the agent's cgroup; a pod's \
             memory limit counts it besides the agent's RSS): preallocated maps cost their bound from the start, \
             the plain hash maps (TRACED, GO_PROCS, INFLIGHT, TLS_CALLS) their buckets and the entries they hold",
            m.kernel_maps.clone(),
        );
        t.register(
            "kspan_kernel_map_evictions",
            "Entries the kernel's LRU maps dropped because they were full, by map (a lower bound, counted every \
             10 s): SOCKS (raise capture.max_sockets: an evicted socket is relearned on its next call), TLS_SOCKS, \
             GO_TLS_CALLS, GO_CONN_CALLER, GO_H2_REQUESTS, GO_ACTS_FOR",
            m.lru_evicted.clone(),
        );
        t.register(
            "kspan_kernel_map_swept",
            "Entries of exited processes the census deleted from the kernel's LRU maps, by map (what the kernel \
             side did not delete at the exit: TLS and Go entries, sockets on kernels without bpf_loop)",
            m.lru_swept.clone(),
        );
        t.register(
            "kspan_kernel_map_deletes",
            "Entries deleted from the kernel's LRU maps, by the kernel side (a close, an exec, an exit) or the \
             agent, by map, as of the last census (every 10 s)",
            m.lru_deleted.clone(),
        );
        m
    }

    /// Publishes the growth since the last call.
    pub fn publish(&mut self, now: &PipelineCounters) {
        let last = self.last;
        delta(&self.events_read, now.events_read, last.events_read);
        let r = |s: &str| Reason { reason: s.to_owned() };
        delta(&self.events_dropped.get_or_create(&r("undecodable")), now.events_undecodable, last.events_undecodable);
        delta(
            &self.events_dropped.get_or_create(&r("unselected_process")),
            now.events_unselected,
            last.events_unselected,
        );
        delta(&self.spans_built, now.spans_built, last.spans_built);
        delta(&self.spans_dropped.get_or_create(&r("queue_full")), now.spans_queue_full, last.spans_queue_full);
        delta(&self.bad_traceparent, now.bad_traceparent, last.bad_traceparent);
        for (i, name) in COUNTER_NAMES.iter().enumerate() {
            delta(&self.kernel_lost.get_or_create(&r(name)), now.kernel[i], last.kernel[i]);
        }
        let (c, l) = (&now.conns, &last.conns);
        for (name, a, b) in [
            ("opened", c.opened, l.opened),
            ("closed", c.closed, l.closed),
            ("rejected_full", c.rejected_full, l.rejected_full),
            ("swept_idle", c.swept_idle, l.swept_idle),
            ("opaque", c.opaque, l.opaque),
            ("fd_reused", c.fd_reused, l.fd_reused),
            ("relearned", c.relearned, l.relearned),
            ("tls", c.tls, l.tls),
            ("tls_handshake", c.tls_handshake, l.tls_handshake),
            ("http2_joined", c.http2_joined, l.http2_joined),
            ("tls_ciphertext_ignored", c.tls_ciphertext_ignored, l.tls_ciphertext_ignored),
            ("muted", c.muted, l.muted),
            ("tls_unprobed", c.tls_unprobed, l.tls_unprobed),
            ("mute_failed", c.mute_failed, l.mute_failed),
            ("unix_name_dropped", c.unix_names_dropped, l.unix_names_dropped),
        ] {
            delta(&self.conns.get_or_create(&r(name)), a, b);
        }
        for (i, p) in Protocol::ALL.iter().enumerate() {
            let (a, b) = (&now.parse[i], &last.parse[i]);
            for (kind, x, y) in [
                ("exchanges", a.exchanges, b.exchanges),
                ("malformed", a.malformed, b.malformed),
                ("truncated", a.truncated, b.truncated),
                ("resyncs", a.resyncs, b.resyncs),
                ("unmatched_responses", a.unmatched_responses, b.unmatched_responses),
                ("dropped_requests", a.dropped_requests, b.dropped_requests),
                ("unknown_fields", a.unknown_fields, b.unknown_fields),
            ] {
                let key = ProtoKind { protocol: p.as_str().to_owned(), kind: kind.to_owned() };
                delta(&self.parse.get_or_create(&key), x, y);
            }
        }
        self.open_connections.set(now.open_connections as i64);
        for (i, name) in kspan_common::lru::NAMES.iter().enumerate() {
            let label = MapLabel { map: (*name).to_owned() };
            delta(&self.lru_evicted.get_or_create(&label), now.lru.evicted[i], last.lru.evicted[i]);
            delta(&self.lru_swept.get_or_create(&label), now.lru.swept[i], last.lru.swept[i]);
            delta(&self.lru_deleted.get_or_create(&label), now.lru.deleted[i], last.lru.deleted[i]);
        }
        for (name, n) in now.kernel_maps.iter() {
            self.kernel_maps.get_or_create(&MapLabel { map: name.to_owned() }).set(n as i64);
        }
        for (name, n) in now.tables.iter() {
            self.tables.get_or_create(&TableLabel { table: name.to_owned() }).set(n as i64);
        }
        let (a, b) = (&now.links, &last.links);
        let k = |s: &str| Kind { kind: s.to_owned() };
        delta(&self.links.get_or_create(&k("nested")), a.nested, b.nested);
        delta(&self.links.get_or_create(&k("cross_process")), a.cross_process, b.cross_process);
        delta(&self.link_multiplexed, a.multiplexed, b.multiplexed);
        delta(&self.link_released.get_or_create(&r("no_parent")), a.released_unlinked, b.released_unlinked);
        delta(&self.link_released.get_or_create(&r("forced_out")), a.forced_out, b.forced_out);
        self.link_held.set(a.held as i64);
        self.k8s_pods.set(now.k8s_pods as i64);
        self.paused.set(now.paused as i64);
        for (i, name) in STAGES.iter().enumerate() {
            let d = now.stage_cpu_ns[i].saturating_sub(last.stage_cpu_ns[i]);
            if d > 0 {
                self.stage_cpu.get_or_create(&Stage { stage: (*name).to_owned() }).inc_by(d as f64 / 1e9);
            }
        }
        delta(&self.pauses, now.pauses, last.pauses);
        delta(&self.resume_failures, now.resume_failures, last.resume_failures);
        delta(&self.k8s_pods_dropped, now.k8s_pods_dropped, last.k8s_pods_dropped);
        delta(&self.k8s_watch_errors, now.k8s_watch_errors, last.k8s_watch_errors);
        delta(&self.resources_refreshed, now.resources_refreshed, last.resources_refreshed);
        delta(&self.clock_steps, now.clock_steps, last.clock_steps);
        let (a, b) = (&now.tls, &last.tls);
        delta(&self.tls_attached, a.attached, b.attached);
        for (i, name) in FAILURE_REASONS.iter().enumerate() {
            delta(&self.tls_failed.get_or_create(&r(name)), a.failed[i], b.failed[i]);
        }
        delta(&self.tls_failed.get_or_create(&r("files_full")), a.files_full, b.files_full);
        delta(&self.tls_failed.get_or_create(&r("pending_full")), a.pending_full, b.pending_full);
        delta(&self.tls_failed.get_or_create(&r("hooks_full")), a.hooks_full, b.hooks_full);
        self.go_processes.set(now.go.registered as i64);
        delta(&self.go_full, now.go.full, last.go.full);
        for n in crate::capture::go_tls::Nesting::ALL {
            let (a, b) = (now.go.probes[n as usize], last.go.probes[n as usize]);
            for (i, reason) in ["attached", "failed"].into_iter().enumerate() {
                let label = ProbeReason { probe: n.label().0.to_owned(), reason: reason.to_owned() };
                delta(&self.go_probes.get_or_create(&label), a[i], b[i]);
            }
        }
        let g = &self.go_streams;
        delta(&g.get_or_create(&r("handler_goroutine")), now.conns.go_streams, last.conns.go_streams);
        delta(&g.get_or_create(&r("caller_goroutine")), now.conns.go_calls, last.conns.go_calls);
        let (forgotten, before) = (now.conns.go_handlers_forgotten, last.conns.go_handlers_forgotten);
        delta(&g.get_or_create(&r("handlers_forgotten")), forgotten, before);
        delta(&g.get_or_create(&r("unmatched")), now.conns.go_streams_unmatched, last.conns.go_streams_unmatched);
        self.last = *now;
    }
}
