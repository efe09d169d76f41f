//! kspan's kernel side: syscall and scheduler tracepoints that report, for
//! selected processes, the bytes moved on stream sockets plus socket and
//! process lifecycle events, through one ring buffer. Bytes sent with
//! sendfile are reported by count only (they are not in user memory).
//!
//! Guarantees:
//! - Only stream sockets (TCP over AF_INET/AF_INET6, and AF_UNIX when the
//!   agent gives the `unix_sock` offsets) of selected processes produce data
//!   events; the agent itself is never traced. A socket the agent muted
//!   (`IGNORED_MUTED`: its bytes are no protocol kspan parses) produces none
//!   either, only its close.
//! - A socket is recognised by walking the task's fd table (offsets from the
//!   running kernel's BTF, given by the agent), so sockets opened before kspan
//!   started, or inherited across fork, are traced like new ones; a socket
//!   whose fd a `dup2`, a `close_range`, an exec or an exit took with no
//!   close call is forgotten then ([`fds`]), so the fd's next file is not
//!   taken for it.
//! - Every loss is counted (`COUNTERS`): a full ring buffer, a full map, a
//!   failed user-memory copy. Nothing blocks the traced process.
//! - TLS plaintext comes from OpenSSL and GnuTLS uprobes ([`tls`]) and Go
//!   `crypto/tls` uprobes ([`go_tls`]); the syscalls made inside those calls,
//!   or on a socket whose plaintext a Go probe reported or whose write bound
//!   an OpenSSL object on memory BIOs (`IGNORED_TLS_USER`), carry
//!   ciphertext and produce no data event.
//! - Bytes are reported once: a receive that only peeks (`MSG_PEEK`) makes
//!   no data event, since the next receive returns its bytes again.
//! - An exec event carries the file name execve was given, so the agent can
//!   decide on a process that is already gone.
//! - Program entries are thin; logic lives in fallible `try_*` functions.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(
    internal_features,
    reason = "core::intrinsics::atomic_xadd: the atomic types have no read-modify-write methods on the BPF target"
)]

mod iov;
use iov::{copy_iov_tail, copy_iov_tail_unrolled, copy_iovecs, copy_iovecs_unrolled};
mod fds;
mod go_http;
mod go_tls;
mod goroutine;
mod maps;
mod proc;
pub(crate) use proc::emit_proc;
mod sock;
mod tls;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel,
        generated::{self as helpers_raw, bpf_probe_read_user},
    },
    macros::tracepoint,
    programs::TracePointContext,
};
use kspan_common::{
    CloseEvent, ConnEvent, DATA_EGRESS, DATA_TAIL, DataHeader, EventKind, IGNORED_PORT, KernelConfig, KernelOffsets,
    MAX_CAPTURE, PT_REGS_DI, PT_REGS_DX, PT_REGS_R10, PT_REGS_SI, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, SockState,
    UNIX_PATH_MAX, counter, lru, sock_key,
};
use maps::{
    CONFIG, ENTER_TIME, EVENTS, EnterTime, INFLIGHT, Inflight, PORTS, SCRATCH, SOCKS, TRACED, WAKE, count, lru_insert,
    lru_remove, thread_slot,
};

const OP_READ: u32 = 1;
const OP_WRITE: u32 = 2;
const OP_READV: u32 = 3;
const OP_WRITEV: u32 = 4;
const OP_CONNECT: u32 = 5;
/// sendfile: bytes sent from a file, reported by count only (no payload).
const OP_SENDFILE: u32 = 6;
/// splice into a socket (from a pipe): bytes sent, by count only.
const OP_SPLICE_OUT: u32 = 7;
/// splice out of a socket (into a pipe): bytes received, by count only.
const OP_SPLICE_IN: u32 = 8;

/// Offset of the first syscall argument in a sys_enter record.
const ARG0: usize = 16;
/// Offset of the return value in a sys_exit record.
const RET: usize = 16;
const EINPROGRESS: i64 = 115;

