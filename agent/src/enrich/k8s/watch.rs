//! The pod watcher: lists then watches the pods of this node only
//! (fieldSelector `spec.nodeName=<node>`) and keeps a [`PodStore`] current.
//! Errors are counted, backed off (kube's default exponential backoff) and
//! retried forever; the agent keeps tracing without metadata meanwhile.

use std::collections::BTreeMap;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};

use super::{Owner, PodMeta, PodStore};

#[derive(Debug, thiserror::Error)]
pub enum K8sError {
    #[error("kubernetes client: {0}")]
    Client(#[from] kube::Error),
    #[error("kubernetes config: {0}")]
    Config(#[from] kube::config::InferConfigError),
    #[error("no node name: set kubernetes.node_name, KSPAN_NODE_NAME or NODE_NAME (downward API spec.nodeName)")]
    NoNodeName,
}

/// This node's name: the config value, else `KSPAN_NODE_NAME`, else `NODE_NAME`.
pub fn node_name(configured: Option<&str>, env: &dyn Fn(&str) -> Option<String>) -> Result<String, K8sError> {
    configured
        .map(str::to_owned)
        .or_else(|| env("KSPAN_NODE_NAME"))
        .or_else(|| env("NODE_NAME"))
        .filter(|n| !n.is_empty())
        .ok_or(K8sError::NoNodeName)
}

/// The id part of a status `containerID` (`containerd://<id>`, `cri-o://<id>`,
/// `docker://<id>`), in the form the cgroup parser returns.
pub fn container_id(status_id: &str) -> Option<String> {
    let id = status_id.split_once("://").map_or(status_id, |(_, id)| id);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then(|| id.to_owned())
}

/// What kspan keeps of a pod object.
pub fn pod_meta(pod: &Pod) -> PodMeta {
    let m = &pod.metadata;
    let labels: BTreeMap<String, String> = m.labels.clone().unwrap_or_default();
    let owner = m
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))
        .and_then(|o| Owner::resolve(&o.kind, &o.name, &labels));
    let mut containers = Vec::new();
    if let Some(s) = &pod.status {
        let all = s.init_container_statuses.iter().flatten().chain(s.container_statuses.iter().flatten());
        for c in all {
            if let Some(id) = c.container_id.as_deref().and_then(container_id) {
                containers.push((id, c.name.clone()));
            }
        }
        for c in s.ephemeral_container_statuses.iter().flatten() {
            if let Some(id) = c.container_id.as_deref().and_then(container_id) {
                containers.push((id, c.name.clone()));
            }
        }
    }
    PodMeta {
        namespace: m.namespace.clone().unwrap_or_default(),
        name: m.name.clone().unwrap_or_default(),
        uid: m.uid.clone().unwrap_or_default(),
        node_name: pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default(),
        labels,
        owner,
        containers,
    }
}

/// Watches the pods of `node` through `client` into `store` until the
/// returned future is dropped. Never fails: errors are counted and retried.
pub async fn run(client: Client, node: String, store: PodStore) {
    let api: Api<Pod> = Api::all(client);
    let config = watcher::Config::default().fields(&format!("spec.nodeName={node}"));
    let mut stream = watcher::watcher(api, config).default_backoff().boxed();
    let mut fresh: Vec<PodMeta> = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(Event::Apply(p)) => {
                if !store.apply(pod_meta(&p)) {
                    tracing::debug!("pod cache full: {:?} not stored", p.metadata.name);
                }
            }
            Ok(Event::Delete(p)) => store.delete(p.metadata.uid.as_deref().unwrap_or_default()),
            Ok(Event::Init) => fresh.clear(),
            Ok(Event::InitApply(p)) => fresh.push(pod_meta(&p)),
            Ok(Event::InitDone) => {
                let n = fresh.len();
                store.replace_all(std::mem::take(&mut fresh));
                tracing::info!(pods = n, node = %node, "pod metadata listed");
            }
            Err(e) => {
                store.count_watch_error();
                tracing::warn!("pod watch: {e} (retrying with backoff; spans carry no pod metadata meanwhile)");
            }
        }
    }
}

/// In-cluster (or kubeconfig) client, then [`run`]. A client that cannot
/// be built is counted and retried with capped exponential backoff (1 s to
/// 5 min); the agent runs without metadata meanwhile.
pub async fn run_in_cluster(node: String, store: PodStore) {
    let mut delay = std::time::Duration::from_secs(1);
    let client = loop {
        match kube::Config::infer()
            .await
            .map_err(K8sError::from)
            .and_then(|c| Client::try_from(c).map_err(K8sError::from))
        {
            Ok(c) => break c,
            Err(e) => {
                store.count_watch_error();
                tracing::warn!("no pod metadata: {e} (retrying in {delay:?})");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(std::time::Duration::from_secs(300));
            }
        }
    };
    tracing::info!(node = %node, "watching this node's pods for metadata");
    run(client, node, store).await;
}
