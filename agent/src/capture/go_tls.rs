//! Where the Go TLS uprobes go in a Go executable: the stack-growth check
//! at the start of `crypto/tls.(*Conn).Read` and `(*Conn).Write` (its
//! conditional jump, which the kernel emulates in the uprobe trap), and
//! every `RET` instruction of `Read` (Go code cannot take a uretprobe: see
//! `ebpf/probes/src/go_tls.rs`).
//!
//! Guarantees:
//! - A file is taken for a Go program only when it has Go's build
//!   information (`.go.buildinfo`) and defines both functions, in its symbol
//!   table or, when stripped, in Go's function table ([`gopclntab`]); a Go
//!   program without TLS is no error ([`find`] gives `None`).
//! - Probes are placed only where the kernel programs' reading of registers
//!   holds: x86_64 and Go 1.18 or later (the register ABI came in 1.17; the
//!   version is read from the build information, whose inline form 1.18
//!   introduced). Anything else is a precise [`GoTlsError`], logged once per
//!   file and counted by the caller.
//! - Instructions are found by decoding each function from its start to its
//!   symbol's end (Go puts no data inside functions), never by searching for
//!   bytes. The entry probe goes on a `jbe` among the first
//!   [`PROLOGUE`] instructions that follows a `cmp` against `16(%r14)`
//!   (`g.stackguard0`), with nothing in between that writes a register the
//!   kernel program reads; a function without that prologue, with no `RET`
//!   or more than [`MAX_RETS`], or with an undecodable instruction is
//!   refused.
//! - Not covered: Go older than 1.18, other architectures, executables
//!   whose function table is not in a `.gopclntab` section.

use std::path::Path;

use iced_x86::{Decoder, DecoderOptions, Mnemonic, Register};
use object::{Object, ObjectSection, ObjectSymbol};

use super::gopclntab;

/// The Go functions probed.
pub const READ: &str = "crypto/tls.(*Conn).Read";
pub const WRITE: &str = "crypto/tls.(*Conn).Write";
/// The Go functions probed so that calls nest by the request they serve
/// (`go_proc`), with the kernel programs each takes.
pub const NESTING_PROBES: [NestingProbe; 10] = [
    // net/http's client round trip on an HTTP/1 connection: the goroutine
    // it starts on is remembered for its connection.
    NestingProbe::entry(Nesting::HttpClient, ROUND_TRIP, "kspan_go_round_trip"),
    // An HTTP/2 server's stream handler, on its own goroutine: net/http's
    // bundled copy and golang.org/x/net/http2 (`serverConn.hs` a pointer),
    // and the in-tree copy whose `hs` is an interface.
    NestingProbe::entry(Nesting::Http2Server, "net/http.(*http2serverConn).runHandler", "kspan_go_h2_handler"),
    NestingProbe::entry(Nesting::Http2Server, "golang.org/x/net/http2.(*serverConn).runHandler", "kspan_go_h2_handler"),
    NestingProbe::entry(
        Nesting::Http2Server,
        "net/http/internal/http2.(*serverConn).runHandler",
        "kspan_go_h2_handler_cfg",
    ),
    // An HTTP/2 client request (net/http's bundled client, then x/net's):
    // `RoundTrip` on the caller's goroutine, and the goroutine that writes
    // the request (until each of its `RET`s).
    NestingProbe::entry(Nesting::Http2Client, "net/http.(*http2ClientConn).RoundTrip", "kspan_go_h2_round_trip"),
    NestingProbe {
        rets: Some("kspan_go_h2_do_request_ret"),
        ..NestingProbe::entry(Nesting::Http2Client, "net/http.(*http2clientStream).doRequest", "kspan_go_h2_do_request")
    },
    NestingProbe::entry(
        Nesting::Http2Client,
        "golang.org/x/net/http2.(*ClientConn).RoundTrip",
        "kspan_go_h2_round_trip",
    ),
    NestingProbe {
        rets: Some("kspan_go_h2_do_request_ret"),
        ..NestingProbe::entry(
            Nesting::Http2Client,
            "golang.org/x/net/http2.(*clientStream).doRequest",
            "kspan_go_h2_do_request",
        )
    },
    // grpc-go's server: each stream served on a goroutine of its own (the
    // transport's layout comes from DWARF: `GRPC_TRANSPORT`).
    NestingProbe::entry(Nesting::GrpcServer, GRPC_HANDLE_STREAM, "kspan_go_grpc_handler"),
    // grpc-go's client: each call's stream is made, and numbered, on the
    // caller's goroutine (read at each `RET`; the layout from DWARF too).
    NestingProbe {
        nesting: Nesting::GrpcClient,
        symbol: GRPC_NEW_STREAM,
        program: None,
        rets: Some("kspan_go_grpc_new_stream_ret"),
    },
];
/// net/http's client round trip.
pub const ROUND_TRIP: &str = "net/http.(*persistConn).roundTrip";
/// grpc-go's server: a stream's handling starts.
pub const GRPC_HANDLE_STREAM: &str = "google.golang.org/grpc.(*Server).handleStream";
/// grpc-go's server transport, and its field holding the connection.
pub const GRPC_TRANSPORT: (&str, &str) = ("google.golang.org/grpc/internal/transport.http2Server", "conn");
/// grpc-go's stream (the kernel programs read its `id`, and `st` or `ct`).
pub const GRPC_STREAM: &str = "google.golang.org/grpc/internal/transport.Stream";
/// grpc-go's client: a call's stream is made.
pub const GRPC_NEW_STREAM: &str = "google.golang.org/grpc/internal/transport.(*http2Client).NewStream";
/// grpc-go's client transport, and its field holding the connection.
pub const GRPC_CLIENT_TRANSPORT: (&str, &str) = ("google.golang.org/grpc/internal/transport.http2Client", "conn");

