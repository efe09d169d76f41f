//! OTLP export: OTLP/gRPC and OTLP/HTTP (protobuf) to one or more endpoints.
//!
//! Why not the `opentelemetry-otlp` SpanExporter: it exports SDK `SpanData`
//! under the single Resource its provider was built with, while kspan traces
//! many processes at once and needs one Resource per traced process
//! (`ResourceSpans` per process, several in one request). Its API also hides
//! what the OTLP spec asks an exporter to do and kspan must count: which
//! responses are retried (RetryInfo, Retry-After), partial success, and a
//! bounded queue per endpoint so that one slow endpoint never holds another.
//! Requests are written straight from the spans ([`wire`]), byte-for-byte
//! what the official generated protobuf types (`opentelemetry-proto`,
//! [`Encoder`]) encode to, without copying every attribute into them first;
//! responses are decoded with those types, over tonic and the official
//! service path, so what goes on the wire is the official OTLP format.
//!
//! Guarantees (per exporter):
//! - [`OtlpExporter::submit`] never blocks: the queue holds at most
//!   `max_queue_size` spans; beyond it spans are dropped (`queue_full`).
//!   At most `max_concurrent_exports` requests of at most
//!   `max_export_batch_size` spans each are in flight besides the queue;
//!   spans leave the queue only when a request slot is free.
//! - Spans are sent in batches of at most `max_export_batch_size`, at the
//!   latest `scheduled_delay` after the first span of the batch arrived.
//! - A failed batch is retried per the spec (see [`retry`]) in its slot while
//!   the other slots keep sending; after `max_elapsed` it is dropped
//!   (`max_elapsed`). Batches may complete out of order.
//! - Shutdown sends what is queued until the deadline; the rest is counted
//!   as dropped (`shutdown`).

mod config;
mod encode;
mod retry;
mod transport;
mod wire;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, watch};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use super::{DropReason, ExportError, ExportMetrics, ExporterMetrics, OutputReport};
use crate::span::model::Span;

pub use config::{
    BatchSettings, Compression, ExportConfigError, OtlpConfig, OtlpSettings, Protocol, RetrySettings, SecretHeaders,
    TlsMaterial,
};
pub use encode::{Encoder, SCOPE_NAME, encode_span};
pub use retry::{Backoff, Verdict, classify_grpc, classify_http, parse_retry_after};
pub use wire::WireEncoder;

/// One OTLP endpoint: its bounded queue and the task that batches and sends.
pub struct OtlpExporter {
    tx: mpsc::Sender<Arc<Span>>,
    max_queue: usize,
    accepted: AtomicU64,
    metrics: ExporterMetrics,
    shutdown_at: watch::Sender<Option<Instant>>,
    task: JoinHandle<()>,
}

impl OtlpExporter {
    /// Builds the client and starts the exporter task (inside a tokio runtime).
    pub fn spawn(settings: OtlpSettings, metrics: &ExportMetrics) -> Result<Self, ExportError> {
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| ExportError::NoRuntime { exporter: settings.name.clone() })?;
        let transport = transport::Transport::build(&settings)?;
        let metrics = metrics.for_exporter(&settings.name);
        let (tx, rx) = mpsc::channel(settings.batch.max_queue_size);
        let (shutdown_at, shutdown_rx) = watch::channel(None);
        tracing::info!(
            exporter = %settings.name,
            endpoint = %settings.endpoint,
            protocol = ?settings.protocol,
            "OTLP exporter started"
        );
        let max_queue = settings.batch.max_queue_size;
        let sender = BatchSender {
            encoder: WireEncoder::new(SCOPE_NAME, env!("CARGO_PKG_VERSION"), &settings.resource_attributes),
            transport,
            metrics: metrics.clone(),
            shutdown_rx,
            settings,
        };
        let worker = Worker { rx, sender: Arc::new(sender) };
        let task = runtime.spawn(worker.run());
        Ok(Self { tx, max_queue, accepted: AtomicU64::new(0), metrics, shutdown_at, task })
    }

    pub fn name(&self) -> &str {
        self.metrics.name()
    }

    /// Queues the span, or drops and counts it when the queue is full.
    pub fn submit(&self, span: Arc<Span>) {
        match self.tx.try_send(span) {
            Ok(()) => {
                self.accepted.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => self.metrics.dropped(DropReason::QueueFull, 1),
        }
        self.metrics.set_queue_depth(self.max_queue.saturating_sub(self.tx.capacity()));
    }

    /// Sends what is queued, giving up at `deadline`.
    pub async fn shutdown(self, deadline: Instant) -> OutputReport {
        let Self { tx, accepted, metrics, shutdown_at, mut task, .. } = self;
        shutdown_at.send_replace(Some(deadline));
        drop(tx);
        // The worker stops by itself at the deadline (its sends are bounded by
        // it); the margin only covers scheduling.
        let margin = std::time::Duration::from_millis(100);
        if tokio::time::timeout_at(deadline + margin, &mut task).await.is_err() {
            task.abort();
            tracing::warn!(exporter = metrics.name(), "OTLP exporter stopped at the shutdown deadline");
        }
        metrics.settle_at_shutdown(accepted.load(Ordering::Relaxed));
        metrics.report()
    }
}

struct Worker {
    rx: mpsc::Receiver<Arc<Span>>,
    sender: Arc<BatchSender>,
}

/// What every in-flight export of one exporter shares.
struct BatchSender {
    settings: OtlpSettings,
    encoder: WireEncoder,
    transport: transport::Transport,
    metrics: ExporterMetrics,
    shutdown_rx: watch::Receiver<Option<Instant>>,
}

