//! Trace-level holding: spans wait per trace id until the local trace can be
//! judged as a whole (errors and latency are only known once spans complete).
//!
//! Guarantees:
//! - A trace is decided when its local root completes (a server span, or a
//!   span with no parent), when its hold time runs out ([`TraceBuffer::tick`]),
//!   when it reaches `max_spans_per_trace`, or when the buffer reaches
//!   `max_spans` (the oldest trace is decided to make room). Each early
//!   decision is counted in [`SampleStats`].
//! - One decision per local trace: if any held span is an error, critical or
//!   slow, all held spans are kept; otherwise the root's rate decides (the
//!   highest held rate when no root was seen).
//! - Spans arriving after their trace was decided follow that decision (kept
//!   anyway when they are themselves an error, critical or slow); decisions
//!   are remembered in a bounded LRU map.
//! - Spans a rule dropped are never held; every span is counted once.
//! - Time is injected: every call takes `now_ns` (monotonic).

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use lru::LruCache;

use super::{Assessment, Decision, Reason, Sampler, SamplingHints, SamplingPolicy, consistent};
use crate::span::model::{Span, SpanKind};

type TraceId = [u8; 16];

struct Held {
    spans: Vec<(Span, Assessment)>,
    /// Generation, to match this trace's entry in the expiry queue.
    generation: u64,
}

/// Holds spans per trace until the trace is decided. Single-threaded: one per
/// pipeline.
pub struct TraceBuffer {
    sampler: Sampler,
    traces: HashMap<TraceId, Held>,
    /// (deadline, trace, generation) in arrival order; deadlines only grow
    /// while the hold time is unchanged.
    expiry: VecDeque<(u64, TraceId, u64)>,
    decided: LruCache<TraceId, Decision>,
    held_spans: usize,
    next_generation: u64,
}

impl TraceBuffer {
    pub fn new(sampler: Sampler) -> Self {
        let cap = NonZeroUsize::new(sampler.policy().hold.remember_decisions).unwrap_or(NonZeroUsize::MIN);
        Self {
            sampler,
            traces: HashMap::new(),
            expiry: VecDeque::new(),
            decided: LruCache::new(cap),
            held_spans: 0,
            next_generation: 0,
        }
    }

    pub fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    /// Switches policy (after a rules reload); held spans stay held.
    pub fn set_policy(&mut self, policy: Arc<SamplingPolicy>, now_ns: u64) {
        if let Some(cap) = NonZeroUsize::new(policy.hold.remember_decisions) {
            self.decided.resize(cap);
        }
        self.sampler.set_policy(policy, now_ns);
    }

    /// Spans currently held.
    pub fn held_spans(&self) -> usize {
        self.held_spans
    }

    /// Traces currently held.
    pub fn held_traces(&self) -> usize {
        self.traces.len()
    }

    /// Takes one span with the rules' hints; kept spans of any trace decided
    /// now are appended to `out`.
    pub fn push(&mut self, span: Span, hints: &SamplingHints, now_ns: u64, out: &mut Vec<Span>) {
        let stats = Arc::clone(self.sampler.stats());
        if hints.drop {
            stats.add(Reason::DroppedRule, 1);
            return;
        }
        let a = self.sampler.assess(&span, hints);
        if let Some(d) = self.decided.get(&span.trace_id).copied() {
            stats.late_spans.fetch_add(1, Ordering::Relaxed);
            self.emit_late(span, &a, d, out);
            return;
        }
        let hold = self.sampler.policy().hold.clone();
        if self.held_spans >= hold.max_spans.max(1) {
            stats.buffer_overflows.fetch_add(1, Ordering::Relaxed);
            self.evict_oldest(now_ns, out);
        }
        if self.expiry.len() >= 2 * hold.max_spans.max(1) {
            self.compact_expiry();
        }
        let local_root = span.kind == SpanKind::Server || span.is_root();
        let id = span.trace_id;
        let generation = self.next_generation;
        let held = self.traces.entry(id).or_insert_with(|| Held { spans: Vec::new(), generation });
        if held.generation == generation {
            self.next_generation += 1;
            self.expiry.push_back((now_ns.saturating_add(hold.max_time.as_ns()), id, generation));
        }
        held.spans.push((span, a));
        self.held_spans += 1;
        let full = held.spans.len() >= hold.max_spans_per_trace.max(1);
        if local_root {
            self.decide_trace(id, Some(a), now_ns, out);
        } else if full {
            stats.trace_overflows.fetch_add(1, Ordering::Relaxed);
            self.decide_trace(id, None, now_ns, out);
        }
    }

