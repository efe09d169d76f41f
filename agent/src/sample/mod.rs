//! Sample stage: decides which spans are kept, consistently per trace.
//!
//! Guarantees:
//! - Decisions are consistent probability sampling on the trace's randomness
//!   ([`consistent`]): the same trace id and rate give the same answer in every
//!   process, and lower rates keep subsets of what higher rates keep.
//! - Precedence (docs/rules.md, "Sampling"): a rule `drop` drops; otherwise a
//!   trace with an error, a critical span or a slow span is kept at its
//!   keep-if rate (1.0 unless configured); otherwise the most specific rate
//!   applies: rule/class rate > `by_attribute` rate > `default_rate`. Only
//!   rate-kept traffic is subject to the tenant budgets and the global limit.
//! - Kept spans carry their effective rate as `ot=th:` in tracestate.
//! - Every span is counted under exactly one [`Reason`] in [`SampleStats`].
//! - [`TraceBuffer`] holds spans per trace (bounded in time and count) so a
//!   whole local trace gets one decision once its errors and latency are known.

pub mod buffer;
pub mod consistent;
pub mod limit;
pub mod policy;

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use buffer::TraceBuffer;
pub use policy::SamplingPolicy;

use crate::span::model::{Span, StatusCode};
use limit::{TenantBudgets, TokenBucket};

/// Why a span was kept or dropped. Each span is counted under one reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    KeptError,
    KeptCritical,
    KeptSlow,
    KeptRate,
    DroppedRate,
    DroppedRule,
    DroppedRateLimit,
    DroppedTenantBudget,
}

impl Reason {
    pub const ALL: [Reason; 8] = [
        Reason::KeptError,
        Reason::KeptCritical,
        Reason::KeptSlow,
        Reason::KeptRate,
        Reason::DroppedRate,
        Reason::DroppedRule,
        Reason::DroppedRateLimit,
        Reason::DroppedTenantBudget,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::KeptError => "kept_error",
            Reason::KeptCritical => "kept_critical",
            Reason::KeptSlow => "kept_slow",
            Reason::KeptRate => "kept_rate",
            Reason::DroppedRate => "dropped_rate",
            Reason::DroppedRule => "dropped_rule",
            Reason::DroppedRateLimit => "dropped_rate_limit",
            Reason::DroppedTenantBudget => "dropped_tenant_budget",
        }
    }

    pub fn is_kept(self) -> bool {
        matches!(self, Reason::KeptError | Reason::KeptCritical | Reason::KeptSlow | Reason::KeptRate)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Sampling counters, readable by telemetry at any time (only grow).
#[derive(Debug, Default)]
pub struct SampleStats {
    by_reason: [AtomicU64; 8],
    /// Traces decided early because they reached `max_spans_per_trace`.
    pub trace_overflows: AtomicU64,
    /// Traces decided early because the buffer reached `max_spans`.
    pub buffer_overflows: AtomicU64,
    /// Traces decided because their hold time ran out (no local root seen).
    pub hold_expired: AtomicU64,
    /// Spans that arrived after their trace was decided and followed it.
    pub late_spans: AtomicU64,
    /// Tenants evicted from the per-tenant budget map.
    pub tenant_evictions: AtomicU64,
}

impl SampleStats {
    pub fn add(&self, reason: Reason, n: u64) {
        self.by_reason[reason.index()].fetch_add(n, Ordering::Relaxed);
    }
    pub fn get(&self, reason: Reason) -> u64 {
        self.by_reason[reason.index()].load(Ordering::Relaxed)
    }
    /// Spans per sampling reason, e.g. `("kept_error", 12)`.
    pub fn fired_counts(&self) -> Vec<(&'static str, u64)> {
        Reason::ALL.iter().map(|r| (r.as_str(), self.get(*r))).collect()
    }
}

/// What the rules said about a span that matters to sampling.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SamplingHints {
    /// A rule dropped the span.
    pub drop: bool,
    /// A rule marked the span business-critical.
    pub critical: bool,
    /// Rate set by a rule (directly or through a class).
    pub rate: Option<f64>,
    /// Priority of the rule that set the rate (0 when none).
    pub priority: u8,
}

