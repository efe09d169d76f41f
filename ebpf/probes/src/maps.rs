//! Every map of the kernel side, in one place. Sizes are defaults; the agent
//! may override `EVENTS` (ring buffer bytes) and `SOCKS` (sockets) at load
//! time.
//!
//! Memory: a map's memory is the kernel's, charged to the agent's cgroup
//! (a pod's memory limit counts it). Plain hash maps are allocated as
//! entries come (`BPF_F_NO_PREALLOC`): most hold a few entries (selected
//! processes, calls in flight) against a bound set for the worst case. LRU
//! maps cannot be (the kernel preallocates them), so their bounds are what
//! they cost: `SOCKS` is the largest (about 90 bytes an entry). The agent
//! publishes each map's size (`kspan_kernel_map_bytes`). LRU maps evict
//! instead of failing an insert: they are written through [`lru_insert`] and
//! [`lru_remove`], which count new entries and deletions for the agent's
//! eviction census.

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use kspan_common::{
    ENTER_TIME_SLOTS, GoProc, KernelConfig, MAX_CAPTURE, MAX_GO_CONNS, MAX_GO_H2_REQUESTS, MAX_GO_PROCS, MAX_INFLIGHT,
    MAX_PORTS, MAX_SOCKETS, MAX_TLS_CALLS, MAX_TLS_OBJECTS, MAX_TRACED_PROCS, SockState, counter, lru,
};

/// Agent settings (element 0).
#[map]
pub static CONFIG: Array<KernelConfig> = Array::with_max_entries(1, 0);

/// Selected processes by tgid (`TRACED_YES` / `TRACED_PENDING`).
#[map]
pub static TRACED: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TRACED_PROCS, BPF_F_NO_PREALLOC);

/// Selected Go programs by tgid: the offset of the current goroutine's
/// pointer from the thread's `fsbase` (-8 unless the program has other
/// thread-local data; see `goroutine.rs`), and the layout of grpc-go's
/// server transport in its executable (`go_http.rs`).
#[map]
pub static GO_PROCS: HashMap<u32, GoProc> = HashMap::with_max_entries(MAX_GO_PROCS, BPF_F_NO_PREALLOC);

/// The goroutine that started the current round trip on a Go HTTP client
/// connection, by `sock_key(tgid, fd)`: net/http's `Transport` writes the
/// request on a goroutine of its own. See `go_http.rs`.
#[map]
pub static GO_CONN_CALLER: LruHashMap<u64, GoCaller> = LruHashMap::with_max_entries(MAX_GO_CONNS, 0);

/// net/http's HTTP/2 client: the goroutine that called `RoundTrip` with a
/// request, by (tgid, request pointer), until the goroutine that writes the
/// request starts. See `go_http.rs`.
#[map]
pub static GO_H2_REQUESTS: LruHashMap<ProcPtr, u64> = LruHashMap::with_max_entries(MAX_GO_H2_REQUESTS, 0);

/// Goroutines that act for another while they run, by (tgid, `g`): net/http's
/// HTTP/2 client writes each request on a goroutine of its own
/// (`doRequest`), whose calls count for the `RoundTrip` caller. See
/// `go_http.rs`.
#[map]
pub static GO_ACTS_FOR: LruHashMap<ProcPtr, u64> = LruHashMap::with_max_entries(MAX_GO_H2_REQUESTS, 0);

/// Port filter: local or peer ports that select a socket.
#[map]
pub static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(MAX_PORTS, 0);

/// Known sockets by `sock_key(tgid, fd)`.
#[map]
pub static SOCKS: LruHashMap<u64, SockState> = LruHashMap::with_max_entries(MAX_SOCKETS, 0);

/// Processes that may hold `SOCKS` entries (one was inserted since the
/// process started, or capture resumed): only their exec, exit and
/// `close_range` sweep the socket map (`fds.rs`). Deleted at the exit.
#[map]
pub static SOCK_PROCS: HashMap<u32, u8> = HashMap::with_max_entries(MAX_TRACED_PROCS, BPF_F_NO_PREALLOC);

/// Syscalls in flight, by pid_tgid, between sys_enter and sys_exit.
#[map]
pub static INFLIGHT: HashMap<u64, Inflight> = HashMap::with_max_entries(MAX_INFLIGHT, BPF_F_NO_PREALLOC);

