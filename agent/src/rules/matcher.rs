//! Compiled conditions and the per-span view they read.
//!
//! Guarantees: evaluating a condition never allocates for string attributes
//! and never panics; well-known attributes are looked up once per span
//! ([`View`]), conjunctions evaluate cheap tests first, and each condition
//! knows which protocols it can match (for pre-indexing rules).

use super::pattern::{DurationCmp, StatusMatch, StrMatch};
use super::privacy::{self, REQUEST_HEADER_PREFIX};
use super::schema::{CondSpec, ProtoMask};
use crate::span::model::{AttrValue, Attributes, Span, SpanKind};

/// Attribute keys whose values [`View`] reads once per span. An action that
/// writes or removes one of them makes the next rule see a fresh view
/// ([`View::new`]); other writes only extend [`Facts::keys`].
pub const VIEW_KEYS: [&str; 10] = [
    "http.request.method",
    "url.path",
    "http.route",
    "http.response.status_code",
    "db.system.name",
    "db.operation.name",
    "db.collection.name",
    "db.namespace",
    "url.query",
    "db.redis.key",
];

/// Where a well-known value was found: an index into the span's
/// attributes, private attributes or resource attributes.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
enum At {
    #[default]
    Absent,
    Attr(u32),
    Private(u32),
    Resource(u32),
}

impl At {
    fn str(self, span: &Span) -> Option<&str> {
        let (attrs, i) = match self {
            At::Absent => return None,
            At::Attr(i) => (&span.attributes, i),
            At::Private(i) => (&span.private, i),
            At::Resource(i) => (&span.resource.attributes, i),
        };
        attrs.0.get(i as usize).and_then(|(_, v)| v.as_str())
    }
}

/// What [`View::new`] derived from a span, without borrowing it: kept
/// across actions that leave [`VIEW_KEYS`] alone (they may append other
/// keys or change the name, which leave these indices valid).
#[derive(Clone, Copy, Debug)]
pub struct Facts {
    proto: ProtoMask,
    method: At,
    path: At,
    route: At,
    db_op: At,
    db_table: At,
    db_name: At,
    service: At,
    query: At,
    redis_key: At,
    status: Option<i64>,
    error: bool,
    /// [`Prefix::head`] of `route.or(path)` and of `path`.
    route_head: u64,
    path_head: u64,
    /// [`word_bit`] of the HTTP method, SQL operation or Redis command.
    op_bit: u64,
    /// Bloom filter ([`key_bit`]) of every attribute key on the span.
    keys: u64,
}

impl Facts {
    /// The facts after actions appended keys with these [`key_bit`]s and
    /// changed nothing in [`VIEW_KEYS`].
    pub fn with_keys(self, keys: u64) -> Facts {
        Facts { keys: self.keys | keys, ..self }
    }
}

/// The well-known fields of a span, looked up once.
pub struct View<'a> {
    pub span: &'a Span,
    pub proto: ProtoMask,
    facts: Facts,
    method: Option<&'a str>,
    path: Option<&'a str>,
    route: Option<&'a str>,
    db_op: Option<&'a str>,
    db_table: Option<&'a str>,
    db_name: Option<&'a str>,
    service: Option<&'a str>,
    query: Option<&'a str>,
    redis_key: Option<&'a str>,
}

/// One of 64 bits for a word, ignoring ASCII case (FNV-1a).
pub fn word_bit(s: &str) -> u64 {
    let h = s
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b.to_ascii_lowercase())).wrapping_mul(0x100_0000_01b3));
    1 << (h >> 58)
}

/// One of 64 bits for an attribute key, from its length and three bytes
/// (keys share long prefixes, so the end and the middle are used).
pub fn key_bit(k: &str) -> u64 {
    let b = k.as_bytes();
    let pick = |i: usize| u64::from(b.get(i).copied().unwrap_or(0));
    let n = b.len();
    let h = (n as u64) ^ (pick(n.wrapping_sub(1)) << 8) ^ (pick(n / 2) << 16) ^ (pick(n.wrapping_sub(2)) << 24);
    1 << (h.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 58)
}

