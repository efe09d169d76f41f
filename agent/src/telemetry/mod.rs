//! The agent's own telemetry: a Prometheus registry every stage registers its
//! metrics in, a readiness flag, and a tiny HTTP/1.1 endpoint serving both.
//!
//! Guarantees:
//! - `GET /metrics` returns the registry in the Prometheus/OpenMetrics text
//!   format; `GET /healthz` answers 200 `ok` for as long as the process serves;
//!   `GET /readyz` answers 200 once [`Telemetry::set_ready`]`(true)` was called,
//!   503 otherwise. Anything else is 404 (405 for a non-GET/HEAD method).
//! - The server is bounded: at most [`MAX_CONNECTIONS`] connections are served
//!   at once (further ones wait in the kernel backlog) and each connection is
//!   closed after [`CONNECTION_TIMEOUT`].
//! - The server stops accepting when the `shutdown` future completes.
//!
//! Note on names: prometheus-client appends `_total` to counters, so a counter
//! registered as `kspan_export_spans` is exposed as `kspan_export_spans_total`.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::{Metric, Registry};
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

/// Default listen address of the telemetry endpoint (the caller configures it).
pub const DEFAULT_ADDR: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);
/// Connections served concurrently; more wait until one finishes.
pub const MAX_CONNECTIONS: usize = 32;
/// A connection (keep-alive included) is closed after this long.
pub const CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);

const OPENMETRICS_CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Errors of the telemetry endpoint.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("cannot listen on {addr} for the telemetry endpoint: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("the telemetry endpoint must be started from inside a tokio runtime")]
    NoRuntime,
}

/// Shared handle to the agent's metrics registry and readiness state.
pub struct Telemetry {
    registry: Mutex<Registry>,
    ready: AtomicBool,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("ready", &self.is_ready()).finish_non_exhaustive()
    }
}

impl Telemetry {
    /// A new, not-yet-ready handle with an empty registry.
    pub fn new() -> Arc<Self> {
        Arc::new(Self { registry: Mutex::new(Registry::default()), ready: AtomicBool::new(false) })
    }

    /// Registers any prometheus-client metric (Counter, Gauge, Histogram,
    /// Family, ...). The metric is shared: keep a clone to update it.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        self.lock_registry().register(name, help, metric);
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// The registry in the text exposition format (ends with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let registry = self.lock_registry();
        // Writing into a String cannot fail; an error would only come from a
        // metric's own encoder, and then the partial text is still served.
        if prometheus_client::encoding::text::encode(&mut out, &registry).is_err() {
            tracing::warn!("a metric failed to encode; /metrics output is partial");
        }
        out
    }

    fn lock_registry(&self) -> std::sync::MutexGuard<'_, Registry> {
        // A panic while holding the lock cannot leave the registry half-updated
        // in a way that matters for reading it, so a poisoned lock is reused.
        self.registry.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Binds `addr` now (so a bad address fails at start) and serves
    /// /metrics, /healthz and /readyz until `shutdown` completes.
    /// Must be called from inside a tokio runtime.
    pub fn serve(
        self: Arc<Self>,
        addr: SocketAddr,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<JoinHandle<()>, TelemetryError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TelemetryError::NoRuntime)?;
        let bind = |source| TelemetryError::Bind { addr, source };
        let std_listener = std::net::TcpListener::bind(addr).map_err(bind)?;
        std_listener.set_nonblocking(true).map_err(bind)?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener).map_err(bind)?
        };
        let local = listener.local_addr().unwrap_or(addr);
        tracing::info!(addr = %local, "telemetry endpoint listening");
        Ok(runtime.spawn(accept_loop(self, listener, shutdown)))
    }
}

async fn accept_loop(telemetry: Arc<Telemetry>, listener: tokio::net::TcpListener, shutdown: impl Future<Output = ()>) {
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            _ = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => break,
            },
        };
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::debug!(%err, "telemetry endpoint accept failed");
                    continue;
                }
            },
        };
        let telemetry = telemetry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let telemetry = telemetry.clone();
                async move { Ok::<_, Infallible>(route(&telemetry, &req)) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), service);
            if let Ok(Err(err)) = tokio::time::timeout(CONNECTION_TIMEOUT, conn).await {
                tracing::debug!(%err, "telemetry connection error");
            }
            drop(permit);
        });
    }
    tracing::info!("telemetry endpoint stopped");
}

fn route(telemetry: &Telemetry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match req.uri().path() {
        "/metrics" => {
            let mut resp = Response::new(Full::new(Bytes::from(telemetry.encode())));
            resp.headers_mut()
                .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static(OPENMETRICS_CONTENT_TYPE));
            resp
        }
        "/healthz" => text(StatusCode::OK, "ok\n"),
        "/readyz" if telemetry.is_ready() => text(StatusCode::OK, "ready\n"),
        "/readyz" => text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(hyper::header::CONTENT_TYPE, hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"));
    resp
}

/// An error and its sources on one line, `err: cause: cause`, for logs and
/// counters' detail (reqwest's and aya's Display hide the root cause).
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus_client::metrics::counter::Counter;
    use prometheus_client::metrics::family::Family;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut buf = String::new();
        stream.read_to_string(&mut buf).await.expect("read");
        let status = buf.get(9..12).and_then(|s| s.parse().ok()).expect("status line");
        let body = buf.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
        (status, body)
    }

    #[test]
    fn encode_includes_registered_family_with_total_suffix() {
        let t = Telemetry::new();
        let fam: Family<Vec<(String, String)>, Counter> = Family::default();
        t.register("kspan_test_things", "Things.", fam.clone());
        fam.get_or_create(&vec![("kind".into(), "a".into())]).inc_by(3);
        let text = t.encode();
        assert!(text.contains("kspan_test_things_total{kind=\"a\"} 3"), "{text}");
        assert!(text.trim_end().ends_with("# EOF"), "{text}");
    }

    #[tokio::test]
    async fn serves_metrics_health_and_readiness() {
        let t = Telemetry::new();
        let c: Counter = Counter::default();
        t.register("kspan_test_served", "Served.", c.clone());
        c.inc();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        // Port 0: let the kernel pick; read it back from a bound probe socket.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("probe");
        let addr = probe.local_addr().expect("addr");
        drop(probe);
        let handle = t
            .clone()
            .serve(addr, async move {
                let _ = stop_rx.await;
            })
            .expect("serve");

        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".to_owned()));
        assert_eq!(get(addr, "/readyz").await.0, 503);
        t.set_ready(true);
        assert_eq!(get(addr, "/readyz").await.0, 200);
        let (status, body) = get(addr, "/metrics").await;
        assert_eq!(status, 200);
        assert!(body.contains("kspan_test_served_total 1"), "{body}");
        assert_eq!(get(addr, "/nope").await.0, 404);

        stop_tx.send(()).expect("stop");
        tokio::time::timeout(Duration::from_secs(5), handle).await.expect("stops").expect("join");
        assert!(tokio::net::TcpStream::connect(addr).await.is_err(), "listener closed after shutdown");
    }

    #[tokio::test]
    async fn bind_failure_is_reported_with_address() {
        let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = taken.local_addr().expect("addr");
        let err = Telemetry::new().serve(addr, std::future::pending()).expect_err("port in use");
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
    }

    #[test]
    fn serve_outside_runtime_is_an_error_not_a_panic() {
        let err = Telemetry::new().serve(DEFAULT_ADDR, std::future::pending()).expect_err("no runtime");
        assert!(matches!(err, TelemetryError::NoRuntime));
    }
}
