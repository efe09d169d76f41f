use super::*;

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn pod(uid: &str, containers: &[(&str, &str)]) -> PodMeta {
    PodMeta {
        namespace: "shop".into(),
        name: format!("pod-{uid}"),
        uid: uid.into(),
        node_name: "node-1".into(),
        containers: containers.iter().map(|(i, n)| (i.to_string(), n.to_string())).collect(),
        ..Default::default()
    }
}

#[test]
fn replicaset_with_matching_template_hash_gives_the_deployment() {
    let l = labels(&[("pod-template-hash", "7d9f8b6c5")]);
    let o = Owner::resolve("ReplicaSet", "checkout-api-7d9f8b6c5", &l).unwrap();
    assert_eq!(o.kind, OwnerKind::ReplicaSet);
    assert_eq!(o.deployment.as_deref(), Some("checkout-api"));
    assert_eq!(o.workload_name(), "checkout-api");
}

#[test]
fn replicaset_without_a_matching_hash_is_only_a_replicaset() {
    let o = Owner::resolve("ReplicaSet", "legacy-rs", &labels(&[])).unwrap();
    assert_eq!((o.deployment, o.name.as_str()), (None, "legacy-rs"));
    let o = Owner::resolve("ReplicaSet", "web-abc12", &labels(&[("pod-template-hash", "zzz99")])).unwrap();
    assert_eq!(o.deployment, None, "suffix differs from the pod's hash");
    let o = Owner::resolve("ReplicaSet", "-abc12", &labels(&[("pod-template-hash", "abc12")])).unwrap();
    assert_eq!(o.deployment, None, "nothing left after stripping");
}

#[test]
fn statefulset_daemonset_job_and_unknown_owners() {
    let l = labels(&[]);
    assert_eq!(Owner::resolve("StatefulSet", "db", &l).map(|o| o.kind), Some(OwnerKind::StatefulSet));
    assert_eq!(Owner::resolve("DaemonSet", "agent", &l).map(|o| o.kind), Some(OwnerKind::DaemonSet));
    let job = Owner::resolve("Job", "nightly-29012345", &l).unwrap();
    assert_eq!((job.kind, job.deployment.as_deref(), job.workload_name()), (OwnerKind::Job, None, "nightly-29012345"));
    assert_eq!(Owner::resolve("Rollout", "canary", &l), None, "custom controllers are not guessed");
}

#[test]
fn attributes_follow_semantic_conventions() {
    let mut p = pod("u1", &[("c1", "app")]);
    p.labels = labels(&[("pod-template-hash", "5f6")]);
    p.owner = Owner::resolve("ReplicaSet", "web-5f6", &p.labels);
    let mut a = Attributes::new();
    p.set_attributes("app", &mut a);
    for (k, v) in [
        ("k8s.namespace.name", "shop"),
        ("k8s.pod.name", "pod-u1"),
        ("k8s.pod.uid", "u1"),
        ("k8s.container.name", "app"),
        ("k8s.node.name", "node-1"),
        ("k8s.replicaset.name", "web-5f6"),
        ("k8s.deployment.name", "web"),
    ] {
        assert_eq!(a.get_str(k), Some(v), "{k}");
    }
    assert_eq!(a.get_str("k8s.statefulset.name"), None);
    let mut s = pod("u2", &[]);
    s.owner = Owner::resolve("StatefulSet", "db", &s.labels);
    let mut a = Attributes::new();
    s.set_attributes("", &mut a);
    assert_eq!(a.get_str("k8s.statefulset.name"), Some("db"));
    assert_eq!(a.get_str("k8s.container.name"), None);
}

#[test]
fn service_name_prefers_the_app_label_then_the_owner() {
    let mut p = pod("u1", &[]);
    assert_eq!(p.service_name(), None);
    p.labels = labels(&[("pod-template-hash", "5f6")]);
    p.owner = Owner::resolve("ReplicaSet", "web-5f6", &p.labels);
    assert_eq!(p.service_name(), Some("web"));
    p.labels.insert("app.kubernetes.io/name".into(), "storefront".into());
    assert_eq!(p.service_name(), Some("storefront"));
}

#[test]
fn store_indexes_by_container_and_counts_changes() {
    let s = PodStore::new(8);
    let g0 = s.generation();
    assert!(s.apply(pod("u1", &[("c1", "app"), ("c2", "sidecar")])));
    assert!(s.generation() > g0);
    assert_eq!(s.lookup("c2").map(|c| c.container_name), Some("sidecar".into()));
    let g1 = s.generation();
    assert!(s.apply(pod("u1", &[("c1", "app"), ("c2", "sidecar")])));
    assert_eq!(s.generation(), g1, "an unchanged pod is not a change");
    // MODIFIED: a container restarted with a new id.
    assert!(s.apply(pod("u1", &[("c1", "app"), ("c3", "sidecar")])));
    assert!(s.lookup("c2").is_none() && s.lookup("c3").is_some());
    s.delete("u1");
    assert!(s.lookup("c1").is_none() && s.is_empty());
}

#[test]
fn store_is_bounded_and_counts_drops() {
    let s = PodStore::new(2);
    assert!(s.apply(pod("u1", &[("c1", "a")])));
    assert!(s.apply(pod("u2", &[("c2", "a")])));
    assert!(!s.apply(pod("u3", &[("c3", "a")])));
    assert_eq!((s.len(), s.dropped()), (2, 1));
    assert!(s.apply(pod("u2", &[("c2", "a"), ("c4", "b")])), "updates of known pods still apply");
    let many: Vec<(String, String)> = (0..200).map(|i| (format!("id{i}"), format!("n{i}"))).collect();
    let mut big = pod("u1", &[]);
    big.containers = many;
    s.apply(big);
    assert!(s.lookup("id63").is_some() && s.lookup("id64").is_none(), "containers per pod are capped");
}

#[test]
fn replace_all_forgets_pods_missing_from_a_relist() {
    let s = PodStore::new(8);
    s.apply(pod("u1", &[("c1", "a")]));
    s.apply(pod("u2", &[("c2", "a")]));
    s.replace_all(vec![pod("u2", &[("c2", "a")]), pod("u3", &[("c3", "a")])]);
    assert!(s.lookup("c1").is_none());
    assert!(s.lookup("c2").is_some() && s.lookup("c3").is_some());
    assert_eq!(s.len(), 2);
}

#[test]
fn pod_filter_needs_a_listed_namespace_and_every_label() {
    let mut p = pod("u1", &[]);
    p.labels = labels(&[("app", "web"), ("team", "a")]);
    let f = |ns: &[&str], l: &[(&str, &str)]| PodFilter {
        namespaces: ns.iter().map(|s| s.to_string()).collect(),
        labels: labels(l),
    };
    assert!(f(&[], &[]).matches(&p) && f(&[], &[]).is_empty());
    assert!(f(&["other", "shop"], &[("app", "web")]).matches(&p));
    assert!(!f(&["other"], &[]).matches(&p));
    assert!(!f(&[], &[("app", "web"), ("team", "b")]).matches(&p));
}
