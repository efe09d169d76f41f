//! Compiled rule actions and how they change a span.
//!
//! Order inside one rule (docs/rules.md, "Actions"): set, extract, rename,
//! critical, redact, sample, drop.
//!
//! Guarantees: actions never panic on span content; extracted values that
//! would export a credential are replaced with "REDACTED" (counted); templates
//! only read exported and resource attributes, never private ones.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};

use super::RuleOutcome;
use super::matcher::{VIEW_KEYS, key_bit, lookup};
use super::privacy::{self, REDACTED, REQUEST_HEADER_PREFIX};
use super::schema::{ActionsSpec, ExtractSpec, Source, Template, TemplatePart};
use crate::span::model::{AttrValue, Span};

/// Attribute set on spans a rule marks critical.
pub const CRITICAL_ATTR: &str = "business.critical";

#[derive(Debug)]
pub(crate) enum From {
    Header(String),
    Query(String),
    Path(regex::Regex),
    Cookie(String),
    JwtClaim(String),
    SqlTable,
    Attribute(String),
}

/// Most attribute keys written by rules that are kept for the life of the
/// process ([`attr_key`]), and their total length.
pub const MAX_INTERNED_KEYS: usize = 4096;
pub const MAX_INTERNED_BYTES: usize = 256 * 1024;

/// Keys that did not fit under the interning caps (each write of them then
/// allocates a copy).
pub static INTERN_OVERFLOW: AtomicU64 = AtomicU64::new(0);

/// Attribute keys written by actions, shared by every rule set loaded since
/// start (reloads mostly write the same keys): `(keys, total bytes)`.
static INTERNED: Mutex<(Option<HashSet<&'static str>>, usize)> = Mutex::new((None, 0));

/// A rule's attribute key as a `'static` string, so writing it onto a span
/// does not allocate. Keys are interned once per process within
/// [`MAX_INTERNED_KEYS`] / [`MAX_INTERNED_BYTES`]; beyond that the key stays
/// owned (copied per write) and [`INTERN_OVERFLOW`] counts it.
pub(crate) fn attr_key(key: String) -> Cow<'static, str> {
    let mut guard = INTERNED.lock().unwrap_or_else(PoisonError::into_inner);
    let (set, bytes) = &mut *guard;
    let set = set.get_or_insert_with(HashSet::new);
    if let Some(k) = set.get(key.as_str()) {
        return Cow::Borrowed(k);
    }
    if set.len() >= MAX_INTERNED_KEYS || *bytes + key.len() > MAX_INTERNED_BYTES {
        INTERN_OVERFLOW.fetch_add(1, Ordering::Relaxed);
        return Cow::Owned(key);
    }
    *bytes += key.len();
    let k: &'static str = Box::leak(key.into_boxed_str());
    set.insert(k);
    Cow::Borrowed(k)
}

#[derive(Debug)]
pub(crate) struct Extract {
    to: Cow<'static, str>,
    from: From,
    default: Option<AttrValue>,
}

/// A rule's sampling setting, class already resolved to a rate.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SampleSetting {
    pub rate: f64,
    pub priority: u8,
    pub class: Option<std::sync::Arc<str>>,
}

#[derive(Debug, Default)]
pub(crate) struct Actions {
    set: Vec<(Cow<'static, str>, AttrValue)>,
    extract: Vec<Extract>,
    rename: Option<Template>,
    critical: bool,
    remove: Vec<String>,
    replace: Vec<Cow<'static, str>>,
    pub sample: Option<SampleSetting>,
    pub drop: bool,
    /// [`key_bit`]s of the keys these actions may add, or `None` when they
    /// may change or remove a key the rule view caches (see [`Actions::added_keys`]).
    added_keys: Option<u64>,
}

impl Actions {
    /// Compiles actions; `sample` is resolved by the caller (it needs the policy).
    pub fn compile(spec: ActionsSpec, sample: Option<SampleSetting>) -> Actions {
        let extract = spec.extract.unwrap_or_default().into_iter().map(compile_extract).collect();
        let redact = spec.redact.unwrap_or_default();
        let mut actions = Actions {
            set: spec.set.map(|m| m.0.into_iter().map(|(k, v)| (attr_key(k.0), v.0)).collect()).unwrap_or_default(),
            extract,
            rename: spec.rename,
            critical: spec.critical.unwrap_or(false),
            remove: redact.remove,
            replace: redact.replace.into_iter().map(attr_key).collect(),
            sample,
            drop: spec.drop.unwrap_or(false),
            added_keys: None,
        };
        actions.added_keys = actions.view_effect();
        actions
    }

    /// What running these actions can change in a rule view ([`super::matcher::View`])
    /// of the span: `Some(bits)` when they only add keys (with these
    /// [`key_bit`]s), replace values outside [`VIEW_KEYS`] or rename the span,
    /// so the view's facts stay valid; `None` when the view must be rebuilt.
    pub fn added_keys(&self) -> Option<u64> {
        self.added_keys
    }

