//! Finding TLS libraries ([`TlsLib`]: OpenSSL, GnuTLS) in selected
//! processes and attaching the TLS uprobes to them: OpenSSL at its internal
//! read/write functions when [`super::tls_entry`] finds them (one cheap
//! trap per call), else at `SSL_read`, `SSL_write` and their `_ex`
//! variants; GnuTLS at `gnutls_record_send2` and `gnutls_record_recv`; Go
//! executables at `crypto/tls.(*Conn).Read`/`Write` ([`super::go_tls`]).
//!
//! Guarantees:
//! - A library is attached once per file (device, inode), for every process
//!   that maps it (uprobes are per file, not per process); the kernel side only
//!   reports selected processes.
//! - Sources: `libssl*.so*` and `libgnutls.so*` mappings in `/proc/PID/maps`
//!   of selected processes, the executable itself when it defines a
//!   library's functions (static OpenSSL) or is a Go program using
//!   `crypto/tls`, and the system's libraries found in the usual library
//!   directories at start-up.
//! - A selected process is rescanned when its dynamic loader reports a
//!   library load (uprobe on `_dl_debug_state` of every `ld-linux`/`ld-musl`
//!   found), shortly after exec, and round-robin on a timer, so a library
//!   loaded later (dlopen, Python `import ssl`) is covered within
//!   milliseconds (or the next timed scan). Work per tick is bounded
//!   ([`MAX_PIDS_PER_SCAN`]).
//! - Scoped mode ([`TlsAttacher::scoped`], only `--pid` selects): no file
//!   is probed ahead of a selected process mapping it, and the loader hook
//!   is attached per selected process (at most [`MAX_HOOKED`], dropped at
//!   its exit), so processes kspan does not trace carry no kspan uprobe
//!   unless they map a TLS library file a selected process maps.
//! - A failure (missing symbol, stripped or unreadable file, kernel refusal)
//!   is logged once per file with its reason, counted, and never fatal.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::Capture;
use super::attach::{AttachFail, Target};
use super::go_tls::{self, GoTlsProbes};
pub use super::tls_lib::{TlsLib, defined_library};

/// Return program shared by all probed functions.
const RET_PROGRAM: &str = "kspan_ssl_ret";
/// Entry-only probe that binds a session to its socket.
const SET_FD_PROGRAM: &str = "kspan_ssl_set_fd";
/// Entry of a handshake step (its return gets [`RET_PROGRAM`]).
const HANDSHAKE_PROGRAM: &str = "kspan_ssl_handshake";
/// GnuTLS's internal receive function (see `tls_entry::find_gnutls_recv`).
const GNUTLS_RECV_PROGRAM: &str = "kspan_gnutls_recv_int";
const GNUTLS_RECV_RET_PROGRAM: &str = "kspan_gnutls_recv_ret";
const GNUTLS_RECV: &str = "_gnutls_recv_int";
/// The dynamic loader's debugger hook, called around every dlopen/dlclose.
const LOADER_SYMBOL: &str = "_dl_debug_state";
const LOADER_PROGRAM: &str = "kspan_dl_state";
/// Program on every return instruction of Go's `crypto/tls.(*Conn).Read`.
const GO_RET_PROGRAM: &str = "kspan_go_tls_ret";

/// Files (attached or failed) remembered; beyond this new files are skipped and counted.
pub const MAX_FILES: usize = 4_096;
/// Processes read per periodic scan.
pub const MAX_PIDS_PER_SCAN: usize = 128;
/// Exec'd processes waiting for their post-exec scan.
pub const MAX_PENDING_EXECS: usize = 1_024;
/// Delay between exec and the scan (the dynamic loader maps libraries first).
pub const EXEC_SCAN_DELAY: Duration = Duration::from_millis(150);
/// Processes given a loader hook of their own (scoped mode, see
/// [`TlsAttacher::scoped`]); each costs a few uprobe links.
pub const MAX_HOOKED: usize = 16;
/// Period of the round-robin rescan of selected processes.
pub const SCAN_PERIOD: Duration = Duration::from_secs(2);

