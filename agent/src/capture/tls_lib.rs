//! The TLS libraries kspan probes, and what it needs to know of each: how a
//! file is recognised as one (its name picks candidates, its symbols
//! decide), which functions get which kernel program, and which function
//! binds a session to its socket.
//!
//! Guarantees:
//! - Every probed function has the shape the kernel programs read
//!   (`ebpf/probes/src/tls.rs`): the session pointer first, the plaintext
//!   buffer second, its length third, and a byte count (or a negative error)
//!   returned; or OpenSSL's `_ex` shape (byte count through the fourth
//!   argument).
//! - Per library, no plaintext is reported twice: a function that only
//!   forwards to another probed one is not probed itself (GnuTLS's
//!   `gnutls_record_send` jumps to `gnutls_record_send2`).
//! - A file is taken for a library only when it defines that library's
//!   required functions; a file name alone never decides.

use std::path::Path;

use object::{Object, ObjectSymbol};

use super::tls::TlsAttachError;

/// A TLS library kspan can probe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsLib {
    /// OpenSSL 1.1 and 3 (`libssl`), also linked statically.
    OpenSsl,
    /// GnuTLS 3 (`libgnutls`: wget, git's libcurl-gnutls, exim, gnutls-serv).
    GnuTls,
}

/// A function to probe: its entry gets `program`, its return the shared
/// return program.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    pub symbol: &'static str,
    pub program: &'static str,
    /// Without it the library is not worth attaching.
    pub required: bool,
}

const fn probe(symbol: &'static str, program: &'static str, required: bool) -> Probe {
    Probe { symbol, program, required }
}

/// OpenSSL's public API (used when its internal entries are not found).
const OPENSSL: [Probe; 4] = [
    probe("SSL_write", "kspan_ssl_write", true),
    probe("SSL_read", "kspan_ssl_read", true),
    // OpenSSL < 1.1.1 has no `_ex` variants.
    probe("SSL_write_ex", "kspan_ssl_write_ex", false),
    probe("SSL_read_ex", "kspan_ssl_read_ex", false),
];

/// GnuTLS (3.6.3 or later, which added `gnutls_record_send2`):
/// `gnutls_record_send` forwards to `gnutls_record_send2` (probed once
/// there); the two receive functions share an internal one and do not
/// call each other. `gnutls_record_recv_packet` (zero-copy, no user buffer)
/// and `gnutls_record_send_range` (length hiding) are not covered.
const GNUTLS: [Probe; 3] = [
    probe("gnutls_record_send2", "kspan_ssl_write", true),
    probe("gnutls_record_recv", "kspan_ssl_read", true),
    probe("gnutls_record_recv_seq", "kspan_ssl_read", false),
];

impl TlsLib {
    pub const ALL: [TlsLib; 2] = [TlsLib::OpenSsl, TlsLib::GnuTls];

    pub fn name(self) -> &'static str {
        match self {
            TlsLib::OpenSsl => "OpenSSL",
            TlsLib::GnuTls => "GnuTLS",
        }
    }

    /// The library a mapped file's name suggests: `libssl.so.3`,
    /// `libssl.so.1.1`, a wheel's `libssl-1a2b3c.so.3` (not NSS's
    /// `libssl3.so`); `libgnutls.so.30` (not `libgnutls-openssl`,
    /// `libgnutlsxx` or `libgnutls-dane`).
    pub fn from_file_name(path: &str) -> Option<TlsLib> {
        let name = path.rsplit('/').next().unwrap_or(path);
        if let Some(rest) = name.strip_prefix("libssl")
            && (rest.starts_with(".so") || rest.starts_with('-'))
            && rest.contains(".so")
        {
            return Some(TlsLib::OpenSsl);
        }
        name.starts_with("libgnutls.so").then_some(TlsLib::GnuTls)
    }

    /// The functions probed at their symbols.
    pub fn probes(self) -> &'static [Probe] {
        match self {
            TlsLib::OpenSsl => &OPENSSL,
            TlsLib::GnuTls => &GNUTLS,
        }
    }

    /// The optional function that binds a session to its socket, the
    /// socket as its second argument (`SSL_set_fd(ssl, fd)`,
    /// `gnutls_transport_set_int2(session, recv_fd, send_fd)`; the
    /// `gnutls_transport_set_int` macro expands to the latter).
    pub fn set_fd_symbol(self) -> &'static str {
        match self {
            TlsLib::OpenSsl => "SSL_set_fd",
            TlsLib::GnuTls => "gnutls_transport_set_int2",
        }
    }

    /// The optional handshake step (the session first; no data moved):
    /// probed so that a session on memory BIOs is bound to its socket by
    /// the handshake's first write (see `ebpf/probes/src/tls.rs`).
    pub fn handshake_symbol(self) -> &'static str {
        match self {
            TlsLib::OpenSsl => "SSL_do_handshake",
            TlsLib::GnuTls => "gnutls_handshake",
        }
    }

    fn required(self) -> impl Iterator<Item = &'static str> {
        self.probes().iter().filter(|p| p.required).map(|p| p.symbol)
    }
}

