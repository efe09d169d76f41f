//! Pod metadata against a fake Kubernetes API server (the one mock allowed:
//! no cluster runs here). A local HTTP/1.1 listener answers kube-rs's list
//! call with a canned PodList and its watch call with ADDED / MODIFIED /
//! DELETED events; the test checks the requests (fieldSelector on this node),
//! the pod cache, owner resolution for each owner kind, the resource
//! attributes and service.name precedence, and that a failing API server is
//! counted and retried while the agent carries on.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kspan::enrich::k8s::{PodFilter, PodStore, watch};
use kspan::enrich::process::{HostInfo, ProcInfo, ProcessTable};
use kspan::span::model::Attributes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const NODE: &str = "node-1";

fn cid(n: u8) -> String {
    format!("{:064x}", 0xabc0 + u64::from(n))
}

fn pod(name: &str, uid: &str, owner: Option<(&str, &str)>, labels: Value, containers: &[(&str, String)]) -> Value {
    let refs: Vec<Value> = owner
        .iter()
        .map(|(kind, name)| {
            json!({"apiVersion": "apps/v1", "kind": kind, "name": name, "uid": format!("owner-{uid}"), "controller": true})
        })
        .collect();
    let statuses: Vec<Value> = containers
        .iter()
        .map(|(n, id)| {
            json!({"name": n, "containerID": id, "image": "img", "imageID": "img@sha256:0", "ready": true, "restartCount": 0})
        })
        .collect();
    let specs: Vec<Value> = containers.iter().map(|(n, _)| json!({"name": n, "image": "img"})).collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": uid, "resourceVersion": "100",
                     "labels": labels, "ownerReferences": refs},
        "spec": {"nodeName": NODE, "containers": specs},
        "status": {"phase": "Running", "containerStatuses": statuses},
    })
}

fn web() -> Value {
    pod(
        "web-5d8f7c9b4-x2x9z",
        "uid-web",
        Some(("ReplicaSet", "web-5d8f7c9b4")),
        json!({"pod-template-hash": "5d8f7c9b4"}),
        &[("app", format!("cri-o://{}", cid(1))), ("proxy", format!("containerd://{}", cid(2)))],
    )
}

fn db() -> Value {
    pod("db-0", "uid-db", Some(("StatefulSet", "db")), json!({"app": "db"}), &[("pg", format!("docker://{}", cid(3)))])
}

/// What the fake server saw and serves.
#[derive(Default)]
struct Api {
    requests: Mutex<Vec<String>>,
    /// Answer every request with 500 instead.
    fail: bool,
}

async fn read_head(s: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut b = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut b).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&b[..n]);
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

async fn serve_conn(mut s: TcpStream, api: Arc<Api>) {
    // kube-rs keeps connections alive: serve requests until it closes.
    while let Some(head) = read_head(&mut s).await {
        let target = head.split_whitespace().nth(1).unwrap_or_default().to_owned();
        api.requests.lock().unwrap().push(target.clone());
        if api.fail {
            let body = r#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"boom","code":500}"#;
            let resp = format!(
                "HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            continue;
        }
        if !target.contains("watch=true") {
            let body = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "100"},
                              "items": [web(), db()]})
            .to_string();
            let resp = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            let _ = s.write_all(resp.as_bytes()).await;
            continue;
        }
        if api.requests.lock().unwrap().iter().filter(|r| r.contains("watch=true")).count() > 1 {
            // Later watches: an open stream with nothing new.
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                .await;
            tokio::time::sleep(Duration::from_secs(60)).await;
            return;
        }
        let mut web2 = web();
        web2["metadata"]["labels"]["app.kubernetes.io/name"] = json!("storefront");
        let events = [
            json!({"type": "ADDED", "object": pod("agent-7xk2p", "uid-agent", Some(("DaemonSet", "agent")), json!({}),
                                                 &[("agent", format!("containerd://{}", cid(4)))])}),
            json!({"type": "ADDED", "object": pod("nightly-29012345-q8w7e", "uid-job", Some(("Job", "nightly-29012345")),
                                                 json!({"job-name": "nightly-29012345"}),
                                                 &[("batch", format!("containerd://{}", cid(5)))])}),
            json!({"type": "MODIFIED", "object": web2}),
            json!({"type": "DELETED", "object": db()}),
        ];
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
            .await;
        for e in events {
            let line = format!("{e}\n");
            let _ = s.write_all(format!("{:x}\r\n{line}\r\n", line.len()).as_bytes()).await;
        }
        tokio::time::sleep(Duration::from_secs(60)).await;
        return;
    }
}

