//! Kernel/user ABI of kspan: every struct the eBPF programs write into maps or
//! the ring buffer, and every struct the agent writes into maps for the
//! programs to read, is defined here once.
//!
//! Guarantees:
//! - All types are `#[repr(C)]`, padding-free (explicit `_pad` fields) and
//!   contain only integers and byte arrays, because the two sides are built by
//!   different compilers for different targets.
//! - [`ABI_VERSION`] changes whenever a layout changes; the agent refuses an
//!   object whose version differs (the object's `kspan_abi` section).
//! - The encoders in [`encode`] are the byte layout the kernel writes; the
//!   agent's decoder and its tests and fuzz target use them, so decoding is
//!   tested without a kernel.
#![no_std]

pub mod encode;

/// Bumped on every layout change of anything in this crate.
pub const ABI_VERSION: u32 = 18;

/// Size of the per-CPU scratch payload buffer in the kernel; the largest
/// capture a single data event can carry. Must be a power of two (the kernel
/// masks lengths with `MAX_CAPTURE - 1` so the verifier can bound them).
pub const MAX_CAPTURE: usize = 16 * 1024;
/// Bytes copied from the end of a call that moved more than the capture
/// size, besides its prefix (`DataHeader::tail`): where a response ends
/// (PostgreSQL's CommandComplete and ReadyForQuery, about 30 bytes; an
/// ErrorResponse and its message) is in the last bytes of the server's
/// last write of it, past what a prefix holds when the response is large.
pub const DATA_TAIL: usize = 256;
/// Smallest capture size the agent accepts (a request header block must fit).
pub const MIN_CAPTURE: usize = 4 * 1024;
/// How many iovecs of one readv/writev/recvmsg/sendmsg call are captured:
/// their bytes are joined into the call's one data event (bytes in later
/// iovecs count as not captured). 1,024 is the kernel's own limit
/// (`UIO_MAXIOV`), so every iovec of a call is looked at.
pub const MAX_IOVECS: u32 = 1024;
/// How many iovecs are captured on kernels without `bpf_loop` (before 5.17).
pub const COMPAT_IOVECS: u64 = 8;
/// Entries in the per-process selection map.
pub const MAX_TRACED_PROCS: u32 = 65_536;
/// Entries in the kernel's (tgid, fd) -> socket map by default (LRU: the
/// oldest are evicted; `capture.max_sockets` sets it at load time).
pub const MAX_SOCKETS: u32 = 131_072;
/// Entries in the per-thread in-flight syscall map.
pub const MAX_INFLIGHT: u32 = 65_536;
/// Slots of the per-thread send-entry times (indexed by tid modulo this;
/// a power of two).
pub const ENTER_TIME_SLOTS: u32 = 16_384;
/// Entries in the port filter map.
pub const MAX_PORTS: u32 = 1_024;
/// Threads remembered as being inside an OpenSSL read/write call.
pub const MAX_TLS_CALLS: u32 = 65_536;
/// (tgid, SSL object) -> socket entries (LRU: the oldest are evicted) with
/// the default [`MAX_SOCKETS`]; the agent sizes the map with the socket
/// map ([`tls_objects`]).
pub const MAX_TLS_OBJECTS: u32 = 65_536;

/// Entries of the SSL object map for a socket map of `max_sockets`: half
/// as many (TLS connections are some of the sockets), at least 512.
pub const fn tls_objects(max_sockets: u32) -> u32 {
    let n = max_sockets / 2;
    if n < 512 { 512 } else { n }
}
const _: () = assert!(tls_objects(MAX_SOCKETS) == MAX_TLS_OBJECTS, "the map's default follows the socket map's");
/// Go processes whose goroutine the kernel reads at each data event.
pub const MAX_GO_PROCS: u32 = 16_384;
/// Go HTTP client connections remembered with the goroutine of their
/// current round trip (LRU: the oldest are evicted).
pub const MAX_GO_CONNS: u32 = 16_384;
/// Go HTTP/2 client requests between their `RoundTrip` and the start of
/// the goroutine that writes them, and such goroutines while they run
/// (LRU each: the oldest are evicted).
pub const MAX_GO_H2_REQUESTS: u32 = 16_384;