/// What a nesting probe follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nesting {
    /// net/http's HTTP/1 client.
    HttpClient = 0,
    /// An HTTP/2 server's stream handlers.
    Http2Server = 1,
    /// net/http's HTTP/2 client.
    Http2Client = 2,
    /// grpc-go's server streams.
    GrpcServer = 3,
    /// grpc-go's client calls.
    GrpcClient = 4,
}

impl Nesting {
    pub const ALL: [Nesting; 5] =
        [Nesting::HttpClient, Nesting::Http2Server, Nesting::Http2Client, Nesting::GrpcServer, Nesting::GrpcClient];

    /// Its `probe` label, and its name in logs.
    pub fn label(self) -> (&'static str, &'static str) {
        match self {
            Nesting::HttpClient => ("http_client", "net/http client round trips"),
            Nesting::Http2Server => ("http2_server", "HTTP/2 server streams"),
            Nesting::Http2Client => ("http2_client", "HTTP/2 client requests"),
            Nesting::GrpcServer => ("grpc_server", "grpc-go server streams"),
            Nesting::GrpcClient => ("grpc_client", "grpc-go client calls"),
        }
    }
}

/// A Go function whose start (and, with `rets`, end) tells the kernel which
/// goroutine a request or call belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NestingProbe {
    pub nesting: Nesting,
    pub symbol: &'static str,
    /// The kernel program of the stack check's jump (it knows the
    /// function's argument layout), if the function's start matters.
    pub program: Option<&'static str>,
    /// The kernel program of each `RET`, if the function's end matters.
    pub rets: Option<&'static str>,
}

impl NestingProbe {
    const fn entry(nesting: Nesting, symbol: &'static str, program: &'static str) -> Self {
        Self { nesting, symbol, program: Some(program), rets: None }
    }
}

/// Most return instructions probed in one function (Go 1.19's `Read` has 6).
pub const MAX_RETS: usize = 64;
/// Instructions searched for the stack check's jump.
pub const PROLOGUE: usize = 4;
/// Oldest Go release with the inline build information and register ABI.
const MIN_MINOR: u32 = 18;

