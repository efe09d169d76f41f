//! Kernel struct field offsets from the running kernel's BTF, so one eBPF
//! object walks `task_struct`/`file`/`sock` correctly on any kernel version.

use std::os::fd::{AsRawFd, FromRawFd};

use btf_rs::{Backend, Btf, Type};
use kspan_common::KernelOffsets;

use super::CaptureError;

/// Where the kernel publishes its own BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

struct Resolver {
    btf: Btf,
}

impl Resolver {
    fn struct_by_name(&self, name: &str) -> Result<btf_rs::Struct, CaptureError> {
        let types = self.btf.resolve_types_by_name(name).map_err(|e| CaptureError::Btf(format!("{name}: {e}")))?;
        types
            .into_iter()
            .find_map(|t| match t {
                Type::Struct(s) if !s.members.is_empty() => Some(s),
                _ => None,
            })
            .ok_or_else(|| CaptureError::Btf(format!("struct {name} not found")))
    }

    /// Follows typedef/const/volatile to a struct or union.
    fn composite(&self, mut t: Type) -> Option<btf_rs::Struct> {
        for _ in 0..16 {
            match t {
                Type::Struct(s) | Type::Union(s) => return Some(s),
                Type::Typedef(_) | Type::Const(_) | Type::Volatile(_) | Type::Restrict(_) | Type::TypeTag(_) => {
                    let bt = t.as_btf_type()?;
                    t = self.btf.resolve_chained_type(bt).ok()?;
                }
                _ => return None,
            }
        }
        None
    }

    /// Byte offset and bitfield-ness of `name` inside `s`, searching anonymous
    /// struct/union members too.
    fn member(&self, s: &btf_rs::Struct, name: &str, depth: u32) -> Option<(u32, bool)> {
        for m in &s.members {
            let mname = self.btf.resolve_name(m).unwrap_or_default();
            if mname == name {
                return Some((
                    m.bit_offset() / 8,
                    m.bitfield_size().is_some_and(|b| b != 0) || m.bit_offset() % 8 != 0,
                ));
            }
            if mname.is_empty() && depth < 8 {
                let inner = self.btf.resolve_chained_type(m).ok().and_then(|t| self.composite(t));
                if let Some(inner) = inner
                    && let Some((off, bf)) = self.member(&inner, name, depth + 1)
                {
                    return Some((m.bit_offset() / 8 + off, bf));
                }
            }
        }
        None
    }

    /// Offset of a dotted path such as `__sk_common.skc_family` in struct `root`.
    fn offset(&self, root: &str, path: &str) -> Result<(u32, bool), CaptureError> {
        let mut s = self.struct_by_name(root)?;
        let mut total = 0;
        let parts: Vec<&str> = path.split('.').collect();
        for (i, part) in parts.iter().enumerate() {
            let (off, bf) = self
                .member(&s, part, 0)
                .ok_or_else(|| CaptureError::Btf(format!("{root}.{path}: no member {part}")))?;
            total += off;
            if i + 1 == parts.len() {
                return Ok((total, bf));
            }
            // Descend into the member's type.
            let m = s.members.iter().find(|m| self.btf.resolve_name(*m).unwrap_or_default() == *part);
            let next = m
                .and_then(|m| self.btf.resolve_chained_type(m).ok())
                .and_then(|t| self.composite(t))
                .ok_or_else(|| CaptureError::Btf(format!("{root}.{path}: {part} is not a struct")))?;
            s = next;
        }
        Ok((total, false))
    }

    fn plain(&self, root: &str, path: &str) -> Result<u32, CaptureError> {
        match self.offset(root, path)? {
            (off, false) => Ok(off),
            (_, true) => Err(CaptureError::Btf(format!("{root}.{path} is a bitfield"))),
        }
    }
}

/// Opens a BTF file without parsing all of it: mapped, with an index of
/// where each type starts. Parsing every type of a distribution kernel's BTF
/// (5.5 MB here) took 32 MB of heap, most of the agent's memory peak at
/// start-up. The kernel's own file can be mapped since Linux 6.16; a file
/// that cannot be is copied into an anonymous memory file, which can.
fn open(path: &str) -> Result<Btf, CaptureError> {
    match Btf::from_file_with_backend(path, Backend::Mmap) {
        Ok(btf) => Ok(btf),
        Err(_) => open_copy(path),
    }
}

