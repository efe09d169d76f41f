//! OTLP exporter configuration: the config-file struct, the OTel environment
//! variables, and validation into ready-to-use [`OtlpSettings`].
//!
//! Guarantees:
//! - Every problem is reported at start with the variable or config field it
//!   came from; nothing is silently ignored except a malformed
//!   `OTEL_RESOURCE_ATTRIBUTES`, which the OTel spec says to discard (logged).
//! - Header values never appear in error messages, logs or `Debug` output.
//! - Endpoint path rules follow the OTLP exporter spec: the generic endpoint
//!   gets `/v1/traces` appended for http/protobuf, a signal-specific endpoint
//!   is used as-is, gRPC uses only scheme and authority.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use url::Url;

/// Wire protocol of one exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
pub enum Protocol {
    #[serde(rename = "grpc")]
    Grpc,
    #[serde(rename = "http/protobuf")]
    HttpProtobuf,
}

/// Request body compression.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Gzip,
    None,
}

/// Header map whose values are secrets (API keys): `Debug` shows keys only.
#[derive(Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct SecretHeaders(pub BTreeMap<String, String>);

impl std::fmt::Debug for SecretHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.0.keys().map(|k| (k, "<redacted>"))).finish()
    }
}

/// One OTLP endpoint as written in the config file. Every field is optional;
/// unset fields take the OTel spec default (or kspan's, where noted).
#[derive(Clone, Debug, Default, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// Name in metric labels and logs. Default `otlp` (`otlp-2`, ... for
    /// further exporters); the exporter built from the environment is
    /// `otlp-env` when the file declares exporters too.
    pub name: Option<String>,
    /// Base URL, like OTEL_EXPORTER_OTLP_ENDPOINT: for http/protobuf
    /// `/v1/traces` is appended to its path; for grpc only scheme, host and
    /// port are used. Default `http://localhost:4318` (http/protobuf) or
    /// `http://localhost:4317` (grpc). `https` enables TLS.
    pub endpoint: Option<String>,
    /// Full traces URL used as-is, like OTEL_EXPORTER_OTLP_TRACES_ENDPOINT;
    /// wins over `endpoint`.
    pub traces_endpoint: Option<String>,
    /// `grpc` or `http/protobuf` (default, per the OTel spec).
    pub protocol: Option<Protocol>,
    /// Extra request headers (gRPC metadata), e.g. `authorization`. Values
    /// must be visible ASCII (spaces allowed inside); they are never logged.
    pub headers: SecretHeaders,
    /// `gzip` or `none` (default).
    pub compression: Option<Compression>,
    /// Per-request timeout in milliseconds. Default 10000.
    pub timeout_ms: Option<u64>,
    /// PEM file of CA certificates trusted for the endpoint (https only);
    /// added to the system roots.
    pub certificate: Option<PathBuf>,
    /// PEM private key for mTLS (needs `client_certificate`).
    pub client_key: Option<PathBuf>,
    /// PEM client certificate chain for mTLS (needs `client_key`).
    pub client_certificate: Option<PathBuf>,
    /// Spans buffered for this endpoint; beyond it spans are dropped and
    /// counted (queue_full). Default 2048 (the batch span processor's).
    pub max_queue_size: Option<usize>,
    /// Spans per export request. Default 512 (the batch span processor's).
    pub max_export_batch_size: Option<usize>,
    /// Export requests in flight at once (each up to max_export_batch_size
    /// spans; each retried on its own). Default 2: while one request waits
    /// for the collector's answer the next batch is built and sent.
    pub max_concurrent_exports: Option<usize>,
    /// Longest wait before a non-full batch is sent, in milliseconds.
    /// Default 1000: the spec's 5000 ms makes traces show up late in a UI
    /// while someone is debugging; 1 request/s per agent stays cheap.
    pub scheduled_delay_ms: Option<u64>,
    /// First retry delay in milliseconds (jittered to 50-100% of it, doubled
    /// per attempt). Default 1000.
    pub initial_backoff_ms: Option<u64>,
    /// Cap of the retry delay in milliseconds. Default 30000.
    pub max_backoff_ms: Option<u64>,
    /// A batch still failing after this many milliseconds is dropped and
    /// counted (max_elapsed). Default 60000.
    pub max_elapsed_ms: Option<u64>,
    /// Resource attributes added to every exported Resource, over those of
    /// OTEL_RESOURCE_ATTRIBUTES; a process's own attributes win over both.
    pub resource_attributes: BTreeMap<String, String>,
}

