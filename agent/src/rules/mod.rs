//! Rules stage: a YAML rule file compiled into matchers and actions that add
//! business context to spans and steer sampling. Reference: docs/rules.md.
//!
//! ```text
//! rules.yaml --serde_yaml--> schema (leaves validated, positions kept)
//!            --compile-----> RuleSet { rules, per-protocol index, sampling policy }
//! span -> RuleSet::apply -> (span with attributes/name changed, RuleOutcome) -> sample
//! ```
//!
//! Guarantees:
//! - A broken file never loads: the error names the file, line and column and
//!   what is wrong ([`RulesError`]); hot reload keeps the last good rules.
//! - Rules run in file order; a rule's actions are visible to later rules'
//!   conditions; `stop: true` or `drop: true` ends processing of the span.
//! - The span's protocol is determined once, before the first rule; rules are
//!   pre-indexed by the protocols they can match.
//! - Applying rules never panics and allocates nothing when no rule fires.
//! - Credentials are never exported ([`privacy`]).

pub mod action;
pub mod cli;
pub mod error;
pub mod matcher;
pub mod pattern;
pub mod privacy;
pub mod reload;
pub mod schema;
pub mod spanjson;

#[cfg(test)]
mod example_test;
#[cfg(test)]
mod golden_test;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

pub use error::RulesError;
pub use reload::{ReloadOptions, ReloadStats, RulesHandle, spawn_reload};

use crate::sample::{SamplingHints, SamplingPolicy};
use crate::span::model::Span;
use action::{Actions, SampleSetting};
use matcher::{Cond, Quick, View};
use schema::{ProtoMask, RuleFile};

/// Largest rule file accepted.
pub const MAX_FILE_BYTES: u64 = 1 << 20;
/// Most rules in one file.
pub const MAX_RULES: usize = 10_000;

/// What the rules did to one span.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RuleOutcome {
    /// Ids of the rules that fired, in order (up to four without allocating).
    pub fired: smallvec::SmallVec<[Arc<str>; 4]>,
    /// A rule dropped the span.
    pub drop: bool,
    /// A rule marked the span business-critical.
    pub critical: bool,
    /// Sampling rate set by a rule (directly or through a class).
    pub rate: Option<f64>,
    /// Priority of the rule that set `rate`.
    pub priority: u8,
    /// Class that set `rate`, if it came from a class.
    pub class: Option<Arc<str>>,
}

impl RuleOutcome {
    /// The part sampling needs.
    pub fn hints(&self) -> SamplingHints {
        SamplingHints { drop: self.drop, critical: self.critical, rate: self.rate, priority: self.priority }
    }
}

/// One compiled rule.
#[derive(Debug)]
pub struct Rule {
    pub id: Arc<str>,
    pub description: Option<String>,
    cond: Cond,
    actions: Actions,
    stop: bool,
    fired: Arc<AtomicU64>,
}

impl Rule {
    /// Protocols this rule can match.
    pub fn protocols(&self) -> ProtoMask {
        self.cond.protocols()
    }
}

/// A rule in a protocol bucket: its quick check and its index in `rules`.
#[derive(Debug)]
struct Candidate {
    quick: Quick,
    rule: u32,
}

/// Counters that survive reloads (shared with the rule sets that follow).
#[derive(Debug, Default)]
pub struct RuleCounters {
    /// Extracted values replaced with "REDACTED" because they held a credential.
    pub credential_redactions: AtomicU64,
}

/// A compiled rule file: rules in order plus the sampling policy.
#[derive(Debug)]
pub struct RuleSet {
    name: String,
    rules: Vec<Rule>,
    /// Per protocol (http, postgresql, redis, other): the rules that can
    /// match it, in order, with their quick checks stored inline so the scan
    /// over rules that cannot match reads one contiguous array.
    buckets: [Vec<Candidate>; 4],
    sampling: Arc<SamplingPolicy>,
    counters: Arc<RuleCounters>,
}

impl Default for RuleSet {
    fn default() -> Self {
        RuleSet {
            name: String::from("(no rules)"),
            rules: Vec::new(),
            buckets: Default::default(),
            sampling: Arc::new(SamplingPolicy::default()),
            counters: Arc::default(),
        }
    }
}

impl RuleSet {
    /// Reads and compiles a rule file.
    pub fn load(path: &Path) -> Result<RuleSet, RulesError> {
        let text = read_rule_file(path)?;
        RuleSet::from_str(&text, &path.display().to_string())
    }