pub(crate) type Res = Result<u32, u32>;

/// The agent's settings; `None` (the program does nothing) with
/// `attach_only`, the diagnostic that measures the hooks alone.
#[inline(always)]
pub(crate) fn config() -> Option<&'static KernelConfig> {
    CONFIG.get(0).filter(|c| c.attach_only == 0)
}

#[inline(always)]
pub(crate) fn is_traced(cfg: &KernelConfig, tgid: u32) -> bool {
    if tgid == cfg.self_tgid {
        return false;
    }
    if cfg.trace_all != 0 {
        return true;
    }
    // SAFETY: read-only lookup of a plain u8 value.
    unsafe { TRACED.get(&tgid).is_some() }
}

/// Submit flags for a record of `size` bytes: the agent is woken once this
/// CPU has written `wakeup_bytes` (the agent's setting, split between the
/// CPUs) since it last woke it, else it drains on its timer. One per-CPU
/// counter, no helper call, and one wake-up per threshold crossed (a
/// pending-bytes check would force a wake-up on every record until the agent
/// had drained).
#[inline(always)]
pub(crate) fn wake_flags(cfg: &KernelConfig, size: u64) -> u64 {
    let Some(w) = WAKE.get_ptr_mut(0) else { return BPF_RB_NO_WAKEUP as u64 };
    // SAFETY: this CPU's slot; programs do not migrate while they run.
    unsafe {
        let n = *w + size;
        if n >= cfg.wakeup_bytes as u64 {
            *w = 0;
            BPF_RB_FORCE_WAKEUP as u64
        } else {
            *w = n;
            BPF_RB_NO_WAKEUP as u64
        }
    }
}

/// A field of the tracepoint record at a constant offset, loaded directly
/// from the context (the verifier checks it against the record's size): no
/// probe_read helper call, which cost as much as the rest of a program that
/// only decides "not traced".
///
/// # Safety
/// `off` must be a constant offset of a `T` inside the record.
#[inline(always)]
pub(crate) unsafe fn field<T: Copy>(ctx: &TracePointContext, off: usize) -> T {
    // SAFETY: per the contract above.
    unsafe { core::ptr::read_volatile(ctx.as_ptr().cast::<u8>().add(off).cast::<T>()) }
}

#[inline(always)]
pub(crate) fn arg(ctx: &TracePointContext, n: usize) -> u64 {
    // SAFETY: syscall tracepoint records hold 6 u64 arguments after the header.
    unsafe { field::<u64>(ctx, ARG0 + n * 8) }
}

#[inline(always)]
pub(crate) fn ret(ctx: &TracePointContext) -> i64 {
    // SAFETY: sys_exit records hold the i64 return value at RET.
    unsafe { field::<i64>(ctx, RET) }
}

fn port_selected(lport: u16, rport: u16) -> bool {
    // SAFETY: read-only lookups of plain u8 values.
    unsafe { PORTS.get(&lport).is_some() || PORTS.get(&rport).is_some() }
}

