//! Load generator for the OTLP export stage (used by `cargo xtask bench`):
//! pushes spans from 8 fake processes through the real exporter to a
//! collector and prints spans/s (wall and per CPU-second of this process) and
//! peak RSS. With an endpoint where nothing listens it fills the queue and
//! shows that memory stays bounded while overflow is counted.
//!
//! Usage: otlp_load ENDPOINT grpc|http SPANS [QUEUE [gzip|none [CONCURRENT]]]

use std::sync::Arc;
use std::time::{Duration, Instant};

use kspan::export::otlp::{Compression, Protocol};
use kspan::export::{DropReason, ExportMetrics, OtlpConfig, OtlpExporter};
use kspan::span::model::{Attributes, ProcessResource, Span, SpanKind, SpanStatus};
use kspan::telemetry::Telemetry;

fn cpu_seconds() -> f64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid out-pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("VmHWM:"))?.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

fn span(i: u64, resource: &Arc<ProcessResource>) -> Span {
    let mut a = Attributes::new();
    a.set("http.request.method", "GET");
    a.set("url.path", format!("/users/{i}"));
    a.set("http.route", "/users/{id}");
    a.set("url.scheme", "http");
    a.set("http.response.status_code", 200i64);
    a.set("server.address", "127.0.0.1");
    a.set("server.port", 8080i64);
    a.set("client.address", "10.0.0.7");
    a.set("network.peer.address", "10.0.0.7");
    a.set("network.peer.port", 52_000i64);
    a.set("network.protocol.version", "1.1");
    a.set("user_agent.original", "curl/7.88.1");
    let mut trace_id = [7u8; 16];
    trace_id[..8].copy_from_slice(&(i + 1).to_be_bytes());
    Span {
        trace_id,
        span_id: (i + 1).to_be_bytes(),
        parent_span_id: [0; 8],
        trace_state: String::new(),
        trace_flags: 1,
        name: "GET /users/{id}".into(),
        kind: SpanKind::Server,
        start_unix_ns: 1_700_000_000_000_000_000 + i * 1000,
        end_unix_ns: 1_700_000_000_000_000_000 + i * 1000 + 1_500_000,
        status: SpanStatus::default(),
        attributes: a,
        private: Attributes::new(),
        events: Vec::new(),
        resource: resource.clone(),
        tid: 1,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [endpoint, proto, n, ..] = args.as_slice() else {
        anyhow::bail!("usage: otlp_load ENDPOINT grpc|http SPANS [QUEUE [gzip|none [CONCURRENT]]]");
    };
    let n: u64 = n.parse()?;
    let queue: usize = args.get(3).map(|q| q.parse()).transpose()?.unwrap_or(8192);
    let compression = match args.get(4).map(String::as_str) {
        None | Some("none") => Compression::None,
        Some("gzip") => Compression::Gzip,
        Some(other) => anyhow::bail!("unknown compression {other:?} (gzip or none)"),
    };
    let concurrent: Option<usize> = args.get(5).map(|c| c.parse()).transpose()?;
    let cfg = OtlpConfig {
        name: Some("bench".into()),
        endpoint: Some(endpoint.clone()),
        protocol: Some(if proto == "grpc" { Protocol::Grpc } else { Protocol::HttpProtobuf }),
        max_queue_size: Some(queue),
        max_export_batch_size: Some(512),
        max_concurrent_exports: concurrent,
        compression: Some(compression),
        scheduled_delay_ms: Some(100),
        max_elapsed_ms: Some(2_000),
        ..Default::default()
    };
    let settings = OtlpConfig::from_env_and_file(&[cfg], &|_| None)?.remove(0);
    let telemetry = Telemetry::new();
    let metrics = ExportMetrics::register(&telemetry);
    let probe = metrics.for_exporter("bench");
    let exporter = OtlpExporter::spawn(settings, &metrics)?;
    let resources: Vec<Arc<ProcessResource>> = (0..8u32)
        .map(|p| {
            let mut attributes = Attributes::new();
            attributes.set("service.name", format!("svc-{p}"));
            attributes.set("process.pid", i64::from(1000 + p));
            Arc::new(ProcessResource { pid: 1000 + p, attributes })
        })
        .collect();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let mut sent = 0u64;
    while sent < n {
        // Keep the queue at most half full so throughput, not overflow, is measured
        // (unless nothing is exporting: then we fill it on purpose).
        let in_flight = sent - probe.exported_total() - probe.dropped_total(DropReason::QueueFull);
        if in_flight < queue as u64 / 2 || t0.elapsed() > Duration::from_secs(3) && probe.exported_total() == 0 {
            for _ in 0..256.min(n - sent) {
                exporter.submit(Arc::new(span(sent, &resources[(sent % 8) as usize])));
                sent += 1;
            }
        } else {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
    }
    let report = exporter.shutdown(tokio::time::Instant::now() + Duration::from_secs(30)).await;
    let (cpu, wall) = (cpu_seconds() - cpu0, t0.elapsed().as_secs_f64());
    println!(
        "exported {} of {n} spans in {wall:.2}s: {:.0} spans/s wall, {:.0} spans per CPU-second; dropped {} (queue_full {}); peak RSS {:.1} MiB",
        report.exported,
        report.exported as f64 / wall,
        report.exported as f64 / cpu.max(1e-9),
        report.dropped_total(),
        report.dropped_for(DropReason::QueueFull),
        peak_rss_mib()
    );
    Ok(())
}
