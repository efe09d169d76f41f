//! Where the TLS entry uprobes go: OpenSSL's internal read and write
//! functions (and GnuTLS's internal receive function) when they can be
//! found, the public symbols otherwise; and the dynamic loader's calls to
//! its debugger hook rather than the hook ([`call_sites`]).
//!
//! Why: a uprobe traps, then runs the probed instruction. The kernel
//! emulates a few instructions (push, call, jmp, nop) in the trap; any other
//! is single-stepped out of line, a second trap. `SSL_read`/`SSL_write` (and
//! the `_ex` variants) start with `sub $n,%rsp`, so every call paid two
//! traps at entry; with nginx over HTTPS that halved throughput. In OpenSSL
//! 1.1.1 and 3.x the four public functions are thin wrappers around
//! `ssl_read_internal(s, buf, num, &bytes)` / `ssl_write_internal(...)`,
//! which start with `push`: probed there, entry costs one emulated trap and
//! one probe covers both the plain and the `_ex` API.
//!
//! Guarantees: the internal entry is used only when all of this holds, and
//! the public symbols are probed otherwise (nothing is guessed):
//! - `SSL_read_ex`/`SSL_write_ex` are `[endbr64] [sub $imm8,%rsp] call T`,
//!   so T receives their four arguments unchanged (`_ex` semantics: an
//!   out-parameter for the byte count, a positive return on success);
//! - `SSL_read`/`SSL_write` contain a direct call to the same T (so the
//!   plain API goes through it too);
//! - T starts with `[endbr64] push %reg` (the probe goes after `endbr64`,
//!   which changes no register or stack slot, so a return probe there still
//!   finds the return address at the top of the stack).
//! - GnuTLS: `gnutls_record_recv` and `gnutls_record_recv_seq` both reach
//!   the same function R by a tail jump after passing the caller's buffer
//!   as R's third argument and application data as its record type, and R
//!   starts `[endbr64] push %reg` ([`find_gnutls_recv`]). A tail jump
//!   leaves the caller's return address on top of the stack, so R's
//!   return probe returns to the application.

use std::path::Path;

use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
use object::{Object, ObjectSection, ObjectSymbol};

/// Longest public wrapper searched for its call (OpenSSL's are < 130 bytes).
const MAX_WRAPPER: u64 = 512;
const ENDBR64: [u8; 4] = [0xf3, 0x0f, 0x1e, 0xfa];

/// File offsets of the internal read and write entries of one object file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InternalEntries {
    pub read: u64,
    pub write: u64,
}

/// The internal entries of the OpenSSL in `path`, if it has the expected shape.
pub fn find(path: &Path) -> Option<InternalEntries> {
    with_x86_64(path, |obj| {
        let read = internal_entry(obj, "SSL_read_ex", "SSL_read")?;
        let write = internal_entry(obj, "SSL_write_ex", "SSL_write")?;
        Some(InternalEntries { read, write })
    })
}

/// The object file at `path` is read to `f`, if it is an x86-64 one.
fn with_x86_64<T>(
    path: &Path,
    f: impl FnOnce(&object::File<'_, &object::ReadCache<std::fs::File>>) -> Option<T>,
) -> Option<T> {
    let file = std::fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache).ok()?;
    if obj.architecture() != object::Architecture::X86_64 {
        return None;
    }
    f(&obj)
}

/// The public GnuTLS functions [`find_gnutls_recv`] probes in place of.
pub const GNUTLS_RECV_WRAPPERS: [&str; 2] = ["gnutls_record_recv", "gnutls_record_recv_seq"];

/// GnuTLS's receive functions, `gnutls_record_recv` and
/// `gnutls_record_recv_seq`, start with `sub $8,%rsp` and `mov`, which the
/// kernel single-steps (16 us a call on the development VM, against 0.4 us
/// for a `push`). Both end in a tail jump to the internal
/// `_gnutls_recv_int(session, type, data, size, seq, ms)`, which starts with
/// a `push`. Its file offset, when both wrappers jump to the same function,
/// set the record type to application data (`mov $0x17,%esi`) and pass the
/// caller's buffer as its third argument (`mov %rsi,%rdx`) before the jump,
/// and it starts `[endbr64] push %reg`.
pub fn find_gnutls_recv(path: &Path) -> Option<u64> {
    with_x86_64(path, |obj| {
        let mut target = None;
        for name in GNUTLS_RECV_WRAPPERS {
            let (addr, body) = wrapper_code(obj, name)?;
            let t = recv_tail_jump(addr, &body)?;
            if target.is_some_and(|known| known != t) {
                return None;
            }
            target = Some(t);
        }
        let target = target?;
        let entry = target + push_entry(&code(obj, target, 8)?)?;
        file_offset(obj, entry)
    })
}

