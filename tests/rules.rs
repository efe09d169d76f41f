//! End-to-end: business rules and sampling on real traffic. A real HTTP app
//! gets requests with X-Tenant-ID headers and JWTs; the rule file is edited
//! live (a good edit is picked up, a broken one rejected while the old rules
//! keep working); sampling rates hold statistically.

use std::process::Command;
use std::time::Duration;

use kspan_e2e::servers::{TempDir, python_http};
use kspan_e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// An unsigned JWT-shaped token with the given `sub` (kspan decodes, never verifies).
fn jwt(sub: &str) -> String {
    fn b64(s: &str) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let b = s.as_bytes();
        let mut out = String::new();
        for c in b.chunks(3) {
            let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
            for i in 0..=c.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            }
        }
        out
    }
    format!(
        "{}.{}.c2lnbmF0dXJl",
        b64(r#"{"alg":"HS256","typ":"JWT"}"#),
        b64(&format!(r#"{{"sub":"{sub}","role":"admin"}}"#))
    )
}

fn curl(port: u16, path: &str, headers: &[String]) {
    let mut c = Command::new("curl");
    c.args(["-s", "-o", "/dev/null"]);
    for h in headers {
        c.args(["-H", h]);
    }
    run_ok(c.arg(format!("http://127.0.0.1:{port}{path}")));
}

const RULES_V1: &str = r#"
version: 1
rules:
  - id: drop-health
    match: {http: {path: /healthz}}
    actions: {drop: true}
  - id: identity
    match: {protocol: http, kind: server}
    actions:
      extract:
        - {to: tenant.id, from: {header: X-Tenant-ID}, default: unknown}
        - {to: enduser.id, from: {jwt_claim: sub}}
  - id: checkout
    match: {http: {path: /api/v1/checkout}}
    actions:
      set: {business.process: checkout}
      critical: true
sampling:
  default_rate: 1.0
"#;

fn edited() -> String {
    RULES_V1.replace(
        "sampling:",
        "  - id: users\n    match: {http: {route: \"/users/*\"}}\n    actions: {set: {edited: \"yes\"}}\nsampling:",
    )
}

fn path_span<'a>(spans: &'a [Value], path: &str) -> Option<&'a Value> {
    spans.iter().rev().find(|s| attr_str(s, "url.path") == Some(path))
}

#[test]
fn tenant_user_and_process_from_rules_with_live_reload() {
    let dir = TempDir::new("rules");
    let file = dir.0.join("rules.yaml");
    std::fs::write(&file, RULES_V1).unwrap();
    let app = python_http("rules");
    let k = Kspan::start(&["--pid", &app.pid().to_string(), "--rules", file.to_str().unwrap()]);
    let token = jwt("user-42");
    curl(app.port, "/api/v1/checkout", &["X-Tenant-ID: acme".into(), format!("Authorization: Bearer {token}")]);
    curl(app.port, "/healthz", &[]);
    curl(app.port, "/users/7", &[]);
    let spans = k.wait_spans(2, WAIT, |s| kind(s) == "server");
    assert!(path_span(&spans, "/healthz").is_none(), "the health-check rule drops its spans: {spans:#?}");
    let co = path_span(&spans, "/api/v1/checkout").expect("checkout span");
    assert_eq!(attr_str(co, "tenant.id"), Some("acme"));
    assert_eq!(attr_str(co, "enduser.id"), Some("user-42"));
    assert_eq!(attr_str(co, "business.process"), Some("checkout"));
    assert_eq!(attr(co, "business.critical"), Some(&Value::Bool(true)));
    let users = path_span(&spans, "/users/7").unwrap();
    assert_eq!(attr_str(users, "tenant.id"), Some("unknown"), "default when the header is absent");
    assert!(attr(users, "edited").is_none());
    let all = serde_json::to_string(&k.spans()).unwrap();
    assert!(!all.contains(&token) && !all.contains("Bearer"), "the token is never exported");

    // A good edit is picked up live.
    std::fs::write(&file, edited()).unwrap();
    k.wait_log("rules reloaded", WAIT);
    curl(app.port, "/users/8", &[]);
    let s = k.wait_spans(1, WAIT, |s| attr_str(s, "url.path") == Some("/users/8"));
    assert_eq!(attr_str(&s[0], "edited"), Some("yes"));

    // A broken edit is rejected with file:line:column; the last good rules keep working.
    std::fs::write(&file, edited().replace("default_rate: 1.0", "default_rate: [oops")).unwrap();
    k.wait_log("rules reload failed", WAIT);
    assert!(k.log().contains("rules.yaml:"), "error names the file and line:\n{}", k.log());
    curl(app.port, "/users/9", &[]);
    let s = k.wait_spans(1, WAIT, |s| attr_str(s, "url.path") == Some("/users/9"));
    assert_eq!(attr_str(&s[0], "edited"), Some("yes"), "old rules still apply");
    std::thread::sleep(Duration::from_millis(1200));
    let m = k.metrics();
    assert!(m.contains("kspan_rules_reload_failures_total 1"), "{m}");
    assert!(m.contains("kspan_rules_last_reload_ok 0"), "{m}");
    assert!(m.contains("kspan_rule_fired_total{rule=\"checkout\"} 1"), "{m}");
    assert!(k.stop());
}

