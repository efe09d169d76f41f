//! Vectored calls (readv/writev/recvmsg/sendmsg): the bytes of a call's
//! iovecs joined into this CPU's scratch payload, so one call is one event.
//!
//! Guarantees: at most `cap` bytes are copied, each inside the scratch
//! buffer where the verifier can see it; the walk stops at the first iovec
//! that does not fit whole (what follows would not be contiguous) or cannot
//! be read, so the payload is always a prefix of what the call moved.

use aya_ebpf::helpers::generated::{self as helpers_raw, bpf_probe_read_user};
use kspan_common::{COMPAT_IOVECS, DATA_TAIL, MAX_CAPTURE, MAX_IOVECS, counter};

use crate::count;
use crate::maps::{MAX_COPY_AT_OFFSET, SCRATCH};

/// User-space `struct iovec`.
#[repr(C)]
#[derive(Clone, Copy)]
struct Iovec {
    base: u64,
    len: u64,
}

/// Where [`copy_iovecs`] is in its walk over a call's iovecs (on the
/// program's stack, handed to each step of `bpf_loop`).
#[repr(C)]
struct IovWalk {
    iov: u64,
    n: u64,
    len: u64,
    cap: u64,
    captured: u64,
    consumed: u64,
}

/// Copies into this CPU's scratch payload the first bytes that the iovecs
/// at `iov` (`n` of them) held, at most `cap` bytes, and returns its length:
/// the iovecs in order, stopping at the first one that does not fit whole
/// (what follows would not be contiguous) or cannot be read, or once `cap`
/// bytes are copied. Up to `MAX_IOVECS` (all a call can have) are looked at. One
/// iovec contributes at most `MAX_COPY_AT_OFFSET` bytes (16 KiB less 48),
/// which only shortens captures configured at the 16 KiB maximum.
///
/// The walk is a `bpf_loop` (kernel 5.17+): the verifier checks one step
/// once, where an unrolled loop over 32 or more iovecs exceeded its budget
/// (gRPC writes a small message in 25 iovecs).
#[inline(always)]
pub(crate) fn copy_iovecs(iov: u64, n: u64, len: u64, cap: u64) -> u64 {
    let mut walk = IovWalk { iov, n, len, cap, captured: 0, consumed: 0 };
    // SAFETY: the helper calls `iov_step` with a pointer to `walk`, which
    // outlives the call.
    unsafe {
        helpers_raw::bpf_loop(MAX_IOVECS, iov_step as *mut core::ffi::c_void, (&raw mut walk).cast(), 0);
    }
    walk.captured
}

/// [`copy_iovecs`] for kernels without `bpf_loop` (before 5.17): the same
/// walk unrolled over the first [`COMPAT_IOVECS`] iovecs only (bytes in later
/// ones count as not captured; more would exceed the verifier's budget).
#[inline(always)]
pub(crate) fn copy_iovecs_unrolled(iov: u64, n: u64, len: u64, cap: u64) -> u64 {
    let mut walk = IovWalk { iov, n, len, cap, captured: 0, consumed: 0 };
    for i in 0..COMPAT_IOVECS {
        if iov_step(i, (&raw mut walk).cast()) != 0 {
            break;
        }
    }
    walk.captured
}

/// Where [`copy_iov_tail`] is in its walk (on the program's stack, handed to
/// each step of `bpf_loop`).
#[repr(C)]
struct TailWalk {
    iov: u64,
    n: u64,
    /// Offset of the tail's first byte among the bytes the call moved.
    start: u64,
    /// Payload offset the tail goes to (right after the prefix).
    dst: u64,
    /// Bytes of the iovecs before the current one.
    at: u64,
    copied: u64,
    want: u64,
}

/// Copies the last bytes a vectored call moved (up to `DATA_TAIL`) right
/// after its `head`-byte prefix in this CPU's scratch payload, when it moved
/// more than that prefix; returns how many (0 unless all of them could be
/// read: the tail is contiguous or absent). A `bpf_loop` walk like
/// [`copy_iovecs`]: iovecs before the tail are only added up.
#[inline(always)]
pub(crate) fn copy_iov_tail(iov: u64, n: u64, len: u64, head: u64) -> u64 {
    let Some(mut walk) = TailWalk::new(iov, n, len, head) else { return 0 };
    // SAFETY: the helper calls `tail_step` with a pointer to `walk`, which
    // outlives the call.
    unsafe {
        helpers_raw::bpf_loop(MAX_IOVECS, tail_step as *mut core::ffi::c_void, (&raw mut walk).cast(), 0);
    }
    walk.copied_all()
}