/// The first `key` in `attrs`: its value's text and where it is.
fn find<'a>(attrs: &'a Attributes, key: &str, at: fn(u32) -> At) -> (Option<&'a str>, At) {
    match attrs.0.iter().position(|(k, _)| k == key) {
        Some(i) => (attrs.0.get(i).and_then(|(_, v)| v.as_str()), at(i as u32)),
        None => (None, At::Absent),
    }
}

impl<'a> View<'a> {
    pub fn new(span: &'a Span) -> View<'a> {
        let (service, service_at) = find(&span.resource.attributes, "service.name", At::Resource);
        let (query, query_at) = find(&span.private, "url.query", At::Private);
        let (redis_key, redis_key_at) = find(&span.private, "db.redis.key", At::Private);
        let mut v = View {
            span,
            proto: ProtoMask::OTHER,
            facts: Facts {
                proto: ProtoMask::OTHER,
                method: At::Absent,
                path: At::Absent,
                route: At::Absent,
                db_op: At::Absent,
                db_table: At::Absent,
                db_name: At::Absent,
                service: service_at,
                query: query_at,
                redis_key: redis_key_at,
                status: None,
                error: false,
                route_head: 0,
                path_head: 0,
                op_bit: 0,
                keys: 0,
            },
            method: None,
            path: None,
            route: None,
            db_op: None,
            db_table: None,
            db_name: None,
            service,
            query,
            redis_key,
        };
        let f = &mut v.facts;
        for (k, _) in span.private.iter().chain(span.resource.attributes.iter()) {
            f.keys |= key_bit(k);
        }
        let mut db_system = None;
        for (i, (k, val)) in span.attributes.iter().enumerate() {
            f.keys |= key_bit(k);
            if !matches!(k.as_bytes().first(), Some(b'h' | b'u' | b'd')) {
                continue;
            }
            let at = At::Attr(i as u32);
            let (field, slot) = match k {
                "http.request.method" => (&mut v.method, &mut f.method),
                "url.path" => (&mut v.path, &mut f.path),
                "http.route" => (&mut v.route, &mut f.route),
                "http.response.status_code" => {
                    f.status = val.as_i64();
                    continue;
                }
                "db.system.name" => {
                    db_system = val.as_str();
                    continue;
                }
                "db.operation.name" => (&mut v.db_op, &mut f.db_op),
                "db.collection.name" => (&mut v.db_table, &mut f.db_table),
                "db.namespace" => (&mut v.db_name, &mut f.db_name),
                "url.query" if v.query.is_none() => (&mut v.query, &mut f.query),
                "db.redis.key" if v.redis_key.is_none() => (&mut v.redis_key, &mut f.redis_key),
                _ => continue,
            };
            *field = val.as_str();
            *slot = at;
        }
        f.proto = match db_system {
            Some("postgresql") => ProtoMask::POSTGRES,
            Some("redis") => ProtoMask::REDIS,
            _ if v.method.is_some() => ProtoMask::HTTP,
            _ => ProtoMask::OTHER,
        };
        v.proto = f.proto;
        f.error = crate::sample::is_error(span);
        f.op_bit = v.method.or(v.db_op).map_or(0, word_bit);
        f.route_head = v.route.or(v.path).map_or(0, Prefix::head);
        f.path_head = v.path.map_or(0, Prefix::head);
        v
    }

    /// The view of `span` from facts taken from an earlier view of it (see
    /// [`Facts`] for when they still hold).
    pub fn with_facts(span: &'a Span, f: Facts) -> View<'a> {
        View {
            span,
            proto: f.proto,
            facts: f,
            method: f.method.str(span),
            path: f.path.str(span),
            route: f.route.str(span),
            db_op: f.db_op.str(span),
            db_table: f.db_table.str(span),
            db_name: f.db_name.str(span),
            service: f.service.str(span),
            query: f.query.str(span),
            redis_key: f.redis_key.str(span),
        }
    }

    /// What this view derived, to rebuild it after actions ([`View::with_facts`]).
    pub fn facts(&self) -> Facts {
        self.facts
    }

    /// Bucket index of the span's protocol (0 http, 1 pg, 2 redis, 3 other).
    pub fn bucket(&self) -> usize {
        self.proto.0.trailing_zeros() as usize
    }
}

/// Looks an attribute up: span attributes, private attributes, resource.
pub fn lookup<'a>(span: &'a Span, key: &str) -> Option<&'a AttrValue> {
    span.attributes.get(key).or_else(|| span.private.get(key)).or_else(|| span.resource.attributes.get(key))
}

