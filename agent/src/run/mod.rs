//! Wires the stages together and runs them until a signal: the capture thread
//! (capture -> conntrack -> protocol -> span) feeds a bounded queue that the
//! async side drains into export. Shutdown is ordered: stop capture, drain the
//! queue, flush outputs within a deadline, report what was dropped.

pub mod metrics;
pub mod pipeline;
pub mod post;
pub mod queue;
pub mod select;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::capture::go_proc::GoProcs;
use crate::capture::tls::TlsAttacher;
use crate::capture::{Capture, CaptureConfig, CaptureError};
use crate::config::{Config, ConfigError, OutputKind};
use crate::conntrack::{ConnLimits, ConnTable};
use crate::enrich::k8s::PodStore;
use crate::enrich::process::{HostInfo, ProcessTable};
use crate::export::{
    ExportConfigError, ExportError, ExportMetrics, Exporters, LineFormat, OtlpConfig, OtlpExporter, Output, StreamSink,
};
use crate::protocol::Privacy;
use crate::span::builder::{Clock, SpanBuilder};
use crate::span::link::{LinkLimits, Linker};
use crate::span::model::Attributes;
use crate::telemetry::{Telemetry, TelemetryError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Capture(#[from] CaptureError),
    #[error(transparent)]
    ExportConfig(#[from] ExportConfigError),
    #[error(transparent)]
    Export(#[from] ExportError),
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("select.exe: {0}")]
    Regex(#[from] regex::Error),
    #[error(transparent)]
    Rules(#[from] crate::rules::RulesError),
    #[error("capture thread: {0}")]
    Thread(String),
    #[error("select.pids (--pid): no process {0} on this host")]
    NoSuchPid(u32),
}

/// Which outputs to start: explicit ones, else OTLP when an endpoint is
/// configured (file or environment), else stdout.
pub fn resolve_outputs(config: &Config, env: &dyn Fn(&str) -> Option<String>) -> Vec<OutputKind> {
    if !config.outputs.is_empty() {
        return config.outputs.clone();
    }
    let endpoint_env =
        env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some() || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some();
    if !config.otlp.is_empty() || endpoint_env { vec![OutputKind::Otlp] } else { vec![OutputKind::Stdout] }
}

fn build_outputs(config: &Config, telemetry: &Arc<Telemetry>) -> Result<Exporters, RunError> {
    let env = |k: &str| std::env::var(k).ok();
    let metrics = ExportMetrics::register(telemetry);
    let mut outputs = Vec::new();
    let line_queue = config.output_queue.unwrap_or(crate::export::stdout::DEFAULT_CAPACITY);
    for kind in resolve_outputs(config, &env) {
        match kind {
            OutputKind::Stdout => outputs.push(Output::Stream(StreamSink::stdout(
                LineFormat::Text,
                line_queue,
                metrics.for_exporter("stdout"),
            )?)),
            OutputKind::Jsonl => outputs.push(Output::Stream(StreamSink::stdout(
                LineFormat::Jsonl,
                line_queue,
                metrics.for_exporter("jsonl"),
            )?)),
            OutputKind::Otlp => {
                for settings in OtlpConfig::from_env_and_file(&config.otlp, &env)? {
                    tracing::info!(exporter = %settings.name, endpoint = %settings.endpoint, "OTLP exporter");
                    outputs.push(Output::Otlp(OtlpExporter::spawn(settings, &metrics)?));
                }
            }
            OutputKind::None => {}
        }
    }
    Ok(Exporters::new(outputs))
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot listen for SIGTERM: {e}");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// SIGUSR1 toggles `pause`: the capture thread detaches every program (the
/// host runs as without kspan) or attaches them again. For measuring what
/// kspan costs a service in place: compare its throughput in the two states.
fn listen_for_pause(pause: Arc<AtomicBool>, nudge: Arc<pipeline::Nudge>) {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::user_defined1()) {
        Ok(mut sig) => {
            tokio::spawn(async move {
                while sig.recv().await.is_some() {
                    pause.fetch_xor(true, Ordering::Relaxed);
                    nudge.nudge();
                }
            });
        }
        Err(e) => tracing::warn!("cannot listen for SIGUSR1 (pause/resume): {e}"),
    }
}

/// Starts the pod watcher when Kubernetes metadata is on (config, or in a
/// cluster); `None` when off or when this node's name is unknown.
fn start_pod_watch(config: &Config) -> Option<PodStore> {
    let env = |k: &str| std::env::var(k).ok();
    let k = &config.kubernetes;
    if !k.active(&env) {
        return None;
    }
    let node = match crate::enrich::k8s::watch::node_name(k.node_name.as_deref(), &env) {
        Ok(n) => n,
        Err(e) => {
            tracing::warn!("no pod metadata: {e}");
            return None;
        }
    };
    let store = PodStore::new(k.max_pods);
    tokio::spawn(crate::enrich::k8s::watch::run_in_cluster(node, store.clone()));
    Some(store)
}

/// Runs the agent until SIGINT/SIGTERM.
pub async fn run(config: Config) -> Result<(), RunError> {
    config.validate()?;
    if let Some(pid) = select::missing_pid(&config.select.pids) {
        return Err(RunError::NoSuchPid(pid));
    }
    let telemetry = Telemetry::new();
    let exporters = build_outputs(&config, &telemetry)?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let metrics_task = match config.telemetry.listen {
        Some(addr) => {
            let mut rx = stop_rx.clone();
            Some(telemetry.clone().serve(addr, async move {
                let _ = rx.wait_for(|v| *v).await;
            })?)
        }
        None => None,
    };

    // Rules are checked before anything is attached: a broken file fails fast.
    let rules = match &config.rules_file {
        Some(p) => Some((p.clone(), crate::rules::RuleSet::load(p)?)),
        None => None,
    };
    let all = config.traces_all();
    let pods = start_pod_watch(&config);
    let mut selector = select::Selector::new(all, &config.select.pids, &config.select.exe)?;
    if !config.select.pod_filter().is_empty() {
        // Without metadata no pod is known, so nothing matches (never "everything").
        let store = pods.clone().unwrap_or_else(|| {
            tracing::warn!("select.namespaces/pod_labels are set but pod metadata is off: no process will match");
            PodStore::new(1)
        });
        selector = selector.with_pod_filter(config.select.pod_filter(), store);
    }
    let c = &config.capture;
    let mut capture = Capture::load(&CaptureConfig {
        capture_bytes: c.capture_bytes,
        ring_bytes: c.ring_buffer_bytes,
        max_sockets: c.max_sockets,
        wakeup_bytes: c.wakeup_bytes,
        trace_all: all,
        exe_filter: !all && !config.select.exe.is_empty(),
        ports: config.select.ports.clone(),
        unix_sockets: c.unix_sockets,
        go_goroutines: c.go_goroutines,
        attach_only: c.attach_only,
        bpf_loop: c.bpf_loop,
    })?;
    if c.attach_only {
        tracing::warn!("capture.attach_only: programs are attached but return at once; no spans will be made");
    }
    let mut initial = selector.initial();
    for pid in &initial {
        capture.select(*pid)?;
    }
    // A child forked by a selected process between that scan and its
    // selection escaped the kernel's fork tracking (and with `--pid` alone the
    // kernel reports no exec of an untraced process): a second scan decides
    // the processes that appeared meanwhile.
    let late = selector.initial();
    for pid in &late {
        capture.select(*pid)?;
    }
    initial.extend(late);
    let pod_filter = config.select.pod_filter();
    if !pod_filter.is_empty() {
        tracing::info!(
            namespaces = ?pod_filter.namespaces,
            labels = ?pod_filter.labels,
            "tracing only processes in matching pods (host processes excluded)"
        );
    }
    if all {
        tracing::info!("tracing every process on the host");
    } else {
        tracing::info!(processes = initial.len(), "tracing selected processes (more are picked up as they start)");
    }

    let mut go = GoProcs::new();
    for pid in selector.selected() {
        go.on_selected(&mut capture, pid);
    }
    let tls = c.tls.then(|| {
        let mut tls = TlsAttacher::new().with_loader_hook(c.tls_loader_hook).scoped(selector.pids_only());
        tls.start(&mut capture, &selector.selected());
        tls
    });

    let mut extra = Attributes::new();
    for (k, v) in &config.resource_attributes {
        extra.set(k.clone(), v.clone());
    }
    let (span_tx, span_rx) = queue::span_queue(c.span_queue);
    let pause = Arc::new(AtomicBool::new(false));
    let nudge = Arc::new(pipeline::Nudge::new().map_err(|e| RunError::Thread(format!("eventfd: {e}")))?);
    listen_for_pause(pause.clone(), nudge.clone());
    let pipeline = pipeline::Pipeline {
        capture,
        selector,
        conns: ConnTable::new(ConnLimits {
            max_connections: c.max_connections,
            idle_timeout_ns: c.idle_timeout_secs.saturating_mul(1_000_000_000),
        }),
        procs: {
            let t = ProcessTable::new(HostInfo::detect(), config.service_names.clone(), extra, c.max_processes);
            match &pods {
                Some(store) => t.with_pods(store.clone()),
                None => t,
            }
        },
        pods,
        builder: SpanBuilder::new(
            Clock::now(),
            Privacy { skip_private: config.rules_file.is_none(), ..config.privacy.clone() },
        ),
        linker: (c.link_hold_ms > 0).then(|| {
            Linker::new(LinkLimits {
                hold_ns: c.link_hold_ms.saturating_mul(1_000_000),
                max_held: c.link_max_held.max(1),
                max_per_thread: c.link_max_per_thread.max(1),
            })
        }),
        tls,
        go,
        spans: span_tx,
        drain_interval: Duration::from_millis(c.drain_interval_ms.max(1)),
        counters: Default::default(),
        pause: pause.clone(),
        nudge: nudge.clone(),
    };
    // Loading parsed the kernel's BTF and the eBPF object and scanned /proc:
    // tens of MiB that are free now but would stay in the heap's RSS.
    release_free_heap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut pmetrics = metrics::PipelineMetrics::register(&telemetry);
    let thread_stop = stop.clone();
    let nice = config.capture.capture_thread_nice;
    let capture_thread = std::thread::Builder::new()
        .name("kspan-capture".into())
        .spawn(move || {
            set_thread_nice(nice);
            pipeline.run(thread_stop, |c| pmetrics.publish(c))
        })
        .map_err(|e| RunError::Thread(e.to_string()))?;
    telemetry.set_ready(true);
    tracing::info!("kspan is running");

    let exporters = Arc::new(exporters);
    let forward = tokio::spawn(post::run(span_rx, exporters.clone(), rules, telemetry.clone()));

    shutdown_signal().await;
    tracing::info!("shutting down: stopping capture");
    telemetry.set_ready(false);
    stop.store(true, Ordering::Relaxed);
    nudge.nudge();
    let (counters, mut capture) = tokio::task::spawn_blocking(move || capture_thread.join())
        .await
        .map_err(|e| RunError::Thread(e.to_string()))?
        .map_err(|_| RunError::Thread("panicked".into()))?;
    // The programs detach while the outputs flush: the spans leave first
    // even when detaching outlasts the stop's grace period (a kill then
    // only cuts the detach short, which the kernel completes anyway).
    let detach = tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let links = capture.drop_links();
        drop(capture);
        (links, t.elapsed())
    });
    // The capture thread dropped its sender: the forwarder ends after the queue drains.
    if let Err(e) = forward.await {
        tracing::error!("post-processing task failed: {e}");
    }
    let deadline = Duration::from_secs(config.shutdown_timeout_secs.unwrap_or(5));
    let report = match Arc::try_unwrap(exporters) {
        Ok(e) => e.shutdown(deadline).await,
        Err(_) => Default::default(),
    };
    let _ = stop_tx.send(true);
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    match detach.await {
        Ok((links, took)) => tracing::info!(links, seconds = took.as_secs_f64(), "programs detached"),
        Err(e) => tracing::error!("detaching failed: {e}"),
    }
    let kernel_lost: u64 = counters.kernel.iter().sum();
    tracing::info!(
        events = counters.events_read,
        spans = counters.spans_built,
        exported = report.exported(),
        dropped_export = report.dropped(),
        dropped_queue = counters.spans_queue_full,
        kernel_lost,
        "kspan stopped"
    );
    Ok(())
}

/// Returns free heap memory to the kernel (glibc keeps it otherwise).
fn release_free_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Gives the calling thread nice value `nice` (Linux: per thread).
fn set_thread_nice(nice: i32) {
    if nice == 0 {
        return;
    }
    // SAFETY: plain syscalls on the calling thread.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    if r != 0 {
        tracing::warn!(
            "capture thread keeps nice 0 (capture_thread_nice = {nice}: {}); on a host whose cores are all busy, \
             events may be lost (kspan_kernel_lost_total); grant CAP_SYS_NICE or set capture_thread_nice: 0",
            std::io::Error::last_os_error()
        );
    }
}