/// Looks up (tgid, fd) in the socket map; on a miss (or when `fresh` says the
/// fd was just created) walks the fd table, remembers the socket and reports it.
#[inline(always)]
fn socket_state(cfg: &KernelConfig, tgid: u32, tid: u32, fd: u32, role: u32, fresh: bool) -> Option<SockState> {
    let key = sock_key(tgid, fd);
    if !fresh {
        // SAFETY: plain-old-data value, copied out at once.
        if let Some(st) = unsafe { SOCKS.get(&key) } {
            return Some(*st);
        }
    }
    let info = sock::lookup(&cfg.offsets, fd)?;
    let ignored = cfg.port_filter != 0 && !port_selected(info.lport, info.rport);
    let st = SockState { sock_id: info.sk, role, ignored: ignored as u32 };
    if lru_insert(&SOCKS, lru::SOCKS, &key, &st).is_err() {
        count(counter::SOCKS_FULL);
    } else {
        fds::note_process(tgid);
    }
    if !ignored {
        if let Some(mut entry) = EVENTS.reserve::<ConnEvent>(0) {
            let ev = entry.as_mut_ptr();
            // SAFETY: `ev` points to the reserved record; fields are written
            // one by one (the whole event would not fit the BPF stack), and
            // the agent reads only `path_len` bytes of `path`.
            unsafe {
                (*ev).kind = EventKind::ConnOpen as u32;
                (*ev).role = role;
                (*ev).ts_ns = bpf_ktime_get_ns();
                (*ev).tgid = tgid;
                (*ev).tid = tid;
                (*ev).fd = fd;
                (*ev).family = info.family;
                (*ev).lport = info.lport;
                (*ev).rport = info.rport;
                (*ev).path_len = unix_path(&cfg.offsets, info.unix_addr, &mut (*ev).path);
                (*ev)._pad = [0; 2];
                (*ev).laddr = info.laddr;
                (*ev).raddr = info.raddr;
                (*ev).sock_id = info.sk;
                (*ev)._pad2 = [0; 4];
            }
            entry.submit(wake_flags(cfg, core::mem::size_of::<ConnEvent>() as u64));
        } else {
            count(counter::RINGBUF_FULL_CTRL);
        }
    }
    Some(st)
}

/// Copies the `sun_path` of `struct unix_address` `addr` into `out`;
/// returns how many of its bytes name the socket (0: unnamed or unreadable).
#[inline(always)]
fn unix_path(o: &KernelOffsets, addr: u64, out: &mut [u8; UNIX_PATH_MAX]) -> u16 {
    if addr == 0 {
        return 0;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    let len: i32 = match unsafe { bpf_probe_read_kernel((addr + o.unix_address_len as u64) as *const i32) } {
        Ok(l) => l,
        Err(_) => return 0,
    };
    // `len` counts sun_family (2 bytes) and the name.
    if len <= 2 {
        return 0;
    }
    let mut n = (len - 2) as u32;
    if n > UNIX_PATH_MAX as u32 {
        n = UNIX_PATH_MAX as u32;
    }
    let src = addr + o.unix_address_name as u64 + 2;
    // SAFETY: as above; exactly the name's bytes (n <= out.len()), nothing
    // of the memory after the kernel's allocation.
    if unsafe { helpers_raw::bpf_probe_read_kernel(out.as_mut_ptr().cast(), n, src as *const _) } != 0 {
        return 0;
    }
    n as u16
}

/// Where the bytes of a data event are in user memory.
#[derive(Clone, Copy)]
pub(crate) enum Src {
    /// One buffer.
    Buf(u64),
    /// An iovec array and its length (readv/writev/recvmsg/sendmsg).
    Iov(u64, u64),
    /// Bytes not in user memory (sendfile): the event carries their count only.
    Uncopied,
}

/// Sends one data event for the `len` bytes a call moved: its first
/// `capture_bytes` (a vectored call's buffers joined, so one call is one
/// event); `flags` are `DataHeader::flags` (`DATA_EGRESS`, `DATA_TLS`);
/// `goroutine` is the Go goroutine making the call (0: none known).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
pub(crate) fn emit_data<const LOOP: bool>(
    cfg: &KernelConfig,
    tgid: u32,
    tid: u32,
    goroutine: u64,
    inf: &Inflight,
    flags: u32,
    src: Src,
    len: u64,
) {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return };
    let mut cap = len;
    if cap > cfg.capture_bytes as u64 {
        cap = cfg.capture_bytes as u64;
    }
    if cap > MAX_CAPTURE as u64 {
        cap = MAX_CAPTURE as u64;
    }
    // SAFETY: scratch is this CPU's map value; cap <= MAX_CAPTURE <
    // SCRATCH_PAYLOAD (see copy_iovecs for the vectored case).
    unsafe {
        let payload = (*scratch).payload.as_mut_ptr();
        let mut tail = 0u64;
        let captured = match src {
            Src::Buf(addr) => {
                if cap > 0 && bpf_probe_read_user(payload.cast(), cap as u32, addr as *const _) != 0 {
                    count(counter::READ_USER_FAILED);
                    0
                } else {
                    tail = copy_tail(payload, cap, addr, len);
                    cap + tail
                }
            }
            Src::Iov(iov, n) if LOOP => {
                let head = copy_iovecs(iov, n, len, cap);
                tail = copy_iov_tail(iov, n, len, head);
                head + tail
            }
            Src::Iov(iov, n) => {
                let head = copy_iovecs_unrolled(iov, n, len, cap);
                tail = copy_iov_tail_unrolled(iov, n, len, head);
                head + tail
            }
            Src::Uncopied => 0,
        };
        (*scratch).hdr = DataHeader {
            kind: EventKind::Data as u32,
            flags,
            ts_ns: if flags & DATA_EGRESS != 0 && inf.enter_ns != 0 { inf.enter_ns } else { bpf_ktime_get_ns() },
            tgid,
            tid,
            fd: inf.fd,
            captured: captured as u32,
            len,
            sock_id: inf.sock_id,
            goroutine,
            tail: tail as u32,
            reserved: 0,
        };
        let mut size = core::mem::size_of::<DataHeader>() + captured as usize;
        if size > core::mem::size_of::<DataHeader>() + MAX_CAPTURE + DATA_TAIL {
            size = core::mem::size_of::<DataHeader>() + MAX_CAPTURE + DATA_TAIL;
        }
        let bytes = core::slice::from_raw_parts(scratch as *const u8, size);
        if EVENTS.output::<[u8]>(bytes, wake_flags(cfg, size as u64)).is_err() {
            count(counter::RINGBUF_FULL_DATA);
        }
    }
}

