//! Go's net/http and grpc-go, where goroutines do not say which request a
//! call belongs to (see `goroutine.rs`):
//! - HTTP/1 client: a uprobe on `net/http.(*persistConn).roundTrip`
//!   remembers which goroutine started the round trip on each connection
//!   (the `Transport` writes the request on its connection's write goroutine
//!   and reads the response on its read goroutine).
//! - HTTP/2 client: `(*http2ClientConn).RoundTrip` runs on the caller's
//!   goroutine and starts a goroutine (`(*http2clientStream).doRequest`)
//!   that writes the request and lives until its response is read. Uprobes
//!   on both pass the caller on by the request pointer, and while
//!   `doRequest` runs (probes on each of its `RET`s end it) its goroutine's
//!   calls count for the caller (`GO_ACTS_FOR`).
//! - HTTP/2 server: one goroutine per connection reads every request, and
//!   each stream's handler runs on a goroutine of its own
//!   (`(*serverConn).runHandler`; grpc-go: `(*Server).handleStream`). A
//!   uprobe there reports (socket, stream id, handler goroutine) to the
//!   agent, which keys that stream's server span by the handler's
//!   goroutine.
//! - grpc-go client: one goroutine per connection (`loopyWriter`) writes
//!   every call's frames, but the call's stream is created on the caller's
//!   goroutine (`(*http2Client).NewStream`, which also gives it its id). A
//!   uprobe on each of that function's `RET`s reports (socket, stream id,
//!   caller goroutine), and the agent keys that call's client span by the
//!   caller.
//!
//! Guarantees:
//! - Only selected processes (the `TRACED` check), and for the HTTP/2
//!   reports and aliases only those whose data calls carry goroutines
//!   (`GO_PROCS`); probes sit on the stack check's emulated jump like the
//!   Go TLS probes (second pass only when the stack grows).
//! - A connection is a `net.Conn` whose data word is a `*net.TCPConn` or a
//!   `*tls.Conn` over one, and counts only when that reading gives a known
//!   socket of the process in the expected role, or of no known role (one
//!   opened before kspan started; the agent checks a stream report against
//!   the role it parsed), its socket id kept, so a reused descriptor never
//!   inherits anything. Another layout gives no
//!   entry or report: the calls then count for their own goroutines, and a
//!   server's streams keep their reading goroutine (the process is then
//!   seen as multiplexed), never a wrong request.
//! - Where the connection is: `persistConn.conn` at 80 (since Go 1.12);
//!   `serverConn.conn` after `srv` and `hs`, at 16 while `hs` is a
//!   `*http.Server` (net/http's bundled copy, golang.org/x/net/http2) and
//!   at 24 where it is an interface (the in-tree `net/http/internal/http2`:
//!   one program per layout, the agent attaches the one of the function's
//!   package); grpc-go's `http2Server.conn` at the offset the agent found
//!   in the executable's DWARF (`GoProc::grpc_conn`; none: no report).
//! - A stream is reported only when it reads back consistently: net/http's
//!   `rw.rws.stream.sc` is the receiver (`stream` starts with `sc` then
//!   `id` in every release); grpc-go's `stream.st` is the transport the
//!   handler was given (both interface words; the agent checked in DWARF
//!   that `Stream` starts with `id` and `st`); a grpc-go client's stream is
//!   the non-nil result of `NewStream` (its `id` first, checked in DWARF
//!   too; its transport at `Stream.ct`, that transport's `conn` at the
//!   offset DWARF gives: `GoProc::grpc_stream_ct`, `grpc_client_conn`). A
//!   lost record (ring buffer full) is counted.
//! - A writer acts for its caller only between `doRequest`'s start and a
//!   `RET` of it; the agent attaches the entry probe only after every `RET`
//!   probe, so a goroutine never keeps a caller after it ended.
//! - Bounded: LRU maps of [`MAX_GO_CONNS`](kspan_common::MAX_GO_CONNS)
//!   HTTP/1 client connections (each round trip overwrites its
//!   connection's entry) and of
//!   [`MAX_GO_H2_REQUESTS`](kspan_common::MAX_GO_H2_REQUESTS) HTTP/2
//!   client requests and writing goroutines each. A request whose
//!   `RoundTrip` was not seen (its entry evicted) gives its writer no
//!   caller: its calls then count for the writer itself, which serves no
//!   request.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_user},
    macros::uprobe,
    programs::ProbeContext,
};

use kspan_common::{
    EventKind, GoStreamEvent, KernelConfig, NO_OFFSET, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, counter, lru, sock_key,
};

use crate::go_tls::{conn_fd, go_entry, go_traced, net_conn_fd};
use crate::maps::{
    EVENTS, GO_ACTS_FOR, GO_CONN_CALLER, GO_H2_REQUESTS, GO_PROCS, GoCaller, ProcPtr, SOCKS, count, lru_insert,
    lru_remove,
};
use crate::{Res, wake_flags};

/// Offset of the data word of `persistConn.conn`.
const PCONN_CONN_DATA: u64 = 80 + 8;

