//! kspan: eBPF-captured socket traffic to OpenTelemetry traces.
//!
//! ```text
//! capture  ->  conntrack  ->  protocol  ->  span  ->  enrich / rules  ->  sample  ->  export
//! (kernel      (per-socket    (HTTP, PG,    (pair,     (process, k8s,    (keep or   (OTLP,
//!  events)      streams)       Redis)        context)   business attrs)   drop)      stdout)
//! ```
//!
//! `run` wires the stages; `config` and `telemetry` serve them all.

pub mod capture;
pub mod config;
pub mod conntrack;
pub mod enrich;
pub mod export;
pub mod protocol;
pub mod rules;
pub mod run;
pub mod sample;
pub mod span;
pub mod telemetry;
