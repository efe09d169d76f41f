//! A small JSON form of spans for `kspan rules test` and the golden tests.
//!
//! Input: `{"name": "GET /x", "kind": "server", "duration_ms": 12.5,
//! "status": "error", "attributes": {..}, "private": {..}, "resource": {..},
//! "trace_id": "32 hex digits", "parent_span_id": "16 hex", "tracestate": ".."}`;
//! only `attributes` values that are strings, integers, floats or booleans.
//! Output never contains private attributes (they are never exported).

use std::sync::Arc;

use serde_json::{Map, Value, json};

use super::{RuleOutcome, RulesError};
use crate::sample::Decision;
use crate::span::model::{AttrValue, Attributes, ProcessResource, Span, SpanKind, SpanStatus, StatusCode, hex};

/// Trace id used when the input gives none (the W3C example id).
pub const DEFAULT_TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";

fn field_err(field: &'static str, problem: impl Into<String>) -> RulesError {
    RulesError::SpanField { field, problem: problem.into() }
}

fn attrs(v: Option<&Value>, field: &'static str) -> Result<Attributes, RulesError> {
    let mut out = Attributes::new();
    let Some(v) = v else { return Ok(out) };
    let obj = v.as_object().ok_or_else(|| field_err(field, "expected an object"))?;
    for (k, v) in obj {
        let value = match v {
            Value::String(s) => AttrValue::from(s.as_str()),
            Value::Bool(b) => AttrValue::Bool(*b),
            Value::Number(n) => match n.as_i64() {
                Some(i) => AttrValue::Int(i),
                None => {
                    AttrValue::F64(n.as_f64().ok_or_else(|| field_err(field, format!("`{k}`: number out of range")))?)
                }
            },
            _ => {
                return Err(field_err(field, format!("`{k}`: values must be strings, numbers or booleans")));
            }
        };
        out.set(k.clone(), value);
    }
    Ok(out)
}

fn hex_bytes<const N: usize>(s: &str, field: &'static str) -> Result<[u8; N], RulesError> {
    let bad = || field_err(field, format!("expected {} hex digits", N * 2));
    if s.len() != N * 2 || !s.is_ascii() {
        return Err(bad());
    }
    let mut out = [0u8; N];
    for (i, b) in out.iter_mut().enumerate() {
        let pair = s.get(i * 2..i * 2 + 2).ok_or_else(bad)?;
        *b = u8::from_str_radix(pair, 16).map_err(|_| bad())?;
    }
    Ok(out)
}

/// Parses one span object.
pub fn span_from_value(v: &Value) -> Result<Span, RulesError> {
    let obj = v.as_object().ok_or_else(|| field_err("span", "expected a JSON object"))?;
    let kind = match obj.get("kind") {
        None => SpanKind::Server,
        Some(Value::String(k)) if k == "server" => SpanKind::Server,
        Some(Value::String(k)) if k == "client" => SpanKind::Client,
        Some(other) => {
            return Err(field_err("kind", format!("expected \"server\" or \"client\", got {other}")));
        }
    };
    let status = match obj.get("status") {
        None => SpanStatus::default(),
        Some(Value::String(s)) if s == "unset" => SpanStatus::default(),
        Some(Value::String(s)) if s == "ok" => SpanStatus { code: StatusCode::Ok, message: String::new() },
        Some(Value::String(s)) if s == "error" => SpanStatus::error(""),
        Some(other) => {
            return Err(field_err("status", format!("expected \"unset\", \"ok\" or \"error\", got {other}")));
        }
    };
    let duration_ms = match obj.get("duration_ms") {
        None => 0.0,
        Some(d) => d
            .as_f64()
            .filter(|d| d.is_finite() && *d >= 0.0)
            .ok_or_else(|| field_err("duration_ms", "expected a number >= 0"))?,
    };
    let trace_id =
        hex_bytes::<16>(obj.get("trace_id").and_then(Value::as_str).unwrap_or(DEFAULT_TRACE_ID), "trace_id")?;
    let parent_span_id = match obj.get("parent_span_id").and_then(Value::as_str) {
        Some(p) => hex_bytes::<8>(p, "parent_span_id")?,
        None => [0; 8],
    };
    let start = 1_700_000_000_000_000_000u64;
    Ok(Span {
        trace_id,
        span_id: [0x5a; 8],
        parent_span_id,
        trace_state: obj.get("tracestate").and_then(Value::as_str).unwrap_or("").to_owned(),
        trace_flags: 1,
        name: obj.get("name").and_then(Value::as_str).unwrap_or("").into(),
        kind,
        start_unix_ns: start,
        end_unix_ns: start + (duration_ms * 1e6).round() as u64,
        status,
        attributes: attrs(obj.get("attributes"), "attributes")?,
        private: attrs(obj.get("private"), "private")?,
        events: Vec::new(),
        resource: Arc::new(ProcessResource { pid: 0, attributes: attrs(obj.get("resource"), "resource")? }),
        tid: 0,
    })
}

