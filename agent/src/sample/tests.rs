//! Statistical and consistency tests of the sampler.

use super::*;
use crate::span::model::{AttrValue, Attributes, ProcessResource, SpanKind, SpanStatus};

/// splitmix64: deterministic pseudo-random trace ids.
struct Ids(u64);
impl Ids {
    fn next(&mut self) -> [u8; 16] {
        let mut id = [0u8; 16];
        for half in id.chunks_mut(8) {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            half.copy_from_slice(&(z ^ (z >> 31)).to_be_bytes());
        }
        id
    }
}

fn span(trace_id: [u8; 16]) -> Span {
    Span {
        trace_id,
        span_id: [1; 8],
        parent_span_id: [0; 8],
        trace_state: String::new(),
        trace_flags: 1,
        name: "GET /".into(),
        kind: SpanKind::Server,
        start_unix_ns: 0,
        end_unix_ns: 1_000_000,
        status: SpanStatus::default(),
        attributes: Attributes::new(),
        private: Attributes::new(),
        events: Vec::new(),
        resource: Arc::new(ProcessResource::default()),
        tid: 1,
    }
}

fn sampler(yaml: &str) -> Sampler {
    let policy = SamplingPolicy::from_yaml_str(yaml).unwrap();
    Sampler::new(Arc::new(policy), Arc::new(SampleStats::default()), 0)
}

/// Asserts `kept` of `n` is within a 99.9% two-sided binomial bound of `p`.
fn assert_binomial(kept: usize, n: usize, p: f64) {
    let mean = n as f64 * p;
    let sd = (n as f64 * p * (1.0 - p)).sqrt();
    let z = 3.291; // 99.9% two-sided
    assert!((kept as f64 - mean).abs() <= z * sd, "kept {kept} of {n}, expected {mean} +- {}", z * sd);
}

#[test]
fn default_rate_keeps_its_share_of_random_traces() {
    let mut s = sampler("default_rate: 0.1\n");
    let mut ids = Ids(42);
    let n = 20_000;
    let kept = (0..n).filter(|_| s.sample_span(&mut span(ids.next()), &SamplingHints::default(), 0).keep).count();
    assert_binomial(kept, n, 0.1);
    assert_eq!(s.stats().get(Reason::KeptRate) as usize, kept);
    assert_eq!(s.stats().get(Reason::DroppedRate) as usize, n - kept);
}

#[test]
fn errors_and_critical_are_always_kept() {
    let mut s = sampler("default_rate: 0.01\n");
    let mut ids = Ids(7);
    for _ in 0..5_000 {
        let mut sp = span(ids.next());
        sp.status = SpanStatus::error("x");
        let d = s.sample_span(&mut sp, &SamplingHints::default(), 0);
        assert!(d.keep);
        assert_eq!(d.reason, Reason::KeptError);
        assert_eq!(sp.trace_state, "ot=th:0");

        let mut sp = span(ids.next());
        sp.attributes.set("http.response.status_code", AttrValue::Int(503));
        assert_eq!(s.sample_span(&mut sp, &SamplingHints::default(), 0).reason, Reason::KeptError);

        let crit = SamplingHints { critical: true, ..SamplingHints::default() };
        assert_eq!(s.sample_span(&mut span(ids.next()), &crit, 0).reason, Reason::KeptCritical);
    }
    assert_eq!(s.stats().get(Reason::DroppedRate), 0);
}

#[test]
fn tier_rates_hold_and_rule_rate_beats_attribute_rate() {
    let mut s =
        sampler("default_rate: 0.1\nby_attribute:\n  tenant.tier: {enterprise: 1.0, premium: 0.5, standard: 0.1}\n");
    let mut ids = Ids(99);
    let n = 10_000;
    for (tier, p) in [("enterprise", 1.0), ("premium", 0.5), ("standard", 0.1), ("unknown", 0.1)] {
        let kept = (0..n)
            .filter(|_| {
                let mut sp = span(ids.next());
                sp.attributes.set("tenant.tier", tier);
                s.sample_span(&mut sp, &SamplingHints::default(), 0).keep
            })
            .count();
        if p == 1.0 { assert_eq!(kept, n) } else { assert_binomial(kept, n, p) }
    }
    let rule = SamplingHints { rate: Some(0.05), ..SamplingHints::default() };
    let kept = (0..n)
        .filter(|_| {
            let mut sp = span(ids.next());
            sp.attributes.set("tenant.tier", "enterprise");
            s.sample_span(&mut sp, &rule, 0).keep
        })
        .count();
    assert_binomial(kept, n, 0.05);
}