/// Directories searched for the system libssl at start-up.
const SYSTEM_LIB_DIRS: [&str; 6] =
    ["/usr/lib/x86_64-linux-gnu", "/lib/x86_64-linux-gnu", "/usr/lib64", "/lib64", "/usr/lib", "/lib"];

/// Why a file could not be attached.
#[derive(Debug, thiserror::Error)]
pub enum TlsAttachError {
    #[error("cannot read {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: not an object file: {reason}")]
    Parse { path: String, reason: String },
    #[error("{path}: no OpenSSL or GnuTLS read/write functions (stripped, or another library)")]
    NoSymbols { path: String },
    #[error("program {program}: {reason}")]
    Program { program: &'static str, reason: String },
    #[error("{path}: attaching {symbol}: {reason}")]
    Attach { path: String, symbol: &'static str, reason: String },
    #[error("{path}: Go TLS not probed: {source}")]
    Go { path: String, source: super::go_tls::GoTlsError },
}

impl TlsAttachError {
    /// Short metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Io { .. } => "io",
            Self::Parse { .. } => "not_object",
            Self::NoSymbols { .. } => "no_symbols",
            Self::Program { .. } => "program",
            Self::Attach { .. } => "attach",
            Self::Go { .. } => "go_unsupported",
        }
    }
}

/// Counters of TLS library discovery (all only grow).
#[derive(Clone, Copy, Debug, Default)]
pub struct TlsStats {
    /// Files with the TLS uprobes attached.
    pub attached: u64,
    /// Files that failed, by [`TlsAttachError::reason`] order:
    /// io, not_object, no_symbols, program, attach, go_unsupported.
    pub failed: [u64; 6],
    /// New files skipped: [`MAX_FILES`] reached.
    pub files_full: u64,
    /// Exec'd processes not scanned early: pending queue full.
    pub pending_full: u64,
    /// Selected processes left without a loader hook of their own
    /// ([`MAX_HOOKED`] reached; scoped mode): late libraries wait for a scan.
    pub hooks_full: u64,
}

/// Metric labels of [`TlsStats::failed`], same order.
pub const FAILURE_REASONS: [&str; 6] = ["io", "not_object", "no_symbols", "program", "attach", "go_unsupported"];

fn failure_index(e: &TlsAttachError) -> usize {
    FAILURE_REASONS.iter().position(|r| *r == e.reason()).unwrap_or(0)
}

/// Whether a mapped file's name is that of a TLS library kspan probes.
pub fn is_tls_library(path: &str) -> bool {
    TlsLib::from_file_name(path).is_some()
}

/// Whether a mapped file's name is a dynamic loader (glibc or musl).
pub fn is_loader(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or(path);
    (name.starts_with("ld-linux") || name.starts_with("ld-musl")) && name.contains(".so")
}

/// The distinct mapped file paths whose name passes `keep`.
pub fn mapped_paths(maps: &str, keep: impl Fn(&str) -> bool) -> Vec<&str> {
    let mut out: Vec<&str> = Vec::new();
    for line in maps.lines() {
        // address perms offset dev inode [path]; the path may contain spaces.
        let mut cols = line.splitn(6, ' ');
        let path = cols.nth(5).map(str::trim_start).unwrap_or("");
        if !path.starts_with('/') || path.ends_with(" (deleted)") || !keep(path) {
            continue;
        }
        if !out.contains(&path) {
            out.push(path);
        }
    }
    out
}

/// TLS library files in the usual system library directories.
pub fn system_libraries() -> Vec<PathBuf> {
    let mut out = Vec::new();
    for dir in SYSTEM_LIB_DIRS {
        let Ok(entries) = std::fs::read_dir(dir) else { continue };
        for e in entries.flatten().take(10_000) {
            let p = e.path();
            // Symlinks (libssl.so -> libssl.so.3) resolve to one real file.
            if p.to_str().is_some_and(is_tls_library)
                && let Ok(real) = std::fs::canonicalize(&p)
                && real.is_file()
                && !out.contains(&real)
            {
                out.push(real);
            }
        }
    }
    out
}