/// Where a span's base rate came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateSource {
    Rule,
    Attribute,
    Default,
}

/// Per-span facts sampling decides on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Assessment {
    pub error: bool,
    pub critical: bool,
    pub slow: bool,
    /// Base rate (rule > attribute value > default).
    pub rate: f64,
    pub rate_source: RateSource,
    pub priority: u8,
}

impl Assessment {
    /// Combines the facts of a trace's spans: flags OR-ed, the highest
    /// priority; the base rate is `root`'s when given, else the highest.
    pub fn combine<'a>(all: impl Iterator<Item = &'a Assessment>, root: Option<&Assessment>) -> Option<Assessment> {
        let mut acc: Option<Assessment> = None;
        for a in all {
            acc = Some(match acc {
                None => *a,
                Some(mut c) => {
                    c.error |= a.error;
                    c.critical |= a.critical;
                    c.slow |= a.slow;
                    c.priority = c.priority.max(a.priority);
                    if a.rate > c.rate {
                        c.rate = a.rate;
                        c.rate_source = a.rate_source;
                    }
                    c
                }
            });
        }
        let mut c = acc?;
        if let Some(r) = root {
            c.rate = r.rate;
            c.rate_source = r.rate_source;
        }
        Some(c)
    }
}

/// The outcome for a span or trace.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Decision {
    pub keep: bool,
    pub reason: Reason,
    /// Effective probability the trace was kept with (recorded as `ot=th`).
    pub rate: f64,
}

/// An attribute's text: span attributes, then private ones, then the resource.
pub fn attr_text<'a>(span: &'a Span, key: &str) -> Option<Cow<'a, str>> {
    span.attributes
        .get(key)
        .or_else(|| span.private.get(key))
        .or_else(|| span.resource.attributes.get(key))
        .map(|v| v.to_text())
}

/// Whether a span is an error: status error, or an HTTP status >= 500.
pub fn is_error(span: &Span) -> bool {
    span.status.code == StatusCode::Error
        || span.attributes.get("http.response.status_code").and_then(|v| v.as_i64()).is_some_and(|c| c >= 500)
}

/// The pure part of a decision (no rate limits): keep-if classes first, then
/// the base rate, all against the same randomness `r`.
pub fn decide(policy: &SamplingPolicy, r: u64, a: &Assessment) -> Decision {
    let mut effective = a.rate;
    let mut first_keeper: Option<Reason> = None;
    let slow_rate = policy.slow.as_ref().map_or(1.0, |s| s.rate.get());
    for (applies, rate, reason) in [
        (a.error, policy.errors_rate.get(), Reason::KeptError),
        (a.critical, policy.critical_rate.get(), Reason::KeptCritical),
        (a.slow, slow_rate, Reason::KeptSlow),
    ] {
        if applies {
            effective = effective.max(rate);
            if first_keeper.is_none() && consistent::keeps(r, rate) {
                first_keeper = Some(reason);
            }
        }
    }
    match first_keeper {
        Some(reason) => Decision { keep: true, reason, rate: effective },
        None if consistent::keeps(r, a.rate) => Decision { keep: true, reason: Reason::KeptRate, rate: effective },
        None => Decision { keep: false, reason: Reason::DroppedRate, rate: effective },
    }
}

/// Applies a policy, with the rate limiters' state. Not shared between
/// threads: one per pipeline; counters go to the shared [`SampleStats`].
#[derive(Debug)]
pub struct Sampler {
    policy: Arc<SamplingPolicy>,
    global: Option<TokenBucket>,
    tenants: Option<TenantBudgets>,
    stats: Arc<SampleStats>,
}

impl Sampler {
    pub fn new(policy: Arc<SamplingPolicy>, stats: Arc<SampleStats>, now_ns: u64) -> Self {
        let mut s = Self { policy: Arc::new(SamplingPolicy::default()), global: None, tenants: None, stats };
        s.set_policy(policy, now_ns);
        s
    }