/// Errors found while reading and validating the OTLP configuration.
#[derive(Debug, thiserror::Error)]
pub enum ExportConfigError {
    #[error("{origin}: malformed endpoint URL `{url}`: {source}")]
    EndpointSyntax { origin: String, url: String, source: url::ParseError },
    #[error("{origin}: endpoint `{url}` must start with http:// or https://")]
    EndpointScheme { origin: String, url: String },
    #[error("{origin}: endpoint `{url}` has no host")]
    EndpointHost { origin: String, url: String },
    #[error("{origin}: unknown protocol `{value}` (expected `grpc` or `http/protobuf`; `http/json` is not supported)")]
    Protocol { origin: String, value: String },
    #[error("{origin}: unknown compression `{value}` (expected `gzip` or `none`)")]
    Compression { origin: String, value: String },
    #[error("{origin}: `{value}` is not a timeout in milliseconds (a whole number)")]
    Timeout { origin: String, value: String },
    #[error("{origin}: header entry #{index} is not `key=value`")]
    HeaderSyntax { origin: String, index: usize },
    #[error("{origin}: `{name}` is not a valid header name")]
    HeaderName { origin: String, name: String },
    #[error("{origin}: the value of header `{name}` {problem}")]
    HeaderValue { origin: String, name: String, problem: &'static str },
    #[error("{origin}: cannot read `{path}`: {source}")]
    TlsFile { origin: String, path: PathBuf, source: std::io::Error },
    #[error("{origin}: `{path}` does not contain a PEM block")]
    TlsNotPem { origin: String, path: PathBuf },
    #[error("exporter `{exporter}`: a client key and a client certificate must be given together")]
    ClientIdentity { exporter: String },
    #[error("exporter `{exporter}`: TLS files are set but the endpoint `{url}` is not https")]
    TlsWithoutHttps { exporter: String, url: String },
    #[error("exporter `{exporter}`: `{field}` must be at least 1")]
    Zero { exporter: String, field: &'static str },
    #[error("exporter `{exporter}`: max_export_batch_size ({batch}) is larger than max_queue_size ({queue})")]
    BatchLargerThanQueue { exporter: String, batch: usize, queue: usize },
    #[error("two OTLP exporters are named `{name}`")]
    DuplicateName { name: String },
}

/// Batching of one exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchSettings {
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub max_concurrent_exports: usize,
    pub scheduled_delay: Duration,
}

/// Retry policy of one exporter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetrySettings {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    pub max_elapsed: Duration,
}

/// PEM material for TLS, read at start.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct TlsMaterial {
    pub ca_pem: Option<Vec<u8>>,
    /// (certificate chain, private key)
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TlsMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsMaterial")
            .field("ca", &self.ca_pem.is_some())
            .field("client_identity", &self.identity.is_some())
            .finish()
    }
}

/// A validated exporter configuration.
#[derive(Clone, PartialEq)]
pub struct OtlpSettings {
    pub name: String,
    pub protocol: Protocol,
    /// http/protobuf: the full traces URL; grpc: `scheme://host:port`.
    pub endpoint: Url,
    pub headers: Vec<(HeaderName, HeaderValue)>,
    pub compression: Compression,
    pub timeout: Duration,
    pub tls: TlsMaterial,
    pub batch: BatchSettings,
    pub retry: RetrySettings,
    pub resource_attributes: Vec<(String, String)>,
}