/// Why a Go executable's TLS cannot be probed.
#[derive(Clone, Debug, thiserror::Error, PartialEq, Eq)]
pub enum GoTlsError {
    #[error("Go {0}: kspan reads Go 1.18 or later (register ABI, inline build information)")]
    Version(String),
    #[error("Go build information unreadable (Go older than 1.18?)")]
    BuildInfo,
    #[error("{0:?} executable: Go TLS probes are for x86_64")]
    Arch(object::Architecture),
    #[error("{symbol}: {reason}")]
    Function { symbol: &'static str, reason: String },
    #[error("layout of {0} unknown: {1}")]
    Layout(&'static str, super::go_dwarf::DwarfError),
}

/// What is probed in one Go executable (file offsets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoTlsProbes {
    /// Go release, e.g. `go1.19.8`.
    pub version: String,
    /// The stack check's jump in `Read`, and each of its `RET`s.
    pub read: u64,
    pub read_rets: Vec<u64>,
    /// The stack check's jump in `Write`.
    pub write: u64,
}

/// The Go TLS probe points of the executable `obj`, `None` when it is not a
/// Go program using `crypto/tls`.
pub fn find<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> Option<Result<GoTlsProbes, GoTlsError>> {
    let info = obj.section_by_name(".go.buildinfo")?;
    let (read, write) = (lookup(obj, READ)?, lookup(obj, WRITE)?);
    Some(probes(obj, info.data().unwrap_or_default(), read, write))
}

/// [`find`] on the file at `path` (unreadable or not an object: `None`).
pub fn find_in(path: &Path) -> Option<Result<GoTlsProbes, GoTlsError>> {
    let file = std::fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache).ok()?;
    find(&obj)
}

/// The stack check's jump and the `RET`s (file offsets) of the Go function
/// `symbol` in the executable `obj`, `None` when it is not a Go program
/// defining it. Same requirements as [`find`].
pub fn find_function<'d, R: object::ReadRef<'d>>(
    obj: &object::File<'d, R>,
    symbol: &'static str,
) -> Option<Result<(u64, Vec<u64>), GoTlsError>> {
    let info = obj.section_by_name(".go.buildinfo")?;
    let f = lookup(obj, symbol)?;
    Some(supported(obj, info.data().unwrap_or_default()).and_then(|_| function(obj, symbol, f)))
}

/// The Go version, when kspan's Go probes can read this executable.
fn supported<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, info: &[u8]) -> Result<String, GoTlsError> {
    let version = build_version(info).ok_or(GoTlsError::BuildInfo)?;
    let minor = version.strip_prefix("go1.").and_then(|r| r.split(['.', '-', 'r', 'b']).next()?.parse::<u32>().ok());
    if minor.is_none_or(|m| m < MIN_MINOR) {
        return Err(GoTlsError::Version(version));
    }
    if obj.architecture() != object::Architecture::X86_64 {
        return Err(GoTlsError::Arch(obj.architecture()));
    }
    Ok(version)
}

fn probes<'d, R: object::ReadRef<'d>>(
    obj: &object::File<'d, R>,
    info: &[u8],
    read: (u64, u64),
    write: (u64, u64),
) -> Result<GoTlsProbes, GoTlsError> {
    let version = supported(obj, info)?;
    let (read, read_rets) = function(obj, READ, read)?;
    let (write, _) = function(obj, WRITE, write)?;
    Ok(GoTlsProbes { version, read, read_rets, write })
}

/// Address and size of a Go function: from the symbol table or, when the
/// executable is stripped, from Go's own function table.
fn lookup<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, name: &str) -> Option<(u64, u64)> {
    symbol(obj, name).or_else(|| gopclntab::find_function(obj.section_by_name(".gopclntab")?.data().ok()?, name))
}

/// Address and size of a defined function symbol.
fn symbol<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, name: &str) -> Option<(u64, u64)> {
    obj.symbols()
        .find(|s| s.is_definition() && s.kind() == object::SymbolKind::Text && s.name() == Ok(name))
        .map(|s| (s.address(), s.size()))
}

/// File offsets of the stack check's jump and of the `RET`s of a function.
fn function<'d, R: object::ReadRef<'d>>(
    obj: &object::File<'d, R>,
    symbol: &'static str,
    (addr, size): (u64, u64),
) -> Result<(u64, Vec<u64>), GoTlsError> {
    let fail = |reason: &str| GoTlsError::Function { symbol, reason: reason.to_string() };
    let section = obj
        .sections()
        .find(|s| s.address() <= addr && addr.saturating_add(size) <= s.address() + s.size())
        .ok_or_else(|| fail("not inside a section"))?;
    let data = section.data().map_err(|e| fail(&e.to_string()))?;
    let start = usize::try_from(addr - section.address()).map_err(|_| fail("bad address"))?;
    let code = usize::try_from(size).ok().and_then(|n| data.get(start..start.checked_add(n)?));
    let code = code.filter(|c| !c.is_empty()).ok_or_else(|| fail("no code (symbol size 0?)"))?;
    let (file_start, _) = section.file_range().ok_or_else(|| fail("section not in the file"))?;
    let to_file = |a: u64| file_start + (a - section.address());
    let (check, rets) = probe_points(addr, code).map_err(|e| fail(&e))?;
    Ok((to_file(check), rets.into_iter().map(to_file).collect()))
}