    pub fn policy(&self) -> &Arc<SamplingPolicy> {
        &self.policy
    }

    pub fn stats(&self) -> &Arc<SampleStats> {
        &self.stats
    }

    /// Switches to a new policy (after a reload); limiter state carries over.
    pub fn set_policy(&mut self, policy: Arc<SamplingPolicy>, now_ns: u64) {
        if Arc::ptr_eq(&policy, &self.policy) {
            return;
        }
        self.global = policy.rate_limit.as_ref().map(|l| match self.global.take() {
            Some(mut b) => {
                b.reconfigure(l.spans_per_second.0, l.burst);
                b
            }
            None => TokenBucket::new(l.spans_per_second.0, l.burst, now_ns),
        });
        self.tenants = policy.tenant_budget.as_ref().map(|t| match self.tenants.take() {
            Some(mut b) => {
                b.reconfigure(t.spans_per_second.0, t.burst, t.max_tenants);
                b
            }
            None => TenantBudgets::new(t.spans_per_second.0, t.burst, t.max_tenants),
        });
        self.policy = policy;
    }

    /// The facts about one span (pure).
    pub fn assess(&self, span: &Span, hints: &SamplingHints) -> Assessment {
        let p = &*self.policy;
        let (rate, rate_source) = match hints.rate {
            Some(r) => (r, RateSource::Rule),
            None => match p.attribute_rate(|k| attr_text(span, k)) {
                Some(r) => (r, RateSource::Attribute),
                None => (p.default_rate.get(), RateSource::Default),
            },
        };
        Assessment {
            error: is_error(span),
            critical: hints.critical,
            slow: p.slow.as_ref().is_some_and(|s| span.duration_ns() >= s.threshold.as_ns()),
            rate,
            rate_source,
            priority: hints.priority,
        }
    }

    /// The tenant key of a span, when tenant budgets are configured.
    pub fn tenant_of(&self, span: &Span) -> Option<String> {
        let t = self.policy.tenant_budget.as_ref()?;
        attr_text(span, &t.attribute).map(Cow::into_owned)
    }

    /// Decides for `spans` spans sharing randomness `r`, applying the tenant
    /// budget and the global limit to rate-kept traffic. Does not count.
    pub fn decide(&mut self, r: u64, a: &Assessment, tenant: Option<&str>, spans: u32, now_ns: u64) -> Decision {
        let mut d = decide(&self.policy, r, a);
        let exempt = self.policy.rate_limit.as_ref().and_then(|l| l.exempt_priority).is_some_and(|p| a.priority >= p);
        if d.reason != Reason::KeptRate || exempt {
            return d;
        }
        if let (Some(budgets), Some(tenant)) = (self.tenants.as_mut(), tenant) {
            let before = budgets.evictions;
            let ok = budgets.try_take(tenant, spans, now_ns);
            self.stats.tenant_evictions.fetch_add(budgets.evictions - before, Ordering::Relaxed);
            if !ok {
                d.keep = false;
                d.reason = Reason::DroppedTenantBudget;
                return d;
            }
        }
        if let Some(bucket) = self.global.as_mut()
            && !bucket.try_take(spans, now_ns)
        {
            d.keep = false;
            d.reason = Reason::DroppedRateLimit;
        }
        d
    }

    /// Decides for a single span on its own (no trace buffering): counts the
    /// reason and records the rate in the tracestate of a kept span.
    pub fn sample_span(&mut self, span: &mut Span, hints: &SamplingHints, now_ns: u64) -> Decision {
        if hints.drop {
            self.stats.add(Reason::DroppedRule, 1);
            return Decision { keep: false, reason: Reason::DroppedRule, rate: 0.0 };
        }
        let a = self.assess(span, hints);
        let tenant = self.tenant_of(span);
        let r = consistent::randomness(&span.trace_id, &span.trace_state);
        let d = self.decide(r, &a, tenant.as_deref(), 1, now_ns);
        self.stats.add(d.reason, 1);
        if d.keep {
            consistent::record_rate(&mut span.trace_state, d.rate);
        }
        d
    }
}

#[cfg(test)]
mod tests;
