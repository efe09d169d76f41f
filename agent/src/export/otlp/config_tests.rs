//! Unit tests of config.rs (env parsing, path rules, header validation).

use super::*;
use std::collections::HashMap;

fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
    move |k: &str| map.get(k).cloned()
}

fn from_env(pairs: &[(&str, &str)]) -> Result<Vec<OtlpSettings>, ExportConfigError> {
    OtlpConfig::from_env_and_file(&[], &env_of(pairs))
}

fn one(pairs: &[(&str, &str)]) -> OtlpSettings {
    let mut v = from_env(pairs).expect("valid config");
    assert_eq!(v.len(), 1);
    v.remove(0)
}

#[test]
fn no_config_gives_spec_defaults() {
    let s = one(&[]);
    assert_eq!(s.name, "otlp");
    assert_eq!(s.protocol, Protocol::HttpProtobuf);
    assert_eq!(s.endpoint.as_str(), "http://localhost:4318/v1/traces");
    assert_eq!(s.timeout, Duration::from_secs(10));
    assert_eq!(s.compression, Compression::None);
    assert_eq!(s.batch.max_queue_size, 2048);
    assert_eq!(s.batch.max_export_batch_size, 512);
    assert_eq!(s.batch.scheduled_delay, Duration::from_millis(1000));
    assert_eq!(s.retry.max_elapsed, Duration::from_secs(60));
}

#[test]
fn generic_endpoint_gets_signal_path_appended_for_http() {
    let cases = [
        ("http://collector:4318", "http://collector:4318/v1/traces"),
        ("http://collector:4318/", "http://collector:4318/v1/traces"),
        ("https://example.com:4318/mypath", "https://example.com:4318/mypath/v1/traces"),
        ("https://example.com/mypath/", "https://example.com/mypath/v1/traces"),
    ];
    for (input, want) in cases {
        let s = one(&[("OTEL_EXPORTER_OTLP_ENDPOINT", input)]);
        assert_eq!(s.endpoint.as_str(), want, "from {input}");
    }
}

#[test]
fn signal_endpoint_is_used_as_is_and_wins_over_generic() {
    let s = one(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://generic:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:9999/custom/path"),
    ]);
    assert_eq!(s.endpoint.as_str(), "http://traces:9999/custom/path");
    let s = one(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:9999")]);
    assert_eq!(s.endpoint.as_str(), "http://traces:9999/");
}

#[test]
fn grpc_uses_only_scheme_and_authority() {
    let s = one(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")]);
    assert_eq!(s.endpoint.as_str(), "http://localhost:4317/");
    let s = one(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://[::1]:4317/ignored?q=1"),
    ]);
    assert_eq!(s.endpoint.as_str(), "https://[::1]:4317/");
}

#[test]
fn traces_variants_win_over_generic_ones() {
    let s = one(&[
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_TIMEOUT", "1000"),
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "2500"),
        ("OTEL_EXPORTER_OTLP_COMPRESSION", "none"),
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "gzip"),
        ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
        ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
    ]);
    assert_eq!(s.protocol, Protocol::Grpc);
    assert_eq!(s.timeout, Duration::from_millis(2500));
    assert_eq!(s.compression, Compression::Gzip);
    let names: Vec<&str> = s.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["b"]);
}

#[test]
fn empty_variable_counts_as_unset() {
    let s = one(&[("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", ""), ("OTEL_EXPORTER_OTLP_TIMEOUT", "700")]);
    assert_eq!(s.timeout, Duration::from_millis(700));
}

#[test]
fn headers_are_percent_decoded_and_trimmed() {
    let s = one(&[("OTEL_EXPORTER_OTLP_HEADERS", " Authorization = Bearer%20abc%3D%3D , x-tenant=a%2Cb,")]);
    let got: Vec<(String, String)> =
        s.headers.iter().map(|(k, v)| (k.to_string(), v.to_str().expect("ascii").to_owned())).collect();
    assert_eq!(
        got,
        [("authorization".to_owned(), "Bearer abc==".to_owned()), ("x-tenant".to_owned(), "a,b".to_owned())]
    );
}

