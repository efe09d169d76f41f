//! Loading, configuring and attaching the eBPF programs, and draining the ring buffer.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::time::Duration;

use super::attach::{AttachFail, Attachment, Target};
use super::census::{self, LruCounts};
use super::{btf, sys};
use aya::maps::{Array, HashMap, MapData, PerCpuArray, RingBuf};
use aya::{Ebpf, EbpfLoader};
use kspan_common::{
    ABI_VERSION, GoProc, IGNORED_MUTED, IGNORED_NO, KernelConfig, MAX_CAPTURE, MIN_CAPTURE, SockState, TRACED_YES,
    counter, sock_key,
};

/// The eBPF object built by `cargo xtask build` (empty if it was not built).
static BPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/kspan-probes.o"));

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("this kspan binary was built without its eBPF object; build with `cargo xtask build`")]
    NoObject,
    #[error("insufficient privileges: {0}")]
    Privileges(String),
    #[error("kernel BTF: {0}")]
    Btf(String),
    #[error("tracefs: {0}")]
    Tracefs(String),
    #[error("loading eBPF object: {0}")]
    Load(String),
    #[error("program {program}: {reason}")]
    Program { program: String, reason: String },
    #[error("map {map}: {reason}")]
    Map { map: &'static str, reason: String },
    #[error(
        "the eBPF object was built for kernel/user ABI {found:?}, this agent needs {ABI_VERSION}; rebuild both with `cargo xtask build`"
    )]
    Abi { found: Option<u32> },
    #[error("invalid capture setting: {0}")]
    Config(String),
    #[error("ring buffer poll: {0}")]
    Poll(std::io::Error),
}

/// Capture settings (validated by [`Capture::load`]).
#[derive(Clone, Debug)]
pub struct CaptureConfig {
    /// Payload bytes copied per syscall (MIN_CAPTURE..=MAX_CAPTURE).
    pub capture_bytes: u32,
    /// Ring buffer size in bytes (power of two, multiple of the page size).
    pub ring_bytes: u32,
    /// Entries of the kernel's socket map (`capture.max_sockets`).
    pub max_sockets: u32,
    /// Pending bytes before the kernel wakes the agent.
    pub wakeup_bytes: u32,
    /// Trace every process (no selector).
    pub trace_all: bool,
    /// An exe filter is active: exec'ing processes are traced provisionally.
    pub exe_filter: bool,
    /// Only sockets with one of these local/peer ports (empty: all; Unix
    /// domain sockets have no port, so a port filter leaves them out).
    pub ports: Vec<u16>,
    /// Read the goroutine behind each data call of a Go program, so nesting
    /// follows goroutines (`capture.go_goroutines`).
    pub go_goroutines: bool,
    /// Trace Unix domain stream sockets too.
    pub unix_sockets: bool,
    /// Programs return at once (diagnostic: the cost of the hooks alone).
    pub attach_only: bool,
    /// Use the data program that walks every iovec with `bpf_loop` when the
    /// kernel accepts it (else, or when false, the compat one: 8 iovecs).
    pub bpf_loop: bool,
}

/// (category, tracepoint, program) attachments.
const ATTACH: &[(&str, &str, &str)] = &[
    ("syscalls", "sys_enter_read", "kspan_enter_read"),
    ("syscalls", "sys_enter_recvfrom", "kspan_enter_recvfrom"),
    ("syscalls", "sys_enter_write", "kspan_enter_write"),
    ("syscalls", "sys_enter_sendto", "kspan_enter_sendto"),
    ("syscalls", "sys_enter_readv", "kspan_enter_readv"),
    ("syscalls", "sys_enter_writev", "kspan_enter_writev"),
    ("syscalls", "sys_enter_recvmsg", "kspan_enter_recvmsg"),
    ("syscalls", "sys_enter_sendmsg", "kspan_enter_sendmsg"),
    ("syscalls", "sys_enter_sendfile64", "kspan_enter_sendfile"),
    ("syscalls", "sys_enter_splice", "kspan_enter_splice"),
    ("syscalls", "sys_exit_read", "kspan_exit_data"),
    ("syscalls", "sys_exit_recvfrom", "kspan_exit_data"),
    ("syscalls", "sys_exit_write", "kspan_exit_data"),
    ("syscalls", "sys_exit_sendto", "kspan_exit_data"),
    ("syscalls", "sys_exit_readv", "kspan_exit_data"),
    ("syscalls", "sys_exit_writev", "kspan_exit_data"),
    ("syscalls", "sys_exit_recvmsg", "kspan_exit_data"),
    ("syscalls", "sys_exit_sendmsg", "kspan_exit_data"),
    ("syscalls", "sys_exit_sendfile64", "kspan_exit_data"),
    ("syscalls", "sys_exit_splice", "kspan_exit_data"),
    ("syscalls", "sys_exit_accept", "kspan_exit_accept"),
    ("syscalls", "sys_exit_accept4", "kspan_exit_accept"),
    ("syscalls", "sys_enter_connect", "kspan_enter_connect"),
    ("syscalls", "sys_exit_connect", "kspan_exit_connect"),
    ("syscalls", "sys_enter_close", "kspan_enter_close"),
    ("syscalls", "sys_exit_dup2", "kspan_exit_dup"),
    ("syscalls", "sys_exit_dup3", "kspan_exit_dup"),
    ("syscalls", "sys_enter_close_range", "kspan_enter_close_range"),
    ("sched", "sched_process_exec", "kspan_sched_exec"),
    ("sched", "sched_process_exit", "kspan_sched_exit"),
    ("task", "task_newtask", "kspan_task_newtask"),
];