/// Addresses of the stack check's `jbe` and of the `RET` instructions of the
/// function `code` at `addr`.
pub fn probe_points(addr: u64, code: &[u8]) -> Result<(u64, Vec<u64>), String> {
    let mut rets = Vec::new();
    let mut check = None;
    let mut compared = false;
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    let mut n = 0;
    while decoder.can_decode() {
        let ins = decoder.decode();
        n += 1;
        if ins.is_invalid() {
            return Err(format!("undecodable instruction at {:#x}", ins.ip()));
        }
        if n <= PROLOGUE && check.is_none() {
            match ins.mnemonic() {
                // cmp %rsp or %r12, 16(%r14): against g.stackguard0.
                Mnemonic::Cmp => {
                    compared = ins.memory_base() == Register::R14 && ins.memory_displacement64() == 16;
                }
                Mnemonic::Jbe if compared => check = Some(ins.ip()),
                // lea -N(%rsp),%r12 before the cmp of a large frame.
                Mnemonic::Lea if ins.op0_register() == Register::R12 => {}
                _ => compared = false,
            }
        }
        if ins.mnemonic() == Mnemonic::Ret {
            if rets.len() == MAX_RETS {
                return Err(format!("more than {MAX_RETS} return instructions"));
            }
            rets.push(ins.ip());
        }
    }
    let check = check.ok_or("no stack check (cmp 16(%r14); jbe) at the start")?;
    if rets.is_empty() {
        return Err("no return instruction".into());
    }
    Ok((check, rets))
}

