//! kspan spans -> the official OTLP protobuf types.
//!
//! Guarantees:
//! - One `ResourceSpans` per traced process (grouped by the span's
//!   `Arc<ProcessResource>` identity, in first-seen order), each with one
//!   `ScopeSpans` whose scope is `kspan` and the agent version.
//! - Resource attributes: the process's own, plus the configured extra ones
//!   (OTEL_RESOURCE_ATTRIBUTES, config) for keys the process does not set.
//! - Only `Span::attributes` are encoded; `Span::private` never is.
//! - A root span has an empty `parent_span_id`; `flags` carries the W3C trace
//!   flags in its low 8 bits.

use std::collections::HashMap;
use std::sync::Arc;

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{self as pb, ResourceSpans, ScopeSpans};

use crate::span::model::{AttrValue, Attributes, ProcessResource, Span, SpanKind, StatusCode};

/// Instrumentation scope name of every kspan span.
pub const SCOPE_NAME: &str = "kspan";

/// Builds export requests; holds what is shared by every request.
#[derive(Clone, Debug)]
pub struct Encoder {
    scope: InstrumentationScope,
    extra_resource: Vec<KeyValue>,
}

impl Encoder {
    /// `extra_resource`: attributes added to every Resource (process wins).
    pub fn new(extra_resource: &[(String, String)]) -> Self {
        Self {
            scope: InstrumentationScope {
                name: SCOPE_NAME.to_owned(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                ..Default::default()
            },
            extra_resource: extra_resource.iter().map(|(k, v)| key_value(k, &AttrValue::from(v.as_str()))).collect(),
        }
    }

    /// One request for `spans`, grouped per process.
    pub fn request(&self, spans: &[Arc<Span>]) -> ExportTraceServiceRequest {
        let mut resource_spans: Vec<ResourceSpans> = Vec::new();
        let mut index: HashMap<*const ProcessResource, usize> = HashMap::new();
        for span in spans {
            let key = Arc::as_ptr(&span.resource);
            let i = *index.entry(key).or_insert_with(|| {
                resource_spans.push(ResourceSpans {
                    resource: Some(self.resource(&span.resource)),
                    scope_spans: vec![ScopeSpans { scope: Some(self.scope.clone()), ..Default::default() }],
                    ..Default::default()
                });
                resource_spans.len() - 1
            });
            if let Some(scope) = resource_spans.get_mut(i).and_then(|rs| rs.scope_spans.first_mut()) {
                scope.spans.push(encode_span(span));
            }
        }
        ExportTraceServiceRequest { resource_spans }
    }

    fn resource(&self, process: &ProcessResource) -> Resource {
        let mut attributes = attributes(&process.attributes);
        for extra in &self.extra_resource {
            if process.attributes.get(&extra.key).is_none() {
                attributes.push(extra.clone());
            }
        }
        Resource { attributes, ..Default::default() }
    }
}

/// One span in its protobuf form (exported attributes only).
pub fn encode_span(span: &Span) -> pb::Span {
    let kind = match span.kind {
        SpanKind::Server => pb::span::SpanKind::Server,
        SpanKind::Client => pb::span::SpanKind::Client,
    };
    let code = match span.status.code {
        StatusCode::Unset => pb::status::StatusCode::Unset,
        StatusCode::Ok => pb::status::StatusCode::Ok,
        StatusCode::Error => pb::status::StatusCode::Error,
    };
    let status = (span.status.code != StatusCode::Unset || !span.status.message.is_empty())
        .then(|| pb::Status { message: span.status.message.clone(), code: code as i32 });
    pb::Span {
        trace_id: span.trace_id.to_vec(),
        span_id: span.span_id.to_vec(),
        trace_state: span.trace_state.clone(),
        parent_span_id: if span.is_root() { Vec::new() } else { span.parent_span_id.to_vec() },
        flags: u32::from(span.trace_flags),
        name: span.name.to_string(),
        kind: kind as i32,
        start_time_unix_nano: span.start_unix_ns,
        end_time_unix_nano: span.end_unix_ns,
        attributes: attributes(&span.attributes),
        events: span
            .events
            .iter()
            .map(|e| pb::span::Event {
                time_unix_nano: e.time_unix_ns,
                name: e.name.clone(),
                attributes: attributes(&e.attributes),
                dropped_attributes_count: 0,
            })
            .collect(),
        status,
        ..Default::default()
    }
}

fn attributes(attrs: &Attributes) -> Vec<KeyValue> {
    attrs.iter().map(|(k, v)| key_value(k, v)).collect()
}

fn key_value(key: &str, value: &AttrValue) -> KeyValue {
    let value = match value {
        AttrValue::Bool(b) => any_value::Value::BoolValue(*b),
        AttrValue::Int(i) => any_value::Value::IntValue(*i),
        AttrValue::F64(f) => any_value::Value::DoubleValue(*f),
        AttrValue::Str(s) => any_value::Value::StringValue(s.to_string()),
    };
    KeyValue { key: key.to_owned(), value: Some(AnyValue { value: Some(value) }), ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::testutil::{process, span_for};
    use crate::span::model::{SpanEvent, SpanStatus};
    use prost::Message;

    fn value_of<'a>(kvs: &'a [KeyValue], key: &str) -> Option<&'a any_value::Value> {
        kvs.iter().find(|kv| kv.key == key).and_then(|kv| kv.value.as_ref()).and_then(|v| v.value.as_ref())
    }