/// The TLS library whose required functions the object file at `path`
/// defines (exported or in its symbol table), if any; OpenSSL first.
pub fn defined_library(path: &Path) -> Result<Option<TlsLib>, TlsAttachError> {
    let shown = || path.display().to_string();
    let file = std::fs::File::open(path).map_err(|source| TlsAttachError::Io { path: shown(), source })?;
    let cache = object::ReadCache::new(file);
    let obj =
        object::File::parse(&cache).map_err(|e| TlsAttachError::Parse { path: shown(), reason: e.to_string() })?;
    let required: Vec<&'static str> = TlsLib::ALL.iter().flat_map(|l| l.required()).collect();
    let mut defined: Vec<&'static str> = Vec::new();
    for sym in obj.dynamic_symbols().chain(obj.symbols()) {
        if !sym.is_definition() {
            continue;
        }
        if let Ok(name) = sym.name()
            && let Some(r) = required.iter().find(|r| **r == name)
            && !defined.contains(r)
        {
            defined.push(r);
        }
    }
    Ok(TlsLib::ALL.into_iter().find(|lib| lib.required().all(|r| defined.contains(&r))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_pick_candidates_and_lookalikes_are_left_out() {
        let of = TlsLib::from_file_name;
        assert_eq!(of("/usr/lib/x86_64-linux-gnu/libssl.so.3"), Some(TlsLib::OpenSsl));
        assert_eq!(of("/opt/app/libssl.so.1.1"), Some(TlsLib::OpenSsl));
        assert_eq!(of("/venv/site-packages/psycopg_binary.libs/libssl-81ffa89e.so.3"), Some(TlsLib::OpenSsl));
        assert_eq!(of("libssl.so"), Some(TlsLib::OpenSsl));
        assert_eq!(of("/usr/lib/x86_64-linux-gnu/libgnutls.so.30"), Some(TlsLib::GnuTls));
        assert_eq!(of("/usr/lib/x86_64-linux-gnu/libssl3.so"), None, "NSS");
        assert_eq!(of("/usr/lib/libcrypto.so.3"), None);
        assert_eq!(of("/usr/lib/libssl.a"), None);
        assert_eq!(of("/home/libssl.so.d/notes.txt"), None);
        assert_eq!(of("/usr/lib/x86_64-linux-gnu/libgnutls-openssl.so.27"), None);
        assert_eq!(of("/usr/lib/x86_64-linux-gnu/libgnutlsxx.so.30"), None);
        assert_eq!(of("/usr/lib/x86_64-linux-gnu/libgnutls-dane.so.0"), None);
    }

    #[test]
    fn every_library_has_a_required_send_and_receive() {
        for lib in TlsLib::ALL {
            let required: Vec<_> = lib.probes().iter().filter(|p| p.required).map(|p| p.program).collect();
            assert!(required.contains(&"kspan_ssl_write") || required.contains(&"kspan_ssl_write_ex"), "{lib:?}");
            assert!(required.contains(&"kspan_ssl_read") || required.contains(&"kspan_ssl_read_ex"), "{lib:?}");
        }
    }

    #[test]
    fn symbols_tell_the_libraries_apart() {
        let find = |name: &str| {
            super::super::tls::system_libraries()
                .into_iter()
                .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(name)))
        };
        let ssl = find("libssl.so.").expect("system libssl (libssl3 is a test dependency)");
        assert_eq!(defined_library(&ssl).expect("readable"), Some(TlsLib::OpenSsl));
        // apt itself depends on libgnutls30: every Debian system has it.
        let gnutls = find("libgnutls.so.").expect("system libgnutls");
        assert_eq!(defined_library(&gnutls).expect("readable"), Some(TlsLib::GnuTls));
        assert_eq!(defined_library(Path::new("/bin/sh")).expect("readable"), None);
        // Dynamically linked users import the symbols: not a definition.
        for user in ["/usr/sbin/nginx", "/usr/bin/wget"] {
            if Path::new(user).exists() {
                assert_eq!(defined_library(Path::new(user)).expect("readable"), None, "{user}");
            }
        }
        let missing = defined_library(Path::new("/nonexistent/libssl.so.3"));
        assert!(matches!(missing, Err(TlsAttachError::Io { .. })));
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("libssl.so.3");
        std::fs::write(&fake, b"not an elf file").expect("write");
        assert!(matches!(defined_library(&fake), Err(TlsAttachError::Parse { .. })));
    }
}
