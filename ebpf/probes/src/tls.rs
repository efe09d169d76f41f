//! TLS plaintext at the OpenSSL API: uprobes on `SSL_read`, `SSL_write` and
//! their `_ex` variants (OpenSSL 1.1 and 3 export the same names), or on the
//! internal functions behind both (`ssl_read_internal`/`ssl_write_internal`,
//! `_ex` argument shape; the agent picks, see `agent/src/capture/tls_entry.rs`).
//! GnuTLS's `gnutls_record_send2`/`gnutls_record_recv` have the plain shape
//! (session, buffer, length; byte count or negative error returned, its low
//! 32 bits read) and get the same programs (`agent/src/capture/tls_lib.rs`).
//!
//! Guarantees:
//! - Only selected processes are followed (same `TRACED` check as syscalls).
//! - The socket under an SSL object is learnt from the read/write syscalls the
//!   thread makes while inside an OpenSSL call; those syscalls carry
//!   ciphertext and produce no data event ([`claim_syscall`]).
//! - Handshake steps (`SSL_do_handshake`, `gnutls_handshake`) are probed
//!   too (no data): a socket-BIO handshake's syscalls bind the object
//!   before its first read or write, and are not reported.
//! - OpenSSL on memory BIOs (Node.js, Python's asyncio) makes no syscall
//!   inside its calls: the event loop writes the ciphertext right after, on
//!   the same thread. A call that ends with its object's socket unknown
//!   leaves the object pending on its thread (one per thread, for 1 s); the
//!   thread's next socket write that starts with a TLS record header binds
//!   it ([`bind_unbound`]), and that socket's syscalls are ignored from
//!   then on (`IGNORED_TLS_USER`, as for Go). Such a binding is checked
//!   against the socket's life at each call (an address may be reused).
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

use kspan_common::{DATA_EGRESS, DATA_TLS, EventKind, IGNORED_NO, IGNORED_TLS_USER, SockState, counter, lru, sock_key};

use crate::maps::{
    Inflight, ProcPtr, SOCKS, TLS_ACTIVE, TLS_CALLS, TLS_SLOTS, TLS_SOCKS, TLS_UNBOUND, TlsCall, TlsSlot, TlsSock,
    TlsUnbound, count, lru_insert, lru_remove, thread_slot,
};
use crate::{Res, Src, config, emit_data, emit_proc, is_traced};

/// The OpenSSL call thread `id` is inside, if any: its slot when it owns
/// one, else the [`TLS_CALLS`] fallback (looked up only when that slot's
/// count says the map may hold an entry for a thread of it).
#[inline(always)]
fn current_call(id: u64) -> Option<TlsCall> {
    if let Some(s) = owned_slot(id) {
        // SAFETY: a TLS_SLOTS value this thread owns.
        return Some(unsafe { (*s).call });
    }
    // SAFETY: a map value; a torn read is impossible for an aligned u64.
    if active(id as u32).is_none_or(|n| unsafe { core::ptr::read_volatile(n) } == 0) {
        return None;
    }
    // SAFETY: plain-old-data value, copied out at once.
    unsafe { TLS_CALLS.get(&id) }.copied()
}

/// A data syscall of a thread that is inside an OpenSSL call: remembers the
/// SSL object's socket and returns true (the syscall's ciphertext is not
/// reported).
#[inline(always)]
pub fn claim_syscall(id: u64, fd: u32, st: &SockState) -> bool {
    let Some(call) = current_call(id) else {
        return false;
    };
    let key = ProcPtr::new((id >> 32) as u32, call.ssl);
    let sock = TlsSock { fd, ignored: st.ignored, sock_id: st.sock_id, by_write: 0, _pad: 0 };
    // An update of the LRU map costs several times a lookup, and an SSL
    // object keeps its socket: write only what changed.
    // SAFETY: plain-old-data value, compared at once.
    let known = unsafe { TLS_SOCKS.get(&key) }
        .is_some_and(|k| k.fd == sock.fd && k.sock_id == sock.sock_id && k.ignored == sock.ignored);
    if !known {
        let _ = lru_insert(&TLS_SOCKS, lru::TLS_SOCKS, &key, &sock);
    }
    true
}

/// A thread exited: drop its OpenSSL call in flight, if any (else its id,
/// when reused, would have its syscalls taken for OpenSSL ones).
#[inline(always)]
pub fn forget_thread(id: u64) {
    if let Some(s) = owned_slot(id) {
        // SAFETY: a TLS_SLOTS value this thread owns; freeing it is its own write.
        unsafe { core::ptr::write_volatile(&mut (*s).id, 0) };
    }
    if TLS_CALLS.remove(&id).is_ok() {
        uncount(id);
    }
}