impl Capture {
    /// Attaches the library-load hook to a dynamic loader file.
    /// The hook is a lone `ret` (single-stepped in the trap): its callers'
    /// `call` instructions are probed instead where they can be found.
    /// `pid`: in that process only (else in every process that runs it).
    pub fn attach_loader(&mut self, path: &Path, pid: Option<u32>) -> Result<(), TlsAttachError> {
        match super::tls_entry::call_sites(path, LOADER_SYMBOL) {
            Some(sites) => {
                for site in sites {
                    self.attach_uprobe(LOADER_PROGRAM, LOADER_SYMBOL, Some(site), path, pid)?;
                }
                Ok(())
            }
            None => self.attach_uprobe(LOADER_PROGRAM, LOADER_SYMBOL, None, path, pid),
        }
    }

    /// Attaches the TLS uprobes of `lib` to every process's use of the file
    /// at `path`. Returns how many functions were probed.
    pub fn attach_tls(&mut self, path: &Path, lib: TlsLib) -> Result<usize, TlsAttachError> {
        let shown = || path.display().to_string();
        let mut probed = 0;
        let internal = if lib == TlsLib::OpenSsl { super::tls_entry::find(path) } else { None };
        match internal {
            // One probe pair per direction covers the plain and `_ex` API.
            Some(entries) => {
                for (name, offset, program) in [
                    ("ssl_read_internal", entries.read, "kspan_ssl_read_ex"),
                    ("ssl_write_internal", entries.write, "kspan_ssl_write_ex"),
                ] {
                    self.attach_uprobe(program, name, Some(offset), path, None)?;
                    self.attach_uprobe(RET_PROGRAM, name, Some(offset), path, None)?;
                    probed += 1;
                }
                tracing::debug!("{}: probed at OpenSSL's internal read/write entries", shown());
            }
            None => {
                // GnuTLS's receive entry behind both public receive functions.
                let gnutls_recv = if lib == TlsLib::GnuTls { super::tls_entry::find_gnutls_recv(path) } else { None };
                if let Some(offset) = gnutls_recv {
                    self.attach_uprobe(GNUTLS_RECV_RET_PROGRAM, GNUTLS_RECV, Some(offset), path, None)?;
                    self.attach_uprobe(GNUTLS_RECV_PROGRAM, GNUTLS_RECV, Some(offset), path, None)?;
                    probed += 1;
                    tracing::debug!("{}: probed at GnuTLS's internal receive entry", shown());
                }
                for p in lib.probes() {
                    if gnutls_recv.is_some() && super::tls_entry::GNUTLS_RECV_WRAPPERS.contains(&p.symbol) {
                        continue;
                    }
                    let attached = self
                        .attach_uprobe(p.program, p.symbol, None, path, None)
                        .and_then(|()| self.attach_uprobe(RET_PROGRAM, p.symbol, None, path, None));
                    match attached {
                        Ok(()) => probed += 1,
                        Err(e) if p.required => return Err(e),
                        Err(e) => tracing::debug!("{}: optional {} not probed: {e}", shown(), p.symbol),
                    }
                }
            }
        }
        // Optional: tells a reused session's new socket at once (users of
        // custom transports, e.g. libpq's BIO, never call it).
        let set_fd = lib.set_fd_symbol();
        match self.attach_uprobe(SET_FD_PROGRAM, set_fd, None, path, None) {
            Ok(()) => probed += 1,
            Err(e) => tracing::debug!("{}: optional {set_fd} not probed: {e}", shown()),
        }
        // Optional: binds a session on memory BIOs (Node.js, asyncio) by
        // its handshake's first write, before any data.
        let handshake = lib.handshake_symbol();
        // The return first: an entry without it would leave its thread
        // taken for inside a call (its syscalls claimed) until the next one.
        let attached = self
            .attach_uprobe(RET_PROGRAM, handshake, None, path, None)
            .and_then(|()| self.attach_uprobe(HANDSHAKE_PROGRAM, handshake, None, path, None));
        match attached {
            Ok(()) => probed += 1,
            Err(e) => tracing::debug!("{}: optional {handshake} not probed: {e}", shown()),
        }
        Ok(probed)
    }