impl std::fmt::Debug for OtlpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("OtlpSettings")
            .field("name", &self.name)
            .field("protocol", &self.protocol)
            .field("endpoint", &self.endpoint.as_str())
            .field("headers (values redacted)", &header_names)
            .field("compression", &self.compression)
            .field("timeout", &self.timeout)
            .field("tls", &self.tls)
            .field("batch", &self.batch)
            .field("retry", &self.retry)
            .field("resource_attributes", &self.resource_attributes)
            .finish()
    }
}

pub const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";
pub const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
pub const DEFAULT_TIMEOUT_MS: u64 = 10_000;
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 2048;
pub const DEFAULT_MAX_EXPORT_BATCH_SIZE: usize = 512;
pub const DEFAULT_MAX_CONCURRENT_EXPORTS: usize = 2;
pub const DEFAULT_SCHEDULED_DELAY_MS: u64 = 1000;
pub const DEFAULT_INITIAL_BACKOFF_MS: u64 = 1000;
pub const DEFAULT_MAX_BACKOFF_MS: u64 = 30_000;
pub const DEFAULT_MAX_ELAPSED_MS: u64 = 60_000;

const ENV_PREFIX: &str = "OTEL_EXPORTER_OTLP_";
const ENV_SIGNAL_PREFIX: &str = "OTEL_EXPORTER_OTLP_TRACES_";

/// Where each field of a config came from, for error messages.
enum Origin<'a> {
    File(&'a str),
    /// field name -> environment variable that set it
    Env(&'a BTreeMap<&'static str, String>),
}

impl Origin<'_> {
    fn describe(&self, field: &'static str) -> String {
        match self {
            Origin::File(name) => {
                format!("OTLP exporter `{name}` in the config file, field `{field}`")
            }
            Origin::Env(vars) => {
                vars.get(field).cloned().unwrap_or_else(|| format!("{ENV_PREFIX}{}", field.to_ascii_uppercase()))
            }
        }
    }
}

