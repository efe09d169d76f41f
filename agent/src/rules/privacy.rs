//! Privacy helpers for rule actions: credentials never leave the agent.
//!
//! Guarantees:
//! - Authorization, Proxy-Authorization, Cookie and Set-Cookie values are
//!   never exported raw: rules cannot extract those headers whole, copy their
//!   attributes, write to their attribute keys or reference them in templates
//!   (all rejected at load), and any extracted value that contains one of
//!   those raw values (or the credential after its scheme) is replaced with
//!   [`REDACTED`] at run time.
//! - Only a single cookie value or a single JWT claim can be taken out of
//!   those headers. JWTs are decoded, never verified, and bounded in size.

use std::borrow::Cow;

use base64::Engine;

use crate::protocol::SENSITIVE_HEADERS;
use crate::span::model::Span;

/// Replacement text for redacted values.
pub const REDACTED: &str = "REDACTED";

/// Prefix of the attributes holding captured request headers.
pub const REQUEST_HEADER_PREFIX: &str = "http.request.header.";
const RESPONSE_HEADER_PREFIX: &str = "http.response.header.";

/// Largest bearer token decoded (bytes).
pub const MAX_JWT_LEN: usize = 8 * 1024;

/// Whether a header name (any case) is a credential header.
pub fn is_sensitive_header(name: &str) -> bool {
    SENSITIVE_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// Whether an attribute key holds a credential header's value.
pub fn is_sensitive_key(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    [REQUEST_HEADER_PREFIX, RESPONSE_HEADER_PREFIX]
        .iter()
        .any(|p| lower.strip_prefix(p).is_some_and(is_sensitive_header))
}

/// The raw value of a request header captured on the span (private first).
pub fn request_header<'a>(span: &'a Span, key: &str) -> Option<&'a str> {
    span.private.get_str(key).or_else(|| span.attributes.get_str(key))
}

/// One cookie's value from a Cookie header (`a=1; b=2`); quotes stripped.
pub fn cookie<'a>(header: &'a str, name: &str) -> Option<&'a str> {
    header.split(';').find_map(|pair| {
        let (k, v) = pair.trim().split_once('=')?;
        (k.trim() == name).then(|| {
            let v = v.trim();
            v.strip_prefix('"').and_then(|x| x.strip_suffix('"')).unwrap_or(v)
        })
    })
}

/// A claim of the JWT in a `Bearer` Authorization value (payload
/// base64url-decoded, signature NOT verified). `claim` is a top-level key,
/// or a dotted path into nested objects when no top-level key has that name.
/// Strings are returned as is, numbers and booleans as text; other JSON
/// values and malformed tokens give `None`.
pub fn jwt_claim(authorization: &str, claim: &str) -> Option<String> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = token.trim();
    if token.len() > MAX_JWT_LEN {
        return None;
    }
    let mut parts = token.split('.');
    let (_header, payload, _sig) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT.decode(payload).ok()?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let value = json.get(claim).or_else(|| claim.split('.').try_fold(&json, |v, k| v.get(k)))?;
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        serde_json::Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A query parameter's (percent-decoded) value from a raw query string.
pub fn query_param<'a>(query: &'a str, name: &str) -> Option<Cow<'a, str>> {
    let query = query.strip_prefix('?').unwrap_or(query);
    form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == name).map(|(_, v)| v)
}

/// Attribute keys of the credential request headers.
const SENSITIVE_REQUEST_KEYS: [(&str, &str); 4] = [
    ("authorization", "http.request.header.authorization"),
    ("proxy-authorization", "http.request.header.proxy-authorization"),
    ("cookie", "http.request.header.cookie"),
    ("set-cookie", "http.request.header.set-cookie"),
];