/// Copies the last bytes of a call that moved more than its `cap`-byte
/// prefix (already at `payload`) right after that prefix; returns how many
/// (0 when the prefix holds it all or the read fails).
#[inline(always)]
unsafe fn copy_tail(payload: *mut u8, cap: u64, addr: u64, len: u64) -> u64 {
    if len <= cap || cap > MAX_CAPTURE as u64 {
        return 0;
    }
    let mut n = len - cap;
    if n > DATA_TAIL as u64 {
        n = DATA_TAIL as u64;
    }
    // SAFETY: cap <= MAX_CAPTURE and n <= DATA_TAIL: inside the scratch
    // payload (SCRATCH_PAYLOAD >= MAX_CAPTURE + DATA_TAIL).
    let dst = unsafe { payload.add(cap as usize) };
    if unsafe { bpf_probe_read_user(dst.cast(), n as u32, (addr + len - n) as *const _) } != 0 {
        return 0;
    }
    n
}

/// How a data syscall passes its buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `(fd, buf, len)`.
    Buf,
    /// `(fd, iov, iovcnt)`.
    Iov,
    /// `(fd, msghdr, flags)`: iovecs inside the `struct user_msghdr`.
    Msg,
    /// `(fd_in, off_in, fd_out, ...)`: splice, either end may be the socket.
    Splice,
}

/// (buffer or iovec array, iovec count) from a call's second and third arguments.
#[inline(always)]
fn buffers(shape: Shape, a1: u64, a2: u64) -> (u64, u64) {
    match shape {
        Shape::Buf | Shape::Splice => (a1, 0),
        Shape::Iov => (a1, a2),
        // struct user_msghdr: msg_iov at 16, msg_iovlen at 24.
        // SAFETY: reads of the caller's msghdr from user memory.
        Shape::Msg => unsafe {
            (
                aya_ebpf::helpers::bpf_probe_read_user((a1 + 16) as *const u64).unwrap_or(0),
                aya_ebpf::helpers::bpf_probe_read_user((a1 + 24) as *const u64).unwrap_or(0),
            )
        },
    }
}

