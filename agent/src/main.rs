use std::time::Duration;
fn main() {
    let cfg = kspan::capture::CaptureConfig { capture_bytes: 4096, ring_bytes: 1 << 23, wakeup_bytes: 65536, trace_all: true, exe_filter: false, ports: vec![] };
    let mut c = match kspan::capture::Capture::load(&cfg) { Ok(c) => c, Err(e) => { eprintln!("{e}"); std::process::exit(1) } };
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        c.poll(Duration::from_millis(50), |b| match kspan::capture::decode::decode(b) {
            Ok(kspan::capture::decode::RawEvent::Data { hdr, payload }) => println!("data tgid={} fd={} flags={} len={} cap={} {:?}", hdr.tgid, hdr.fd, hdr.flags, hdr.len, hdr.captured, String::from_utf8_lossy(&payload[..payload.len().min(40)])),
            Ok(e) => println!("{e:?}"),
            Err(e) => println!("ERR {e}"),
        }).unwrap();
    }
    println!("{:?}", c.kernel_counters());
}
