//! Process lifecycle: exec (with the file name execve was given, so the
//! agent can decide on a process that is already gone), exit, and fork of
//! a traced process (the child is traced before its first syscall). Exec
//! and exit sweep the process's socket entries first ([`fds::sweep`]). A
//! process exits with its last thread, not its main one ([`group_dead`]).
//! Exec and library-load events wake the agent at once, at most once per
//! CPU per [`PROC_WAKE_GAP_NS`]; the rest are batched like data.

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_RB_FORCE_WAKEUP,
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task, bpf_ktime_get_ns},
    macros::tracepoint,
    programs::TracePointContext,
};
use kspan_common::{EventKind, ExecEvent, KernelConfig, ProcEvent, TRACED_PENDING, counter};

use crate::maps::{EVENTS, PROC_WAKE, TRACED, count};
use crate::{Res, config, fds, field, is_traced, sock, tls, wake_flags};
/// Least time between two forced wake-ups of the agent for process events,
/// per CPU (see [`proc_wake_flags`]).
const PROC_WAKE_GAP_NS: u64 = 5_000_000;

/// Submit flags for a process event. An exec or a library load may have the
/// agent attach TLS probes to a process that just started, so it is woken at
/// once, but each CPU at most once per [`PROC_WAKE_GAP_NS`]: a forced wake-up
/// is a whole drain cycle of the agent (tens of us), which a host starting
/// many short-lived processes would otherwise pay several times per process.
/// Forks and exits, and the events inside the gap, are batched like data.
#[inline(always)]
fn proc_wake_flags(cfg: &KernelConfig, kind: EventKind, size: u64) -> u64 {
    if matches!(kind, EventKind::ProcExec | EventKind::LibLoad)
        && let Some(last) = PROC_WAKE.get_ptr_mut(0)
    {
        // SAFETY: helper without preconditions.
        let now = unsafe { bpf_ktime_get_ns() };
        // SAFETY: this CPU's slot; programs do not migrate while they run.
        unsafe {
            if now.wrapping_sub(*last) >= PROC_WAKE_GAP_NS {
                *last = now;
                return BPF_RB_FORCE_WAKEUP as u64;
            }
        }
    }
    wake_flags(cfg, size)
}

fn proc_event(kind: EventKind, tgid: u32, tid: u32) -> ProcEvent {
    ProcEvent {
        kind: kind as u32,
        _pad: 0,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid,
        tid,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    }
}

pub(crate) fn emit_proc(cfg: &KernelConfig, kind: EventKind, tgid: u32, tid: u32) {
    if let Some(mut entry) = EVENTS.reserve::<ProcEvent>(0) {
        entry.write(proc_event(kind, tgid, tid));
        entry.submit(proc_wake_flags(cfg, kind, core::mem::size_of::<ProcEvent>() as u64));
    } else {
        count(counter::RINGBUF_FULL_CTRL);
    }
}