/// Parses a span object from JSON text.
pub fn span_from_json(text: &str) -> Result<Span, RulesError> {
    span_from_value(&serde_json::from_str(text)?)
}

fn attr_json(v: &AttrValue) -> Value {
    match v {
        AttrValue::Bool(b) => json!(b),
        AttrValue::Int(i) => json!(i),
        AttrValue::F64(f) => json!(f),
        AttrValue::Str(s) => json!(s),
    }
}

/// The exported view of a span after rules (and sampling, when decided).
pub fn span_to_value(span: &Span, outcome: &RuleOutcome, decision: Option<&Decision>) -> Value {
    let attributes: Map<String, Value> = span.attributes.iter().map(|(k, v)| (k.to_owned(), attr_json(v))).collect();
    let mut out = json!({
        "name": span.name,
        "kind": match span.kind { SpanKind::Server => "server", SpanKind::Client => "client" },
        "attributes": attributes,
        "fired": outcome.fired.iter().map(|s| s.as_ref()).collect::<Vec<_>>(),
    });
    if let (Some(d), Some(o)) = (decision, out.as_object_mut()) {
        o.insert(
            "sampling".into(),
            json!({
                "keep": d.keep,
                "reason": d.reason.as_str(),
                "rate": d.rate,
                "tracestate": if d.keep { Value::from(span.trace_state.clone()) } else { Value::Null },
                "trace_id": hex(&span.trace_id),
            }),
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_span() {
        let s = span_from_json(
            r#"{"name":"GET /a","kind":"client","duration_ms":1.5,"status":"error",
                "attributes":{"a":"x","n":3,"f":0.5,"b":true},"private":{"url.query":"q=1"},
                "resource":{"service.name":"svc"},"trace_id":"000102030405060708090a0b0c0d0e0f",
                "parent_span_id":"0102030405060708","tracestate":"ot=rv:00000000000001"}"#,
        )
        .unwrap();
        assert_eq!(s.kind, SpanKind::Client);
        assert_eq!(s.duration_ns(), 1_500_000);
        assert_eq!(s.status.code, StatusCode::Error);
        assert_eq!(s.attributes.get("n"), Some(&AttrValue::Int(3)));
        assert_eq!(s.attributes.get("f"), Some(&AttrValue::F64(0.5)));
        assert_eq!(s.private.get_str("url.query"), Some("q=1"));
        assert_eq!(s.resource.attributes.get_str("service.name"), Some("svc"));
        assert_eq!(s.trace_id[15], 0x0f);
        assert!(!s.is_root());
    }

    #[test]
    fn rejects_bad_fields_by_name() {
        for (json, field) in [
            (r#"{"kind":"producer"}"#, "kind"),
            (r#"{"kind":3}"#, "kind"),
            (r#"{"status":"failed"}"#, "status"),
            (r#"{"trace_id":"xyz"}"#, "trace_id"),
            (r#"{"attributes":{"a":[1]}}"#, "attributes"),
            (r#"{"duration_ms":-1}"#, "duration_ms"),
            (r#"[1]"#, "span"),
        ] {
            let err = span_from_json(json).unwrap_err();
            assert!(matches!(err, RulesError::SpanField { field: f, .. } if f == field), "{json}: {err}");
        }
        assert!(matches!(span_from_json("{"), Err(RulesError::SpanJson(_))));
    }

    #[test]
    fn output_never_contains_private_attributes() {
        let s = span_from_json(r#"{"attributes":{"a":"x"},"private":{"http.request.header.cookie":"sid=1"}}"#).unwrap();
        let v = span_to_value(&s, &RuleOutcome::default(), None);
        assert!(!v.to_string().contains("sid=1"));
        assert_eq!(v["attributes"]["a"], "x");
    }
}
