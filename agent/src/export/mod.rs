//! Export stage: fans every finished span out to the configured outputs
//! (OTLP endpoints, stdout lines, stdout JSON lines).
//!
//! Guarantees:
//! - [`Exporters::submit`] never blocks and never awaits: each output has its
//!   own bounded queue; a full queue drops the span for that output only and
//!   counts it (`reason="queue_full"`). One slow or unreachable endpoint never
//!   delays another output.
//! - Every span accepted by an output ends in exactly one counter of
//!   `kspan_export_spans_total{exporter, result, reason}`: exported, or dropped
//!   with a reason (see [`DropReason`]).
//! - [`Exporters::shutdown`] flushes every output concurrently within one
//!   deadline and reports what was exported and dropped; whatever is still
//!   queued at the deadline is dropped with `reason="shutdown"`.
//! - Only `Span::attributes` leave the agent; `Span::private` is never written.

pub mod otlp;
pub mod stdout;

use std::sync::Arc;
use std::time::Duration;

use std::fmt::Write as _;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

use crate::span::model::Span;
use crate::telemetry::Telemetry;

pub use otlp::{ExportConfigError, OtlpConfig, OtlpExporter, OtlpSettings};
pub use stdout::{LineFormat, StreamSink};

/// Errors building an output (the configuration itself is validated by
/// [`OtlpConfig::from_env_and_file`]).
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("exporter `{exporter}`: invalid gRPC endpoint URI: {source}")]
    GrpcUri { exporter: String, source: http::uri::InvalidUri },
    #[error("exporter `{exporter}`: invalid gRPC endpoint: {source}")]
    GrpcEndpoint { exporter: String, source: tonic::transport::Error },
    #[error("exporter `{exporter}`: cannot build the HTTP client: {source}")]
    HttpClient { exporter: String, source: reqwest::Error },
    #[error("exporter `{exporter}`: must be started from inside a tokio runtime")]
    NoRuntime { exporter: String },
}

/// Why a span was dropped (the `reason` label).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum DropReason {
    /// The output's queue was full when the span was submitted.
    QueueFull,
    /// The endpoint refused the data for good (HTTP 4xx other than 429, gRPC
    /// INVALID_ARGUMENT, UNAUTHENTICATED, PERMISSION_DENIED, ...).
    Rejected,
    /// Any other failure the OTLP spec says not to retry (HTTP 5xx other than
    /// 502/503/504, gRPC INTERNAL/UNKNOWN, a write error on stdout, ...).
    NonRetryable,
    /// Retries did not succeed within the configured max elapsed time.
    MaxElapsed,
    /// Still queued or in flight when the shutdown deadline passed.
    Shutdown,
    /// Counted by the endpoint as rejected in an OTLP partial success.
    Partial,
}

impl DropReason {
    pub const ALL: [DropReason; 6] = [
        DropReason::QueueFull,
        DropReason::Rejected,
        DropReason::NonRetryable,
        DropReason::MaxElapsed,
        DropReason::Shutdown,
        DropReason::Partial,
    ];
    fn index(self) -> usize {
        self as usize
    }
    /// The `reason` label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Rejected => "rejected",
            DropReason::NonRetryable => "non_retryable",
            DropReason::MaxElapsed => "max_elapsed",
            DropReason::Shutdown => "shutdown",
            DropReason::Partial => "partial",
        }
    }
}

