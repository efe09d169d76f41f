//! The kernel maps' entries seen from user space: walking a hash map's keys
//! (one system call a key), clearing a map on resume, and telling how many
//! entries each LRU map evicted (`kspan_common::lru`).
//!
//! Guarantees:
//! - An LRU map drops its least recently used entry when it is full, and
//!   the kernel counts nothing. The eBPF side counts each LRU map's new
//!   entries and deletions; an entry that came and was neither deleted nor
//!   is still there was evicted. New entries are read before the walk that
//!   counts the live ones and deletions after it, so an entry added or
//!   deleted during the walk can only lower the estimate: evictions are never
//!   over-counted, and the published count never goes down.
//! - The walks run on their own thread (`kspan-census`), at most once per
//!   [`CENSUS_PERIOD`], and only for a map whose entries not yet accounted
//!   for reach half its bound (a map far from full evicts nothing); a walk
//!   reads at most twice the bound in keys.
//! - A walk also deletes the entries of processes that have exited (their
//!   process id, which every LRU map's key holds, has no `/proc` entry):
//!   the kernel side deletes a process's socket entries at its exit, but
//!   not its TLS and Go ones, nor any without `bpf_loop`, so only eviction
//!   would free those, and a map full of them would evict live ones. Not
//!   when kspan runs in a pid namespace of its own (its `/proc` then does
//!   not show the host's process ids).
//! - Each map's deletions (the kernel side's and the agent's) are published
//!   as of the last round.
//! - Entries the agent deletes itself (clearing on resume, sweeping) count
//!   as deleted.

use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use aya::maps::{MapData, PerCpuArray};
use kspan_common::lru;

/// Time between two census rounds.
pub const CENSUS_PERIOD: Duration = Duration::from_secs(10);

const N: usize = lru::COUNT as usize;

/// The kernel's `LRU_OPS` counters: new entries of LRU map `i` at `2 * i`,
/// its deletions at `2 * i + 1`.
pub type LruOps = PerCpuArray<MapData, u64>;

/// Evictions found so far, deletions, and the agent's own deletions, by LRU
/// map (indexed like `kspan_common::lru`).
#[derive(Default)]
pub struct LruCounts {
    evicted: [AtomicU64; N],
    agent_deleted: [AtomicU64; N],
    swept: [AtomicU64; N],
    /// All deletions (the kernel's and the agent's) at the last census round.
    deleted: [AtomicU64; N],
}

/// What the census knows of the LRU maps, by map (`kspan_common::lru` order).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LruTally {
    /// Entries evicted (a lower bound).
    pub evicted: [u64; N],
    /// Entries of exited processes the census deleted.
    pub swept: [u64; N],
    /// Entries deleted, by the kernel side (a socket's close, a process's
    /// exit) or the agent, as of the last census round.
    pub deleted: [u64; N],
}

impl LruCounts {
    /// The counts now.
    pub fn tally(&self) -> LruTally {
        let read = |a: &[AtomicU64; N]| std::array::from_fn(|i| a[i].load(Ordering::Relaxed));
        LruTally { evicted: read(&self.evicted), swept: read(&self.swept), deleted: read(&self.deleted) }
    }

    /// The agent deleted `n` entries of map `name` (ignored unless an LRU map).
    pub(super) fn deleted_by_agent(&self, name: &str, n: usize) {
        if let Some(i) = lru_index(name) {
            self.agent_deleted[i].fetch_add(n as u64, Ordering::Relaxed);
        }
    }
}

/// Index of LRU map `name` in `kspan_common::lru`.
fn lru_index(name: &str) -> Option<usize> {
    lru::NAMES.iter().position(|m| *m == name)
}

/// Evictions explained by the counts: what came, less what was deleted and
/// what is still there (never negative).
pub fn evictions(inserted: u64, deleted: u64, live: u64) -> u64 {
    inserted.saturating_sub(deleted).saturating_sub(live)
}

/// One LRU map as the census thread reads it.
struct LruMap {
    index: usize,
    fd: OwnedFd,
    key_size: usize,
    max: u64,
}

/// Starts the census thread over the LRU maps of `maps` (by name), with
/// `ops` the `LRU_OPS` per-CPU counters, which it owns from then on. It ends
/// once `counts` is dropped.
/// A map that cannot be read is left out (logged).
pub(super) fn start<'a>(
    maps: impl Iterator<Item = (&'a str, &'a MapData)>,
    ops: LruOps,
    counts: &Arc<LruCounts>,
) -> std::io::Result<()> {
    let mut lrus = Vec::new();
    for (name, map) in maps {
        let Some(index) = lru_index(name) else { continue };
        let described = map.info().map_err(|e| e.to_string()).and_then(|info| {
            let fd = map.fd().as_fd().try_clone_to_owned().map_err(|e| e.to_string())?;
            Ok(LruMap { index, fd, key_size: info.key_size() as usize, max: u64::from(info.max_entries()) })
        });
        match described {
            Ok(m) => lrus.push(m),
            Err(reason) => tracing::warn!(map = name, %reason, "its evictions will not be counted"),
        }
    }
    let counts = Arc::downgrade(counts);
    std::thread::Builder::new().name("kspan-census".into()).spawn(move || run(&lrus, &ops, &counts))?;
    Ok(())
}

