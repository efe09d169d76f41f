//! W3C Trace Context: parsing `traceparent`, fresh ids.

use rand::Rng;

/// A parsed, valid `traceparent`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: [u8; 16],
    pub parent_id: [u8; 8],
    pub flags: u8,
}

fn hex_bytes<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != N * 2 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(i * 2..i * 2 + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Parses a `traceparent` header value per W3C Trace Context level 1/2:
/// `version-traceid-parentid-flags`, lower-case hex, no all-zero ids,
/// version `ff` invalid, version 00 with exactly four fields.
pub fn parse_traceparent(v: &str) -> Option<TraceParent> {
    let v = v.trim();
    let mut parts = v.split('-');
    let version = parts.next()?;
    let trace = parts.next()?;
    let parent = parts.next()?;
    let flags = parts.next()?;
    let version: [u8; 1] = hex_bytes(version)?;
    if version[0] == 0xff || (version[0] == 0 && parts.next().is_some()) {
        return None;
    }
    let trace_id: [u8; 16] = hex_bytes(trace)?;
    let parent_id: [u8; 8] = hex_bytes(parent)?;
    let flags: [u8; 1] = hex_bytes(flags)?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent { trace_id, parent_id, flags: flags[0] })
}

/// A random, non-zero trace id (two 64-bit draws: `rng.random::<[u8; 16]>()`
/// draws a word per byte).
pub fn new_trace_id(rng: &mut impl Rng) -> [u8; 16] {
    loop {
        let id = (u128::from(rng.next_u64()) << 64 | u128::from(rng.next_u64())).to_le_bytes();
        if id != [0; 16] {
            return id;
        }
    }
}

/// A random, non-zero span id.
pub fn new_span_id(rng: &mut impl Rng) -> [u8; 8] {
    loop {
        let id = rng.next_u64().to_le_bytes();
        if id != [0; 8] {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_spec_example() {
        let tp = parse_traceparent("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01").expect("valid");
        assert_eq!(tp.trace_id[0], 0x4b);
        assert_eq!(tp.parent_id[7], 0xb7);
        assert_eq!(tp.flags, 1);
    }

    #[test]
    fn rejects_malformed_values() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ] {
            assert_eq!(parse_traceparent(bad), None, "{bad}");
        }
        // Future versions may carry more fields.
        assert!(parse_traceparent("01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra").is_some());
    }

    #[test]
    fn fresh_ids_are_never_zero() {
        let mut rng = rand::rng();
        for _ in 0..1000 {
            assert_ne!(new_trace_id(&mut rng), [0; 16]);
            assert_ne!(new_span_id(&mut rng), [0; 8]);
        }
    }
}