/// The target of the first direct `jmp` in the wrapper `code` (at `addr`)
/// that comes after `mov %rsi,%rdx` and `mov $0x17,%esi` (the caller's
/// buffer as the third argument, the application-data record type as the
/// second), decoded instruction by instruction.
pub fn recv_tail_jump(addr: u64, code: &[u8]) -> Option<u64> {
    let (mut buf_to_arg3, mut app_data) = (false, false);
    let mut decoder = Decoder::with_ip(64, code, addr, DecoderOptions::NONE);
    while decoder.can_decode() {
        let ins = decoder.decode();
        if ins.is_invalid() {
            return None;
        }
        match ins.mnemonic() {
            Mnemonic::Mov if ins.op0_kind() == OpKind::Register && ins.op0_register() == Register::RDX => {
                buf_to_arg3 = ins.op1_kind() == OpKind::Register && ins.op1_register() == Register::RSI;
            }
            Mnemonic::Mov if ins.op0_kind() == OpKind::Register && ins.op0_register() == Register::ESI => {
                app_data = ins.op1_kind() == OpKind::Immediate32 && ins.immediate32() == 0x17;
            }
            Mnemonic::Jmp if buf_to_arg3 && app_data && ins.op0_kind() == OpKind::NearBranch64 => {
                return Some(ins.near_branch_target());
            }
            _ => {}
        }
    }
    None
}

/// Most call sites probed in place of one function.
const MAX_CALL_SITES: usize = 16;

/// File offsets of the direct calls to the function `name` in the code of
/// the object file at `path`, to probe in its place: the dynamic loader's
/// `_dl_debug_state` (called at every library load and unload) is a lone
/// `ret`, which the kernel single-steps (16 us a hit on the development VM),
/// where a relative `call` is emulated in the trap (0.4 us). The code is
/// decoded in order from the start of each executable section; None (probe
/// the function itself) when an instruction does not decode, when no call
/// or more than [`MAX_CALL_SITES`] are found.
pub fn call_sites(path: &Path, name: &str) -> Option<Vec<u64>> {
    with_x86_64(path, |obj| {
        let (target, _) = symbol(obj, name)?;
        let mut sites = Vec::new();
        for section in obj.sections().filter(|s| s.kind() == object::SectionKind::Text) {
            let data = section.data().ok()?;
            let mut decoder = Decoder::with_ip(64, data, section.address(), DecoderOptions::NONE);
            while decoder.can_decode() {
                let ins = decoder.decode();
                if ins.is_invalid() {
                    return None;
                }
                if ins.mnemonic() == Mnemonic::Call
                    && ins.op0_kind() == OpKind::NearBranch64
                    && ins.near_branch_target() == target
                {
                    if sites.len() == MAX_CALL_SITES {
                        return None;
                    }
                    sites.push(file_offset(obj, ins.ip())?);
                }
            }
        }
        (!sites.is_empty()).then_some(sites)
    })
}

/// File offset of the probe point in the function both `ex` and `plain` call.
fn internal_entry<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, ex: &str, plain: &str) -> Option<u64> {
    let (ex_addr, _) = symbol(obj, ex)?;
    let target = wrapper_target(ex_addr, &code(obj, ex_addr, 16)?)?;
    let (plain_addr, body) = wrapper_code(obj, plain)?;
    if !calls(plain_addr, &body, target) {
        return None;
    }
    let entry = target + push_entry(&code(obj, target, 8)?)?;
    file_offset(obj, entry)
}

/// Address and code (its symbol's size, at most [`MAX_WRAPPER`] bytes; that
/// much when the size is unknown) of the public wrapper function `name`.
fn wrapper_code<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, name: &str) -> Option<(u64, Vec<u8>)> {
    let (addr, size) = symbol(obj, name)?;
    let len = if size == 0 { MAX_WRAPPER } else { size.min(MAX_WRAPPER) };
    Some((addr, code(obj, addr, len)?))
}