impl OtlpConfig {
    /// Builds the exporters: one per config-file entry, plus one from the
    /// `OTEL_EXPORTER_OTLP_*` variables when the file declares none or when
    /// an endpoint variable is set. `OTEL_RESOURCE_ATTRIBUTES` applies to all.
    /// The generic variables configure only the environment's exporter, so a
    /// secret header meant for one endpoint is never sent to another.
    pub fn from_env_and_file(
        file: &[OtlpConfig],
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Vec<OtlpSettings>, ExportConfigError> {
        let env_resource = parse_resource_attributes(env);
        let mut out = Vec::with_capacity(file.len() + 1);
        for (i, cfg) in file.iter().enumerate() {
            let default_name = if i == 0 { "otlp".to_owned() } else { format!("otlp-{}", i + 1) };
            let name = cfg.name.clone().unwrap_or(default_name);
            out.push(cfg.resolve(name.clone(), &Origin::File(&name), &env_resource)?);
        }
        let (env_cfg, vars) = Self::from_env(env)?;
        if file.is_empty() || env_cfg.endpoint.is_some() || env_cfg.traces_endpoint.is_some() {
            let name = if file.is_empty() { "otlp" } else { "otlp-env" };
            out.push(env_cfg.resolve(name.to_owned(), &Origin::Env(&vars), &env_resource)?);
        }
        for (i, s) in out.iter().enumerate() {
            if out.iter().skip(i + 1).any(|o| o.name == s.name) {
                return Err(ExportConfigError::DuplicateName { name: s.name.clone() });
            }
        }
        Ok(out)
    }

    /// Reads the `OTEL_EXPORTER_OTLP_[TRACES_]*` variables (the signal-specific
    /// one wins; an empty value counts as unset).
    fn from_env(
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(OtlpConfig, BTreeMap<&'static str, String>), ExportConfigError> {
        let mut vars = BTreeMap::new();
        let mut cfg = OtlpConfig::default();
        // Endpoint: the signal-specific variable is a full URL, the generic one a base.
        if let Some(v) = env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").filter(|v| !v.trim().is_empty()) {
            vars.insert("traces_endpoint", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT".to_owned());
            cfg.traces_endpoint = Some(v.trim().to_owned());
        } else if let Some(v) = env("OTEL_EXPORTER_OTLP_ENDPOINT").filter(|v| !v.trim().is_empty()) {
            vars.insert("endpoint", "OTEL_EXPORTER_OTLP_ENDPOINT".to_owned());
            cfg.endpoint = Some(v.trim().to_owned());
        }
        let mut get = |field: &'static str, suffix: &str| -> Option<String> {
            for prefix in [ENV_SIGNAL_PREFIX, ENV_PREFIX] {
                let var = format!("{prefix}{suffix}");
                if let Some(v) = env(&var).filter(|v| !v.trim().is_empty()) {
                    vars.insert(field, var);
                    return Some(v.trim().to_owned());
                }
            }
            None
        };
        let protocol = get("protocol", "PROTOCOL");
        let headers = get("headers", "HEADERS");
        let compression = get("compression", "COMPRESSION");
        let timeout = get("timeout_ms", "TIMEOUT");
        cfg.certificate = get("certificate", "CERTIFICATE").map(PathBuf::from);
        cfg.client_key = get("client_key", "CLIENT_KEY").map(PathBuf::from);
        cfg.client_certificate = get("client_certificate", "CLIENT_CERTIFICATE").map(PathBuf::from);
        let origin = |field: &'static str| vars.get(field).cloned().unwrap_or_default();

        if let Some(v) = protocol {
            cfg.protocol = Some(match v.as_str() {
                "grpc" => Protocol::Grpc,
                "http/protobuf" => Protocol::HttpProtobuf,
                _ => {
                    return Err(ExportConfigError::Protocol { origin: origin("protocol"), value: v });
                }
            });
        }
        if let Some(v) = compression {
            cfg.compression = Some(match v.as_str() {
                "gzip" => Compression::Gzip,
                "none" => Compression::None,
                _ => {
                    return Err(ExportConfigError::Compression { origin: origin("compression"), value: v });
                }
            });
        }
        if let Some(v) = timeout {
            let ms = v
                .parse::<u64>()
                .map_err(|_| ExportConfigError::Timeout { origin: origin("timeout_ms"), value: v.clone() })?;
            cfg.timeout_ms = Some(ms);
        }
        if let Some(v) = headers {
            cfg.headers = SecretHeaders(parse_header_list(&v, &origin("headers"))?);
        }
        Ok((cfg, vars))
    }

    fn resolve(
        &self,
        name: String,
        origin: &Origin<'_>,
        env_resource: &[(String, String)],
    ) -> Result<OtlpSettings, ExportConfigError> {
        let protocol = self.protocol.unwrap_or(Protocol::HttpProtobuf);
        let endpoint = resolve_endpoint(protocol, self.endpoint.as_deref(), self.traces_endpoint.as_deref(), origin)?;

        let mut headers = Vec::with_capacity(self.headers.0.len());
        for (k, v) in &self.headers.0 {
            headers.push(validate_header(k, v, protocol, &origin.describe("headers"))?);
        }

        let read = |field: &'static str, path: &Option<PathBuf>| -> Result<Option<Vec<u8>>, ExportConfigError> {
            let Some(path) = path else { return Ok(None) };
            let bytes = std::fs::read(path).map_err(|source| ExportConfigError::TlsFile {
                origin: origin.describe(field),
                path: path.clone(),
                source,
            })?;
            if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
                return Err(ExportConfigError::TlsNotPem { origin: origin.describe(field), path: path.clone() });
            }
            Ok(Some(bytes))
        };
        let ca_pem = read("certificate", &self.certificate)?;
        let identity =
            match (read("client_certificate", &self.client_certificate)?, read("client_key", &self.client_key)?) {
                (Some(cert), Some(key)) => Some((cert, key)),
                (None, None) => None,
                _ => return Err(ExportConfigError::ClientIdentity { exporter: name }),
            };
        if (ca_pem.is_some() || identity.is_some()) && endpoint.scheme() != "https" {
            return Err(ExportConfigError::TlsWithoutHttps { exporter: name, url: endpoint.to_string() });
        }

