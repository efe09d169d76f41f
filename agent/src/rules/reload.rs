//! Hot reload of the rule file.
//!
//! Guarantees:
//! - Readers get the current [`RuleSet`] lock-free ([`RulesHandle::load`]);
//!   a reload swaps it atomically, so a span sees one rule set from start to end.
//! - A broken file never replaces good rules: the error (file:line:column) is
//!   logged, `reload_failures` counts it and `last_reload_ok` turns false.
//!   The same broken content is reported once, not every poll.
//! - Per-rule fired counts carry over reloads for rules that keep their id.
//!
//! Why polling rather than inotify: Kubernetes mounts a ConfigMap through a
//! `..data` symlink that is swapped atomically on update, so an inotify watch
//! on the file sees its old inode vanish and has to be re-armed (and editors
//! that write-and-rename do the same). Polling follows the path every second
//! (`stat` + read + hash of a file capped at 1 MiB), so it sees every kind of
//! replacement, works on any filesystem, and costs next to nothing. SIGHUP
//! forces an immediate reload.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use super::{RuleSet, RulesError, read_rule_file};

/// Shared, swappable current rule set.
#[derive(Clone, Debug)]
pub struct RulesHandle(Arc<ArcSwap<RuleSet>>);

impl RulesHandle {
    pub fn new(rules: RuleSet) -> Self {
        Self(Arc::new(ArcSwap::from_pointee(rules)))
    }

    /// The current rules (cheap; hold it for the span being processed).
    pub fn load(&self) -> Arc<RuleSet> {
        self.0.load_full()
    }

    /// Replaces the rules, carrying fired counts over by rule id.
    pub fn store(&self, mut rules: RuleSet) {
        rules.inherit_counters(&self.0.load());
        self.0.store(Arc::new(rules));
    }

    /// Fired counts of the current rules.
    pub fn fired_counts(&self) -> Vec<(Arc<str>, u64)> {
        self.0.load().fired_counts()
    }
}

/// Reload counters for telemetry.
#[derive(Debug)]
pub struct ReloadStats {
    pub reloads_ok: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Whether the most recent reload attempt succeeded (gauge).
    pub last_reload_ok: AtomicBool,
    /// The most recent reload error, for status endpoints.
    pub last_error: Mutex<Option<String>>,
}

impl Default for ReloadStats {
    fn default() -> Self {
        Self {
            reloads_ok: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
            last_reload_ok: AtomicBool::new(true),
            last_error: Mutex::new(None),
        }
    }
}

/// How the reload task watches the file.
#[derive(Clone, Debug)]
pub struct ReloadOptions {
    pub poll_interval: Duration,
    /// Also reload on SIGHUP.
    pub sighup: bool,
}

impl Default for ReloadOptions {
    fn default() -> Self {
        Self { poll_interval: Duration::from_secs(1), sighup: true }
    }
}

/// Reloads `path` into `handle` now; on failure keeps the old rules.
pub fn reload_now(path: &Path, handle: &RulesHandle, stats: &ReloadStats) -> Result<(), RulesError> {
    match RuleSet::load(path) {
        Ok(rules) => {
            let n = rules.rules().len();
            handle.store(rules);
            stats.reloads_ok.fetch_add(1, Ordering::Relaxed);
            stats.last_reload_ok.store(true, Ordering::Relaxed);
            if let Ok(mut e) = stats.last_error.lock() {
                *e = None;
            }
            tracing::info!(file = %path.display(), rules = n, "rules reloaded");
            Ok(())
        }
        Err(err) => {
            stats.reload_failures.fetch_add(1, Ordering::Relaxed);
            stats.last_reload_ok.store(false, Ordering::Relaxed);
            if let Ok(mut e) = stats.last_error.lock() {
                *e = Some(err.to_string());
            }
            tracing::error!(error = %err, "rules reload failed; keeping the last good rules");
            Err(err)
        }
    }
}

/// What identifies a version of the file.
#[derive(Debug, PartialEq, Eq)]
enum Fingerprint {
    Missing,
    Seen { mtime: Option<SystemTime>, len: u64, hash: u64 },
}

fn fingerprint(path: &Path) -> Fingerprint {
    let Ok(meta) = std::fs::metadata(path) else {
        return Fingerprint::Missing;
    };
    let Ok(text) = read_rule_file(path) else {
        return Fingerprint::Missing;
    };
    let mut h = DefaultHasher::new();
    text.hash(&mut h);
    Fingerprint::Seen { mtime: meta.modified().ok(), len: meta.len(), hash: h.finish() }
}

