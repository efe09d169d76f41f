//! The two OTLP transports: gRPC (tonic, the generated TraceService client)
//! and HTTP/protobuf (reqwest), both over rustls when the endpoint is https.
//!
//! Guarantees:
//! - One request attempt never outlives its timeout (the caller's, which is
//!   the configured one or less near the shutdown deadline).
//! - Connection failures and timeouts are retryable; statuses are classified
//!   by [`super::retry`]; a 2xx/OK response's partial success is reported.
//! - An HTTP response body is read up to [`MAX_RESPONSE_BYTES`] only.
//! - A request is protobuf-encoded once ([`Transport::prepare`]); retries
//!   re-send the same bytes (gRPC through [`PreEncoded`], a codec that writes
//!   them as the message, so nothing is re-built or deep-cloned).

use crate::telemetry::error_chain;
use std::io::Write as _;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_TYPE, RETRY_AFTER};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use prost::Message;
use tonic::GrpcMethod;
use tonic::client::Grpc;
use tonic::codec::{Codec, CompressionEncoding, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::MetadataMap;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic_types::StatusExt;

use super::config::{Compression, OtlpSettings, Protocol};
use super::retry::{Verdict, classify_grpc, classify_http, parse_retry_after};
use crate::export::ExportError;

/// Largest HTTP response body read (a partial-success message is tiny).
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

fn user_agent() -> String {
    format!("kspan/{}", env!("CARGO_PKG_VERSION"))
}

/// gRPC service and method of an OTLP trace export (as in the official
/// `trace_service.proto`).
const GRPC_SERVICE: &str = "opentelemetry.proto.collector.trace.v1.TraceService";
const GRPC_METHOD: &str = "Export";
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// A request ready to send: the protobuf-encoded `ExportTraceServiceRequest`
/// (gzipped for HTTP when configured; tonic compresses gRPC messages itself).
/// Encoded once, re-sent as-is on retries.
pub struct Payload(Bytes);

/// gRPC codec of the Export call: the request is already encoded protobuf
/// (written as the message as is), the response is decoded with prost.
#[derive(Clone, Copy, Debug, Default)]
pub struct PreEncoded;

impl Codec for PreEncoded {
    type Encode = Bytes;
    type Decode = ExportTraceServiceResponse;
    type Encoder = PreEncoded;
    type Decoder = PreEncoded;

    fn encoder(&mut self) -> PreEncoded {
        PreEncoded
    }
    fn decoder(&mut self) -> PreEncoded {
        PreEncoded
    }
}

impl Encoder for PreEncoded {
    type Item = Bytes;
    type Error = tonic::Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        bytes::BufMut::put(dst, item);
        Ok(())
    }
}

impl Decoder for PreEncoded {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        ExportTraceServiceResponse::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("undecodable ExportTraceServiceResponse: {e}")))
    }
}

/// Result of one attempt.
#[derive(Debug)]
pub enum Attempt {
    /// The endpoint accepted the request; `rejected` spans of it were refused
    /// (OTLP partial success), with the server's message.
    Accepted { rejected: u64, message: String },
    /// The attempt failed; `detail` is safe to log (no header values).
    Failed { verdict: Verdict, detail: String },
}

pub enum Transport {
    Grpc { client: Grpc<Channel>, metadata: MetadataMap },
    Http { client: reqwest::Client, url: reqwest::Url, headers: HeaderMap, gzip: bool },
}

impl Transport {
    /// Builds the client. Connecting is lazy: an endpoint that is down at
    /// start is retried like any other failure.
    pub fn build(s: &OtlpSettings) -> Result<Self, ExportError> {
        let mut headers = HeaderMap::with_capacity(s.headers.len());
        for (k, v) in &s.headers {
            headers.insert(k.clone(), v.clone());
        }
        match s.protocol {
            Protocol::Grpc => Self::build_grpc(s, headers),
            Protocol::HttpProtobuf => Self::build_http(s, headers),
        }
    }

