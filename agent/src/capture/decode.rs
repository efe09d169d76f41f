//! Decoding of raw ring buffer records into typed events. Total: any byte
//! string decodes to an event or a [`DecodeError`], never a panic.

use kspan_common::{CloseEvent, ConnEvent, DataHeader, EventKind, ExecEvent, GoStreamEvent, ProcEvent};

/// A decoded ring buffer record; data payloads borrow the record.
#[derive(Debug, PartialEq, Eq)]
pub enum RawEvent<'a> {
    Data {
        hdr: DataHeader,
        /// The captured prefix, then `hdr.tail` bytes that end the call.
        payload: &'a [u8],
    },
    ConnOpen(ConnEvent),
    Close(CloseEvent),
    Exec(ExecEvent),
    Exit(ProcEvent),
    /// A traced process forked: `tgid` is the child, `tid` the parent.
    Fork(ProcEvent),
    /// The process's dynamic loader changed its library list.
    LibLoad(ProcEvent),
    /// A Go HTTP/2 server runs a stream's handler on this goroutine.
    GoStream(GoStreamEvent),
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than its header")]
    Short(usize),
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("data event claims {claimed} payload bytes but carries {present}")]
    PayloadMismatch { claimed: u32, present: usize },
    #[error("data event claims a tail of {tail} bytes in {captured} captured of {len} moved")]
    BadTail { tail: u32, captured: u32, len: u64 },
}

fn read<T: Copy>(bytes: &[u8]) -> Result<T, DecodeError> {
    if bytes.len() < size_of::<T>() {
        return Err(DecodeError::Short(bytes.len()));
    }
    // SAFETY: length checked; T is a plain repr(C) integer struct valid for any bits.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Decodes one record.
pub fn decode(bytes: &[u8]) -> Result<RawEvent<'_>, DecodeError> {
    let kind: u32 = read(bytes)?;
    match EventKind::from_u32(kind) {
        Some(EventKind::Data) => {
            let hdr: DataHeader = read(bytes)?;
            let rest = &bytes[size_of::<DataHeader>()..];
            let n = hdr.captured as usize;
            if n > rest.len() {
                return Err(DecodeError::PayloadMismatch { claimed: hdr.captured, present: rest.len() });
            }
            // The tail follows a prefix and ends the bytes moved: it cannot
            // be longer than the payload, nor the payload than the call.
            if hdr.tail > hdr.captured || (hdr.tail > 0 && u64::from(hdr.captured) > hdr.len) {
                return Err(DecodeError::BadTail { tail: hdr.tail, captured: hdr.captured, len: hdr.len });
            }
            Ok(RawEvent::Data { hdr, payload: &rest[..n] })
        }
        Some(EventKind::ConnOpen) => Ok(RawEvent::ConnOpen(read(bytes)?)),
        Some(EventKind::ConnClose) => Ok(RawEvent::Close(read(bytes)?)),
        Some(EventKind::ProcExec) => Ok(RawEvent::Exec(read(bytes)?)),
        Some(EventKind::ProcExit) => Ok(RawEvent::Exit(read(bytes)?)),
        Some(EventKind::LibLoad) => Ok(RawEvent::LibLoad(read(bytes)?)),
        Some(EventKind::ProcFork) => Ok(RawEvent::Fork(read(bytes)?)),
        Some(EventKind::GoStream) => Ok(RawEvent::GoStream(read(bytes)?)),
        None => Err(DecodeError::UnknownKind(kind)),
    }
}

/// The file name of an exec event (up to its NUL; lossy UTF-8).
pub fn exec_filename(e: &ExecEvent) -> std::borrow::Cow<'_, str> {
    let end = e.filename.iter().position(|b| *b == 0).unwrap_or(e.filename.len());
    String::from_utf8_lossy(&e.filename[..end])
}

#[cfg(test)]
mod tests {
    use kspan_common::{DATA_EGRESS, encode};

    use super::*;

    #[test]
    fn data_round_trips_through_the_kernel_encoding() {
        let hdr = DataHeader {
            kind: EventKind::Data as u32,
            flags: DATA_EGRESS,
            ts_ns: 42,
            tgid: 10,
            tid: 11,
            fd: 3,
            captured: 5,
            len: 9000,
            sock_id: 0xdead,
            goroutine: 0x00c0_001a_2bc0,
            tail: 2,
            reserved: 0,
        };
        let mut buf = [0u8; 128];
        let n = encode::data(&hdr, b"hello", &mut buf).expect("fits");
        let ev = decode(&buf[..n]).expect("decodes");
        assert_eq!(ev, RawEvent::Data { hdr, payload: b"hello" });
    }

    #[test]
    fn control_events_round_trip() {
        let c = ConnEvent { kind: EventKind::ConnOpen as u32, role: 1, lport: 80, rport: 5555, ..Default::default() };
        assert_eq!(decode(encode::conn(&c)), Ok(RawEvent::ConnOpen(c)));
        let x = CloseEvent { kind: EventKind::ConnClose as u32, fd: 7, ..Default::default() };
        assert_eq!(decode(encode::close(&x)), Ok(RawEvent::Close(x)));
        let p = ProcEvent { kind: EventKind::ProcExit as u32, tgid: 9, ..Default::default() };
        assert_eq!(decode(encode::proc(&p)), Ok(RawEvent::Exit(p)));
        let l = ProcEvent { kind: EventKind::LibLoad as u32, tgid: 9, ..Default::default() };
        assert_eq!(decode(encode::proc(&l)), Ok(RawEvent::LibLoad(l)));
        let f = ProcEvent { kind: EventKind::ProcFork as u32, tgid: 10, tid: 9, ..Default::default() };
        assert_eq!(decode(encode::proc(&f)), Ok(RawEvent::Fork(f)));
        let g =
            GoStreamEvent { kind: EventKind::GoStream as u32, stream: 3, goroutine: 0xc000_0001, ..Default::default() };
        assert_eq!(decode(encode::go_stream(&g)), Ok(RawEvent::GoStream(g)));
        let mut e = ExecEvent::default();
        e.proc.kind = EventKind::ProcExec as u32;
        e.filename[..8].copy_from_slice(b"/bin/sh\0");
        assert_eq!(decode(encode::exec(&e)), Ok(RawEvent::Exec(e)));
        assert_eq!(exec_filename(&e), "/bin/sh");
        // A record of the old size (no file name) is short, not misread.
        assert!(matches!(decode(&encode::exec(&e)[..size_of::<ProcEvent>()]), Err(DecodeError::Short(_))));
    }

    #[test]
    fn bad_records_are_errors_not_panics() {
        assert_eq!(decode(&[]), Err(DecodeError::Short(0)));
        assert_eq!(decode(&[9, 0, 0, 0]), Err(DecodeError::UnknownKind(9)));
        let hdr = DataHeader { kind: 1, captured: 100, ..Default::default() };
        let mut buf = [0u8; 128];
        let n = encode::data(&hdr, b"abc", &mut buf).expect("fits");
        assert_eq!(decode(&buf[..n]), Err(DecodeError::PayloadMismatch { claimed: 100, present: 3 }));
        assert!(matches!(decode(&[2, 0, 0, 0, 1]), Err(DecodeError::Short(5))));
        for (tail, captured, len) in [(4, 3, 10), (1, 3, 2)] {
            let hdr = DataHeader { kind: 1, captured, len, tail, ..Default::default() };
            let n = encode::data(&hdr, b"abc", &mut buf).expect("fits");
            assert_eq!(decode(&buf[..n]), Err(DecodeError::BadTail { tail, captured, len }));
        }
    }
}