/// Spawns the reload task with default options (poll every second + SIGHUP).
/// Needs a tokio runtime with time (and, for SIGHUP, IO) enabled.
pub fn spawn_reload(path: PathBuf, handle: RulesHandle, stats: Arc<ReloadStats>) -> tokio::task::JoinHandle<()> {
    spawn_reload_with(path, handle, stats, ReloadOptions::default())
}

/// Spawns the reload task. It runs until aborted.
pub fn spawn_reload_with(
    path: PathBuf,
    handle: RulesHandle,
    stats: Arc<ReloadStats>,
    opts: ReloadOptions,
) -> tokio::task::JoinHandle<()> {
    // Taken now, not in the task: a change made before the task first runs
    // must still be seen as a change.
    let mut last = fingerprint(&path);
    tokio::spawn(async move {
        let mut hup = opts.sighup.then(sighup_stream).flatten();
        let mut tick = tokio::time::interval(opts.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let forced = tokio::select! {
                _ = tick.tick() => false,
                () = next_hup(&mut hup) => true,
            };
            let now = fingerprint(&path);
            if !forced && now == last {
                continue;
            }
            last = now;
            // The error is logged and counted inside.
            let _ = reload_now(&path, &handle, &stats);
        }
    })
}

#[cfg(unix)]
type HupStream = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type HupStream = ();

#[cfg(unix)]
fn sighup_stream() -> Option<HupStream> {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; rules reload by polling only");
            None
        }
    }
}

#[cfg(not(unix))]
fn sighup_stream() -> Option<HupStream> {
    None
}

