//! The sampling policy (the `sampling:` section of a rule file, or a file of
//! its own) and the YAML leaf types shared with the rule schema.
//!
//! Guarantees: every value is validated while its YAML node is read, so a bad
//! value is reported with that node's line and column; defaults live in one
//! place ([`SamplingPolicy::default`] and the `default_*` functions).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserialize, Deserializer, MapAccess, Visitor};

/// A probability in `0.0..=1.0`. YAML: a number (`0.1`) or a percentage (`"10%"`).
#[derive(Clone, Copy, Debug, PartialEq, PartialOrd)]
pub struct Rate(f64);

impl Rate {
    pub const ONE: Rate = Rate(1.0);

    pub fn new(v: f64) -> Option<Rate> {
        (0.0..=1.0).contains(&v).then_some(Rate(v))
    }
    pub fn get(self) -> f64 {
        self.0
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Rate;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rate between 0 and 1 (e.g. 0.1) or a percentage (e.g. \"10%\")")
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Rate, E> {
                Rate::new(v).ok_or_else(|| E::custom(format!("rate {v} is outside 0..=1")))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Rate, E> {
                Rate::new(v as f64).ok_or_else(|| E::custom(format!("rate {v} is outside 0..=1")))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Rate, E> {
                Rate::new(v as f64).ok_or_else(|| E::custom(format!("rate {v} is outside 0..=1")))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Rate, E> {
                let pct = v
                    .trim()
                    .strip_suffix('%')
                    .ok_or_else(|| E::custom(format!("rate {v:?} is not a number or a percentage")))?;
                let n: f64 = pct.trim().parse().map_err(|_| E::custom(format!("rate {v:?} is not a percentage")))?;
                Rate::new(n / 100.0).ok_or_else(|| E::custom(format!("rate {v} is outside 0%..=100%")))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration written with a unit: `250ms`, `1s`, `1.5s`, `2m`, `500us`, `10ns`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct HumanDuration(pub u64);

impl HumanDuration {
    pub fn as_ns(self) -> u64 {
        self.0
    }

    /// Parses `<number><unit>`; `None` when malformed.
    pub fn parse(s: &str) -> Option<HumanDuration> {
        let s = s.trim();
        let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num.parse().ok()?;
        let scale = match unit.trim() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        let ns = n * scale;
        (ns.is_finite() && ns >= 0.0 && ns < u64::MAX as f64).then_some(HumanDuration(ns.round() as u64))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if ns >= 1_000_000_000 && ns.is_multiple_of(1_000_000) {
            write!(f, "{}s", ns as f64 / 1e9)
        } else if ns >= 1_000_000 && ns.is_multiple_of(1_000) {
            write!(f, "{}ms", ns as f64 / 1e6)
        } else if ns >= 1_000 {
            write!(f, "{}us", ns as f64 / 1e3)
        } else {
            write!(f, "{ns}ns")
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = HumanDuration;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a duration with a unit, e.g. 250ms, 1s, 2m")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<HumanDuration, E> {
                HumanDuration::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        "bad duration {v:?}: expected a number and a unit (ns, us, ms, s, m, h), e.g. 250ms"
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

/// A YAML mapping that keeps the file's order (later duplicates replace earlier keys).
#[derive(Clone, Debug, PartialEq)]
pub struct OrderedMap<K, V>(pub Vec<(K, V)>);

impl<K, V> Default for OrderedMap<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: PartialEq, V> OrderedMap<K, V> {
    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

impl<'de, K: Deserialize<'de> + PartialEq, V: Deserialize<'de>> Deserialize<'de> for OrderedMap<K, V> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Vis<K, V>(PhantomData<(K, V)>);
        impl<'de, K: Deserialize<'de> + PartialEq, V: Deserialize<'de>> Visitor<'de> for Vis<K, V> {
            type Value = OrderedMap<K, V>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a mapping")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out: Vec<(K, V)> = Vec::new();
                while let Some((k, v)) = m.next_entry::<K, V>()? {
                    match out.iter_mut().find(|(old, _)| *old == k) {
                        Some(slot) => slot.1 = v,
                        None => out.push((k, v)),
                    }
                }
                Ok(OrderedMap(out))
            }
        }
        d.deserialize_map(Vis(PhantomData))
    }
}

/// Latency above which a span or trace counts as slow.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlowPolicy {
    /// Spans lasting at least this long are slow (`1s`, `250ms`).
    pub threshold: HumanDuration,
    /// Share of slow traces kept (default 1.0).
    #[serde(default = "default_one")]
    pub rate: Rate,
}

/// Global token bucket on kept spans.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitPolicy {
    /// Sustained kept spans per second.
    pub spans_per_second: PositiveF64,
    /// Spans that may be kept at once above the sustained rate (bucket size).
    pub burst: u32,
    /// Spans whose rule priority is at least this bypass the limit. Errors,
    /// critical and slow spans always bypass it.
    #[serde(default)]
    pub exempt_priority: Option<u8>,
}

/// Per-tenant token buckets, keyed by an attribute value.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantBudgetPolicy {
    /// Attribute naming the tenant (e.g. `tenant.id`, usually set by a rule).
    pub attribute: String,
    pub spans_per_second: PositiveF64,
    pub burst: u32,
    /// Tenants tracked at once; the least recently seen is evicted (counted).
    #[serde(default = "default_max_tenants")]
    pub max_tenants: usize,
}

/// Bounds of the trace buffer that holds spans until their trace is decided.
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HoldPolicy {
    /// Longest a trace is held waiting for its local root span.
    pub max_time: HumanDuration,
    /// Spans held per trace; reaching it decides the trace early (counted).
    pub max_spans_per_trace: usize,
    /// Spans held in total; reaching it decides the oldest trace (counted).
    pub max_spans: usize,
    /// Decided trace ids remembered so late spans follow the decision.
    pub remember_decisions: usize,
}

impl Default for HoldPolicy {
    fn default() -> Self {
        Self {
            max_time: HumanDuration(2_000_000_000),
            max_spans_per_trace: 512,
            max_spans: 65_536,
            remember_decisions: 65_536,
        }
    }
}

/// A number > 0.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PositiveF64(pub f64);

impl<'de> Deserialize<'de> for PositiveF64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = f64::deserialize(d)?;
        if v.is_finite() && v > 0.0 {
            Ok(PositiveF64(v))
        } else {
            Err(de::Error::custom(format!("{v} must be a number > 0")))
        }
    }
}

/// How to choose which spans (traces) to keep. See docs/rules.md, "Sampling".
#[derive(Clone, Debug, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SamplingPolicy {
    /// Rate for traffic no more specific setting covers.
    pub default_rate: Rate,
    /// Rate for traces with an error span (status error or HTTP status >= 500).
    pub errors_rate: Rate,
    /// Rate for traces a rule marked critical.
    pub critical_rate: Rate,
    /// Slow traces: threshold and rate.
    pub slow: Option<SlowPolicy>,
    /// Attribute -> value -> rate (`tenant.tier: {enterprise: 1.0}`); the
    /// first listed attribute whose value has an entry decides.
    pub by_attribute: OrderedMap<String, OrderedMap<String, Rate>>,
    /// Named rates that rules refer to with `sample: {class: NAME}`.
    pub classes: OrderedMap<String, Rate>,
    pub rate_limit: Option<RateLimitPolicy>,
    pub tenant_budget: Option<TenantBudgetPolicy>,
    pub hold: HoldPolicy,
}

fn default_one() -> Rate {
    Rate::ONE
}
fn default_max_tenants() -> usize {
    10_000
}

impl Default for SamplingPolicy {
    fn default() -> Self {
        Self {
            default_rate: Rate::ONE,
            errors_rate: Rate::ONE,
            critical_rate: Rate::ONE,
            slow: None,
            by_attribute: OrderedMap::default(),
            classes: OrderedMap::default(),
            rate_limit: None,
            tenant_budget: None,
            hold: HoldPolicy::default(),
        }
    }
}

impl SamplingPolicy {
    /// Parses a standalone policy file (the content of a `sampling:` section).
    pub fn from_yaml_str(text: &str) -> Result<SamplingPolicy, serde_yaml::Error> {
        serde_yaml::from_str(text)
    }