    /// Compiles rule text; `name` is used in error messages (usually the path).
    pub fn from_str(text: &str, name: &str) -> Result<RuleSet, RulesError> {
        if text.len() as u64 > MAX_FILE_BYTES {
            return Err(RulesError::TooLarge { file: name.to_owned(), len: text.len() as u64, max: MAX_FILE_BYTES });
        }
        if text.lines().all(|l| l.trim().is_empty() || l.trim_start().starts_with('#')) {
            return Err(RulesError::Empty { file: name.to_owned() });
        }
        let file: RuleFile = serde_yaml::from_str(text).map_err(|e| RulesError::from_yaml(name, &e))?;
        compile(file, text, name)
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
    pub fn sampling(&self) -> &Arc<SamplingPolicy> {
        &self.sampling
    }
    pub fn counters(&self) -> &Arc<RuleCounters> {
        &self.counters
    }

    /// How many times each rule fired (counts carry over reloads by rule id).
    pub fn fired_counts(&self) -> Vec<(Arc<str>, u64)> {
        self.rules.iter().map(|r| (Arc::clone(&r.id), r.fired.load(Ordering::Relaxed))).collect()
    }

    /// Takes over the counters of `old` for rules whose id is unchanged.
    pub fn inherit_counters(&mut self, old: &RuleSet) {
        self.counters = Arc::clone(&old.counters);
        for r in &mut self.rules {
            if let Some(o) = old.rules.iter().find(|o| o.id == r.id) {
                r.fired = Arc::clone(&o.fired);
            }
        }
    }

    /// Runs the rules over `span` in order, changing it in place.
    pub fn apply(&self, span: &mut Span) -> RuleOutcome {
        let mut out = RuleOutcome::default();
        let (bucket, mut facts, mut hit) = {
            let view = View::new(span);
            let bucket = self.buckets.get(view.bucket()).map_or(&[][..], Vec::as_slice);
            (bucket, view.facts(), self.next_match(bucket, 0, &view))
        };
        while let Some(k) = hit {
            let Some(rule) = bucket.get(k).and_then(|c| self.rules.get(c.rule as usize)) else {
                break;
            };
            rule.fired.fetch_add(1, Ordering::Relaxed);
            out.fired.push(Arc::clone(&rule.id));
            rule.actions.apply(span, &mut out, &self.counters.credential_redactions);
            if rule.stop || out.drop {
                break;
            }
            if k + 1 >= bucket.len() {
                break;
            }
            // The actions may have changed what later rules see: a fresh
            // view when they touched what it caches, else the same facts
            // with the keys they may have added.
            let view = match rule.actions.added_keys() {
                Some(keys) => View::with_facts(span, facts.with_keys(keys)),
                None => View::new(span),
            };
            facts = view.facts();
            hit = self.next_match(bucket, k + 1, &view);
        }
        out
    }

    /// Position in `bucket`, from `from` on, of the first rule that matches.
    fn next_match(&self, bucket: &[Candidate], from: usize, view: &View<'_>) -> Option<usize> {
        let rest = bucket.get(from..)?;
        let k = rest
            .iter()
            .position(|c| c.quick.admits(view) && self.rules.get(c.rule as usize).is_some_and(|r| r.cond.eval(view)))?;
        Some(from + k)
    }
}

/// Reads a rule file, bounded in size.
pub fn read_rule_file(path: &Path) -> Result<String, RulesError> {
    let file = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| RulesError::Io { file: file.clone(), source })?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(RulesError::TooLarge { file, len: meta.len(), max: MAX_FILE_BYTES });
    }
    std::fs::read_to_string(path).map_err(|source| RulesError::Io { file, source })
}

fn invalid(name: &str, pos: Option<(usize, usize)>, message: String) -> RulesError {
    let (line, column) = pos.unwrap_or((1, 1));
    RulesError::Invalid { file: name.to_owned(), line, column, message }
}

fn compile(file: RuleFile, text: &str, name: &str) -> Result<RuleSet, RulesError> {
    if file.rules.len() > MAX_RULES {
        let pos = error::locate(text, "rules", "", 0);
        return Err(invalid(name, pos, format!("{} rules is over the limit of {MAX_RULES}", file.rules.len())));
    }
    let sampling = Arc::new(file.sampling);
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut class_uses: HashMap<String, usize> = HashMap::new();
    let mut rules = Vec::with_capacity(file.rules.len());
    for spec in file.rules {
        let id = spec.id.0;
        let count = seen.entry(id.clone()).or_insert(0);
        *count += 1;
        if *count > 1 {
            let pos = error::locate(text, "id", &id, *count - 1);
            return Err(invalid(name, pos, format!("duplicate rule id `{id}`")));
        }
        let sample = match spec.actions.sample.as_ref() {
            None => None,
            Some(s) => {
                let class = match &s.class {
                    Some(c) => {
                        let n = class_uses.entry(c.clone()).or_insert(0);
                        *n += 1;
                        let pos = error::locate(text, "class", c, *n - 1);
                        if s.rate.is_some() {
                            return Err(invalid(name, pos, format!("rule `{id}`: set `rate` or `class`, not both")));
                        }
                        let Some((_, rate)) = sampling.classes.iter().find(|(k, _)| *k == c) else {
                            return Err(invalid(
                                name,
                                pos,
                                format!("rule `{id}`: unknown sampling class `{c}` (define it under sampling.classes)"),
                            ));
                        };
                        Some((rate.get(), Some(Arc::<str>::from(c.as_str()))))
                    }
                    None => s.rate.map(|r| (r.get(), None)),
                };
                class.map(|(rate, class)| SampleSetting { rate, priority: s.priority, class })
            }
        };
        if !spec.enabled {
            continue;
        }
        let cond = spec.when.map(Cond::compile).unwrap_or(Cond::True);
        rules.push(Rule {
            id: Arc::from(id),
            description: spec.description,
            cond,
            actions: Actions::compile(spec.actions, sample),
            stop: spec.stop,
            fired: Arc::default(),
        });
    }
    let mut buckets: [Vec<Candidate>; 4] = Default::default();
    for (i, r) in rules.iter().enumerate() {
        let mask = r.protocols();
        let quick = Quick::of(&r.cond);
        for (b, proto) in [ProtoMask::HTTP, ProtoMask::POSTGRES, ProtoMask::REDIS, ProtoMask::OTHER].iter().enumerate()
        {
            if mask.contains(*proto)
                && let Some(bucket) = buckets.get_mut(b)
            {
                bucket.push(Candidate { quick: quick.clone(), rule: i as u32 });
            }
        }
    }
    Ok(RuleSet { name: name.to_owned(), rules, buckets, sampling, counters: Arc::default() })
}
