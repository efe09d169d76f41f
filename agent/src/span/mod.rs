//! Span stage: turns protocol exchanges into spans (ids, timestamps, semantic
//! conventions, trace context).

pub mod model;
