//! Program attachments and pausing: every tracepoint and uprobe link the
//! agent makes is recorded with its target, so capture can be paused
//! (every link dropped: the host runs as if kspan were not there) and
//! resumed (every link made again).
//!
//! Guarantees:
//! - While paused no kspan program is attached: no syscall takes the
//!   tracepoint path because of kspan and no uprobe sits in any process.
//!   Uprobes for files found meanwhile are recorded and attached on resume.
//! - On resume the kernel's per-connection state is cleared before anything
//!   is attached again, since sockets closed and fds reused during the pause
//!   were not seen: sockets are found afresh on their next call.
//! - A link that cannot be made again is logged and counted, never fatal.

use std::num::NonZeroU32;
use std::path::PathBuf;

use aya::Ebpf;
use aya::maps::Map;
use aya::programs::trace_point::TracePointLink;
use aya::programs::uprobe::{UProbeAttachLocation, UProbeLink, UProbeScope};
use aya::programs::{TracePoint, UProbe};

use super::Capture;

/// Where a program is attached.
#[derive(Clone, Debug)]
pub(super) enum Target {
    Tracepoint {
        category: &'static str,
        name: &'static str,
    },
    /// At `symbol`, or at file offset `offset` (then `symbol` only names
    /// the place in messages); in every process that maps the file, or in
    /// process `pid` only (the kernel then plants no breakpoint elsewhere).
    Uprobe {
        symbol: &'static str,
        offset: Option<u64>,
        path: PathBuf,
        pid: Option<u32>,
    },
}

