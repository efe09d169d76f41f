//! OTLP/HTTP over TLS and mTLS: a fake https endpoint (rustls) that requires
//! a client certificate, with certificates made by rcgen for each run.
//! The exporter is configured the OTel way (OTEL_EXPORTER_OTLP_CERTIFICATE,
//! _CLIENT_CERTIFICATE, _CLIENT_KEY).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use kspan::export::ExportMetrics;
use kspan::export::otlp::{OtlpConfig, OtlpExporter};
use kspan::span::model::{Attributes, ProcessResource, Span, SpanKind, SpanStatus};
use kspan::telemetry::Telemetry;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use prost::Message;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::time::Instant;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

struct Pki {
    dir: PathBuf,
    ca: PathBuf,
    server_cert: String,
    server_key: String,
    client_cert: PathBuf,
    client_key: PathBuf,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn pki(tag: &str) -> Pki {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "kspan test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("key")).expect("ca");

    let server_key = KeyPair::generate().expect("key");
    let mut sp = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
    sp.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = sp.signed_by(&server_key, &ca).expect("server cert");

    let client_key = KeyPair::generate().expect("key");
    let mut cp = CertificateParams::new(Vec::<String>::new()).expect("params");
    cp.distinguished_name.push(DnType::CommonName, "kspan agent");
    cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let client_cert = cp.signed_by(&client_key, &ca).expect("client cert");

    let dir = std::env::temp_dir().join(format!("kspan-tls-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write pem");
        p
    };
    Pki {
        ca: write("ca.pem", ca.pem()),
        client_cert: write("client.pem", client_cert.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
        server_cert: server_cert.pem(),
        server_key: server_key.serialize_pem(),
        dir,
    }
}

#[derive(Default)]
struct Seen {
    handshake_failures: AtomicUsize,
    spans: AtomicUsize,
    client_cert_subjects: Mutex<Vec<usize>>,
}

/// An https OTLP endpoint that requires a client certificate from the CA.
async fn tls_endpoint(pki: &Pki) -> (SocketAddr, Arc<Seen>) {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(&pki.ca).expect("ca der")).expect("add ca");
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build().expect("verifier");
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from_pem_slice(pki.server_cert.as_bytes()).expect("cert")],
            PrivateKeyDer::from_pem_slice(pki.server_key.as_bytes()).expect("key"),
        )
        .expect("server config");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, seen) = (acceptor.clone(), s.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    seen.handshake_failures.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                let chain_len = tls.get_ref().1.peer_certificates().map_or(0, <[_]>::len);
                seen.client_cert_subjects.lock().expect("lock").push(chain_len);
                let service = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let body = req.into_body().collect().await.map(|b| b.to_bytes()).unwrap_or_default();
                        let r = ExportTraceServiceRequest::decode(body.as_ref()).expect("protobuf");
                        let n: usize =
                            r.resource_spans.iter().flat_map(|x| &x.scope_spans).map(|x| x.spans.len()).sum();
                        seen.spans.fetch_add(n, Ordering::Relaxed);
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::new())))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(tls), service).await;
            });
        }
    });
    (addr, seen)
}

fn span(resource: &Arc<ProcessResource>, n: u64) -> Arc<Span> {
    Arc::new(Span {
        trace_id: [n as u8 + 1; 16],
        span_id: [n as u8 + 1; 8],
        parent_span_id: [0; 8],
        trace_state: String::new(),
        trace_flags: 1,
        name: format!("op-{n}").into(),
        kind: SpanKind::Client,
        start_unix_ns: 1,
        end_unix_ns: 2,
        status: SpanStatus::default(),
        attributes: Attributes::new(),
        private: Attributes::new(),
        events: Vec::new(),
        resource: resource.clone(),
        tid: 1,
    })
}

/// Exports 3 spans configured from these env vars; returns (exported, seen).
async fn export_with(pki: &Pki, vars: &[(&str, &Path)], wait_for_delivery: bool) -> (u64, Arc<Seen>) {
    let (addr, seen) = tls_endpoint(pki).await;
    let endpoint = format!("https://{addr}");
    let env = |k: &str| {
        if k == "OTEL_EXPORTER_OTLP_ENDPOINT" {
            return Some(endpoint.clone());
        }
        vars.iter().find(|(name, _)| *name == k).map(|(_, p)| p.to_string_lossy().into_owned())
    };
    let mut settings = OtlpConfig::from_env_and_file(&[], &env).expect("valid config").remove(0);
    settings.batch.scheduled_delay = Duration::from_millis(20);
    settings.retry.initial_backoff = Duration::from_millis(100);
    let metrics = ExportMetrics::register(&Telemetry::new());
    let exp = OtlpExporter::spawn(settings, &metrics).expect("exporter");
    let p = Arc::new(ProcessResource { pid: 1, attributes: Attributes::new() });
    for n in 0..3 {
        exp.submit(span(&p, n));
    }
    let until = Instant::now() + Duration::from_secs(10);
    if wait_for_delivery {
        while seen.spans.load(Ordering::Relaxed) < 3 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else {
        // Long enough for several retries (100 ms backoff).
        while seen.handshake_failures.load(Ordering::Relaxed) < 2 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let report = exp.shutdown(Instant::now() + Duration::from_millis(300)).await;
    (report.exported, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_with_ca_and_client_certificate_delivers() {
    let pki = pki("ok");
    let vars = [
        ("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca.as_path()),
        ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", pki.client_cert.as_path()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.client_key.as_path()),
    ];
    let (exported, seen) = export_with(&pki, &vars, true).await;
    assert_eq!(exported, 3);
    assert_eq!(seen.spans.load(Ordering::Relaxed), 3);
    assert!(seen.client_cert_subjects.lock().expect("lock").iter().all(|n| *n >= 1), "client cert presented");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_client_certificate_is_refused_and_retried() {
    let pki = pki("noclient");
    let vars = [("OTEL_EXPORTER_OTLP_CERTIFICATE", pki.ca.as_path())];
    let (exported, seen) = export_with(&pki, &vars, false).await;
    assert_eq!(exported, 0);
    assert_eq!(seen.spans.load(Ordering::Relaxed), 0);
    assert!(seen.handshake_failures.load(Ordering::Relaxed) >= 2, "the failed handshake was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_not_signed_by_a_trusted_ca_is_rejected() {
    let pki = pki("untrusted");
    // No OTEL_EXPORTER_OTLP_CERTIFICATE: only the system roots are trusted.
    let vars = [
        ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", pki.client_cert.as_path()),
        ("OTEL_EXPORTER_OTLP_CLIENT_KEY", pki.client_key.as_path()),
    ];
    let (exported, seen) = export_with(&pki, &vars, false).await;
    assert_eq!(exported, 0);
    assert_eq!(seen.spans.load(Ordering::Relaxed), 0);
}
