//! Golden tests: `golden/<name>.rules.yaml` + `golden/<name>.spans.json`
//! (an array of spans in the [`spanjson`] form) -> `golden/<name>.expected.json`
//! (each span as exported after rules, with fired rules and the per-span
//! sampling decision). Run with `KSPAN_BLESS=1` to rewrite the expected files
//! after an intended change, then review the diff by eye.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::Value;

use super::{RuleSet, spanjson};
use crate::sample::{SampleStats, Sampler};

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/rules/golden")
}

fn run_case(rules_path: &Path) -> Value {
    let rules = RuleSet::load(rules_path).unwrap_or_else(|e| panic!("{e}"));
    let spans_path = rules_path
        .with_file_name(rules_path.file_name().unwrap().to_str().unwrap().replace(".rules.yaml", ".spans.json"));
    let text = std::fs::read_to_string(&spans_path).unwrap_or_else(|e| panic!("{}: {e}", spans_path.display()));
    let inputs: Vec<Value> = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", spans_path.display()));
    let mut sampler = Sampler::new(Arc::clone(rules.sampling()), Arc::new(SampleStats::default()), 0);
    let outputs: Vec<Value> = inputs
        .iter()
        .map(|v| {
            let mut span = spanjson::span_from_value(v).unwrap_or_else(|e| panic!("{}: {e}", spans_path.display()));
            let outcome = rules.apply(&mut span);
            let decision = sampler.sample_span(&mut span, &outcome.hints(), 0);
            spanjson::span_to_value(&span, &outcome, Some(&decision))
        })
        .collect();
    Value::Array(outputs)
}

#[test]
fn golden_rule_files_produce_expected_spans() {
    let bless = std::env::var_os("KSPAN_BLESS").is_some();
    let mut cases: Vec<PathBuf> = std::fs::read_dir(golden_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_str().is_some_and(|s| s.ends_with(".rules.yaml")))
        .collect();
    cases.sort();
    assert!(!cases.is_empty(), "no golden cases found");
    let mut failures = Vec::new();
    for case in &cases {
        let got = run_case(case);
        let expected_path =
            case.with_file_name(case.file_name().unwrap().to_str().unwrap().replace(".rules.yaml", ".expected.json"));
        let pretty = serde_json::to_string_pretty(&got).unwrap() + "\n";
        if bless {
            std::fs::write(&expected_path, &pretty).unwrap();
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if expected != pretty {
            failures.push(format!("{}:\n--- expected\n{expected}\n--- got\n{pretty}", expected_path.display()));
        }
    }
    assert!(failures.is_empty(), "golden mismatch (KSPAN_BLESS=1 to rewrite):\n{}", failures.join("\n"));
}
