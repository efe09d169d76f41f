//! Text for `kspan rules check` and `kspan rules test` (the CLI itself only
//! prints what these return).

use std::fmt::Write;
use std::path::Path;
use std::sync::Arc;

use super::schema::ProtoMask;
use super::{RuleSet, RulesError, spanjson};
use crate::sample::{SampleStats, Sampler};
use crate::span::model::AttrValue;

fn protocols_label(m: ProtoMask) -> String {
    if m == ProtoMask::ALL {
        return "any".into();
    }
    let names: Vec<&str> =
        [(ProtoMask::HTTP, "http"), (ProtoMask::POSTGRES, "postgresql"), (ProtoMask::REDIS, "redis")]
            .iter()
            .filter(|(p, _)| m.contains(*p))
            .map(|(_, n)| *n)
            .collect();
    if names.is_empty() { "none".into() } else { names.join("|") }
}

/// Validates a rule file and summarises it.
pub fn check(path: &Path) -> Result<String, RulesError> {
    let rules = RuleSet::load(path)?;
    let mut s = String::new();
    let n = rules.rules().len();
    let _ = writeln!(s, "{}: OK, {n} rule{}", rules.name(), if n == 1 { "" } else { "s" });
    for (i, r) in rules.rules().iter().enumerate() {
        let _ = write!(s, "  {:>3}. {} [{}]", i + 1, r.id, protocols_label(r.protocols()));
        if let Some(d) = &r.description {
            let _ = write!(s, " - {d}");
        }
        s.push('\n');
    }
    let _ = writeln!(s, "sampling: {}", rules.sampling().summary());
    Ok(s)
}

fn show(v: &AttrValue) -> String {
    match v {
        AttrValue::Str(s) => format!("{s:?}"),
        other => other.to_text().into_owned(),
    }
}

/// Runs a rule file over one span (JSON, see [`spanjson`]) and explains
/// what happened: fired rules, resulting name and attributes, sampling.
pub fn test(path: &Path, span_json: &str) -> Result<String, RulesError> {
    let rules = RuleSet::load(path)?;
    let mut span = spanjson::span_from_json(span_json)?;
    let outcome = rules.apply(&mut span);
    let mut sampler = Sampler::new(Arc::clone(rules.sampling()), Arc::new(SampleStats::default()), 0);
    let decision = sampler.sample_span(&mut span, &outcome.hints(), 0);
    let mut s = String::new();
    if outcome.fired.is_empty() {
        s.push_str("rules fired: none\n");
    } else {
        let ids: Vec<&str> = outcome.fired.iter().map(|f| f.as_ref()).collect();
        let _ = writeln!(s, "rules fired: {}", ids.join(", "));
    }
    let _ = writeln!(s, "name: {}", span.name);
    s.push_str("attributes:\n");
    for (k, v) in span.attributes.iter() {
        let _ = writeln!(s, "  {k} = {}", show(v));
    }
    let verdict = if decision.keep { "keep" } else { "drop" };
    let _ = write!(s, "sampling: {verdict} ({}), rate {}", decision.reason.as_str(), decision.rate);
    if let Some(class) = &outcome.class {
        let _ = write!(s, " from class {class}");
    }
    if decision.keep {
        let _ = write!(s, ", tracestate {}", span.trace_state);
    }
    s.push('\n');
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, text).unwrap();
        (dir, path)
    }

    const RULES: &str = "
rules:
  - id: checkout
    description: checkout business process
    match: {http: {route: /api/*/checkout}}
    actions: {critical: true, set: {business.process: checkout}}
  - id: health
    match: {http: {path: /healthz}}
    actions: {sample: {class: background}}
  - id: pg
    match: {postgresql: {}}
sampling:
  default_rate: 0.1
  classes: {background: 0.05}
";

    #[test]
    fn check_summarises_rules_and_policy() {
        let (_d, path) = write(RULES);
        let out = check(&path).unwrap();
        assert!(out.contains("OK, 3 rules"), "{out}");
        assert!(out.contains("1. checkout [http] - checkout business process"), "{out}");
        assert!(out.contains("3. pg [postgresql]"), "{out}");
        assert!(out.contains("default 10%") && out.contains("class background 5%"), "{out}");
    }

    #[test]
    fn check_reports_broken_file_with_position() {
        let (_d, path) = write("rules:\n  - id: x\n    match: {protocol: mysql}\n");
        let err = check(&path).unwrap_err().to_string();
        assert!(err.contains("rules.yaml:3:") && err.contains("unknown protocol"), "{err}");
    }

    #[test]
    fn test_explains_fired_rules_attributes_and_decision() {
        let (_d, path) = write(RULES);
        let out =
            test(&path, r#"{"name":"POST","attributes":{"http.request.method":"POST","url.path":"/api/v1/checkout"}}"#)
                .unwrap();
        assert!(out.contains("rules fired: checkout\n"), "{out}");
        assert!(out.contains("business.process = \"checkout\""), "{out}");
        assert!(out.contains("business.critical = true"), "{out}");
        assert!(out.contains("sampling: keep (kept_critical), rate 1, tracestate ot=th:0"), "{out}");

        let out = test(&path, r#"{"attributes":{"http.request.method":"GET","url.path":"/healthz"},"trace_id":"00000000000000000000000000000001"}"#).unwrap();
        assert!(out.contains("rules fired: health"), "{out}");
        assert!(out.contains("sampling: drop (dropped_rate), rate 0.05 from class background"), "{out}");
    }

    #[test]
    fn test_rejects_bad_span_json() {
        let (_d, path) = write(RULES);
        let err = test(&path, "{\"kind\": 3}").unwrap_err();
        assert!(err.to_string().contains("field `kind`"), "{err}");
        assert!(test(&path, "not json").is_err());
    }
}
