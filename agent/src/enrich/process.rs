//! Process metadata from /proc, cached per pid (bounded), as OTel resources.

use std::collections::HashMap;
use std::sync::Arc;

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
}

/// Builds resources for processes, bounded.
pub struct ProcessTable {
    host: HostInfo,
    /// `exe name -> service.name` overrides from the config.
    service_names: HashMap<String, String>,
    extra: Attributes,
    cache: HashMap<u32, Arc<ProcessResource>>,
    max: usize,
    pub evicted: u64,
}

impl ProcessTable {
    pub fn new(host: HostInfo, service_names: HashMap<String, String>, extra: Attributes, max: usize) -> Self {
        Self { host, service_names, extra, cache: HashMap::new(), max, evicted: 0 }
    }

    /// The resource of `pid`, read from /proc on first use.
    pub fn resource(&mut self, pid: u32) -> Arc<ProcessResource> {
        if let Some(r) = self.cache.get(&pid) {
            return r.clone();
        }
        let info = ProcInfo::read(pid).unwrap_or(ProcInfo { pid, ..Default::default() });
        let r = Arc::new(self.build(&info));
        if self.cache.len() >= self.max {
            // Evict an arbitrary entry: the cache is an optimisation only.
            if let Some(k) = self.cache.keys().next().copied() {
                self.cache.remove(&k);
                self.evicted += 1;
            }
        }
        self.cache.insert(pid, r.clone());
        r
    }

    /// Forgets a pid (exec changes its identity; exit ends it).
    pub fn forget(&mut self, pid: u32) {
        self.cache.remove(&pid);
    }

    /// Resource attributes for a process, following OTel conventions.
    pub fn build(&self, p: &ProcInfo) -> ProcessResource {
        let mut a = Attributes::new();
        let exe = p.exe_name().to_owned();
        let service = p
            .otel_service_name
            .clone()
            .or_else(|| self.service_names.get(&exe).cloned())
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
    fn reads_this_process_from_proc() {
        let me = ProcInfo::read(std::process::id()).expect("self");
        assert!(!me.exe_path.is_empty());
        assert!(me.start_ticks > 0);
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
}