        let at_least_one = |field: &'static str, v: usize| {
            if v == 0 { Err(ExportConfigError::Zero { exporter: name.clone(), field }) } else { Ok(v) }
        };
        let queue = at_least_one("max_queue_size", self.max_queue_size.unwrap_or(DEFAULT_MAX_QUEUE_SIZE))?;
        let batch =
            at_least_one("max_export_batch_size", self.max_export_batch_size.unwrap_or(DEFAULT_MAX_EXPORT_BATCH_SIZE))?;
        if batch > queue {
            return Err(ExportConfigError::BatchLargerThanQueue { exporter: name, batch, queue });
        }
        let concurrent = at_least_one(
            "max_concurrent_exports",
            self.max_concurrent_exports.unwrap_or(DEFAULT_MAX_CONCURRENT_EXPORTS),
        )?;
        let timeout_ms = self.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS);
        if timeout_ms == 0 {
            return Err(ExportConfigError::Zero { exporter: name, field: "timeout_ms" });
        }

        let mut resource: BTreeMap<String, String> = env_resource.iter().cloned().collect();
        resource.extend(self.resource_attributes.iter().map(|(k, v)| (k.clone(), v.clone())));

        let ms = Duration::from_millis;
        Ok(OtlpSettings {
            protocol,
            endpoint,
            headers,
            compression: self.compression.unwrap_or(Compression::None),
            timeout: ms(timeout_ms),
            tls: TlsMaterial { ca_pem, identity },
            batch: BatchSettings {
                max_queue_size: queue,
                max_export_batch_size: batch,
                max_concurrent_exports: concurrent,
                scheduled_delay: ms(self.scheduled_delay_ms.unwrap_or(DEFAULT_SCHEDULED_DELAY_MS)),
            },
            retry: RetrySettings {
                initial_backoff: ms(self.initial_backoff_ms.unwrap_or(DEFAULT_INITIAL_BACKOFF_MS)),
                max_backoff: ms(self.max_backoff_ms.unwrap_or(DEFAULT_MAX_BACKOFF_MS)),
                max_elapsed: ms(self.max_elapsed_ms.unwrap_or(DEFAULT_MAX_ELAPSED_MS)),
            },
            resource_attributes: resource.into_iter().collect(),
            name,
        })
    }
}

/// Applies the spec's path rules and checks scheme and host.
fn resolve_endpoint(
    protocol: Protocol,
    base: Option<&str>,
    full: Option<&str>,
    origin: &Origin<'_>,
) -> Result<Url, ExportConfigError> {
    let (raw, field, as_is) = match (full, base) {
        (Some(u), _) => (u, "traces_endpoint", true),
        (None, Some(u)) => (u, "endpoint", false),
        (None, None) => match protocol {
            Protocol::Grpc => (DEFAULT_GRPC_ENDPOINT, "endpoint", false),
            Protocol::HttpProtobuf => (DEFAULT_HTTP_ENDPOINT, "endpoint", false),
        },
    };
    let shown = redact_userinfo(raw);
    let mut url = Url::parse(raw).map_err(|source| ExportConfigError::EndpointSyntax {
        origin: origin.describe(field),
        url: shown.clone(),
        source,
    })?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(ExportConfigError::EndpointScheme { origin: origin.describe(field), url: shown });
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(ExportConfigError::EndpointHost { origin: origin.describe(field), url: shown });
    }
    match protocol {
        Protocol::Grpc => {
            url.set_path("");
            url.set_query(None);
            url.set_fragment(None);
        }
        Protocol::HttpProtobuf if !as_is => {
            let path = format!("{}/v1/traces", url.path().trim_end_matches('/'));
            url.set_path(&path);
        }
        Protocol::HttpProtobuf => {}
    }
    Ok(url)
}

