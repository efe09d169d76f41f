//! Which processes are traced: explicit pids and their descendants, and
//! processes whose executable path or command line matches a regex. Decisions
//! are cached per pid (bounded) and re-made on exec.
//!
//! A pod filter (namespaces, pod labels) narrows that in user space: a process
//! is traced only while its container belongs to a known pod that matches.
//! Host processes and containers whose pod is not known (yet) are not traced;
//! the pod decision is re-made when the pod store changes. The kernel map
//! keeps the process-level decision only.

use foldhash::{HashMap, HashMapExt, HashSet};

use regex::Regex;

use crate::enrich::k8s::{PodFilter, PodStore};
use crate::enrich::process::ProcInfo;

/// Max cached decisions before the cache is cleared.
const MAX_DECISIONS: usize = 65_536;

/// Map updates the kernel must get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KernelUpdate {
    Select(u32),
    Unselect(u32),
}

pub struct Selector {
    all: bool,
    roots: HashSet<u32>,
    exe: Vec<Regex>,
    decided: HashMap<u32, bool>,
    pods: Option<PodSelection>,
    pub updates: Vec<KernelUpdate>,
}

/// The pod-level filter and its per-pid decisions.
struct PodSelection {
    filter: PodFilter,
    store: PodStore,
    /// pid -> (container id, decision, store generation it was made at).
    decided: HashMap<u32, (Option<String>, bool, u64)>,
}

impl PodSelection {
    fn allows(&mut self, pid: u32) -> bool {
        let generation = self.store.generation();
        if let Some((_, yes, g)) = self.decided.get(&pid)
            && *g == generation
        {
            return *yes;
        }
        if self.decided.len() >= MAX_DECISIONS {
            self.decided.clear();
        }
        let container = match self.decided.remove(&pid) {
            Some((c, _, _)) => c,
            None => std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .ok()
                .and_then(|t| crate::enrich::cgroup::container_id(&t)),
        };
        let yes = self.decide(container.as_deref());
        self.decided.insert(pid, (container, yes, generation));
        yes
    }

    fn decide(&self, container: Option<&str>) -> bool {
        container.and_then(|id| self.store.lookup(id)).is_some_and(|c| self.filter.matches(&c.pod))
    }
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.split_whitespace().nth(1)?.parse().ok()
}

/// The first of `pids` that names no process on this host (no
/// `/proc/PID`): a `--pid` must name a running process, or kspan would run
/// and trace nothing.
pub fn missing_pid(pids: &[u32]) -> Option<u32> {
    pids.iter().copied().find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
}

