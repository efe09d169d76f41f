#![no_main]
//! Any byte string fed to the ring buffer decoder, then (when it decodes) to
//! the connection table: never a panic.

use kspan::capture::decode::{RawEvent, decode};
use kspan::conntrack::{ConnLimits, ConnTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut table = ConnTable::new(ConnLimits { max_connections: 64, idle_timeout_ns: 1_000_000 });
    let mut out = Vec::new();
    // Records are length-prefixed (one byte) so one input holds a sequence.
    let mut rest = data;
    while let Some((&n, tail)) = rest.split_first() {
        let n = (n as usize).min(tail.len());
        let (rec, tail) = tail.split_at(n);
        rest = tail;
        match decode(rec) {
            Ok(RawEvent::Data { hdr, payload }) => table.on_data(&hdr, payload, &mut out),
            Ok(RawEvent::ConnOpen(c)) => table.on_open(&c, &mut out),
            Ok(RawEvent::Close(c)) => table.on_close(c.tgid, c.fd, c.sock_id, c.ts_ns, &mut out),
            Ok(RawEvent::Exit(p)) => table.on_exit(p.tgid, p.ts_ns, &mut out),
            Ok(RawEvent::Exec(e)) => drop(kspan::capture::decode::exec_filename(&e)),
            Ok(RawEvent::GoStream(g)) => table.on_go_stream(&g),
            Ok(RawEvent::LibLoad(_) | RawEvent::Fork(_)) | Err(_) => {}
        }
    }
    table.sweep(u64::MAX);
});