    fn build_grpc(s: &OtlpSettings, headers: HeaderMap) -> Result<Self, ExportError> {
        let err = |source| ExportError::GrpcEndpoint { exporter: s.name.clone(), source };
        let authority = s.endpoint.as_str().trim_end_matches('/').to_owned();
        let mut endpoint = Channel::from_shared(authority)
            .map_err(|source| ExportError::GrpcUri { exporter: s.name.clone(), source })?
            .connect_timeout(s.timeout)
            .user_agent(user_agent())
            .map_err(err)?;
        if s.endpoint.scheme() == "https" {
            let mut tls = ClientTlsConfig::new().with_native_roots();
            if let Some(ca) = &s.tls.ca_pem {
                tls = tls.ca_certificate(Certificate::from_pem(ca));
            }
            if let Some((cert, key)) = &s.tls.identity {
                tls = tls.identity(Identity::from_pem(cert, key));
            }
            endpoint = endpoint.tls_config(tls).map_err(err)?;
        }
        let mut client = Grpc::new(endpoint.connect_lazy());
        if s.compression == Compression::Gzip {
            client = client.send_compressed(CompressionEncoding::Gzip);
        }
        Ok(Transport::Grpc { client, metadata: MetadataMap::from_headers(headers) })
    }

    fn build_http(s: &OtlpSettings, headers: HeaderMap) -> Result<Self, ExportError> {
        let err = |source| ExportError::HttpClient { exporter: s.name.clone(), source };
        let mut builder = reqwest::Client::builder()
            .use_rustls_tls()
            .user_agent(user_agent())
            .connect_timeout(s.timeout)
            .pool_max_idle_per_host(2);
        if let Some(ca) = &s.tls.ca_pem {
            for cert in reqwest::Certificate::from_pem_bundle(ca).map_err(err)? {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let Some((cert, key)) = &s.tls.identity {
            let mut pem = cert.clone();
            pem.push(b'\n');
            pem.extend_from_slice(key);
            builder = builder.identity(reqwest::Identity::from_pem(&pem).map_err(err)?);
        }
        Ok(Transport::Http {
            client: builder.build().map_err(err)?,
            url: s.endpoint.clone(),
            headers,
            gzip: s.compression == Compression::Gzip,
        })
    }

    /// Encodes the request for this transport (gzip for HTTP when asked;
    /// tonic compresses gRPC messages itself).
    /// `raw` is an encoded `ExportTraceServiceRequest`.
    pub fn prepare(&self, raw: Vec<u8>) -> Payload {
        if let Transport::Http { gzip: true, .. } = self {
            let mut enc = flate2::write::GzEncoder::new(Vec::with_capacity(raw.len() / 4), flate2::Compression::fast());
            // Writing into a Vec cannot fail.
            if enc.write_all(&raw).is_ok()
                && let Ok(gz) = enc.finish()
            {
                return Payload(Bytes::from(gz));
            }
        }
        Payload(Bytes::from(raw))
    }

    /// One attempt, bounded by `timeout`.
    pub async fn send(&self, payload: &Payload, timeout: Duration) -> Attempt {
        let attempt = async {
            match self {
                Transport::Grpc { client, metadata } => {
                    send_grpc(client.clone(), metadata.clone(), payload.0.clone(), timeout).await
                }
                Transport::Http { client, url, headers, gzip } => {
                    send_http(client, url, headers, *gzip, payload.0.clone(), timeout).await
                }
            }
        };
        match tokio::time::timeout(timeout, attempt).await {
            Ok(a) => a,
            Err(_) => Attempt::Failed {
                verdict: Verdict::Retry { after: None },
                detail: format!("no response within {} ms", timeout.as_millis()),
            },
        }
    }
}

/// One Export call, as the generated `TraceServiceClient::export` makes it
/// but with the already-encoded request.
async fn send_grpc(mut client: Grpc<Channel>, metadata: MetadataMap, body: Bytes, timeout: Duration) -> Attempt {
    if let Err(e) = client.ready().await {
        // Classified like the generated client reports it.
        return grpc_failure(&tonic::Status::unknown(format!("Service was not ready: {}", error_chain(&e))));
    }
    let mut request = tonic::Request::from_parts(metadata, tonic::Extensions::default(), body);
    request.set_timeout(timeout);
    request.extensions_mut().insert(GrpcMethod::new(GRPC_SERVICE, GRPC_METHOD));
    match client.unary(request, PathAndQuery::from_static(GRPC_PATH), PreEncoded).await {
        Ok(resp) => accepted(resp.into_inner()),
        Err(status) => grpc_failure(&status),
    }
}

/// Classifies a failed gRPC call, reading google.rpc.RetryInfo if present.
fn grpc_failure(status: &tonic::Status) -> Attempt {
    let retry_info = status.get_details_retry_info().and_then(|r| r.retry_delay);
    Attempt::Failed {
        verdict: classify_grpc(status.code(), retry_info),
        detail: format!("gRPC status {:?}: {}", status.code(), status.message()),
    }
}

async fn send_http(
    client: &reqwest::Client,
    url: &reqwest::Url,
    headers: &HeaderMap,
    gzip: bool,
    body: Bytes,
    timeout: Duration,
) -> Attempt {
    let mut rb = client
        .post(url.clone())
        .timeout(timeout)
        .headers(headers.clone())
        .header(CONTENT_TYPE, HeaderValue::from_static("application/x-protobuf"));
    if gzip {
        rb = rb.header(CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    let mut resp = match rb.body(body).send().await {
        Ok(r) => r,
        Err(err) => {
            // Connect errors, resets and timeouts: the spec says retry.
            let verdict = if err.is_builder() {
                Verdict::Drop(crate::export::DropReason::NonRetryable)
            } else {
                Verdict::Retry { after: None }
            };
            // The URL may carry credentials: keep it out of logs.
            let err = err.without_url();
            return Attempt::Failed { verdict, detail: format!("HTTP request failed: {}", error_chain(&err)) };
        }
    };
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| parse_retry_after(v, SystemTime::now()));
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = resp.chunk().await {
        if body.len() + chunk.len() > MAX_RESPONSE_BYTES {
            break;
        }
        body.extend_from_slice(&chunk);
    }
    if status.is_success() {
        // An undecodable body still means the data was accepted.
        return accepted(ExportTraceServiceResponse::decode(body.as_slice()).unwrap_or_default());
    }
    Attempt::Failed { verdict: classify_http(status.as_u16(), retry_after), detail: format!("HTTP status {status}") }
}

fn accepted(resp: ExportTraceServiceResponse) -> Attempt {
    let (rejected, message) = resp
        .partial_success
        .map(|p| (u64::try_from(p.rejected_spans).unwrap_or(0), p.error_message))
        .unwrap_or_default();
    Attempt::Accepted { rejected, message }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::export::DropReason;
    use tonic_types::{ErrorDetails, StatusExt};

    #[test]
    fn grpc_resource_exhausted_with_retry_info_is_retried_after_its_delay() {
        let details = ErrorDetails::with_retry_info(Some(Duration::from_millis(2500)));
        let status = tonic::Status::with_error_details(tonic::Code::ResourceExhausted, "slow down", details);
        match grpc_failure(&status) {
            Attempt::Failed { verdict, .. } => {
                assert_eq!(verdict, Verdict::Retry { after: Some(Duration::from_millis(2500)) })
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn grpc_resource_exhausted_without_retry_info_is_dropped() {
        let status = tonic::Status::resource_exhausted("quota");
        match grpc_failure(&status) {
            Attempt::Failed { verdict, detail } => {
                assert_eq!(verdict, Verdict::Drop(DropReason::Rejected));
                assert!(detail.contains("ResourceExhausted") && detail.contains("quota"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn partial_success_is_read_from_the_response() {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTracePartialSuccess;
        let resp = ExportTraceServiceResponse {
            partial_success: Some(ExportTracePartialSuccess { rejected_spans: 3, error_message: "old".into() }),
        };
        match accepted(resp) {
            Attempt::Accepted { rejected, message } => {
                assert_eq!((rejected, message.as_str()), (3, "old"))
            }
            other => panic!("{other:?}"),
        }
        match accepted(ExportTraceServiceResponse::default()) {
            Attempt::Accepted { rejected, message } => {
                assert_eq!((rejected, message.as_str()), (0, ""))
            }
            other => panic!("{other:?}"),
        }
    }
}