#[test]
fn header_value_with_crlf_is_rejected_without_echoing_it() {
    let err = from_env(&[("OTEL_EXPORTER_OTLP_HEADERS", "api-key=sekrit%0D%0AX-Evil: 1")]).expect_err("CRLF");
    let msg = err.to_string();
    assert!(msg.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{msg}");
    assert!(msg.contains("`api-key`"), "{msg}");
    assert!(msg.contains("CR or LF"), "{msg}");
    assert!(!msg.contains("sekrit"), "{msg}");
}

#[test]
fn header_value_with_control_or_non_ascii_is_rejected() {
    for raw in ["k=a%07b", "k=caf%C3%A9", "k=a%7Fb"] {
        let err = from_env(&[("OTEL_EXPORTER_OTLP_TRACES_HEADERS", raw)]).expect_err(raw);
        let msg = err.to_string();
        assert!(msg.contains("OTEL_EXPORTER_OTLP_TRACES_HEADERS"), "{msg}");
        assert!(msg.contains("non-visible or non-ASCII"), "{msg}");
    }
}

#[test]
fn malformed_header_entries_and_names_are_rejected() {
    let err = from_env(&[("OTEL_EXPORTER_OTLP_HEADERS", "a=1,novalue")]).expect_err("no =");
    assert!(err.to_string().contains("header entry #2"), "{err}");
    let err = from_env(&[("OTEL_EXPORTER_OTLP_HEADERS", "bad name=1")]).expect_err("space in name");
    assert!(err.to_string().contains("`bad name` is not a valid header name"), "{err}");
    let err = from_env(&[("OTEL_EXPORTER_OTLP_HEADERS", "k=%FF")]).expect_err("bad utf8");
    assert!(err.to_string().contains("percent-encoded UTF-8"), "{err}");
}

#[test]
fn invalid_urls_are_rejected_with_the_variable_name() {
    let err = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://")]).expect_err("no host");
    assert!(err.to_string().starts_with("OTEL_EXPORTER_OTLP_ENDPOINT"), "{err}");
    let err = from_env(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "localhost:4318")]).expect_err("no scheme");
    assert!(err.to_string().contains("must start with http:// or https://"), "{err}");
    let err = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://exa mple:80")]).expect_err("space");
    assert!(err.to_string().contains("malformed endpoint URL"), "{err}");
    let err = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://x")]).expect_err("ftp");
    assert!(matches!(err, ExportConfigError::EndpointScheme { .. }), "{err}");
}

#[test]
fn url_password_is_not_echoed_in_errors() {
    let err = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "ftp://user:pw123@host/x")]).expect_err("ftp");
    assert!(!err.to_string().contains("pw123"), "{err}");
    assert!(err.to_string().contains("***@host/x"), "{err}");
}

#[test]
fn bad_protocol_compression_and_timeout_are_precise() {
    let err = from_env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).expect_err("json");
    assert!(err.to_string().contains("`http/json`"), "{err}");
    let err = from_env(&[("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "zstd")]).expect_err("zstd");
    assert!(err.to_string().starts_with("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION"), "{err}");
    let err = from_env(&[("OTEL_EXPORTER_OTLP_TIMEOUT", "10s")]).expect_err("10s");
    assert!(err.to_string().contains("`10s`"), "{err}");
}

#[test]
fn header_values_never_appear_in_debug_output() {
    let s = one(&[("OTEL_EXPORTER_OTLP_HEADERS", "authorization=Bearer%20topsecret")]);
    let dbg = format!("{s:?}");
    assert!(dbg.contains("authorization"), "{dbg}");
    assert!(!dbg.contains("topsecret"), "{dbg}");
    let mut cfg = OtlpConfig::default();
    cfg.headers.0.insert("x-api-key".into(), "topsecret".into());
    let dbg = format!("{cfg:?}");
    assert!(dbg.contains("x-api-key") && !dbg.contains("topsecret"), "{dbg}");
}

#[test]
fn resource_attributes_are_decoded_and_file_overrides_env() {
    let mut cfg = OtlpConfig { name: Some("a".into()), ..OtlpConfig::default() };
    cfg.resource_attributes.insert("deployment.environment".into(), "prod".into());
    let env = env_of(&[("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=dev,k8s.cluster.name=c%201")]);
    let v = OtlpConfig::from_env_and_file(&[cfg], &env).expect("valid");
    assert_eq!(v.len(), 1, "file entries only when no endpoint variable is set");
    assert_eq!(
        v[0].resource_attributes,
        [("deployment.environment".to_owned(), "prod".to_owned()), ("k8s.cluster.name".to_owned(), "c 1".to_owned())]
    );
}

#[test]
fn malformed_resource_attributes_are_discarded_whole() {
    let s = one(&[("OTEL_RESOURCE_ATTRIBUTES", "a=1,broken,b=2")]);
    assert!(s.resource_attributes.is_empty(), "{:?}", s.resource_attributes);
}

#[test]
fn file_declares_several_endpoints_and_env_endpoint_adds_one() {
    let file = [
        OtlpConfig { endpoint: Some("http://a:4318".into()), ..OtlpConfig::default() },
        OtlpConfig {
            name: Some("tempo".into()),
            protocol: Some(Protocol::Grpc),
            endpoint: Some("http://b:4317".into()),
            ..OtlpConfig::default()
        },
    ];
    let env = env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), ("OTEL_EXPORTER_OTLP_HEADERS", "k=v")]);
    let v = OtlpConfig::from_env_and_file(&file, &env).expect("valid");
    let names: Vec<&str> = v.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["otlp", "tempo", "otlp-env"]);
    assert!(v[0].headers.is_empty(), "env headers never leak to file exporters");
    assert_eq!(v[2].headers.len(), 1);
    assert_eq!(v[2].endpoint.as_str(), "http://c:4318/v1/traces");
}