/// Necessary conditions of a rule, checked as straight-line code before the
/// condition tree: most rules are rejected here without any dispatch.
#[derive(Clone, Debug, Default)]
pub struct Quick {
    kind: Option<SpanKind>,
    /// Allowed methods/operations/commands as [`word_bit`]s (0: any).
    ops: u64,
    /// Attribute keys that must be present ([`key_bit`]s).
    keys: u64,
    route_prefix: Option<Prefix>,
    path_prefix: Option<Prefix>,
    status: Option<(i64, i64)>,
}

/// A required literal prefix, compared eight bytes at a time: the first eight
/// as one masked integer (no call, no loop), the rest only when those agree.
#[derive(Clone, Debug)]
pub struct Prefix {
    head: u64,
    mask: u64,
    text: Box<str>,
}

impl Prefix {
    pub fn new(text: &str) -> Prefix {
        let n = text.len().min(8);
        let mask = if n == 8 { u64::MAX } else { (1u64 << (8 * n)) - 1 };
        Prefix { head: Prefix::head(text), mask, text: text.into() }
    }

    /// The first eight bytes of `s` as a little-endian integer (zero-padded).
    pub fn head(s: &str) -> u64 {
        let mut b = [0u8; 8];
        for (d, s) in b.iter_mut().zip(s.bytes()) {
            *d = s;
        }
        u64::from_le_bytes(b)
    }

    /// Whether `s` (whose [`Prefix::head`] is `head`) starts with the prefix.
    pub fn admits(&self, s: &str, head: u64) -> bool {
        head & self.mask == self.head && (self.text.len() <= 8 || s.starts_with(&*self.text))
    }
}

impl Quick {
    /// Collects what the top-level conjunction of `cond` requires.
    pub fn of(cond: &Cond) -> Quick {
        let mut q = Quick::default();
        q.collect(cond);
        q
    }

    fn collect(&mut self, cond: &Cond) {
        let prefix = |m: &StrMatch| m.required_prefix().filter(|p| !p.is_empty()).map(Prefix::new);
        match cond {
            Cond::All(items) => items.iter().for_each(|c| self.collect(c)),
            Cond::Kind(k) => self.kind = Some(*k),
            Cond::Method(m) | Cond::PgOperation(m) | Cond::RedisCommand(m) => {
                if let Some(values) = m.exact_values() {
                    self.ops = values.iter().fold(0, |acc, v| acc | word_bit(v));
                }
            }
            Cond::Route(m) => self.route_prefix = prefix(m),
            Cond::Path(m) => self.path_prefix = prefix(m),
            Cond::Status(s) => {
                if let [range] = s.0.as_slice() {
                    self.status = Some(*range);
                }
            }
            Cond::Attr(key, m) | Cond::Header(key, m) if !m.matches(None) => self.keys |= key_bit(key),
            _ => {}
        }
    }

    /// False only when the rule cannot match the span.
    #[inline]
    pub fn admits(&self, v: &View<'_>) -> bool {
        if self.kind.is_some_and(|k| k != v.span.kind)
            || (self.ops != 0 && self.ops & v.facts.op_bit == 0)
            || self.keys & !v.facts.keys != 0
        {
            return false;
        }
        if let Some((lo, hi)) = self.status
            && !v.facts.status.is_some_and(|s| (lo..=hi).contains(&s))
        {
            return false;
        }
        if let Some(p) = &self.route_prefix
            && !v.route.or(v.path).is_some_and(|r| p.admits(r, v.facts.route_head))
        {
            return false;
        }
        if let Some(p) = &self.path_prefix
            && !v.path.is_some_and(|r| p.admits(r, v.facts.path_head))
        {
            return false;
        }
        true
    }
}