    /// Rate from `by_attribute` for a span, looking values up with `get`.
    pub fn attribute_rate<'a>(&self, mut get: impl FnMut(&str) -> Option<std::borrow::Cow<'a, str>>) -> Option<f64> {
        for (attr, values) in self.by_attribute.iter() {
            if let Some(v) = get(attr)
                && let Some((_, r)) = values.iter().find(|(k, _)| k.as_str() == v.as_ref())
            {
                return Some(r.get());
            }
        }
        None
    }

    /// One-paragraph human summary (used by `kspan rules check`).
    pub fn summary(&self) -> String {
        use std::fmt::Write;
        let mut s = String::new();
        let pct = |r: Rate| format!("{}%", r.get() * 100.0);
        let _ = write!(
            s,
            "default {}, errors {}, critical {}",
            pct(self.default_rate),
            pct(self.errors_rate),
            pct(self.critical_rate)
        );
        if let Some(slow) = &self.slow {
            let _ = write!(s, ", slow (>= {}) {}", slow.threshold, pct(slow.rate));
        }
        for (attr, values) in self.by_attribute.iter() {
            let list: Vec<String> = values.iter().map(|(k, r)| format!("{k}={}", pct(*r))).collect();
            let _ = write!(s, ", by {attr}: {}", list.join(" "));
        }
        for (class, r) in self.classes.iter() {
            let _ = write!(s, ", class {class} {}", pct(*r));
        }
        if let Some(l) = &self.rate_limit {
            let _ = write!(s, ", limit {}/s burst {}", l.spans_per_second.0, l.burst);
        }
        if let Some(t) = &self.tenant_budget {
            let _ = write!(s, ", per-{} budget {}/s burst {}", t.attribute, t.spans_per_second.0, t.burst);
        }
        let _ = write!(
            s,
            ", hold {} (max {} spans/trace, {} total)",
            self.hold.max_time, self.hold.max_spans_per_trace, self.hold.max_spans
        );
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_accepts_numbers_and_percentages() {
        let r: Rate = serde_yaml::from_str("0.25").unwrap();
        assert_eq!(r.get(), 0.25);
        let r: Rate = serde_yaml::from_str("\"5%\"").unwrap();
        assert!((r.get() - 0.05).abs() < 1e-12);
        let r: Rate = serde_yaml::from_str("1").unwrap();
        assert_eq!(r.get(), 1.0);
    }

    #[test]
    fn rate_outside_unit_interval_is_an_error_with_position() {
        let err = serde_yaml::from_str::<SamplingPolicy>("default_rate: 0.1\nerrors_rate: 1.5\n").unwrap_err();
        assert!(err.to_string().contains("outside 0..=1"), "{err}");
        let loc = err.location().unwrap();
        assert_eq!((loc.line(), loc.column()), (2, 14));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(HumanDuration::parse("250ms"), Some(HumanDuration(250_000_000)));
        assert_eq!(HumanDuration::parse("1.5s"), Some(HumanDuration(1_500_000_000)));
        assert_eq!(HumanDuration::parse("2m"), Some(HumanDuration(120_000_000_000)));
        assert_eq!(HumanDuration::parse("10"), None);
        assert_eq!(HumanDuration::parse("ms"), None);
        assert_eq!(HumanDuration::parse("3 fortnights"), None);
        assert_eq!(HumanDuration(1_000_000_000).to_string(), "1s");
        assert_eq!(HumanDuration(250_000_000).to_string(), "250ms");
    }

    #[test]
    fn policy_defaults_keep_everything_and_unknown_keys_fail() {
        let p = SamplingPolicy::from_yaml_str("{}").unwrap();
        assert_eq!(p, SamplingPolicy::default());
        assert_eq!(p.default_rate.get(), 1.0);
        let err = SamplingPolicy::from_yaml_str("default_rate: 0.1\nerror_rate: 1.0\n").unwrap_err();
        assert!(err.to_string().contains("unknown field `error_rate`"), "{err}");
    }

    #[test]
    fn attribute_rate_uses_first_listed_attribute_with_a_known_value() {
        let p = SamplingPolicy::from_yaml_str(
            "by_attribute:\n  tenant.tier: {enterprise: 1.0, standard: 0.1}\n  region: {eu: 0.5}\n",
        )
        .unwrap();
        let get = |tier: Option<&'static str>, region: Option<&'static str>| {
            p.attribute_rate(|k| match k {
                "tenant.tier" => tier.map(Into::into),
                "region" => region.map(Into::into),
                _ => None,
            })
        };
        assert_eq!(get(Some("enterprise"), Some("eu")), Some(1.0));
        assert_eq!(get(Some("unknown"), Some("eu")), Some(0.5));
        assert_eq!(get(None, None), None);
    }
}