    /// Attaches the Go TLS probes to the Go executable at `path`: the
    /// return instructions of `Read`, then both functions' entries. Returns
    /// how many probes were attached.
    pub fn attach_go(&mut self, path: &Path, probes: &GoTlsProbes) -> Result<usize, TlsAttachError> {
        for ret in &probes.read_rets {
            self.attach_uprobe(GO_RET_PROGRAM, go_tls::READ, Some(*ret), path, None)?;
        }
        self.attach_uprobe("kspan_go_tls_read", go_tls::READ, Some(probes.read), path, None)?;
        self.attach_uprobe("kspan_go_tls_write", go_tls::WRITE, Some(probes.write), path, None)?;
        Ok(probes.read_rets.len() + 2)
    }

    /// A nesting probe of a Go executable (see `go_proc`), at the file
    /// offsets [`go_tls::find_function`] gave: its `RET`s first (if it has
    /// a program for them), so the entry never runs without them.
    pub fn attach_go_nesting(
        &mut self,
        path: &Path,
        probe: &go_tls::NestingProbe,
        (at, rets): (u64, Vec<u64>),
    ) -> Result<(), TlsAttachError> {
        if let Some(program) = probe.rets {
            for ret in rets {
                self.attach_uprobe(program, probe.symbol, Some(ret), path, None)?;
            }
        }
        match probe.program {
            Some(program) => self.attach_uprobe(program, probe.symbol, Some(at), path, None),
            None => Ok(()),
        }
    }

    /// Attaches `program` at `symbol`, or at file offset `offset` (then
    /// `symbol` only names the place in errors).
    fn attach_uprobe(
        &mut self,
        program: &'static str,
        symbol: &'static str,
        offset: Option<u64>,
        path: &Path,
        pid: Option<u32>,
    ) -> Result<(), TlsAttachError> {
        let target = Target::Uprobe { symbol, offset, path: path.to_path_buf(), pid };
        self.attach_recorded(program, target).map_err(|e| match e {
            AttachFail::Program(reason) => TlsAttachError::Program { program, reason },
            AttachFail::Target(reason) => TlsAttachError::Attach { path: path.display().to_string(), symbol, reason },
        })?;
        Ok(())
    }
}

/// Discovers TLS libraries and attaches them; driven by the capture thread.
pub struct TlsAttacher {
    /// (device, inode) -> attached (true) or failed (false).
    files: HashMap<(u64, u64), bool>,
    pending: VecDeque<(u32, Instant)>,
    last_scan: Instant,
    cursor: usize,
    /// Executables already checked for static OpenSSL (by file).
    exes: HashSet<(u64, u64)>,
    /// Attach the library-load hook to dynamic loaders.
    loader_hook: bool,
    /// Only explicitly selected processes are traced (see [`Self::scoped`]).
    scoped: bool,
    /// Scoped mode: processes with a loader hook of their own.
    hooked: HashSet<u32>,
    /// Scoped mode: processes over [`MAX_HOOKED`] (counted once each).
    unhooked: HashSet<u32>,
    pub stats: TlsStats,
}

impl Default for TlsAttacher {
    fn default() -> Self {
        Self::new()
    }
}

impl TlsAttacher {
    pub fn new() -> Self {
        Self {
            files: HashMap::new(),
            pending: VecDeque::new(),
            last_scan: Instant::now(),
            cursor: 0,
            exes: HashSet::new(),
            loader_hook: true,
            scoped: false,
            hooked: HashSet::new(),
            unhooked: HashSet::new(),
            stats: TlsStats::default(),
        }
    }

