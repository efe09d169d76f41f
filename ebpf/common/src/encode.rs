//! Byte encoders for ring buffer records, exactly as the kernel writes them.
//! Used by the agent's tests, golden fixtures and fuzz seeds.

use crate::{CloseEvent, ConnEvent, DataHeader, ExecEvent, GoStreamEvent, ProcEvent};

/// Views a padding-free `repr(C)` event as bytes.
fn as_bytes<T: Copy>(v: &T) -> &[u8] {
    // SAFETY: callers only pass the padding-free repr(C) event structs of this crate.
    unsafe { core::slice::from_raw_parts((v as *const T).cast::<u8>(), core::mem::size_of::<T>()) }
}

/// Writes a data record (header then payload) into `out`; returns bytes written,
/// or `None` if `out` is too small.
pub fn data(hdr: &DataHeader, payload: &[u8], out: &mut [u8]) -> Option<usize> {
    let h = as_bytes(hdr);
    let total = h.len() + payload.len();
    if out.len() < total {
        return None;
    }
    out[..h.len()].copy_from_slice(h);
    out[h.len()..total].copy_from_slice(payload);
    Some(total)
}

/// Bytes of a connection event record.
pub fn conn(ev: &ConnEvent) -> &[u8] {
    as_bytes(ev)
}

/// Bytes of a close event record.
pub fn close(ev: &CloseEvent) -> &[u8] {
    as_bytes(ev)
}

/// Bytes of a process event record.
pub fn proc(ev: &ProcEvent) -> &[u8] {
    as_bytes(ev)
}

/// Bytes of an exec event record.
pub fn exec(ev: &ExecEvent) -> &[u8] {
    as_bytes(ev)
}

/// Bytes of a Go HTTP/2 stream handler record.
pub fn go_stream(ev: &GoStreamEvent) -> &[u8] {
    as_bytes(ev)
}