/// Kind tag at offset 0 of every ring buffer record.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// [`DataHeader`] followed by `captured` payload bytes.
    Data = 1,
    /// [`ConnEvent`]: a socket of a traced process seen for the first time.
    ConnOpen = 2,
    /// [`CloseEvent`]: a known socket fd was closed.
    ConnClose = 3,
    /// [`ExecEvent`]: a process called execve (any process; only a traced one
    /// when processes are selected by pid alone).
    ProcExec = 4,
    /// [`ProcEvent`]: a traced process (thread group) exited.
    ProcExit = 5,
    /// [`ProcEvent`]: a traced process's dynamic loader changed its library
    /// list (`_dl_debug_state`, called around every dlopen/dlclose).
    LibLoad = 6,
    /// [`ProcEvent`]: a traced process forked a new process (not a thread);
    /// `tgid` is the child, `tid` the parent's tgid. The child is already
    /// traced in the kernel when this is written, so the agent can take the
    /// parent's decision even if the child exits before its /proc is read.
    ProcFork = 7,
    /// [`GoStreamEvent`]: a Go HTTP/2 server started the handler of a stream
    /// on a goroutine of its own.
    GoStream = 8,
}

impl EventKind {
    pub fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::Data,
            2 => Self::ConnOpen,
            3 => Self::ConnClose,
            4 => Self::ProcExec,
            5 => Self::ProcExit,
            6 => Self::LibLoad,
            7 => Self::ProcFork,
            8 => Self::GoStream,
            _ => return None,
        })
    }
}

/// `DataHeader::flags` bit: the process wrote these bytes (egress).
pub const DATA_EGRESS: u32 = 1;
/// `DataHeader::flags` bit: plaintext of a TLS connection, captured at the
/// OpenSSL read/write functions (not at the syscall, which moved ciphertext).
pub const DATA_TLS: u32 = 2;

/// Header of a data event; `captured` payload bytes follow it in the record.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DataHeader {
    pub kind: u32,
    pub flags: u32,
    /// Kernel monotonic time (ns): when the call was entered for bytes sent
    /// (`DATA_EGRESS`), when it returned for bytes received. Bytes cannot be
    /// received before the send that carries them started, so a client's
    /// request and response times always enclose its callee's.
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// Payload bytes that follow this header: a prefix of the bytes moved,
    /// then the `tail` last ones.
    pub captured: u32,
    /// Bytes the call really moved (all its buffers); may be larger than
    /// `captured`.
    pub len: u64,
    /// Kernel address of the `struct sock`: tells a reused fd from the old one.
    pub sock_id: u64,
    /// Go programs: the address of the goroutine (`g`) that made the call,
    /// 0 when unknown or not a Go program (see `GO_PROCS` on the kernel side).
    pub goroutine: u64,
    /// The last `tail` of the `captured` payload bytes are the call's last
    /// `tail` bytes (at most [`DATA_TAIL`]), not part of the prefix: set only
    /// when the call moved more than the prefix and the tail together, so
    /// unknown bytes lie between them (vectored calls only on kernels with
    /// `bpf_loop`).
    pub tail: u32,
    pub reserved: u32,
}

/// A Go HTTP/2 server (net/http's, golang.org/x/net/http2, grpc-go) runs each
/// stream's handler on a goroutine of its own, while one goroutine per
/// connection reads every request: this names the goroutine that serves
/// `stream` on socket (`tgid`, `fd`, `sock_id`), so the calls it makes nest
/// under that request. grpc-go's client writes every call of a connection
/// on one goroutine: with `role` [`ROLE_CLIENT`] this names the goroutine
/// that made the call on `stream`, so the call nests under the request that
/// goroutine serves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoStreamEvent {
    pub kind: u32,
    /// HTTP/2 stream id.
    pub stream: u32,
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// The socket's side: [`ROLE_SERVER`] (a stream's handler) or
    /// [`ROLE_CLIENT`] (a call's caller).
    pub role: u32,
    pub sock_id: u64,
    /// The handler's (or caller's) goroutine (`g` address).
    pub goroutine: u64,
}

/// A Go program whose goroutines the kernel reads: value of its `GO_PROCS`
/// entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GoProc {
    /// Offset of the running goroutine's pointer from the thread's `fsbase`.
    pub g_offset: i64,
    /// Offset of `conn` (a `net.Conn`) in grpc-go's server transport
    /// (`transport.http2Server`), from the executable's DWARF;
    /// [`NO_OFFSET`]: unknown (no grpc-go server, or no DWARF).
    pub grpc_conn: u32,
    /// Offsets of `conn` in grpc-go's client transport
    /// (`transport.http2Client`) and of `ct` (that transport) in its
    /// `transport.Stream`; [`NO_OFFSET`]: unknown (no grpc-go client, or no
    /// DWARF).
    pub grpc_client_conn: u32,
    pub grpc_stream_ct: u32,
    pub _pad: u32,
}