/// When a thread of a selected process entered its current send call, in
/// slot `tid % ENTER_TIME_SLOTS` (the exit checks the tid and clears it).
/// Used when syscall arguments are read from the saved registers at exit,
/// so no sys_enter program runs for receive calls at all.
#[map]
pub static ENTER_TIME: Array<EnterTime> = Array::with_max_entries(ENTER_TIME_SLOTS, 0);

/// OpenSSL read/write calls in flight, by pid_tgid, between uprobe and
/// uretprobe, of threads that could not have their `TLS_SLOTS` slot.
#[map]
pub static TLS_CALLS: HashMap<u64, TlsCall> = HashMap::with_max_entries(MAX_TLS_CALLS, BPF_F_NO_PREALLOC);

/// The OpenSSL read/write call in flight of one thread, in slot
/// `tid % ENTER_TIME_SLOTS` (owned by one thread at a time, taken with a
/// compare-and-swap): array accesses instead of a hash insert, lookup and
/// delete per call. A thread whose slot another thread holds uses
/// `TLS_CALLS` instead.
#[map]
pub static TLS_SLOTS: Array<TlsSlot> = Array::with_max_entries(ENTER_TIME_SLOTS, 0);

/// Per thread slot: at least the number of `TLS_CALLS` entries of the
/// threads in that slot (an entry is counted before it is inserted and
/// uncounted after it is removed), so a zero spares a data syscall the
/// `TLS_CALLS` lookup.
#[map]
pub static TLS_ACTIVE: Array<u64> = Array::with_max_entries(ENTER_TIME_SLOTS, 0);

/// The socket under each SSL object, learnt from the read/write syscalls a
/// thread makes while inside an OpenSSL call on that object.
#[map]
pub static TLS_SOCKS: LruHashMap<ProcPtr, TlsSock> = LruHashMap::with_max_entries(MAX_TLS_OBJECTS, 0);

/// Per thread slot (`tid % ENTER_TIME_SLOTS`): the SSL object whose last
/// OpenSSL call on this thread ended with no socket known for it. OpenSSL
/// on memory BIOs (Node.js, Python's asyncio) makes no syscall inside its
/// calls; the event loop writes the ciphertext right after, on the same
/// thread, and that write binds the object to its socket (see
/// `tls::bind_unbound`).
#[map]
pub static TLS_UNBOUND: Array<TlsUnbound> = Array::with_max_entries(ENTER_TIME_SLOTS, 0);

/// Go `crypto/tls` reads in flight, by (tgid, goroutine), between the
/// function's entry and one of its `RET`s (LRU: a call whose return was
/// missed is evicted in time).
#[map]
pub static GO_TLS_CALLS: LruHashMap<ProcPtr, GoCall> = LruHashMap::with_max_entries(MAX_TLS_CALLS, 0);

/// Per-CPU scratch space where a data event is assembled before output.
#[map]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

/// Bytes this CPU wrote to `EVENTS` since it last woke the agent.
#[map]
pub static WAKE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// When this CPU last forced a wake-up of the agent for a process event (ns).
#[map]
pub static PROC_WAKE: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Drop and error counters (see `kspan_common::counter`).
#[map]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// New entries and deletions of each LRU map (see `kspan_common::lru`).
#[map]
pub static LRU_OPS: PerCpuArray<u64> = PerCpuArray::with_max_entries(2 * lru::COUNT, 0);

/// The one ring buffer to the agent.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 * 1024 * 1024, 0);

/// What a sys_enter handler remembers for the matching sys_exit.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Inflight {
    /// One of the `OP_*` constants in main.rs.
    pub op: u32,
    pub fd: u32,
    /// Buffer pointer, or iovec array pointer for vectored calls.
    pub buf: u64,
    /// Number of iovecs for vectored calls.
    pub iovcnt: u64,
    pub sock_id: u64,
    /// Monotonic time (ns) the syscall was entered; 0 when not seen.
    pub enter_ns: u64,
}

/// One slot of [`ENTER_TIME`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct EnterTime {
    pub tid: u32,
    pub _pad: u32,
    /// Monotonic ns; 0 when the slot is free.
    pub ns: u64,
}

/// Bytes of [`Scratch::payload`]: the whole 32 KiB a per-CPU map value may
/// hold, so that a copy at a variable offset below `MAX_CAPTURE` of at most
/// [`MAX_COPY_AT_OFFSET`] bytes stays inside it where the verifier can see
/// it. A record never carries more than `MAX_CAPTURE` payload bytes.
pub const SCRATCH_PAYLOAD: usize = 32 * 1024 - core::mem::size_of::<kspan_common::DataHeader>();
/// Longest single copy into the payload at a variable offset.
pub const MAX_COPY_AT_OFFSET: usize = SCRATCH_PAYLOAD - MAX_CAPTURE;