impl Worker {
    async fn run(mut self) {
        let batch_settings = self.sender.settings.batch;
        let max_batch = batch_settings.max_export_batch_size;
        let mut in_flight = JoinSet::new();
        loop {
            // Take spans off the queue only when a request slot is free, so
            // what waits stays in the bounded queue (and overflow is counted).
            while in_flight.len() >= batch_settings.max_concurrent_exports {
                in_flight.join_next().await;
            }
            let Some(first) = self.rx.recv().await else { break };
            let mut batch: Vec<Arc<Span>> = Vec::with_capacity(max_batch);
            batch.push(first);
            let flush_at = Instant::now() + batch_settings.scheduled_delay;
            while batch.len() < max_batch {
                match self.rx.try_recv() {
                    Ok(span) => {
                        batch.push(span);
                        continue;
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => break,
                    Err(mpsc::error::TryRecvError::Empty) => {}
                }
                tokio::select! {
                    span = self.rx.recv() => match span {
                        Some(span) => batch.push(span),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(flush_at) => break,
                }
            }
            self.sender.metrics.set_queue_depth(self.rx.len());
            let sender = Arc::clone(&self.sender);
            in_flight.spawn(async move { sender.export(&batch).await });
            if self.sender.past_deadline() {
                // What is still queued is counted by `settle_at_shutdown`.
                break;
            }
        }
        // In-flight requests end by themselves (each is bounded by the
        // shutdown deadline); if this task is aborted first, dropping the set
        // aborts them and `settle_at_shutdown` counts their spans.
        while in_flight.join_next().await.is_some() {}
    }
}

impl BatchSender {
    fn past_deadline(&self) -> bool {
        self.shutdown_rx.borrow().is_some_and(|d| Instant::now() >= d)
    }

    /// Sends one batch, retrying per the spec; every span ends counted.
    async fn export(&self, batch: &[Arc<Span>]) {
        let n = batch.len() as u64;
        let name = &self.settings.name;
        let payload = self.transport.prepare(self.encoder.encode(batch));
        let started = Instant::now();
        let mut backoff = Backoff::new(&self.settings.retry);
        let mut shutdown_rx = self.shutdown_rx.clone();
        loop {
            let deadline = *shutdown_rx.borrow();
            let mut timeout = self.settings.timeout;
            if let Some(d) = deadline {
                let left = d.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    self.metrics.dropped(DropReason::Shutdown, n);
                    return;
                }
                timeout = timeout.min(left);
            }
            let t0 = Instant::now();
            let mut deadline_rx = self.shutdown_rx.clone();
            let attempt = tokio::select! {
                attempt = self.transport.send(&payload, timeout) => attempt,
                () = deadline_reached(&mut deadline_rx) => {
                    self.metrics.dropped(DropReason::Shutdown, n);
                    return;
                }
            };
            self.metrics.observe_latency(t0.elapsed());
            let after = match attempt {
                transport::Attempt::Accepted { rejected, message } => {
                    let rejected = rejected.min(n);
                    self.metrics.exported(n - rejected);
                    if rejected > 0 || !message.is_empty() {
                        self.metrics.dropped(DropReason::Partial, rejected);
                        tracing::warn!(exporter = %name, rejected, %message, "endpoint reported a partial success");
                    }
                    return;
                }
                transport::Attempt::Failed { verdict: Verdict::Drop(reason), detail } => {
                    self.metrics.dropped(reason, n);
                    tracing::warn!(exporter = %name, spans = n, ?reason, %detail, "export failed; batch dropped");
                    return;
                }
                transport::Attempt::Failed { verdict: Verdict::Retry { after }, detail } => {
                    tracing::debug!(exporter = %name, %detail, "export failed; will retry");
                    after
                }
            };
            let delay = after.unwrap_or_else(|| backoff.next_delay());
            if started.elapsed() + delay > self.settings.retry.max_elapsed {
                self.metrics.dropped(DropReason::MaxElapsed, n);
                tracing::warn!(exporter = %name, spans = n, "export still failing after the max elapsed time; batch dropped");
                return;
            }
            self.metrics.retried();
            if !sleep_unless_shutdown(&mut shutdown_rx, Instant::now() + delay).await {
                self.metrics.dropped(DropReason::Shutdown, n);
                return;
            }
        }
    }
}

/// Sleeps until `wake`; false when the shutdown deadline comes first.
async fn sleep_unless_shutdown(shutdown_rx: &mut watch::Receiver<Option<Instant>>, wake: Instant) -> bool {
    loop {
        if let Some(d) = *shutdown_rx.borrow()
            && wake > d
        {
            return false;
        }
        tokio::select! {
            _ = tokio::time::sleep_until(wake) => return true,
            changed = shutdown_rx.changed() => {
                if changed.is_err() {
                    // The handle is gone without a deadline: finish the wait.
                    tokio::time::sleep_until(wake).await;
                    return true;
                }
            }
        }
    }
}

/// Completes when a shutdown deadline is set and has passed.
async fn deadline_reached(rx: &mut watch::Receiver<Option<Instant>>) {
    loop {
        let deadline = *rx.borrow_and_update();
        match deadline {
            Some(d) => {
                tokio::time::sleep_until(d).await;
                return;
            }
            None => {
                if rx.changed().await.is_err() {
                    std::future::pending::<()>().await;
                }
            }
        }
    }
}