fn run(maps: &[LruMap], ops: &LruOps, counts: &Weak<LruCounts>) {
    let mut warned = [false; N];
    let sweep = host_pids();
    if !sweep {
        tracing::warn!(
            "kspan runs in a pid namespace of its own: the kernel maps' entries of exited processes are not swept"
        );
    }
    loop {
        std::thread::sleep(CENSUS_PERIOD);
        let Some(counts) = counts.upgrade() else { return };
        for m in maps {
            let i = m.index;
            let inserted = per_cpu_sum(ops, 2 * i as u32);
            let deleted =
                |c: &LruCounts| per_cpu_sum(ops, 2 * i as u32 + 1) + c.agent_deleted[i].load(Ordering::Relaxed);
            let known = counts.evicted[i].load(Ordering::Relaxed);
            counts.deleted[i].fetch_max(deleted(&counts), Ordering::Relaxed);
            if evictions(inserted, deleted(&counts), known) < m.max / 2 {
                continue;
            }
            let walked = walk(m, sweep).and_then(|(live, stale)| Ok((live, delete(m, &stale)?)));
            let (live, swept) = match walked {
                Ok(w) => w,
                Err(e) => {
                    if !std::mem::replace(&mut warned[i], true) {
                        tracing::warn!(map = lru::NAMES[i], "cannot count its entries: {e}");
                    }
                    continue;
                }
            };
            counts.agent_deleted[i].fetch_add(swept, Ordering::Relaxed);
            counts.swept[i].fetch_add(swept, Ordering::Relaxed);
            counts.deleted[i].fetch_max(deleted(&counts), Ordering::Relaxed);
            let found = evictions(inserted, deleted(&counts), live);
            counts.evicted[i].fetch_max(found, Ordering::Relaxed);
        }
    }
}

/// Whether this process sees the host's process ids, which the kernel's
/// keys hold: no pid namespace of its own (one `NSpid` entry).
fn host_pids() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status.lines().find_map(|l| l.strip_prefix("NSpid:")).is_some_and(|v| v.split_whitespace().count() == 1)
}

/// The process id in a key of LRU map `index`: `sock_key(tgid, fd)` (a u64,
/// tgid in its high half) or a `ProcPtr` (tgid first).
fn key_tgid(index: usize, key: &[u8]) -> Option<u32> {
    let at = match index as u32 {
        lru::SOCKS | lru::GO_CONN_CALLER => 4,
        _ => 0,
    };
    Some(u32::from_le_bytes(key.get(at..at + 4)?.try_into().ok()?))
}

/// Walks the keys of `m` (at most twice its bound: a key deleted under the
/// walk restarts it from the first key): the live entries, and with
/// `sweep` the keys of processes that have exited (see the module header),
/// which are not counted as live.
fn walk(m: &LruMap, sweep: bool) -> std::io::Result<(u64, Vec<Vec<u8>>)> {
    let fd = m.fd.as_raw_fd() as u32;
    let (mut key, mut next) = (vec![0u8; m.key_size], vec![0u8; m.key_size]);
    let mut alive: std::collections::HashMap<u32, bool> = std::collections::HashMap::new();
    let (mut n, mut stale) = (0u64, Vec::new());
    while n < 2 * m.max {
        if !next_key(fd, (n > 0).then_some(&key[..]), &mut next)? {
            break;
        }
        std::mem::swap(&mut key, &mut next);
        n += 1;
        if let Some(tgid) = key_tgid(m.index, &key).filter(|_| sweep)
            && !*alive.entry(tgid).or_insert_with(|| std::path::Path::new(&format!("/proc/{tgid}")).exists())
        {
            stale.push(key.clone());
        }
    }
    // `n` and `stale` both count a key met twice (a restarted walk), so
    // their difference counts each live key met at least once: live entries
    // are never under-counted, and so evictions never over-counted.
    Ok(((n - stale.len() as u64).min(m.max), stale))
}

/// Deletes `keys` from `m`; returns how many were still there.
fn delete(m: &LruMap, keys: &[Vec<u8>]) -> std::io::Result<u64> {
    let fd = m.fd.as_raw_fd() as u32;
    let mut n = 0;
    for k in keys {
        if delete_key(fd, k)? {
            n += 1;
        }
    }
    Ok(n)
}