/// A compiled condition.
#[derive(Debug)]
pub enum Cond {
    True,
    All(Vec<Cond>),
    Any(Vec<Cond>),
    Not(Box<Cond>),
    Protocol(ProtoMask),
    Kind(SpanKind),
    Error(bool),
    Duration(DurationCmp),
    Status(StatusMatch),
    Service(StrMatch),
    Name(StrMatch),
    Method(StrMatch),
    Route(StrMatch),
    Path(StrMatch),
    PgOperation(StrMatch),
    PgTable(StrMatch),
    PgDatabase(StrMatch),
    RedisCommand(StrMatch),
    RedisKey(StrMatch),
    /// Full attribute key (`http.request.header.<name>`).
    Header(String, StrMatch),
    Query(String, StrMatch),
    Attr(String, StrMatch),
}

impl Cond {
    /// Compiles a condition spec (conjunction of its keys).
    pub fn compile(spec: CondSpec) -> Cond {
        let mut all = Vec::new();
        let mut proto = ProtoMask::ALL;
        if let Some(p) = spec.protocol {
            proto = proto.and(p);
        }
        if let Some(h) = spec.http {
            proto = proto.and(ProtoMask::HTTP);
            all.extend(h.method.map(|m| Cond::Method(m.0)));
            all.extend(h.status.map(Cond::Status));
            all.extend(h.route.map(Cond::Route));
            all.extend(h.path.map(Cond::Path));
            for (name, m) in h.header.into_iter().flat_map(|m| m.0) {
                all.push(Cond::Header(format!("{REQUEST_HEADER_PREFIX}{}", name.0), m));
            }
            for (name, m) in h.query.into_iter().flat_map(|m| m.0) {
                all.push(Cond::Query(name, m));
            }
        }
        if let Some(pg) = spec.postgresql {
            proto = proto.and(ProtoMask::POSTGRES);
            all.extend(pg.operation.map(|m| Cond::PgOperation(m.0)));
            all.extend(pg.table.map(Cond::PgTable));
            all.extend(pg.database.map(Cond::PgDatabase));
        }
        if let Some(r) = spec.redis {
            proto = proto.and(ProtoMask::REDIS);
            all.extend(r.command.map(|m| Cond::RedisCommand(m.0)));
            all.extend(r.key.map(Cond::RedisKey));
        }
        if proto != ProtoMask::ALL {
            all.push(Cond::Protocol(proto));
        }
        all.extend(spec.kind.map(Cond::Kind));
        all.extend(spec.error.map(Cond::Error));
        all.extend(spec.duration.map(Cond::Duration));
        all.extend(spec.service.map(Cond::Service));
        all.extend(spec.name.map(Cond::Name));
        for (k, m) in spec.attributes.into_iter().flat_map(|m| m.0) {
            all.push(Cond::Attr(k, m));
        }
        all.extend(spec.all.into_iter().flatten().map(Cond::compile));
        if let Some(any) = spec.any {
            all.push(Cond::Any(any.into_iter().map(Cond::compile).collect()));
        }
        if let Some(not) = spec.not {
            all.push(Cond::Not(Box::new(Cond::compile(*not))));
        }
        all.sort_by_key(Cond::cost);
        match all.len() {
            0 => Cond::True,
            1 => all.pop().unwrap_or(Cond::True),
            _ => Cond::All(all),
        }
    }