/// A data event under construction: header, then payload.
#[repr(C)]
pub struct Scratch {
    pub hdr: kspan_common::DataHeader,
    pub payload: [u8; SCRATCH_PAYLOAD],
}

/// Index of thread `tid` in the per-thread-slot maps (`ENTER_TIME`,
/// `TLS_SLOTS`, `TLS_ACTIVE`).
#[inline(always)]
pub fn thread_slot(tid: u32) -> u32 {
    tid & (ENTER_TIME_SLOTS - 1)
}

#[inline(always)]
pub fn count(idx: u32) {
    bump(&COUNTERS, idx);
}

#[inline(always)]
fn bump(map: &PerCpuArray<u64>, idx: u32) {
    if let Some(p) = map.get_ptr_mut(idx) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += 1 };
    }
}

const EEXIST: i32 = 17;

/// Inserts or replaces `k` in LRU map `which` (`kspan_common::lru`),
/// counting a new entry: the agent tells evictions from these counts.
#[inline(always)]
pub fn lru_insert<K, V>(map: &LruHashMap<K, V>, which: u32, k: &K, v: &V) -> Result<(), i32> {
    match map.insert(k, v, BPF_NOEXIST as u64) {
        Ok(()) => {
            bump(&LRU_OPS, 2 * which);
            Ok(())
        }
        Err(e) if e == -EEXIST => map.insert(k, v, BPF_ANY as u64),
        Err(e) => Err(e),
    }
}

/// Deletes `k` from LRU map `which`, counting it if it was there.
#[inline(always)]
pub fn lru_remove<K, V>(map: &LruHashMap<K, V>, which: u32, k: &K) {
    if map.remove(k).is_ok() {
        bump(&LRU_OPS, 2 * which + 1);
    }
}

/// An OpenSSL read/write call in flight (uprobe -> uretprobe).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsCall {
    /// The `SSL *`.
    pub ssl: u64,
    /// Plaintext buffer.
    pub buf: u64,
    /// `size_t *` out-parameter of the `_ex` variants (bytes moved), else 0.
    pub out: u64,
    /// `DATA_EGRESS` for writes, 0 for reads.
    pub flags: u32,
    pub _pad: u32,
    /// Monotonic time (ns) the call was entered.
    pub enter_ns: u64,
}

/// A Go `crypto/tls` call in flight ([`GO_TLS_CALLS`]).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoCall {
    pub buf: u64,
    /// Monotonic time (ns) the call was entered.
    pub enter_ns: u64,
    /// The connection's socket read at entry (`u32::MAX`: not found).
    pub fd: u32,
    /// `DATA_EGRESS` for writes, 0 for reads.
    pub flags: u32,
}

/// A [`GO_CONN_CALLER`] value.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct GoCaller {
    /// The calling goroutine (`g`).
    pub g: u64,
    /// The socket the entry is about: a reused fd is another socket.
    pub sock_id: u64,
}

/// One [`TLS_SLOTS`] slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsSlot {
    /// pid_tgid of the owning thread; 0: free.
    pub id: u64,
    pub call: TlsCall,
}

/// A pointer of one process (an SSL object, a goroutine, a Go request):
/// pointers are only unique within a process. Key of [`TLS_SOCKS`],
/// [`GO_TLS_CALLS`], [`GO_H2_REQUESTS`] and [`GO_ACTS_FOR`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProcPtr {
    pub tgid: u32,
    pub _pad: u32,
    pub ptr: u64,
}

impl ProcPtr {
    #[inline(always)]
    pub fn new(tgid: u32, ptr: u64) -> Self {
        Self { tgid, _pad: 0, ptr }
    }
}

/// The socket an SSL object reads and writes.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsSock {
    pub fd: u32,
    /// `SockState::ignored` of the socket (not 0: no data events).
    pub ignored: u32,
    pub sock_id: u64,
    /// 1: bound by the ciphertext write after a call (memory BIOs): no
    /// later call refreshes it, so each checks the socket still lives.
    pub by_write: u32,
    pub _pad: u32,
}

/// One [`TLS_UNBOUND`] slot.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct TlsUnbound {
    /// pid_tgid of the thread; 0: none.
    pub id: u64,
    pub ssl: u64,
    /// When the call returned (kernel monotonic ns).
    pub ns: u64,
}