/// `union bpf_attr` for the map element commands.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    next_key: u64,
    flags: u64,
}

const BPF_MAP_DELETE_ELEM: libc::c_long = 3;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;

fn bpf_elem(cmd: libc::c_long, attr: &mut ElemAttr) -> std::io::Result<()> {
    // SAFETY: `attr` is a valid bpf_attr prefix for this command; the key
    // pointers it holds point to buffers of the map's key size.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut ElemAttr, std::mem::size_of::<ElemAttr>()) };
    if r < 0 { Err(std::io::Error::last_os_error()) } else { Ok(()) }
}

/// The key after `key` (the first one for `None`) into `next`; false when
/// there is none. `key` and `next` have the map's key size.
fn next_key(fd: u32, key: Option<&[u8]>, next: &mut [u8]) -> std::io::Result<bool> {
    let key = key.map_or(0, |k| k.as_ptr() as u64);
    let mut attr = ElemAttr { map_fd: fd, _pad: 0, key, next_key: next.as_mut_ptr() as u64, flags: 0 };
    match bpf_elem(BPF_MAP_GET_NEXT_KEY, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Deletes `key`; false when it was not there.
fn delete_key(fd: u32, key: &[u8]) -> std::io::Result<bool> {
    let mut attr = ElemAttr { map_fd: fd, _pad: 0, key: key.as_ptr() as u64, next_key: 0, flags: 0 };
    match bpf_elem(BPF_MAP_DELETE_ELEM, &mut attr) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sum over CPUs of element `index` of `LRU_OPS` (0 if unreadable).
fn per_cpu_sum(ops: &LruOps, index: u32) -> u64 {
    ops.get(&index, 0).map_or(0, |v| v.iter().sum())
}

/// Deletes every entry of a hash map nobody writes to meanwhile; returns
/// how many. Keys are collected first (deleting while walking a hash map
/// restarts the walk), at most `max_entries` of them.
pub(super) fn clear(map: &MapData) -> Result<usize, String> {
    let info = map.info().map_err(|e| e.to_string())?;
    let (size, max) = (info.key_size() as usize, info.max_entries() as usize);
    let fd = map.fd().as_fd().as_raw_fd() as u32;
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut next = vec![0u8; size];
    while keys.len() < max
        && next_key(fd, keys.last().map(Vec::as_slice), &mut next).map_err(|e| format!("walking keys: {e}"))?
    {
        keys.push(next.clone());
    }
    for k in &keys {
        delete_key(fd, k).map_err(|e| format!("deleting an entry: {e}"))?;
    }
    Ok(keys.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_came_less_what_left_or_stayed() {
        assert_eq!(evictions(4096, 0, 1024), 3072);
        assert_eq!(evictions(4096, 96, 1000), 3000);
        // Entries added during the walk (seen live, not yet counted as new)
        // lower the estimate; it never goes below zero.
        assert_eq!(evictions(10, 2, 12), 0);
        assert_eq!(evictions(10, 20, 0), 0);
    }

    #[test]
    fn keys_name_their_process() {
        let sock = kspan_common::sock_key(4242, 7).to_le_bytes();
        assert_eq!(key_tgid(lru::SOCKS as usize, &sock), Some(4242));
        assert_eq!(key_tgid(lru::GO_CONN_CALLER as usize, &sock), Some(4242));
        let mut proc_ptr = [0u8; 16];
        proc_ptr[..4].copy_from_slice(&4343u32.to_le_bytes());
        proc_ptr[8..].copy_from_slice(&0x7f00_dead_beefu64.to_le_bytes());
        for map in [lru::TLS_SOCKS, lru::GO_TLS_CALLS, lru::GO_H2_REQUESTS, lru::GO_ACTS_FOR] {
            assert_eq!(key_tgid(map as usize, &proc_ptr), Some(4343));
        }
        assert_eq!(key_tgid(lru::SOCKS as usize, &[1, 2]), None);
    }

    #[test]
    fn this_test_sees_host_process_ids() {
        // The test runs on the host (CI as root), as kspan must.
        assert!(host_pids());
    }

    #[test]
    fn agent_deletions_count_only_for_lru_maps() {
        let c = LruCounts::default();
        c.deleted_by_agent("SOCKS", 5);
        c.deleted_by_agent("INFLIGHT", 7);
        c.deleted_by_agent("TLS_SOCKS", 2);
        assert_eq!(c.agent_deleted[lru::SOCKS as usize].load(Ordering::Relaxed), 5);
        assert_eq!(c.agent_deleted[lru::TLS_SOCKS as usize].load(Ordering::Relaxed), 2);
        let total: u64 = c.agent_deleted.iter().map(|a| a.load(Ordering::Relaxed)).sum();
        assert_eq!(total, 7);
        assert_eq!(c.tally(), LruTally::default());
    }
}
