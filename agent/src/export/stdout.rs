//! Line outputs: one readable line or one JSON object per span, written to
//! stdout (or any async writer, for tests).
//!
//! Guarantees:
//! - [`StreamSink::submit`] never blocks: spans go through a bounded queue to
//!   a writer task; a full queue drops and counts (`reason="queue_full"`).
//! - Each span is exactly one line (newlines in values are escaped).
//! - A span counts as exported once its line was flushed; a write error drops
//!   it (and every later span) as `non_retryable`, logged once.
//! - Only `Span::attributes` are written, never `Span::private`.

use std::fmt::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use tokio::io::{AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::{DropReason, ExportError, ExporterMetrics, OutputReport};
use crate::span::model::{AttrValue, Attributes, Span, SpanEvent, SpanKind, StatusCode, hex};

/// Spans a line output may hold before dropping.
pub const DEFAULT_CAPACITY: usize = 4096;

/// How each span is rendered.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LineFormat {
    /// One human-readable line per span.
    Text,
    /// One JSON object per line (JSON Lines).
    Jsonl,
}

/// A line output with its bounded queue and writer task.
pub struct StreamSink {
    tx: mpsc::Sender<Arc<Span>>,
    accepted: AtomicU64,
    metrics: ExporterMetrics,
    task: JoinHandle<()>,
}

impl StreamSink {
    /// Writes to the process's stdout.
    pub fn stdout(format: LineFormat, capacity: usize, metrics: ExporterMetrics) -> Result<Self, ExportError> {
        Self::spawn(format, tokio::io::stdout(), capacity, metrics)
    }

    /// Writes to `writer`; `capacity` (at least 1) bounds the queue in spans.
    pub fn spawn(
        format: LineFormat,
        writer: impl AsyncWrite + Send + Unpin + 'static,
        capacity: usize,
        metrics: ExporterMetrics,
    ) -> Result<Self, ExportError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ExportError::NoRuntime { exporter: metrics.name().to_owned() })?;
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let task = runtime.spawn(write_loop(format, writer, rx, metrics.clone()));
        Ok(Self { tx, accepted: AtomicU64::new(0), metrics, task })
    }

    pub fn submit(&self, span: Arc<Span>) {
        match self.tx.try_send(span) {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.metrics.dropped(DropReason::QueueFull, 1),
        }
    }

    /// Closes the queue and waits for the writer to flush, up to `deadline`.
    pub async fn shutdown(self, deadline: tokio::time::Instant) -> OutputReport {
        let Self { tx, accepted, metrics, mut task } = self;
        drop(tx);
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(exporter = metrics.name(), "line output did not flush before the shutdown deadline");
        }
        metrics.settle_at_shutdown(accepted.load(Ordering::Relaxed));
        metrics.report()
    }
}

async fn write_loop(
    format: LineFormat,
    writer: impl AsyncWrite + Unpin,
    mut rx: mpsc::Receiver<Arc<Span>>,
    metrics: ExporterMetrics,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, writer);
    let mut line = String::with_capacity(512);
    let mut unflushed: u64 = 0;
    let mut broken = false;
    while let Some(span) = rx.recv().await {
        if broken {
            metrics.dropped(DropReason::NonRetryable, 1);
            continue;
        }
        line.clear();
        match format {
            LineFormat::Text => format_text(&span, &mut line),
            LineFormat::Jsonl => format_json(&span, &mut line),
        }
        line.push('\n');
        unflushed += 1;
        let mut result = out.write_all(line.as_bytes()).await;
        if result.is_ok() && rx.is_empty() {
            result = out.flush().await;
            if result.is_ok() {
                metrics.exported(std::mem::take(&mut unflushed));
            }
        }
        if let Err(err) = result {
            tracing::error!(exporter = metrics.name(), %err, "cannot write spans; dropping from now on");
            metrics.dropped(DropReason::NonRetryable, std::mem::take(&mut unflushed));
            broken = true;
        }
        metrics.set_queue_depth(rx.len());
    }
    if unflushed > 0 {
        match out.flush().await {
            Ok(()) => metrics.exported(unflushed),
            Err(_) => metrics.dropped(DropReason::NonRetryable, unflushed),
        }
    }
}