    /// Decides traces whose hold time has run out.
    pub fn tick(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        while let Some(&(deadline, id, generation)) = self.expiry.front() {
            if deadline > now_ns {
                break;
            }
            self.expiry.pop_front();
            if self.traces.get(&id).is_some_and(|h| h.generation == generation) {
                self.sampler.stats().hold_expired.fetch_add(1, Ordering::Relaxed);
                self.decide_trace(id, None, now_ns, out);
            }
        }
    }

    /// Decides every held trace (shutdown).
    pub fn flush(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        while let Some((_, id, _)) = self.expiry.pop_front() {
            if self.traces.contains_key(&id) {
                self.decide_trace(id, None, now_ns, out);
            }
        }
    }

    /// Drops expiry entries of traces already decided. Held traces never
    /// outnumber `max_spans`, so running this when the queue reaches twice
    /// that keeps it bounded at amortised O(1) per span.
    fn compact_expiry(&mut self) {
        let traces = &self.traces;
        self.expiry.retain(|(_, id, g)| traces.get(id).is_some_and(|h| h.generation == *g));
    }

    /// Entries in the expiry queue (bounded by `2 * max_spans`).
    pub fn expiry_len(&self) -> usize {
        self.expiry.len()
    }

    fn evict_oldest(&mut self, now_ns: u64, out: &mut Vec<Span>) {
        while let Some((_, id, generation)) = self.expiry.pop_front() {
            if self.traces.get(&id).is_some_and(|h| h.generation == generation) {
                self.decide_trace(id, None, now_ns, out);
                return;
            }
        }
    }

    fn decide_trace(&mut self, id: TraceId, root: Option<Assessment>, now_ns: u64, out: &mut Vec<Span>) {
        let Some(held) = self.traces.remove(&id) else {
            return;
        };
        self.held_spans = self.held_spans.saturating_sub(held.spans.len());
        let Some(combined) = Assessment::combine(held.spans.iter().map(|(_, a)| a), root.as_ref()) else {
            return;
        };
        let trace_state = held.spans.first().map(|(s, _)| s.trace_state.as_str()).unwrap_or("");
        let r = consistent::randomness(&id, trace_state);
        let tenant = held.spans.iter().rev().find_map(|(s, _)| self.sampler.tenant_of(s));
        let n = u32::try_from(held.spans.len()).unwrap_or(u32::MAX);
        let d = self.sampler.decide(r, &combined, tenant.as_deref(), n, now_ns);
        self.sampler.stats().add(d.reason, held.spans.len() as u64);
        self.decided.put(id, d);
        if d.keep {
            for (mut span, _) in held.spans {
                consistent::record_rate(&mut span.trace_state, d.rate);
                out.push(span);
            }
        }
    }