/// A send that carries the ciphertext of an SSL object on memory BIOs and
/// binds it to this socket (see [`tls::bind_unbound`]): not reported.
#[inline(always)]
fn binds_tls(id: u64, op: u32, fd: u32, st: &SockState, buf: u64, iovcnt: u64) -> bool {
    (op == OP_WRITE || op == OP_WRITEV) && tls::bind_unbound(id, fd, st, || first_bytes(op, buf, iovcnt))
}

/// The first three bytes a write sends: of its buffer, or of its first
/// iovec's.
#[inline(always)]
fn first_bytes(op: u32, buf: u64, iovcnt: u64) -> Option<[u8; 3]> {
    // SAFETY: reads of the caller's memory through the fault-safe helper.
    unsafe {
        let base = match op {
            OP_WRITE => buf,
            // struct iovec: iov_base at 0.
            OP_WRITEV if iovcnt > 0 => aya_ebpf::helpers::bpf_probe_read_user(buf as *const u64).ok()?,
            _ => return None,
        };
        aya_ebpf::helpers::bpf_probe_read_user(base as *const [u8; 3]).ok()
    }
}

/// This thread's slot of [`ENTER_TIME`].
#[inline(always)]
fn enter_time_slot(tid: u32) -> Option<*mut EnterTime> {
    ENTER_TIME.get_ptr_mut(thread_slot(tid))
}

/// A data syscall's entry; `FLAGS_ARG`: the index of a receive's flags
/// argument (a peek is not reported, see [`MSG_PEEK`]), 0 for other calls.
fn enter_data<const FLAGS_ARG: usize>(ctx: &TracePointContext, op: u32, shape: Shape) -> Res {
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if !is_traced(cfg, tgid) {
        return Ok(0);
    }
    if cfg.offsets.args_at_exit() {
        // Bytes sent are stamped when the call was entered (see DataHeader).
        if let Some(slot) = enter_time_slot(tid) {
            // SAFETY: a map value; a racing thread with the same slot only
            // makes the exit fall back to its own time (tid check).
            unsafe { *slot = EnterTime { tid, _pad: 0, ns: bpf_ktime_get_ns() } };
        }
        return Ok(0);
    }
    // Only the receive programs read their flags: an access past the
    // record of a syscall with fewer arguments would fail the attach.
    if FLAGS_ARG != 0 && arg(ctx, FLAGS_ARG) & MSG_PEEK != 0 {
        return Ok(0);
    }
    let (op, fd, st) = data_socket(cfg, tgid, tid, op, shape, arg(ctx, 0), arg(ctx, 2)).ok_or(0u32)?;
    if tls::claim_syscall(id, fd, &st) || st.ignored != 0 {
        return Ok(0);
    }
    let (buf, iovcnt) = buffers(shape, arg(ctx, 1), arg(ctx, 2));
    if binds_tls(id, op, fd, &st, buf, iovcnt) {
        return Ok(0);
    }
    // SAFETY: helper without preconditions.
    let enter_ns = unsafe { bpf_ktime_get_ns() };
    let inf = Inflight { op, fd, buf, iovcnt, sock_id: st.sock_id, enter_ns };
    if INFLIGHT.insert(&id, &inf, 0).is_err() {
        count(counter::INFLIGHT_FULL);
    }
    Ok(0)
}

/// `MSG_PEEK` in a receive's flags (recvfrom's fourth argument, recvmsg's
/// third): the bytes are looked at and left in the socket. Such a receive
/// makes no data event: the next one reads its bytes again, and reporting
/// them twice would put them twice in the stream (curl peeks at a
/// kept-alive connection before it reuses it).
const MSG_PEEK: u64 = 2;