    #[test]
    fn groups_spans_by_process_in_first_seen_order() {
        let a = process(100, "checkout");
        let b = process(200, "payments");
        let spans: Vec<Arc<Span>> =
            [(&a, 1), (&b, 2), (&a, 3), (&b, 4), (&a, 5)].into_iter().map(|(p, n)| Arc::new(span_for(p, n))).collect();
        let req = Encoder::new(&[]).request(&spans);
        assert_eq!(req.resource_spans.len(), 2);
        let ids: Vec<Vec<u8>> = req.resource_spans[0].scope_spans[0].spans.iter().map(|s| s.span_id.clone()).collect();
        assert_eq!(ids, [spans[0].span_id.to_vec(), spans[2].span_id.to_vec(), spans[4].span_id.to_vec()]);
        let res_b = req.resource_spans[1].resource.as_ref().expect("resource");
        assert_eq!(
            value_of(&res_b.attributes, "service.name"),
            Some(&any_value::Value::StringValue("payments".into()))
        );
        assert_eq!(value_of(&res_b.attributes, "process.pid"), Some(&any_value::Value::IntValue(200)));
        for rs in &req.resource_spans {
            assert_eq!(rs.scope_spans.len(), 1);
            let scope = rs.scope_spans[0].scope.as_ref().expect("scope");
            assert_eq!(scope.name, "kspan");
            assert_eq!(scope.version, env!("CARGO_PKG_VERSION"));
        }
    }

    #[test]
    fn same_pid_in_two_resource_objects_stays_separate() {
        // A process re-enriched with new attributes gets a new Arc; never merge
        // its spans under the old attributes.
        let old = process(7, "v1");
        let new = process(7, "v2");
        let req = Encoder::new(&[]).request(&[Arc::new(span_for(&old, 1)), Arc::new(span_for(&new, 2))]);
        assert_eq!(req.resource_spans.len(), 2);
    }

    #[test]
    fn ids_times_kind_status_and_flags_round_trip() {
        let p = process(1, "svc");
        let mut s = span_for(&p, 9);
        s.trace_flags = 1;
        s.trace_state = "vendor=x".into();
        s.kind = SpanKind::Client;
        s.status = SpanStatus::error("503 from upstream");
        s.events.push(SpanEvent {
            name: "exception".into(),
            time_unix_ns: s.start_unix_ns + 1,
            attributes: Attributes::new(),
        });
        let pb = encode_span(&s);
        assert_eq!(pb.trace_id, s.trace_id);
        assert_eq!(pb.span_id, s.span_id);
        assert_eq!(pb.parent_span_id, s.parent_span_id);
        assert_eq!(pb.trace_state, "vendor=x");
        assert_eq!(pb.flags, 1);
        assert_eq!(pb.kind, pb::span::SpanKind::Client as i32);
        assert_eq!((pb.start_time_unix_nano, pb.end_time_unix_nano), (s.start_unix_ns, s.end_unix_ns));
        let status = pb.status.expect("status");
        assert_eq!(status.code, pb::status::StatusCode::Error as i32);
        assert_eq!(status.message, "503 from upstream");
        assert_eq!(pb.events.len(), 1);
        assert_eq!(pb.events[0].name, "exception");
    }

    #[test]
    fn root_span_has_empty_parent_and_unset_status_is_omitted() {
        let p = process(1, "svc");
        let mut s = span_for(&p, 3);
        s.parent_span_id = [0; 8];
        let pb = encode_span(&s);
        assert!(pb.parent_span_id.is_empty());
        assert!(pb.status.is_none());
    }

    #[test]
    fn attribute_types_map_to_any_value_variants() {
        let p = process(1, "svc");
        let mut s = span_for(&p, 1);
        s.attributes.set("b", true);
        s.attributes.set("i", -5i64);
        s.attributes.set("f", AttrValue::F64(0.25));
        s.attributes.set("s", "x");
        let pb = encode_span(&s);
        assert_eq!(value_of(&pb.attributes, "b"), Some(&any_value::Value::BoolValue(true)));
        assert_eq!(value_of(&pb.attributes, "i"), Some(&any_value::Value::IntValue(-5)));
        assert_eq!(value_of(&pb.attributes, "f"), Some(&any_value::Value::DoubleValue(0.25)));
        assert_eq!(value_of(&pb.attributes, "s"), Some(&any_value::Value::StringValue("x".into())));
    }

    #[test]
    fn private_attributes_are_never_encoded() {
        let p = process(1, "svc");
        let mut s = span_for(&p, 1);
        s.private.set("db.password.candidate", "hunter2-secret");
        let req = Encoder::new(&[]).request(&[Arc::new(s)]);
        let bytes = req.encode_to_vec();
        assert!(!bytes.windows(14).any(|w| w == b"hunter2-secret"));
        assert!(!bytes.windows(21).any(|w| w == b"db.password.candidate"));
    }

    #[test]
    fn extra_resource_attributes_fill_but_never_override() {
        let p = process(1, "real-name");
        let extra = [
            ("service.name".to_owned(), "env-name".to_owned()),
            ("deployment.environment".to_owned(), "prod".to_owned()),
        ];
        let req = Encoder::new(&extra).request(&[Arc::new(span_for(&p, 1))]);
        let attrs = &req.resource_spans[0].resource.as_ref().expect("resource").attributes;
        assert_eq!(value_of(attrs, "service.name"), Some(&any_value::Value::StringValue("real-name".into())));
        assert_eq!(value_of(attrs, "deployment.environment"), Some(&any_value::Value::StringValue("prod".into())));
    }

    #[test]
    fn encoded_request_decodes_back() {
        let p = process(1, "svc");
        let spans: Vec<Arc<Span>> = (0..50).map(|n| Arc::new(span_for(&p, n))).collect();
        let req = Encoder::new(&[]).request(&spans);
        let back = ExportTraceServiceRequest::decode(req.encode_to_vec().as_slice()).expect("decode");
        assert_eq!(back, req);
        assert_eq!(back.resource_spans[0].scope_spans[0].spans.len(), 50);
    }
}