/// An offset the agent could not read.
pub const NO_OFFSET: u32 = u32::MAX;

/// Connection role as known by the kernel.
pub const ROLE_UNKNOWN: u32 = 0;
/// The fd came from accept/accept4.
pub const ROLE_SERVER: u32 = 1;
/// The fd was passed to connect.
pub const ROLE_CLIENT: u32 = 2;

/// A socket of a traced process seen for the first time (accept, connect, or
/// first data on a socket that existed before).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnEvent {
    pub kind: u32,
    /// One of `ROLE_*`.
    pub role: u32,
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    /// AF_INET (2), AF_INET6 (10) or AF_UNIX (1).
    pub family: u16,
    /// Local port, host byte order.
    pub lport: u16,
    /// Peer port, host byte order.
    pub rport: u16,
    /// AF_UNIX: bytes of `path` that hold the socket's name (0: unnamed).
    pub path_len: u16,
    pub _pad: [u16; 2],
    /// Local address: IPv4 in the first 4 bytes, or IPv6.
    pub laddr: [u8; 16],
    /// Peer address, same encoding. AF_UNIX: the first 8 bytes are the
    /// peer socket's `struct sock` address (little-endian; 0: none), its
    /// `sock_id` when that socket is seen.
    pub raddr: [u8; 16],
    pub sock_id: u64,
    /// AF_UNIX: the `sun_path` of the server's socket (the socket's own name,
    /// which an accepted socket shares with its listener, else its peer's):
    /// a file system path (NUL-terminated within `path_len`) or, starting
    /// with a NUL byte, an abstract name. Only `path_len` bytes are defined.
    pub path: [u8; UNIX_PATH_MAX],
    pub _pad2: [u8; 4],
}

/// Size of `sockaddr_un::sun_path`.
pub const UNIX_PATH_MAX: usize = 108;

impl Default for ConnEvent {
    fn default() -> Self {
        Self {
            kind: 0,
            role: 0,
            ts_ns: 0,
            tgid: 0,
            tid: 0,
            fd: 0,
            family: 0,
            lport: 0,
            rport: 0,
            path_len: 0,
            _pad: [0; 2],
            laddr: [0; 16],
            raddr: [0; 16],
            sock_id: 0,
            path: [0; UNIX_PATH_MAX],
            _pad2: [0; 4],
        }
    }
}

impl ConnEvent {
    /// The defined bytes of `path`.
    pub fn unix_path(&self) -> &[u8] {
        let n = (self.path_len as usize).min(UNIX_PATH_MAX);
        &self.path[..n]
    }

    /// AF_UNIX: the `sock_id` of the other end (0: none).
    pub fn unix_peer(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.raddr[..8]);
        u64::from_le_bytes(b)
    }
}

/// A known socket fd was closed.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CloseEvent {
    pub kind: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    pub tgid: u32,
    pub tid: u32,
    pub fd: u32,
    pub _pad2: u32,
    pub sock_id: u64,
}

/// Process lifecycle event (exec, exit, fork, library load).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcEvent {
    pub kind: u32,
    pub _pad: u32,
    pub ts_ns: u64,
    pub tgid: u32,
    /// Thread id that triggered the event.
    pub tid: u32,
    pub comm: [u8; 16],
}

/// Bytes of the exec'd file name an [`ExecEvent`] carries (longer names are
/// cut; the name is NUL-terminated within).
pub const EXEC_FILENAME_LEN: usize = 256;

/// A process exec'd: its [`ProcEvent`] and the file name execve was given
/// (`sched_process_exec`'s `filename`), so the agent can match `--exe`
/// even when the process is gone before it reads /proc.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecEvent {
    pub proc: ProcEvent,
    pub filename: [u8; EXEC_FILENAME_LEN],
}

impl Default for ExecEvent {
    fn default() -> Self {
        Self { proc: ProcEvent::default(), filename: [0; EXEC_FILENAME_LEN] }
    }
}

