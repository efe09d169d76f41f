//! kspan: eBPF-captured socket traffic to OpenTelemetry traces.
//!
//! ```text
//! capture  ->  conntrack  ->  protocol  ->  span  ->  enrich / rules  ->  sample  ->  export
//! (kernel      (per-socket    (HTTP, PG,    (pair,     (process, k8s,    (keep or   (OTLP,
//!  events)      streams)       Redis)        context)   business attrs)   drop)      stdout)
//! ```

pub mod protocol;
pub mod span;
pub mod rules;
pub mod sample;