    fn emit_late(&mut self, mut span: Span, a: &Assessment, d: Decision, out: &mut Vec<Span>) {
        let own = super::decide(self.sampler.policy(), consistent::randomness(&span.trace_id, &span.trace_state), a);
        let (keep, reason, rate) = if d.keep {
            (true, d.reason, d.rate)
        } else if own.keep && own.reason != Reason::KeptRate {
            (true, own.reason, own.rate)
        } else {
            (false, d.reason, d.rate)
        };
        self.sampler.stats().add(reason, 1);
        if keep {
            consistent::record_rate(&mut span.trace_state, rate);
            out.push(span);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::SampleStats;
    use crate::span::model::{Attributes, ProcessResource, SpanStatus};

    const MS: u64 = 1_000_000;

    fn span(trace: u8, r: u64, kind: SpanKind, root: bool, dur_ms: u64) -> Span {
        let mut trace_id = [trace; 16];
        trace_id[9..].copy_from_slice(&r.to_be_bytes()[1..]);
        Span {
            trace_id,
            span_id: [1; 8],
            parent_span_id: if root { [0; 8] } else { [2; 8] },
            trace_state: String::new(),
            trace_flags: 1,
            name: "s".into(),
            kind,
            start_unix_ns: 0,
            end_unix_ns: dur_ms * MS,
            status: SpanStatus::default(),
            attributes: Attributes::new(),
            private: Attributes::new(),
            events: Vec::new(),
            resource: Arc::new(ProcessResource::default()),
            tid: 1,
        }
    }

    fn buffer(yaml: &str) -> (TraceBuffer, Arc<SampleStats>) {
        let policy = Arc::new(SamplingPolicy::from_yaml_str(yaml).unwrap());
        let stats = Arc::new(SampleStats::default());
        (TraceBuffer::new(Sampler::new(policy, Arc::clone(&stats), 0)), stats)
    }

    const LOW_R: u64 = 1; // dropped at any rate < 1
    const HIGH_R: u64 = (1 << 56) - 1; // kept at any rate > 0

    #[test]
    fn error_child_keeps_the_whole_local_trace() {
        let (mut b, stats) = buffer("default_rate: 0.1\n");
        let mut out = Vec::new();
        let mut child = span(1, LOW_R, SpanKind::Client, false, 5);
        child.status = SpanStatus::error("boom");
        b.push(span(1, LOW_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
        b.push(child, &SamplingHints::default(), 0, &mut out);
        assert!(out.is_empty(), "held until the root completes");
        b.push(span(1, LOW_R, SpanKind::Server, false, 20), &SamplingHints::default(), 0, &mut out);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|s| s.trace_state == "ot=th:0"));
        assert_eq!(stats.get(Reason::KeptError), 3);
        assert_eq!(b.held_spans(), 0);
    }

    #[test]
    fn unremarkable_trace_follows_the_root_rate() {
        let (mut b, stats) = buffer("default_rate: 0.1\n");
        let mut out = Vec::new();
        b.push(span(2, LOW_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
        b.push(span(2, LOW_R, SpanKind::Server, false, 5), &SamplingHints::default(), 0, &mut out);
        assert!(out.is_empty());
        assert_eq!(stats.get(Reason::DroppedRate), 2);
        b.push(span(3, HIGH_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
        b.push(span(3, HIGH_R, SpanKind::Server, false, 5), &SamplingHints::default(), 0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].trace_state, format!("ot=th:{}", consistent::threshold_hex(consistent::threshold(0.1))));
    }

    #[test]
    fn slow_root_keeps_trace_and_critical_hint_keeps_trace() {
        let (mut b, stats) = buffer("default_rate: 0.0\nslow: {threshold: 1s}\n");
        let mut out = Vec::new();
        b.push(span(4, LOW_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
        b.push(span(4, LOW_R, SpanKind::Server, false, 1500), &SamplingHints::default(), 0, &mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(stats.get(Reason::KeptSlow), 2);
        let critical = SamplingHints { critical: true, ..SamplingHints::default() };
        b.push(span(5, LOW_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
        b.push(span(5, LOW_R, SpanKind::Server, false, 5), &critical, 0, &mut out);
        assert_eq!(out.len(), 4);
        assert_eq!(stats.get(Reason::KeptCritical), 2);
    }

    #[test]
    fn hold_time_expiry_decides_rootless_traces() {
        let (mut b, stats) = buffer("default_rate: 1.0\nhold: {max_time: 2s}\n");
        let mut out = Vec::new();
        b.push(span(6, LOW_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
        b.tick(1_999 * MS, &mut out);
        assert!(out.is_empty());
        b.tick(2_000 * MS, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(stats.hold_expired.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn per_trace_and_total_caps_decide_early_and_count() {
        let (mut b, stats) = buffer("hold: {max_spans_per_trace: 3, max_spans: 4}\n");
        let mut out = Vec::new();
        for _ in 0..3 {
            b.push(span(7, LOW_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
        }
        assert_eq!(out.len(), 3);
        assert_eq!(stats.trace_overflows.load(Ordering::Relaxed), 1);
        for t in 10..15 {
            b.push(span(t, LOW_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
        }
        assert!(b.held_spans() <= 4);
        assert_eq!(stats.buffer_overflows.load(Ordering::Relaxed), 1);
        assert_eq!(out.len(), 4, "the oldest trace was decided to make room");
    }

    #[test]
    fn late_spans_follow_the_decision_unless_they_are_errors() {
        let (mut b, stats) = buffer("default_rate: 0.0\n");
        let mut out = Vec::new();
        b.push(span(8, LOW_R, SpanKind::Server, false, 5), &SamplingHints::default(), 0, &mut out);
        assert!(out.is_empty());
        b.push(span(8, LOW_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
        assert!(out.is_empty());
        let mut err = span(8, LOW_R, SpanKind::Client, false, 5);
        err.status = SpanStatus::error("x");
        b.push(err, &SamplingHints::default(), 0, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(stats.late_spans.load(Ordering::Relaxed), 2);
        assert_eq!(stats.get(Reason::DroppedRate), 2);
        assert_eq!(stats.get(Reason::KeptError), 1);
    }

    #[test]
    fn rule_dropped_spans_are_not_held_and_counted() {
        let (mut b, stats) = buffer("{}");
        let mut out = Vec::new();
        let drop = SamplingHints { drop: true, ..SamplingHints::default() };
        b.push(span(9, HIGH_R, SpanKind::Server, true, 5), &drop, 0, &mut out);
        assert!(out.is_empty());
        assert_eq!(b.held_spans(), 0);
        assert_eq!(stats.get(Reason::DroppedRule), 1);
    }

    #[test]
    fn global_limit_drops_whole_traces_beyond_burst() {
        let (mut b, stats) = buffer("rate_limit: {spans_per_second: 1, burst: 3}\n");
        let mut out = Vec::new();
        for t in 20..24 {
            b.push(span(t, HIGH_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
            b.push(span(t, HIGH_R, SpanKind::Server, false, 5), &SamplingHints::default(), 0, &mut out);
        }
        assert_eq!(out.len(), 2, "one 2-span trace fits the 3-token burst");
        assert_eq!(stats.get(Reason::DroppedRateLimit), 6);
    }

    #[test]
    fn expiry_queue_stays_bounded_when_roots_decide_traces() {
        let (mut b, _) = buffer("hold: {max_spans: 8}\n");
        let mut out = Vec::new();
        for t in 0..200u8 {
            b.push(span(t, HIGH_R, SpanKind::Server, true, 5), &SamplingHints::default(), 0, &mut out);
            assert!(b.expiry_len() <= 16, "expiry queue grew to {}", b.expiry_len());
        }
        assert_eq!(out.len(), 200);
    }

    #[test]
    fn flush_decides_everything_held() {
        let (mut b, _) = buffer("{}");
        let mut out = Vec::new();
        for t in 30..33 {
            b.push(span(t, HIGH_R, SpanKind::Client, false, 5), &SamplingHints::default(), 0, &mut out);
        }
        b.flush(0, &mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(b.held_traces(), 0);
    }
}
