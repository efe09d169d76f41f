//! Kubernetes pod metadata for processes running in containers on this node.
//!
//! The watcher ([`watch`], tokio side) keeps a [`PodStore`]: a bounded map of
//! this node's pods, indexed by container id, shared with the capture thread
//! behind a lock. The capture thread only reads it (one hash lookup) and
//! notices changes through a generation counter, so a process first seen
//! before its pod's metadata arrived picks it up later. Beyond `max_pods`
//! pods, new pods are not stored and counted ([`PodStore::dropped`]).
//!
//! Owner resolution needs no extra API calls: a pod's controller reference
//! gives ReplicaSet, StatefulSet, DaemonSet or Job; a ReplicaSet named
//! `<name>-<pod-template-hash>` (the hash taken from the pod's label) belongs
//! to Deployment `<name>`. CronJob is not derived: a Job's name alone cannot
//! tell a CronJob's `<name>-<minutes>` from a Job that happens to end in digits.

#[cfg(feature = "runtime")]
pub mod watch;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use crate::span::model::Attributes;

/// Default cap on cached pods (a node runs ~110 by default).
pub const DEFAULT_MAX_PODS: usize = 4096;
/// Containers remembered per pod at most (init, regular and ephemeral).
pub const MAX_CONTAINERS_PER_POD: usize = 64;

/// The kind of a pod's controller, as far as the pod itself tells.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OwnerKind {
    ReplicaSet,
    StatefulSet,
    DaemonSet,
    Job,
}

/// A pod's controller, plus the Deployment derived from a ReplicaSet's name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: OwnerKind,
    pub name: String,
    /// Set for a ReplicaSet named `<deployment>-<pod-template-hash>`.
    pub deployment: Option<String>,
}

impl Owner {
    /// Resolves a controller reference (`kind`, `name`) with the pod's labels.
    /// Unknown kinds (custom controllers) give `None`.
    pub fn resolve(kind: &str, name: &str, labels: &BTreeMap<String, String>) -> Option<Self> {
        let kind = match kind {
            "ReplicaSet" => OwnerKind::ReplicaSet,
            "StatefulSet" => OwnerKind::StatefulSet,
            "DaemonSet" => OwnerKind::DaemonSet,
            "Job" => OwnerKind::Job,
            _ => return None,
        };
        let deployment = (kind == OwnerKind::ReplicaSet)
            .then(|| {
                let hash = labels.get("pod-template-hash").filter(|h| !h.is_empty())?;
                let base = name.strip_suffix(hash.as_str())?.strip_suffix('-')?;
                (!base.is_empty()).then(|| base.to_owned())
            })
            .flatten();
        Some(Self { kind, name: name.to_owned(), deployment })
    }

    /// The workload name a service is most likely named after.
    pub fn workload_name(&self) -> &str {
        self.deployment.as_deref().unwrap_or(&self.name)
    }
}

/// What kspan keeps of one pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodMeta {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub node_name: String,
    pub labels: BTreeMap<String, String>,
    pub owner: Option<Owner>,
    /// `(container id, container name)`; ids as the cgroup parser returns them.
    pub containers: Vec<(String, String)>,
}

impl PodMeta {
    /// The value for `service.name` this pod suggests: the
    /// `app.kubernetes.io/name` label, else the owner (Deployment first).
    pub fn service_name(&self) -> Option<&str> {
        self.labels
            .get("app.kubernetes.io/name")
            .map(String::as_str)
            .filter(|s| !s.is_empty())
            .or_else(|| self.owner.as_ref().map(Owner::workload_name))
    }

    /// Sets the OTel `k8s.*` resource attributes for `container` of this pod.
    pub fn set_attributes(&self, container: &str, a: &mut Attributes) {
        a.set("k8s.namespace.name", self.namespace.clone());
        a.set("k8s.pod.name", self.name.clone());
        a.set("k8s.pod.uid", self.uid.clone());
        if !container.is_empty() {
            a.set("k8s.container.name", container.to_owned());
        }
        if !self.node_name.is_empty() {
            a.set("k8s.node.name", self.node_name.clone());
        }
        if let Some(o) = &self.owner {
            let key = match o.kind {
                OwnerKind::ReplicaSet => "k8s.replicaset.name",
                OwnerKind::StatefulSet => "k8s.statefulset.name",
                OwnerKind::DaemonSet => "k8s.daemonset.name",
                OwnerKind::Job => "k8s.job.name",
            };
            a.set(key, o.name.clone());
            if let Some(d) = &o.deployment {
                a.set("k8s.deployment.name", d.clone());
            }
        }
    }