async fn start(api: Arc<Api>) -> kube::Client {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(serve_conn(s, api.clone()));
        }
    });
    kube::Client::try_from(kube::Config::new(url.parse().unwrap())).unwrap()
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn resource(table: &ProcessTable, container: u8, exe: &str, env_name: Option<&str>) -> Attributes {
    let info = ProcInfo {
        pid: 42,
        exe_path: format!("/usr/bin/{exe}"),
        container_id: Some(cid(container)),
        otel_service_name: env_name.map(str::to_owned),
        ..Default::default()
    };
    table.build(&info).attributes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_of_this_node_are_listed_watched_and_turned_into_resources() {
    let api = Arc::new(Api::default());
    let client = start(api.clone()).await;
    let store = PodStore::new(16);
    let task = tokio::spawn(watch::run(client, NODE.into(), store.clone()));

    wait_for("the watch events", || store.lookup(&cid(5)).is_some() && store.lookup(&cid(3)).is_none()).await;
    let requests = api.requests.lock().unwrap().clone();
    assert!(requests.len() >= 2, "{requests:?}");
    for r in &requests {
        assert!(r.starts_with("/api/v1/pods?"), "cluster-wide pods endpoint: {r}");
        assert!(r.contains("fieldSelector=spec.nodeName%3Dnode-1"), "only this node's pods: {r}");
    }
    assert!(!requests[0].contains("watch=true"), "list first: {requests:?}");
    assert!(requests.iter().any(|r| r.contains("watch=true") && r.contains("resourceVersion=100")), "{requests:?}");
    assert_eq!(store.len(), 3, "web, agent, job (db was deleted)");
    assert_eq!(store.watch_errors(), 0);

    let mut names = std::collections::HashMap::new();
    names.insert("python3".to_owned(), "mapped".to_owned());
    let table = ProcessTable::new(HostInfo { host_name: "h".into(), host_id: None }, names, Attributes::new(), 64)
        .with_pods(store.clone());

    // Deployment (via ReplicaSet + pod-template-hash), MODIFIED added the app label.
    let a = resource(&table, 2, "envoy", None);
    for (k, v) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "web-5d8f7c9b4-x2x9z"),
        ("k8s.pod.uid", "uid-web"),
        ("k8s.container.name", "proxy"),
        ("k8s.node.name", NODE),
        ("k8s.replicaset.name", "web-5d8f7c9b4"),
        ("k8s.deployment.name", "web"),
        ("service.name", "storefront"),
    ] {
        assert_eq!(a.get_str(k), Some(v), "{k}");
    }
    assert_eq!(resource(&table, 1, "python3", None).get_str("service.name"), Some("mapped"), "mapping over label");
    assert_eq!(resource(&table, 1, "python3", Some("env")).get_str("service.name"), Some("env"), "env first");
    // DaemonSet and Job: the owner names the service; no Deployment guessed.
    let d = resource(&table, 4, "agentd", None);
    assert_eq!((d.get_str("k8s.daemonset.name"), d.get_str("service.name")), (Some("agent"), Some("agent")));
    let j = resource(&table, 5, "batch", None);
    assert_eq!(j.get_str("k8s.job.name"), Some("nightly-29012345"));
    assert_eq!(j.get_str("service.name"), Some("nightly-29012345"));
    assert_eq!(j.get_str("k8s.deployment.name"), None);
    assert_eq!(j.get_str("k8s.cronjob.name"), None, "CronJob is not guessed from a Job name");
    // The deleted StatefulSet pod: no metadata, the exe names the service.
    let gone = resource(&table, 3, "postgres", None);
    assert_eq!((gone.get_str("k8s.pod.name"), gone.get_str("service.name")), (None, Some("postgres")));

    // Selection by namespace and labels over the watched pods.
    let web_pod = store.lookup(&cid(1)).unwrap().pod;
    let by_label = PodFilter {
        labels: [("app.kubernetes.io/name".to_owned(), "storefront".to_owned())].into(),
        ..Default::default()
    };
    assert!(by_label.matches(&web_pod));
    assert!(!by_label.matches(&store.lookup(&cid(4)).unwrap().pod));
    assert!(!PodFilter { namespaces: vec!["default".into()], ..Default::default() }.matches(&web_pod));
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_are_counted_and_retried_without_metadata() {
    let api = Arc::new(Api { fail: true, ..Default::default() });
    let client = start(api.clone()).await;
    let store = PodStore::new(16);
    let task = tokio::spawn(watch::run(client, NODE.into(), store.clone()));
    wait_for("two failed attempts", || store.watch_errors() >= 2).await;
    assert!(api.requests.lock().unwrap().len() >= 2, "retried after backing off");
    assert!(!task.is_finished(), "the watcher keeps trying");
    assert!(store.is_empty());
    task.abort();
}

#[test]
fn node_name_comes_from_config_then_env() {
    let env = |k: &str| match k {
        "NODE_NAME" => Some("from-downward-api".to_owned()),
        _ => None,
    };
    assert_eq!(watch::node_name(Some("cfg"), &env).unwrap(), "cfg");
    assert_eq!(watch::node_name(None, &env).unwrap(), "from-downward-api");
    let both = |k: &str| Some(format!("{k}-value"));
    assert_eq!(watch::node_name(None, &both).unwrap(), "KSPAN_NODE_NAME-value");
    assert!(watch::node_name(None, &|_| None).is_err());
}

#[test]
fn status_container_ids_of_each_runtime_parse() {
    let id = cid(9);
    for prefix in ["containerd://", "cri-o://", "docker://", ""] {
        assert_eq!(watch::container_id(&format!("{prefix}{id}")).as_deref(), Some(id.as_str()), "{prefix}");
    }
    assert_eq!(watch::container_id("containerd://abc"), None);
    assert_eq!(watch::container_id(""), None);
}
