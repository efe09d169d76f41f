//! Spans/s encoded into an OTLP ExportTraceServiceRequest protobuf (one
//! export batch of 512 spans from 8 processes). Target: >= 200k spans/s/core.
//!
//! Criterion reports wall-clock throughput, which a shared 2-core machine
//! distorts; the run also prints spans per CPU-second of this thread
//! (CLOCK_THREAD_CPUTIME_ID), which is the per-core figure the target is about.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use kspan::export::otlp::{Encoder, SCOPE_NAME, WireEncoder};
use kspan::span::model::{AttrValue, Attributes, ProcessResource, Span, SpanKind, SpanStatus};
use prost::Message;

const BATCH: usize = 512;

fn batch() -> Vec<Arc<Span>> {
    let processes: Vec<Arc<ProcessResource>> = (0..8u32)
        .map(|i| {
            let mut a = Attributes::new();
            a.set("service.name", format!("service-{i}"));
            a.set("process.pid", i64::from(1000 + i));
            a.set("host.name", "node-17.cluster.local");
            a.set("k8s.pod.name", format!("service-{i}-7d9f8c6b5-x2x4z"));
            a.set("k8s.namespace.name", "shop");
            Arc::new(ProcessResource { pid: 1000 + i, attributes: a })
        })
        .collect();
    (0..BATCH as u64)
        .map(|n| {
            let mut a = Attributes::new();
            a.set("http.request.method", "GET");
            a.set("url.path", format!("/api/v1/items/{n}"));
            a.set("http.route", "/api/v1/items/{id}");
            a.set("http.response.status_code", 200i64);
            a.set("server.address", "inventory.shop.svc");
            a.set("server.port", 8080i64);
            a.set("network.peer.address", "10.1.2.3");
            a.set("kspan.request.bytes", AttrValue::Int(512));
            let mut trace_id = [7u8; 16];
            trace_id[..8].copy_from_slice(&n.to_le_bytes());
            Arc::new(Span {
                trace_id,
                span_id: (n + 1).to_le_bytes(),
                parent_span_id: (n + 99).to_le_bytes(),
                trace_state: String::new(),
                trace_flags: 1,
                name: "GET /api/v1/items/{id}".into(),
                kind: SpanKind::Server,
                start_unix_ns: 1_700_000_000_000_000_000 + n * 1000,
                end_unix_ns: 1_700_000_000_000_000_000 + n * 1000 + 1_234_567,
                status: SpanStatus::default(),
                attributes: a,
                private: Attributes::new(),
                events: Vec::new(),
                resource: processes[(n % 8) as usize].clone(),
                tid: 1,
            })
        })
        .collect()
}

fn bench(c: &mut Criterion) {
    let spans = batch();
    let encoder = Encoder::new(&[("deployment.environment".into(), "prod".into())]);
    let mut group = c.benchmark_group("otlp_encode");
    group.throughput(Throughput::Elements(BATCH as u64));
    group.bench_function("build_request", |b| b.iter(|| black_box(encoder.request(black_box(&spans)))));
    group.bench_function("build_and_serialize", |b| {
        b.iter(|| black_box(encoder.request(black_box(&spans)).encode_to_vec()))
    });
    let wire = WireEncoder::new(SCOPE_NAME, "0.1.0", &[("deployment.environment".into(), "prod".into())]);
    group.bench_function("wire_encode", |b| b.iter(|| black_box(wire.encode(black_box(&spans)))));
    group.finish();
}

fn thread_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes into the timespec we own; the clock id is valid.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Prints spans encoded per CPU-second and the ratio to the target.
fn cpu_throughput(_c: &mut Criterion) {
    const TARGET: f64 = 200_000.0;
    let spans = batch();
    let encoder = Encoder::new(&[("deployment.environment".into(), "prod".into())]);
    let rounds = 400;
    let start = thread_cpu_time();
    let mut bytes = 0usize;
    for _ in 0..rounds {
        bytes += black_box(encoder.request(black_box(&spans)).encode_to_vec()).len();
    }
    let cpu = thread_cpu_time() - start;
    let rate = (rounds * BATCH) as f64 / cpu.as_secs_f64();
    println!(
        "otlp_encode/cpu: {:.0} spans per CPU-second ({:.2}x the 200k target), {} bytes/span",
        rate,
        rate / TARGET,
        bytes / (rounds * BATCH)
    );
    // What the exporter runs: written straight from the spans.
    let wire = WireEncoder::new(SCOPE_NAME, "0.1.0", &[("deployment.environment".into(), "prod".into())]);
    let start = thread_cpu_time();
    for _ in 0..rounds {
        black_box(wire.encode(black_box(&spans)));
    }
    let rate = (rounds * BATCH) as f64 / (thread_cpu_time() - start).as_secs_f64();
    println!("otlp_encode/cpu/wire: {:.0} spans per CPU-second ({:.2}x the 200k target)", rate, rate / TARGET);
}

criterion_group!(benches, bench, cpu_throughput);
criterion_main!(benches);