enum Link {
    // Held for their Drop, which detaches.
    Tracepoint(#[allow(dead_code)] TracePointLink),
    Uprobe(#[allow(dead_code)] UProbeLink),
}

/// One program at one target; `link` is `None` while paused.
pub(super) struct Attachment {
    program: &'static str,
    target: Target,
    link: Option<Link>,
}

/// Why an attachment failed: the program itself (missing, rejected by the
/// verifier) or attaching it at its target.
#[derive(Debug)]
pub(super) enum AttachFail {
    Program(String),
    Target(String),
}

/// Threads that drop links side by side ([`Capture::drop_links`]).
const DETACH_THREADS: usize = 64;

/// Maps whose entries describe live sockets, calls and SSL objects.
const CONNECTION_MAPS: [&str; 6] = ["SOCKS", "SOCK_PROCS", "INFLIGHT", "TLS_CALLS", "TLS_SOCKS", "GO_TLS_CALLS"];

/// Loads `program` if needed and, unless `paused`, attaches it at `target`.
fn link(ebpf: &mut Ebpf, program: &'static str, target: &Target, paused: bool) -> Result<Option<Link>, AttachFail> {
    let prog = ebpf.program_mut(program).ok_or_else(|| AttachFail::Program("missing from object".into()))?;
    match target {
        Target::Tracepoint { category, name } => {
            let tp: &mut TracePoint =
                prog.try_into().map_err(|e: aya::programs::ProgramError| AttachFail::Program(e.to_string()))?;
            if tp.fd().is_err() {
                tp.load().map_err(|e| AttachFail::Program(format!("verifier rejected it: {e}")))?;
            }
            if paused {
                return Ok(None);
            }
            let id = tp.attach(category, name).map_err(|e| AttachFail::Target(e.to_string()))?;
            tp.take_link(id).map(|l| Some(Link::Tracepoint(l))).map_err(|e| AttachFail::Target(e.to_string()))
        }
        Target::Uprobe { symbol, offset, path, pid } => {
            let up: &mut UProbe =
                prog.try_into().map_err(|e: aya::programs::ProgramError| AttachFail::Program(e.to_string()))?;
            if up.fd().is_err() {
                up.load().map_err(|e| AttachFail::Program(format!("verifier rejected it: {e}")))?;
            }
            if paused {
                return Ok(None);
            }
            let at = match offset {
                Some(o) => UProbeAttachLocation::AbsoluteOffset(*o),
                None => UProbeAttachLocation::Symbol(symbol),
            };
            // aya wraps the useful part (e.g. the errno) in a source.
            let scope = pid.and_then(NonZeroU32::new).map_or(UProbeScope::AllProcesses, UProbeScope::OneProcess);
            let id = up.attach(at, path, scope).map_err(|e| AttachFail::Target(crate::telemetry::error_chain(&e)))?;
            up.take_link(id).map(|l| Some(Link::Uprobe(l))).map_err(|e| AttachFail::Target(e.to_string()))
        }
    }
}

impl Capture {
    /// Attaches `program` at `target` and records it; while paused it is
    /// only recorded (the program is loaded, so a rejected one still fails
    /// now) and attached on resume.
    pub(super) fn attach_recorded(&mut self, program: &'static str, target: Target) -> Result<(), AttachFail> {
        let link = link(&mut self.ebpf, program, &target, self.paused)?;
        self.attachments.push(Attachment { program, target, link });
        Ok(())
    }

    /// Detaches every program now (a stop, or a pause); returns how many
    /// links there were. The attachments stay recorded for a resume.
    ///
    /// Each detach waits for the kernel's RCU grace periods, 70-170 ms a
    /// link on this VM (a tracepoint or uprobe perf event: the kernel
    /// synchronises before freeing its buffers), so a stop detaching its 47
    /// links one after the other took 4.8 s. Dropped by up to
    /// [`DETACH_THREADS`] threads side by side, the waits partly overlap
    /// (the kernel serialises part of each): 3.2-3.7 s.
    pub fn drop_links(&mut self) -> usize {
        let links: Vec<Link> = self.attachments.iter_mut().filter_map(|a| a.link.take()).collect();
        let n = links.len();
        let queue = std::sync::Mutex::new(links);
        let next = || queue.lock().ok().and_then(|mut q| q.pop());
        std::thread::scope(|s| {
            for _ in 0..DETACH_THREADS.min(n) {
                // A thread that cannot start leaves its share to the others
                // (or to the drop of `queue` below, one at a time).
                let _ = std::thread::Builder::new().spawn_scoped(s, || {
                    while let Some(l) = next() {
                        drop(l);
                    }
                });
            }
        });
        n
    }

    /// Forgets the attachments made for process `pid` alone (it exited);
    /// returns how many. Their links are dropped on a thread of their own:
    /// each detach waits for the kernel's grace periods, which the capture
    /// thread must not.
    pub fn drop_links_of(&mut self, pid: u32) -> usize {
        let mut links = Vec::new();
        self.attachments.retain_mut(|a| match a.target {
            Target::Uprobe { pid: Some(p), .. } if p == pid => {
                links.extend(a.link.take());
                false
            }
            _ => true,
        });
        let n = links.len();
        if n > 0 {
            // A thread that cannot start drops its closure, and so the
            // links, right here.
            let _ = std::thread::Builder::new().name("kspan-detach".into()).spawn(move || drop(links));
        }
        n
    }

    /// Whether capture is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// Pauses (detaches every program) or resumes (clears the kernel's
    /// connection state, then attaches every recorded program again).
    /// Returns how many maps could not be cleared and attachments could not
    /// be made again (each logged); it always reaches the wanted state.
    pub fn set_paused(&mut self, paused: bool) -> usize {
        if paused == self.paused {
            return 0;
        }
        self.paused = paused;
        if paused {
            self.drop_links();
            return 0;
        }
        let mut failed = 0;
        for name in CONNECTION_MAPS {
            let cleared = match self.ebpf.map(name) {
                Some(Map::HashMap(m) | Map::LruHashMap(m)) => super::census::clear(m),
                _ => Err("missing or not a hash map".into()),
            };
            match cleared {
                Ok(n) => self.lru.deleted_by_agent(name, n),
                Err(reason) => {
                    // Resuming matters more: stale entries only mislabel
                    // connections that were reused during the pause.
                    failed += 1;
                    tracing::error!(map = name, "not cleared on resume: {reason}");
                }
            }
        }
        let Self { ebpf, attachments, .. } = self;
        for a in attachments.iter_mut() {
            match link(ebpf, a.program, &a.target, false) {
                Ok(l) => a.link = l,
                Err(AttachFail::Program(e) | AttachFail::Target(e)) => {
                    failed += 1;
                    tracing::warn!(program = a.program, target = ?a.target, "not attached again on resume: {e}");
                }
            }
        }
        failed
    }
}
