//! Process metadata from /proc, cached per pid (bounded), as OTel resources.
//! With a [`PodStore`], a containerised process also gets its pod's `k8s.*`
//! attributes; when the store changes (pod metadata arriving after the
//! process was first seen, labels edited), a cached resource is rebuilt on
//! its next use if its pod lookup now differs: one hash lookup per cached
//! process per store change, never a /proc read.

use std::collections::HashMap;
use std::sync::Arc;

use super::k8s::{ContainerPod, PodStore};
use crate::span::model::{Attributes, ProcessResource};

/// Host-wide resource attributes, read once.
#[derive(Clone, Debug, Default)]
pub struct HostInfo {
    pub host_name: String,
    pub host_id: Option<String>,
}

impl HostInfo {
    pub fn detect() -> Self {
        let host_name =
            std::fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim().to_owned()).unwrap_or_default();
        let host_id =
            std::fs::read_to_string("/etc/machine-id").ok().map(|s| s.trim().to_owned()).filter(|s| !s.is_empty());
        Self { host_name, host_id }
    }
}

/// What kspan knows of a process, read from /proc.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ProcInfo {
    pub pid: u32,
    /// Full path of the executable (may be empty if unreadable).
    pub exe_path: String,
    /// Command line, arguments joined by spaces (used for selection, never exported).
    pub cmdline: String,
    pub comm: String,
    /// OTEL_SERVICE_NAME from the process's environment.
    pub otel_service_name: Option<String>,
    pub container_id: Option<String>,
    /// Start time in clock ticks since boot (tells pid reuse apart).
    pub start_ticks: u64,
}

impl ProcInfo {
    /// Reads /proc/<pid>; `None` if the process is gone.
    pub fn read(pid: u32) -> Option<Self> {
        let base = format!("/proc/{pid}");
        let stat = std::fs::read_to_string(format!("{base}/stat")).ok()?;
        // Field 22 (starttime) after the ")" that ends comm.
        let start_ticks =
            stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(19)?.parse().ok()).unwrap_or(0);
        let exe_path =
            std::fs::read_link(format!("{base}/exe")).map(|p| p.to_string_lossy().into_owned()).unwrap_or_default();
        let cmdline = std::fs::read(format!("{base}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).split('\0').filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" "))
            .unwrap_or_default();
        let comm = std::fs::read_to_string(format!("{base}/comm")).map(|s| s.trim().to_owned()).unwrap_or_default();
        let otel_service_name = std::fs::read(format!("{base}/environ")).ok().and_then(|env| {
            env.split(|b| *b == 0).find_map(|kv| {
                kv.strip_prefix(b"OTEL_SERVICE_NAME=")
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .filter(|v| !v.is_empty())
            })
        });
        let container_id =
            std::fs::read_to_string(format!("{base}/cgroup")).ok().and_then(|t| super::cgroup::container_id(&t));
        Some(Self { pid, exe_path, cmdline, comm, otel_service_name, container_id, start_ticks })
    }

    /// Executable file name (falls back to comm).
    pub fn exe_name(&self) -> &str {
        self.exe_path.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or(&self.comm)
    }

    /// The name the process was started as, when it is not its executable
    /// file's: a multi-call program reached through a link (Debian's
    /// `redis-server` is a link to `redis-check-rdb`; busybox applets).
    /// That is argv[0]'s base name when the kernel's `comm` (the first 15
    /// bytes of the name the process was exec'd as, unless it renamed
    /// itself) agrees with it; `None` otherwise.
    pub fn invoked_name(&self) -> Option<&str> {
        let argv0 = self.cmdline.split(' ').next()?;
        let base = argv0.rsplit('/').next().filter(|b| !b.is_empty())?;
        let comm = self.comm.as_str();
        let agrees = base == comm || (comm.len() == 15 && base.starts_with(comm));
        (agrees && base != self.exe_name()).then_some(base)
    }
}

/// A cached resource and what it was built from.
struct Entry {
    resource: Arc<ProcessResource>,
    /// /proc facts (of the command line only argv[0] is kept: the rest is
    /// not needed to rebuild).
    info: ProcInfo,
    /// The pod the resource was built with (compared by pointer).
    pod: Option<Arc<super::k8s::PodMeta>>,
    /// [`PodStore::generation`] when the pod was last looked up.
    generation: u64,
}

/// Builds resources for processes, bounded.
pub struct ProcessTable {
    host: HostInfo,
    /// `exe name -> service.name` overrides from the config.
    service_names: HashMap<String, String>,
    extra: Attributes,
    pods: Option<PodStore>,
    cache: foldhash::HashMap<u32, Entry>,
    max: usize,
    pub evicted: u64,
    /// Cached resources rebuilt because their pod metadata changed or arrived.
    pub refreshed: u64,
}

impl ProcessTable {
    /// Processes whose resource is cached now.
    pub fn len(&self) -> usize {
        self.cache.len()
    }