/// The Go version in a `.go.buildinfo` section of the inline form (Go
/// 1.18+): 16-byte header (`\xff Go buildinf:`, pointer size, flags with
/// bit 2), padding to 32 bytes, then length-prefixed (varint) strings, the
/// version first.
pub fn build_version(info: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !info.starts_with(MAGIC) || info.get(15)? & 2 == 0 {
        return None;
    }
    let mut at = 32;
    let mut len: usize = 0;
    for shift in (0..35).step_by(7) {
        let b = *info.get(at)?;
        at += 1;
        len |= usize::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            let v = info.get(at..at.checked_add(len)?)?;
            return std::str::from_utf8(v).ok().filter(|v| v.starts_with("go")).map(str::to_string);
        }
    }
    None
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    #[test]
    fn build_information_gives_the_version() {
        let mut info = b"\xff Go buildinf:\x08\x02".to_vec();
        info.resize(32, 0);
        info.push(8);
        info.extend_from_slice(b"go1.19.8\x98\x01path");
        assert_eq!(build_version(&info).as_deref(), Some("go1.19.8"));
        // Pre-1.18 form (pointers to strings): flags without bit 2.
        let mut old = info.clone();
        old[15] = 0;
        assert_eq!(build_version(&old), None);
        // Truncated, or a length past the end.
        assert_eq!(build_version(&info[..36]), None);
        let mut long = info.clone();
        long[32] = 0x7f;
        assert_eq!(build_version(&long), None);
        assert_eq!(build_version(b"not buildinfo"), None);
    }

    #[test]
    fn probe_points_are_found_by_decoding_not_by_byte() {
        // cmp 0x10(%r14),%rsp; jbe +0x10; push rbp; mov rbp,rsp;
        // mov eax,0xc3 (a c3 byte inside an immediate); pop rbp; ret;
        // xor eax,eax; ret
        let code = [
            0x49, 0x3b, 0x66, 0x10, 0x76, 0x10, 0x55, 0x48, 0x89, 0xe5, 0xb8, 0xc3, 0x00, 0x00, 0x00, 0x5d, 0xc3, 0x31,
            0xc0, 0xc3,
        ];
        assert_eq!(probe_points(0x1000, &code), Ok((0x1004, vec![0x1010, 0x1013])));
        // A large frame: lea -0x68(%rsp),%r12; cmp 0x10(%r14),%r12; jbe; ret.
        let large = [0x4c, 0x8d, 0x64, 0x24, 0x98, 0x4d, 0x3b, 0x66, 0x10, 0x76, 0x01, 0xc3];
        assert_eq!(probe_points(0x2000, &large), Ok((0x2009, vec![0x200b])));
        // A jbe after a cmp of something else, or after another instruction.
        let other = [0x48, 0x39, 0xd8, 0x76, 0x01, 0xc3]; // cmp %rbx,%rax; jbe; ret
        assert!(probe_points(0x1000, &other).unwrap_err().contains("no stack check"));
        let between = [0x49, 0x3b, 0x66, 0x10, 0x48, 0x89, 0xc3, 0x76, 0x01, 0xc3]; // cmp; mov %rax,%rbx; jbe; ret
        assert!(probe_points(0x1000, &between).unwrap_err().contains("no stack check"));
        let check = [0x49, 0x3b, 0x66, 0x10, 0x76, 0x00];
        assert!(probe_points(0x1000, &[&check[..], &[0x55, 0x5d]].concat()).unwrap_err().contains("no return"));
        assert!(probe_points(0x1000, &[0x0f, 0xff]).unwrap_err().contains("undecodable"));
        let many = [&check[..], &[0xc3; MAX_RETS + 1]].concat();
        assert!(probe_points(0x1000, &many).unwrap_err().contains("more than"));
    }

    /// Builds the e2e Go app into `dir/name` with extra `flags`; whether it
    /// built.
    fn go_build(dir: &Path, name: &str, flags: &[&str]) -> bool {
        let src = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/apps/go_tls_app.go"));
        go_build_source(dir, name, src, flags, false)
    }

    /// Builds the Go program `source` (standard library only) into
    /// `dir/name`, with cgo or not; whether it built (false without a Go
    /// toolchain: `cargo xtask setup` installs one).
    pub(in crate::capture) fn go_build_source(
        dir: &Path,
        name: &str,
        source: &Path,
        flags: &[&str],
        cgo: bool,
    ) -> bool {
        std::process::Command::new("go")
            .arg("build")
            .args(flags)
            .arg("-o")
            .arg(dir.join(name))
            .arg(source)
            .env("CGO_ENABLED", if cgo { "1" } else { "0" })
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("path"))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// A Go program built here (Debian's golang-go, a test dependency) is
    /// found with its entries and returns; skipped without Go.
    #[test]
    fn a_real_go_https_program_is_found() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let exe = dir.path().join("go_tls_app");
        if !go_build(dir.path(), "go_tls_app", &[]) {
            eprintln!("go not installed: skipped");
            return;
        }
        let p = find_in(&exe).expect("a Go TLS program").expect("probed");
        assert!(p.version.starts_with("go1."), "{p:?}");
        assert!(!p.read_rets.is_empty() && p.read_rets.iter().all(|r| *r > p.read), "{p:?}");
        assert_ne!(p.read, p.write);
        // Stripped, the same build gives the same probe points from Go's
        // function table.
        assert!(go_build(dir.path(), "stripped", &["-ldflags=-s -w"]));
        let file = std::fs::read(dir.path().join("stripped")).expect("read");
        let obj = object::File::parse(&*file).expect("ELF");
        assert!(symbol(&obj, READ).is_none(), "stripped: no symbol table");
        assert_eq!(find(&obj), Some(Ok(p)));
        // net/http's client round trip, found both ways too (the app is a
        // client as well as a server).
        let full = std::fs::read(&exe).expect("read");
        // So is the HTTP/2 server's stream handler (its HTTPS server offers h2).
        let full = object::File::parse(&*full).expect("ELF");
        for symbol in [ROUND_TRIP, "net/http.(*http2serverConn).runHandler"] {
            let at = find_function(&full, symbol);
            assert!(matches!(&at, Some(Ok((at, rets))) if *at > 0 && !rets.is_empty()), "{symbol}: {at:?}");
            assert_eq!(find_function(&obj, symbol), at, "{symbol}");
        }
        assert_eq!(find_function(&full, "golang.org/x/net/http2.(*serverConn).runHandler"), None);
        // Not Go, or Go without TLS.
        assert_eq!(find_in(Path::new("/bin/sh")), None);
        assert_eq!(find_in(Path::new("/nonexistent")), None);
    }
}
