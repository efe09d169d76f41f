//! Enrich stage: who a span came from. One [`crate::span::model::ProcessResource`]
//! per traced process (service, process, host and container identity, and the
//! Kubernetes pod when the container belongs to one).

pub mod cgroup;
pub mod k8s;
pub mod process;
