//! Compiled leaf matchers of the rule language (strings, status codes,
//! durations) and the YAML visitors that build them.
//!
//! Guarantees: every pattern is compiled while its YAML node is read, so a bad
//! regex or glob is reported at that node's line and column; regexes are
//! bounded (`size_limit`, `dfa_size_limit`); matching never allocates.

use std::fmt;

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};

use crate::sample::policy::HumanDuration;

/// Compiled-program and lazy-DFA cache limits for every regex in a rule file.
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;
pub const REGEX_DFA_SIZE_LIMIT: usize = 1 << 20;

/// Compiles a user regex with kspan's bounds.
pub fn build_regex(pattern: &str, case_insensitive: bool) -> Result<regex::Regex, regex::Error> {
    regex::RegexBuilder::new(pattern)
        .case_insensitive(case_insensitive)
        .size_limit(REGEX_SIZE_LIMIT)
        .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
        .build()
}

/// A glob: `*` matches within one `/`-separated segment, `**` across
/// segments, `?` one character, `[abc]` a class, `{a,b}` alternatives.
/// Literal prefix and suffix are checked before the regex runs; a
/// case-sensitive glob with a single `*` (`/api/*/checkout`) never runs it.
#[derive(Clone, Debug)]
pub struct Glob {
    source: Box<str>,
    prefix: Box<str>,
    suffix: Box<str>,
    /// The pattern is `prefix*suffix` (one `*`, no other syntax): a match
    /// is the prefix and suffix around text without `/`.
    one_star: bool,
    re: regex::bytes::Regex,
}

const GLOB_META: [char; 6] = ['*', '?', '[', ']', '{', '}'];

impl Glob {
    pub fn new(pattern: &str, case_insensitive: bool) -> Result<Glob, String> {
        let glob = globset::GlobBuilder::new(pattern)
            .literal_separator(true)
            .backslash_escape(true)
            .case_insensitive(case_insensitive)
            .build()
            .map_err(|e| e.to_string())?;
        let re = regex::bytes::RegexBuilder::new(glob.regex())
            .size_limit(REGEX_SIZE_LIMIT)
            .dfa_size_limit(REGEX_DFA_SIZE_LIMIT)
            .build()
            .map_err(|e| e.to_string())?;
        let literal_end = pattern.find(|c| GLOB_META.contains(&c) || c == '\\').unwrap_or(pattern.len());
        let literal_start = pattern.rfind(|c| GLOB_META.contains(&c) || c == '\\').map_or(0, |i| i + 1);
        let (prefix, suffix) = if case_insensitive {
            (String::new(), String::new())
        } else {
            (pattern[..literal_end].to_owned(), pattern[literal_start..].to_owned())
        };
        let one_star = !case_insensitive
            && pattern.matches(|c| GLOB_META.contains(&c) || c == '\\').eq(["*"])
            && prefix.len() + 1 + suffix.len() == pattern.len();
        Ok(Glob { source: pattern.into(), prefix: prefix.into(), suffix: suffix.into(), one_star, re })
    }