/// x86_64 syscall numbers of the data syscalls.
fn op_of_syscall(nr: i32) -> Option<(u32, Shape)> {
    Some(match nr {
        0 | 45 => (OP_READ, Shape::Buf),       // read, recvfrom
        1 | 44 => (OP_WRITE, Shape::Buf),      // write, sendto
        19 => (OP_READV, Shape::Iov),          // readv
        20 => (OP_WRITEV, Shape::Iov),         // writev
        47 => (OP_READV, Shape::Msg),          // recvmsg
        46 => (OP_WRITEV, Shape::Msg),         // sendmsg
        40 => (OP_SENDFILE, Shape::Buf),       // sendfile (out_fd first)
        275 => (OP_SPLICE_OUT, Shape::Splice), // splice (which end: see data_socket)
        _ => return None,
    })
}

/// A data syscall's arguments, read at its exit from the saved user
/// registers (x86_64 keeps rdi/rsi/rdx across a syscall); `None` when the
/// fd is not a traced socket or the bytes belong to an OpenSSL call.
fn inflight_at_exit(ctx: &TracePointContext, cfg: &KernelConfig, id: u64) -> Option<Inflight> {
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if !is_traced(cfg, tgid) {
        return None;
    }
    // SAFETY: __syscall_nr is at offset 8 of every sys_exit record.
    let nr: i32 = unsafe { field::<i32>(ctx, 8) };
    let (op, shape) = op_of_syscall(nr)?;
    // SAFETY: bpf_task_pt_regs returns a BTF pointer to this task's saved
    // registers: the verifier checks each constant-offset load against the
    // kernel's struct pt_regs and turns it into a fault-safe load (no
    // probe_read helper call). The agent set `regs_arg0` only when BTF
    // confirmed these offsets (see `PT_REGS_DI`).
    let (fd, a1, a2) = unsafe {
        let regs =
            aya_ebpf::helpers::generated::bpf_task_pt_regs(aya_ebpf::helpers::generated::bpf_get_current_task_btf())
                as *const u8;
        if regs.is_null() {
            return None;
        }
        let rd = |off: u32| core::ptr::read_volatile(regs.add(off as usize).cast::<u64>());
        let (fd, a1, a2) = (rd(PT_REGS_DI), rd(PT_REGS_SI), rd(PT_REGS_DX));
        let flags = match nr {
            45 => rd(PT_REGS_R10), // recvfrom
            47 => a2,              // recvmsg
            _ => 0,
        };
        if flags & MSG_PEEK != 0 {
            return None;
        }
        (fd, a1, a2)
    };
    let mut enter_ns = 0;
    if is_send(op) {
        if let Some(slot) = enter_time_slot(tid) {
            // SAFETY: a map value (see enter_data).
            unsafe {
                if (*slot).tid == tid {
                    enter_ns = (*slot).ns;
                    (*slot).ns = 0;
                }
            }
        }
    }
    let (op, fd, st) = data_socket(cfg, tgid, tid, op, shape, fd, a2)?;
    if tls::claim_syscall(id, fd, &st) || st.ignored != 0 {
        return None;
    }
    let (buf, iovcnt) = buffers(shape, a1, a2);
    if binds_tls(id, op, fd, &st, buf, iovcnt) {
        return None;
    }
    Some(Inflight { op, fd, buf, iovcnt, sock_id: st.sock_id, enter_ns })
}