const RULES_STATS: &str = r#"
version: 1
rules:
  - id: identity
    match: {protocol: http, kind: server}
    actions:
      extract:
        - {to: tenant.tier, from: {header: X-Tenant-Tier}, default: standard}
  - id: checkout
    match: {http: {path: /api/v1/checkout}}
    actions: {critical: true}
sampling:
  default_rate: 0.1
  by_attribute:
    tenant.tier: {enterprise: 1.0}
"#;

fn load(port: u16, n: usize, path: &str, headers: &[&str]) {
    let mut c = Command::new("python3");
    c.arg(apps_dir().join("http_client.py")).args(["load", &port.to_string(), &n.to_string(), path]).args(headers);
    run_ok(&mut c);
}

#[test]
fn sampling_rates_hold_statistically() {
    let dir = TempDir::new("rules-stats");
    let file = dir.0.join("rules.yaml");
    std::fs::write(&file, RULES_STATS).unwrap();
    let app = python_http("stats");
    let k = Kspan::start(&["--pid", &app.pid().to_string(), "--rules", file.to_str().unwrap()]);
    const N: usize = 5000;
    load(app.port, N, "/users/{i}", &[]);
    load(app.port, 300, "/boom", &[]);
    load(app.port, 300, "/api/v1/checkout", &[]);
    load(app.port, 300, "/orders/{i}", &["X-Tenant-Tier=enterprise"]);
    // Critical, error and enterprise spans are all kept: wait for those.
    k.wait_spans(900, Duration::from_secs(60), |s| {
        matches!(attr_str(s, "http.route"), Some("/boom") | Some("/api/v1/checkout") | Some("/orders/{id}"))
    });
    std::thread::sleep(Duration::from_secs(2));
    let spans = k.spans();
    let count = |route: &str| spans.iter().filter(|s| attr_str(s, "http.route") == Some(route)).count();
    assert_eq!(count("/boom"), 300, "errors: 100%");
    assert_eq!(count("/api/v1/checkout"), 300, "critical: 100%");
    assert_eq!(count("/orders/{id}"), 300, "enterprise tier: 100%");
    // Default 10% of 5000: mean 500, sd 21.2; 99.9% two-sided bound is +-3.29 sd.
    let users = count("/users/{id}") as f64;
    let (mean, sd) = (N as f64 * 0.1, (N as f64 * 0.1 * 0.9).sqrt());
    assert!((users - mean).abs() <= 3.29 * sd, "10% default: kept {users} of {N} (bound {mean} +- {:.0})", 3.29 * sd);
    // Kept spans record the effective rate for backends (OTel threshold in tracestate).
    assert!(k.stop());
}