    fn cost(&self) -> u8 {
        match self {
            Cond::True | Cond::Protocol(_) | Cond::Kind(_) | Cond::Error(_) | Cond::Duration(_) | Cond::Status(_) => 0,
            Cond::Method(m) | Cond::PgOperation(m) | Cond::RedisCommand(m) => m.cost(),
            Cond::Service(m) | Cond::Name(m) | Cond::Route(m) | Cond::Path(m) => 1 + m.cost(),
            Cond::PgTable(m) | Cond::PgDatabase(m) | Cond::RedisKey(m) => 1 + m.cost(),
            Cond::Header(_, m) | Cond::Attr(_, m) => 3 + m.cost(),
            Cond::Query(_, m) => 6 + m.cost(),
            Cond::All(c) | Cond::Any(c) => c.iter().map(Cond::cost).max().unwrap_or(0).saturating_add(1),
            Cond::Not(c) => c.cost(),
        }
    }

    /// Protocols this condition can possibly match.
    pub fn protocols(&self) -> ProtoMask {
        match self {
            Cond::Protocol(p) => *p,
            Cond::All(c) => c.iter().fold(ProtoMask::ALL, |m, c| m.and(c.protocols())),
            Cond::Any(c) => c.iter().fold(ProtoMask(0), |m, c| m.or(c.protocols())),
            _ => ProtoMask::ALL,
        }
    }