#[test]
fn same_trace_same_decision_and_lower_rates_keep_subsets() {
    let mut ids = Ids(1234);
    let rates = [0.01, 0.05, 0.1, 0.25, 0.5, 0.9, 1.0];
    for _ in 0..5_000 {
        let id = ids.next();
        let r = consistent::trace_randomness(&id);
        let kept: Vec<bool> = rates.iter().map(|p| consistent::keeps(r, *p)).collect();
        for w in kept.windows(2) {
            assert!(!w[0] || w[1], "kept at a lower rate but not at a higher one");
        }
        let mut a = sampler("default_rate: 0.25\n");
        let mut b = sampler("default_rate: 0.25\n");
        let da = a.sample_span(&mut span(id), &SamplingHints::default(), 0);
        let db = b.sample_span(&mut span(id), &SamplingHints::default(), 0);
        assert_eq!(da.keep, db.keep);
        assert_eq!(da.keep, kept[3]);
    }
}

#[test]
fn slow_spans_are_kept_and_fast_ones_sampled() {
    let mut s = sampler("default_rate: 0.0\nslow: {threshold: 1s}\n");
    let mut ids = Ids(5);
    let mut sp = span(ids.next());
    sp.end_unix_ns = 1_000_000_000;
    assert_eq!(s.sample_span(&mut sp, &SamplingHints::default(), 0).reason, Reason::KeptSlow);
    let mut sp = span(ids.next());
    sp.end_unix_ns = 999_999_999;
    assert_eq!(s.sample_span(&mut sp, &SamplingHints::default(), 0).reason, Reason::DroppedRate);
}

#[test]
fn limits_apply_to_rate_kept_traffic_only() {
    let mut s = sampler(
        "rate_limit: {spans_per_second: 1, burst: 2}\ntenant_budget: {attribute: tenant.id, spans_per_second: 1, burst: 1, max_tenants: 2}\n",
    );
    let mut ids = Ids(11);
    let mut tenant_span = |t: &str| {
        let mut sp = span(ids.next());
        sp.attributes.set("tenant.id", t.to_owned());
        sp
    };
    let h = SamplingHints::default();
    assert_eq!(s.sample_span(&mut tenant_span("a"), &h, 0).reason, Reason::KeptRate);
    assert_eq!(s.sample_span(&mut tenant_span("a"), &h, 0).reason, Reason::DroppedTenantBudget);
    assert_eq!(s.sample_span(&mut tenant_span("b"), &h, 0).reason, Reason::KeptRate);
    assert_eq!(s.sample_span(&mut tenant_span("c"), &h, 0).reason, Reason::DroppedRateLimit);
    let mut err = tenant_span("a");
    err.status = SpanStatus::error("x");
    assert_eq!(s.sample_span(&mut err, &h, 0).reason, Reason::KeptError, "errors bypass limits");
    assert_eq!(s.stats().tenant_evictions.load(Ordering::Relaxed), 1);
    // A second later the global bucket has a token again.
    assert_eq!(s.sample_span(&mut tenant_span("d"), &h, 1_000_000_000).reason, Reason::KeptRate);
}

#[test]
fn exempt_priority_bypasses_the_global_limit() {
    let mut s = sampler("rate_limit: {spans_per_second: 1, burst: 1, exempt_priority: 5}\n");
    let mut ids = Ids(3);
    let h = SamplingHints::default();
    assert!(s.sample_span(&mut span(ids.next()), &h, 0).keep);
    assert!(!s.sample_span(&mut span(ids.next()), &h, 0).keep);
    let vip = SamplingHints { priority: 5, ..SamplingHints::default() };
    assert!(s.sample_span(&mut span(ids.next()), &vip, 0).keep);
}

#[test]
fn policy_switch_keeps_limiter_state() {
    let mut s = sampler("rate_limit: {spans_per_second: 1, burst: 1}\n");
    let mut ids = Ids(8);
    let h = SamplingHints::default();
    assert!(s.sample_span(&mut span(ids.next()), &h, 0).keep);
    let next = SamplingPolicy::from_yaml_str("rate_limit: {spans_per_second: 1, burst: 5}\n").unwrap();
    s.set_policy(Arc::new(next), 0);
    assert!(!s.sample_span(&mut span(ids.next()), &h, 0).keep, "bucket was empty before the switch");
}
