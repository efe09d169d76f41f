//! The rule file as written (YAML), with every leaf validated as it is read.
//! docs/rules.md is the reference for this schema; keep the two in step.
//!
//! Guarantees: unknown keys are errors (`deny_unknown_fields` everywhere);
//! values that can be checked on their own (regexes, globs, rates, durations,
//! status codes, protocols, attribute keys, templates) are checked inside
//! their visitor, so errors carry the offending node's line and column.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};

use super::pattern::{DurationCmp, NoCaseMatch, RegexSeed, StatusMatch, StrMatch};
use super::privacy;
use crate::sample::policy::{OrderedMap, Rate, SamplingPolicy};
use crate::span::model::{AttrValue, SpanKind};

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleFile {
    /// Schema version; only 1 exists.
    #[serde(default)]
    pub version: Option<Version>,
    #[serde(default)]
    pub rules: Vec<RuleSpec>,
    #[serde(default)]
    pub sampling: SamplingPolicy,
}

/// `version: 1`.
#[derive(Debug)]
pub struct Version;

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match u64::deserialize(d)? {
            1 => Ok(Version),
            v => Err(de::Error::custom(format!("unsupported version {v}, this kspan reads version 1"))),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub id: RuleId,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Absent: the rule applies to every span.
    #[serde(default, rename = "match")]
    pub when: Option<CondSpec>,
    #[serde(default)]
    pub actions: ActionsSpec,
    /// Stop rule processing after this rule fires.
    #[serde(default)]
    pub stop: bool,
}

fn yes() -> bool {
    true
}

/// A rule id: letters, digits, `_`, `-`, `.`.
#[derive(Clone, Debug, PartialEq)]
pub struct RuleId(pub String);

impl<'de> Deserialize<'de> for RuleId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = RuleId;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a rule id (letters, digits, _ - .)")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<RuleId, E> {
                let ok = !v.is_empty()
                    && v.len() <= 128
                    && v.chars().all(|c| c.is_ascii_alphanumeric() || "_-.".contains(c));
                if ok {
                    Ok(RuleId(v.to_owned()))
                } else {
                    Err(E::custom(format!("bad rule id {v:?}: use 1-128 letters, digits, _ - .")))
                }
            }
        }
        d.deserialize_str(V)
    }
}