/// Address and size of a defined function symbol (dynamic table first).
fn symbol<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, name: &str) -> Option<(u64, u64)> {
    obj.dynamic_symbols()
        .chain(obj.symbols())
        .find(|s| s.is_definition() && s.kind() == object::SymbolKind::Text && s.name() == Ok(name))
        .map(|s| (s.address(), s.size()))
}

/// The section holding virtual address `addr`.
fn section_at<'d, 'f, R: object::ReadRef<'d>>(
    obj: &'f object::File<'d, R>,
    addr: u64,
) -> Option<object::Section<'d, 'f, R>> {
    obj.sections().find(|s| s.address() <= addr && addr < s.address() + s.size())
}

/// Up to `len` bytes of code at virtual address `addr`.
fn code<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, addr: u64, len: u64) -> Option<Vec<u8>> {
    let section = section_at(obj, addr)?;
    let data = section.data().ok()?;
    let start = usize::try_from(addr - section.address()).ok()?;
    let end = start.saturating_add(usize::try_from(len).ok()?).min(data.len());
    data.get(start..end).map(<[u8]>::to_vec)
}

/// The file offset of virtual address `addr`.
fn file_offset<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, addr: u64) -> Option<u64> {
    let section = section_at(obj, addr)?;
    let (offset, _) = section.file_range()?;
    Some(offset + (addr - section.address()))
}

/// The target of a wrapper `[endbr64] [sub $imm8,%rsp] call rel32` at `addr`.
pub fn wrapper_target(addr: u64, code: &[u8]) -> Option<u64> {
    let mut at = if code.starts_with(&ENDBR64) { 4 } else { 0 };
    if code.get(at..at + 3) == Some(&[0x48, 0x83, 0xec]) {
        at += 4;
    }
    if code.get(at) != Some(&0xe8) {
        return None;
    }
    let rel = i32::from_le_bytes(code.get(at + 1..at + 5)?.try_into().ok()?);
    (addr + at as u64 + 5).checked_add_signed(i64::from(rel))
}

/// Whether `code` (at `addr`) holds a direct call (`e8 rel32`) to `target`.
pub fn calls(addr: u64, code: &[u8], target: u64) -> bool {
    code.windows(5).enumerate().any(|(i, w)| {
        w[0] == 0xe8
            && (addr + i as u64 + 5).checked_add_signed(i64::from(i32::from_le_bytes([w[1], w[2], w[3], w[4]])))
                == Some(target)
    })
}