    pub fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }

    pub fn new(host: HostInfo, service_names: HashMap<String, String>, extra: Attributes, max: usize) -> Self {
        Self {
            host,
            service_names,
            extra,
            pods: None,
            cache: foldhash::HashMap::default(),
            max,
            evicted: 0,
            refreshed: 0,
        }
    }

    /// Adds Kubernetes pod metadata from `pods`.
    pub fn with_pods(mut self, pods: PodStore) -> Self {
        self.pods = Some(pods);
        self
    }

    fn pod_of(&self, info: &ProcInfo) -> (Option<ContainerPod>, u64) {
        match (&self.pods, &info.container_id) {
            (Some(store), Some(id)) => (store.lookup(id), store.generation()),
            (Some(store), None) => (None, store.generation()),
            _ => (None, 0),
        }
    }

    /// The resource of `pid`, read from /proc on first use.
    pub fn resource(&mut self, pid: u32) -> Arc<ProcessResource> {
        let generation = self.pods.as_ref().map_or(0, PodStore::generation);
        if let Some(e) = self.cache.get(&pid) {
            if e.generation == generation || e.info.container_id.is_none() {
                return e.resource.clone();
            }
            let (pod, generation) = self.pod_of(&e.info);
            let same = match (&pod, &e.pod) {
                (Some(a), Some(b)) => Arc::ptr_eq(&a.pod, b),
                (None, None) => true,
                _ => false,
            };
            let rebuilt = (!same).then(|| Arc::new(self.build_with(&e.info, pod.as_ref())));
            let Some(e) = self.cache.get_mut(&pid) else { return Arc::default() };
            e.generation = generation;
            if let Some(r) = rebuilt {
                e.resource = r;
                e.pod = pod.map(|p| p.pod);
                self.refreshed += 1;
            }
            return e.resource.clone();
        }
        let info = ProcInfo::read(pid).unwrap_or(ProcInfo { pid, ..Default::default() });
        self.insert(pid, info)
    }

    /// Builds and caches the resource of `pid` from `info`.
    fn insert(&mut self, pid: u32, mut info: ProcInfo) -> Arc<ProcessResource> {
        // The command line is not needed again, but for argv[0] (`invoked_name`).
        let argv0 = info.cmdline.find(' ').unwrap_or(info.cmdline.len());
        info.cmdline.truncate(argv0);
        let (pod, generation) = self.pod_of(&info);
        let r = Arc::new(self.build_with(&info, pod.as_ref()));
        if self.cache.len() >= self.max {
            // Evict an arbitrary entry: the cache is an optimisation only.
            if let Some(k) = self.cache.keys().next().copied() {
                self.cache.remove(&k);
                self.evicted += 1;
            }
        }
        self.cache.insert(pid, Entry { resource: r.clone(), info, pod: pod.map(|p| p.pod), generation });
        r
    }

    /// A process forked `child`: read it now, or, if it is already gone, give
    /// it the parent's identity (a fork keeps the executable and
    /// environment) under its own pid.
    pub fn inherit(&mut self, parent: u32, child: u32) {
        if self.cache.contains_key(&child) {
            return;
        }
        let info = match ProcInfo::read(child) {
            Some(info) => info,
            None => {
                self.resource(parent);
                let Some(e) = self.cache.get(&parent) else { return };
                ProcInfo { pid: child, start_ticks: 0, ..e.info.clone() }
            }
        };
        self.insert(child, info);
    }