/// Appends the readable one-line rendering of `span` (no trailing newline):
/// `trace span parent kind status duration "name" start=... pid=... attrs`.
pub fn format_text(span: &Span, out: &mut String) {
    let parent = if span.is_root() { "-".to_owned() } else { hex(&span.parent_span_id) };
    let dur = span.duration_ns();
    let _ = write!(
        out,
        "{} {} {} {} {} {}.{:03}ms {:?} start={}.{:09} pid={}",
        hex(&span.trace_id),
        hex(&span.span_id),
        parent,
        kind_name(span.kind),
        status_name(span.status.code),
        dur / 1_000_000,
        (dur / 1_000) % 1_000,
        span.name,
        span.start_unix_ns / 1_000_000_000,
        span.start_unix_ns % 1_000_000_000,
        span.resource.pid,
    );
    if !span.status.message.is_empty() {
        let _ = write!(out, " status.message={:?}", span.status.message);
    }
    if let Some(service) = span.resource.attributes.get("service.name") {
        out.push_str(" service=");
        push_text_value(service, out);
    }
    for (k, v) in span.attributes.iter() {
        let _ = write!(out, " {k}=");
        push_text_value(v, out);
    }
}

fn push_text_value(v: &AttrValue, out: &mut String) {
    match v {
        AttrValue::Str(s) => {
            let _ = write!(out, "{s:?}");
        }
        other => out.push_str(&other.to_text()),
    }
}

fn kind_name(kind: SpanKind) -> &'static str {
    match kind {
        SpanKind::Server => "server",
        SpanKind::Client => "client",
    }
}

fn status_name(code: StatusCode) -> &'static str {
    match code {
        StatusCode::Unset => "unset",
        StatusCode::Ok => "ok",
        StatusCode::Error => "error",
    }
}

/// Appends one JSON object for `span` (no trailing newline).
pub fn format_json(span: &Span, out: &mut String) {
    match serde_json::to_string(&JsonSpan(span)) {
        Ok(s) => out.push_str(&s),
        // Serialization of these plain types cannot fail; keep the line valid.
        Err(_) => out.push_str("{}"),
    }
}

struct JsonSpan<'a>(&'a Span);
struct JsonAttrs<'a>(&'a Attributes);
struct JsonStatus<'a>(&'a Span);
struct JsonEvents<'a>(&'a [SpanEvent]);
struct JsonEvent<'a>(&'a SpanEvent);

impl Serialize for JsonSpan<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let span = self.0;
        let parent = if span.is_root() { String::new() } else { hex(&span.parent_span_id) };
        let mut st = s.serialize_struct("Span", 12)?;
        st.serialize_field("trace_id", &hex(&span.trace_id))?;
        st.serialize_field("span_id", &hex(&span.span_id))?;
        st.serialize_field("parent_span_id", &parent)?;
        st.serialize_field("name", &span.name)?;
        st.serialize_field("kind", &span.kind)?;
        st.serialize_field("start_unix_nanos", &span.start_unix_ns)?;
        st.serialize_field("end_unix_nanos", &span.end_unix_ns)?;
        st.serialize_field("status", &JsonStatus(span))?;
        st.serialize_field("attributes", &JsonAttrs(&span.attributes))?;
        st.serialize_field("resource", &JsonAttrs(&span.resource.attributes))?;
        st.serialize_field("events", &JsonEvents(&span.events))?;
        st.end()
    }
}

impl Serialize for JsonStatus<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Status", 2)?;
        st.serialize_field("code", &self.0.status.code)?;
        st.serialize_field("message", &self.0.status.message)?;
        st.end()
    }
}

impl Serialize for JsonAttrs<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0.iter() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl Serialize for JsonEvents<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(JsonEvent))
    }
}

