//! OTLP export against a scripted fake OTLP/HTTP endpoint written here with
//! hyper (429/503/400/413/500, slow, down, partial success). The real
//! collector test is in otlp_collector.rs.

mod common;

use std::collections::VecDeque;
use std::io::Read as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{base_config, exporter, free_port, metrics, process, span};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use kspan::export::otlp::{OtlpConfig, OtlpExporter};
use kspan::export::{DropReason, Exporters, Output};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTracePartialSuccess, ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use prost::Message;
use tokio::time::Instant;

// ---------------------------------------------------------------- fake endpoint

#[derive(Clone, Debug)]
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
    delay: Duration,
    body: Vec<u8>,
}

impl Reply {
    fn status(status: u16) -> Self {
        Self { status, headers: Vec::new(), delay: Duration::ZERO, body: Vec::new() }
    }
    fn ok() -> Self {
        Self::status(200)
    }
    fn header(mut self, k: &'static str, v: &str) -> Self {
        self.headers.push((k, v.to_owned()));
        self
    }
    fn delayed(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
}

#[derive(Debug)]
struct Received {
    at: Instant,
    headers: http::HeaderMap,
    request: ExportTraceServiceRequest,
    replied: u16,
    /// The reply was sent (after its scripted delay).
    answered: bool,
}

impl Received {
    fn spans(&self) -> usize {
        self.request.resource_spans.iter().flat_map(|r| &r.scope_spans).map(|s| s.spans.len()).sum()
    }
}

#[derive(Default)]
struct FakeState {
    script: VecDeque<Reply>,
    fallback: Option<Reply>,
    received: Vec<Received>,
}

/// An OTLP/HTTP endpoint that answers from a script (then the fallback,
/// else 200) and records every request.
struct Fake {
    addr: SocketAddr,
    state: Arc<Mutex<FakeState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Fake {
    async fn start(script: Vec<Reply>) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("addr"), script).await
    }

