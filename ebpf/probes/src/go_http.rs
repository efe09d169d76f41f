//! Go's net/http client: a uprobe on `net/http.(*persistConn).roundTrip`
//! remembers which goroutine started the round trip on each HTTP/1
//! connection. The `Transport` writes the request on its connection's write
//! goroutine and reads the response on its read goroutine, so the calls'
//! own goroutines say nothing about the request the caller serves; with
//! this, a handler's outgoing HTTP call nests under its request (see
//! `goroutine.rs`).
//!
//! Guarantees:
//! - Only selected processes (the `TRACED` check), on the stack check's
//!   emulated jump like the Go TLS probes (second pass only when the stack
//!   grows).
//! - The connection is `persistConn.conn` (a `net.Conn` interface after
//!   `alt`, `t` and `cacheKey`: offset 80 since Go 1.12), a `*net.TCPConn`
//!   or a `*tls.Conn` over one. An entry is written only when one reading
//!   gives a known client socket of the process; its socket id is kept, so
//!   a reused descriptor never inherits it. Another layout gives no entry:
//!   the calls then count for their own goroutines.
//! - Bounded: an LRU map of [`MAX_GO_CONNS`](kspan_common::MAX_GO_CONNS)
//!   connections; each round trip overwrites its connection's entry.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::uprobe, programs::ProbeContext};

use kspan_common::{ROLE_CLIENT, sock_key};

use crate::Res;
use crate::go_tls::{conn_fd, go_entry, net_conn_fd};
use crate::maps::{GO_CONN_CALLER, GoCaller, SOCKS};

/// Offset of the data word of `persistConn.conn`.
const PCONN_CONN_DATA: u64 = 80 + 8;

/// A client socket of `tgid` at `fd`: (fd, its socket id).
#[inline(always)]
fn client_socket(tgid: u32, fd: Option<i64>) -> Option<(u32, u64)> {
    let fd = u32::try_from(fd?).ok()?;
    // SAFETY: plain value copied out.
    let st = unsafe { SOCKS.get(&sock_key(tgid, fd)) }.copied()?;
    (st.role == ROLE_CLIENT).then_some((fd, st.sock_id))
}

fn round_trip(ctx: &ProbeContext) -> Res {
    let (_, tgid, _) = go_entry(ctx).ok_or(0u32)?;
    // SAFETY: the probe's saved user registers: the receiver in RAX, the
    // goroutine in R14.
    let (pc, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).r14) };
    // SAFETY: user memory read with the fault-safe helper.
    let data: u64 = unsafe { bpf_probe_read_user((pc + PCONN_CONN_DATA) as *const u64) }.map_err(|_| 0u32)?;
    // A plain connection, else TLS over one.
    let (fd, sock_id) =
        client_socket(tgid, net_conn_fd(data)).or_else(|| client_socket(tgid, conn_fd(data))).ok_or(0u32)?;
    let _ = GO_CONN_CALLER.insert(&sock_key(tgid, fd), &GoCaller { g, sock_id }, 0);
    Ok(0)
}

/// Stack check of `net/http.(*persistConn).roundTrip`.
#[uprobe]
pub fn kspan_go_round_trip(ctx: ProbeContext) -> u32 {
    match round_trip(&ctx) {
        Ok(r) | Err(r) => r,
    }
}