/// [`copy_iov_tail`] for kernels without `bpf_loop`: the same walk unrolled
/// over the first [`COMPAT_IOVECS`] iovecs, so a tail that ends in a later
/// one is not copied (all or none, as there).
#[inline(always)]
pub(crate) fn copy_iov_tail_unrolled(iov: u64, n: u64, len: u64, head: u64) -> u64 {
    let Some(mut walk) = TailWalk::new(iov, n, len, head) else { return 0 };
    for i in 0..COMPAT_IOVECS {
        if tail_step(i, (&raw mut walk).cast()) != 0 {
            break;
        }
    }
    walk.copied_all()
}

impl TailWalk {
    /// The walk for a call that moved `len` bytes of which `head` are
    /// captured; `None` when nothing lies past the prefix.
    #[inline(always)]
    fn new(iov: u64, n: u64, len: u64, head: u64) -> Option<Self> {
        if len <= head || head > MAX_CAPTURE as u64 {
            return None;
        }
        let mut want = len - head;
        if want > DATA_TAIL as u64 {
            want = DATA_TAIL as u64;
        }
        Some(TailWalk { iov, n, start: len - want, dst: head, at: 0, copied: 0, want })
    }

    /// The tail's length if all of it was copied, else 0.
    #[inline(always)]
    fn copied_all(&self) -> u64 {
        if self.copied == self.want { self.want } else { 0 }
    }
}

/// One step of [`copy_iov_tail`]: iovec `i`; returns 1 to stop.
#[inline(always)]
extern "C" fn tail_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `TailWalk` that `copy_iov_tail` passed to bpf_loop.
    let w = unsafe { &mut *ctx.cast::<TailWalk>() };
    if i >= w.n || w.copied >= w.want {
        return 1;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: reading the caller's iovec array from user memory.
    let Ok(v) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user((w.iov + i * 16) as *const Iovec) }) else {
        return 1;
    };
    let end = w.at + v.len;
    let pos = w.start + w.copied;
    if end <= pos {
        w.at = end;
        return 0;
    }
    // The first iovec the tail touches starts before it, the next ones
    // where it goes on: pos < w.at would be a tail not contiguous.
    if pos < w.at {
        return 1;
    }
    let from = pos - w.at;
    let mut take = end - pos;
    if take > w.want - w.copied {
        take = w.want - w.copied;
    }
    // Bounds the verifier can see: off <= MAX_CAPTURE + DATA_TAIL, take <= DATA_TAIL.
    if take > DATA_TAIL as u64 {
        take = DATA_TAIL as u64;
    }
    let off = w.dst + w.copied;
    if off > (MAX_CAPTURE + DATA_TAIL) as u64 {
        return 1;
    }
    // SAFETY: off + take < SCRATCH_PAYLOAD, inside this CPU's scratch buffer.
    if take > 0
        && unsafe {
            let payload = (*scratch).payload.as_mut_ptr();
            bpf_probe_read_user(payload.add(off as usize).cast(), take as u32, (v.base + from) as *const _)
        } != 0
    {
        return 1;
    }
    w.copied += take;
    w.at = end;
    0
}

/// One step of [`copy_iovecs`]: copies iovec `i`; returns 1 to stop.
#[inline(always)]
extern "C" fn iov_step(i: u64, ctx: *mut core::ffi::c_void) -> i64 {
    // SAFETY: `ctx` is the `IovWalk` that `copy_iovecs` passed to bpf_loop.
    let w = unsafe { &mut *ctx.cast::<IovWalk>() };
    if i >= w.n || w.consumed >= w.len || w.captured >= w.cap {
        return 1;
    }
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else { return 1 };
    // SAFETY: reading the caller's iovec array from user memory.
    let Ok(v) = (unsafe { aya_ebpf::helpers::bpf_probe_read_user((w.iov + i * 16) as *const Iovec) }) else {
        return 1;
    };
    let mut seg = v.len;
    if seg > w.len - w.consumed {
        seg = w.len - w.consumed;
    }
    let mut take = seg;
    if take > w.cap - w.captured {
        take = w.cap - w.captured;
    }
    // Bounds the verifier can see: off < MAX_CAPTURE, take <= MAX_COPY_AT_OFFSET.
    if take > MAX_COPY_AT_OFFSET as u64 {
        take = MAX_COPY_AT_OFFSET as u64;
    }
    let off = w.captured;
    if off >= MAX_CAPTURE as u64 {
        return 1;
    }
    // SAFETY: off + take < SCRATCH_PAYLOAD, inside this CPU's scratch buffer.
    if take > 0
        && unsafe {
            let payload = (*scratch).payload.as_mut_ptr();
            bpf_probe_read_user(payload.add(off as usize).cast(), take as u32, v.base as *const _)
        } != 0
    {
        count(counter::READ_USER_FAILED);
        return 1;
    }
    w.captured += take;
    w.consumed += seg;
    i64::from(take < seg)
}