/// The [`TLS_SLOTS`] slot of thread `tid`.
#[inline(always)]
fn slot(tid: u32) -> Option<*mut TlsSlot> {
    TLS_SLOTS.get_ptr_mut(thread_slot(tid))
}

/// Thread `id`'s slot, if it owns it (only the owner writes its `call` and
/// frees it, so the owner may read and free it without atomics).
#[inline(always)]
fn owned_slot(id: u64) -> Option<*mut TlsSlot> {
    let s = slot(id as u32)?;
    // SAFETY: a map value; a torn read is impossible for an aligned u64.
    (unsafe { core::ptr::read_volatile(&(*s).id) } == id).then_some(s)
}

/// Makes thread `id` the owner of slot `s` if it is free (or already its
/// own), with one compare-and-swap: two threads sharing a slot never both
/// own it. A thread that does not get its slot uses [`TLS_CALLS`].
///
/// # Safety
/// `s` must be a [`TLS_SLOTS`] value.
#[inline(always)]
unsafe fn claim_slot(s: *mut TlsSlot, id: u64) -> bool {
    // SAFETY: per the contract; the swap is one atomic instruction.
    unsafe {
        let cur = core::ptr::read_volatile(&(*s).id);
        cur == id
            || (cur == 0
                && core::intrinsics::atomic_cxchg::<u64, { AtomicOrdering::Relaxed }, { AtomicOrdering::Relaxed }>(
                    &mut (*s).id,
                    0,
                    id,
                )
                .1)
    }
}

/// The [`TLS_ACTIVE`] slot of thread `tid`.
#[inline(always)]
fn active(tid: u32) -> Option<*mut u64> {
    TLS_ACTIVE.get_ptr_mut(thread_slot(tid))
}

/// Adds `v` (wrapping: `u64::MAX` subtracts one) to a slot atomically: the
/// BPF atomic add (the core atomic types have no read-modify-write methods
/// on this target).
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
    enter_at(ctx, flags, 1, if ex { Some(3) } else { None })
}

/// [`enter`] of a function whose buffer is argument `buf_arg` and, for the
/// `_ex` semantics, whose byte count goes to the pointer in `out_arg`.
#[inline(always)]
fn enter_at(ctx: &ProbeContext, flags: u32, buf_arg: usize, out_arg: Option<usize>) -> Res {
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    if !is_traced(cfg, (id >> 32) as u32) {
        return Ok(0);
    }
    let ssl: u64 = ctx.arg(0).ok_or(0u32)?;
    let buf: u64 = ctx.arg(buf_arg).ok_or(0u32)?;
    let out: u64 = match out_arg {
        Some(n) => ctx.arg(n).ok_or(0u32)?,
        None => 0,
    };
    // SAFETY: helper without preconditions.
    let enter_ns = unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() };
    let call = TlsCall { ssl, buf, out, flags, _pad: 0, enter_ns };
    if let Some(s) = slot(id as u32) {
        // SAFETY: a TLS_SLOTS value, written only by the owner it now has.
        if unsafe { claim_slot(s, id) } {
            unsafe { (*s).call = call };
            return Ok(0);
        }
    }
    let Some(n) = active(id as u32) else { return Ok(0) };
    // Counted first: a syscall that sees the entry sees the count.
    slot_add(n, 1);
    if TLS_CALLS.insert(&id, &call, 0).is_err() {
        slot_add(n, u64::MAX);
        count(counter::TLS_CALLS_FULL);
    }
    Ok(0)
}

/// Ends thread `id`'s OpenSSL call, if `wanted` accepts it: frees its
/// slot or its [`TLS_CALLS`] entry (another call is left in place).
#[inline(always)]
fn take_call_if(id: u64, wanted: impl Fn(&TlsCall) -> bool) -> Option<TlsCall> {
    if let Some(s) = owned_slot(id) {
        // SAFETY: a TLS_SLOTS value this thread owns.
        unsafe {
            let call = (*s).call;
            if !wanted(&call) {
                return None;
            }
            core::ptr::write_volatile(&mut (*s).id, 0);
            return Some(call);
        }
    }
    // SAFETY: plain-old-data value, copied out before removal.
    let call = unsafe { TLS_CALLS.get(&id) }.copied().filter(|c| wanted(c))?;
    if TLS_CALLS.remove(&id).is_ok() {
        uncount(id);
    }
    Some(call)
}