    /// Entries of the tables now, by name (`kspan_table_entries`).
    pub fn table_sizes(&self) -> [(&'static str, usize); 3] {
        [("tls_files", self.files.len()), ("tls_executables", self.exes.len()), ("tls_pending", self.pending.len())]
    }

    /// Without the loader hook (`capture.tls_loader_hook: false`), a libssl
    /// loaded late is found by the post-exec and timed scans only, and no
    /// uprobe sits in the dynamic loader that every process runs.
    pub fn with_loader_hook(mut self, on: bool) -> Self {
        self.loader_hook = on;
        self
    }

    /// For a selection of explicit processes (`--pid` and their
    /// descendants, no executable filter, not the whole host): nothing is
    /// probed for processes kspan does not trace where that can be helped.
    /// The system's TLS libraries are not probed ahead (only the files the
    /// selected processes map, found by their scans), and the loader hook
    /// sits in the first [`MAX_HOOKED`] selected processes only, each its
    /// own, rather than in the loader file every process on the host runs
    /// (94 us added to each process start here). A TLS library a selected
    /// process maps is still probed in every process mapping it: the kernel
    /// skips the others in the programs, not in the trap.
    pub fn scoped(mut self, on: bool) -> Self {
        self.scoped = on;
        self
    }

    /// Attaches the system libssl (so processes started later are covered
    /// from their first request) and, with the loader hook, the agent's own
    /// dynamic loader (library load reports), unless scoped; and scans the
    /// already selected processes.
    pub fn start(&mut self, capture: &mut Capture, selected: &[u32]) {
        if !self.scoped {
            for p in system_libraries() {
                self.consider(capture, &p, Kind::Library);
            }
            if self.loader_hook
                && let Ok(maps) = std::fs::read_to_string("/proc/self/maps")
            {
                for p in mapped_paths(&maps, is_loader) {
                    self.consider(capture, Path::new(p), Kind::Loader);
                }
            }
        }
        for pid in selected.iter().take(MAX_PIDS_PER_SCAN * 8) {
            self.scan_pid(capture, *pid);
        }
        self.last_scan = Instant::now();
    }

    /// A selected process loaded a library: scan it now.
    pub fn on_lib_load(&mut self, capture: &mut Capture, pid: u32) {
        self.scan_pid(capture, pid);
    }

    /// A selected process exec'd: scan it once its libraries are mapped.
    pub fn on_exec(&mut self, pid: u32, now: Instant) {
        if self.pending.len() >= MAX_PENDING_EXECS {
            self.stats.pending_full += 1;
            return;
        }
        self.pending.push_back((pid, now + EXEC_SCAN_DELAY));
    }

    /// When the next exec scan falls due, if one is pending (the capture
    /// thread wakes by then).
    pub fn next_due(&self) -> Option<Instant> {
        self.pending.front().map(|&(_, due)| due)
    }

    /// Runs due exec scans, and a bounded round-robin rescan every
    /// [`SCAN_PERIOD`]; `selected` lists the selected processes.
    pub fn tick(&mut self, capture: &mut Capture, now: Instant, selected: impl FnOnce() -> Vec<u32>) {
        while let Some(&(pid, due)) = self.pending.front() {
            if due > now {
                break;
            }
            self.pending.pop_front();
            self.scan_pid(capture, pid);
        }
        if now.duration_since(self.last_scan) < SCAN_PERIOD {
            return;
        }
        self.last_scan = now;
        let pids = selected();
        if pids.is_empty() {
            return;
        }
        let start = self.cursor % pids.len();
        for pid in pids.iter().cycle().skip(start).take(MAX_PIDS_PER_SCAN.min(pids.len())) {
            self.scan_pid(capture, *pid);
        }
        self.cursor = start + MAX_PIDS_PER_SCAN.min(pids.len());
    }

    /// A selected process exited: its own loader hook goes.
    pub fn on_exit(&mut self, capture: &mut Capture, pid: u32) {
        self.unhooked.remove(&pid);
        if self.hooked.remove(&pid) {
            capture.drop_links_of(pid);
        }
    }

    /// Looks at one process's mapped libssl files and its executable.
    fn scan_pid(&mut self, capture: &mut Capture, pid: u32) {
        let root = PathBuf::from(format!("/proc/{pid}/root"));
        if let Ok(maps) = std::fs::read_to_string(format!("/proc/{pid}/maps")) {
            let hook = self.loader_hook;
            for (lib, kind) in mapped_paths(&maps, |p| is_tls_library(p) || (hook && is_loader(p)))
                .into_iter()
                .map(|p| (p, if is_loader(p) { Kind::Loader } else { Kind::Library }))
            {
                // Through the process's root: right in containers too.
                let path = root.join(lib.trim_start_matches('/'));
                if kind == Kind::Loader && self.scoped {
                    self.hook_process(capture, &path, pid);
                } else {
                    self.consider(capture, &path, kind);
                }
            }
        }
        let exe = PathBuf::from(format!("/proc/{pid}/exe"));
        let Some(id) = file_id(&exe) else { return };
        if self.exes.contains(&id) || self.files.contains_key(&id) {
            return;
        }
        if self.exes.len() >= MAX_FILES {
            self.exes.clear();
        }
        self.exes.insert(id);
        if let Ok(Some(lib)) = defined_library(&exe) {
            self.consider(capture, &exe, Kind::Executable(lib));
        } else if let Some(found) = go_tls::find_in(&exe) {
            self.consider(capture, &exe, Kind::Go(found));
        }
    }

    /// Scoped mode: the loader hook for process `pid` alone, once, within
    /// [`MAX_HOOKED`] processes.
    fn hook_process(&mut self, capture: &mut Capture, loader: &Path, pid: u32) {
        if self.hooked.contains(&pid) || self.unhooked.contains(&pid) {
            return;
        }
        if self.hooked.len() >= MAX_HOOKED {
            if self.unhooked.len() < MAX_FILES {
                self.unhooked.insert(pid);
                self.stats.hooks_full += 1;
            }
            return;
        }
        self.hooked.insert(pid);
        match capture.attach_loader(loader, Some(pid)) {
            Ok(()) => tracing::debug!(loader = %loader.display(), pid, "library-load hook attached for the process"),
            // Late libraries are still found by the timed scans.
            Err(e) => tracing::debug!(loader = %loader.display(), pid, "no library-load hook: {e}"),
        }
    }

    /// Attaches one file unless already done (or failed) for its inode.
    fn consider(&mut self, capture: &mut Capture, path: &Path, kind: Kind) {
        let Some(id) = file_id(path) else { return };
        if self.files.contains_key(&id) {
            return;
        }
        if self.files.len() >= MAX_FILES {
            self.stats.files_full += 1;
            return;
        }
        let loader = kind == Kind::Loader;
        let result = match kind {
            Kind::Loader => capture.attach_loader(path, None).map(|()| (1, None)),
            Kind::Executable(lib) => capture.attach_tls(path, lib).map(|n| (n, Some(lib))),
            Kind::Go(Ok(probes)) => capture.attach_go(path, &probes).map(|n| (n, None)),
            Kind::Go(Err(source)) => Err(TlsAttachError::Go { path: path.display().to_string(), source }),
            Kind::Library => defined_library(path)
                .and_then(|lib| lib.ok_or_else(|| TlsAttachError::NoSymbols { path: path.display().to_string() }))
                .and_then(|lib| capture.attach_tls(path, lib).map(|n| (n, Some(lib)))),
        };
        match result {
            Ok(_) if loader => {
                self.files.insert(id, true);
                tracing::debug!(loader = %path.display(), "library-load hook attached");
            }
            Ok((n, lib)) => {
                self.stats.attached += 1;
                self.files.insert(id, true);
                let tls = lib.map_or("Go crypto/tls", TlsLib::name);
                tracing::info!(library = %path.display(), tls, functions = n, "TLS uprobes attached");
            }
            Err(e) if loader => {
                // Late libraries are still found by the timed scans.
                self.files.insert(id, false);
                tracing::debug!(loader = %path.display(), "no library-load hook: {e}");
            }
            Err(e) => {
                if let Some(slot) = self.stats.failed.get_mut(failure_index(&e)) {
                    *slot += 1;
                }
                self.files.insert(id, false);
                tracing::warn!(library = %path.display(), reason = e.reason(), "TLS capture unavailable: {e}");
            }
        }
    }
}

/// What a file is to the attacher.
#[derive(Debug, PartialEq, Eq)]
enum Kind {
    /// A mapped TLS library: its symbols tell which one, then it is probed.
    Library,
    /// An executable already known to define a library's functions (static OpenSSL).
    Executable(TlsLib),
    /// A dynamic loader: gets the library-load hook.
    Loader,
    /// A Go executable using `crypto/tls`: where its probes go, as read
    /// when it was found to be one (read once).
    Go(Result<GoTlsProbes, super::go_tls::GoTlsError>),
}

/// (device, inode) of a file, following symlinks.
pub(crate) fn file_id(path: &Path) -> Option<(u64, u64)> {
    let m = std::fs::metadata(path).ok()?;
    m.is_file().then(|| (m.dev(), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_yield_each_mapped_tls_library_once() {
        let maps = "\
55d0c0a00000-55d0c0a20000 r--p 00000000 fd:01 1234 /usr/bin/python3.11
7f0000000000-7f0000020000 r--p 00000000 fd:01 777 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f0000020000-7f00000a0000 r-xp 00020000 fd:01 777 /usr/lib/x86_64-linux-gnu/libssl.so.3
7f00000a0000-7f00000b0000 rw-p 00000000 00:00 0
7f00000b0000-7f00000c0000 r-xp 00000000 fd:01 778 /usr/lib/x86_64-linux-gnu/libcrypto.so.3
7f00000c0000-7f00000d0000 r-xp 00000000 fd:01 779 /tmp/my libs/libssl.so.1.1
7f00000d0000-7f00000e0000 r-xp 00000000 fd:01 780 /tmp/old/libssl.so.3 (deleted)
7f00000e0000-7f00000f0000 r-xp 00000000 fd:01 781 /usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3
7f00000f0000-7f0000100000 r-xp 00000000 fd:01 782 /usr/lib/x86_64-linux-gnu/libgnutls-openssl.so.27
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
garbage line
";
        assert_eq!(
            mapped_paths(maps, is_tls_library),
            [
                "/usr/lib/x86_64-linux-gnu/libssl.so.3",
                "/tmp/my libs/libssl.so.1.1",
                "/usr/lib/x86_64-linux-gnu/libgnutls.so.30.34.3"
            ]
        );
        assert!(mapped_paths("", is_tls_library).is_empty());
        let loader = "7f1-7f2 r-xp 00001000 fe:00 325843 /usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2\n";
        assert_eq!(mapped_paths(loader, is_loader), ["/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2"]);
        assert!(is_loader("/lib/ld-musl-x86_64.so.1"));
        assert!(!is_loader("/usr/lib/libldap.so.2") && !is_loader("/usr/lib/x86_64-linux-gnu/libssl.so.3"));
    }

    #[test]
    fn this_processes_own_maps_parse() {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("own maps");
        // The test binary links no TLS library: nothing (and no panic).
        assert!(mapped_paths(&maps, is_tls_library).iter().all(|p| is_tls_library(p)));
    }

    #[test]
    fn system_libraries_resolve_symlinks_to_one_file_each() {
        let libs = system_libraries();
        assert!(libs.iter().any(|p| TlsLib::from_file_name(&p.to_string_lossy()) == Some(TlsLib::OpenSsl)), "{libs:?}");
        assert!(libs.iter().any(|p| TlsLib::from_file_name(&p.to_string_lossy()) == Some(TlsLib::GnuTls)), "{libs:?}");
        let mut dedup = libs.clone();
        dedup.dedup();
        assert_eq!(dedup.len(), libs.len());
        assert!(libs.iter().all(|p| p.is_file() && !p.is_symlink()), "{libs:?}");
    }
}
