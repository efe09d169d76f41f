//! Engine tests (ordering, stop, indexing) and error-position tests.

use super::*;
use crate::span::model::{AttrValue, Attributes, ProcessResource, SpanKind};

fn http(method: &str, path: &str) -> Span {
    let mut attributes = Attributes::new();
    attributes.set("http.request.method", method.to_owned());
    attributes.set("url.path", path.to_owned());
    attributes.set("http.response.status_code", AttrValue::Int(200));
    Span {
        trace_id: [7; 16],
        span_id: [1; 8],
        end_unix_ns: 5_000_000,
        ..Span::for_test(method, attributes, Attributes::new(), Arc::new(ProcessResource::default()))
    }
}

fn pg() -> Span {
    let mut s = http("", "");
    s.kind = SpanKind::Client;
    s.attributes = Attributes::new();
    s.attributes.set("db.system.name", "postgresql");
    s.attributes.set("db.operation.name", "SELECT");
    s
}

fn ids(o: &RuleOutcome) -> Vec<&str> {
    o.fired.iter().map(|s| s.as_ref()).collect()
}

fn set(text: &str) -> RuleSet {
    RuleSet::from_str(text, "t.yaml").unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn rules_run_in_order_and_see_earlier_actions() {
    let rs = set("
rules:
  - id: tier
    match: {http: {path: '/api/**'}}
    actions: {set: {tenant.tier: enterprise}}
  - id: uses-tier
    match: {attributes: {tenant.tier: enterprise}}
    actions: {rename: 'vip ${span.name}'}
  - id: never
    match: {attributes: {tenant.tier: standard}}
");
    let mut s = http("GET", "/api/v1/x");
    let o = rs.apply(&mut s);
    assert_eq!(ids(&o), ["tier", "uses-tier"]);
    assert_eq!(s.name, "vip GET");
    let counts: Vec<u64> = rs.fired_counts().iter().map(|c| c.1).collect();
    assert_eq!(counts, [1, 1, 0]);
}

#[test]
fn later_rules_see_cached_fields_rewritten_removed_or_shifted_by_earlier_rules() {
    let rs = set("
rules:
  - id: route
    match: {http: {path: /orders/7}}
    actions: {set: {http.route: '/orders/{id}', extra: x}}
  - id: by-route
    match: {http: {route: '/orders/\\{id\\}', method: GET}}
    actions: {set: {seen.route: true}, critical: true, rename: 'r ${http.route}'}
  - id: by-new-keys
    match: {name: {equals: 'r /orders/{id}'}, attributes: {seen.route: 'true', business.critical: 'true', extra: x}}
    actions: {redact: {remove: [extra]}, set: {status.seen: true}}
  - id: status-after-shift
    match: {http: {status: 2xx, path: /orders/7}, attributes: {status.seen: 'true', extra: {exists: false}}}
    actions: {set: {http.response.status_code: 503}}
  - id: sees-error
    match: {error: true, http: {status: 5xx}}
");
    let mut s = http("GET", "/x");
    s.attributes.0.insert(0, ("extra".into(), AttrValue::from("x")));
    s.attributes.set("url.path", "/orders/7");
    let o = rs.apply(&mut s);
    assert_eq!(ids(&o), ["route", "by-route", "by-new-keys", "status-after-shift", "sees-error"]);
}

#[test]
fn stop_and_drop_end_processing() {
    let rs = set("
rules:
  - id: metrics
    match: {http: {path: /metrics}}
    actions: {drop: true}
  - id: first
    match: {http: {method: GET}}
    stop: true
  - id: second
    match: {http: {method: GET}}
");
    let o = rs.apply(&mut http("GET", "/metrics"));
    assert_eq!(ids(&o), ["metrics"]);
    assert!(o.drop && o.hints().drop);
    let o = rs.apply(&mut http("GET", "/x"));
    assert_eq!(ids(&o), ["first"]);
    assert!(!o.drop);
}

#[test]
fn disabled_rules_are_validated_but_skipped() {
    let rs = set("rules:\n  - id: off\n    enabled: false\n  - id: on\n");
    assert_eq!(rs.rules().len(), 1);
    assert_eq!(ids(&rs.apply(&mut http("GET", "/"))), ["on"]);
    assert!(
        RuleSet::from_str("rules:\n  - id: off\n    enabled: false\n    match: {protocol: ftp}\n", "t.yaml").is_err()
    );
}

#[test]
fn rules_are_indexed_by_protocol() {
    let rs = set("
rules:
  - id: pg-only
    match: {postgresql: {operation: select}}
  - id: any
  - id: http-only
    match: {protocol: http}
");
    assert_eq!(ids(&rs.apply(&mut pg())), ["pg-only", "any"]);
    assert_eq!(ids(&rs.apply(&mut http("GET", "/"))), ["any", "http-only"]);
    assert_eq!(rs.buckets.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1, 1]);
}

#[test]
fn no_match_allocates_nothing() {
    let rs = set("rules:\n  - id: a\n    match: {http: {path: /nope}}\n    actions: {set: {x: 1}}\n");
    let mut s = http("GET", "/x");
    let before = s.attributes.clone();
    let o = rs.apply(&mut s);
    assert!(o.fired.is_empty() && !o.fired.spilled(), "no rule id kept, nothing allocated");
    assert_eq!(s.attributes, before);
}

#[test]
fn class_rates_resolve_and_priority_travels_in_hints() {
    let rs = set("
rules:
  - id: batch
    match: {attributes: {job: {exists: true}}}
    actions: {sample: {class: background, priority: 3}}
sampling:
  classes: {background: 0.05}
");
    let mut s = http("POST", "/jobs");
    s.attributes.set("job", "nightly");
    let o = rs.apply(&mut s);
    assert_eq!(o.hints(), SamplingHints { drop: false, critical: false, rate: Some(0.05), priority: 3 });
    assert_eq!(o.class.as_deref(), Some("background"));
}

/// (line, column) of a load error.
fn pos(text: &str) -> (usize, usize, String) {
    let err = RuleSet::from_str(text, "deploy/rules.yaml").unwrap_err();
    let msg = err.to_string();
    assert!(msg.starts_with("deploy/rules.yaml:"), "{msg}");
    let (l, c) = err.position().unwrap_or_else(|| panic!("no position: {msg}"));
    assert!(msg.starts_with(&format!("deploy/rules.yaml:{l}:{c}: ")), "{msg}");
    (l, c, msg)
}

const DEEP: &str = "version: 1
rules:
  - id: ok-1
    match:
      http:
        method: GET
  - id: ok-2
    match:
      any:
        - http: {path: /a}
        - all:
            - kind: server
            - http:
                path:
                  regex: '^/users/(\\d+'
";

#[test]
fn bad_regex_deep_in_the_file_points_at_the_pattern() {
    let (l, c, msg) = pos(DEEP);
    assert_eq!((l, c), (15, 26), "{msg}");
    assert!(msg.contains("bad regex"), "{msg}");
    assert!(msg.contains("rules[1].match.any[1].all[1].http.path"), "{msg}");
}

#[test]
fn bad_rate_points_at_the_value() {
    let text = "rules:\n  - id: a\n    actions:\n      sample:\n        rate: 1.5\nsampling:\n  default_rate: 0.1\n";
    let (l, c, msg) = pos(text);
    assert_eq!((l, c), (5, 15), "{msg}");
    assert!(msg.contains("outside 0..=1"), "{msg}");
    let (l, c, msg) = pos("sampling:\n  by_attribute:\n    tenant.tier:\n      gold: -0.5\n");
    assert_eq!((l, c), (4, 13), "{msg}");
}

#[test]
fn yaml_syntax_errors_have_positions() {
    let (l, _, msg) = pos("rules:\n  - id: a\n    match: {http: {path: /x}\n  - id: b\n");
    assert!((3..=4).contains(&l), "{msg}");
    let (l, c, msg) = pos("rules:\n  - id: a\n   bad-indent: 1\n");
    assert_eq!(l, 3, "{msg} {c}");
}

#[test]
fn schema_errors_name_what_is_wrong() {
    let (l, c, msg) = pos("rules:\n  - id: a\n    match:\n      htp: {}\n");
    assert_eq!((l, c), (4, 7), "{msg}");
    assert!(msg.contains("unknown field `htp`"), "{msg}");
    let (l, _, msg) = pos("rules:\n  - id: a\n    match: {protocol: [http, mysql]}\n");
    assert_eq!(l, 3);
    assert!(msg.contains("unknown protocol `mysql`"), "{msg}");
    let (l, _, msg) = pos("rules:\n  - id: a\n    match: {duration: '1s'}\n");
    assert_eq!(l, 3);
    assert!(msg.contains("bad duration condition"), "{msg}");
    let (_, _, msg) = pos("rules:\n  - match: {}\n");
    assert!(msg.contains("missing field `id`"), "{msg}");
    let (l, _, msg) =
        pos("rules:\n  - id: a\n    actions:\n      extract:\n        - {to: t, from: {header: Cookie}}\n");
    assert_eq!(l, 5);
    assert!(msg.contains("cookie") && msg.contains("jwt_claim"), "{msg}");
}

#[test]
fn cross_reference_errors_are_located_by_search() {
    let (l, c, msg) = pos("rules:\n  - id: a\n  - id: b\n  - id: a\n");
    assert_eq!((l, c), (4, 9), "{msg}");
    assert!(msg.contains("duplicate rule id `a`"), "{msg}");
    let text =
        "rules:\n  - id: a\n    actions:\n      sample: {class: batch}\nsampling:\n  classes: {background: 0.1}\n";
    let (l, c, msg) = pos(text);
    assert_eq!((l, c), (4, 23), "{msg}");
    assert!(msg.contains("unknown sampling class `batch`"), "{msg}");
    let (l, _, msg) =
        pos("rules:\n  - id: a\n    actions:\n      sample: {rate: 0.5, class: bg}\nsampling: {classes: {bg: 0.1}}\n");
    assert_eq!(l, 4);
    assert!(msg.contains("not both"), "{msg}");
}

#[test]
fn empty_and_oversized_files_are_refused() {
    assert!(matches!(RuleSet::from_str("# nothing\n\n", "r.yaml"), Err(RulesError::Empty { .. })));
    let big = format!("# {}\nrules: []\n", "x".repeat(MAX_FILE_BYTES as usize));
    assert!(matches!(RuleSet::from_str(&big, "r.yaml"), Err(RulesError::TooLarge { .. })));
    assert!(RuleSet::from_str("rules: []\n", "r.yaml").is_ok());
}

#[test]
fn load_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, "rules:\n  - id: a\n    stop: maybe\n").unwrap();
    let err = RuleSet::load(&path).unwrap_err().to_string();
    assert!(err.starts_with(&format!("{}:3:11: ", path.display())), "{err}");
}
