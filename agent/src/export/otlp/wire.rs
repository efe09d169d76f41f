//! kspan spans -> the protobuf bytes of an OTLP `ExportTraceServiceRequest`,
//! written straight from the spans with prost's wire primitives.
//!
//! Why not encode the `opentelemetry-proto` types: they own every string, so
//! building them copies each attribute key and value into a fresh allocation
//! (and frees it after the send), and prost recomputes nested message
//! lengths at every level. That was most of the export stage's CPU. This
//! writer borrows from the spans, computes each span's length once and
//! allocates only the output buffer.
//!
//! Guarantees:
//! - The bytes are exactly those of `Encoder::request(spans).encode_to_vec()`
//!   (same fields, in tag order as prost writes them, same default-value
//!   omissions): tested against
//!   the official types for every attribute type, status, events and
//!   resource grouping; that function stays the reference.
//! - Field numbers are those of the official `.proto` files
//!   (opentelemetry-proto 0.33: trace/v1, common/v1, resource/v1).

use std::collections::HashMap;
use std::sync::Arc;

use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};

use crate::span::model::{AttrValue, Attributes, ProcessResource, Span, SpanKind, StatusCode};

/// Length of a length-delimited field with a `len`-byte body.
fn ld_len(tag: u32, len: usize) -> usize {
    key_len(tag) + encoded_len_varint(len as u64) + len
}

fn put_ld_header(tag: u32, len: usize, buf: &mut Vec<u8>) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(len as u64, buf);
}

/// A proto3 string/bytes field: omitted when empty.
fn bytes_len(tag: u32, b: &[u8]) -> usize {
    if b.is_empty() { 0 } else { ld_len(tag, b.len()) }
}

fn put_bytes(tag: u32, b: &[u8], buf: &mut Vec<u8>) {
    if !b.is_empty() {
        put_ld_header(tag, b.len(), buf);
        buf.extend_from_slice(b);
    }
}

/// A proto3 fixed64 field: omitted when zero.
fn fixed64_len(tag: u32, v: u64) -> usize {
    if v == 0 { 0 } else { key_len(tag) + 8 }
}

fn put_fixed64(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.extend_from_slice(&v.to_le_bytes());
    }
}

/// A proto3 varint field (enum, int32): omitted when zero.
fn varint_len(tag: u32, v: u64) -> usize {
    if v == 0 { 0 } else { key_len(tag) + encoded_len_varint(v) }
}

fn put_varint(tag: u32, v: u64, buf: &mut Vec<u8>) {
    if v != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(v, buf);
    }
}

/// `AnyValue` body (a oneof: the set member is always written).
fn any_value_len(v: &AttrValue) -> usize {
    match v {
        AttrValue::Str(s) => ld_len(1, s.len()),
        AttrValue::Bool(_) => key_len(2) + 1,
        AttrValue::Int(i) => key_len(3) + encoded_len_varint(*i as u64),
        AttrValue::F64(_) => key_len(4) + 8,
    }
}

fn put_any_value(v: &AttrValue, buf: &mut Vec<u8>) {
    match v {
        AttrValue::Str(s) => {
            put_ld_header(1, s.len(), buf);
            buf.extend_from_slice(s.as_bytes());
        }
        AttrValue::Bool(b) => {
            encode_key(2, WireType::Varint, buf);
            buf.push(u8::from(*b));
        }
        AttrValue::Int(i) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(*i as u64, buf);
        }
        AttrValue::F64(f) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.extend_from_slice(&f.to_le_bytes());
        }
    }
}

/// `KeyValue` body: key (1), value (2, always present).
fn key_value_len(k: &str, v: &AttrValue) -> usize {
    bytes_len(1, k.as_bytes()) + ld_len(2, any_value_len(v))
}

fn put_key_value(tag: u32, k: &str, v: &AttrValue, buf: &mut Vec<u8>) {
    put_ld_header(tag, key_value_len(k, v), buf);
    put_bytes(1, k.as_bytes(), buf);
    put_ld_header(2, any_value_len(v), buf);
    put_any_value(v, buf);
}

/// A repeated `KeyValue` field.
fn attributes_len<'a>(tag: u32, attrs: impl Iterator<Item = (&'a str, &'a AttrValue)>) -> usize {
    attrs.map(|(k, v)| ld_len(tag, key_value_len(k, v))).sum()
}

fn put_attributes<'a>(tag: u32, attrs: impl Iterator<Item = (&'a str, &'a AttrValue)>, buf: &mut Vec<u8>) {
    for (k, v) in attrs {
        put_key_value(tag, k, v, buf);
    }
}

fn kind_code(kind: SpanKind) -> u64 {
    use opentelemetry_proto::tonic::trace::v1::span::SpanKind as Pb;
    match kind {
        SpanKind::Server => Pb::Server as u64,
        SpanKind::Client => Pb::Client as u64,
    }
}

fn status_code(code: StatusCode) -> u64 {
    use opentelemetry_proto::tonic::trace::v1::status::StatusCode as Pb;
    match code {
        StatusCode::Unset => Pb::Unset as u64,
        StatusCode::Ok => Pb::Ok as u64,
        StatusCode::Error => Pb::Error as u64,
    }
}