/// A condition: every key present must hold (`all`/`any`/`not` nest).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CondSpec {
    pub protocol: Option<ProtoMask>,
    pub service: Option<StrMatch>,
    pub kind: Option<SpanKind>,
    pub name: Option<StrMatch>,
    pub duration: Option<DurationCmp>,
    /// `true`: the span is an error (status error or HTTP status >= 500).
    pub error: Option<bool>,
    pub http: Option<HttpSpec>,
    pub postgresql: Option<PgSpec>,
    pub redis: Option<RedisSpec>,
    pub attributes: Option<OrderedMap<String, StrMatch>>,
    pub all: Option<Vec<CondSpec>>,
    pub any: Option<Vec<CondSpec>>,
    pub not: Option<Box<CondSpec>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSpec {
    pub method: Option<NoCaseMatch>,
    /// `http.route`, or `url.path` when the span has no route.
    pub route: Option<StrMatch>,
    pub path: Option<StrMatch>,
    pub status: Option<StatusMatch>,
    pub header: Option<OrderedMap<HeaderName, StrMatch>>,
    pub query: Option<OrderedMap<String, StrMatch>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PgSpec {
    pub operation: Option<NoCaseMatch>,
    pub table: Option<StrMatch>,
    pub database: Option<StrMatch>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSpec {
    pub command: Option<NoCaseMatch>,
    pub key: Option<StrMatch>,
}

/// Protocols as a bit set: `http`, `postgresql`, `redis`, or a list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProtoMask(pub u8);

impl ProtoMask {
    pub const HTTP: ProtoMask = ProtoMask(1);
    pub const POSTGRES: ProtoMask = ProtoMask(2);
    pub const REDIS: ProtoMask = ProtoMask(4);
    /// Spans of no known protocol.
    pub const OTHER: ProtoMask = ProtoMask(8);
    pub const ALL: ProtoMask = ProtoMask(15);

    pub fn contains(self, o: ProtoMask) -> bool {
        self.0 & o.0 == o.0
    }
    pub fn and(self, o: ProtoMask) -> ProtoMask {
        ProtoMask(self.0 & o.0)
    }
    pub fn or(self, o: ProtoMask) -> ProtoMask {
        ProtoMask(self.0 | o.0)
    }
    fn parse(s: &str) -> Option<ProtoMask> {
        match s {
            "http" => Some(ProtoMask::HTTP),
            "postgresql" => Some(ProtoMask::POSTGRES),
            "redis" => Some(ProtoMask::REDIS),
            _ => None,
        }
    }
}

impl<'de> Deserialize<'de> for ProtoMask {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = ProtoMask;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("http, postgresql, redis or a list of them")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ProtoMask, E> {
                ProtoMask::parse(v)
                    .ok_or_else(|| E::custom(format!("unknown protocol `{v}`, expected http, postgresql or redis")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ProtoMask, A::Error> {
                let mut m = ProtoMask(0);
                while let Some(p) = seq.next_element::<ProtoMask>()? {
                    m = m.or(p);
                }
                Ok(m)
            }
        }
        d.deserialize_any(V)
    }
}

/// A header name, stored lower-case (any header, credentials included: a
/// condition may test them; only extraction is restricted).
#[derive(Clone, Debug, PartialEq)]
pub struct HeaderName(pub String);

impl<'de> Deserialize<'de> for HeaderName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
            return Err(de::Error::custom(format!("bad header name {s:?}")));
        }
        Ok(HeaderName(s.to_ascii_lowercase()))
    }
}

/// An attribute key a rule writes or copies: not a credential header key.
#[derive(Clone, Debug, PartialEq)]
pub struct AttrKey(pub String);

impl<'de> Deserialize<'de> for AttrKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = AttrKey;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an attribute key")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AttrKey, E> {
                if v.is_empty() || v.len() > 256 || v.chars().any(char::is_whitespace) {
                    return Err(E::custom(format!("bad attribute key {v:?}")));
                }
                if privacy::is_sensitive_key(v) {
                    return Err(E::custom(format!(
                        "attribute `{v}` holds a credential and cannot be written or copied"
                    )));
                }
                Ok(AttrKey(v.to_owned()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A header a value may be extracted from whole: not a credential header.
#[derive(Clone, Debug, PartialEq)]
pub struct ExtractHeader(pub String);

impl<'de> Deserialize<'de> for ExtractHeader {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ExtractHeader;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a header name")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ExtractHeader, E> {
                if privacy::is_sensitive_header(v) {
                    return Err(E::custom(format!(
                        "header `{v}` holds credentials and is never exported; extract a `cookie` or a `jwt_claim` instead"
                    )));
                }
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_graphic() && b != b':') {
                    return Err(E::custom(format!("bad header name {v:?}")));
                }
                Ok(ExtractHeader(v.to_ascii_lowercase()))
            }
        }
        d.deserialize_str(V)
    }
}

/// A scalar attribute value (string, integer, float, boolean).
#[derive(Clone, Debug, PartialEq)]
pub struct ScalarValue(pub AttrValue);