/// Reads a user word.
#[inline(always)]
fn word(at: u64) -> Result<u64, u32> {
    // SAFETY: user memory read with the fault-safe helper.
    unsafe { bpf_probe_read_user(at as *const u64) }.map_err(|_| 0u32)
}

/// A socket of `tgid` at `fd` in `role`, or of no known role (opened
/// before kspan started: no accept or connect seen): (fd, its socket id).
#[inline(always)]
fn socket(tgid: u32, fd: Option<i64>, role: u32) -> Option<(u32, u64)> {
    let fd = u32::try_from(fd?).ok()?;
    // SAFETY: plain value copied out.
    let st = unsafe { SOCKS.get(&sock_key(tgid, fd)) }.copied()?;
    (st.role == role || st.role == ROLE_UNKNOWN).then_some((fd, st.sock_id))
}

/// The socket under the `net.Conn` whose data word is `data`: a plain
/// connection, else TLS over one.
#[inline(always)]
fn net_conn_socket(tgid: u32, data: u64, role: u32) -> Option<(u32, u64)> {
    socket(tgid, net_conn_fd(data), role).or_else(|| socket(tgid, conn_fd(data), role))
}

fn round_trip(ctx: &ProbeContext) -> Res {
    let (_, tgid, _) = go_entry(ctx).ok_or(0u32)?;
    // SAFETY: the probe's saved user registers: the receiver in RAX, the
    // goroutine in R14.
    let (pc, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).r14) };
    let (fd, sock_id) = net_conn_socket(tgid, word(pc + PCONN_CONN_DATA)?, ROLE_CLIENT).ok_or(0u32)?;
    let _ = lru_insert(&GO_CONN_CALLER, lru::GO_CONN_CALLER, &sock_key(tgid, fd), &GoCaller { g, sock_id });
    Ok(0)
}

