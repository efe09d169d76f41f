//! Socket fd numbers a process lets go of with no close call on them:
//! `dup2`/`dup3` onto a socket's fd closes that socket, `close_range`
//! closes a range of fds at once, `exec` closes the close-on-exec ones,
//! and exit closes them all. The close program never sees these; without
//! them, the next file to get such an fd number would be taken for the
//! socket (its bytes reported as the connection's).
//!
//! Guarantees:
//! - After a `dup2`/`dup3` onto a socket's fd, the socket's entry is gone
//!   and its close reported before the call returns to the process; the
//!   same for each socket in the range of a `close_range` (unless it only
//!   marks them close-on-exec), from its entry on.
//! - After an exec, every socket entry of the process whose fd no longer
//!   holds that socket is gone and its close reported before the new
//!   program's first instruction; sockets the new program inherited (not
//!   close-on-exec) are kept.
//! - At a process's exit its socket entries are deleted, so a process that
//!   later gets the same pid meets none of them.
//! - The exec, exit and `close_range` sweeps look at each fd number (of
//!   the range) below the size of the process's fd table (at most
//!   [`MAX_SWEPT_FDS`]), one map lookup each, with `bpf_loop` (5.17+), and
//!   only for a process that has had a socket entry (`SOCK_PROCS`): most
//!   processes never have one. Without `bpf_loop` (the `_compat` programs)
//!   there are no sweeps: the agent's census deletes exited processes'
//!   entries later, and an exec or a `close_range` leaves stale entries
//!   until their fd is closed.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, generated as helpers_raw},
    macros::tracepoint,
    programs::TracePointContext,
};
use kspan_common::{KernelConfig, SockState, counter, lru, sock_key};

use crate::maps::{SOCK_PROCS, SOCKS, count, lru_remove};
use crate::{Res, arg, config, forget_socket, ret, sock};

/// Most fd numbers a sweep looks at (a process whose fd table is larger
/// keeps its entries above this until the census finds them).
pub const MAX_SWEPT_FDS: u32 = 1 << 20;

/// Forgets the socket entry `st` of (`tgid`, `fd`) unless `fd` still holds
/// that socket, reporting its close.
#[inline(always)]
fn forget_if_replaced(cfg: &KernelConfig, tgid: u32, tid: u32, fd: u32, st: &SockState) {
    if !sock::lookup(&cfg.offsets, fd).is_some_and(|s| s.sk == st.sock_id) {
        forget_socket(cfg, tgid, tid, fd, st);
    }
}

fn try_exit_dup(ctx: &TracePointContext) -> Res {
    // dup2 and dup3 return the fd they (re)used.
    let fd = ret(ctx);
    if fd < 0 {
        return Ok(0);
    }
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if tgid == cfg.self_tgid {
        return Ok(0);
    }
    // SAFETY: plain-old-data value, copied out at once.
    if let Some(st) = unsafe { SOCKS.get(&sock_key(tgid, fd as u32)) }.copied() {
        forget_if_replaced(cfg, tgid, tid, fd as u32, &st);
    }
    Ok(0)
}

