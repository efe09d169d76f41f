//! The async side of the pipeline after span building: business rules, then
//! trace-consistent sampling (spans held per trace until the local trace can
//! be judged), then the outputs. Without a rules file every span is kept.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use super::queue::SpanReceiver;
use crate::export::Exporters;
use crate::rules::RuleSet;
use crate::rules::reload::{ReloadStats, RulesHandle, spawn_reload};
use crate::sample::buffer::TraceBuffer;
use crate::sample::{Reason, SampleStats, Sampler};
use crate::span::builder::Clock;
use crate::span::model::Span;
use crate::telemetry::Telemetry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabel {
    reason: String,
}

/// Rules and sampling state, when a rules file is configured.
struct Rules {
    handle: RulesHandle,
    reload: Arc<ReloadStats>,
    buffer: TraceBuffer,
    stats: Arc<SampleStats>,
    policy_ptr: usize,
    fired: Family<RuleLabel, Counter>,
    reasons: Family<ReasonLabel, Counter>,
    reload_failures: Counter,
    last_reload_ok: Gauge,
    held: Gauge,
    published_fired: HashMap<Arc<str>, u64>,
    published_reasons: [u64; 8],
    published_failures: u64,
}

impl Rules {
    fn start(path: PathBuf, set: RuleSet, telemetry: &Arc<Telemetry>) -> Self {
        tracing::info!(file = %path.display(), rules = set.rules().len(), "business rules loaded");
        let policy = set.sampling().clone();
        let policy_ptr = Arc::as_ptr(&policy) as usize;
        let stats = Arc::new(SampleStats::default());
        let buffer = TraceBuffer::new(Sampler::new(policy, stats.clone(), Clock::monotonic_now()));
        let handle = RulesHandle::new(set);
        let reload = Arc::new(ReloadStats::default());
        spawn_reload(path, handle.clone(), reload.clone());
        let r = Self {
            handle,
            reload,
            buffer,
            stats,
            policy_ptr,
            fired: Family::default(),
            reasons: Family::default(),
            reload_failures: Counter::default(),
            last_reload_ok: Gauge::default(),
            held: Gauge::default(),
            published_fired: HashMap::new(),
            published_reasons: [0; 8],
            published_failures: 0,
        };
        telemetry.register("kspan_rule_fired", "Spans each business rule fired on", r.fired.clone());
        telemetry.register(
            "kspan_sampling_decisions",
            "Spans kept or dropped by sampling, by reason",
            r.reasons.clone(),
        );
        telemetry.register(
            "kspan_rules_reload_failures",
            "Rule file reloads rejected (last good rules kept)",
            r.reload_failures.clone(),
        );
        telemetry.register(
            "kspan_rules_last_reload_ok",
            "1 if the last rule file (re)load succeeded",
            r.last_reload_ok.clone(),
        );
        telemetry.register(
            "kspan_sampling_held_spans",
            "Spans held waiting for their trace's decision",
            r.held.clone(),
        );
        r.last_reload_ok.set(1);
        r
    }

    fn process(&mut self, mut span: Span, out: &mut Vec<Span>) {
        let set = self.handle.load();
        let policy = set.sampling();
        if Arc::as_ptr(policy) as usize != self.policy_ptr {
            self.policy_ptr = Arc::as_ptr(policy) as usize;
            self.buffer.set_policy(policy.clone(), Clock::monotonic_now());
        }
        let outcome = set.apply(&mut span);
        self.buffer.push(span, &outcome.hints(), Clock::monotonic_now(), out);
    }

    fn publish(&mut self) {
        for (rule, n) in self.handle.fired_counts() {
            let before = self.published_fired.insert(rule.clone(), n).unwrap_or(0);
            if n > before {
                self.fired.get_or_create(&RuleLabel { rule: rule.to_string() }).inc_by(n - before);
            }
        }
        for (i, r) in Reason::ALL.iter().enumerate() {
            let n = self.stats.get(*r);
            if n > self.published_reasons[i] {
                self.reasons
                    .get_or_create(&ReasonLabel { reason: r.as_str().to_owned() })
                    .inc_by(n - self.published_reasons[i]);
                self.published_reasons[i] = n;
            }
        }
        let failures = self.reload.reload_failures.load(Ordering::Relaxed);
        if failures > self.published_failures {
            self.reload_failures.inc_by(failures - self.published_failures);
            self.published_failures = failures;
        }
        self.last_reload_ok.set(self.reload.last_reload_ok.load(Ordering::Relaxed) as i64);
        self.held.set(self.buffer.held_spans() as i64);
    }
}

/// Runs until the span queue closes, then flushes held spans.
pub async fn run(
    mut spans: SpanReceiver,
    exporters: Arc<Exporters>,
    rules: Option<(PathBuf, RuleSet)>,
    telemetry: Arc<Telemetry>,
) {
    let mut rules = rules.map(|(path, set)| Rules::start(path, set, &telemetry));
    let mut out = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut ticks = 0u64;
    loop {
        tokio::select! {
            batch = spans.recv() => {
                let Some(batch) = batch else { break };
                match rules.as_mut() {
                    Some(r) => batch.into_iter().for_each(|span| r.process(span, &mut out)),
                    None => batch.into_iter().for_each(|span| exporters.submit(Arc::new(span))),
                }
            }
            // Only rules hold spans or counters to publish: without them the
            // task sleeps until a batch comes.
            _ = tick.tick(), if rules.is_some() => {
                if let Some(r) = rules.as_mut() {
                    r.buffer.tick(Clock::monotonic_now(), &mut out);
                    ticks += 1;
                    if ticks.is_multiple_of(10) {
                        r.publish();
                    }
                }
            }
        }
        for s in out.drain(..) {
            exporters.submit(Arc::new(s));
        }
    }
    if let Some(r) = rules.as_mut() {
        r.buffer.flush(Clock::monotonic_now(), &mut out);
        r.publish();
        for s in out.drain(..) {
            exporters.submit(Arc::new(s));
        }
    }
}
