//! The span as it flows from the span stage through rules and sampling to export.

use std::borrow::Cow;
use std::sync::Arc;

/// Attribute text: strings up to 24 bytes live inline (no allocation), which
/// covers most values kspan produces (methods, addresses, routes, ports).
pub type Text = compact_str::CompactString;

/// An attribute value (the OTLP AnyValue subset kspan produces).
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(untagged)]
pub enum AttrValue {
    Bool(bool),
    Int(i64),
    F64(f64),
    Str(Text),
}

impl AttrValue {
    pub fn as_str(&self) -> Option<&str> {
        match self {
            AttrValue::Str(s) => Some(s),
            _ => None,
        }
    }
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            AttrValue::Int(i) => Some(*i),
            _ => None,
        }
    }
    /// Renders any value as text (for matching and display).
    pub fn to_text(&self) -> Cow<'_, str> {
        match self {
            AttrValue::Str(s) => Cow::Borrowed(s),
            AttrValue::Int(i) => Cow::Owned(i.to_string()),
            AttrValue::F64(f) => Cow::Owned(f.to_string()),
            AttrValue::Bool(b) => Cow::Borrowed(if *b { "true" } else { "false" }),
        }
    }
}

impl From<&str> for AttrValue {
    fn from(s: &str) -> Self {
        AttrValue::Str(Text::new(s))
    }
}
impl From<String> for AttrValue {
    fn from(s: String) -> Self {
        AttrValue::Str(Text::from(s))
    }
}
impl From<Text> for AttrValue {
    fn from(s: Text) -> Self {
        AttrValue::Str(s)
    }
}
impl From<i64> for AttrValue {
    fn from(v: i64) -> Self {
        AttrValue::Int(v)
    }
}
impl From<bool> for AttrValue {
    fn from(v: bool) -> Self {
        AttrValue::Bool(v)
    }
}

/// Ordered key/value attributes; setting an existing key replaces its value.
/// Small (tens of entries), so a Vec beats a map.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Attributes(pub Vec<(Cow<'static, str>, AttrValue)>);

impl Attributes {
    pub fn new() -> Self {
        Self(Vec::new())
    }
    pub fn set(&mut self, key: impl Into<Cow<'static, str>>, value: impl Into<AttrValue>) {
        let key = key.into();
        let value = value.into();
        match self.0.iter_mut().find(|(k, _)| *k == key) {
            Some(slot) => slot.1 = value,
            None => self.0.push((key, value)),
        }
    }
    /// Appends without looking for an existing `key`: for builders that set
    /// each key once (a duplicate would be exported twice).
    pub fn push_unique(&mut self, key: &'static str, value: impl Into<AttrValue>) {
        debug_assert!(self.get(key).is_none(), "{key} set twice");
        self.0.push((Cow::Borrowed(key), value.into()));
    }
    pub fn get(&self, key: &str) -> Option<&AttrValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(AttrValue::as_str)
    }
    pub fn remove(&mut self, key: &str) -> Option<AttrValue> {
        let i = self.0.iter().position(|(k, _)| k == key)?;
        Some(self.0.remove(i).1)
    }
    pub fn iter(&self) -> impl Iterator<Item = (&str, &AttrValue)> {
        self.0.iter().map(|(k, v)| (k.as_ref(), v))
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// OTel span kind (only the two kspan produces).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SpanKind {
    Server,
    Client,
}

/// OTel status code.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusCode {
    #[default]
    Unset,
    Ok,
    Error,
}

#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SpanStatus {
    pub code: StatusCode,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
}

impl SpanStatus {
    pub fn error(message: impl Into<String>) -> Self {
        Self { code: StatusCode::Error, message: message.into() }
    }
}

/// A timestamped event inside a span (kept small: a few per span at most).
#[derive(Clone, Debug, PartialEq)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_ns: u64,
    pub attributes: Attributes,
}

/// Identity of the process a span came from; one OTLP Resource each.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcessResource {
    pub pid: u32,
    /// Resource attributes (service.name, process.pid, host.name, ...).
    pub attributes: Attributes,
}

/// A finished span.
#[derive(Clone, Debug)]
pub struct Span {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// All zero for a root span.
    pub parent_span_id: [u8; 8],
    /// W3C tracestate to propagate (may be empty).
    pub trace_state: String,
    /// W3C trace flags (bit 0: sampled).
    pub trace_flags: u8,
    /// Inline up to 24 bytes (`GET /users/{id}`, `SELECT pgbench_accounts`).
    pub name: Text,
    pub kind: SpanKind,
    pub start_unix_ns: u64,
    pub end_unix_ns: u64,
    pub status: SpanStatus,
    pub attributes: Attributes,
    /// Readable by rules, never exported.
    pub private: Attributes,
    pub events: Vec<SpanEvent>,
    pub resource: Arc<ProcessResource>,
    /// Thread that handled/issued the request, or its goroutine in a Go
    /// program (`conntrack::thread_key`; for nesting).
    pub tid: u32,
}

impl Span {
    pub fn duration_ns(&self) -> u64 {
        self.end_unix_ns.saturating_sub(self.start_unix_ns)
    }
    pub fn is_root(&self) -> bool {
        self.parent_span_id == [0; 8]
    }
}

#[cfg(test)]
impl Span {
    /// A finished root SERVER span for tests: trace id `[1; 16]`, span id
    /// `[2; 8]`, sampled, from t=0 to t=1 ns; override fields with `..`.
    pub fn for_test(name: &str, attributes: Attributes, private: Attributes, resource: Arc<ProcessResource>) -> Self {
        Span {
            trace_id: [1; 16],
            span_id: [2; 8],
            parent_span_id: [0; 8],
            trace_state: String::new(),
            trace_flags: 1,
            name: Text::new(name),
            kind: SpanKind::Server,
            start_unix_ns: 0,
            end_unix_ns: 1,
            status: SpanStatus::default(),
            attributes,
            private,
            events: Vec::new(),
            resource,
            tid: 1,
        }
    }
}

/// Lower-case hex of bytes (trace and span ids).
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}
