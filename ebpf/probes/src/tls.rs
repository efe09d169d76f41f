//! TLS plaintext at the OpenSSL API: uprobes on `SSL_read`, `SSL_write` and
//! their `_ex` variants (OpenSSL 1.1 and 3 export the same names), or on the
//! internal functions behind both (`ssl_read_internal`/`ssl_write_internal`,
//! `_ex` argument shape; the agent picks, see `agent/src/capture/tls_entry.rs`).
//!
//! Guarantees:
//! - Only selected processes are followed (same `TRACED` check as syscalls).
//! - The socket under an SSL object is learnt from the read/write syscalls the
//!   thread makes while inside an OpenSSL call; those syscalls carry
//!   ciphertext and produce no data event ([`claim_syscall`]).
//! - Plaintext goes out as an ordinary data event flagged `DATA_TLS`, built by
//!   the same `emit_data` as syscall data. Plaintext of an SSL object whose
//!   socket is still unknown is counted (`TLS_NO_FD`) and skipped.
//! - The dynamic loader's `_dl_debug_state` hook reports library loads of
//!   selected processes (`LibLoad`), so the agent finds a libssl loaded late
//!   (dlopen, Python `import ssl`) right away.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::{uprobe, uretprobe},
    programs::{ProbeContext, RetProbeContext},
};
use core::intrinsics::AtomicOrdering;

use kspan_common::{DATA_EGRESS, DATA_TLS, ENTER_TIME_SLOTS, EventKind, SockState, counter, sock_key};

use crate::maps::{Inflight, SOCKS, TLS_ACTIVE, TLS_CALLS, TLS_SOCKS, TlsCall, TlsKey, TlsSock, count};
use crate::{Res, Src, config, emit_data, emit_proc, is_traced};

/// A data syscall of a thread that is inside an OpenSSL call: remembers the
/// SSL object's socket and returns true (the syscall's ciphertext is not
/// reported).
#[inline(always)]
pub fn claim_syscall(id: u64, fd: u32, st: &SockState) -> bool {
    // SAFETY: a map value; a torn read is impossible for an aligned u64.
    if active(id as u32).is_none_or(|n| unsafe { core::ptr::read_volatile(n) } == 0) {
        return false;
    }
    // SAFETY: plain-old-data value, copied out at once.
    let Some(call) = (unsafe { TLS_CALLS.get(&id) }).copied() else {
        return false;
    };
    let key = TlsKey { tgid: (id >> 32) as u32, _pad: 0, ssl: call.ssl };
    let _ = TLS_SOCKS.insert(&key, &TlsSock { fd, ignored: st.ignored, sock_id: st.sock_id }, 0);
    true
}

/// A thread exited: drop its OpenSSL call in flight, if any (else its id,
/// when reused, would have its syscalls taken for OpenSSL ones).
#[inline(always)]
pub fn forget_thread(id: u64) {
    if TLS_CALLS.remove(&id).is_ok() {
        uncount(id);
    }
}

/// The [`TLS_ACTIVE`] slot of thread `tid`.
#[inline(always)]
fn active(tid: u32) -> Option<*mut u64> {
    TLS_ACTIVE.get_ptr_mut(tid & (ENTER_TIME_SLOTS - 1))
}

/// Adds `v` (wrapping: `u64::MAX` subtracts one) to a slot atomically: the
/// BPF atomic add, which every kernel with BPF ring buffers has (the core
/// atomic types have no read-modify-write methods on this target).
#[inline(always)]
fn slot_add(slot: *mut u64, v: u64) {
    // SAFETY: `slot` is a map value; the add is one atomic instruction.
    unsafe { core::intrinsics::atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, v) };
}

/// A `TLS_CALLS` entry of `id` was removed.
#[inline(always)]
fn uncount(id: u64) {
    if let Some(n) = active(id as u32) {
        slot_add(n, u64::MAX);
    }
}

fn enter(ctx: &ProbeContext, flags: u32, ex: bool) -> Res {
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    if !is_traced(cfg, (id >> 32) as u32) {
        return Ok(0);
    }
    let ssl: u64 = ctx.arg(0).ok_or(0u32)?;
    let buf: u64 = ctx.arg(1).ok_or(0u32)?;
    let out: u64 = if ex { ctx.arg(3).ok_or(0u32)? } else { 0 };
    // SAFETY: helper without preconditions.
    let enter_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let call = TlsCall { ssl, buf, out, flags, _pad: 0, enter_ns };
    let Some(n) = active(id as u32) else { return Ok(0) };
    // Counted first: a syscall that sees the entry sees the count.
    slot_add(n, 1);
    if TLS_CALLS.insert(&id, &call, 0).is_err() {
        slot_add(n, u64::MAX);
        count(counter::TLS_CALLS_FULL);
    }
    Ok(0)
}