/// `Status` body, when the span has one (as `encode::encode_span` decides).
fn status_len(span: &Span) -> Option<usize> {
    (span.status.code != StatusCode::Unset || !span.status.message.is_empty())
        .then(|| bytes_len(2, span.status.message.as_bytes()) + varint_len(3, status_code(span.status.code)))
}

fn parent_id(span: &Span) -> &[u8] {
    if span.is_root() { &[] } else { &span.parent_span_id }
}

/// `Span` body length.
pub fn span_len(span: &Span) -> usize {
    let events: usize = span
        .events
        .iter()
        .map(|e| {
            let body = fixed64_len(1, e.time_unix_ns)
                + bytes_len(2, e.name.as_bytes())
                + attributes_len(3, e.attributes.iter());
            ld_len(11, body)
        })
        .sum();
    bytes_len(1, &span.trace_id)
        + bytes_len(2, &span.span_id)
        + bytes_len(3, span.trace_state.as_bytes())
        + bytes_len(4, parent_id(span))
        + if span.trace_flags == 0 { 0 } else { key_len(16) + 4 }
        + bytes_len(5, span.name.as_bytes())
        + varint_len(6, kind_code(span.kind))
        + fixed64_len(7, span.start_unix_ns)
        + fixed64_len(8, span.end_unix_ns)
        + attributes_len(9, span.attributes.iter())
        + events
        + status_len(span).map_or(0, |n| ld_len(15, n))
}

/// Writes the `Span` body (its header is the caller's); `len` is [`span_len`].
fn put_span(span: &Span, buf: &mut Vec<u8>) {
    put_bytes(1, &span.trace_id, buf);
    put_bytes(2, &span.span_id, buf);
    put_bytes(3, span.trace_state.as_bytes(), buf);
    put_bytes(4, parent_id(span), buf);
    put_bytes(5, span.name.as_bytes(), buf);
    put_varint(6, kind_code(span.kind), buf);
    put_fixed64(7, span.start_unix_ns, buf);
    put_fixed64(8, span.end_unix_ns, buf);
    put_attributes(9, span.attributes.iter(), buf);
    for e in &span.events {
        let body =
            fixed64_len(1, e.time_unix_ns) + bytes_len(2, e.name.as_bytes()) + attributes_len(3, e.attributes.iter());
        put_ld_header(11, body, buf);
        put_fixed64(1, e.time_unix_ns, buf);
        put_bytes(2, e.name.as_bytes(), buf);
        put_attributes(3, e.attributes.iter(), buf);
    }
    if let Some(n) = status_len(span) {
        put_ld_header(15, n, buf);
        put_bytes(2, span.status.message.as_bytes(), buf);
        put_varint(3, status_code(span.status.code), buf);
    }
    // prost writes fields in tag order: flags (16) last.
    if span.trace_flags != 0 {
        encode_key(16, WireType::ThirtyTwoBit, buf);
        buf.extend_from_slice(&u32::from(span.trace_flags).to_le_bytes());
    }
}

/// What every request repeats: the scope and the extra resource attributes.
#[derive(Clone, Debug)]
pub struct WireEncoder {
    scope_name: String,
    scope_version: String,
    extra_resource: Vec<(String, AttrValue)>,
}

/// Spans of one process in a batch: indices into the batch and body lengths.
struct Group<'a> {
    process: &'a ProcessResource,
    spans: Vec<(usize, usize)>,
}

impl WireEncoder {
    pub fn new(scope_name: &str, scope_version: &str, extra_resource: &[(String, String)]) -> Self {
        Self {
            scope_name: scope_name.to_owned(),
            scope_version: scope_version.to_owned(),
            extra_resource: extra_resource.iter().map(|(k, v)| (k.clone(), AttrValue::from(v.as_str()))).collect(),
        }
    }

