//! From a file descriptor of the current task to its TCP (or Unix domain
//! stream) socket, by walking task->files->fdt->fd[fd]->f_inode /
//! private_data->sk with offsets the agent resolved from BTF.

use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use kspan_common::KernelOffsets;

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;
const AF_UNIX: u16 = 1;
const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOCK_STREAM: u16 = 1;

pub struct SockInfo {
    pub sk: u64,
    pub family: u16,
    pub lport: u16,
    pub rport: u16,
    pub laddr: [u8; 16],
    pub raddr: [u8; 16],
    /// AF_UNIX: the `struct unix_address` naming the server's socket (the
    /// socket's own, else its peer's; 0: unnamed).
    pub unix_addr: u64,
}

#[inline(always)]
pub(crate) unsafe fn rd<T>(base: u64, off: u32) -> Option<T> {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel((base + off as u64) as *const T) }.ok()
}

/// The current task's fd table: (its array of `struct file *`, its size).
/// Every fd number the task has is below the size.
#[inline(always)]
pub fn fd_table(o: &KernelOffsets) -> Option<(u64, u32)> {
    // SAFETY: every dereference goes through bpf_probe_read_kernel.
    unsafe {
        let files: u64 = rd(bpf_get_current_task(), o.task_files)?;
        if files == 0 {
            return None;
        }
        let fdt: u64 = rd(files, o.files_fdt)?;
        Some((rd(fdt, o.fdt_fd)?, rd(fdt, o.fdt_max_fds)?))
    }
}

/// The TCP or Unix domain stream socket behind `fd` of the current task, if
/// it is one (Unix domain ones only when the agent gave their offsets).
#[inline(always)]
pub fn lookup(o: &KernelOffsets, fd: u32) -> Option<SockInfo> {
    let (fd_array, max_fds) = fd_table(o)?;
    if fd >= max_fds {
        return None;
    }
    // SAFETY: every dereference goes through bpf_probe_read_kernel.
    unsafe {
        let file: u64 = rd(fd_array, fd.wrapping_mul(8))?;
        if file == 0 {
            return None;
        }
        let inode: u64 = rd(file, o.file_inode)?;
        let mode: u16 = rd(inode, o.inode_mode)?;
        if mode & S_IFMT != S_IFSOCK {
            return None;
        }
        let socket: u64 = rd(file, o.file_private_data)?;
        let sk: u64 = rd(socket, o.socket_sk)?;
        if sk == 0 {
            return None;
        }
        let family: u16 = rd(sk, o.sk_family)?;
        let unix = family == AF_UNIX && o.unix_sock_addr != u32::MAX;
        if family != AF_INET && family != AF_INET6 && !unix {
            return None;
        }
        if o.sk_type != u32::MAX {
            let ty: u16 = rd(sk, o.sk_type)?;
            if ty != SOCK_STREAM {
                return None;
            }
        }
        if unix {
            let peer: u64 = rd(sk, o.unix_sock_peer).unwrap_or(0);
            let mut unix_addr: u64 = rd(sk, o.unix_sock_addr).unwrap_or(0);
            if unix_addr == 0 && peer != 0 {
                unix_addr = rd(peer, o.unix_sock_addr).unwrap_or(0);
            }
            // The peer's socket identifies the other end (see ConnEvent::raddr).
            let mut raddr = [0u8; 16];
            raddr[..8].copy_from_slice(&peer.to_le_bytes());
            return Some(SockInfo { sk, family, lport: 0, rport: 0, laddr: [0; 16], raddr, unix_addr });
        }
        let lport: u16 = rd(sk, o.sk_num).unwrap_or(0);
        let rport: u16 = u16::from_be(rd(sk, o.sk_dport).unwrap_or(0));
        let mut laddr = [0u8; 16];
        let mut raddr = [0u8; 16];
        if family == AF_INET {
            let l: [u8; 4] = rd(sk, o.sk_rcv_saddr).unwrap_or([0; 4]);
            let r: [u8; 4] = rd(sk, o.sk_daddr).unwrap_or([0; 4]);
            laddr[..4].copy_from_slice(&l);
            raddr[..4].copy_from_slice(&r);
        } else {
            laddr = rd(sk, o.sk_v6_rcv_saddr).unwrap_or([0; 16]);
            raddr = rd(sk, o.sk_v6_daddr).unwrap_or([0; 16]);
        }
        Some(SockInfo { sk, family, lport, rport, laddr, raddr, unix_addr: 0 })
    }
}