fn exit(ctx: &RetProbeContext) -> Res {
    let id = bpf_get_current_pid_tgid();
    // SAFETY: value copied out before removal.
    let Some(call) = (unsafe { TLS_CALLS.get(&id) }).copied() else {
        return Ok(0);
    };
    if TLS_CALLS.remove(&id).is_ok() {
        uncount(id);
    }
    let ret: i32 = ctx.ret();
    let moved: u64 = if call.out != 0 {
        // `_ex` and the internal functions behind both APIs: positive on
        // success, the byte count in the out-parameter.
        if ret <= 0 {
            return Ok(0);
        }
        // SAFETY: the caller's size_t out-parameter in user memory.
        unsafe { bpf_probe_read_user(call.out as *const u64) }.map_err(|_| 0u32)?
    } else {
        if ret <= 0 {
            return Ok(0);
        }
        ret as u64
    };
    if moved == 0 {
        return Ok(0);
    }
    let cfg = config().ok_or(0u32)?;
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let key = TlsKey { tgid, _pad: 0, ssl: call.ssl };
    // SAFETY: plain-old-data value, copied out at once.
    let Some(sock) = (unsafe { TLS_SOCKS.get(&key) }).copied() else {
        count(counter::TLS_NO_FD);
        return Ok(0);
    };
    if sock.ignored != 0 {
        return Ok(0);
    }
    let inf = Inflight { op: 0, fd: sock.fd, buf: call.buf, iovcnt: 0, sock_id: sock.sock_id, enter_ns: call.enter_ns };
    emit_data(cfg, tgid, tid, &inf, call.flags | DATA_TLS, Src::Buf(call.buf), moved);
    Ok(0)
}

#[uprobe]
pub fn kspan_ssl_write(ctx: ProbeContext) -> u32 {
    match enter(&ctx, DATA_EGRESS, false) {
        Ok(r) | Err(r) => r,
    }
}

#[uprobe]
pub fn kspan_ssl_read(ctx: ProbeContext) -> u32 {
    match enter(&ctx, 0, false) {
        Ok(r) | Err(r) => r,
    }
}

#[uprobe]
pub fn kspan_ssl_write_ex(ctx: ProbeContext) -> u32 {
    match enter(&ctx, DATA_EGRESS, true) {
        Ok(r) | Err(r) => r,
    }
}

#[uprobe]
pub fn kspan_ssl_read_ex(ctx: ProbeContext) -> u32 {
    match enter(&ctx, 0, true) {
        Ok(r) | Err(r) => r,
    }
}

/// One return probe for all four functions (the entry remembered what it was).
#[uretprobe]
pub fn kspan_ssl_ret(ctx: RetProbeContext) -> u32 {
    match exit(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn lib_load() -> Res {
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if tgid != cfg.self_tgid && is_traced(cfg, tgid) {
        emit_proc(cfg, EventKind::LibLoad, tgid, tid);
    }
    Ok(0)
}

fn set_fd(ctx: &ProbeContext) -> Res {
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    if !is_traced(cfg, tgid) {
        return Ok(0);
    }
    let ssl: u64 = ctx.arg(0).ok_or(0u32)?;
    let fd: i32 = ctx.arg(1).ok_or(0u32)?;
    let key = TlsKey { tgid, _pad: 0, ssl };
    // SAFETY: plain-old-data value, copied out at once.
    match (fd >= 0).then(|| unsafe { SOCKS.get(&sock_key(tgid, fd as u32)) }.copied()).flatten() {
        Some(st) => {
            let _ = TLS_SOCKS.insert(&key, &TlsSock { fd: fd as u32, ignored: st.ignored, sock_id: st.sock_id }, 0);
        }
        // Unknown socket: forget what a freed SSL object at this address had.
        None => {
            let _ = TLS_SOCKS.remove(&key);
        }
    }
    Ok(0)
}

/// `SSL_set_fd(ssl, fd)`: a (possibly reused) SSL object gets its socket.
#[uprobe]
pub fn kspan_ssl_set_fd(ctx: ProbeContext) -> u32 {
    match set_fd(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// On the dynamic loader's `_dl_debug_state` (its debugger hook).
#[uprobe]
pub fn kspan_dl_state(_ctx: ProbeContext) -> u32 {
    match lib_load() {
        Ok(r) | Err(r) => r,
    }
}
