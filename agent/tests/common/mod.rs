//! Helpers shared by the OTLP integration tests: spans, configs, ports.
#![allow(dead_code, reason = "each test binary uses a different subset")]

use std::net::SocketAddr;
use std::sync::Arc;

use kspan::export::ExportMetrics;
use kspan::export::otlp::{OtlpConfig, OtlpExporter, OtlpSettings};
use kspan::span::model::{Attributes, ProcessResource, Span, SpanKind, SpanStatus};
use kspan::telemetry::Telemetry;

// ---------------------------------------------------------------- spans

pub fn process(pid: u32, service: &str) -> Arc<ProcessResource> {
    let mut attributes = Attributes::new();
    attributes.set("service.name", service);
    attributes.set("process.pid", i64::from(pid));
    Arc::new(ProcessResource { pid, attributes })
}

pub fn span(resource: &Arc<ProcessResource>, n: u64, name: &str) -> Arc<Span> {
    let mut trace_id = [0u8; 16];
    trace_id[..8].copy_from_slice(&(n + 1).to_be_bytes());
    trace_id[8..12].copy_from_slice(&resource.pid.to_be_bytes());
    let mut attributes = Attributes::new();
    attributes.set("http.request.method", "GET");
    attributes.set("http.response.status_code", 200i64);
    let mut private = Attributes::new();
    private.set("kspan.private.raw_header", "never-exported");
    Arc::new(Span {
        trace_id,
        span_id: (n + 1).to_be_bytes(),
        parent_span_id: [0; 8],
        trace_state: String::new(),
        trace_flags: 1,
        name: name.into(),
        kind: SpanKind::Server,
        start_unix_ns: 1_700_000_000_000_000_000 + n,
        end_unix_ns: 1_700_000_000_001_000_000 + n,
        status: SpanStatus::default(),
        attributes,
        private,
        events: Vec::new(),
        resource: resource.clone(),
        tid: 1,
    })
}

// ---------------------------------------------------------------- helpers

pub fn base_config(name: &str, addr: SocketAddr) -> OtlpConfig {
    OtlpConfig {
        name: Some(name.to_owned()),
        endpoint: Some(format!("http://{addr}")),
        scheduled_delay_ms: Some(20),
        initial_backoff_ms: Some(100),
        max_backoff_ms: Some(400),
        max_elapsed_ms: Some(20_000),
        timeout_ms: Some(5_000),
        ..OtlpConfig::default()
    }
}

pub fn settings(cfg: OtlpConfig) -> OtlpSettings {
    let mut v = OtlpConfig::from_env_and_file(&[cfg], &|_| None).expect("valid config");
    v.remove(0)
}

pub fn exporter(cfg: OtlpConfig, metrics: &ExportMetrics) -> OtlpExporter {
    OtlpExporter::spawn(settings(cfg), metrics).expect("exporter")
}

pub fn metrics() -> (Arc<Telemetry>, ExportMetrics) {
    let t = Telemetry::new();
    let m = ExportMetrics::register(&t);
    (t, m)
}

pub fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}