fn exit_data<const LOOP: bool>(ctx: &TracePointContext) -> Res {
    let r = ret(ctx);
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    let inf = if cfg.offsets.args_at_exit() {
        if r <= 0 {
            return Ok(0);
        }
        inflight_at_exit(ctx, cfg, id).ok_or(0u32)?
    } else {
        // SAFETY: value copied out before removal.
        let inf = unsafe { INFLIGHT.get(&id) }.copied().ok_or(0u32)?;
        let _ = INFLIGHT.remove(&id);
        if r <= 0 {
            return Ok(0);
        }
        inf
    };
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let total = r as u64;
    let flags = if is_send(inf.op) { DATA_EGRESS } else { 0 };
    let g = goroutine::current(cfg, tgid, inf.fd, inf.sock_id);
    match inf.op {
        OP_READ | OP_WRITE => emit_data::<LOOP>(cfg, tgid, tid, g, &inf, flags, Src::Buf(inf.buf), total),
        OP_READV | OP_WRITEV => emit_data::<LOOP>(cfg, tgid, tid, g, &inf, flags, Src::Iov(inf.buf, inf.iovcnt), total),
        OP_SENDFILE | OP_SPLICE_OUT | OP_SPLICE_IN => {
            emit_data::<LOOP>(cfg, tgid, tid, g, &inf, flags, Src::Uncopied, total)
        }
        _ => {}
    }
    Ok(0)
}

/// Whether `op` sends bytes (its events are stamped at entry, see DataHeader).
#[inline(always)]
fn is_send(op: u32) -> bool {
    op == OP_WRITE || op == OP_WRITEV || op == OP_SENDFILE || op == OP_SPLICE_OUT
}

/// The traced socket a data call moves bytes through: (op, fd, state).
/// `a0` is the first argument; for splice `a2` is the output fd: a socket
/// there makes the call a send (`OP_SPLICE_OUT`), else a socket at `a0` a
/// receive (`OP_SPLICE_IN`). `None` when no end is a traced socket.
#[inline(always)]
fn data_socket(
    cfg: &KernelConfig,
    tgid: u32,
    tid: u32,
    op: u32,
    shape: Shape,
    a0: u64,
    a2: u64,
) -> Option<(u32, u32, SockState)> {
    let traced = |fd: u64| {
        if fd > i32::MAX as u64 {
            return None;
        }
        socket_state(cfg, tgid, tid, fd as u32, ROLE_UNKNOWN, false).map(|st| (fd as u32, st))
    };
    if shape == Shape::Splice {
        if let Some((fd, st)) = traced(a2) {
            return Some((OP_SPLICE_OUT, fd, st));
        }
        return traced(a0).map(|(fd, st)| (OP_SPLICE_IN, fd, st));
    }
    traced(a0).map(|(fd, st)| (op, fd, st))
}