/// Offset of the probe point in a function starting `[endbr64] push %reg`.
pub fn push_entry(code: &[u8]) -> Option<u64> {
    let at = if code.starts_with(&ENDBR64) { 4 } else { 0 };
    let push = matches!(code.get(at..)?, [0x50..=0x57, ..] | [0x41, 0x50..=0x57, ..]);
    push.then_some(at as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_shapes() {
        // sub $0x8,%rsp; call +0x10 (OpenSSL 3 SSL_read_ex on Debian 12).
        let ex = [0x48, 0x83, 0xec, 0x08, 0xe8, 0x10, 0x00, 0x00, 0x00];
        assert_eq!(wrapper_target(0x1000, &ex), Some(0x1000 + 9 + 0x10));
        // endbr64 first; a backwards call.
        let cet = [0xf3, 0x0f, 0x1e, 0xfa, 0x48, 0x83, 0xec, 0x08, 0xe8, 0xf0, 0xff, 0xff, 0xff];
        assert_eq!(wrapper_target(0x1000, &cet), Some(0x1000 + 13 - 0x10));
        // Anything else before the call: not a plain wrapper.
        assert_eq!(wrapper_target(0x1000, &[0x55, 0xe8, 0, 0, 0, 0]), None);
        assert_eq!(wrapper_target(0x1000, &[0x48, 0x83, 0xec]), None);
    }

    #[test]
    fn direct_calls_are_found_anywhere_in_the_body() {
        let mut body = vec![0x90; 30];
        body.extend_from_slice(&[0xe8, 0x00, 0x01, 0x00, 0x00]);
        assert!(calls(0x2000, &body, 0x2000 + 35 + 0x100));
        assert!(!calls(0x2000, &body, 0x2000 + 35 + 0x101));
    }

    #[test]
    fn only_push_entries_are_taken() {
        assert_eq!(push_entry(&[0x41, 0x55, 0x41, 0x54]), Some(0));
        assert_eq!(push_entry(&[0x53]), Some(0));
        assert_eq!(push_entry(&[0xf3, 0x0f, 0x1e, 0xfa, 0x55]), Some(4));
        assert_eq!(push_entry(&[0x48, 0x83, 0xec, 0x18]), None);
        assert_eq!(push_entry(&[]), None);
    }

    #[test]
    fn gnutls_receive_wrappers_lead_to_their_tail_jump() {
        // gnutls_record_recv of Debian 12's GnuTLS 3.7.9: a kTLS branch that
        // calls, then the common path's tail jump.
        let recv: [u8; 75] = [
            0x48, 0x83, 0xec, 0x08, 0x80, 0xbf, 0xb8, 0x06, 0x00, 0x00, 0x00, 0x48, 0x89, 0xd1, 0x74, 0x40, 0xf6, 0x87,
            0x68, 0x11, 0x00, 0x00, 0x01, 0x74, 0x17, 0x48, 0x89, 0xf2, 0xbe, 0x17, 0x00, 0x00, 0x00, 0xe8, 0x5a, 0x73,
            0x05, 0x00, 0x48, 0x98, 0x48, 0x83, 0xc4, 0x08, 0xc3, 0x0f, 0x1f, 0x00, 0x44, 0x8b, 0x8f, 0x70, 0x07, 0x00,
            0x00, 0x48, 0x89, 0xf2, 0x45, 0x31, 0xc0, 0xbe, 0x17, 0x00, 0x00, 0x00, 0x48, 0x83, 0xc4, 0x08, 0xe9, 0x25,
            0xee, 0xff, 0xff,
        ];
        assert_eq!(recv_tail_jump(0x3fa40, &recv), Some(0x3e8b0));
        // gnutls_record_recv_seq: arguments shifted by one, then the jump.
        let seq = [
            0x44, 0x8b, 0x8f, 0x70, 0x07, 0x00, 0x00, 0x49, 0x89, 0xc8, 0x48, 0x89, 0xd1, 0x48, 0x89, 0xf2, 0xbe, 0x17,
            0x00, 0x00, 0x00, 0xe9, 0xb6, 0xed, 0xff, 0xff,
        ];
        assert_eq!(recv_tail_jump(0x3fae0, &seq), Some(0x3e8b0));
        // Another record type, or the buffer not passed on: no entry.
        let mut handshake = seq;
        handshake[17] = 0x16;
        assert_eq!(recv_tail_jump(0x3fae0, &handshake), None);
        let mut moved = seq;
        moved[15] = 0xf1; // mov %rsi,%rcx
        assert_eq!(recv_tail_jump(0x3fae0, &moved), None);
    }

    /// Debian's GnuTLS (every Debian system has it: apt depends on it).
    #[test]
    fn system_gnutls_has_an_internal_receive_entry() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libgnutls.so.30");
        if !path.exists() {
            return;
        }
        assert!(find_gnutls_recv(path).is_some(), "Debian's GnuTLS tail-jumps to _gnutls_recv_int");
    }

    /// Debian's dynamic loader calls its debugger hook from a few places
    /// (library loads in `dl_main` and `dl_open`, unloads in `dl_close`).
    #[test]
    fn system_loader_hook_call_sites() {
        let path = Path::new("/lib64/ld-linux-x86-64.so.2");
        if !path.exists() {
            return;
        }
        let sites = call_sites(path, "_dl_debug_state").expect("direct calls to _dl_debug_state");
        assert!((2..=MAX_CALL_SITES).contains(&sites.len()), "{sites:?}");
        // Each is a 5-byte `call rel32` to the hook.
        let bytes = std::fs::read(path).expect("read ld.so");
        for s in &sites {
            assert_eq!(bytes[*s as usize], 0xe8, "call at {s:#x}");
        }
    }

    /// The system OpenSSL of the development and CI machines (Debian 12,
    /// OpenSSL 3.0) has the expected shape; skipped where it is absent.
    #[test]
    fn system_openssl_has_internal_entries() {
        let path = Path::new("/usr/lib/x86_64-linux-gnu/libssl.so.3");
        if !path.exists() {
            return;
        }
        let e = find(path).expect("Debian's libssl.so.3 wraps ssl_read_internal/ssl_write_internal");
        assert_ne!(e.read, e.write);
    }
}
