//! Where the TLS entry uprobes go: OpenSSL's internal read and write
//! functions when they can be found, the public `SSL_*` symbols otherwise.
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

use std::path::Path;

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
    let file = std::fs::File::open(path).ok()?;
    let cache = object::ReadCache::new(file);
    let obj = object::File::parse(&cache).ok()?;
    if obj.architecture() != object::Architecture::X86_64 {
        return None;
    }
    let read = internal_entry(&obj, "SSL_read_ex", "SSL_read")?;
    let write = internal_entry(&obj, "SSL_write_ex", "SSL_write")?;
    Some(InternalEntries { read, write })
}

/// File offset of the probe point in the function both `ex` and `plain` call.
fn internal_entry<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, ex: &str, plain: &str) -> Option<u64> {
    let (ex_addr, _) = symbol(obj, ex)?;
    let target = wrapper_target(ex_addr, &code(obj, ex_addr, 16)?)?;
    let (plain_addr, plain_size) = symbol(obj, plain)?;
    let size = if plain_size == 0 { MAX_WRAPPER } else { plain_size.min(MAX_WRAPPER) };
    if !calls(plain_addr, &code(obj, plain_addr, size)?, target) {
        return None;
    }
    let entry = target + push_entry(&code(obj, target, 8)?)?;
    file_offset(obj, entry)
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