    async fn start_on(addr: SocketAddr, script: Vec<Reply>) -> Self {
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind fake endpoint");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(FakeState { script: script.into(), ..FakeState::default() }));
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let st = st.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req| handle(st.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self { addr, state, task }
    }

    fn fallback(&self, reply: Reply) {
        self.state.lock().expect("lock").fallback = Some(reply);
    }

    fn with<T>(&self, f: impl FnOnce(&[Received]) -> T) -> T {
        f(&self.state.lock().expect("lock").received)
    }

    fn requests(&self) -> usize {
        self.with(|r| r.len())
    }

    /// Spans in requests answered 2xx.
    fn delivered(&self) -> usize {
        self.with(|r| r.iter().filter(|x| x.answered && (200..300).contains(&x.replied)).map(Received::spans).sum())
    }

    async fn wait_for(&self, what: &str, cond: impl Fn(&Self) -> bool) {
        let until = Instant::now() + Duration::from_secs(15);
        while !cond(self) {
            assert!(Instant::now() < until, "timed out waiting for {what}; {} requests so far", self.requests());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    state: Arc<Mutex<FakeState>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let at = Instant::now();
    let (parts, body) = req.into_parts();
    let raw = body.collect().await.map(|b| b.to_bytes()).unwrap_or_default();
    let raw = if parts.headers.get("content-encoding").is_some_and(|v| v == "gzip") {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(raw.as_ref()).read_to_end(&mut out).expect("gzip body");
        out
    } else {
        raw.to_vec()
    };
    let request = ExportTraceServiceRequest::decode(raw.as_slice()).expect("OTLP protobuf body");
    let (reply, index) = {
        let mut st = state.lock().expect("lock");
        let reply = st.script.pop_front().or_else(|| st.fallback.clone()).unwrap_or_else(Reply::ok);
        st.received.push(Received { at, headers: parts.headers, request, replied: reply.status, answered: false });
        (reply, st.received.len() - 1)
    };
    tokio::time::sleep(reply.delay).await;
    if let Some(r) = state.lock().expect("lock").received.get_mut(index) {
        r.answered = true;
    }
    let mut resp = Response::new(Full::new(Bytes::from(reply.body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(reply.status).expect("status");
    for (k, v) in reply.headers {
        resp.headers_mut().insert(k, v.parse().expect("header"));
    }
    Ok(resp)
}

// ---------------------------------------------------------------- (a) fake endpoint

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_429_is_retried_after_the_retry_after_delay() {
    let fake = Fake::start(vec![Reply::status(429).header("retry-after", "1"), Reply::ok()]).await;
    let (_t, m) = metrics();
    let exp = exporter(base_config("x", fake.addr), &m);
    let p = process(10, "svc");
    for n in 0..3 {
        exp.submit(span(&p, n, "GET /"));
    }
    fake.wait_for("the retry", |f| f.requests() == 2).await;
    let gap = fake.with(|r| r[1].at - r[0].at);
    // The configured backoff is 100 ms: only Retry-After explains >= 1 s.
    assert!(gap >= Duration::from_millis(950), "retried after {gap:?}, Retry-After said 1 s");
    assert!(gap < Duration::from_secs(3), "retried after {gap:?}");
    let report = exp.shutdown(Instant::now() + Duration::from_secs(5)).await;
    assert_eq!((report.exported, report.dropped_total()), (3, 0), "{report:?}");
    assert_eq!(fake.delivered(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_503_is_retried_with_backoff_until_accepted() {
    let fake = Fake::start(vec![Reply::status(503), Reply::status(503), Reply::ok()]).await;
    let (t, m) = metrics();
    let exp = exporter(base_config("x", fake.addr), &m);
    exp.submit(span(&process(10, "svc"), 1, "GET /"));
    fake.wait_for("two retries", |f| f.requests() == 3).await;
    let report = exp.shutdown(Instant::now() + Duration::from_secs(5)).await;
    assert_eq!((report.exported, report.dropped_total()), (1, 0), "{report:?}");
    assert!(t.encode().contains("kspan_export_retries_total{exporter=\"x\"} 2"), "{}", t.encode());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_retryable_http_statuses_are_dropped_after_one_attempt() {
    for (status, reason) in [(400, DropReason::Rejected), (413, DropReason::Rejected), (500, DropReason::NonRetryable)]
    {
        let fake = Fake::start(vec![]).await;
        fake.fallback(Reply::status(status));
        let (_t, m) = metrics();
        let exp = exporter(base_config("x", fake.addr), &m);
        let p = process(10, "svc");
        exp.submit(span(&p, 1, "a"));
        exp.submit(span(&p, 2, "b"));
        fake.wait_for("the request", |f| f.requests() == 1).await;
        // Longer than several backoff periods (100 ms): a retry would show.
        tokio::time::sleep(Duration::from_millis(600)).await;
        let report = exp.shutdown(Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(fake.requests(), 1, "HTTP {status} must not be retried");
        assert_eq!(report.dropped_for(reason), 2, "HTTP {status}: {report:?}");
        assert_eq!(report.exported, 0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_is_honoured_and_the_attempt_retried() {
    let fake = Fake::start(vec![Reply::ok().delayed(Duration::from_secs(4)), Reply::ok()]).await;
    let (_t, m) = metrics();
    let exp = exporter(OtlpConfig { timeout_ms: Some(300), ..base_config("x", fake.addr) }, &m);
    exp.submit(span(&process(10, "svc"), 1, "GET /"));
    fake.wait_for("the retry after the timeout", |f| f.requests() == 2).await;
    let gap = fake.with(|r| r[1].at - r[0].at);
    assert!(gap >= Duration::from_millis(300), "gave up before the timeout: {gap:?}");
    assert!(gap < Duration::from_millis(1500), "waited for the slow answer: {gap:?}");
    let report = exp.shutdown(Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(report.exported, 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_headers_and_gzip_reach_the_endpoint() {
    let fake = Fake::start(vec![]).await;
    let (_t, m) = metrics();
    let endpoint = format!("http://{}", fake.addr);
    let env = |k: &str| match k {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.clone()),
        "OTEL_EXPORTER_OTLP_TRACES_HEADERS" => Some("Authorization=Bearer%20s3cr%3Dt,x-tenant=acme".to_owned()),
        "OTEL_EXPORTER_OTLP_COMPRESSION" => Some("gzip".to_owned()),
        "OTEL_RESOURCE_ATTRIBUTES" => Some("deployment.environment=test".to_owned()),
        _ => None,
    };
    let s = OtlpConfig::from_env_and_file(&[], &env).expect("valid").remove(0);
    assert!(!format!("{s:?}").contains("s3cr"), "Debug leaks the header value");
    let exp = OtlpExporter::spawn(s, &m).expect("exporter");
    exp.submit(span(&process(10, "svc"), 1, "GET /"));
    fake.wait_for("the request", |f| f.requests() == 1).await;
    exp.shutdown(Instant::now() + Duration::from_secs(5)).await;
    fake.with(|r| {
        let h = &r[0].headers;
        assert_eq!(h.get("authorization").map(|v| v.as_bytes()), Some(&b"Bearer s3cr=t"[..]));
        assert_eq!(h.get("x-tenant").map(|v| v.as_bytes()), Some(&b"acme"[..]));
        assert_eq!(h.get("content-encoding").map(|v| v.as_bytes()), Some(&b"gzip"[..]));
        assert_eq!(h.get("content-type").map(|v| v.as_bytes()), Some(&b"application/x-protobuf"[..]));
        assert!(h.get("user-agent").is_some_and(|v| v.as_bytes().starts_with(b"kspan/")));
        let res = r[0].request.resource_spans[0].resource.as_ref().expect("resource");
        assert!(res.attributes.iter().any(|kv| kv.key == "deployment.environment"));
        let body = r[0].request.encode_to_vec();
        assert!(!body.windows(14).any(|w| w == b"never-exported"), "private attribute exported");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_bound_is_respected_and_overflow_counted() {
    // The first request is held for 1 s: meanwhile only the queue (10) fills
    // (one request at a time here; see the next test for several).
    let fake = Fake::start(vec![Reply::ok().delayed(Duration::from_secs(1))]).await;
    let (t, m) = metrics();
    let cfg = OtlpConfig {
        max_queue_size: Some(10),
        max_export_batch_size: Some(5),
        max_concurrent_exports: Some(1),
        ..base_config("q", fake.addr)
    };
    let exp = exporter(cfg, &m);
    let p = process(10, "svc");
    exp.submit(span(&p, 0, "first"));
    fake.wait_for("the first request", |f| f.requests() == 1).await;
    for n in 1..=40 {
        exp.submit(span(&p, n, "burst"));
    }
    assert!(t.encode().contains("kspan_export_queue_depth{exporter=\"q\"} 10"), "{}", t.encode());
    fake.wait_for("the queued spans", |f| f.delivered() == 11).await;
    let report = exp.shutdown(Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(report.exported, 11, "{report:?}");
    assert_eq!(report.dropped_for(DropReason::QueueFull), 30, "{report:?}");
    assert_eq!(fake.delivered(), 11);
    let text = t.encode();
    assert!(
        text.contains("kspan_export_spans_total{exporter=\"q\",result=\"dropped\",reason=\"queue_full\"} 30"),
        "{text}"
    );
    assert!(text.contains("kspan_export_spans_total{exporter=\"q\",result=\"exported\",reason=\"\"} 11"), "{text}");
    assert!(text.contains("kspan_export_latency_seconds_count{exporter=\"q\"} 3"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_hold_at_most_one_batch_each_beyond_the_queue() {
    // Two requests held for 1 s each: they are in flight together, and
    // besides the queue (10) they hold at most one batch (5) each.
    let held = || Reply::ok().delayed(Duration::from_secs(1));
    let fake = Fake::start(vec![held(), held()]).await;
    let (_t, m) = metrics();
    let cfg = OtlpConfig {
        max_queue_size: Some(10),
        max_export_batch_size: Some(5),
        max_concurrent_exports: Some(2),
        scheduled_delay_ms: Some(50),
        ..base_config("c", fake.addr)
    };
    let exp = exporter(cfg, &m);
    let p = process(10, "svc");
    exp.submit(span(&p, 0, "first"));
    fake.wait_for("the first request", |f| f.requests() == 1).await;
    exp.submit(span(&p, 1, "second"));
    fake.wait_for("a second request while the first is held", |f| f.requests() == 2).await;
    assert_eq!(fake.delivered(), 0, "both requests are still held");
    for n in 2..=41 {
        exp.submit(span(&p, n, "burst"));
    }
    let report = exp.shutdown(Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(report.exported + report.dropped_total(), 42, "{report:?}");
    assert_eq!(report.dropped_for(DropReason::QueueFull), 30, "{report:?}");
    assert_eq!(report.exported, 12, "{report:?}");
    assert_eq!(fake.delivered(), 12);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_down_then_up_receives_everything_within_the_queue_bound() {
    let addr = free_port();
    let (_t, m) = metrics();
    let cfg = OtlpConfig { max_queue_size: Some(100), max_export_batch_size: Some(10), ..base_config("d", addr) };
    let exp = exporter(cfg, &m);
    let p = process(10, "svc");
    for n in 0..60 {
        exp.submit(span(&p, n, "while down"));
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    let fake = Fake::start_on(addr, vec![]).await;
    fake.wait_for("all 60 spans", |f| f.delivered() == 60).await;
    let report = exp.shutdown(Instant::now() + Duration::from_secs(5)).await;
    assert_eq!((report.exported, report.dropped_total()), (60, 0), "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrying_past_max_elapsed_drops_the_batch() {
    let fake = Fake::start(vec![]).await;
    fake.fallback(Reply::status(503));
    let (_t, m) = metrics();
    let exp = exporter(OtlpConfig { max_elapsed_ms: Some(700), ..base_config("e", fake.addr) }, &m);
    exp.submit(span(&process(10, "svc"), 1, "x"));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let attempts = fake.requests();
    let report = exp.shutdown(Instant::now() + Duration::from_secs(1)).await;
    // 100 ms initial backoff doubling to 400 ms within 700 ms: a handful.
    assert!((2..=8).contains(&attempts), "{attempts} attempts");
    assert_eq!(fake.requests(), attempts, "no attempt after giving up");
    assert_eq!(report.dropped_for(DropReason::MaxElapsed), 1, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_success_is_counted_not_retried() {
    let body = ExportTraceServiceResponse {
        partial_success: Some(ExportTracePartialSuccess { rejected_spans: 2, error_message: "too old".into() }),
    }
    .encode_to_vec();
    let fake = Fake::start(vec![Reply { body, ..Reply::ok() }]).await;
    let (_t, m) = metrics();
    let exp = exporter(base_config("p", fake.addr), &m);
    let p = process(10, "svc");
    for n in 0..5 {
        exp.submit(span(&p, n, "x"));
    }
    fake.wait_for("the request", |f| f.requests() == 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = exp.shutdown(Instant::now() + Duration::from_secs(5)).await;
    assert_eq!(fake.requests(), 1);
    assert_eq!(report.exported, 3, "{report:?}");
    assert_eq!(report.dropped_for(DropReason::Partial), 2, "{report:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_never_holds_back_another_and_shutdown_keeps_its_deadline() {
    let slow = Fake::start(vec![]).await;
    slow.fallback(Reply::ok().delayed(Duration::from_secs(30)));
    let good = Fake::start(vec![]).await;
    let down = free_port();
    let (_t, m) = metrics();
    let exporters = Exporters::new(vec![
        Output::Otlp(exporter(base_config("slow", slow.addr), &m)),
        Output::Otlp(exporter(base_config("down", down), &m)),
        Output::Otlp(exporter(base_config("good", good.addr), &m)),
    ]);
    let p = process(10, "svc");
    for n in 0..20 {
        exporters.submit(span(&p, n, "x"));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    good.wait_for("the good endpoint's spans", |f| f.delivered() == 20).await;
    assert_eq!(slow.delivered(), 0, "the slow endpoint has not answered yet");
    let started = Instant::now();
    let report = exporters.shutdown(Duration::from_millis(500)).await;
    assert!(started.elapsed() < Duration::from_secs(2), "shutdown took {:?}", started.elapsed());
    let good_r = report.output("good").expect("good");
    assert_eq!((good_r.exported, good_r.dropped_total()), (20, 0), "{report:?}");
    for name in ["slow", "down"] {
        let r = report.output(name).expect(name);
        assert_eq!((r.exported, r.dropped_for(DropReason::Shutdown)), (0, 20), "{report:?}");
    }
}
