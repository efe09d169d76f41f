//! deploy/examples/rules.yaml compiles and does what its header says.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use serde_json::json;

use super::{RuleSet, spanjson};
use crate::sample::{Decision, Reason, SampleStats, Sampler, consistent};
use crate::span::model::Span;

fn example() -> RuleSet {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/rules.yaml");
    RuleSet::load(&path).unwrap_or_else(|e| panic!("{e}"))
}

/// A trace id whose randomness is `fraction` of the way through 0..2^56.
fn trace_id(fraction: f64) -> String {
    let r = (fraction * consistent::MAX_THRESHOLD as f64) as u64;
    format!("0123456789abcdef00{:014x}", r)
}

fn run(rules: &RuleSet, span: serde_json::Value) -> (Span, Vec<String>, Decision) {
    let mut span = spanjson::span_from_value(&span).unwrap();
    let outcome = rules.apply(&mut span);
    let mut sampler = Sampler::new(Arc::clone(rules.sampling()), Arc::new(SampleStats::default()), 0);
    let d = sampler.sample_span(&mut span, &outcome.hints(), 0);
    (span, outcome.fired.iter().map(|s| s.to_string()).collect(), d)
}

fn http(path: &str, headers: serde_json::Value, r: f64) -> serde_json::Value {
    json!({
        "name": "GET", "kind": "server", "duration_ms": 20,
        "attributes": {"http.request.method": "GET", "url.path": path, "http.response.status_code": 200},
        "private": headers,
        "resource": {"service.name": "shop"},
        "trace_id": trace_id(r),
    })
}

#[test]
fn example_compiles_with_all_its_rules() {
    let rules = example();
    let ids: Vec<&str> = rules.rules().iter().map(|r| r.id.as_ref()).collect();
    assert_eq!(ids, ["drop-metrics", "identity", "enterprise-tenants", "checkout", "health-checks", "batch-jobs"]);
    assert_eq!(rules.sampling().default_rate.get(), 0.1);
}

#[test]
fn example_drops_metrics_scrapes() {
    let (_, fired, d) = run(&example(), http("/metrics", json!({}), 0.99));
    assert_eq!(fired, ["drop-metrics"]);
    assert_eq!(d.reason, Reason::DroppedRule);
}

#[test]
fn example_keeps_every_checkout_with_tenant_and_user_and_no_token() {
    let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"user-7","exp":1}"#);
    let auth = format!("Bearer eyJhbGciOiJIUzI1NiJ9.{payload}.c2lnbmF0dXJl");
    let mut span = http(
        "/api/v1/checkout",
        json!({"http.request.header.x-tenant-id": "tiny-shop", "http.request.header.authorization": auth}),
        0.0001,
    );
    span["attributes"]["http.request.method"] = json!("POST");
    let (span, fired, d) = run(&example(), span);
    assert_eq!(fired, ["identity", "checkout"]);
    assert_eq!(span.name, "checkout POST");
    assert_eq!(span.attributes.get_str("tenant.id"), Some("tiny-shop"));
    assert_eq!(span.attributes.get_str("tenant.tier"), Some("standard"));
    assert_eq!(span.attributes.get_str("enduser.id"), Some("user-7"));
    assert_eq!(span.attributes.get_str("business.process"), Some("checkout"));
    assert_eq!(d.reason, Reason::KeptCritical, "kept although a 10% rate would drop this trace");
    let exported = spanjson::span_to_value(&span, &Default::default(), None).to_string();
    assert!(!exported.contains(&payload), "token exported: {exported}");
}

#[test]
fn example_rates_by_tier_and_background_class() {
    let rules = example();
    // Randomness at 7% of the range: kept at 100%, dropped at 10% and 5%.
    let standard = run(&rules, http("/api/v1/cart", json!({"http.request.header.x-tenant-id": "tiny-shop"}), 0.07));
    assert_eq!((standard.2.keep, standard.2.rate), (false, 0.1));
    let by_header = run(&rules, http("/api/v1/cart", json!({"http.request.header.x-tenant-tier": "enterprise"}), 0.07));
    assert_eq!((by_header.2.reason, by_header.2.rate), (Reason::KeptRate, 1.0));
    let by_map = run(&rules, http("/api/v1/cart", json!({"http.request.header.x-tenant-id": "globex"}), 0.07));
    assert_eq!(by_map.1, ["identity", "enterprise-tenants"]);
    assert_eq!(by_map.2.rate, 1.0);
    // Randomness at 97%: kept at 10% and at 5%; at 93%: kept at 10%, not at 5%.
    let health = run(&rules, http("/healthz", json!({"http.request.header.x-tenant-id": "globex"}), 0.93));
    assert_eq!((health.2.keep, health.2.rate), (false, 0.05), "class beats the enterprise tier");
    let probe = run(&rules, http("/", json!({"http.request.header.user-agent": "kube-probe/1.30"}), 0.97));
    assert_eq!((probe.1.last().map(String::as_str), probe.2.keep, probe.2.rate), (Some("health-checks"), true, 0.05));
    let mut batch = http("/api/v1/report", json!({}), 0.93);
    batch["resource"]["service.name"] = json!("invoice-batch");
    assert_eq!(run(&rules, batch).2.rate, 0.05);
}

#[test]
fn example_keeps_errors_and_slow_requests() {
    let rules = example();
    let mut err = http("/api/v1/cart", json!({}), 0.0001);
    err["attributes"]["http.response.status_code"] = json!(502);
    assert_eq!(run(&rules, err).2.reason, Reason::KeptError);
    let mut slow = http("/healthz", json!({}), 0.0001);
    slow["duration_ms"] = json!(1500);
    assert_eq!(run(&rules, slow).2.reason, Reason::KeptSlow);
    let mut quick = http("/api/v1/cart", json!({}), 0.0001);
    quick["duration_ms"] = json!(999);
    assert_eq!(run(&rules, quick).2.reason, Reason::DroppedRate);
}