impl Serialize for JsonEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Event", 3)?;
        st.serialize_field("name", &self.0.name)?;
        st.serialize_field("time_unix_nanos", &self.0.time_unix_ns)?;
        st.serialize_field("attributes", &JsonAttrs(&self.0.attributes))?;
        st.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::ExportMetrics;
    use crate::export::testutil::span_for;
    use crate::span::model::{ProcessResource, SpanStatus};
    use crate::telemetry::Telemetry;
    use std::time::Duration;
    use tokio::io::AsyncReadExt;

    fn sample() -> Span {
        let res = Arc::new(ProcessResource {
            pid: 42,
            attributes: {
                let mut a = Attributes::new();
                a.set("service.name", "shop");
                a
            },
        });
        let mut s = span_for(&res, 7);
        s.parent_span_id = [0; 8];
        s.name = "GET /a\nb".into();
        s.status = SpanStatus::error("boom");
        s.attributes.set("http.response.status_code", 500i64);
        s.private.set("secret.token", "hunter2");
        s.events.push(SpanEvent { name: "retransmit".into(), time_unix_ns: 5, attributes: Attributes::new() });
        s
    }

    #[test]
    fn json_line_has_documented_fields_and_no_private_attributes() {
        let mut line = String::new();
        format_json(&sample(), &mut line);
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).expect("valid json");
        assert_eq!(v["parent_span_id"], "");
        assert_eq!(v["trace_id"].as_str().map(str::len), Some(32));
        assert_eq!(v["kind"], "server");
        assert_eq!(v["status"]["code"], "error");
        assert_eq!(v["status"]["message"], "boom");
        assert_eq!(v["attributes"]["http.response.status_code"], 500);
        assert_eq!(v["resource"]["service.name"], "shop");
        assert_eq!(v["events"][0]["name"], "retransmit");
        assert!(v["end_unix_nanos"].as_u64() > v["start_unix_nanos"].as_u64());
        assert!(!line.contains("hunter2"), "{line}");
    }

    #[test]
    fn text_line_is_single_line_and_readable() {
        let mut line = String::new();
        format_text(&sample(), &mut line);
        assert!(!line.contains('\n'), "{line}");
        assert!(line.contains("\"GET /a\\nb\""), "{line}");
        assert!(line.contains(" - server error "), "{line}");
        assert!(line.contains("service=\"shop\""), "{line}");
        assert!(line.contains("http.response.status_code=500"), "{line}");
        assert!(!line.contains("hunter2"), "{line}");
    }

    #[tokio::test]
    async fn writes_every_span_and_counts_exported() {
        let metrics = ExportMetrics::register(&Telemetry::new()).for_exporter("jsonl");
        let (w, mut r) = tokio::io::duplex(1 << 20);
        let sink = StreamSink::spawn(LineFormat::Jsonl, w, 16, metrics).expect("spawn");
        for _ in 0..10 {
            sink.submit(Arc::new(sample()));
        }
        let report = sink.shutdown(tokio::time::Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(report.exported, 10);
        assert_eq!(report.dropped_total(), 0);
        let mut text = String::new();
        r.read_to_string(&mut text).await.expect("read");
        assert_eq!(text.lines().count(), 10);
    }

    #[tokio::test]
    async fn full_queue_drops_and_unflushed_spans_count_as_shutdown() {
        let metrics = ExportMetrics::register(&Telemetry::new()).for_exporter("stdout");
        // A 1-byte pipe nobody reads: the writer blocks on its first flush.
        let (w, _r) = tokio::io::duplex(1);
        let sink = StreamSink::spawn(LineFormat::Text, w, 4, metrics).expect("spawn");
        for _ in 0..50 {
            sink.submit(Arc::new(sample()));
        }
        let report = sink.shutdown(tokio::time::Instant::now() + Duration::from_millis(200)).await;
        let queue_full = report.dropped_for(DropReason::QueueFull);
        assert!(queue_full >= 50 - 4 - 1, "{report:?}");
        assert_eq!(report.exported, 0);
        assert_eq!(queue_full + report.dropped_for(DropReason::Shutdown), 50, "{report:?}");
    }
}