/// Agent -> kernel settings, element 0 of the `CONFIG` array map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelConfig {
    pub abi_version: u32,
    /// 1: every process is traced (except `self_tgid`); 0: only `TRACED` tgids.
    pub trace_all: u32,
    /// The agent's own tgid: never traced (its exports would loop).
    pub self_tgid: u32,
    /// Payload bytes copied per data event (<= MAX_CAPTURE).
    pub capture_bytes: u32,
    /// 1: only sockets whose local or peer port is in `PORTS`.
    pub port_filter: u32,
    /// Bytes one CPU writes to the ring buffer before it wakes the agent (the
    /// agent's `wakeup_bytes` divided by the number of CPUs).
    pub wakeup_bytes: u32,
    /// 1: every exec'ing process is traced provisionally (`TRACED` value
    /// [`TRACED_PENDING`]) until the agent confirms or removes it, so a process
    /// started after kspan loses no early traffic while `--exe` is decided.
    /// 0 without `trace_all` (selection by pid): the exec of a process not
    /// traced is not reported (forks of traced processes are traced already).
    pub exe_filter: u32,
    /// Offsets of `pid` and `clone_flags` in the `task_newtask` tracepoint
    /// record.
    pub newtask_pid_off: u32,
    pub newtask_flags_off: u32,
    /// Offset of `group_dead` in the `sched_process_exit` record (recent
    /// kernels); `u32::MAX`: absent, the exit program reads
    /// `task->signal->live` instead (see [`KernelOffsets::task_signal`]).
    pub exit_group_dead_off: u32,
    /// 1: every program returns at once (`capture.attach_only`, a diagnostic).
    pub attach_only: u32,
    pub offsets: KernelOffsets,
}

/// Byte offsets of kernel struct fields, resolved by the agent from the
/// running kernel's BTF (so one object works across kernel versions).
/// `u32::MAX` marks a field that is absent or unusable (e.g. a bitfield).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_inode: u32,
    pub file_private_data: u32,
    pub inode_mode: u32,
    pub socket_sk: u32,
    pub sk_family: u32,
    pub sk_num: u32,
    pub sk_dport: u32,
    pub sk_rcv_saddr: u32,
    pub sk_daddr: u32,
    pub sk_v6_rcv_saddr: u32,
    pub sk_v6_daddr: u32,
    pub sk_type: u32,
    /// `struct pt_regs` offsets of the first three syscall arguments
    /// (x86_64: di, si, dx); used at sys_exit to read a data syscall's
    /// arguments (see [`KernelOffsets::args_at_exit`]).
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    pub regs_arg2: u32,
    /// `unix_sock.addr` and `unix_sock.peer`, `unix_address.len` and
    /// `unix_address.name`; `unix_sock_addr == u32::MAX`: Unix domain
    /// sockets are not traced (turned off, or the kernel lacks the fields).
    pub unix_sock_addr: u32,
    pub unix_sock_peer: u32,
    pub unix_address_len: u32,
    pub unix_address_name: u32,
    /// `task_struct.thread.fsbase` (x86_64): where a Go thread's TLS block,
    /// and so its current goroutine, is found; `u32::MAX`: goroutines are
    /// not read.
    pub task_fsbase: u32,
    /// `task_struct.signal` and `signal_struct.live` (the thread group's
    /// threads that have not begun to exit): where kernels whose exit
    /// tracepoint lacks `group_dead` tell the last thread's exit.
    /// `u32::MAX`: neither, and the main thread's exit is taken for the
    /// process's.
    pub task_signal: u32,
    pub signal_live: u32,
}

/// x86_64 `struct pt_regs` offsets of di, si and dx (the first three syscall
/// arguments). The kernel side loads them at these constant offsets from the
/// BTF pointer `bpf_task_pt_regs` returns; the agent enables that path only
/// when the running kernel's BTF agrees.
pub const PT_REGS_DI: u32 = 112;
pub const PT_REGS_SI: u32 = 104;
pub const PT_REGS_DX: u32 = 96;
/// x86_64 `struct pt_regs` offset of r10, the fourth syscall argument
/// (`recvfrom`'s flags).
pub const PT_REGS_R10: u32 = 56;
/// x86_64 `struct pt_regs` offset of the user stack pointer.
pub const PT_REGS_SP: u32 = 152;

impl KernelOffsets {
    /// Data syscalls' arguments are read from the saved user registers at
    /// exit: receive calls need no sys_enter program, and send calls' only
    /// notes the entry time. Otherwise sys_enter remembers the arguments.
    #[inline(always)]
    pub const fn args_at_exit(&self) -> bool {
        self.regs_arg0 != u32::MAX
    }

