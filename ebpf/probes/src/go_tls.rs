//! TLS plaintext of Go programs: uprobes on `crypto/tls.(*Conn).Read` and
//! `(*Conn).Write` of a Go executable (Go 1.17+ register ABI on x86_64).
//! The agent finds the functions and their return instructions
//! (`agent/src/capture/go_tls.rs`).
//!
//! Guarantees:
//! - Only selected processes are followed (same `TRACED` check as syscalls).
//! - The entry probes sit on the conditional jump of the function's
//!   stack-growth check (`cmp ...(%r14),...; jbe morestack`), which the
//!   kernel emulates in the trap (the first instruction would be
//!   single-stepped: a second trap). The flags of the `cmp` tell whether the
//!   jump is taken: then the stack grows and the function starts again, and
//!   only the second pass counts, so each call is seen once.
//! - A `Read` is keyed by its goroutine (`R14` holds the current `g`), not
//!   by thread: a goroutine that blocks inside it may resume on another
//!   thread. Go has no usable return probe (a uretprobe rewrites the return
//!   address, which Go's stack copying and tracebacks do not expect), so a
//!   probe on each `RET` of `Read` ends the call.
//! - The socket is read from the connection at entry, while it is surely
//!   open (another goroutine may close it before the call returns):
//!   `tls.Conn.conn` (a `net.Conn` interface, first field) holds a
//!   `*net.TCPConn` (or `*net.UnixConn`) whose `*netFD` starts with
//!   `poll.FD`, whose `Sysfd` follows its 16-byte mutex. Layouts unchanged
//!   since Go 1.9. A descriptor that is not a known socket of the process
//!   (a wrapped `net.Conn`) gets no event and is counted (`TLS_NO_FD`); a
//!   closed connection (`Sysfd` -1: the call fails) is skipped.
//! - `Write` is reported at its entry (the plaintext is there, and it then
//!   precedes its own ciphertext; no return probe), `Read` at its return
//!   with the byte count.
//! - Plaintext goes out as a data event flagged `DATA_TLS`, built by the same
//!   `emit_data` as syscall data. The socket is then marked
//!   `IGNORED_TLS_USER`: its syscalls carry ciphertext and make no events.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};

use kspan_common::{DATA_EGRESS, DATA_TLS, IGNORED_NO, IGNORED_TLS_USER, KernelConfig, counter, lru, sock_key};

use crate::maps::{GO_TLS_CALLS, GoCall, Inflight, ProcPtr, SOCKS, count, lru_insert, lru_remove};
use crate::{Res, Src, config, emit_data, goroutine, is_traced};

/// Offset of the interface's data word in `tls.Conn` (`conn net.Conn` is
/// the first field: type word, then data word).
const CONN_DATA: u64 = 8;
/// Offset of `Sysfd` in `net.netFD` (`pfd poll.FD` first; `poll.FD` starts
/// with `fdmu fdMutex`, 16 bytes).
const NETFD_SYSFD: u64 = 16;
/// `GoCall::fd` when the connection's socket could not be read.
const NO_FD: u32 = u32::MAX;
/// Carry and zero flags: `jbe` jumps when either is set.
const CF_ZF: u64 = 1 | 1 << 6;

/// The socket descriptor under a `*tls.Conn` (-1 once it is closed).
#[inline(always)]
pub(crate) fn conn_fd(conn: u64) -> Option<i64> {
    // SAFETY: user memory of the traced process, read with the fault-safe
    // helper; a bad pointer gives an error, not a fault.
    let data: u64 = unsafe { bpf_probe_read_user((conn + CONN_DATA) as *const u64) }.ok()?;
    net_conn_fd(data)
}

/// The socket descriptor under a `*net.TCPConn` (or `*net.UnixConn`): its
/// `conn{fd *netFD}` at offset 0, then `Sysfd` in the `netFD`.
#[inline(always)]
pub(crate) fn net_conn_fd(data: u64) -> Option<i64> {
    // SAFETY: as in conn_fd.
    unsafe {
        let netfd: u64 = bpf_probe_read_user(data as *const u64).ok()?;
        bpf_probe_read_user((netfd + NETFD_SYSFD) as *const i64).ok()
    }
}