/// Stack check of `net/http.(*persistConn).roundTrip`.
#[uprobe]
pub fn kspan_go_round_trip(ctx: ProbeContext) -> u32 {
    match round_trip(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// Whether the data calls of `tgid` carry goroutines (`GO_PROCS`): the
/// uprobes are on the file, and other processes running it may be keyed by
/// thread.
#[inline(always)]
fn keyed_by_goroutine(tgid: u32) -> bool {
    // SAFETY: read-only lookup.
    unsafe { GO_PROCS.get(&tgid) }.is_some()
}

fn h2_round_trip(ctx: &ProbeContext) -> Res {
    let (_, tgid, _) = go_entry(ctx).ok_or(0u32)?;
    if !keyed_by_goroutine(tgid) {
        return Ok(0);
    }
    // SAFETY: the probe's saved user registers: the request in RBX, the
    // calling goroutine in R14.
    let (req, g) = unsafe { ((*ctx.regs).rbx, (*ctx.regs).r14) };
    let _ = lru_insert(&GO_H2_REQUESTS, lru::GO_H2_REQUESTS, &ProcPtr::new(tgid, req), &g);
    Ok(0)
}

/// Stack check of net/http's HTTP/2 client `(*ClientConn).RoundTrip`.
#[uprobe]
pub fn kspan_go_h2_round_trip(ctx: ProbeContext) -> u32 {
    match h2_round_trip(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn h2_do_request(ctx: &ProbeContext) -> Res {
    let (_, tgid, _) = go_entry(ctx).ok_or(0u32)?;
    // SAFETY: the probe's saved user registers: the request in RBX, the
    // writing goroutine in R14.
    let (req, g) = unsafe { ((*ctx.regs).rbx, (*ctx.regs).r14) };
    let key = ProcPtr::new(tgid, req);
    // SAFETY: plain value copied out before removal.
    let caller = unsafe { GO_H2_REQUESTS.get(&key) }.copied().ok_or(0u32)?;
    lru_remove(&GO_H2_REQUESTS, lru::GO_H2_REQUESTS, &key);
    if caller != g {
        let _ = lru_insert(&GO_ACTS_FOR, lru::GO_ACTS_FOR, &ProcPtr::new(tgid, g), &caller);
    }
    Ok(0)
}

/// Stack check of `(*clientStream).doRequest`, on the goroutine that
/// writes the request.
#[uprobe]
pub fn kspan_go_h2_do_request(ctx: ProbeContext) -> u32 {
    match h2_do_request(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// Each `RET` of `(*clientStream).doRequest`: its goroutine acts for
/// itself again (a `g` is reused by later goroutines).
#[uprobe]
pub fn kspan_go_h2_do_request_ret(ctx: ProbeContext) -> u32 {
    let tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
    // SAFETY: the probe's saved user registers: the goroutine in R14.
    let g = unsafe { (*ctx.regs).r14 };
    lru_remove(&GO_ACTS_FOR, lru::GO_ACTS_FOR, &ProcPtr::new(tgid, g));
    0
}

/// A stream handler starts: `CONN` is the offset of the data word of
/// `serverConn.conn`.
#[inline(always)]
fn h2_handler<const CONN: u64>(ctx: &ProbeContext) -> Res {
    let (cfg, tgid, tid) = go_entry(ctx).ok_or(0u32)?;
    if !keyed_by_goroutine(tgid) {
        return Ok(0);
    }
    // SAFETY: the probe's saved user registers: the receiver (`sc`) in RAX,
    // the first argument (`rw *responseWriter`) in RBX, the goroutine in R14.
    let (sc, rw, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).rbx, (*ctx.regs).r14) };
    // rw.rws (first field), rws.stream (first field), stream.sc, stream.id.
    let stream = word(word(rw)?)?;
    if word(stream)? != sc {
        return Ok(0);
    }
    let id = word(stream + 8)? as u32;
    let data = word(sc + CONN)?;
    report_stream(cfg, (tgid, tid), ROLE_SERVER, data, id, g)
}

/// Reports that goroutine `g` serves `stream` on the server connection
/// (`role` [`ROLE_SERVER`]), or made the call on it (a client connection),
/// whose `net.Conn` data word is `conn`.
#[inline(always)]
fn report_stream(cfg: &KernelConfig, (tgid, tid): (u32, u32), role: u32, conn: u64, stream: u32, g: u64) -> Res {
    let (fd, sock_id) = net_conn_socket(tgid, conn, role).ok_or(0u32)?;
    let Some(mut entry) = EVENTS.reserve::<GoStreamEvent>(0) else {
        count(counter::RINGBUF_FULL_CTRL);
        return Ok(0);
    };
    entry.write(GoStreamEvent {
        kind: EventKind::GoStream as u32,
        stream,
        // SAFETY: helper without preconditions.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        tgid,
        tid,
        fd,
        role,
        sock_id,
        goroutine: g,
    });
    entry.submit(wake_flags(cfg, core::mem::size_of::<GoStreamEvent>() as u64));
    Ok(0)
}

/// Stack check of an HTTP/2 server's `(*serverConn).runHandler`, on the
/// new goroutine of a stream's handler: `serverConn.conn` at 16.
#[uprobe]
pub fn kspan_go_h2_handler(ctx: ProbeContext) -> u32 {
    match h2_handler::<{ 16 + 8 }>(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

/// The same where `serverConn.hs` is an interface: `conn` at 24.
#[uprobe]
pub fn kspan_go_h2_handler_cfg(ctx: ProbeContext) -> u32 {
    match h2_handler::<{ 24 + 8 }>(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn grpc_handler(ctx: &ProbeContext) -> Res {
    let (cfg, tgid, tid) = go_entry(ctx).ok_or(0u32)?;
    // SAFETY: plain value copied out.
    let go = unsafe { GO_PROCS.get(&tgid) }.copied().ok_or(0u32)?;
    if go.grpc_conn == NO_OFFSET {
        return Ok(0);
    }
    // SAFETY: the probe's saved user registers: the transport argument (an
    // interface: its itab and data words) in RBX and RCX, the stream in RDI,
    // the goroutine in R14.
    let (itab, t, stream, g) = unsafe { ((*ctx.regs).rbx, (*ctx.regs).rcx, (*ctx.regs).rdi, (*ctx.regs).r14) };
    // `Stream` starts with `id`, then `st`: the very transport passed in.
    if word(stream + 8)? != itab || word(stream + 16)? != t {
        return Ok(0);
    }
    let id = word(stream)? as u32;
    let conn = word(t + u64::from(go.grpc_conn) + 8)?;
    report_stream(cfg, (tgid, tid), ROLE_SERVER, conn, id, g)
}

/// Stack check of grpc-go's `(*Server).handleStream`, on the goroutine
/// that serves the stream.
#[uprobe]
pub fn kspan_go_grpc_handler(ctx: ProbeContext) -> u32 {
    match grpc_handler(&ctx) {
        Ok(r) | Err(r) => r,
    }
}

fn grpc_new_stream_ret(ctx: &ProbeContext) -> Res {
    let (cfg, tgid, tid) = go_traced().ok_or(0u32)?;
    // SAFETY: plain value copied out.
    let go = unsafe { GO_PROCS.get(&tgid) }.copied().ok_or(0u32)?;
    if go.grpc_client_conn == NO_OFFSET || go.grpc_stream_ct == NO_OFFSET {
        return Ok(0);
    }
    // SAFETY: the probe's saved user registers at a `RET`: the results
    // (`*Stream`, then the error interface) from RAX, the goroutine in R14.
    let (stream, g) = unsafe { ((*ctx.regs).rax, (*ctx.regs).r14) };
    if stream == 0 {
        return Ok(0);
    }
    // `Stream` starts with `id` (a uint32: the low half of the word).
    let stream_id = word(stream)? as u32;
    let t = word(stream + u64::from(go.grpc_stream_ct))?;
    let conn = word(t + u64::from(go.grpc_client_conn) + 8)?;
    report_stream(cfg, (tgid, tid), ROLE_CLIENT, conn, stream_id, g)
}

/// Each `RET` of grpc-go's `(*http2Client).NewStream`, on the goroutine
/// that makes the call: the new stream's id is set.
#[uprobe]
pub fn kspan_go_grpc_new_stream_ret(ctx: ProbeContext) -> u32 {
    match grpc_new_stream_ret(&ctx) {
        Ok(r) | Err(r) => r,
    }
}