/// Whether `value` would export a credential header of `span`: it contains a
/// raw sensitive header value, or the credential after the scheme word.
pub fn leaks_credential(span: &Span, value: &str) -> bool {
    // Most spans carry none of those headers: one pass over the keys (most
    // fail the prefix test) settles it before the per-header lookups.
    let sensitive = |k: &str| k.strip_prefix(REQUEST_HEADER_PREFIX).is_some_and(|h| SENSITIVE_HEADERS.contains(&h));
    if !span.private.iter().chain(span.attributes.iter()).any(|(k, _)| sensitive(k)) {
        return false;
    }
    SENSITIVE_REQUEST_KEYS.iter().any(|(h, key)| {
        let Some(raw) = request_header(span, key).map(str::trim).filter(|r| !r.is_empty()) else {
            return false;
        };
        let credential = match raw.split_once(' ') {
            Some((_, c)) if h.ends_with("authorization") => c.trim(),
            _ => raw,
        };
        value.contains(raw) || (credential.len() >= 8 && value.contains(credential))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::model::{Attributes, ProcessResource, SpanKind, SpanStatus};
    use std::sync::Arc;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(s)
    }

    fn bearer(payload: &str) -> String {
        format!("Bearer {}.{}.c2ln", b64(r#"{"alg":"HS256"}"#), b64(payload))
    }

    #[test]
    fn sensitive_key_table_matches_the_protocol_list() {
        for (h, key) in SENSITIVE_REQUEST_KEYS {
            assert!(SENSITIVE_HEADERS.contains(&h));
            assert_eq!(key, format!("{REQUEST_HEADER_PREFIX}{h}"));
        }
        assert_eq!(SENSITIVE_REQUEST_KEYS.len(), SENSITIVE_HEADERS.len());
    }

    #[test]
    fn sensitive_headers_and_keys() {
        assert!(is_sensitive_header("Authorization"));
        assert!(is_sensitive_header("set-cookie"));
        assert!(!is_sensitive_header("x-tenant-id"));
        assert!(is_sensitive_key("http.request.header.cookie"));
        assert!(is_sensitive_key("HTTP.REQUEST.HEADER.Proxy-Authorization"));
        assert!(is_sensitive_key("http.response.header.set-cookie"));
        assert!(!is_sensitive_key("http.request.header.x-tenant-id"));
        assert!(!is_sensitive_key("cookie"));
    }

    #[test]
    fn cookie_values_by_name() {
        let h = "theme=dark; sid=\"abc123\"; lang=en";
        assert_eq!(cookie(h, "sid"), Some("abc123"));
        assert_eq!(cookie(h, "lang"), Some("en"));
        assert_eq!(cookie(h, "missing"), None);
        assert_eq!(cookie("garbage", "garbage"), None);
    }

    #[test]
    fn jwt_claims_are_decoded_not_verified() {
        let auth = bearer(r#"{"sub":"user-42","tenant":{"id":"acme"},"n":7,"admin":true,"roles":["a"]}"#);
        assert_eq!(jwt_claim(&auth, "sub").as_deref(), Some("user-42"));
        assert_eq!(jwt_claim(&auth, "tenant.id").as_deref(), Some("acme"));
        assert_eq!(jwt_claim(&auth, "n").as_deref(), Some("7"));
        assert_eq!(jwt_claim(&auth, "admin").as_deref(), Some("true"));
        assert_eq!(jwt_claim(&auth, "roles"), None);
        assert_eq!(jwt_claim(&auth, "missing"), None);
        let dotted = bearer(r#"{"https://x.io/tenant":"t1"}"#);
        assert_eq!(jwt_claim(&dotted, "https://x.io/tenant").as_deref(), Some("t1"));
    }

    #[test]
    fn malformed_tokens_give_none() {
        for bad in
            ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a.b", "Bearer a.!!!.c", "Bearer a.b.c.d", "", "Bearer e30.e30"]
        {
            assert_eq!(jwt_claim(bad, "sub"), None, "{bad}");
        }
        let huge = format!("Bearer a.{}.c", "A".repeat(MAX_JWT_LEN));
        assert_eq!(jwt_claim(&huge, "sub"), None);
        let not_object = bearer("[1,2]");
        assert_eq!(jwt_claim(&not_object, "sub"), None);
    }

    #[test]
    fn query_params_are_percent_decoded() {
        assert_eq!(query_param("a=1&tenant=acme%20corp", "tenant").as_deref(), Some("acme corp"));
        assert_eq!(query_param("?debug", "debug").as_deref(), Some(""));
        assert_eq!(query_param("a=1", "b"), None);
    }

    #[test]
    fn leak_check_catches_raw_credentials_only() {
        let mut private = Attributes::new();
        private.set("http.request.header.authorization", "Bearer abcdefghijklmnop");
        private.set("http.request.header.cookie", "sid=s3cr3t-session");
        let span = Span {
            trace_id: [0; 16],
            span_id: [0; 8],
            parent_span_id: [0; 8],
            trace_state: String::new(),
            trace_flags: 0,
            name: Default::default(),
            kind: SpanKind::Server,
            start_unix_ns: 0,
            end_unix_ns: 0,
            status: SpanStatus::default(),
            attributes: Attributes::new(),
            private,
            events: Vec::new(),
            resource: Arc::new(ProcessResource::default()),
            tid: 0,
        };
        assert!(leaks_credential(&span, "abcdefghijklmnop"));
        assert!(leaks_credential(&span, "x Bearer abcdefghijklmnop"));
        assert!(leaks_credential(&span, "sid=s3cr3t-session"));
        assert!(!leaks_credential(&span, "s3cr3t-session"), "one cookie value may be extracted");
        assert!(!leaks_credential(&span, "user-42"));
    }
}
