//! kspan: eBPF-captured socket traffic to OpenTelemetry traces.
//!
//! ```text
//! capture  ->  conntrack  ->  protocol  ->  span  ->  enrich / rules  ->  sample  ->  export
//! (kernel      (per-socket    (HTTP, PG,    (pair,     (process, k8s,    (keep or   (OTLP,
//!  events)      streams)       Redis)        context)   business attrs)   drop)      stdout)
//! ```
//!
//! `run` wires the stages; `config` and `telemetry` serve them all. Without the
//! default `runtime` feature only the pure stages build (protocol parsers,
//! event decoding, conntrack, span model): that is what the fuzz targets use.

pub mod capture;
#[cfg(feature = "runtime")]
pub mod config;
pub mod conntrack;
pub mod enrich;
#[cfg(feature = "runtime")]
pub mod export;
pub mod protocol;
#[cfg(feature = "runtime")]
pub mod rules;
#[cfg(feature = "runtime")]
pub mod run;
#[cfg(feature = "runtime")]
pub mod sample;
pub mod span;
#[cfg(feature = "runtime")]
pub mod telemetry;