impl EncodeLabelValue for DropReason {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
enum Outcome {
    Exported,
    Dropped,
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        encoder.write_str(match self {
            Outcome::Exported => "exported",
            Outcome::Dropped => "dropped",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SpanLabels {
    exporter: String,
    result: Outcome,
    reason: Option<DropReason>,
}

/// Buckets from 1 ms to ~33 s (doubling), covering a local collector up to a
/// request that runs into the default 10 s timeout.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ExporterLabel {
    exporter: String,
}

/// The export stage's metric families, registered once in [`Telemetry`].
#[derive(Clone, Debug)]
pub struct ExportMetrics {
    spans: Family<SpanLabels, Counter>,
    queue_depth: Family<ExporterLabel, Gauge>,
    latency: Family<ExporterLabel, Histogram>,
    retries: Family<ExporterLabel, Counter>,
}

impl ExportMetrics {
    /// Call once per [`Telemetry`] (the registry would list the families
    /// twice otherwise) and share the result among all outputs.
    /// Registers `kspan_export_spans_total`, `kspan_export_queue_depth`,
    /// `kspan_export_latency_seconds` and `kspan_export_retries_total`.
    pub fn register(telemetry: &Telemetry) -> Self {
        let this = Self {
            spans: Family::default(),
            queue_depth: Family::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            retries: Family::default(),
        };
        telemetry.register(
            "kspan_export_spans",
            "Spans handled by each output, by result and drop reason.",
            this.spans.clone(),
        );
        telemetry.register(
            "kspan_export_queue_depth",
            "Spans waiting in each output's queue.",
            this.queue_depth.clone(),
        );
        telemetry.register(
            "kspan_export_latency_seconds",
            "Duration of each export request (each attempt, retries included).",
            this.latency.clone(),
        );
        telemetry.register(
            "kspan_export_retries",
            "Export requests retried after a retryable failure.",
            this.retries.clone(),
        );
        this
    }

    /// Pre-created handles for one output, so the hot path never hashes labels.
    pub fn for_exporter(&self, exporter: &str) -> ExporterMetrics {
        let name = exporter.to_owned();
        let dropped = DropReason::ALL.map(|reason| {
            self.spans
                .get_or_create(&SpanLabels { exporter: name.clone(), result: Outcome::Dropped, reason: Some(reason) })
                .clone()
        });
        let label = ExporterLabel { exporter: name.clone() };
        ExporterMetrics {
            name: name.clone(),
            exported: self
                .spans
                .get_or_create(&SpanLabels { exporter: name, result: Outcome::Exported, reason: None })
                .clone(),
            dropped,
            queue_depth: self.queue_depth.get_or_create(&label).clone(),
            latency: self.latency.get_or_create(&label).clone(),
            retries: self.retries.get_or_create(&label).clone(),
        }
    }
}

/// One output's counters (clones share the same values).
#[derive(Clone, Debug)]
pub struct ExporterMetrics {
    name: String,
    exported: Counter,
    dropped: [Counter; DropReason::ALL.len()],
    queue_depth: Gauge,
    latency: Histogram,
    retries: Counter,
}

impl ExporterMetrics {
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn exported(&self, n: u64) {
        self.exported.inc_by(n);
    }
    pub fn dropped(&self, reason: DropReason, n: u64) {
        if let Some(c) = self.dropped.get(reason.index()) {
            c.inc_by(n);
        }
    }
    pub fn set_queue_depth(&self, depth: usize) {
        self.queue_depth.set(i64::try_from(depth).unwrap_or(i64::MAX));
    }
    pub fn observe_latency(&self, d: Duration) {
        self.latency.observe(d.as_secs_f64());
    }
    pub fn retried(&self) {
        self.retries.inc();
    }
    pub fn exported_total(&self) -> u64 {
        self.exported.get()
    }
    pub fn dropped_total(&self, reason: DropReason) -> u64 {
        self.dropped.get(reason.index()).map_or(0, Counter::get)
    }

    /// Counts as `shutdown` drops the accepted spans that reached no other
    /// outcome (used when an output is stopped at the deadline).
    fn settle_at_shutdown(&self, accepted: u64) {
        let settled: u64 = self.exported_total()
            + DropReason::ALL
                .iter()
                .filter(|r| **r != DropReason::QueueFull)
                .map(|r| self.dropped_total(*r))
                .sum::<u64>();
        let lost = accepted.saturating_sub(settled);
        if lost > 0 {
            self.dropped(DropReason::Shutdown, lost);
        }
        self.set_queue_depth(0);
    }

    fn report(&self) -> OutputReport {
        OutputReport {
            exporter: self.name.clone(),
            exported: self.exported_total(),
            dropped: DropReason::ALL.map(|r| (r, self.dropped_total(r))).into_iter().filter(|(_, n)| *n > 0).collect(),
        }
    }
}

/// One output of the export stage.
pub enum Output {
    /// Lines (readable or JSON) written to stdout or any writer.
    Stream(StreamSink),
    /// An OTLP/gRPC or OTLP/HTTP endpoint.
    Otlp(OtlpExporter),
}

impl Output {
    fn submit(&self, span: Arc<Span>) {
        match self {
            Output::Stream(s) => s.submit(span),
            Output::Otlp(o) => o.submit(span),
        }
    }
    async fn shutdown(self, deadline: tokio::time::Instant) -> OutputReport {
        match self {
            Output::Stream(s) => s.shutdown(deadline).await,
            Output::Otlp(o) => o.shutdown(deadline).await,
        }
    }
}

/// What one output did over the agent's life.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OutputReport {
    pub exporter: String,
    pub exported: u64,
    /// Non-zero drop counts by reason.
    pub dropped: Vec<(DropReason, u64)>,
}

impl OutputReport {
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().map(|(_, n)| n).sum()
    }
    pub fn dropped_for(&self, reason: DropReason) -> u64 {
        self.dropped.iter().filter(|(r, _)| *r == reason).map(|(_, n)| n).sum()
    }
}

/// What [`Exporters::shutdown`] achieved, per output.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShutdownReport {
    pub outputs: Vec<OutputReport>,
}

