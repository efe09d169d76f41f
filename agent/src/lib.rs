//! kspan: eBPF-captured socket traffic to OpenTelemetry traces.
//!
//! ```text
//! capture  ->  conntrack  ->  protocol  ->  span  ->  enrich / rules  ->  sample  ->  export
//! (kernel      (per-socket    (HTTP, PG,    (pair,     (process, k8s,    (keep or   (OTLP,
//!  events)      streams)       Redis)        context)   business attrs)   drop)      stdout)
//! ```

pub mod capture;
pub mod config;
pub mod conntrack;
pub mod enrich;
pub mod export;
pub mod protocol;
pub mod run;
pub mod span;
pub mod telemetry;