#[test]
fn file_errors_name_the_exporter_and_field() {
    let mut cfg = OtlpConfig { name: Some("vendor".into()), ..OtlpConfig::default() };
    cfg.headers.0.insert("api-key".into(), "x\ny".into());
    let err = OtlpConfig::from_env_and_file(&[cfg], &env_of(&[])).expect_err("newline");
    let msg = err.to_string();
    assert!(msg.contains("exporter `vendor`") && msg.contains("field `headers`"), "{msg}");
}

#[test]
fn config_file_rejects_unknown_fields() {
    let err = serde_json::from_str::<OtlpConfig>(r#"{"endpont": "http://x"}"#).expect_err("typo");
    assert!(err.to_string().contains("endpont"), "{err}");
    let ok: OtlpConfig = serde_json::from_str(r#"{"protocol": "http/protobuf", "compression": "gzip"}"#).expect("ok");
    assert_eq!(ok.protocol, Some(Protocol::HttpProtobuf));
}

#[test]
fn duplicate_names_and_bad_batch_sizes_are_rejected() {
    let a = OtlpConfig { name: Some("x".into()), ..OtlpConfig::default() };
    let err = OtlpConfig::from_env_and_file(&[a.clone(), a], &env_of(&[])).expect_err("dup");
    assert!(matches!(err, ExportConfigError::DuplicateName { .. }), "{err}");
    let b = OtlpConfig { max_queue_size: Some(10), max_export_batch_size: Some(20), ..OtlpConfig::default() };
    let err = OtlpConfig::from_env_and_file(&[b], &env_of(&[])).expect_err("batch > queue");
    assert!(matches!(err, ExportConfigError::BatchLargerThanQueue { batch: 20, queue: 10, .. }), "{err}");
}

#[test]
fn tls_files_are_read_at_start_and_require_https() {
    let dir = std::env::temp_dir().join(format!("kspan-otlp-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let pem = dir.join("ca.pem");
    std::fs::write(&pem, "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n").expect("write");
    let not_pem = dir.join("junk.txt");
    std::fs::write(&not_pem, "hello").expect("write");
    let ca = pem.to_string_lossy().into_owned();

    let s = one(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)]);
    assert!(s.tls.ca_pem.is_some());
    let err = from_env(&[("OTEL_EXPORTER_OTLP_CERTIFICATE", &ca)]).expect_err("http endpoint");
    assert!(matches!(err, ExportConfigError::TlsWithoutHttps { .. }), "{err}");
    let err = from_env(&[
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318"),
        ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "/nonexistent/ca.pem"),
    ])
    .expect_err("missing file");
    assert!(err.to_string().starts_with("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE: cannot read"), "{err}");
    let junk = not_pem.to_string_lossy().into_owned();
    let err = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c"), ("OTEL_EXPORTER_OTLP_CERTIFICATE", &junk)])
        .expect_err("not pem");
    assert!(matches!(err, ExportConfigError::TlsNotPem { .. }), "{err}");
    let err = from_env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c"), ("OTEL_EXPORTER_OTLP_CLIENT_KEY", &ca)])
        .expect_err("key without cert");
    assert!(matches!(err, ExportConfigError::ClientIdentity { .. }), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}