    /// The container's name, if `container_id` is one of this pod's.
    pub fn container_name(&self, container_id: &str) -> Option<&str> {
        self.containers.iter().find(|(id, _)| id == container_id).map(|(_, n)| n.as_str())
    }
}

/// A container's pod, as found by container id.
#[derive(Clone, Debug)]
pub struct ContainerPod {
    pub pod: Arc<PodMeta>,
    pub container_name: String,
}

#[derive(Default)]
struct Index {
    by_uid: HashMap<String, Arc<PodMeta>>,
    by_container: HashMap<String, Arc<PodMeta>>,
}

impl Index {
    fn remove(&mut self, uid: &str) -> bool {
        let Some(old) = self.by_uid.remove(uid) else { return false };
        for (id, _) in &old.containers {
            if self.by_container.get(id).is_some_and(|p| p.uid == uid) {
                self.by_container.remove(id);
            }
        }
        true
    }
}

/// This node's pods by container id, shared between the watcher (writer) and
/// the capture thread (reader). Cheap to clone.
#[derive(Clone)]
pub struct PodStore {
    inner: Arc<Shared>,
}

struct Shared {
    index: RwLock<Index>,
    max_pods: usize,
    generation: AtomicU64,
    dropped: AtomicU64,
    watch_errors: AtomicU64,
}

impl PodStore {
    pub fn new(max_pods: usize) -> Self {
        Self {
            inner: Arc::new(Shared {
                index: RwLock::new(Index::default()),
                max_pods: max_pods.max(1),
                generation: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
                watch_errors: AtomicU64::new(0),
            }),
        }
    }

    /// Grows on every change; readers re-look-up when it moved.
    pub fn generation(&self) -> u64 {
        self.inner.generation.load(Ordering::Acquire)
    }

    fn bump(&self) {
        self.inner.generation.fetch_add(1, Ordering::Release);
    }

    /// Adds or replaces a pod (by uid). A new pod beyond the cap is dropped
    /// and counted; returns whether it is stored.
    pub fn apply(&self, mut pod: PodMeta) -> bool {
        pod.containers.truncate(MAX_CONTAINERS_PER_POD);
        let Ok(mut ix) = self.inner.index.write() else { return false };
        if let Some(old) = ix.by_uid.get(&pod.uid)
            && **old == pod
        {
            return true;
        }
        let known = ix.remove(&pod.uid);
        if !known && ix.by_uid.len() >= self.inner.max_pods {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let pod = Arc::new(pod);
        for (id, _) in &pod.containers {
            ix.by_container.insert(id.clone(), pod.clone());
        }
        ix.by_uid.insert(pod.uid.clone(), pod);
        drop(ix);
        self.bump();
        true
    }

    /// Forgets a pod.
    pub fn delete(&self, uid: &str) {
        let removed = self.inner.index.write().map(|mut ix| ix.remove(uid)).unwrap_or(false);
        if removed {
            self.bump();
        }
    }

    /// Replaces every pod with `pods` (after a fresh list: pods deleted while
    /// the watch was down disappear).
    pub fn replace_all(&self, pods: Vec<PodMeta>) {
        if let Ok(mut ix) = self.inner.index.write() {
            *ix = Index::default();
        }
        for p in pods {
            self.apply(p);
        }
        self.bump();
    }

    /// The pod and container name of a container id.
    pub fn lookup(&self, container_id: &str) -> Option<ContainerPod> {
        let ix = self.inner.index.read().ok()?;
        let pod = ix.by_container.get(container_id)?.clone();
        let container_name = pod.container_name(container_id).unwrap_or_default().to_owned();
        Some(ContainerPod { pod, container_name })
    }

    /// Pods known now.
    pub fn len(&self) -> usize {
        self.inner.index.read().map(|ix| ix.by_uid.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Pods not stored because the cache was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Errors seen by the watcher (it backs off and retries after each).
    pub fn watch_errors(&self) -> u64 {
        self.inner.watch_errors.load(Ordering::Relaxed)
    }

    pub fn count_watch_error(&self) {
        self.inner.watch_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// Which pods' processes are traced: namespaces (any of) and labels (all of).
#[derive(Clone, Debug, Default)]
pub struct PodFilter {
    pub namespaces: Vec<String>,
    pub labels: BTreeMap<String, String>,
}

impl PodFilter {
    /// True when it restricts nothing.
    pub fn is_empty(&self) -> bool {
        self.namespaces.is_empty() && self.labels.is_empty()
    }

    pub fn matches(&self, pod: &PodMeta) -> bool {
        (self.namespaces.is_empty() || self.namespaces.contains(&pod.namespace))
            && self.labels.iter().all(|(k, v)| pod.labels.get(k) == Some(v))
    }
}

#[cfg(test)]
mod tests;