macro_rules! data_enter {
    ($name:ident, $op:expr, $shape:expr) => {
        data_enter!($name, $op, $shape, 0);
    };
    ($name:ident, $op:expr, $shape:expr, $flags_arg:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            match enter_data::<$flags_arg>(&ctx, $op, $shape) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

macro_rules! data_exit {
    ($name:ident, $loop:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            match exit_data::<$loop>(&ctx) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

data_enter!(kspan_enter_read, OP_READ, Shape::Buf);
data_enter!(kspan_enter_recvfrom, OP_READ, Shape::Buf, 3);
data_enter!(kspan_enter_write, OP_WRITE, Shape::Buf);
data_enter!(kspan_enter_sendto, OP_WRITE, Shape::Buf);
data_enter!(kspan_enter_readv, OP_READV, Shape::Iov);
data_enter!(kspan_enter_writev, OP_WRITEV, Shape::Iov);
data_enter!(kspan_enter_recvmsg, OP_READV, Shape::Msg, 2);
data_enter!(kspan_enter_sendmsg, OP_WRITEV, Shape::Msg);
data_enter!(kspan_enter_sendfile, OP_SENDFILE, Shape::Buf);
data_enter!(kspan_enter_splice, OP_SPLICE_OUT, Shape::Splice);
// Vectored calls: every iovec, walked with bpf_loop (5.17+); the agent
// loads the compat program instead on kernels without it.
data_exit!(kspan_exit_data, true);
data_exit!(kspan_exit_data_compat, false);

fn try_exit_accept(ctx: &TracePointContext) -> Res {
    let r = ret(ctx);
    if r < 0 {
        return Ok(0);
    }
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if is_traced(cfg, tgid) {
        let _ = socket_state(cfg, tgid, tid, r as u32, ROLE_SERVER, true);
    }
    Ok(0)
}

#[tracepoint]
pub fn kspan_exit_accept(ctx: TracePointContext) -> u32 {
    match try_exit_accept(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_enter_connect(ctx: &TracePointContext) -> Res {
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    if !is_traced(cfg, (id >> 32) as u32) {
        return Ok(0);
    }
    let inf = Inflight { op: OP_CONNECT, fd: arg(ctx, 0) as u32, buf: 0, iovcnt: 0, sock_id: 0, enter_ns: 0 };
    if INFLIGHT.insert(&id, &inf, 0).is_err() {
        count(counter::INFLIGHT_FULL);
    }
    Ok(0)
}

#[tracepoint]
pub fn kspan_enter_connect(ctx: TracePointContext) -> u32 {
    match try_enter_connect(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_exit_connect(ctx: &TracePointContext) -> Res {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: value copied out before removal.
    let inf = match unsafe { INFLIGHT.get(&id) } {
        Some(i) => *i,
        None => return Ok(0),
    };
    let _ = INFLIGHT.remove(&id);
    let r = ret(ctx);
    if inf.op != OP_CONNECT || (r != 0 && r != -EINPROGRESS) {
        return Ok(0);
    }
    let cfg = config().ok_or(0u32)?;
    let _ = socket_state(cfg, (id >> 32) as u32, id as u32, inf.fd, ROLE_CLIENT, true);
    Ok(0)
}

#[tracepoint]
pub fn kspan_exit_connect(ctx: TracePointContext) -> u32 {
    match try_exit_connect(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn try_enter_close(ctx: &TracePointContext) -> Res {
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if tgid == cfg.self_tgid {
        return Ok(0);
    }
    // Only traced processes have SOCKS entries: one lookup decides both
    // (most closes are of files).
    let fd = arg(ctx, 0) as u32;
    let key = sock_key(tgid, fd);
    // SAFETY: value copied out before removal.
    let st = match unsafe { SOCKS.get(&key) } {
        Some(s) => *s,
        None => return Ok(0),
    };
    forget_socket(cfg, tgid, tid, fd, &st);
    Ok(0)
}

/// Removes the socket entry of (`tgid`, `fd`), whose value is `st`, and
/// reports the socket's close (unless the port filter left it out).
#[inline(always)]
pub(crate) fn forget_socket(cfg: &KernelConfig, tgid: u32, tid: u32, fd: u32, st: &SockState) {
    lru_remove(&SOCKS, lru::SOCKS, &sock_key(tgid, fd));
    if st.ignored == IGNORED_PORT {
        return;
    }
    if let Some(mut entry) = EVENTS.reserve::<CloseEvent>(0) {
        entry.write(CloseEvent {
            kind: EventKind::ConnClose as u32,
            _pad: 0,
            // SAFETY: helper without preconditions.
            ts_ns: unsafe { bpf_ktime_get_ns() },
            tgid,
            tid,
            fd,
            _pad2: 0,
            sock_id: st.sock_id,
        });
        entry.submit(wake_flags(cfg, core::mem::size_of::<CloseEvent>() as u64));
    } else {
        count(counter::RINGBUF_FULL_CTRL);
    }
}

#[tracepoint]
pub fn kspan_enter_close(ctx: TracePointContext) -> u32 {
    match try_enter_close(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";

/// The ABI this object was built against; the agent reads this section and
/// refuses an object from another version of `kspan-common`.
#[unsafe(link_section = "kspan_abi")]
#[unsafe(no_mangle)]
static KSPAN_ABI: u32 = kspan_common::ABI_VERSION;
