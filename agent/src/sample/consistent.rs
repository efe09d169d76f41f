//! Consistent probability sampling (OpenTelemetry TraceIdRatioBased /
//! "consistent probability sampling" with W3C Trace Context Level 2 randomness).
//!
//! Guarantees:
//! - The randomness `R` of a trace is its `ot=rv:` value from tracestate when
//!   present, else the rightmost 7 bytes (56 bits) of the trace id.
//! - A rate `p` maps to the rejection threshold `T = round((1 - p) * 2^56)`;
//!   a trace is kept iff `R >= T`. The same trace and rate always give the
//!   same answer, and the set kept at a lower rate is a subset of the set kept
//!   at a higher rate (T only grows as p shrinks).
//! - Kept spans carry `ot=th:<T as 14 hex digits, trailing zeros trimmed>` in
//!   their tracestate, merged into any existing tracestate.

/// 2^56: the randomness space (exclusive upper bound of R; T for rate 0).
pub const MAX_THRESHOLD: u64 = 1 << 56;

/// W3C tracestate allows at most this many list members.
const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Rejection threshold for a keep probability.
pub fn threshold(rate: f64) -> u64 {
    if rate.is_nan() || rate <= 0.0 {
        return MAX_THRESHOLD;
    }
    if rate >= 1.0 {
        return 0;
    }
    // Computed as 2^56 - round(p * 2^56): for small rates p * 2^56 keeps
    // more precision in an f64 than (1 - p) * 2^56 does.
    let kept = (rate * MAX_THRESHOLD as f64).round() as u64;
    MAX_THRESHOLD - kept.min(MAX_THRESHOLD)
}

/// The 56 random bits of a trace id (bytes 9..16, big endian).
pub fn trace_randomness(trace_id: &[u8; 16]) -> u64 {
    trace_id[9..].iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
}

/// Randomness for a span: explicit `ot=rv:` in tracestate wins over the trace id.
pub fn randomness(trace_id: &[u8; 16], tracestate: &str) -> u64 {
    explicit_randomness(tracestate).unwrap_or_else(|| trace_randomness(trace_id))
}

/// `rv` sub-key of the `ot` tracestate member: exactly 14 hex digits.
pub fn explicit_randomness(tracestate: &str) -> Option<u64> {
    let ot = tracestate.split(',').map(str::trim).find_map(|m| m.strip_prefix("ot="))?;
    let rv = ot.split(';').find_map(|kv| kv.strip_prefix("rv:"))?;
    if rv.len() != 14 {
        return None;
    }
    u64::from_str_radix(rv, 16).ok()
}

/// Whether a trace with randomness `r` is kept at `rate`.
pub fn keeps(r: u64, rate: f64) -> bool {
    r >= threshold(rate)
}

/// `th` encoding of a threshold: 14 hex digits with trailing zeros removed
/// ("0" for a threshold of zero, i.e. keep everything).
pub fn threshold_hex(t: u64) -> String {
    let full = format!("{:014x}", t.min(MAX_THRESHOLD - 1));
    let trimmed = full.trim_end_matches('0');
    if trimmed.is_empty() { "0".to_owned() } else { trimmed.to_owned() }
}

/// Returns `existing` with the `ot` member's `th` sub-key set to `th`
/// (other `ot` sub-keys and other vendors' members are kept; `ot` moves to
/// the front as W3C requires for a modified member).
pub fn merge_tracestate(existing: &str, th: &str) -> String {
    let mut ot_value = String::with_capacity(th.len() + 3);
    ot_value.push_str("th:");
    ot_value.push_str(th);
    let mut others: Vec<&str> = Vec::new();
    for member in existing.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        match member.strip_prefix("ot=") {
            Some(old) => {
                for kv in old.split(';').filter(|kv| !kv.is_empty() && !kv.starts_with("th:")) {
                    ot_value.push(';');
                    ot_value.push_str(kv);
                }
            }
            None => others.push(member),
        }
    }
    let mut out = String::with_capacity(existing.len() + ot_value.len() + 4);
    out.push_str("ot=");
    out.push_str(&ot_value);
    for m in others.into_iter().take(MAX_TRACESTATE_MEMBERS - 1) {
        out.push(',');
        out.push_str(m);
    }
    out
}

/// Writes the sampling threshold for `rate` into a kept span's tracestate.
pub fn record_rate(trace_state: &mut String, rate: f64) {
    *trace_state = merge_tracestate(trace_state, &threshold_hex(threshold(rate)));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id_with_r(r: u64) -> [u8; 16] {
        let mut id = [0xabu8; 16];
        id[8..].copy_from_slice(&r.to_be_bytes());
        id[8] = 0xab; // not part of R
        id
    }

    #[test]
    fn threshold_follows_the_otel_formula() {
        assert_eq!(threshold(1.0), 0);
        assert_eq!(threshold(0.0), MAX_THRESHOLD);
        assert_eq!(threshold(0.5), 1 << 55);
        assert_eq!(threshold(0.25), 3 << 54);
        // 0.9 * 2^56 = 0xe6666666666666.66..: 10% rounds to e6666666666666
        // (2^56 - round(0.1 * 2^56)).
        assert_eq!(threshold_hex(threshold(0.1)), "e6666666666666");
        assert_eq!(threshold_hex(threshold(0.5)), "8");
        assert_eq!(threshold_hex(threshold(0.25)), "c");
        assert_eq!(threshold_hex(threshold(1.0)), "0");
    }

    #[test]
    fn randomness_is_the_rightmost_56_bits() {
        let id = id_with_r(0x0012_3456_789a_bcde);
        assert_eq!(trace_randomness(&id), 0x12_3456_789a_bcde);
    }

    #[test]
    fn keep_iff_randomness_at_least_threshold() {
        let t = threshold(0.5);
        assert!(keeps(t, 0.5));
        assert!(!keeps(t - 1, 0.5));
        assert!(keeps(0, 1.0));
        assert!(!keeps(MAX_THRESHOLD - 1, 0.0));
    }

    #[test]
    fn explicit_rv_overrides_trace_id() {
        let id = id_with_r(0);
        assert_eq!(randomness(&id, "foo=bar,ot=th:8;rv:ffffffffffffff"), 0xff_ffff_ffff_ffff);
        assert_eq!(randomness(&id, "ot=rv:fff"), 0, "malformed rv is ignored");
    }

    #[test]
    fn merge_replaces_th_keeps_other_members_and_moves_ot_first() {
        assert_eq!(merge_tracestate("", "8"), "ot=th:8");
        assert_eq!(merge_tracestate("vendor=x", "c"), "ot=th:c,vendor=x");
        assert_eq!(merge_tracestate("a=1,ot=th:4;rv:0123456789abcd,b=2", "c"), "ot=th:c;rv:0123456789abcd,a=1,b=2");
        let mut ts = String::from("ot=th:0");
        record_rate(&mut ts, 0.5);
        assert_eq!(ts, "ot=th:8");
    }

    #[test]
    fn merge_bounds_member_count() {
        let many: Vec<String> = (0..40).map(|i| format!("v{i}=x")).collect();
        let merged = merge_tracestate(&many.join(","), "8");
        assert_eq!(merged.split(',').count(), MAX_TRACESTATE_MEMBERS);
    }
}