/// The exec event, with the file name from the tracepoint record
/// (`__data_loc char[] filename` at offset 8: its offset in the low 16 bits).
fn emit_exec(ctx: &TracePointContext, cfg: &KernelConfig, tgid: u32, tid: u32) {
    let Some(mut entry) = EVENTS.reserve::<ExecEvent>(0) else {
        count(counter::RINGBUF_FULL_CTRL);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is the reserved record, written before it is submitted;
    // the name is read with the fault-safe string helper and always ends
    // with a NUL inside the array.
    unsafe {
        (*ev).proc = proc_event(EventKind::ProcExec, tgid, tid);
        let name = &mut (*ev).filename;
        name[0] = 0;
        let loc: u32 = field::<u32>(ctx, 8);
        let src = (ctx.as_ptr() as *const u8).add((loc & 0xffff) as usize);
        if aya_ebpf::helpers::bpf_probe_read_kernel_str_bytes(src, name).is_err() {
            name[0] = 0;
        }
    }
    entry.submit(proc_wake_flags(cfg, EventKind::ProcExec, core::mem::size_of::<ExecEvent>() as u64));
}

/// The exec of a process: with `SWEEP` (`bpf_loop`), the sockets it closed
/// are forgotten first ([`fds::sweep`]).
fn try_exec<const SWEEP: bool>(ctx: &TracePointContext) -> Res {
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    let (tgid, tid) = ((id >> 32) as u32, id as u32);
    if tgid == cfg.self_tgid {
        return Ok(0);
    }
    if SWEEP {
        fds::sweep(cfg, tgid, tid, fds::Sweep::Exec, 0, u32::MAX);
    }
    if cfg.trace_all == 0 {
        // SAFETY: read-only lookup.
        let known = unsafe { TRACED.get(&tgid).is_some() };
        if cfg.exe_filter != 0 {
            if !known && TRACED.insert(&tgid, &TRACED_PENDING, 0).is_err() {
                count(counter::TRACED_FULL);
            }
        } else if !known {
            // Selection by pid alone: forks of traced processes are traced
            // from task_newtask on, so a process not traced now descends from
            // no selected pid, and exec does not change its ancestry. Nothing
            // for the agent to decide: no event, no wake-up (a busy host runs
            // many short-lived processes).
            return Ok(0);
        }
    }
    emit_exec(ctx, cfg, tgid, tid);
    Ok(0)
}

/// Whether the exiting thread (`pid` of `tgid`) is its process's last: the
/// tracepoint's `group_dead` where the kernel has it, else the count of
/// the thread group's threads that have not begun to exit
/// (`task->signal->live`, decremented before the tracepoint fires), else
/// (neither known) whether it is the main thread. A main thread may end
/// first (pthread_exit) while the others go on using the process's sockets;
/// the old main thread of a process that a non-main thread exec'd ends
/// inside the exec. Two threads ending at once may both read a count of 0:
/// both then sweep, which only repeats the work.
#[inline(always)]
fn group_dead(ctx: &TracePointContext, cfg: &KernelConfig, tgid: u32, pid: u32) -> bool {
    if cfg.exit_group_dead_off != u32::MAX {
        // SAFETY: the offset comes from the tracepoint's format file.
        if let Ok(dead) = unsafe { ctx.read_at::<u8>(cfg.exit_group_dead_off as usize) } {
            return dead != 0;
        }
    }
    let o = &cfg.offsets;
    if o.task_signal != u32::MAX && o.signal_live != u32::MAX {
        // SAFETY: both reads go through bpf_probe_read_kernel.
        let live = unsafe {
            sock::rd::<u64>(bpf_get_current_task(), o.task_signal).and_then(|s| sock::rd::<i32>(s, o.signal_live))
        };
        if let Some(live) = live {
            return live <= 0;
        }
    }
    pid == tgid
}

/// The exit of a process (its last thread, [`group_dead`]): with `SWEEP`,
/// its socket entries are deleted ([`fds::sweep`]).
fn try_exit<const SWEEP: bool>(ctx: &TracePointContext) -> Res {
    let cfg = config().ok_or(0u32)?;
    let id = bpf_get_current_pid_tgid();
    let (tgid, pid) = ((id >> 32) as u32, id as u32);
    // A thread that dies inside an OpenSSL call never returns from it.
    tls::forget_thread(id);
    if !group_dead(ctx, cfg, tgid, pid) {
        return Ok(0);
    }
    if SWEEP {
        fds::sweep(cfg, tgid, pid, fds::Sweep::Exit, 0, u32::MAX);
    } else {
        fds::forget_process(tgid);
    }
    if !is_traced(cfg, tgid) {
        return Ok(0);
    }
    if cfg.trace_all == 0 {
        let _ = TRACED.remove(&tgid);
    }
    emit_proc(cfg, EventKind::ProcExit, tgid, pid);
    Ok(0)
}

macro_rules! lifecycle {
    ($name:ident, $try:ident, $sweep:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            match $try::<$sweep>(&ctx) {
                Ok(r) | Err(r) => r,
            }
        }
    };
}

lifecycle!(kspan_sched_exec, try_exec, true);
lifecycle!(kspan_sched_exec_compat, try_exec, false);
lifecycle!(kspan_sched_exit, try_exit, true);
lifecycle!(kspan_sched_exit_compat, try_exit, false);

/// `CLONE_THREAD` from linux/sched.h: the new task joins the caller's
/// thread group (already traced by tgid).
const CLONE_THREAD: u64 = 0x0001_0000;

/// task_newtask runs in the parent while the child is not yet runnable, so
/// a child of a traced process is traced before its first syscall.
fn try_newtask(ctx: &TracePointContext) -> Res {
    let cfg = config().ok_or(0u32)?;
    if cfg.trace_all != 0 {
        return Ok(0);
    }
    // SAFETY: the offset comes from the tracepoint's format file.
    let flags = unsafe { ctx.read_at::<u64>(cfg.newtask_flags_off as usize) }.map_err(|_| 0u32)?;
    if flags & CLONE_THREAD != 0 {
        return Ok(0);
    }
    let id = bpf_get_current_pid_tgid();
    let tgid = (id >> 32) as u32;
    // SAFETY: plain u8 value copied out.
    let Some(v) = (unsafe { TRACED.get(&tgid) }).copied() else {
        return Ok(0);
    };
    // SAFETY: as above.
    let child = unsafe { ctx.read_at::<i32>(cfg.newtask_pid_off as usize) }.map_err(|_| 0u32)? as u32;
    if TRACED.insert(&child, &v, 0).is_err() {
        count(counter::TRACED_FULL);
        return Ok(0);
    }
    emit_proc(cfg, EventKind::ProcFork, child, tgid);
    Ok(0)
}

#[tracepoint]
pub fn kspan_task_newtask(ctx: TracePointContext) -> u32 {
    match try_newtask(&ctx) {
        Ok(r) | Err(r) => r,
    }
}
