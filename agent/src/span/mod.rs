//! Span stage: turns protocol exchanges into spans (ids, timestamps, semantic
//! conventions, trace context).
//!
//! Guarantees: span and trace ids are never zero; a valid incoming W3C
//! `traceparent` is joined, an invalid one is counted and a new trace starts;
//! timestamps are the kernel's (first request byte, last response byte)
//! converted to Unix time; the linker ([`link`]) joins spans of one request
//! on this host into one trace before they leave the capture thread.

pub mod builder;
pub mod context;
pub mod link;
pub mod model;