/// Tracepoints of system calls some architectures lack (`dup2`: arm64 has
/// `dup3` only), skipped where tracefs has no such event.
const OPTIONAL: [&str; 1] = ["sys_exit_dup2"];

/// The data syscalls' exit program (all iovecs, with `bpf_loop`), and its
/// stand-in for kernels before 5.17 (the first 8 iovecs).
const DATA_EXIT: &str = "kspan_exit_data";
const DATA_EXIT_COMPAT: &str = "kspan_exit_data_compat";

/// The programs that use `bpf_loop`, each with its stand-in for kernels
/// before 5.17: the data exit (all iovecs / the first 8), the exec and
/// exit programs (which sweep the process's socket entries / do not), and
/// `close_range`'s (none).
const LOOP_PROGRAMS: [(&str, Option<&str>); 4] = [
    (DATA_EXIT, Some(DATA_EXIT_COMPAT)),
    ("kspan_sched_exec", Some("kspan_sched_exec_compat")),
    ("kspan_sched_exit", Some("kspan_sched_exit_compat")),
    ("kspan_enter_close_range", None),
];

/// `program`, or its stand-in when the kernel has no `bpf_loop` (`None`:
/// nothing to attach).
fn loop_variant(program: &'static str, bpf_loop: bool) -> Option<&'static str> {
    match LOOP_PROGRAMS.iter().find(|(p, _)| *p == program) {
        Some((_, compat)) if !bpf_loop => *compat,
        _ => Some(program),
    }
}

/// What kspan goes without when it cannot use `bpf_loop` (logged once).
const WITHOUT_BPF_LOOP: &str = "vectored calls are captured up to their first 8 iovecs, and exec, exit and \
     close_range do not sweep the socket map (a file that gets the fd number of a socket an exec or a close_range \
     closed is taken for that socket until it is closed)";

/// Whether the `bpf_loop` programs ([`LOOP_PROGRAMS`]) are used: unless
/// `bpf_loop` is off or the verifier refuses the data exit one (loaded here
/// to find out; logged once).
fn use_bpf_loop(ebpf: &mut Ebpf, bpf_loop: bool) -> bool {
    if !bpf_loop {
        tracing::warn!("capture.bpf_loop is off: {WITHOUT_BPF_LOOP}");
        return false;
    }
    let loaded = match ebpf.program_mut(DATA_EXIT).map(<&mut aya::programs::TracePoint>::try_from) {
        Some(Ok(tp)) => tp.load().map_err(|e| crate::telemetry::error_chain(&e)),
        Some(Err(e)) => Err(e.to_string()),
        None => Err("missing from the object".into()),
    };
    if let Err(reason) = &loaded {
        tracing::warn!(%reason, "the kernel refused the bpf_loop data program (Linux < 5.17?): {WITHOUT_BPF_LOOP}");
    }
    loaded.is_ok()
}

/// sys_enter programs of receive calls: only needed when arguments cannot be
/// read at exit.
const RECEIVE_ENTERS: &[&str] =
    &["kspan_enter_read", "kspan_enter_recvfrom", "kspan_enter_readv", "kspan_enter_recvmsg"];

/// The ABI version an eBPF object was built against (its `kspan_abi`
/// section), if it has one.
fn object_abi(obj: &[u8]) -> Option<u32> {
    use object::{Object, ObjectSection};
    let file = object::File::parse(obj).ok()?;
    let data = file.section_by_name("kspan_abi")?.data().ok()?;
    Some(u32::from_le_bytes(data.get(..4)?.try_into().ok()?))
}

/// Each CPU counts the bytes it writes and wakes the agent after its share
/// of `wakeup_bytes` (at least 4 KiB), so the pending total stays near the
/// setting however many CPUs write.
fn per_cpu_wakeup(wakeup_bytes: u32) -> u32 {
    // SAFETY: sysconf has no preconditions.
    let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u32;
    (wakeup_bytes / cpus).max(4096)
}

/// Names of the kernel counters, indexed like `kspan_common::counter`.
pub const COUNTER_NAMES: [&str; counter::COUNT as usize] = [
    "ringbuf_full_data",
    "ringbuf_full_control",
    "inflight_full",
    "read_user_failed",
    "socket_map_full",
    "traced_map_full",
    "tls_no_fd",
    "tls_calls_full",
    "socket_processes_full",
];

/// Loaded and attached eBPF programs plus the maps the agent drives.
pub struct Capture {
    /// Also holds the TLS uprobe programs, attached later (see `tls`).
    pub(super) ebpf: Ebpf,
    ring: RingBuf<MapData>,
    traced: HashMap<MapData, u32, u8>,
    counters: PerCpuArray<MapData, u64>,
    /// Bytes each CPU wrote since it last woke the agent (`WAKE`).
    wake: PerCpuArray<MapData, u64>,
    /// Possible CPUs (a per-CPU map's value count), read once at load.
    cpus: Option<usize>,
    /// Every link made, so that capture can be paused and resumed.
    pub(super) attachments: Vec<Attachment>,
    pub(super) paused: bool,
    /// The kernel can read Go programs' goroutines (see `go_proc`).
    goroutines: bool,
    /// (name, descriptor) of every map, for [`Capture::map_bytes`]; each
    /// descriptor is owned by a map in `ebpf`, a field above, or the census
    /// thread (`LRU_OPS`), which ends only after `lru` is dropped.
    map_fds: Vec<(&'static str, std::os::fd::RawFd)>,
    /// Evictions of the LRU maps, found by the census thread.
    pub(super) lru: Arc<LruCounts>,
}

impl Capture {
    /// Checks privileges and kernel features, loads, configures and attaches.
    pub fn load(cfg: &CaptureConfig) -> Result<Self, CaptureError> {
        if BPF_OBJECT.is_empty() {
            return Err(CaptureError::NoObject);
        }
        let found = object_abi(BPF_OBJECT);
        if found != Some(ABI_VERSION) {
            return Err(CaptureError::Abi { found });
        }
        let cap = cfg.capture_bytes as usize;
        if !(MIN_CAPTURE..=MAX_CAPTURE).contains(&cap) {
            return Err(CaptureError::Config(format!(
                "capture_bytes {cap} must be between {MIN_CAPTURE} and {MAX_CAPTURE}"
            )));
        }
        if !cfg.ring_bytes.is_power_of_two() || cfg.ring_bytes < 4096 {
            return Err(CaptureError::Config(format!(
                "ring_buffer_bytes {} must be a power of two >= 4096",
                cfg.ring_bytes
            )));
        }
        sys::check_privileges()?;
        sys::raise_memlock();
        sys::ensure_tracefs()?;
        let mut offsets = btf::resolve_offsets(btf::VMLINUX_BTF)?;
        if !cfg.unix_sockets {
            offsets.unix_sock_addr = u32::MAX;
        } else if offsets.unix_sock_addr == u32::MAX {
            tracing::warn!("this kernel's BTF lacks unix_sock/unix_address: Unix domain sockets are not traced");
        }
        let newtask_pid_off = sys::tracepoint_field_offset("task", "task_newtask", "pid")?;
        let newtask_flags_off = sys::tracepoint_field_offset("task", "task_newtask", "clone_flags")?;
        // Newer kernels have it (this VM's 6.18 does); on older ones the exit program reads the task.
        let exit_group_dead_off =
            sys::tracepoint_field_offset("sched", "sched_process_exit", "group_dead").unwrap_or(u32::MAX);

        let mut ebpf = EbpfLoader::new()
            .map_max_entries("EVENTS", cfg.ring_bytes)
            .map_max_entries("SOCKS", cfg.max_sockets)
            .map_max_entries("TLS_SOCKS", kspan_common::tls_objects(cfg.max_sockets))
            .load(BPF_OBJECT)
            .map_err(|e| CaptureError::Load(e.to_string()))?;

        let kcfg = KernelConfig {
            abi_version: ABI_VERSION,
            trace_all: cfg.trace_all as u32,
            self_tgid: std::process::id(),
            capture_bytes: cfg.capture_bytes,
            port_filter: !cfg.ports.is_empty() as u32,
            wakeup_bytes: per_cpu_wakeup(cfg.wakeup_bytes),
            exe_filter: cfg.exe_filter as u32,
            newtask_pid_off,
            newtask_flags_off,
            exit_group_dead_off,
            attach_only: cfg.attach_only as u32,
            offsets,
        };
        let map_err =
            |map: &'static str| move |e: aya::maps::MapError| CaptureError::Map { map, reason: e.to_string() };
        {
            let mut arr: Array<_, KernelConfig> = Array::try_from(
                ebpf.map_mut("CONFIG").ok_or(CaptureError::Map { map: "CONFIG", reason: "missing".into() })?,
            )
            .map_err(map_err("CONFIG"))?;
            arr.set(0, kcfg, 0).map_err(map_err("CONFIG"))?;
        }
        if !cfg.ports.is_empty() {
            let mut ports: HashMap<_, u16, u8> = HashMap::try_from(
                ebpf.map_mut("PORTS").ok_or(CaptureError::Map { map: "PORTS", reason: "missing".into() })?,
            )
            .map_err(map_err("PORTS"))?;
            for p in &cfg.ports {
                ports.insert(p, 1, 0).map_err(map_err("PORTS"))?;
            }
        }
        let map_fds = ebpf
            .maps()
            .filter_map(|(name, map)| {
                // Once per map and run: the names live as long as the agent.
                let name: &'static str = Box::leak(name.to_owned().into_boxed_str());
                map_data(map).map(|d| (name, d.fd().as_fd().as_raw_fd()))
            })
            .collect();
        let take = |ebpf: &mut Ebpf, map: &'static str| {
            ebpf.take_map(map).ok_or(CaptureError::Map { map, reason: "missing from object".into() })
        };
        let lru = Arc::new(LruCounts::default());
        let ops = PerCpuArray::try_from(take(&mut ebpf, "LRU_OPS")?).map_err(map_err("LRU_OPS"))?;
        let lrus = ebpf.maps().filter_map(|(name, map)| Some((name, map_data(map)?)));
        if let Err(e) = census::start(lrus, ops, &lru) {
            tracing::warn!("the kernel's LRU maps' evictions will not be counted: {e}");
        }
        let ring = RingBuf::try_from(take(&mut ebpf, "EVENTS")?).map_err(map_err("EVENTS"))?;
        let traced = HashMap::try_from(take(&mut ebpf, "TRACED")?).map_err(map_err("TRACED"))?;
        let counters = PerCpuArray::try_from(take(&mut ebpf, "COUNTERS")?).map_err(map_err("COUNTERS"))?;
        let wake = PerCpuArray::try_from(take(&mut ebpf, "WAKE")?).map_err(map_err("WAKE"))?;

        let goroutines = cfg.go_goroutines && offsets.goroutines();
        let mut capture = Self {
            ebpf,
            ring,
            traced,
            counters,
            wake,
            cpus: aya::util::nr_cpus().ok(),
            attachments: Vec::new(),
            paused: false,
            goroutines,
            map_fds,
            lru,
        };
        // With the syscall arguments readable from the saved registers at
        // exit, receive calls need no sys_enter program (see the eBPF side).
        let args_at_exit = offsets.args_at_exit();
        let bpf_loop = use_bpf_loop(&mut capture.ebpf, cfg.bpf_loop);
        for &(category, name, program) in ATTACH {
            let Some(program) = loop_variant(program, bpf_loop) else { continue };
            if OPTIONAL.contains(&name) && !sys::tracepoint_exists(category, name) {
                tracing::debug!(category, name, "no such tracepoint on this kernel");
                continue;
            }
            if args_at_exit && RECEIVE_ENTERS.contains(&program) {
                continue;
            }
            capture.attach_recorded(program, Target::Tracepoint { category, name }).map_err(|e| {
                let reason = match e {
                    AttachFail::Program(r) => r,
                    AttachFail::Target(r) => format!("attach to {category}/{name}: {r}"),
                };
                CaptureError::Program { program: program.to_owned(), reason }
            })?;
        }
        Ok(capture)
    }

    /// Marks a process (tgid) as selected in the kernel.
    pub fn select(&mut self, tgid: u32) -> Result<(), CaptureError> {
        self.traced.insert(tgid, TRACED_YES, 0).map_err(|e| CaptureError::Map { map: "TRACED", reason: e.to_string() })
    }

    /// Whether Go programs' goroutines are read (`capture.go_goroutines`
    /// and a kernel whose BTF gave the offsets).
    pub fn goroutines(&self) -> bool {
        self.goroutines
    }

    /// Has the kernel read the goroutine of Go program `tgid`'s data calls,
    /// `go.g_offset` bytes from its threads' `fsbase` (and its executable's
    /// layouts from `go`).
    pub fn set_go(&mut self, tgid: u32, go: GoProc) -> Result<(), CaptureError> {
        let map_err = |e: aya::maps::MapError| CaptureError::Map { map: "GO_PROCS", reason: e.to_string() };
        let mut procs: HashMap<_, u32, GoProc> = HashMap::try_from(
            self.ebpf.map_mut("GO_PROCS").ok_or(CaptureError::Map { map: "GO_PROCS", reason: "missing".into() })?,
        )
        .map_err(map_err)?;
        procs.insert(tgid, go, 0).map_err(map_err)
    }

    /// Forgets a Go program (it exited or exec'd something else).
    pub fn unset_go(&mut self, tgid: u32) {
        if let Some(m) = self.ebpf.map_mut("GO_PROCS")
            && let Ok(mut go) = HashMap::<_, u32, GoProc>::try_from(m)
        {
            let _ = go.remove(&tgid);
        }
    }

    /// Stops data events of socket `sock_id` at (tgid, fd) (its close is
    /// still reported). Returns false when the kernel's entry is gone or
    /// now holds another socket (the fd was closed or reused meanwhile).
    ///
    /// The entry is read and written back: a socket closed and its fd
    /// reused by a new one between the two system calls (microseconds)
    /// would be muted in its place.
    pub fn mute(&mut self, tgid: u32, fd: u32, sock_id: u64) -> Result<bool, CaptureError> {
        let map_err = |e: aya::maps::MapError| CaptureError::Map { map: "SOCKS", reason: e.to_string() };
        let mut socks: HashMap<_, u64, SockState> = HashMap::try_from(
            self.ebpf.map_mut("SOCKS").ok_or(CaptureError::Map { map: "SOCKS", reason: "missing".into() })?,
        )
        .map_err(map_err)?;
        let key = sock_key(tgid, fd);
        let st = match socks.get(&key, 0) {
            Ok(st) => st,
            Err(aya::maps::MapError::KeyNotFound) => return Ok(false),
            Err(e) => return Err(map_err(e)),
        };
        if st.sock_id != sock_id || st.ignored != IGNORED_NO {
            return Ok(false);
        }
        const BPF_EXIST: u64 = 2;
        match socks.insert(key, SockState { ignored: IGNORED_MUTED, ..st }, BPF_EXIST) {
            Ok(()) => Ok(true),
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(map_err(e)),
        }
    }

    /// Removes a process from the kernel selection (missing is fine).
    pub fn unselect(&mut self, tgid: u32) {
        let _ = self.traced.remove(&tgid);
    }

    /// Has the next record any CPU writes wake the agent at once: each CPU's
    /// byte count (`WAKE`) is set past its threshold, so its next record
    /// forces the wake-up and starts the count again (the eBPF side's
    /// `wake_flags`; nothing is added to its path). For a thread about to
    /// wait long on an idle ring. A CPU writing its count at that moment
    /// may keep its own: the wait's timeout then ends it.
    pub fn wake_on_next_record(&mut self) {
        let Some(cpus) = self.cpus else { return };
        if let Ok(values) = aya::maps::PerCpuValues::try_from(vec![u64::from(u32::MAX); cpus])
            && let Err(e) = self.wake.set(0, values, 0)
        {
            tracing::debug!("cannot arm the ring buffer's wake-up: {e}");
        }
    }

    /// Kernel-side loss counters, summed over CPUs.
    pub fn kernel_counters(&self) -> [u64; counter::COUNT as usize] {
        let mut out = [0u64; counter::COUNT as usize];
        for (i, slot) in out.iter_mut().enumerate() {
            if let Ok(vals) = self.counters.get(&(i as u32), 0) {
                *slot = vals.iter().sum();
            }
        }
        out
    }

    /// What the census knows of the kernel's LRU maps (see [`census`]).
    pub fn lru_tally(&self) -> census::LruTally {
        self.lru.tally()
    }

    /// Kernel memory of each map now, by map name, in bytes: what the kernel
    /// charges for it (`memlock` in its fdinfo; for a hash map allocated as
    /// entries come, its buckets and the entries it holds).
    pub fn map_bytes(&self) -> impl Iterator<Item = (&'static str, usize)> + '_ {
        self.map_fds.iter().filter_map(|&(name, fd)| {
            let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")).ok()?;
            Some((name, memlock(&info)?))
        })
    }

    /// Waits up to `timeout` for a wake-up of the ring or of `nudge`, then
    /// hands pending records to `f` until the ring is empty or `f` returns
    /// false (the rest stays in the ring for the next call, which then does
    /// not wait). Returns the number of records and whether `nudge` was
    /// ready (the caller clears it).
    pub fn poll(
        &mut self,
        timeout: Duration,
        nudge: std::os::fd::BorrowedFd<'_>,
        mut f: impl FnMut(&[u8]) -> bool,
    ) -> Result<(usize, bool), CaptureError> {
        use std::os::fd::AsRawFd as _;
        let mut pfds = [
            libc::pollfd { fd: self.ring.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: nudge.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        // SAFETY: two valid pollfds for the duration of the call.
        let r = unsafe { libc::poll(pfds.as_mut_ptr(), 2, timeout.as_millis().min(i32::MAX as u128) as i32) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(CaptureError::Poll(e));
            }
        }
        let nudged = r > 0 && pfds[1].revents & libc::POLLIN != 0;
        let mut n = 0;
        while let Some(item) = self.ring.next() {
            n += 1;
            if !f(&item) {
                break;
            }
        }
        Ok((n, nudged))
    }
}

/// The loaded map behind `map`, for the kinds kspan's object has.
fn map_data(map: &aya::maps::Map) -> Option<&MapData> {
    use aya::maps::Map;
    match map {
        Map::Array(d) | Map::HashMap(d) | Map::LruHashMap(d) | Map::PerCpuArray(d) | Map::RingBuf(d) => Some(d),
        _ => None,
    }
}

/// The `memlock:` bytes of a map's `/proc/PID/fdinfo/FD` text.
fn memlock(fdinfo: &str) -> Option<usize> {
    fdinfo.lines().find_map(|l| l.strip_prefix("memlock:")).and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memlock_is_read_from_a_maps_fdinfo() {
        let info = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t2061\nmap_type:\t9\nkey_size:\t8\n\
                    value_size:\t16\nmax_entries:\t131072\nmap_flags:\t0x0\nmap_extra:\t0x0\n\
                    memlock:\t11552960\nmap_id:\t41\nfrozen:\t0\n";
        assert_eq!(memlock(info), Some(11_552_960));
        assert_eq!(memlock("pos:\t0\n"), None);
        assert_eq!(memlock("memlock:\tlots\n"), None);
    }

    #[test]
    fn abi_of_what_is_not_a_versioned_object_is_unknown() {
        assert_eq!(object_abi(b""), None);
        assert_eq!(object_abi(b"\x7fELF garbage"), None);
        // `cargo xtask build`/`test` embed the object; a plain `cargo test` has none.
        if !BPF_OBJECT.is_empty() {
            assert_eq!(object_abi(BPF_OBJECT), Some(ABI_VERSION), "the embedded object is this tree's");
        }
    }

    #[test]
    fn each_cpu_wakes_the_agent_after_its_share() {
        // SAFETY: sysconf has no preconditions.
        let cpus = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as u32;
        assert_eq!(per_cpu_wakeup(256 << 10), ((256 << 10) / cpus).max(4096));
        assert_eq!(per_cpu_wakeup(0), 4096, "never a wake-up per record");
    }
}