/// Hides `user:password@` in a URL shown in an error message.
fn redact_userinfo(raw: &str) -> String {
    let Some((scheme, rest)) = raw.split_once("://") else {
        return raw.to_owned();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest.get(..authority_end).and_then(|a| a.rfind('@')) {
        Some(at) => format!("{scheme}://***@{}", rest.get(at + 1..).unwrap_or_default()),
        None => raw.to_owned(),
    }
}

/// Parses the W3C-baggage-like `k=v,k2=v2` list with percent-decoding.
fn parse_header_list(raw: &str, origin: &str) -> Result<BTreeMap<String, String>, ExportConfigError> {
    let mut out = BTreeMap::new();
    for (index, entry) in raw.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let (k, v) = entry
            .split_once('=')
            .ok_or(ExportConfigError::HeaderSyntax { origin: origin.to_owned(), index: index + 1 })?;
        let key = percent_decode(k.trim())
            .ok_or_else(|| ExportConfigError::HeaderName { origin: origin.to_owned(), name: k.trim().to_owned() })?;
        let value = percent_decode(v.trim()).ok_or_else(|| ExportConfigError::HeaderValue {
            origin: origin.to_owned(),
            name: key.clone(),
            problem: "is not valid percent-encoded UTF-8",
        })?;
        out.insert(key, value);
    }
    Ok(out)
}

fn percent_decode(s: &str) -> Option<String> {
    percent_encoding::percent_decode_str(s).decode_utf8().ok().map(|c| c.into_owned())
}

/// Checks one header: a valid lower-case name, a value of visible ASCII
/// (spaces and tabs allowed inside). The value is never part of an error.
fn validate_header(
    name: &str,
    value: &str,
    protocol: Protocol,
    origin: &str,
) -> Result<(HeaderName, HeaderValue), ExportConfigError> {
    let bad_name = || ExportConfigError::HeaderName { origin: origin.to_owned(), name: name.to_owned() };
    let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad_name())?;
    if protocol == Protocol::Grpc && header.as_str().ends_with("-bin") {
        return Err(bad_name());
    }
    let problem = if value.contains(['\r', '\n']) {
        Some("contains CR or LF")
    } else if value.bytes().any(|b| !(b == b' ' || b == b'\t' || b.is_ascii_graphic())) {
        Some("contains a non-visible or non-ASCII character")
    } else {
        None
    };
    let reject =
        |problem| ExportConfigError::HeaderValue { origin: origin.to_owned(), name: header.to_string(), problem };
    if let Some(p) = problem {
        return Err(reject(p));
    }
    let mut value = HeaderValue::from_str(value.trim()).map_err(|_| reject("is not a valid header value"))?;
    value.set_sensitive(true);
    Ok((header, value))
}

/// `OTEL_RESOURCE_ATTRIBUTES`: `k=v,...`, percent-decoded. On any error the
/// whole value is discarded with a warning, as the OTel spec requires.
fn parse_resource_attributes(env: &dyn Fn(&str) -> Option<String>) -> Vec<(String, String)> {
    let Some(raw) = env("OTEL_RESOURCE_ATTRIBUTES") else {
        return Vec::new();
    };
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for (i, entry) in raw.split(',').enumerate() {
        if entry.trim().is_empty() {
            continue;
        }
        let parsed = entry.split_once('=').and_then(|(k, v)| {
            let k = percent_decode(k.trim())?;
            let v = percent_decode(v.trim())?;
            (!k.is_empty()).then_some((k, v))
        });
        match parsed {
            Some((k, v)) => {
                out.insert(k, v);
            }
            None => {
                tracing::warn!(entry = i + 1, "OTEL_RESOURCE_ATTRIBUTES is malformed; ignoring the whole value");
                return Vec::new();
            }
        }
    }
    out.into_iter().collect()
}

#[cfg(test)]
#[path = "config_tests.rs"]
mod tests;
