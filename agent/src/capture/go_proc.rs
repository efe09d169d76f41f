//! Which selected processes are Go programs, so that the kernel reads the
//! goroutine behind each of their data calls (`ebpf/probes/src/goroutine.rs`)
//! and nesting follows goroutines, not the threads they happen to run on.
//!
//! Guarantees:
//! - A process is registered when its executable is an x86_64 ELF file with
//!   Go's build information (`.go.buildinfo`, Go 1.13 and later; stripped
//!   binaries keep it). Each executable file is read once (by device and
//!   inode; at most [`MAX_FILES`] remembered, then the memory starts over).
//! - The offset of the goroutine pointer below the thread's `fsbase` is read
//!   from the executable: a cgo build has a TLS segment and the symbol
//!   `runtime.tlsg`; Go's own linker uses -8. The kernel believes the pointer
//!   only when that goroutine owns the stack the call runs on, so a wrong
//!   offset costs nesting, never a wrong parent.
//! - Bounded: the kernel map holds [`MAX_GO_PROCS`] processes; one more is
//!   counted (`full`) and keyed by thread like any other program.
//! - A process leaves at exit, at an exec of something that is not Go, and
//!   when it vanished while capture was paused.
//! - A Go executable that uses net/http's client gets one uprobe on its
//!   round trip (`ebpf/probes/src/go_http.rs`): the `Transport` writes each
//!   request on a goroutine of its own, and the probe tells the kernel whose
//!   round trip it is. One that serves HTTP/2 (net/http's HTTPS server
//!   offers it by default; golang.org/x/net/http2) gets one on its stream
//!   handler's start: one goroutine reads every request of a connection,
//!   and each stream's handler runs on a goroutine of its own, which the
//!   probe reports for the stream. One that uses the HTTP/2 client gets
//!   probes on `RoundTrip` and on the start and `RET`s of the goroutine that
//!   writes each request (`doRequest`), which acts for the caller. One that
//!   uses grpc-go's server or client gets a probe on its stream handling
//!   (`(*Server).handleStream`) or on each `RET` of its stream making
//!   (`(*http2Client).NewStream`), which read grpc-go's structs at the
//!   offsets its DWARF gives ([`grpc_layout`]). Go 1.18+ and x86_64 as for
//!   the TLS probes; a failure is logged once per file and counted.

use std::collections::HashMap;
use std::path::Path;

use object::read::elf::ProgramHeader as _;
use object::{Object, ObjectSymbol};

use kspan_common::{GoProc, MAX_GO_PROCS, NO_OFFSET};

use super::tls::{TlsAttachError, file_id};
use super::{Capture, go_dwarf, go_tls};

/// Executables remembered as Go or not.
pub const MAX_FILES: usize = 4096;
/// Go's goroutine slot below `fsbase` when the executable says nothing else.
pub const DEFAULT_G_OFFSET: i64 = -8;

/// Counters of the registry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GoProcStats {
    /// Go processes whose goroutines the kernel reads now.
    pub registered: u64,
    /// Go processes not registered: the kernel map was full (or refused).
    pub full: u64,
    /// Nesting probes attached and failed, by [`go_tls::Nesting`]: one per
    /// Go function probed in an executable.
    pub probes: [[u64; 2]; go_tls::Nesting::ALL.len()],
}

/// The Go processes among the selected ones.
#[derive(Default)]
pub struct GoProcs {
    /// (device, inode) of an executable -> what the kernel reads of it
    /// (None: not Go).
    files: HashMap<(u64, u64), Option<GoProc>>,
    /// Registered processes and what the kernel reads of them.
    pids: HashMap<u32, GoProc>,
    pub stats: GoProcStats,
}

