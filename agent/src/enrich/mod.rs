//! Enrich stage: who a span came from. One [`crate::span::model::ProcessResource`]
//! per traced process (service, process, host and container identity).

pub mod cgroup;
pub mod process;
