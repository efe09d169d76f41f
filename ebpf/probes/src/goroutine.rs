//! The goroutine behind a data call of a Go program, so the agent nests a
//! Go server's outgoing calls under the request the same goroutine serves
//! (a goroutine moves between threads; a thread runs many goroutines).
//!
//! Guarantees:
//! - Only processes the agent put in `GO_PROCS` pay for it: one hash lookup
//!   per data event for the others, none per syscall that makes no event.
//! - Go on linux/amd64 keeps the running goroutine's `g` in thread-local
//!   storage, at a fixed offset below the thread's `fsbase` (-8, or what the
//!   executable's TLS segment says; the agent computes it). The pointer is
//!   only believed when the `g` it names owns the stack the call runs on
//!   (`g.stack.lo <= sp < g.stack.hi`: `g.stack` is the first field of `g`
//!   in every Go release). A thread running C code (cgo), the scheduler's
//!   own stack (`g0`), or a wrong offset gives 0: the agent then keys the
//!   call by its thread, as for any other program.
//! - A Go HTTP client connection whose current round trip started on
//!   another goroutine (`go_http.rs`: net/http's `Transport` writes the
//!   request and reads the response on goroutines of its own) reports the
//!   round trip's caller instead, and so does a goroutine writing an HTTP/2
//!   client request for its caller: the client call nests under the
//!   request that caller serves.
//! - Every read is fault-safe (a bad address is an error, not a fault).

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_user};
use kspan_common::{KernelConfig, PT_REGS_SP, sock_key};

use crate::maps::{GO_ACTS_FOR, GO_CONN_CALLER, GO_PROCS, ProcPtr};

/// The goroutine a data call of Go program `tgid` on socket (`fd`,
/// `sock_id`) counts for (its `g` address), or 0.
#[inline(always)]
pub(crate) fn current(cfg: &KernelConfig, tgid: u32, fd: u32, sock_id: u64) -> u64 {
    if !cfg.offsets.goroutines() {
        return 0;
    }
    // SAFETY: plain value copied out.
    let Some(go) = (unsafe { GO_PROCS.get(&tgid) }).copied() else { return 0 };
    if let Some(g) = caller(tgid, fd, sock_id) {
        return g;
    }
    read_current(cfg, go.g_offset).map(|g| acting_for(tgid, g)).unwrap_or(0)
}

/// The goroutine a call of goroutine `g` on socket (`fd`, `sock_id`) counts
/// for: the caller of the round trip under way on that HTTP/1 client
/// socket, else the one `g` acts for (an HTTP/2 client request's writer),
/// else `g`.
#[inline(always)]
pub(crate) fn counted(tgid: u32, fd: u32, sock_id: u64, g: u64) -> u64 {
    caller(tgid, fd, sock_id).unwrap_or_else(|| acting_for(tgid, g))
}

/// The goroutine whose round trip is under way on an HTTP client socket.
#[inline(always)]
fn caller(tgid: u32, fd: u32, sock_id: u64) -> Option<u64> {
    // SAFETY: plain value copied out.
    let c = unsafe { GO_CONN_CALLER.get(&sock_key(tgid, fd)) }.copied()?;
    (c.sock_id == sock_id && c.g != 0).then_some(c.g)
}

/// The goroutine `g` acts for while it writes an HTTP/2 client request.
#[inline(always)]
fn acting_for(tgid: u32, g: u64) -> u64 {
    // SAFETY: plain value copied out.
    unsafe { GO_ACTS_FOR.get(&ProcPtr::new(tgid, g)) }.copied().unwrap_or(g)
}

#[inline(always)]
fn read_current(cfg: &KernelConfig, tls_off: i64) -> Option<u64> {
    // SAFETY: kernel and user memory read with the fault-safe helpers; the
    // saved registers through the BTF pointer at a constant offset (the
    // agent set `task_fsbase` only when BTF confirmed the x86_64 layout).
    unsafe {
        let task = bpf_get_current_task() as *const u8;
        let fsbase: u64 = bpf_probe_read_kernel(task.add(cfg.offsets.task_fsbase as usize).cast::<u64>()).ok()?;
        if fsbase == 0 {
            return None;
        }
        let g: u64 = bpf_probe_read_user(fsbase.wrapping_add(tls_off as u64) as *const u64).ok()?;
        if g == 0 {
            return None;
        }
        let [lo, hi]: [u64; 2] = bpf_probe_read_user(g as *const [u64; 2]).ok()?;
        let regs =
            aya_ebpf::helpers::generated::bpf_task_pt_regs(aya_ebpf::helpers::generated::bpf_get_current_task_btf())
                as *const u8;
        if regs.is_null() {
            return None;
        }
        let sp = core::ptr::read_volatile(regs.add(PT_REGS_SP as usize).cast::<u64>());
        (lo <= sp && sp < hi).then_some(g)
    }
}