impl Selector {
    /// Entries of the decision tables now, by name (`kspan_table_entries`).
    pub fn table_sizes(&self) -> [(&'static str, usize); 2] {
        [
            ("selector_decisions", self.decided.len()),
            ("pod_decisions", self.pods.as_ref().map_or(0, |p| p.decided.len())),
        ]
    }

    pub fn new(all: bool, pids: &[u32], exe: &[String]) -> Result<Self, regex::Error> {
        let exe =
            exe.iter().map(|r| regex::RegexBuilder::new(r).size_limit(1 << 20).build()).collect::<Result<_, _>>()?;
        Ok(Self {
            all,
            roots: pids.iter().copied().collect(),
            exe,
            decided: HashMap::new(),
            pods: None,
            updates: Vec::new(),
        })
    }

    /// Only explicit pids (and their descendants) are traced: not the whole
    /// host, no executable filter.
    pub fn pids_only(&self) -> bool {
        !self.all && self.exe.is_empty() && !self.roots.is_empty()
    }

    /// Also requires the process's pod to match `filter` (no-op when empty).
    pub fn with_pod_filter(mut self, filter: PodFilter, store: PodStore) -> Self {
        if !filter.is_empty() {
            self.pods = Some(PodSelection { filter, store, decided: HashMap::new() });
        }
        self
    }

    fn matches_exe(&self, p: &ProcInfo) -> bool {
        self.exe.iter().any(|re| re.is_match(&p.exe_path) || re.is_match(&p.cmdline))
    }

    fn descends_from_root(&self, pid: u32) -> bool {
        let mut cur = pid;
        for _ in 0..64 {
            if self.roots.contains(&cur) || self.decided.get(&cur) == Some(&true) && cur != pid {
                return true;
            }
            match parent_of(cur) {
                Some(p) if p > 1 => cur = p,
                _ => return false,
            }
        }
        false
    }

    /// `--exe` against the process's /proc entry or, once that is gone (or
    /// the process is a zombie), the file name its exec event carried.
    fn exe_matches(&self, pid: u32, exec_file: Option<&str>) -> bool {
        match ProcInfo::read(pid).filter(|p| !p.exe_path.is_empty()) {
            Some(p) => self.matches_exe(&p),
            None => exec_file.is_some_and(|f| self.exe.iter().any(|re| re.is_match(f))),
        }
    }

    fn decide(&mut self, pid: u32, exec_file: Option<&str>) -> bool {
        if self.all {
            return true;
        }
        // Reading a process's /proc entry costs more than the rest of the
        // decision: only done when some regex needs it (`--pid` alone walks
        // the parents, which a short-lived process of a busy host pays on
        // every exec).
        let yes = self.roots.contains(&pid)
            || (!self.exe.is_empty() && self.exe_matches(pid, exec_file))
            || self.descends_from_root(pid);
        self.remember(pid, yes);
        self.updates.push(if yes { KernelUpdate::Select(pid) } else { KernelUpdate::Unselect(pid) });
        yes
    }

    /// Caches a decision (the cache is cleared when full).
    fn remember(&mut self, pid: u32, yes: bool) {
        if self.decided.len() >= MAX_DECISIONS {
            self.decided.clear();
        }
        self.decided.insert(pid, yes);
    }

    /// Whether events of `tgid` are wanted.
    pub fn allows(&mut self, tgid: u32) -> bool {
        let process = self.all
            || match self.decided.get(&tgid) {
                Some(v) => *v,
                None => self.decide(tgid, None),
            };
        process && self.pods.as_mut().is_none_or(|p| p.allows(tgid))
    }

    /// A process exec'd `exec_file` (the name execve was given): its
    /// identity changed, decide again. The name decides `--exe` when the
    /// process is already gone (a client that lived a few milliseconds).
    pub fn on_exec(&mut self, tgid: u32, exec_file: &str) -> bool {
        if let Some(p) = &mut self.pods {
            p.decided.remove(&tgid);
        }
        if self.all {
            return self.allows(tgid);
        }
        self.decided.remove(&tgid);
        self.decide(tgid, Some(exec_file)) && self.pods.as_mut().is_none_or(|p| p.allows(tgid))
    }

    /// A traced process forked `child` (the kernel already traces it): the
    /// child takes the parent's decisions, so a child that exits before its
    /// first event is handled (e.g. a PostgreSQL backend serving one query)
    /// is not judged from a /proc entry that is already gone. A parent with
    /// no decision yet leaves the child to be decided on its first event.
    /// Returns whether the child is known to be selected.
    pub fn on_fork(&mut self, parent: u32, child: u32) -> bool {
        if self.all {
            return false;
        }
        let Some(&yes) = self.decided.get(&parent) else { return false };
        self.remember(child, yes);
        if !yes {
            // The kernel marked the child (provisionally) traced: undo that.
            self.updates.push(KernelUpdate::Unselect(child));
        }
        if let Some(p) = &mut self.pods
            && let Some(d) = p.decided.get(&parent).cloned()
        {
            p.decided.insert(child, d);
        }
        yes
    }

    pub fn on_exit(&mut self, tgid: u32) {
        self.decided.remove(&tgid);
        if let Some(p) = &mut self.pods {
            p.decided.remove(&tgid);
        }
    }

    /// Processes selected now (every live process when tracing all); for
    /// rescans such as TLS library discovery.
    pub fn selected(&self) -> Vec<u32> {
        if self.all {
            let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
            return dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        }
        self.decided.iter().filter(|(_, yes)| **yes).map(|(pid, _)| *pid).collect()
    }

    /// Decided processes that no longer exist (their exit went unseen while
    /// capture was paused).
    pub fn vanished(&self) -> Vec<u32> {
        self.decided.keys().copied().filter(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).collect()
    }

    /// Processes already running that are selected (for seeding the kernel
    /// map); a pid decided by an earlier call is skipped, so a second call
    /// returns only processes that appeared since.
    pub fn initial(&mut self) -> Vec<u32> {
        if self.all {
            return Vec::new();
        }
        let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
        let pids: Vec<u32> = dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
        let selected: Vec<u32> =
            pids.into_iter().filter(|p| !self.decided.contains_key(p) && self.decide(*p, None)).collect();
        self.updates.clear();
        selected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pid_of_no_process_is_found_missing() {
        let me = std::process::id();
        assert_eq!(missing_pid(&[me]), None);
        // Above any pid_max (2^22 at most).
        assert_eq!(missing_pid(&[me, 4_294_967_294]), Some(4_294_967_294));
    }

    #[test]
    fn a_forked_child_takes_its_parents_decision_without_proc() {
        let mut s = Selector::new(false, &[7], &[]).unwrap();
        assert!(s.allows(7));
        s.updates.clear();
        // 4_000_000_000 is no live pid: /proc cannot decide it.
        s.on_fork(7, 4_000_000_000);
        assert!(s.allows(4_000_000_000));
        assert!(s.updates.is_empty(), "the kernel already traces the child");
        s.on_exit(4_000_000_000);
        s.on_fork(8, 4_000_000_001);
        assert!(!s.allows(4_000_000_001), "an undecided parent passes nothing on");
        // A parent decided against (e.g. exec'd, provisionally traced, no --exe
        // match): the kernel's provisional mark on the child is removed.
        let mut s = Selector::new(false, &[], &["no-such-binary$".into()]).unwrap();
        assert!(!s.allows(std::process::id()));
        s.updates.clear();
        assert!(!s.on_fork(std::process::id(), 4_000_000_002));
        assert_eq!(s.updates, vec![KernelUpdate::Unselect(4_000_000_002)]);
    }

    #[test]
    fn vanished_lists_decided_processes_without_a_proc_entry() {
        let me = std::process::id();
        let mut s = Selector::new(false, &[me], &[]).unwrap();
        assert!(s.allows(me));
        s.on_fork(me, 4_000_000_003);
        assert!(s.allows(4_000_000_003));
        assert_eq!(s.vanished(), vec![4_000_000_003], "this process lives; the fake child has no /proc entry");
    }

    #[test]
    fn a_process_gone_before_its_exec_is_decided_is_matched_by_the_exec_file_name() {
        let mut s = Selector::new(false, &[], &["/go_tls_app$".to_string()]).unwrap();
        // 4_000_000_004 is no live pid: /proc cannot decide it.
        assert!(s.on_exec(4_000_000_004, "./target/go_tls_app"));
        assert!(s.allows(4_000_000_004));
        assert!(!s.on_exec(4_000_000_005, "/usr/bin/curl"));
        assert!(!s.allows(4_000_000_005));
        // A live process is judged by its /proc entry, not the name given.
        let me = std::process::id();
        assert!(!s.on_exec(me, "/somewhere/go_tls_app"), "this test binary is not go_tls_app");
    }

    #[test]
    fn all_selects_everything_without_updates() {
        let mut s = Selector::new(true, &[], &[]).unwrap();
        assert!(s.allows(12345));
        assert!(s.updates.is_empty());
    }

    #[test]
    fn pid_selects_itself_and_children() {
        let me = std::process::id();
        let mut child = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let mut s = Selector::new(false, &[me], &[]).unwrap();
        assert!(s.allows(me));
        assert!(s.allows(child.id()), "a child of a selected pid is selected");
        assert!(!s.allows(1), "init is not");
        assert!(s.updates.contains(&KernelUpdate::Select(child.id())));
        let selected = s.selected();
        assert!(selected.contains(&me) && selected.contains(&child.id()) && !selected.contains(&1), "{selected:?}");
        child.kill().ok();
        child.wait().ok();
    }

    #[test]
    fn exe_regex_matches_path_or_command_line() {
        let mut child = std::process::Command::new("sleep").arg("7.25").spawn().unwrap();
        // spawn() returns once the child exists, maybe before its exec is done.
        for _ in 0..200 {
            if ProcInfo::read(child.id()).is_some_and(|p| p.cmdline.contains("7.25")) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mut s = Selector::new(false, &[], &["sleep 7\\.25".into()]).unwrap();
        assert!(s.allows(child.id()));
        let mut s = Selector::new(false, &[], &["/nonexistent-binary$".into()]).unwrap();
        assert!(!s.allows(child.id()));
        assert_eq!(s.updates, vec![KernelUpdate::Unselect(child.id())]);
        let selected = Selector::new(false, &[], &["sleep 7\\.25".into()]).unwrap().initial();
        assert!(selected.contains(&child.id()));
        child.kill().ok();
        child.wait().ok();
    }

    fn pod(ns: &str, id: &str, labels: &[(&str, &str)]) -> crate::enrich::k8s::PodMeta {
        crate::enrich::k8s::PodMeta {
            namespace: ns.into(),
            name: format!("{ns}-pod"),
            uid: format!("uid-{id}"),
            labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            containers: vec![(id.into(), "main".into())],
            ..Default::default()
        }
    }

    #[test]
    fn pod_filter_selects_by_namespace_and_labels() {
        let store = PodStore::new(8);
        store.apply(pod("shop", "c1", &[("app", "web"), ("tier", "front")]));
        store.apply(pod("shop", "c2", &[("app", "db")]));
        store.apply(pod("kube-system", "c3", &[("app", "web")]));
        let filter = PodFilter {
            namespaces: vec!["shop".into(), "payments".into()],
            labels: [("app".to_owned(), "web".to_owned())].into(),
        };
        let sel = PodSelection { filter, store, decided: HashMap::new() };
        assert!(sel.decide(Some("c1")), "namespace and label match");
        assert!(!sel.decide(Some("c2")), "label differs");
        assert!(!sel.decide(Some("c3")), "namespace differs");
        assert!(!sel.decide(Some("unknown")), "pod not known");
        assert!(!sel.decide(None), "host process");
    }

    #[test]
    fn pod_decision_is_remade_when_the_pod_arrives() {
        let store = PodStore::new(8);
        let filter = PodFilter { namespaces: vec!["shop".into()], ..Default::default() };
        let mut s = Selector::new(true, &[], &[]).unwrap().with_pod_filter(filter, store.clone());
        let pid = 4_000_000; // not a live pid: the container id is seeded below
        s.pods.as_mut().unwrap().decided.insert(pid, (Some("c9".into()), false, store.generation()));
        assert!(!s.allows(pid), "pod not known yet");
        store.apply(pod("shop", "c9", &[]));
        assert!(s.allows(pid), "allowed once the pod's metadata arrives");
        assert!(!s.allows(std::process::id()), "this test is a host process: no pod");
        assert!(s.updates.is_empty(), "the kernel keeps tracing everything");
        let mut unfiltered = Selector::new(true, &[], &[]).unwrap().with_pod_filter(PodFilter::default(), store);
        assert!(unfiltered.allows(std::process::id()), "an empty pod filter restricts nothing");
    }
}