impl GoProcs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Entries of the tables now, by name (`kspan_table_entries`).
    pub fn table_sizes(&self) -> [(&'static str, usize); 2] {
        [("go_executables", self.files.len()), ("go_processes", self.pids.len())]
    }

    /// A selected process started, exec'd or was found at start-up: register
    /// it if its executable is a Go program (and forget it if it no longer is).
    pub fn on_selected(&mut self, capture: &mut Capture, pid: u32) {
        if !capture.goroutines() {
            return;
        }
        let exe = format!("/proc/{pid}/exe");
        let Some(id) = file_id(Path::new(&exe)) else { return };
        let known = match self.files.get(&id) {
            Some(o) => *o,
            None => {
                if self.files.len() >= MAX_FILES {
                    self.files.clear();
                }
                let (go, probes) = read_exe(Path::new(&exe));
                self.files.insert(id, go);
                for (probe, found) in probes {
                    self.probe_nesting(capture, Path::new(&exe), &probe, found);
                }
                go
            }
        };
        match known {
            // Registered already (an exec of another Go program may move the slot).
            Some(go) if self.pids.get(&pid) == Some(&go) => {}
            Some(go) => {
                if self.pids.len() >= MAX_GO_PROCS as usize && !self.pids.contains_key(&pid) {
                    self.stats.full += 1;
                    return;
                }
                match capture.set_go(pid, go) {
                    Ok(()) => {
                        self.pids.insert(pid, go);
                        self.stats.registered = self.pids.len() as u64;
                        tracing::debug!(pid, offset = go.g_offset, "Go program: calls nest by goroutine");
                    }
                    Err(e) => {
                        self.stats.full += 1;
                        tracing::debug!(pid, "Go program keyed by thread: {e}");
                    }
                }
            }
            None => self.on_exit(capture, pid),
        }
    }

    /// Puts a nesting probe (net/http's client round trip, an HTTP/2
    /// server's stream handler, an HTTP/2 client request) on a Go
    /// executable, once per file: uprobes belong to the file.
    fn probe_nesting(
        &mut self,
        capture: &mut Capture,
        exe: &Path,
        probe: &go_tls::NestingProbe,
        found: Result<(u64, Vec<u64>), go_tls::GoTlsError>,
    ) {
        let result = match found {
            Ok(at) => capture.attach_go_nesting(exe, probe, at),
            Err(source) => Err(TlsAttachError::Go { path: exe.display().to_string(), source }),
        };
        let what = probe.nesting.label().1;
        let counts = &mut self.stats.probes[probe.nesting as usize];
        match result {
            Ok(()) => {
                counts[0] += 1;
                tracing::info!(exe = %exe.display(), symbol = probe.symbol, "Go {what} followed");
            }
            Err(e) => {
                counts[1] += 1;
                tracing::warn!(exe = %exe.display(), "Go {what}: their calls will not nest: {e}");
            }
        }
    }

    /// The process exited (or vanished).
    pub fn on_exit(&mut self, capture: &mut Capture, pid: u32) {
        if self.pids.remove(&pid).is_some() {
            tracing::debug!(pid, "Go program forgotten");
            capture.unset_go(pid);
            self.stats.registered = self.pids.len() as u64;
        }
    }
}

/// The goroutine offset of the Go executable at `path`, `None` when it is
/// no x86_64 Go program (or unreadable).
pub fn g_offset_in(path: &Path) -> Option<i64> {
    read_exe(path).0.map(|go| go.g_offset)
}

/// One read of an executable: what the kernel reads of a Go program (its
/// goroutine offset, [`g_offset`], and its grpc-go server transport's
/// layout) and where each nesting probe it has a function for goes.
type ExeFacts = (Option<GoProc>, Vec<(go_tls::NestingProbe, Result<(u64, Vec<u64>), go_tls::GoTlsError>)>);

fn read_exe(path: &Path) -> ExeFacts {
    let Ok(file) = std::fs::File::open(path) else { return (None, Vec::new()) };
    let cache = object::ReadCache::new(file);
    let Ok(obj) = object::File::parse(&cache) else { return (None, Vec::new()) };
    let Some(g_offset) = g_offset(&obj) else { return (None, Vec::new()) };
    let mut go =
        GoProc { g_offset, grpc_conn: NO_OFFSET, grpc_client_conn: NO_OFFSET, grpc_stream_ct: NO_OFFSET, _pad: 0 };
    let mut probes: Vec<_> =
        go_tls::NESTING_PROBES.into_iter().filter_map(|p| Some((p, go_tls::find_function(&obj, p.symbol)?))).collect();
    // grpc-go's probes read the library's structs: only where the
    // executable's DWARF says where their fields are.
    let grpc =
        |p: &go_tls::NestingProbe| matches!(p.nesting, go_tls::Nesting::GrpcServer | go_tls::Nesting::GrpcClient);
    if probes.iter().any(|(p, found)| grpc(p) && found.is_ok()) {
        let layout = grpc_layout(&obj);
        for (p, found) in probes.iter_mut().filter(|(p, found)| grpc(p) && found.is_ok()) {
            let read = match p.nesting {
                go_tls::Nesting::GrpcServer => layout.server.as_ref().map(|&conn| go.grpc_conn = conn),
                _ => layout.client.as_ref().map(|&ends| (go.grpc_client_conn, go.grpc_stream_ct) = ends),
            };
            if let Err(e) = read {
                *found = Err(e.clone());
            }
        }
    }
    (Some(go), probes)
}

/// grpc-go's layout for the server's probe and for the client's, each
/// refused on its own.
struct GrpcLayout {
    /// `http2Server.conn`.
    server: Result<u32, go_tls::GoTlsError>,
    /// `http2Client.conn`, and `Stream.ct` (the client transport).
    client: Result<(u32, u32), go_tls::GoTlsError>,
}