    fn view_effect(&self) -> Option<u64> {
        let written = self.set.iter().map(|(k, _)| k).chain(self.extract.iter().map(|e| &e.to)).chain(&self.replace);
        let mut keys = 0;
        for k in written {
            if VIEW_KEYS.contains(&k.as_ref()) {
                return None;
            }
            keys |= key_bit(k);
        }
        if self.critical {
            keys |= key_bit(CRITICAL_ATTR);
        }
        self.remove.is_empty().then_some(keys)
    }

    /// Applies the actions to `span`, recording sampling effects in `out`.
    pub fn apply(&self, span: &mut Span, out: &mut RuleOutcome, redactions: &AtomicU64) {
        for (k, v) in &self.set {
            span.attributes.set(k.clone(), v.clone());
        }
        for e in &self.extract {
            match extract(span, &e.from) {
                Some(v) => {
                    let v = if privacy::leaks_credential(span, &v.to_text()) {
                        redactions.fetch_add(1, Ordering::Relaxed);
                        AttrValue::from(REDACTED)
                    } else {
                        v
                    };
                    span.attributes.set(e.to.clone(), v);
                }
                None => {
                    if let Some(d) = &e.default {
                        span.attributes.set(e.to.clone(), d.clone());
                    }
                }
            }
        }
        if let Some(t) = &self.rename {
            span.name = render(t, span).into();
        }
        if self.critical {
            span.attributes.set(CRITICAL_ATTR, true);
            out.critical = true;
        }
        for k in &self.remove {
            span.attributes.remove(k);
        }
        for k in &self.replace {
            if span.attributes.get(k).is_some() {
                span.attributes.set(k.clone(), REDACTED);
            }
        }
        if let Some(s) = &self.sample
            && (out.rate.is_none() || s.priority >= out.priority)
        {
            out.rate = Some(s.rate);
            out.priority = s.priority;
            out.class = s.class.clone();
        }
        if self.drop {
            out.drop = true;
        }
    }
}

fn compile_extract(spec: ExtractSpec) -> Extract {
    let from = match spec.from {
        Source::Header(h) => From::Header(format!("{REQUEST_HEADER_PREFIX}{}", h.0)),
        Source::Query(q) => From::Query(q),
        Source::Path(re) => From::Path(re.0),
        Source::Cookie(c) => From::Cookie(c),
        Source::JwtClaim(c) => From::JwtClaim(c),
        Source::SqlTable => From::SqlTable,
        Source::Attribute(a) => From::Attribute(a.0),
    };
    Extract { to: attr_key(spec.to.0), from, default: spec.default.map(|d| d.0) }
}

fn extract(span: &Span, from: &From) -> Option<AttrValue> {
    let text = |s: &str| Some(AttrValue::from(s));
    match from {
        From::Header(key) => privacy::request_header(span, key).and_then(text),
        From::Query(name) => {
            let q = span.private.get_str("url.query").or_else(|| span.attributes.get_str("url.query"))?;
            privacy::query_param(q, name).map(|v| AttrValue::from(v.as_ref()))
        }
        From::Path(re) => {
            let path = span.attributes.get_str("url.path")?;
            let caps = re.captures(path)?;
            caps.iter().skip(1).flatten().next().and_then(|m| text(m.as_str()))
        }
        From::Cookie(name) => {
            let header = privacy::request_header(span, "http.request.header.cookie")?;
            privacy::cookie(header, name).and_then(text)
        }
        From::JwtClaim(claim) => {
            let header = privacy::request_header(span, "http.request.header.authorization")?;
            privacy::jwt_claim(header, claim).map(AttrValue::from)
        }
        From::SqlTable => span.attributes.get_str("db.collection.name").and_then(text),
        From::Attribute(key) => lookup(span, key).cloned(),
    }
}

/// Renders a name template from exported and resource attributes.
pub(crate) fn render(t: &Template, span: &Span) -> String {
    let mut out = String::new();
    for part in &t.0 {
        match part {
            TemplatePart::Lit(s) => out.push_str(s),
            TemplatePart::Var { key, default } => {
                let value = if key == "span.name" {
                    Some(std::borrow::Cow::Borrowed(span.name.as_str()))
                } else {
                    span.attributes.get(key).or_else(|| span.resource.attributes.get(key)).map(AttrValue::to_text)
                };
                match (value, default) {
                    (Some(v), _) => out.push_str(&v),
                    (None, Some(d)) => out.push_str(d),
                    (None, None) => {}
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::model::{Attributes, ProcessResource};
    use base64::Engine;
    use std::sync::Arc;

    fn span() -> Span {
        let mut attributes = Attributes::new();
        attributes.set("http.request.method", "GET");
        attributes.set("url.path", "/users/42/orders/7");
        attributes.set("db.collection.name", "orders");
        attributes.set("user.email", "a@b.c");
        let mut private = Attributes::new();
        private.set("http.request.header.x-tenant-id", "acme");
        private.set("http.request.header.cookie", "theme=dark; sid=abc");
        let payload = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(r#"{"sub":"user-42"}"#);
        private.set("http.request.header.authorization", format!("Bearer e30.{payload}.sig"));
        private.set("url.query", "lang=fr&token=Bearer%20e30");
        let mut res = ProcessResource::default();
        res.attributes.set("service.name", "shop");
        Span::for_test("GET", attributes, private, Arc::new(res))
    }

    fn run(yaml: &str, span: &mut Span) -> RuleOutcome {
        let spec: ActionsSpec = serde_yaml::from_str(yaml).unwrap();
        let mut out = RuleOutcome::default();
        Actions::compile(spec, None).apply(span, &mut out, &AtomicU64::new(0));
        out
    }

    #[test]
    fn rule_keys_are_interned_once_and_shared() {
        let (a, b) = (attr_key("test.interned.key".to_owned()), attr_key("test.interned.key".to_owned()));
        match (a, b) {
            (Cow::Borrowed(a), Cow::Borrowed(b)) => assert!(std::ptr::eq(a, b)),
            other => panic!("not interned: {other:?}"),
        }
    }

    #[test]
    fn set_writes_typed_static_values() {
        let mut s = span();
        run("set: {business.process: checkout, weight: 3, beta: true}", &mut s);
        assert_eq!(s.attributes.get_str("business.process"), Some("checkout"));
        assert_eq!(s.attributes.get("weight"), Some(&AttrValue::Int(3)));
        assert_eq!(s.attributes.get("beta"), Some(&AttrValue::Bool(true)));
    }

    #[test]
    fn extract_from_every_source() {
        let mut s = span();
        run(
            "extract:
  - {to: tenant.id, from: {header: X-Tenant-ID}}
  - {to: lang, from: {query: lang}}
  - {to: user.id, from: {path: '^/users/([^/]+)'}}
  - {to: order.id, from: {path: '/orders/(?P<id>[0-9]+)$'}}
  - {to: session.id, from: {cookie: sid}}
  - {to: enduser.id, from: {jwt_claim: sub}}
  - {to: db.table, from: sql_table}
  - {to: app, from: {attribute: service.name}}",
            &mut s,
        );
        for (k, v) in [
            ("tenant.id", "acme"),
            ("lang", "fr"),
            ("user.id", "42"),
            ("order.id", "7"),
            ("session.id", "abc"),
            ("enduser.id", "user-42"),
            ("db.table", "orders"),
            ("app", "shop"),
        ] {
            assert_eq!(s.attributes.get_str(k), Some(v), "{k}");
        }
    }

    #[test]
    fn extract_default_only_when_absent() {
        let mut s = span();
        run(
            "extract: [{to: plan, from: {header: x-plan}, default: free}, {to: t, from: {header: x-tenant-id}, default: none}]",
            &mut s,
        );
        assert_eq!(s.attributes.get_str("plan"), Some("free"));
        assert_eq!(s.attributes.get_str("t"), Some("acme"));
        let mut s = span();
        run("extract: [{to: plan, from: {header: x-plan}}]", &mut s);
        assert_eq!(s.attributes.get("plan"), None);
    }

    #[test]
    fn extracted_credentials_are_redacted() {
        let mut s = span();
        let token = s.private.get_str("http.request.header.authorization").unwrap().to_owned();
        s.private.set("http.request.header.x-forwarded-auth", token);
        let spec: ActionsSpec = serde_yaml::from_str("extract: [{to: fwd, from: {header: x-forwarded-auth}}]").unwrap();
        let counter = AtomicU64::new(0);
        Actions::compile(spec, None).apply(&mut s, &mut RuleOutcome::default(), &counter);
        assert_eq!(s.attributes.get_str("fwd"), Some(REDACTED));
        assert_eq!(counter.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn rename_templates_read_exported_and_resource_attributes_only() {
        let mut s = span();
        run("rename: '${span.name} ${url.path} @${service.name} q=${url.query:-none} ${missing}!'", &mut s);
        assert_eq!(s.name, "GET /users/42/orders/7 @shop q=none !");
    }

    #[test]
    fn critical_redact_sample_drop() {
        let mut s = span();
        let out =
            run("critical: true\nredact: {remove: [user.email], replace: [url.path, absent]}\ndrop: true", &mut s);
        assert!(out.critical && out.drop);
        assert_eq!(s.attributes.get(CRITICAL_ATTR), Some(&AttrValue::Bool(true)));
        assert_eq!(s.attributes.get("user.email"), None);
        assert_eq!(s.attributes.get_str("url.path"), Some(REDACTED));
        assert_eq!(s.attributes.get("absent"), None, "replace does not create attributes");
    }

    #[test]
    fn higher_or_equal_priority_rate_wins() {
        let mut out = RuleOutcome::default();
        let mut s = span();
        let a = |rate, priority| Actions {
            sample: Some(SampleSetting { rate, priority, class: None }),
            ..Actions::default()
        };
        let c = AtomicU64::new(0);
        a(0.5, 5).apply(&mut s, &mut out, &c);
        a(0.1, 1).apply(&mut s, &mut out, &c);
        assert_eq!((out.rate, out.priority), (Some(0.5), 5));
        a(0.2, 5).apply(&mut s, &mut out, &c);
        assert_eq!((out.rate, out.priority), (Some(0.2), 5));
    }
}