    pub fn is_match(&self, v: &str) -> bool {
        if self.one_star {
            return v
                .strip_prefix(&*self.prefix)
                .and_then(|rest| rest.strip_suffix(&*self.suffix))
                .is_some_and(|star| !star.contains('/'));
        }
        v.starts_with(&*self.prefix) && v.ends_with(&*self.suffix) && self.re.is_match(v.as_bytes())
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Literal text every match starts with ("" when none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// A regex plus the literal text every match must start with (when the
/// pattern is anchored with `^` and starts with plain characters), checked
/// first: most haystacks are rejected without running the regex.
#[derive(Clone, Debug)]
pub struct Re {
    re: regex::Regex,
    prefix: Box<str>,
}

impl Re {
    /// `case_insensitive`: the regex was built ignoring case (no prefix then).
    pub fn new(re: regex::Regex, case_insensitive: bool) -> Re {
        let prefix = if case_insensitive { String::new() } else { required_prefix(re.as_str()) }.into();
        Re { re, prefix }
    }

    pub fn is_match(&self, v: &str) -> bool {
        v.starts_with(&*self.prefix) && self.re.is_match(v)
    }

    pub fn as_regex(&self) -> &regex::Regex {
        &self.re
    }

    /// Literal text every match starts with ("" when none).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Literal prefix of an anchored pattern without alternation; "" when unsure.
fn required_prefix(pattern: &str) -> String {
    const META: &[char] = &['\\', '.', '+', '*', '?', '(', ')', '|', '[', ']', '{', '}', '^', '$'];
    let Some(rest) = pattern.strip_prefix('^') else {
        return String::new();
    };
    if pattern.contains('|') {
        return String::new();
    }
    let end = rest.find(META).unwrap_or(rest.len());
    let mut prefix = rest[..end].to_owned();
    // A quantifier after the run applies to its last character.
    if rest[end..].starts_with(['?', '*', '{']) {
        prefix.pop();
    }
    prefix
}

/// A compiled string condition. See docs/rules.md, "String matchers".
#[derive(Clone, Debug)]
pub enum StrMatch {
    Exact(Box<str>),
    ExactNoCase(Box<str>),
    Glob(Glob),
    Regex(Re),
    AnyOf(Vec<StrMatch>),
    Exists(bool),
}

impl StrMatch {
    /// Whether the (possibly absent) value satisfies the condition.
    pub fn matches(&self, v: Option<&str>) -> bool {
        match (self, v) {
            (StrMatch::Exists(want), v) => v.is_some() == *want,
            (StrMatch::AnyOf(list), v) => list.iter().any(|m| m.matches(v)),
            (_, None) => false,
            (StrMatch::Exact(s), Some(v)) => **s == *v,
            (StrMatch::ExactNoCase(s), Some(v)) => s.eq_ignore_ascii_case(v),
            (StrMatch::Glob(g), Some(v)) => g.is_match(v),
            (StrMatch::Regex(re), Some(v)) => re.is_match(v),
        }
    }

    /// Text every matching value starts with, when known (never for
    /// case-insensitive matchers or `exists`).
    pub fn required_prefix(&self) -> Option<&str> {
        match self {
            StrMatch::Exact(s) => Some(s),
            StrMatch::Glob(g) => Some(g.prefix()),
            StrMatch::Regex(r) => Some(r.prefix()),
            StrMatch::ExactNoCase(_) | StrMatch::Exists(_) => None,
            StrMatch::AnyOf(list) => {
                let mut prefixes = list.iter().map(StrMatch::required_prefix);
                let first = prefixes.next()??;
                prefixes.try_fold(first, |acc, p| {
                    let p = p?;
                    let common = acc
                        .char_indices()
                        .zip(p.chars())
                        .find(|((_, a), b)| a != b)
                        .map_or(acc.len().min(p.len()), |((i, _), _)| i);
                    Some(&acc[..common])
                })
            }
        }
    }

    /// The exact values this matcher accepts, when it is a (list of) exact
    /// value(s); `None` otherwise.
    pub fn exact_values(&self) -> Option<Vec<&str>> {
        match self {
            StrMatch::Exact(s) | StrMatch::ExactNoCase(s) => Some(vec![s]),
            StrMatch::AnyOf(list) => list.iter().try_fold(Vec::new(), |mut acc, m| {
                acc.extend(m.exact_values()?);
                Some(acc)
            }),
            _ => None,
        }
    }

    /// Rough cost rank, to evaluate cheap conditions first.
    pub fn cost(&self) -> u8 {
        match self {
            StrMatch::Exists(_) | StrMatch::Exact(_) | StrMatch::ExactNoCase(_) => 1,
            StrMatch::Glob(_) => 3,
            StrMatch::Regex(_) => 4,
            StrMatch::AnyOf(l) => l.iter().map(StrMatch::cost).max().unwrap_or(1).saturating_add(1),
        }
    }
}

fn scalar_match(s: &str, ci: bool) -> Result<StrMatch, String> {
    if s.contains(GLOB_META) || s.contains('\\') {
        Glob::new(s, ci).map(StrMatch::Glob).map_err(|e| format!("bad glob {s:?}: {e}"))
    } else if ci {
        Ok(StrMatch::ExactNoCase(s.into()))
    } else {
        Ok(StrMatch::Exact(s.into()))
    }
}

/// Deserializes a [`StrMatch`]; `ci` makes it ASCII case-insensitive.
#[derive(Clone, Copy)]
struct StrMatchSeed {
    ci: bool,
}

impl<'de> DeserializeSeed<'de> for StrMatchSeed {
    type Value = StrMatch;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<StrMatch, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for StrMatchSeed {
    type Value = StrMatch;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string or glob, a list of them, or one of {equals, glob, regex, exists}")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<StrMatch, E> {
        scalar_match(v, self.ci).map_err(E::custom)
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<StrMatch, E> {
        Ok(StrMatch::Exact(v.to_string().into()))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<StrMatch, E> {
        Ok(StrMatch::Exact(v.to_string().into()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<StrMatch, E> {
        Ok(StrMatch::Exact(v.to_string().into()))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<StrMatch, E> {
        Ok(StrMatch::Exact(if v { "true" } else { "false" }.into()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StrMatch, A::Error> {
        let mut list = Vec::new();
        while let Some(m) = seq.next_element_seed(self)? {
            list.push(m);
        }
        if list.is_empty() {
            return Err(de::Error::custom("an empty list matches nothing"));
        }
        Ok(StrMatch::AnyOf(list))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StrMatch, A::Error> {
        let Some(key) = map.next_key::<String>()? else {
            return Err(de::Error::custom("expected one of equals, glob, regex, exists"));
        };
        let m = match key.as_str() {
            "equals" => {
                let s: ScalarText = map.next_value()?;
                if self.ci { StrMatch::ExactNoCase(s.0.into()) } else { StrMatch::Exact(s.0.into()) }
            }
            "glob" => map.next_value_seed(GlobSeed { ci: self.ci })?,
            "regex" => {
                StrMatch::Regex(Re::new(map.next_value_seed(RegexSeed { ci: self.ci, min_groups: 0 })?, self.ci))
            }
            "exists" => StrMatch::Exists(map.next_value()?),
            other => {
                return Err(de::Error::custom(format!(
                    "unknown matcher `{other}`, expected one of equals, glob, regex, exists"
                )));
            }
        };
        if map.next_key::<String>()?.is_some() {
            return Err(de::Error::custom("a matcher mapping takes exactly one of equals, glob, regex, exists"));
        }
        Ok(m)
    }
}

impl<'de> Deserialize<'de> for StrMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StrMatchSeed { ci: false }.deserialize(d)
    }
}

/// A [`StrMatch`] compared ignoring ASCII case (HTTP methods, SQL operations,
/// Redis commands).
#[derive(Clone, Debug)]
pub struct NoCaseMatch(pub StrMatch);

impl<'de> Deserialize<'de> for NoCaseMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        StrMatchSeed { ci: true }.deserialize(d).map(NoCaseMatch)
    }
}

/// Any YAML scalar, as text.
pub struct ScalarText(pub String);

impl<'de> Deserialize<'de> for ScalarText {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = ScalarText;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string, number or boolean")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_owned()))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<ScalarText, E> {
                Ok(ScalarText(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

struct GlobSeed {
    ci: bool,
}

impl<'de> DeserializeSeed<'de> for GlobSeed {
    type Value = StrMatch;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<StrMatch, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for GlobSeed {
    type Value = StrMatch;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a glob pattern")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<StrMatch, E> {
        Glob::new(v, self.ci).map(StrMatch::Glob).map_err(|e| E::custom(format!("bad glob {v:?}: {e}")))
    }
}

/// Deserializes and compiles a regex, requiring `min_groups` capture groups.
#[derive(Clone, Copy)]
pub struct RegexSeed {
    pub ci: bool,
    pub min_groups: usize,
}

impl<'de> DeserializeSeed<'de> for RegexSeed {
    type Value = regex::Regex;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<regex::Regex, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for RegexSeed {
    type Value = regex::Regex;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a regular expression")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<regex::Regex, E> {
        let re =
            build_regex(v, self.ci).map_err(|e| E::custom(format!("bad regex {v:?}: {}", one_line(&e.to_string()))))?;
        if re.captures_len() - 1 < self.min_groups {
            return Err(E::custom(format!("regex {v:?} needs a capture group, e.g. \"^/users/([^/]+)\"")));
        }
        Ok(re)
    }
}

/// Regex errors span several lines (a caret diagram); keep their last line.
fn one_line(msg: &str) -> String {
    let lines: Vec<&str> = msg.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
    match lines.as_slice() {
        [] => String::new(),
        [only] => (*only).to_owned(),
        [.., last] => format!("{last} ({})", lines.iter().take(lines.len() - 1).copied().collect::<Vec<_>>().join(" ")),
    }
}

/// HTTP status codes: `404`, `"5xx"`, `"400-499"`, or a list of those.
#[derive(Clone, Debug, PartialEq)]
pub struct StatusMatch(pub Vec<(i64, i64)>);

impl StatusMatch {
    pub fn matches(&self, status: Option<i64>) -> bool {
        status.is_some_and(|s| self.0.iter().any(|(lo, hi)| (*lo..=*hi).contains(&s)))
    }

    fn parse_one(s: &str) -> Option<(i64, i64)> {
        let s = s.trim();
        if let Some(d) = s.strip_suffix("xx").or_else(|| s.strip_suffix("XX")) {
            let d: i64 = d.parse().ok().filter(|d| (1..=5).contains(d))?;
            return Some((d * 100, d * 100 + 99));
        }
        if let Some((lo, hi)) = s.split_once('-') {
            let (lo, hi): (i64, i64) = (lo.trim().parse().ok()?, hi.trim().parse().ok()?);
            return ((100..=599).contains(&lo) && (lo..=599).contains(&hi)).then_some((lo, hi));
        }
        let c: i64 = s.parse().ok().filter(|c| (100..=599).contains(c))?;
        Some((c, c))
    }
}

impl<'de> Deserialize<'de> for StatusMatch {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StatusMatch;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a status code (404), class (\"5xx\"), range (\"400-499\") or a list of them")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<StatusMatch, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<StatusMatch, E> {
                self.visit_str(&v.to_string())
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<StatusMatch, E> {
                StatusMatch::parse_one(v)
                    .map(|r| StatusMatch(vec![r]))
                    .ok_or_else(|| E::custom(format!("bad status {v:?}: expected 100..=599, \"5xx\" or \"400-499\"")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<StatusMatch, A::Error> {
                let mut all = Vec::new();
                while let Some(one) = seq.next_element::<StatusMatch>()? {
                    all.extend(one.0);
                }
                Ok(StatusMatch(all))
            }
        }
        d.deserialize_any(V)
    }
}

/// A duration comparison: `"> 1s"`, `">= 250ms"`, `"< 10ms"`, `"<= 2s"`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DurationCmp {
    pub op: CmpOp,
    pub ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CmpOp {
    Gt,
    Ge,
    Lt,
    Le,
}

impl DurationCmp {
    pub fn matches(&self, ns: u64) -> bool {
        match self.op {
            CmpOp::Gt => ns > self.ns,
            CmpOp::Ge => ns >= self.ns,
            CmpOp::Lt => ns < self.ns,
            CmpOp::Le => ns <= self.ns,
        }
    }

    pub fn parse(s: &str) -> Option<DurationCmp> {
        let s = s.trim();
        let (op, rest) = if let Some(r) = s.strip_prefix(">=") {
            (CmpOp::Ge, r)
        } else if let Some(r) = s.strip_prefix("<=") {
            (CmpOp::Le, r)
        } else if let Some(r) = s.strip_prefix('>') {
            (CmpOp::Gt, r)
        } else if let Some(r) = s.strip_prefix('<') {
            (CmpOp::Lt, r)
        } else {
            return None;
        };
        HumanDuration::parse(rest).map(|d| DurationCmp { op, ns: d.as_ns() })
    }
}

impl<'de> Deserialize<'de> for DurationCmp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = DurationCmp;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a comparison like \"> 1s\" or \">= 250ms\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<DurationCmp, E> {
                DurationCmp::parse(v).ok_or_else(|| {
                    E::custom(format!(
                        "bad duration condition {v:?}: expected >, >=, < or <= then a duration, e.g. \"> 1s\""
                    ))
                })
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(yaml: &str) -> StrMatch {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn plain_string_is_exact_and_case_sensitive() {
        let s = m("/health");
        assert!(s.matches(Some("/health")));
        assert!(!s.matches(Some("/Health")));
        assert!(!s.matches(Some("/health/x")));
        assert!(!s.matches(None));
        assert!(matches!(s, StrMatch::Exact(_)));
    }

    #[test]
    fn no_case_match_ignores_ascii_case() {
        let NoCaseMatch(s) = serde_yaml::from_str("[get, Post]").unwrap();
        assert!(s.matches(Some("GET")));
        assert!(s.matches(Some("post")));
        assert!(!s.matches(Some("PUT")));
        let NoCaseMatch(g) = serde_yaml::from_str("\"h*\"").unwrap();
        assert!(g.matches(Some("HGETALL")));
    }

    #[test]
    fn single_star_stays_in_one_segment_double_star_crosses() {
        let one = m("/api/*/checkout");
        assert!(one.matches(Some("/api/v1/checkout")));
        assert!(!one.matches(Some("/api/v1/x/checkout")));
        assert!(!one.matches(Some("/api/v1/checkout/more")));
        let two = m("/api/**/checkout");
        assert!(two.matches(Some("/api/v1/x/checkout")));
        let all = m("\"/static/**\"");
        assert!(all.matches(Some("/static/a/b.css")));
        assert!(!all.matches(Some("/other/a")));
        let q = m("/v?/x");
        assert!(q.matches(Some("/v2/x")));
        assert!(!q.matches(Some("/v22/x")));
        let alt = m("\"/{a,b}/x\"");
        assert!(alt.matches(Some("/b/x")));
        let key = m("\"session:*\"");
        assert!(key.matches(Some("session:abc:def")));
    }

    #[test]
    fn single_star_shortcut_agrees_with_the_glob_regex() {
        let values = ["", "/", "/api//checkout", "/api/v1/checkout", "/api/v1/x/checkout", "/api/checkout", "a", "aa"];
        for (pattern, shortcut) in
            [("/api/*/checkout", true), ("*", true), ("a*a", true), ("*.css", true), ("/a/**", false), ("a\\*", false)]
        {
            let fast = Glob::new(pattern, false).unwrap();
            assert_eq!(fast.one_star, shortcut, "{pattern}");
            let slow = Glob { one_star: false, ..fast.clone() };
            for v in values {
                assert_eq!(fast.is_match(v), slow.is_match(v), "{pattern} on {v:?}");
            }
        }
        assert!(!Glob::new("/api/*", true).unwrap().one_star, "case-insensitive globs keep the regex");
    }

    #[test]
    fn regex_equals_exists_and_any_of() {
        let r = m("{regex: '^/users/[0-9]+$'}");
        assert!(r.matches(Some("/users/42")));
        assert!(!r.matches(Some("/users/x")));
        let e = m("{equals: '/a*'}");
        assert!(e.matches(Some("/a*")));
        assert!(!e.matches(Some("/ab")));
        assert!(m("{exists: true}").matches(Some("")));
        assert!(!m("{exists: true}").matches(None));
        assert!(m("{exists: false}").matches(None));
        let any = m("[a, {regex: '^b+$'}]");
        assert!(any.matches(Some("bbb")) && any.matches(Some("a")) && !any.matches(Some("c")));
        assert!(m("42").matches(Some("42")));
        assert!(m("true").matches(Some("true")));
    }

    #[test]
    fn bad_patterns_fail_at_their_node() {
        let err = serde_yaml::from_str::<Vec<StrMatch>>("- ok\n- {regex: 'a(b'}\n").unwrap_err();
        assert!(err.to_string().contains("bad regex"), "{err}");
        let loc = err.location().unwrap();
        assert_eq!((loc.line(), loc.column()), (2, 11));
        let err = serde_yaml::from_str::<StrMatch>("{regexp: x}").unwrap_err();
        assert!(err.to_string().contains("unknown matcher `regexp`"), "{err}");
        let err = serde_yaml::from_str::<StrMatch>("\"[a-\"").unwrap_err();
        assert!(err.to_string().contains("bad glob"), "{err}");
        assert!(serde_yaml::from_str::<StrMatch>("[]").is_err());
    }

    #[test]
    fn regex_prefix_prefilter_is_conservative() {
        assert_eq!(required_prefix("^/v[0-9]+/x"), "/v");
        assert_eq!(required_prefix("^/users?/x"), "/user");
        assert_eq!(required_prefix("^/a|^/b"), "");
        assert_eq!(required_prefix("/api"), "");
        assert_eq!(required_prefix("(?i)^/api"), "");
        assert_eq!(required_prefix("^ab{2}"), "a");
        let r = m("{regex: '^/users?/[0-9]+$'}");
        assert!(!r.matches(Some("/use/1")) && r.matches(Some("/user/1")) && r.matches(Some("/users/1")));
        let ci: NoCaseMatch = serde_yaml::from_str("{regex: '^GET'}").unwrap();
        assert!(ci.0.matches(Some("get")), "case-insensitive regexes get no case-sensitive prefix");
    }

    #[test]
    fn regex_size_is_bounded() {
        assert!(build_regex("(a{1000}){1000}", false).is_err());
    }

    #[test]
    fn regex_seed_requires_capture_groups() {
        let seed = RegexSeed { ci: false, min_groups: 1 };
        assert!(seed.deserialize(serde_yaml::Deserializer::from_str("'^/users/[0-9]+'")).is_err());
        assert!(seed.deserialize(serde_yaml::Deserializer::from_str("'^/users/([0-9]+)'")).is_ok());
    }

    #[test]
    fn status_codes_classes_ranges_and_lists() {
        let s: StatusMatch = serde_yaml::from_str("[404, 5xx, '420-429']").unwrap();
        for (code, want) in [(404, true), (500, true), (599, true), (425, true), (403, false), (430, false)] {
            assert_eq!(s.matches(Some(code)), want, "{code}");
        }
        assert!(!s.matches(None));
        assert!(serde_yaml::from_str::<StatusMatch>("6xx").is_err());
        assert!(serde_yaml::from_str::<StatusMatch>("'500-400'").is_err());
        assert!(serde_yaml::from_str::<StatusMatch>("99").is_err());
    }

    #[test]
    fn duration_comparisons() {
        let d = DurationCmp::parse("> 1s").unwrap();
        assert!(d.matches(1_000_000_001) && !d.matches(1_000_000_000));
        let d = DurationCmp::parse(">=250ms").unwrap();
        assert!(d.matches(250_000_000) && !d.matches(249_999_999));
        assert!(DurationCmp::parse("< 10ms").unwrap().matches(9_000_000));
        assert!(DurationCmp::parse("<= 10ms").unwrap().matches(10_000_000));
        assert!(DurationCmp::parse("1s").is_none());
        assert!(DurationCmp::parse("> 1 parsec").is_none());
    }
}