/// The socket of SSL object `key`, if known and (for one bound by a write)
/// still open: a freed object's address may come back for a new one.
#[inline(always)]
fn socket_of(key: &ProcPtr) -> Option<TlsSock> {
    // SAFETY: plain-old-data value, copied out at once.
    let sock = unsafe { TLS_SOCKS.get(key) }.copied()?;
    if sock.by_write != 0 {
        // SAFETY: plain-old-data value, compared at once.
        let open = unsafe { SOCKS.get(&sock_key(key.tgid, sock.fd)) }.is_some_and(|st| st.sock_id == sock.sock_id);
        if !open {
            lru_remove(&TLS_SOCKS, lru::TLS_SOCKS, key);
            return None;
        }
    }
    Some(sock)
}

fn exit(ctx: &RetProbeContext) -> Res {
    exit_if(ctx, |_| true)
}

/// [`exit`] of the thread's call only if `wanted` accepts it.
#[inline(always)]
fn exit_if(ctx: &RetProbeContext, wanted: impl Fn(&TlsCall) -> bool) -> Res {
    let id = bpf_get_current_pid_tgid();
    let Some(call) = take_call_if(id, wanted) else {
        return Ok(0);
    };
    let ret: i32 = ctx.ret();
    let moved: u64 = if ret <= 0 || call.flags & CALL_HANDSHAKE != 0 {
        0
    } else if call.out != 0 {
        // `_ex` and the internal functions behind both APIs: positive on
        // success, the byte count in the out-parameter.
        // SAFETY: the caller's size_t out-parameter in user memory.
        unsafe { bpf_probe_read_user(call.out as *const u64) }.map_err(|_| 0u32)?
    } else {
        ret as u64
    };
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    let key = ProcPtr::new(tgid, call.ssl);
    // Looked up after a failed call too (a handshake step): an object on
    // memory BIOs is bound by the ciphertext write that follows it.
    let Some(sock) = socket_of(&key) else {
        note_unbound(id, call.ssl);
        if moved > 0 {
            count(counter::TLS_NO_FD);
        }
        return Ok(0);
    };
    if moved == 0 {
        return Ok(0);
    }
    let cfg = config().ok_or(0u32)?;
    if sock.ignored != 0 {
        return Ok(0);
    }
    let inf = Inflight { op: 0, fd: sock.fd, buf: call.buf, iovcnt: 0, sock_id: sock.sock_id, enter_ns: call.enter_ns };
    let flags = (call.flags & !CALL_RECV_INT) | DATA_TLS;
    emit_data::<false>(cfg, tgid, tid, 0, &inf, flags, Src::Buf(call.buf), moved);
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

/// GnuTLS's record receive, `_gnutls_recv_int(session, type, data,
/// data_size, seq, ms)`, which `gnutls_record_recv` and
/// `gnutls_record_recv_seq` lead to (they start with instructions the
/// kernel single-steps; this one with a `push`). Only application data
/// (record type 23) is a read; the agent checks the wrappers pass it so.
#[uprobe]
pub fn kspan_gnutls_recv_int(ctx: ProbeContext) -> u32 {
    const APPLICATION_DATA: u64 = 23;
    match ctx.arg::<u64>(1) {
        Some(t) if t & 0xffff_ffff == APPLICATION_DATA => match enter_at(&ctx, CALL_RECV_INT, 2, None) {
            Ok(r) | Err(r) => r,
        },
        _ => 0,
    }
}

/// `TlsCall::flags` bit of a call [`kspan_gnutls_recv_int`] recorded.
const CALL_RECV_INT: u32 = 1 << 30;

/// The return of `_gnutls_recv_int`: ends the thread's call only if that
/// function's entry recorded it. A record of another type read inside a
/// probed call (the ChangeCipherSpec a TLS 1.2 handshake reads) leaves
/// that call alone.
#[uretprobe]
pub fn kspan_gnutls_recv_ret(ctx: RetProbeContext) -> u32 {
    match exit_if(&ctx, |c| c.flags & CALL_RECV_INT != 0) {
        Ok(r) | Err(r) => r,
    }
}

/// `TlsCall::flags` bit of a handshake step (`SSL_do_handshake`,
/// `gnutls_handshake`): it moves no application data; its syscalls bind
/// the object to its socket (their ciphertext is not reported), or its
/// return leaves the object pending for the write that follows.
const CALL_HANDSHAKE: u32 = 1 << 31;

#[uprobe]
pub fn kspan_ssl_handshake(ctx: ProbeContext) -> u32 {
    match enter(&ctx, CALL_HANDSHAKE, false) {
        Ok(r) | Err(r) => r,
    }
}

/// One return probe for all the functions (the entry remembered what it was).
#[uretprobe]
pub fn kspan_ssl_ret(ctx: RetProbeContext) -> u32 {
    match exit(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// How long after an unbound call its thread's ciphertext write may bind
/// it (an event loop writes at once; this only bounds a stale slot).
const UNBOUND_FOR_NS: u64 = 1_000_000_000;

/// Thread `id`'s call on `ssl` ended with no socket known for the object.
#[inline(always)]
fn note_unbound(id: u64, ssl: u64) {
    if let Some(u) = TLS_UNBOUND.get_ptr_mut(thread_slot(id as u32)) {
        // SAFETY: a map value; a thread sharing the slot at worst replaces
        // it (its write is then not bound) and `id` tells whose it is.
        unsafe { *u = TlsUnbound { id, ssl, ns: aya_ebpf::helpers::bpf_ktime_get_ns() } };
    }
}

/// A write by thread `id` on socket `fd`, not inside an OpenSSL call: if
/// the thread's last call left an SSL object unbound and the bytes start
/// with a TLS record header (`first` reads them), the object is bound to
/// this socket, the socket's syscalls are ignored from now on
/// (`IGNORED_TLS_USER`: they carry ciphertext) and true is returned (this
/// write's bytes are not reported). Costs an array read otherwise.
#[inline(always)]
pub fn bind_unbound(id: u64, fd: u32, st: &SockState, first: impl FnOnce() -> Option<[u8; 3]>) -> bool {
    let Some(u) = TLS_UNBOUND.get_ptr_mut(thread_slot(id as u32)) else { return false };
    // SAFETY: a map value, copied out at once.
    let pending = unsafe { core::ptr::read_volatile(u) };
    if pending.id != id {
        return false;
    }
    // SAFETY: helper without preconditions.
    if unsafe { aya_ebpf::helpers::bpf_ktime_get_ns() }.saturating_sub(pending.ns) > UNBOUND_FOR_NS {
        // SAFETY: a map value; clearing a stale slot.
        unsafe { core::ptr::write_volatile(&mut (*u).id, 0) };
        return false;
    }
    // A record header: content type 20-23 (change cipher spec, alert,
    // handshake, application data), version 3.x (SSL 3 to TLS 1.3).
    let Some([kind, major, minor]) = first() else { return false };
    if !(20..=23).contains(&kind) || major != 3 || minor > 4 {
        return false;
    }
    // SAFETY: a map value of this thread's slot.
    unsafe { core::ptr::write_volatile(&mut (*u).id, 0) };
    let tgid = (id >> 32) as u32;
    let sock = TlsSock { fd, ignored: IGNORED_NO, sock_id: st.sock_id, by_write: 1, _pad: 0 };
    let _ = lru_insert(&TLS_SOCKS, lru::TLS_SOCKS, &ProcPtr::new(tgid, pending.ssl), &sock);
    if let Some(s) = SOCKS.get_ptr_mut(&sock_key(tgid, fd)) {
        // SAFETY: a SOCKS value; `ignored` is an aligned u32 (a racing
        // writer, the agent muting it, leaves one of the two values).
        unsafe {
            if (*s).sock_id == st.sock_id && (*s).ignored == IGNORED_NO {
                core::ptr::write_volatile(&mut (*s).ignored, IGNORED_TLS_USER);
            }
        }
    }
    true
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
    let key = ProcPtr::new(tgid, ssl);
    // SAFETY: plain-old-data value, copied out at once.
    match (fd >= 0).then(|| unsafe { SOCKS.get(&sock_key(tgid, fd as u32)) }.copied()).flatten() {
        Some(st) => {
            let sock = TlsSock { fd: fd as u32, ignored: st.ignored, sock_id: st.sock_id, by_write: 0, _pad: 0 };
            let _ = lru_insert(&TLS_SOCKS, lru::TLS_SOCKS, &key, &sock);
        }
        // Unknown socket: forget what a freed SSL object at this address had.
        None => {
            lru_remove(&TLS_SOCKS, lru::TLS_SOCKS, &key);
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