/// [`open`] for a file that cannot be mapped (the kernel's before Linux 6.16).
fn open_copy(path: &str) -> Result<Btf, CaptureError> {
    let err = |e: &dyn std::fmt::Display| CaptureError::Btf(format!("{path}: {e}"));
    let mut src = std::fs::File::open(path).map_err(|e| err(&e))?;
    // SAFETY: a plain system call; the fd it returns is owned by `file` alone.
    let fd = unsafe { libc::memfd_create(c"kspan-btf".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return Err(err(&std::io::Error::last_os_error()));
    }
    // SAFETY: `fd` was just created and is not owned elsewhere.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    std::io::copy(&mut src, &mut file).map_err(|e| err(&e))?;
    let copy = format!("/proc/self/fd/{}", file.as_raw_fd());
    Btf::from_file_with_backend(&copy, Backend::Mmap).map_err(|e| err(&e))
}

/// Resolves every offset the kernel side needs.
pub fn resolve_offsets(path: &str) -> Result<KernelOffsets, CaptureError> {
    offsets_from(open(path)?)
}

fn offsets_from(btf: Btf) -> Result<KernelOffsets, CaptureError> {
    let r = Resolver { btf };
    // sk_type was a bitfield before Linux 5.6; then it cannot be read directly
    // and the stream check is skipped (the agent's parsers reject non-TCP data).
    let sk_type = match r.offset("sock", "sk_type") {
        Ok((off, false)) => off,
        _ => u32::MAX,
    };
    // Syscall arguments in the saved user registers (x86_64 calling convention).
    let regs = if cfg!(target_arch = "x86_64") {
        // The kernel side loads these fields at fixed offsets (a BTF pointer
        // only allows constant ones): any other layout takes the fallback.
        // r10 too: `recvfrom`'s flags (a peek is not reported).
        use kspan_common::{PT_REGS_DI, PT_REGS_DX, PT_REGS_R10, PT_REGS_SI};
        let (di, si, dx) = (r.plain("pt_regs", "di"), r.plain("pt_regs", "si"), r.plain("pt_regs", "dx"));
        match (di, si, dx, r.plain("pt_regs", "r10")) {
            (Ok(a), Ok(b), Ok(c), Ok(d)) if (a, b, c, d) == (PT_REGS_DI, PT_REGS_SI, PT_REGS_DX, PT_REGS_R10) => {
                (a, b, c)
            }
            _ => (u32::MAX, u32::MAX, u32::MAX),
        }
    } else {
        (u32::MAX, u32::MAX, u32::MAX)
    };
    // A Go thread's TLS base (its current goroutine is read below it); the
    // kernel side also loads the saved user stack pointer at a fixed offset.
    let task_fsbase = match (regs.0, r.plain("task_struct", "thread.fsbase"), r.plain("pt_regs", "sp")) {
        (a, Ok(fs), Ok(kspan_common::PT_REGS_SP)) if a != u32::MAX => fs,
        _ => u32::MAX,
    };
    // Unix domain sockets (CONFIG_UNIX may be a module without BTF here).
    let unix = match (
        r.plain("unix_sock", "addr"),
        r.plain("unix_sock", "peer"),
        r.plain("unix_address", "len"),
        r.plain("unix_address", "name"),
    ) {
        (Ok(a), Ok(b), Ok(c), Ok(d)) => (a, b, c, d),
        _ => (u32::MAX, u32::MAX, u32::MAX, u32::MAX),
    };
    Ok(KernelOffsets {
        task_files: r.plain("task_struct", "files")?,
        files_fdt: r.plain("files_struct", "fdt")?,
        fdt_max_fds: r.plain("fdtable", "max_fds")?,
        fdt_fd: r.plain("fdtable", "fd")?,
        file_inode: r.plain("file", "f_inode")?,
        file_private_data: r.plain("file", "private_data")?,
        inode_mode: r.plain("inode", "i_mode")?,
        socket_sk: r.plain("socket", "sk")?,
        sk_family: r.plain("sock", "__sk_common.skc_family")?,
        sk_num: r.plain("sock", "__sk_common.skc_num")?,
        sk_dport: r.plain("sock", "__sk_common.skc_dport")?,
        sk_rcv_saddr: r.plain("sock", "__sk_common.skc_rcv_saddr")?,
        sk_daddr: r.plain("sock", "__sk_common.skc_daddr")?,
        sk_v6_rcv_saddr: r.plain("sock", "__sk_common.skc_v6_rcv_saddr")?,
        sk_v6_daddr: r.plain("sock", "__sk_common.skc_v6_daddr")?,
        sk_type,
        regs_arg0: regs.0,
        regs_arg1: regs.1,
        regs_arg2: regs.2,
        unix_sock_addr: unix.0,
        unix_sock_peer: unix.1,
        unix_address_len: unix.2,
        unix_address_name: unix.3,
        task_fsbase,
        task_signal: r.plain("task_struct", "signal").unwrap_or(u32::MAX),
        signal_live: r.plain("signal_struct", "live").unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mapped_or_copied_btf_gives_the_offsets_a_fully_parsed_one_gives() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipping: no {VMLINUX_BTF}");
            return;
        }
        let t = std::time::Instant::now();
        let mapped = resolve_offsets(VMLINUX_BTF).expect("mapped");
        let took = t.elapsed();
        let copied = offsets_from(open_copy(VMLINUX_BTF).expect("copy")).expect("copied");
        let parsed = offsets_from(Btf::from_file(VMLINUX_BTF).expect("parse")).expect("parsed");
        assert_eq!(mapped, parsed);
        assert_eq!(copied, parsed);
        eprintln!("offsets resolved from the mapped BTF in {took:?}");
    }

    #[test]
    fn resolves_offsets_from_this_kernel() {
        if !std::path::Path::new(VMLINUX_BTF).exists() {
            eprintln!("skipping: no {VMLINUX_BTF}");
            return;
        }
        let o = resolve_offsets(VMLINUX_BTF).expect("offsets");
        // skc_family follows the address/port words at the start of sock_common.
        assert!(o.sk_family >= 8 && o.sk_family < 64, "{o:?}");
        assert!(o.sk_daddr < o.sk_rcv_saddr.max(8), "{o:?}");
        assert!(o.task_files > 0 && o.file_inode > 0 && o.socket_sk > 0, "{o:?}");
        assert!(o.task_signal > 0 && o.signal_live != u32::MAX, "{o:?}");
        assert_ne!(o.sk_type, u32::MAX, "sk_type is a plain field on modern kernels");
        // unix_sock starts with its struct sock; unix_address.name follows refcnt and len.
        assert!(o.unix_sock_addr > o.sk_family && o.unix_sock_peer > o.unix_sock_addr, "{o:?}");
        assert_eq!((o.unix_address_len, o.unix_address_name), (4, 8), "{o:?}");
        if cfg!(target_arch = "x86_64") {
            assert_eq!((o.regs_arg0, o.regs_arg1, o.regs_arg2), (112, 104, 96), "pt_regs di/si/dx");
            assert!(o.goroutines() && o.task_fsbase > o.task_files.min(1000), "{o:?}");
        }
    }
}