    pub fn eval(&self, v: &View<'_>) -> bool {
        match self {
            Cond::True => true,
            Cond::All(c) => c.iter().all(|c| c.eval(v)),
            Cond::Any(c) => c.iter().any(|c| c.eval(v)),
            Cond::Not(c) => !c.eval(v),
            Cond::Protocol(p) => p.contains(v.proto),
            Cond::Kind(k) => v.span.kind == *k,
            Cond::Error(e) => v.facts.error == *e,
            Cond::Duration(d) => d.matches(v.span.duration_ns()),
            Cond::Status(s) => s.matches(v.facts.status),
            Cond::Service(m) => m.matches(v.service),
            Cond::Name(m) => m.matches(Some(&v.span.name)),
            Cond::Method(m) => m.matches(v.method),
            Cond::Route(m) => m.matches(v.route.or(v.path)),
            Cond::Path(m) => m.matches(v.path),
            Cond::PgOperation(m) | Cond::RedisCommand(m) => m.matches(v.db_op),
            Cond::PgTable(m) => m.matches(v.db_table),
            Cond::PgDatabase(m) => m.matches(v.db_name),
            Cond::RedisKey(m) => m.matches(v.redis_key),
            Cond::Header(key, m) => m.matches(privacy::request_header(v.span, key)),
            Cond::Query(name, m) => match m {
                StrMatch::Exists(want) => v.query.and_then(|q| privacy::query_param(q, name)).is_some() == *want,
                _ => v.query.and_then(|q| privacy::query_param(q, name)).is_some_and(|val| m.matches(Some(&val))),
            },
            Cond::Attr(key, m) => match lookup(v.span, key) {
                None => m.matches(None),
                Some(AttrValue::Str(s)) => m.matches(Some(s)),
                Some(other) => m.matches(Some(&other.to_text())),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::model::{Attributes, ProcessResource};
    use std::sync::Arc;

    fn http_span() -> Span {
        let mut attributes = Attributes::new();
        attributes.set("http.request.method", "POST");
        attributes.set("url.path", "/api/v1/checkout");
        attributes.set("http.response.status_code", AttrValue::Int(201));
        attributes.set("tenant.tier", "enterprise");
        attributes.set("retries", AttrValue::Int(3));
        let mut private = Attributes::new();
        private.set("http.request.header.x-tenant-id", "acme");
        private.set("url.query", "debug=1&lang=fr");
        let mut res = ProcessResource::default();
        res.attributes.set("service.name", "shop-frontend");
        Span { end_unix_ns: 300_000_000, ..Span::for_test("POST", attributes, private, Arc::new(res)) }
    }

    fn db_span(system: &str, op: &str, table: Option<&str>, key: Option<&str>) -> Span {
        let mut s = http_span();
        s.kind = SpanKind::Client;
        s.attributes = Attributes::new();
        s.attributes.set("db.system.name", system.to_owned());
        s.attributes.set("db.operation.name", op.to_owned());
        s.attributes.set("db.namespace", "shop");
        if let Some(t) = table {
            s.attributes.set("db.collection.name", t.to_owned());
        }
        s.private = Attributes::new();
        if let Some(k) = key {
            s.private.set("db.redis.key", k.to_owned());
        }
        s
    }

    fn check(yaml: &str, span: &Span) -> bool {
        let spec: CondSpec = serde_yaml::from_str(yaml).unwrap();
        Cond::compile(spec).eval(&View::new(span))
    }

    #[test]
    fn view_detects_protocol() {
        assert_eq!(View::new(&http_span()).proto, ProtoMask::HTTP);
        assert_eq!(View::new(&db_span("postgresql", "SELECT", None, None)).proto, ProtoMask::POSTGRES);
        assert_eq!(View::new(&db_span("redis", "GET", None, None)).bucket(), 2);
        let mut other = http_span();
        other.attributes = Attributes::new();
        assert_eq!(View::new(&other).bucket(), 3);
    }

    #[test]
    fn http_method_route_status_header_query() {
        let s = http_span();
        assert!(check("http: {method: post, route: /api/*/checkout, status: 2xx}", &s));
        assert!(!check("http: {method: GET}", &s));
        assert!(check("http: {path: {regex: '^/api/v[0-9]+/'}}", &s));
        assert!(check("http: {header: {X-Tenant-ID: acme}}", &s));
        assert!(check("http: {header: {x-tenant-id: {exists: true}, authorization: {exists: false}}}", &s));
        assert!(!check("http: {header: {x-tenant-id: other}}", &s));
        assert!(check("http: {query: {debug: '1', lang: {exists: true}, page: {exists: false}}}", &s));
        assert!(!check("http: {query: {lang: de}}", &s));
        assert!(!check("http: {status: [4xx, 5xx]}", &s));
    }

    #[test]
    fn route_prefers_http_route_over_path() {
        let mut s = http_span();
        s.attributes.set("http.route", "/api/{version}/checkout");
        assert!(check("http: {route: '/api/\\{version\\}/checkout'}", &s));
        assert!(check("http: {path: /api/v1/checkout}", &s));
    }

    #[test]
    fn protocol_kind_service_duration_name_error() {
        let s = http_span();
        assert!(check("{protocol: http, kind: server, service: 'shop-*', duration: '>= 250ms'}", &s));
        assert!(!check("{duration: '> 1s'}", &s));
        assert!(!check("{protocol: [postgresql, redis]}", &s));
        assert!(!check("{kind: client}", &s));
        assert!(check("{name: POST, error: false}", &s));
        let mut e = http_span();
        e.attributes.set("http.response.status_code", AttrValue::Int(503));
        assert!(check("{error: true}", &e));
    }

    #[test]
    fn postgres_and_redis_sections_imply_protocol() {
        let pg = db_span("postgresql", "SELECT", Some("orders"), None);
        assert!(check("postgresql: {operation: select, table: 'order*', database: shop}", &pg));
        assert!(!check("redis: {command: SELECT}", &pg), "redis section never matches a postgres span");
        let r = db_span("redis", "GET", None, Some("session:abc"));
        assert!(check("redis: {command: [get, mget], key: 'session:*'}", &r));
        assert!(!check("redis: {key: 'cart:*'}", &r));
    }

    #[test]
    fn attributes_any_type_and_private_and_resource() {
        let s = http_span();
        assert!(check("attributes: {tenant.tier: enterprise, retries: 3, service.name: shop-frontend}", &s));
        assert!(check("attributes: {url.query: {regex: 'debug=1'}}", &s));
        assert!(check("attributes: {missing: {exists: false}}", &s));
        assert!(!check("attributes: {tenant.tier: {regex: '^std'}}", &s));
    }

    #[test]
    fn kubernetes_resource_attributes_match() {
        let mut s = http_span();
        let mut res = (*s.resource).clone();
        res.attributes.set("k8s.namespace.name", "shop");
        res.attributes.set("k8s.deployment.name", "checkout-api");
        res.attributes.set("k8s.pod.name", "checkout-api-5f6-x2");
        s.resource = Arc::new(res);
        assert!(check("attributes: {k8s.namespace.name: shop, k8s.deployment.name: 'checkout-*'}", &s));
        assert!(check("attributes: {k8s.pod.name: {regex: '^checkout-api-'}}", &s));
        assert!(check("attributes: {k8s.statefulset.name: {exists: false}}", &s));
        assert!(!check("attributes: {k8s.namespace.name: [kube-system, default]}", &s));
        assert!(!check("attributes: {k8s.namespace.name: shop}", &http_span()), "absent on host processes");
        let cond = Cond::compile(serde_yaml::from_str("attributes: {k8s.namespace.name: shop}").unwrap());
        assert!(Quick::of(&cond).admits(&View::new(&s)), "the quick check sees resource keys");
    }

    #[test]
    fn all_any_not_nest() {
        let s = http_span();
        assert!(check("any: [{http: {method: GET}}, {all: [{kind: server}, {not: {error: true}}]}]", &s));
        assert!(!check("not: {any: [{kind: server}, {kind: client}]}", &s));
        assert!(check("{}", &s), "an empty condition matches everything");
    }

    #[test]
    fn quick_check_never_rejects_what_the_condition_accepts() {
        let spans = [
            http_span(),
            db_span("postgresql", "select", Some("orders"), None),
            db_span("redis", "GET", None, Some("session:1")),
        ];
        let conds = [
            "http: {method: [post, get], route: /api/*/checkout, status: 2xx}",
            "http: {method: GET}",
            "http: {path: {regex: '^/api/v[0-9]+/'}, header: {x-tenant-id: acme}}",
            "http: {route: ['/api/v1/c*', '/api/v2/*']}",
            "{kind: client, postgresql: {operation: SELECT}}",
            "redis: {command: [get, set], key: 'session:*'}",
            "attributes: {tenant.tier: enterprise, missing: {exists: false}}",
            "attributes: {nothere: x}",
            "{kind: server, all: [{http: {status: [2xx, 3xx]}}]}",
        ];
        for c in conds {
            let cond = Cond::compile(serde_yaml::from_str(c).unwrap());
            let quick = Quick::of(&cond);
            for s in &spans {
                let v = View::new(s);
                if cond.eval(&v) {
                    assert!(quick.admits(&v), "{c}");
                }
            }
        }
        let cond = Cond::compile(serde_yaml::from_str("http: {method: DELETE, path: /nope}").unwrap());
        assert!(!Quick::of(&cond).admits(&View::new(&http_span())));
        let cond = Cond::compile(serde_yaml::from_str("attributes: {nothere: x}").unwrap());
        assert!(!Quick::of(&cond).admits(&View::new(&http_span())));
    }

    #[test]
    fn prefix_check_agrees_with_starts_with() {
        let texts = ["", "/", "/a", "/api/v1/", "/api/v1/c", "/api/v1/checkout", "/api/v2/checkout/x", "/b", "/api"];
        for p in texts.iter().filter(|p| !p.is_empty()) {
            let prefix = Prefix::new(p);
            for t in texts {
                assert_eq!(prefix.admits(t, Prefix::head(t)), t.starts_with(p), "{p:?} vs {t:?}");
            }
        }
    }

    #[test]
    fn protocol_mask_is_conservative() {
        let c = |y: &str| Cond::compile(serde_yaml::from_str(y).unwrap()).protocols();
        assert_eq!(c("http: {method: GET}"), ProtoMask::HTTP);
        assert_eq!(c("any: [{http: {}}, {redis: {}}]"), ProtoMask::HTTP.or(ProtoMask::REDIS));
        assert_eq!(c("not: {http: {}}"), ProtoMask::ALL);
        assert_eq!(c("all: [{protocol: [http, redis]}, {redis: {}}]"), ProtoMask::REDIS);
        assert_eq!(c("{kind: server}"), ProtoMask::ALL);
    }
}