/// Reports `n` bytes of `call`'s buffer as plaintext of its socket, made by
/// goroutine `g`.
#[inline(always)]
fn report(cfg: &KernelConfig, tgid: u32, tid: u32, g: u64, call: &GoCall, n: u64) {
    let st = match call.fd {
        NO_FD => None,
        fd => SOCKS.get_ptr_mut(&sock_key(tgid, fd)),
    };
    let Some(st) = st else {
        count(counter::TLS_NO_FD);
        return;
    };
    // SAFETY: a SOCKS value; `ignored` is an aligned u32 (a racing writer
    // leaves one of the two values).
    let sock_id = unsafe {
        match (*st).ignored {
            IGNORED_NO => core::ptr::write_volatile(&mut (*st).ignored, IGNORED_TLS_USER),
            IGNORED_TLS_USER => {}
            _ => return,
        }
        (*st).sock_id
    };
    // net/http's client writes on goroutines of its own: the round trip's
    // caller is the one that counts.
    let g = goroutine::counted(tgid, call.fd, sock_id, g);
    let inf = Inflight { op: 0, fd: call.fd, buf: call.buf, iovcnt: 0, sock_id, enter_ns: call.enter_ns };
    emit_data::<false>(cfg, tgid, tid, g, &inf, call.flags | DATA_TLS, Src::Buf(call.buf), n);
}

/// A Go function entered at its stack check's jump (this file's entry
/// probes and `go_http.rs`'s): the settings, tgid and tid when the process
/// is selected and this is the pass that counts (when the stack grows the
/// function starts over, so only the second pass goes on).
#[inline(always)]
pub(crate) fn go_entry(ctx: &ProbeContext) -> Option<(&'static KernelConfig, u32, u32)> {
    // SAFETY: the probe's saved user registers.
    let eflags = unsafe { (*ctx.regs).eflags };
    go_traced().filter(|_| eflags & CF_ZF == 0)
}

/// The settings, tgid and tid of the calling thread when its process is
/// selected (the probes at a Go function's `RET`s, and [`go_entry`]).
#[inline(always)]
pub(crate) fn go_traced() -> Option<(&'static KernelConfig, u32, u32)> {
    let cfg = config()?;
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    is_traced(cfg, tgid).then_some((cfg, tgid, tid))
}

fn enter(ctx: &ProbeContext, flags: u32) -> Res {
    let (cfg, tgid, tid) = go_entry(ctx).ok_or(0u32)?;
    // SAFETY: the probe's saved user registers. Go's register ABI: receiver
    // in RAX, the byte slice's pointer and length in RBX and RCX.
    let (conn, buf, len, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).rcx, (*ctx.regs).r14) };
    // SAFETY: helper without preconditions.
    let enter_ns = unsafe { bpf_ktime_get_ns() };
    let fd = match conn_fd(conn) {
        // Closed: the call fails without moving a byte.
        Some(-1) => return Ok(0),
        Some(fd) => u32::try_from(fd).ok().filter(|fd| *fd != NO_FD).unwrap_or(NO_FD),
        None => NO_FD,
    };
    let call = GoCall { buf, enter_ns, fd, flags };
    if flags & DATA_EGRESS != 0 {
        if len > 0 {
            report(cfg, tgid, tid, g, &call, len);
        }
        return Ok(0);
    }
    if lru_insert(&GO_TLS_CALLS, lru::GO_TLS_CALLS, &ProcPtr::new(tgid, g), &call).is_err() {
        count(counter::TLS_CALLS_FULL);
    }
    Ok(0)
}

fn ret(ctx: &ProbeContext) -> Res {
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // SAFETY: the probe's saved user registers: the goroutine in R14, the
    // byte count (first result) in RAX.
    let (g, n) = unsafe { ((*ctx.regs).r14, (*ctx.regs).rax as i64) };
    let key = ProcPtr::new(tgid, g);
    // SAFETY: plain-old-data value, copied out before removal.
    let call = unsafe { GO_TLS_CALLS.get(&key) }.copied().ok_or(0u32)?;
    lru_remove(&GO_TLS_CALLS, lru::GO_TLS_CALLS, &key);
    if n <= 0 {
        return Ok(0);
    }
    let cfg = config().ok_or(0u32)?;
    report(cfg, tgid, tid, g, &call, n as u64);
    Ok(0)
}

/// Stack check of `crypto/tls.(*Conn).Write`.
#[uprobe]
pub fn kspan_go_tls_write(ctx: ProbeContext) -> u32 {
    match enter(&ctx, DATA_EGRESS) {
        Ok(r) | Err(r) => r,
    }
}

/// Stack check of `crypto/tls.(*Conn).Read`.
#[uprobe]
pub fn kspan_go_tls_read(ctx: ProbeContext) -> u32 {
    match enter(&ctx, 0) {
        Ok(r) | Err(r) => r,
    }
}

/// Each `RET` of `crypto/tls.(*Conn).Read`.
#[uprobe]
pub fn kspan_go_tls_ret(ctx: ProbeContext) -> u32 {
    match ret(&ctx) {
        Ok(r) | Err(r) => r,
    }
}