/// Where grpc-go's transports keep their connection (`http2Server.conn`,
/// `http2Client.conn`) and a client stream its transport (`Stream.ct`),
/// from the executable's DWARF, once the kernel programs' reading of
/// `Stream` holds there too (`id` first; for the server `st` at 8:
/// releases that split `Stream` are refused). One pass over the entries.
fn grpc_layout<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> GrpcLayout {
    use go_tls::GoTlsError::Layout;
    let stream = go_tls::GRPC_STREAM;
    let ((server, conn), (client, client_conn)) = (go_tls::GRPC_TRANSPORT, go_tls::GRPC_CLIENT_TRANSPORT);
    let dwarf = match go_dwarf::GoDwarf::load(obj) {
        Ok(d) => d,
        Err(e) => return GrpcLayout { server: Err(Layout(server, e.clone())), client: Err(Layout(client, e)) },
    };
    let wanted = [(stream, "id"), (stream, "st"), (stream, "ct"), (server, conn), (client, client_conn)];
    let [id, st, ct, conn, client_conn] = match dwarf.member_offsets(wanted) {
        Ok(found) => found,
        Err(e) => return GrpcLayout { server: Err(Layout(server, e.clone())), client: Err(Layout(client, e)) },
    };
    // A field the kernel program reads at a fixed place.
    let at = |found: &Result<u64, go_dwarf::DwarfError>, field: &str, want: u64| match found.clone() {
        Ok(o) if o == want => Ok(()),
        Ok(o) => Err(Layout(stream, go_dwarf::DwarfError::Parse(format!("{field} at {o}, not {want}")))),
        Err(e) => Err(Layout(stream, e)),
    };
    let offset = |found: Result<u64, go_dwarf::DwarfError>, name| {
        found.map(|o| u32::try_from(o).unwrap_or(NO_OFFSET)).map_err(|e| Layout(name, e))
    };
    let server = at(&id, "id", 0).and(at(&st, "st", 8)).and_then(|()| offset(conn, server));
    let client = at(&id, "id", 0).and_then(|()| Ok((offset(client_conn, client)?, offset(ct, stream)?)));
    GrpcLayout { server, client }
}

/// [`g_offset_in`] on a parsed file.
pub fn g_offset<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> Option<i64> {
    if obj.architecture() != object::Architecture::X86_64 || obj.section_by_name(".go.buildinfo").is_none() {
        return None;
    }
    Some(tls_offset(obj).unwrap_or(DEFAULT_G_OFFSET))
}

/// x86_64 TLS (variant II): the executable's block ends at the thread
/// pointer, so a variable at `value` in a segment of `memsz` bytes aligned
/// to `align` sits at `value - round_up(memsz, align)`.
fn tls_offset<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> Option<i64> {
    let object::File::Elf64(elf) = obj else { return None };
    let tlsg = obj.symbols().find(|s| s.kind() == object::SymbolKind::Tls && s.name() == Ok("runtime.tlsg"))?;
    let endian = elf.endian();
    let seg = elf.elf_program_headers().iter().find(|p| p.p_type(endian) == object::elf::PT_TLS)?;
    let (memsz, align) = (seg.p_memsz(endian), seg.p_align(endian).max(1));
    let block = memsz.checked_next_multiple_of(align)?;
    let value = tlsg.address();
    (value < block).then(|| value as i64 - block as i64)
}

#[cfg(test)]
mod tests {
    use super::super::go_tls::tests::go_build_source;
    use super::*;

    #[test]
    fn this_test_binary_is_not_go() {
        assert_eq!(g_offset_in(Path::new("/proc/self/exe")), None);
        assert_eq!(g_offset_in(Path::new("/nonexistent")), None);
    }

    /// Builds a Go program (with and without cgo) when a Go toolchain is
    /// installed (`cargo xtask setup` installs one).
    #[test]
    fn go_executables_give_their_goroutine_offset() {
        let dir = std::env::temp_dir().join(format!("kspan-go-proc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let plain = "package main\nimport \"fmt\"\nfunc main() { fmt.Println(1) }\n";
        // C thread-local data in the executable moves Go's slot.
        let cgo = "package main\n/*\n__thread long c_tls[4];\nlong get(void) { return c_tls[1]; }\n*/\n\
                   import \"C\"\nimport \"fmt\"\nfunc main() { fmt.Println(C.get()) }\n";
        let build = |name: &str, src: &str, cgo: bool| {
            let source = dir.join(format!("{name}.go"));
            std::fs::write(&source, src).unwrap();
            go_build_source(&dir, name, &source, &[], cgo)
        };
        if !build("plain", plain, false) {
            eprintln!("skipping: no Go toolchain");
            return;
        }
        assert_eq!(g_offset_in(&dir.join("plain")), Some(DEFAULT_G_OFFSET));
        if build("withcgo", cgo, true) {
            let off = g_offset_in(&dir.join("withcgo")).expect("a cgo build is a Go program");
            assert!(off < 0 && off % 8 == 0, "{off}");
            assert_ne!(off, DEFAULT_G_OFFSET, "the C thread-locals share the block: {off}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