    /// Forgets every process: after a capture pause, whose execs and exits
    /// went unseen (entries are read again from /proc on next use).
    pub fn clear(&mut self) {
        self.cache.clear();
    }

    /// A process exec'd `filename`: its identity is read afresh; when it is
    /// already gone (or a zombie), the file name stands for its executable.
    pub fn exec(&mut self, pid: u32, filename: &str) {
        self.cache.remove(&pid);
        let info = ProcInfo::read(pid).filter(|p| !p.exe_path.is_empty()).unwrap_or_else(|| ProcInfo {
            pid,
            exe_path: filename.to_owned(),
            ..Default::default()
        });
        self.insert(pid, info);
    }

    /// The resource of `pid` if it is cached (no /proc read).
    pub fn cached(&self, pid: u32) -> Option<Arc<ProcessResource>> {
        self.cache.get(&pid).map(|e| e.resource.clone())
    }

    /// Forgets a pid (exec changes its identity; exit ends it).
    pub fn forget(&mut self, pid: u32) {
        self.cache.remove(&pid);
    }

    /// Resource attributes for a process, following OTel conventions.
    pub fn build(&self, p: &ProcInfo) -> ProcessResource {
        let (pod, _) = self.pod_of(p);
        self.build_with(p, pod.as_ref())
    }