    /// The goroutine of a Go program's data call can be read (x86_64, the
    /// saved registers' layout confirmed, `fsbase` found).
    #[inline(always)]
    pub const fn goroutines(&self) -> bool {
        self.args_at_exit() && self.task_fsbase != u32::MAX
    }
}

/// `TRACED` value: selected by the agent.
pub const TRACED_YES: u8 = 1;
/// `TRACED` value: exec'd while an exe filter is active, not decided yet.
pub const TRACED_PENDING: u8 = 2;

/// Indexes of the per-CPU drop/error counters (`COUNTERS` map).
pub mod counter {
    /// Data events lost: ring buffer full.
    pub const RINGBUF_FULL_DATA: u32 = 0;
    /// Connection/process events lost: ring buffer full.
    pub const RINGBUF_FULL_CTRL: u32 = 1;
    /// Syscalls not followed: in-flight map full.
    pub const INFLIGHT_FULL: u32 = 2;
    /// Payload copies from user memory that failed (event sent without payload).
    pub const READ_USER_FAILED: u32 = 3;
    /// Sockets not remembered: socket map update failed.
    pub const SOCKS_FULL: u32 = 4;
    /// Forked children not traced: selection map full.
    pub const TRACED_FULL: u32 = 5;
    /// TLS plaintext not reported: the SSL object's socket was not known yet,
    /// or a Go TLS connection's descriptor is no known socket.
    pub const TLS_NO_FD: u32 = 6;
    /// OpenSSL calls not followed: TLS call map full.
    pub const TLS_CALLS_FULL: u32 = 7;
    /// Processes whose exec and exit will not sweep their socket entries:
    /// the map of processes holding sockets was full.
    pub const SOCK_PROCS_FULL: u32 = 8;
    /// Number of counters.
    pub const COUNT: u32 = 9;
}

/// The kernel's LRU maps, which evict their least recently used entry when
/// full instead of failing an insert (and the kernel counts nothing). The
/// eBPF side counts each one's new entries (`LRU_OPS[2 * i]`) and deletions
/// (`LRU_OPS[2 * i + 1]`); the agent tells evictions from those and the
/// entries it finds (`kspan_kernel_map_evictions_total{map}`).
pub mod lru {
    pub const SOCKS: u32 = 0;
    pub const TLS_SOCKS: u32 = 1;
    pub const GO_TLS_CALLS: u32 = 2;
    pub const GO_CONN_CALLER: u32 = 3;
    pub const GO_H2_REQUESTS: u32 = 4;
    pub const GO_ACTS_FOR: u32 = 5;
    /// Number of LRU maps.
    pub const COUNT: u32 = 6;
    /// Map names, by index.
    pub const NAMES: [&str; COUNT as usize] =
        ["SOCKS", "TLS_SOCKS", "GO_TLS_CALLS", "GO_CONN_CALLER", "GO_H2_REQUESTS", "GO_ACTS_FOR"];
}

/// `SockState::ignored`: traced (data, open and close events).
pub const IGNORED_NO: u32 = 0;
/// `SockState::ignored`: filtered out by the port filter (no events at all).
pub const IGNORED_PORT: u32 = 1;
/// `SockState::ignored`: muted by the agent, which found its bytes to be no
/// protocol it parses: no data events, but its close is still reported so
/// the agent forgets the connection.
pub const IGNORED_MUTED: u32 = 2;
/// `SockState::ignored`: a TLS connection whose plaintext a uprobe reports
/// together with its socket (Go's `crypto/tls`): the syscalls carry
/// ciphertext and make no data events; open and close are still reported.
pub const IGNORED_TLS_USER: u32 = 3;

/// Value of the kernel's (tgid, fd) socket map.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockState {
    pub sock_id: u64,
    pub role: u32,
    /// One of `IGNORED_*`: any value but [`IGNORED_NO`] stops data events.
    pub ignored: u32,
}

/// Packs a (tgid, fd) map key.
#[inline(always)]
pub const fn sock_key(tgid: u32, fd: u32) -> u64 {
    ((tgid as u64) << 32) | fd as u64
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C), padding-free and valid for any bit pattern.
    unsafe impl aya::Pod for super::KernelConfig {}
    unsafe impl aya::Pod for super::SockState {}
    unsafe impl aya::Pod for super::GoProc {}
}