impl<'de> Deserialize<'de> for ScalarValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScalarValue;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarValue, E> {
                Ok(ScalarValue(AttrValue::from(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarValue, E> {
                Ok(ScalarValue(AttrValue::Int(v)))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarValue, E> {
                i64::try_from(v).map(|v| ScalarValue(AttrValue::Int(v))).map_err(|_| E::custom("integer too large"))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarValue, E> {
                Ok(ScalarValue(AttrValue::F64(v)))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarValue, E> {
                Ok(ScalarValue(AttrValue::Bool(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// `checkout ${tenant.id:-unknown}`: literal text and attribute references.
#[derive(Clone, Debug, PartialEq)]
pub struct Template(pub Vec<TemplatePart>);

#[derive(Clone, Debug, PartialEq)]
pub enum TemplatePart {
    Lit(String),
    /// `${key}` or `${key:-default}`; `span.name` is the current name.
    Var {
        key: String,
        default: Option<String>,
    },
}

impl Template {
    pub fn parse(s: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut rest = s;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(TemplatePart::Lit(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| format!("unterminated `${{` in template {s:?}"))?;
            let inner = &after[..end];
            let (key, default) = match inner.split_once(":-") {
                Some((k, d)) => (k.trim(), Some(d.to_owned())),
                None => (inner.trim(), None),
            };
            if key.is_empty() || key.chars().any(char::is_whitespace) {
                return Err(format!("bad attribute reference `${{{inner}}}` in template {s:?}"));
            }
            if privacy::is_sensitive_key(key) {
                return Err(format!("template {s:?} references credential attribute `{key}`"));
            }
            parts.push(TemplatePart::Var { key: key.to_owned(), default });
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(TemplatePart::Lit(rest.to_owned()));
        }
        Ok(Template(parts))
    }
}

impl<'de> Deserialize<'de> for Template {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Template;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a name template, e.g. \"checkout ${tenant.id}\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Template, E> {
                Template::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_str(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionsSpec {
    pub set: Option<OrderedMap<AttrKey, ScalarValue>>,
    pub extract: Option<Vec<ExtractSpec>>,
    pub rename: Option<Template>,
    pub critical: Option<bool>,
    pub sample: Option<SampleSpec>,
    pub drop: Option<bool>,
    pub redact: Option<RedactSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExtractSpec {
    /// Attribute to write.
    pub to: AttrKey,
    pub from: Source,
    /// Written when the source has no value (otherwise nothing is written).
    #[serde(default)]
    pub default: Option<ScalarValue>,
}

/// Where an extracted value comes from: `sql_table`, or a one-key mapping
/// such as `{header: X-Tenant-ID}`.
#[derive(Debug)]
pub enum Source {
    /// A request header's value (not a credential header).
    Header(ExtractHeader),
    /// A query parameter (from the private raw `url.query`).
    Query(String),
    /// The first capture group of a regex on `url.path`.
    Path(PathRegex),
    /// One cookie from the Cookie header.
    Cookie(String),
    /// One claim of the Bearer JWT in Authorization (not verified).
    JwtClaim(String),
    /// The SQL table (`db.collection.name`).
    SqlTable,
    /// Another attribute (exported, private or resource; not a credential).
    Attribute(AttrKey),
}

const SOURCES: &str = "header, query, path, cookie, jwt_claim, attribute (mappings) or sql_table";

impl<'de> Deserialize<'de> for Source {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Source;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                write!(f, "one of {SOURCES}")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Source, E> {
                match v {
                    "sql_table" => Ok(Source::SqlTable),
                    other => Err(E::custom(format!("unknown source `{other}`, expected {SOURCES}"))),
                }
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Source, A::Error> {
                let Some(key) = map.next_key::<String>()? else {
                    return Err(de::Error::custom(format!("empty source, expected {SOURCES}")));
                };
                let source = match key.as_str() {
                    "header" => Source::Header(map.next_value()?),
                    "query" => Source::Query(map.next_value()?),
                    "path" => Source::Path(map.next_value()?),
                    "cookie" => Source::Cookie(map.next_value()?),
                    "jwt_claim" => Source::JwtClaim(map.next_value()?),
                    "attribute" => Source::Attribute(map.next_value()?),
                    other => {
                        return Err(de::Error::custom(format!("unknown source `{other}`, expected {SOURCES}")));
                    }
                };
                if map.next_key::<String>()?.is_some() {
                    return Err(de::Error::custom("a source mapping takes exactly one key"));
                }
                Ok(source)
            }
        }
        d.deserialize_any(V)
    }
}

/// A regex with at least one capture group.
#[derive(Clone, Debug)]
pub struct PathRegex(pub regex::Regex);

impl<'de> Deserialize<'de> for PathRegex {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::DeserializeSeed;
        RegexSeed { ci: false, min_groups: 1 }.deserialize(d).map(PathRegex)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleSpec {
    pub rate: Option<Rate>,
    /// A rate named in `sampling.classes`.
    pub class: Option<String>,
    /// Ranks rate settings of several fired rules (highest wins, later wins
    /// ties) and can exempt traffic from the global limit.
    #[serde(default)]
    pub priority: u8,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedactSpec {
    /// Attributes removed.
    #[serde(default)]
    pub remove: Vec<String>,
    /// Attributes whose value becomes "REDACTED".
    #[serde(default)]
    pub replace: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn templates_parse_literals_vars_and_defaults() {
        let t = Template::parse("checkout ${tenant.id:-unknown} (${span.name})").unwrap();
        assert_eq!(
            t.0,
            vec![
                TemplatePart::Lit("checkout ".into()),
                TemplatePart::Var { key: "tenant.id".into(), default: Some("unknown".into()) },
                TemplatePart::Lit(" (".into()),
                TemplatePart::Var { key: "span.name".into(), default: None },
                TemplatePart::Lit(")".into()),
            ]
        );
        assert!(Template::parse("x ${oops").is_err());
        assert!(Template::parse("${}").is_err());
        assert!(Template::parse("${http.request.header.authorization}").is_err());
    }

    #[test]
    fn protocols_and_unknown_protocol() {
        let m: ProtoMask = serde_yaml::from_str("[http, redis]").unwrap();
        assert!(m.contains(ProtoMask::HTTP) && m.contains(ProtoMask::REDIS) && !m.contains(ProtoMask::POSTGRES));
        let err = serde_yaml::from_str::<ProtoMask>("mysql").unwrap_err();
        assert!(err.to_string().contains("unknown protocol `mysql`"), "{err}");
    }

    #[test]
    fn credential_headers_cannot_be_extracted_or_written() {
        let err = serde_yaml::from_str::<Source>("{header: Authorization}").unwrap_err();
        assert!(err.to_string().contains("never exported"), "{err}");
        assert!(serde_yaml::from_str::<Source>("{header: X-Tenant-ID}").is_ok());
        assert!(serde_yaml::from_str::<AttrKey>("http.request.header.cookie").is_err());
        assert!(serde_yaml::from_str::<Source>("{attribute: http.request.header.cookie}").is_err());
        let h: HeaderName = serde_yaml::from_str("Authorization").unwrap();
        assert_eq!(h.0, "authorization", "conditions may still test credential headers");
    }

    #[test]
    fn sources_parse() {
        assert!(matches!(serde_yaml::from_str::<Source>("sql_table").unwrap(), Source::SqlTable));
        assert!(
            matches!(serde_yaml::from_str::<Source>("{jwt_claim: sub}").unwrap(), Source::JwtClaim(c) if c == "sub")
        );
        assert!(serde_yaml::from_str::<Source>("{path: '^/u/[0-9]+'}").is_err(), "needs a capture group");
        assert!(serde_yaml::from_str::<Source>("{body: x}").is_err());
    }

    #[test]
    fn scalar_values_keep_their_type() {
        let v: OrderedMap<AttrKey, ScalarValue> = serde_yaml::from_str("{a: x, b: 3, c: 1.5, d: true}").unwrap();
        let vals: Vec<&AttrValue> = v.iter().map(|(_, v)| &v.0).collect();
        assert_eq!(
            vals,
            [&AttrValue::Str("x".into()), &AttrValue::Int(3), &AttrValue::F64(1.5), &AttrValue::Bool(true)]
        );
        assert!(serde_yaml::from_str::<ScalarValue>("[1]").is_err());
    }
}