impl ShutdownReport {
    pub fn exported(&self) -> u64 {
        self.outputs.iter().map(|o| o.exported).sum()
    }
    pub fn dropped(&self) -> u64 {
        self.outputs.iter().map(OutputReport::dropped_total).sum()
    }
    pub fn output(&self, exporter: &str) -> Option<&OutputReport> {
        self.outputs.iter().find(|o| o.exporter == exporter)
    }
}

/// Fan-out over every configured output.
pub struct Exporters {
    outputs: Vec<Output>,
}

impl Exporters {
    pub fn new(outputs: Vec<Output>) -> Self {
        Self { outputs }
    }

    pub fn is_empty(&self) -> bool {
        self.outputs.is_empty()
    }

    /// Hands the span to every output; never blocks.
    pub fn submit(&self, span: Arc<Span>) {
        for output in &self.outputs {
            output.submit(span.clone());
        }
    }

    /// Flushes all outputs concurrently, giving up at `deadline` from now.
    pub async fn shutdown(self, deadline: Duration) -> ShutdownReport {
        let at = tokio::time::Instant::now() + deadline;
        let mut set = tokio::task::JoinSet::new();
        let count = self.outputs.len();
        for (i, output) in self.outputs.into_iter().enumerate() {
            set.spawn(async move { (i, output.shutdown(at).await) });
        }
        let mut reports: Vec<Option<OutputReport>> = vec![None; count];
        while let Some(joined) = set.join_next().await {
            match joined {
                Ok((i, report)) => {
                    if let Some(slot) = reports.get_mut(i) {
                        *slot = Some(report);
                    }
                }
                Err(err) => tracing::error!(%err, "an output's shutdown task failed"),
            }
        }
        let report = ShutdownReport { outputs: reports.into_iter().flatten().collect() };
        for o in &report.outputs {
            tracing::info!(exporter = %o.exporter, exported = o.exported, dropped = o.dropped_total(), "output flushed");
        }
        report
    }
}

#[cfg(test)]
pub(crate) mod testutil {
    use std::sync::Arc;

    use crate::span::model::{Attributes, ProcessResource, Span, SpanKind, SpanStatus};

    pub fn process(pid: u32, service: &str) -> Arc<ProcessResource> {
        let mut attributes = Attributes::new();
        attributes.set("service.name", service);
        attributes.set("process.pid", i64::from(pid));
        Arc::new(ProcessResource { pid, attributes })
    }

    /// A child server span whose ids derive from `n`.
    pub fn span_for(resource: &Arc<ProcessResource>, n: u64) -> Span {
        let mut trace_id = [0u8; 16];
        trace_id[..8].copy_from_slice(&(n + 1).to_be_bytes());
        trace_id[8..].copy_from_slice(&u64::from(resource.pid).to_be_bytes());
        let mut attributes = Attributes::new();
        attributes.set("http.request.method", "GET");
        attributes.set("url.path", format!("/item/{n}"));
        Span {
            trace_id,
            span_id: (n + 1).to_be_bytes(),
            parent_span_id: (n + 1_000_000).to_be_bytes(),
            trace_state: String::new(),
            trace_flags: 1,
            name: "GET /item/{id}".into(),
            kind: SpanKind::Server,
            start_unix_ns: 1_700_000_000_000_000_000 + n * 1_000,
            end_unix_ns: 1_700_000_000_000_000_000 + n * 1_000 + 2_500_000,
            status: SpanStatus::default(),
            attributes,
            private: Attributes::new(),
            events: Vec::new(),
            resource: resource.clone(),
            tid: 1,
        }
    }
}