    /// Resource attributes: the process's own, then the extra ones it lacks.
    fn resource_attrs<'a>(&'a self, attrs: &'a Attributes) -> impl Iterator<Item = (&'a str, &'a AttrValue)> {
        attrs
            .iter()
            .chain(self.extra_resource.iter().filter(|(k, _)| attrs.get(k).is_none()).map(|(k, v)| (k.as_str(), v)))
    }

    fn scope_len(&self) -> usize {
        bytes_len(1, self.scope_name.as_bytes()) + bytes_len(2, self.scope_version.as_bytes())
    }

    /// The encoded request for `spans`, one `ResourceSpans` per process in
    /// first-seen order.
    pub fn encode(&self, spans: &[Arc<Span>]) -> Vec<u8> {
        let mut groups: Vec<Group<'_>> = Vec::new();
        let mut index: HashMap<*const ProcessResource, usize> = HashMap::new();
        for (i, span) in spans.iter().enumerate() {
            let g = *index.entry(Arc::as_ptr(&span.resource)).or_insert_with(|| {
                groups.push(Group { process: &span.resource, spans: Vec::new() });
                groups.len() - 1
            });
            if let Some(group) = groups.get_mut(g) {
                group.spans.push((i, span_len(span)));
            }
        }
        let scope_len = self.scope_len();
        // (resource body, scope_spans body, resource_spans body) per group.
        let lens: Vec<(usize, usize, usize)> = groups
            .iter()
            .map(|g| {
                let resource = attributes_len(1, self.resource_attrs(&g.process.attributes));
                let scope_spans = ld_len(1, scope_len) + g.spans.iter().map(|&(_, n)| ld_len(2, n)).sum::<usize>();
                (resource, scope_spans, ld_len(1, resource) + ld_len(2, scope_spans))
            })
            .collect();
        let total: usize = lens.iter().map(|&(_, _, rs)| ld_len(1, rs)).sum();
        let mut buf = Vec::with_capacity(total);
        for (g, &(resource, scope_spans, resource_spans)) in groups.iter().zip(&lens) {
            put_ld_header(1, resource_spans, &mut buf);
            put_ld_header(1, resource, &mut buf);
            put_attributes(1, self.resource_attrs(&g.process.attributes), &mut buf);
            put_ld_header(2, scope_spans, &mut buf);
            put_ld_header(1, scope_len, &mut buf);
            put_bytes(1, self.scope_name.as_bytes(), &mut buf);
            put_bytes(2, self.scope_version.as_bytes(), &mut buf);
            for &(i, n) in &g.spans {
                if let Some(span) = spans.get(i) {
                    put_ld_header(2, n, &mut buf);
                    put_span(span, &mut buf);
                }
            }
        }
        buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::otlp::encode::{Encoder, SCOPE_NAME};
    use crate::export::testutil::{process, span_for};
    use crate::span::model::{SpanEvent, SpanStatus};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use prost::Message;

    fn both(spans: &[Arc<Span>], extra: &[(String, String)]) -> (Vec<u8>, Vec<u8>) {
        let reference = Encoder::new(extra).request(spans).encode_to_vec();
        let direct = WireEncoder::new(SCOPE_NAME, env!("CARGO_PKG_VERSION"), extra).encode(spans);
        (reference, direct)
    }

    #[test]
    fn bytes_equal_the_official_types_encoding() {
        let (a, b) = (process(100, "checkout"), process(200, "payments"));
        let mut spans = Vec::new();
        for n in 0..40u64 {
            let mut s = span_for(if n % 3 == 0 { &b } else { &a }, n);
            s.attributes.set("b", n % 2 == 0);
            s.attributes.set("i", -(n as i64) * 1_000_003);
            s.attributes.set("zero", 0i64);
            s.attributes.set("f", AttrValue::F64(n as f64 / 3.0));
            s.attributes.set("empty", "");
            s.attributes.set("", "empty key");
            s.trace_flags = (n % 2) as u8;
            s.kind = if n % 2 == 0 { SpanKind::Client } else { SpanKind::Server };
            if n % 4 == 0 {
                s.parent_span_id = [0; 8];
                s.trace_state = "vendor=x".into();
            }
            s.status = match n % 5 {
                0 => SpanStatus::error("503 from upstream"),
                1 => SpanStatus { code: StatusCode::Ok, message: String::new() },
                2 => SpanStatus { code: StatusCode::Unset, message: "odd".into() },
                _ => SpanStatus::default(),
            };
            if n % 7 == 0 {
                let mut attributes = Attributes::new();
                attributes.set("exception.type", "Timeout");
                s.events.push(SpanEvent { name: "exception".into(), time_unix_ns: s.start_unix_ns + 1, attributes });
                s.events.push(SpanEvent { name: String::new(), time_unix_ns: 0, attributes: Attributes::new() });
            }
            if n == 5 {
                s.name = Default::default();
                s.start_unix_ns = 0;
                s.attributes.set("long", "x".repeat(300));
            }
            spans.push(Arc::new(s));
        }
        let extra = [
            ("service.name".to_owned(), "env-name".to_owned()),
            ("deployment.environment".to_owned(), "prod".to_owned()),
        ];
        for extra in [&extra[..], &[]] {
            let (reference, direct) = both(&spans, extra);
            let first_diff = reference.iter().zip(&direct).position(|(a, b)| a != b);
            assert!(
                direct == reference,
                "lengths {} vs {}, first difference at {first_diff:?}",
                direct.len(),
                reference.len()
            );
        }
    }

    #[test]
    fn empty_batch_is_an_empty_request() {
        let (reference, direct) = both(&[], &[]);
        assert_eq!(direct, reference);
        assert!(ExportTraceServiceRequest::decode(direct.as_slice()).expect("decode").resource_spans.is_empty());
    }

    #[test]
    fn private_attributes_are_never_written() {
        let p = process(1, "svc");
        let mut s = span_for(&p, 1);
        s.private.set("db.password.candidate", "hunter2-secret");
        let bytes = WireEncoder::new(SCOPE_NAME, "0", &[]).encode(&[Arc::new(s)]);
        assert!(!bytes.windows(14).any(|w| w == b"hunter2-secret"));
    }
}