/// sys_exit of `dup2` and `dup3`.
#[tracepoint]
pub fn kspan_exit_dup(ctx: TracePointContext) -> u32 {
    match try_exit_dup(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// What a sweep does with a socket entry it meets.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Sweep {
    /// After an exec: forget it unless its fd still holds its socket.
    Exec = 0,
    /// At the exit: delete it (the agent forgets the whole process).
    Exit = 1,
    /// `close_range`: forget it and report its close.
    Close = 2,
}

/// One sweep over fd numbers (on the program's stack, handed to each step
/// of `bpf_loop`).
#[repr(C)]
struct SweepState {
    tgid: u32,
    tid: u32,
    what: Sweep,
    /// The first fd number swept.
    first: u32,
}

/// Notes that process `tgid` has a socket entry (so its exec and exit
/// sweep).
#[inline(always)]
pub(crate) fn note_process(tgid: u32) {
    // SAFETY: read-only lookup; a lookup first spares the update (and its
    // bucket lock) for every socket after a process's first.
    if unsafe { SOCK_PROCS.get(&tgid) }.is_none() && SOCK_PROCS.insert(&tgid, &1, 0).is_err() {
        count(counter::SOCK_PROCS_FULL);
    }
}

/// Process `tgid` ended (its exit, without a sweep).
#[inline(always)]
pub(crate) fn forget_process(tgid: u32) {
    // SAFETY: as above: most processes have no entry.
    if unsafe { SOCK_PROCS.get(&tgid) }.is_some() {
        let _ = SOCK_PROCS.remove(&tgid);
    }
}

/// Sweeps the socket entries of the current process at fd numbers
/// `first..=last` (those below its fd table's size; see the module
/// header). Nothing for a process that never had one.
#[inline(always)]
pub(crate) fn sweep(cfg: &KernelConfig, tgid: u32, tid: u32, what: Sweep, first: u32, last: u32) {
    // SAFETY: read-only lookup.
    if unsafe { SOCK_PROCS.get(&tgid) }.is_none() {
        return;
    }
    if what == Sweep::Exit {
        let _ = SOCK_PROCS.remove(&tgid);
    }
    let Some((_, max_fds)) = sock::fd_table(&cfg.offsets) else { return };
    if first >= max_fds || first > last {
        return;
    }
    let last = if last >= max_fds { max_fds - 1 } else { last };
    let mut n = last - first + 1;
    if n > MAX_SWEPT_FDS {
        n = MAX_SWEPT_FDS;
    }
    let mut s = SweepState { tgid, tid, what, first };
    // SAFETY: the helper calls `sweep_step` with a pointer to `s`, which
    // outlives the call.
    unsafe {
        helpers_raw::bpf_loop(n, sweep_step as *mut core::ffi::c_void, (&raw mut s).cast(), 0);
    }
}

/// One fd number of [`sweep`]; returns 1 to stop.
#[inline(always)]
extern "C" fn sweep_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `SweepState` that `sweep` passed to bpf_loop.
    let s = unsafe { &*ctx.cast::<SweepState>() };
    let Some(cfg) = config() else { return 1 };
    let fd = s.first.wrapping_add(i as u32);
    let key = sock_key(s.tgid, fd);
    // SAFETY: a read-only lookup (lockless, where a delete takes the
    // bucket's lock: most fd numbers have no entry); the value is copied.
    let Some(st) = (unsafe { SOCKS.get(&key) }).copied() else { return 0 };
    match s.what {
        Sweep::Exit => lru_remove(&SOCKS, lru::SOCKS, &key),
        Sweep::Exec => forget_if_replaced(cfg, s.tgid, s.tid, fd, &st),
        Sweep::Close => forget_socket(cfg, s.tgid, s.tid, fd, &st),
    }
    0
}

/// `close_range` flag: mark the fds close-on-exec instead of closing them
/// (the exec sweep then finds them).
const CLOSE_RANGE_CLOEXEC: u64 = 1 << 2;

fn try_enter_close_range(ctx: &TracePointContext) -> Res {
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    // close_range(first, last, flags), all unsigned int.
    let (first, last, flags) = (arg(ctx, 0) as u32, arg(ctx, 1) as u32, arg(ctx, 2));
    if tgid != cfg.self_tgid && flags & CLOSE_RANGE_CLOEXEC == 0 {
        sweep(cfg, tgid, tid, Sweep::Close, first, last);
    }
    Ok(0)
}

/// sys_enter of `close_range` (needs `bpf_loop`: not attached without it).
#[tracepoint]
pub fn kspan_enter_close_range(ctx: TracePointContext) -> u32 {
    match try_enter_close_range(&ctx) {
        Ok(r) | Err(r) => r,
    }
}