async fn next_hup(hup: &mut Option<HupStream>) {
    #[cfg(unix)]
    if let Some(s) = hup.as_mut() {
        if s.recv().await.is_some() {
            return;
        }
        *hup = None;
    }
    std::future::pending::<()>().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::span::model::{Attributes, ProcessResource, Span};

    fn span() -> Span {
        let mut attributes = Attributes::new();
        attributes.set("http.request.method", "GET");
        attributes.set("url.path", "/x");
        Span::for_test("GET", attributes, Attributes::new(), Arc::new(ProcessResource::default()))
    }

    fn fired(handle: &RulesHandle) -> Vec<String> {
        handle.load().apply(&mut span()).fired.iter().map(|s| s.to_string()).collect()
    }

    const V1: &str = "rules:\n  - id: one\n    actions: {set: {v: 1}}\n";
    const V2: &str = "rules:\n  - id: one\n    actions: {set: {v: 1}}\n  - id: two\n    actions: {set: {v: 2}}\n";
    const BROKEN: &str = "rules:\n  - id: one\n    match: {http: {path: {regex: '(' }}}\n";

    async fn wait_for(mut cond: impl FnMut() -> bool) -> bool {
        for _ in 0..200 {
            if cond() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        false
    }

    #[tokio::test]
    async fn polling_picks_up_changes_and_keeps_old_rules_on_a_broken_edit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rules.yaml");
        std::fs::write(&path, V1).unwrap();
        let handle = RulesHandle::new(RuleSet::load(&path).unwrap());
        let stats = Arc::new(ReloadStats::default());
        let opts = ReloadOptions { poll_interval: Duration::from_millis(20), sighup: false };
        let task = spawn_reload_with(path.clone(), handle.clone(), Arc::clone(&stats), opts);
        assert_eq!(fired(&handle), ["one"]);

        std::fs::write(&path, V2).unwrap();
        assert!(wait_for(|| fired(&handle) == ["one", "two"]).await, "new rules not loaded");
        assert_eq!(stats.reloads_ok.load(Ordering::Relaxed), 1);
        let counts = handle.fired_counts();
        assert!(counts[0].1 > counts[1].1, "count of `one` carried over the reload: {counts:?}");

        std::fs::write(&path, BROKEN).unwrap();
        assert!(wait_for(|| stats.reload_failures.load(Ordering::Relaxed) == 1).await, "failure not counted");
        assert!(!stats.last_reload_ok.load(Ordering::Relaxed));
        let err = stats.last_error.lock().unwrap().clone().unwrap();
        assert!(err.contains("rules.yaml:3:"), "{err}");
        assert_eq!(fired(&handle), ["one", "two"], "last good rules kept");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(stats.reload_failures.load(Ordering::Relaxed), 1, "same broken content reported once");

        std::fs::write(&path, V1).unwrap();
        assert!(wait_for(|| stats.last_reload_ok.load(Ordering::Relaxed)).await);
        assert_eq!(fired(&handle), ["one"]);
        task.abort();
    }

    #[tokio::test]
    async fn symlink_swap_like_a_configmap_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, link) = (dir.path().join("a.yaml"), dir.path().join("b.yaml"), dir.path().join("rules.yaml"));
        std::fs::write(&a, V1).unwrap();
        std::fs::write(&b, V2).unwrap();
        std::os::unix::fs::symlink(&a, &link).unwrap();
        let handle = RulesHandle::new(RuleSet::load(&link).unwrap());
        let stats = Arc::new(ReloadStats::default());
        let opts = ReloadOptions { poll_interval: Duration::from_millis(20), sighup: false };
        let task = spawn_reload_with(link.clone(), handle.clone(), stats, opts);
        let tmp = dir.path().join("tmp-link");
        std::os::unix::fs::symlink(&b, &tmp).unwrap();
        std::fs::rename(&tmp, &link).unwrap();
        assert!(wait_for(|| fired(&handle) == ["one", "two"]).await);
        task.abort();
    }

    /// Writes a ConfigMap version the way the kubelet does (atomic_writer):
    /// a fresh timestamped directory, a `..data_tmp` symlink to it renamed
    /// over `..data`, then the previous directory removed.
    fn kubelet_publish(dir: &Path, version: u32, rules: &str, previous: Option<&Path>) -> PathBuf {
        let ts = dir.join(format!("..2026_11_22_02_00_{version:02}.{}", 100_000 + version));
        std::fs::create_dir(&ts).unwrap();
        std::fs::write(ts.join("rules.yaml"), rules).unwrap();
        std::fs::write(ts.join("config.yaml"), "select: {all: true}\n").unwrap();
        let tmp = dir.join("..data_tmp");
        std::os::unix::fs::symlink(ts.file_name().unwrap(), &tmp).unwrap();
        std::fs::rename(&tmp, dir.join("..data")).unwrap();
        if let Some(old) = previous {
            std::fs::remove_dir_all(old).unwrap();
        }
        ts
    }

    #[tokio::test]
    async fn configmap_data_symlink_swap_reloads_the_rules() {
        let dir = tempfile::tempdir().unwrap();
        let v1 = kubelet_publish(dir.path(), 1, V2, None);
        // The file kspan is given: a relative symlink through `..data`, made once.
        let path = dir.path().join("rules.yaml");
        std::os::unix::fs::symlink("..data/rules.yaml", &path).unwrap();
        let handle = RulesHandle::new(RuleSet::load(&path).unwrap());
        let stats = Arc::new(ReloadStats::default());
        let opts = ReloadOptions { poll_interval: Duration::from_millis(20), sighup: false };
        let task = spawn_reload_with(path.clone(), handle.clone(), Arc::clone(&stats), opts);
        assert_eq!(fired(&handle), ["one", "two"]);

        // Same length, new content: only the hash tells the versions apart.
        let same_len = V2.replace("id: two", "id: six");
        assert_eq!(same_len.len(), V2.len());
        let v2 = kubelet_publish(dir.path(), 2, &same_len, Some(&v1));
        assert!(wait_for(|| fired(&handle) == ["one", "six"]).await, "rules after the ..data swap not loaded");
        assert_eq!(std::fs::read_link(&path).unwrap(), Path::new("..data/rules.yaml"), "the path itself never changed");

        // A broken version keeps the last good rules; the next good one loads.
        let v3 = kubelet_publish(dir.path(), 3, BROKEN, Some(&v2));
        assert!(wait_for(|| stats.reload_failures.load(Ordering::Relaxed) == 1).await);
        assert_eq!(fired(&handle), ["one", "six"]);
        kubelet_publish(dir.path(), 4, V1, Some(&v3));
        assert!(wait_for(|| fired(&handle) == ["one"]).await);
        assert_eq!(stats.reloads_ok.load(Ordering::Relaxed), 2);
        task.abort();
    }

    #[test]
    fn reload_now_reports_missing_file() {
        let handle = RulesHandle::new(RuleSet::default());
        let stats = ReloadStats::default();
        let err = reload_now(Path::new("/nonexistent/rules.yaml"), &handle, &stats).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/rules.yaml"), "{err}");
        assert_eq!(stats.reload_failures.load(Ordering::Relaxed), 1);
    }
}