    /// `service.name` precedence: the process's OTEL_SERVICE_NAME, the
    /// configured exe mapping, the pod's `app.kubernetes.io/name` label, its
    /// owner's name (Deployment before ReplicaSet), the name it was started
    /// as if that is not its executable's ([`ProcInfo::invoked_name`]), the
    /// executable name.
    fn build_with(&self, p: &ProcInfo, pod: Option<&ContainerPod>) -> ProcessResource {
        let mut a = Attributes::new();
        let exe = p.exe_name().to_owned();
        let service = p
            .otel_service_name
            .clone()
            .or_else(|| self.service_names.get(&exe).cloned())
            .or_else(|| pod.and_then(|c| c.pod.service_name()).map(str::to_owned))
            .or_else(|| p.invoked_name().map(str::to_owned))
            .unwrap_or_else(|| if exe.is_empty() { format!("pid-{}", p.pid) } else { exe.clone() });
        a.set("service.name", service);
        a.set("service.instance.id", format!("{}:{}:{}", self.host.host_name, p.pid, p.start_ticks));
        a.set("process.pid", p.pid as i64);
        if !exe.is_empty() {
            a.set("process.executable.name", exe);
        }
        if !p.exe_path.is_empty() {
            a.set("process.executable.path", p.exe_path.clone());
        }
        a.set("host.name", self.host.host_name.clone());
        if let Some(id) = &self.host.host_id {
            a.set("host.id", id.clone());
        }
        if let Some(c) = &p.container_id {
            a.set("container.id", c.clone());
        }
        if let Some(c) = pod {
            c.pod.set_attributes(&c.container_name, &mut a);
        }
        a.set("telemetry.distro.name", "kspan");
        a.set("telemetry.distro.version", env!("CARGO_PKG_VERSION"));
        for (k, v) in self.extra.iter() {
            if a.get(k).is_none() {
                a.set(k.to_owned(), v.clone());
            }
        }
        ProcessResource { pid: p.pid, attributes: a }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> ProcessTable {
        let host = HostInfo { host_name: "node-1".into(), host_id: Some("abc".into()) };
        let names = HashMap::from([("python3.11".to_owned(), "checkout".to_owned())]);
        let mut extra = Attributes::new();
        extra.set("deployment.environment.name", "prod");
        ProcessTable::new(host, names, extra, 2)
    }

    #[test]
    fn service_name_prefers_the_process_env_then_mapping_then_exe() {
        let t = table();
        let mut p = ProcInfo { pid: 7, exe_path: "/usr/bin/python3.11".into(), ..Default::default() };
        assert_eq!(t.build(&p).attributes.get_str("service.name"), Some("checkout"));
        p.otel_service_name = Some("from-env".into());
        assert_eq!(t.build(&p).attributes.get_str("service.name"), Some("from-env"));
        let q = ProcInfo { pid: 8, exe_path: "/usr/sbin/nginx".into(), ..Default::default() };
        let r = t.build(&q);
        assert_eq!(r.attributes.get_str("service.name"), Some("nginx"));
        assert_eq!(r.attributes.get_str("process.executable.name"), Some("nginx"));
        assert_eq!(r.attributes.get_str("host.name"), Some("node-1"));
        assert_eq!(r.attributes.get_str("host.id"), Some("abc"));
        assert_eq!(r.attributes.get_str("telemetry.distro.name"), Some("kspan"));
        assert_eq!(r.attributes.get_str("deployment.environment.name"), Some("prod"));
        assert_eq!(r.attributes.get("process.pid").and_then(|v| v.as_i64()), Some(8));
    }

    #[test]
    fn a_multi_call_executable_is_named_as_it_was_started() {
        let mut t = table();
        let proc = |exe: &str, cmdline: &str, comm: &str| ProcInfo {
            pid: 9,
            exe_path: exe.into(),
            cmdline: cmdline.into(),
            comm: comm.into(),
            ..Default::default()
        };
        // Through the cache, which keeps only argv[0] of the command line.
        let r = t.insert(9, proc("/usr/bin/redis-check-rdb", "redis-server 127.0.0.1:6379", "redis-server"));
        assert_eq!(r.attributes.get_str("service.name"), Some("redis-server"));
        assert_eq!(r.attributes.get_str("process.executable.name"), Some("redis-check-rdb"), "the file, per OTel");
        let service = |p: ProcInfo| t.build(&p).attributes.get_str("service.name").map(str::to_owned);
        // comm holds 15 bytes of a longer name.
        let long = proc("/bin/busybox", "/usr/sbin/start-stop-daemon --start", "start-stop-daem");
        assert_eq!(service(long).as_deref(), Some("start-stop-daemon"));
        // A process that retitled itself (argv[0] rewritten, comm not) keeps its executable's name.
        let retitled = proc("/usr/bin/python3.12", "gunicorn: worker [app:app]", "python3");
        assert_eq!(service(retitled).as_deref(), Some("python3.12"));
        // The usual case: argv[0] is the executable.
        assert_eq!(service(proc("/usr/sbin/nginx", "nginx: worker process", "nginx")).as_deref(), Some("nginx"));
    }

    #[test]
    fn reads_this_process_from_proc() {
        let me = ProcInfo::read(std::process::id()).expect("self");
        assert!(!me.exe_path.is_empty());
        assert!(me.start_ticks > 0);
    }

    #[test]
    fn a_process_gone_before_its_exec_was_read_is_named_by_its_exec_file() {
        let mut t = table();
        // 4_000_000_000 is no live pid.
        t.exec(4_000_000_000, "/usr/bin/curl");
        let r = t.resource(4_000_000_000);
        assert_eq!(r.attributes.get_str("process.executable.name"), Some("curl"));
        // A live process is read from /proc whatever name is given.
        let me = std::process::id();
        t.exec(me, "/usr/bin/not-this");
        assert_ne!(t.resource(me).attributes.get_str("process.executable.name"), Some("not-this"));
    }

    #[test]
    fn a_child_gone_before_it_was_read_gets_its_parents_identity() {
        let mut t = table();
        let me = std::process::id();
        // 4_000_000_000 is no live pid.
        t.inherit(me, 4_000_000_000);
        let child = t.resource(4_000_000_000);
        let parent = t.resource(me);
        assert_eq!(child.pid, 4_000_000_000);
        assert_eq!(child.attributes.get("process.pid"), Some(&4_000_000_000i64.into()));
        assert_eq!(child.attributes.get("service.name"), parent.attributes.get("service.name"));
        assert_eq!(child.attributes.get("process.executable.path"), parent.attributes.get("process.executable.path"));
    }

    #[test]
    fn cache_is_bounded() {
        let mut t = table();
        for pid in [1, 2, 3, 4] {
            t.resource(pid);
        }
        assert!(t.cache.len() <= 2);
        assert_eq!(t.evicted, 2);
    }

    const CID: &str = "3f4c5e1b2a7d9c8e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e";

    fn k8s_pod(labels: &[(&str, &str)]) -> crate::enrich::k8s::PodMeta {
        let labels: std::collections::BTreeMap<String, String> =
            labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        crate::enrich::k8s::PodMeta {
            namespace: "shop".into(),
            name: "web-5f6-x2".into(),
            uid: "uid-1".into(),
            node_name: "node-1".into(),
            owner: crate::enrich::k8s::Owner::resolve("ReplicaSet", "web-5f6", &labels),
            labels,
            containers: vec![(CID.into(), "app".into())],
        }
    }

    #[test]
    fn service_name_precedence_with_pod_metadata() {
        let store = PodStore::new(4);
        store.apply(k8s_pod(&[("pod-template-hash", "5f6"), ("app.kubernetes.io/name", "storefront")]));
        let t = table().with_pods(store.clone());
        let mut p =
            ProcInfo { pid: 7, exe_path: "/usr/bin/node".into(), container_id: Some(CID.into()), ..Default::default() };
        let r = t.build(&p);
        assert_eq!(r.attributes.get_str("service.name"), Some("storefront"), "app label over owner and exe");
        assert_eq!(r.attributes.get_str("k8s.pod.name"), Some("web-5f6-x2"));
        assert_eq!(r.attributes.get_str("k8s.container.name"), Some("app"));
        assert_eq!(r.attributes.get_str("k8s.deployment.name"), Some("web"));
        store.apply(k8s_pod(&[("pod-template-hash", "5f6")]));
        assert_eq!(t.build(&p).attributes.get_str("service.name"), Some("web"), "owner when no app label");
        p.exe_path = "/usr/bin/python3.11".into();
        assert_eq!(t.build(&p).attributes.get_str("service.name"), Some("checkout"), "configured mapping over pod");
        p.otel_service_name = Some("from-env".into());
        assert_eq!(t.build(&p).attributes.get_str("service.name"), Some("from-env"), "process env first");
        let host = ProcInfo { pid: 9, exe_path: "/usr/bin/node".into(), ..Default::default() };
        let r = t.build(&host);
        assert_eq!(r.attributes.get_str("service.name"), Some("node"));
        assert_eq!(r.attributes.get_str("k8s.pod.name"), None);
    }

    #[test]
    fn cached_resource_picks_up_pod_metadata_that_arrives_later() {
        let store = PodStore::new(4);
        let mut t = table().with_pods(store.clone());
        let info =
            ProcInfo { pid: 77, exe_path: "/app/server".into(), container_id: Some(CID.into()), ..Default::default() };
        let (pod, generation) = t.pod_of(&info);
        let resource = Arc::new(t.build_with(&info, pod.as_ref()));
        t.cache.insert(77, Entry { resource, info, pod: None, generation });
        assert_eq!(t.resource(77).attributes.get_str("k8s.pod.name"), None);
        assert_eq!(t.resource(77).attributes.get_str("service.name"), Some("server"));
        store.apply(k8s_pod(&[("pod-template-hash", "5f6")]));
        let r = t.resource(77);
        assert_eq!(r.attributes.get_str("k8s.pod.name"), Some("web-5f6-x2"));
        assert_eq!(r.attributes.get_str("service.name"), Some("web"));
        assert_eq!(t.refreshed, 1);
        store.apply(crate::enrich::k8s::PodMeta { uid: "other".into(), containers: vec![], ..Default::default() });
        assert!(Arc::ptr_eq(&r, &t.resource(77)), "an unrelated change rebuilds nothing");
        assert_eq!(t.refreshed, 1);
    }
}
