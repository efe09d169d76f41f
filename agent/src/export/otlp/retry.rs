//! What to do with a failed OTLP export, per the OTLP specification
//! (protocol/exporter.md, "Failures" / "Retryable Response Codes"), and how
//! long to wait.
//!
//! Guarantees:
//! - gRPC: CANCELLED, DEADLINE_EXCEEDED, ABORTED, OUT_OF_RANGE, UNAVAILABLE
//!   and DATA_LOSS are retried; RESOURCE_EXHAUSTED only when the status
//!   carries a google.rpc.RetryInfo (its delay is honoured); all others drop.
//! - HTTP: 429, 502, 503 and 504 are retried, honouring `Retry-After`
//!   (delta-seconds or HTTP-date); every other non-2xx status drops.
//! - Backoff doubles from the initial delay up to the cap, each delay
//!   jittered uniformly into [50%, 100%] of its nominal value.

use std::time::{Duration, SystemTime};

use super::super::DropReason;
use super::config::RetrySettings;

/// The decision for one failed attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Try again, after the server-given delay if any (else backoff).
    Retry { after: Option<Duration> },
    /// Give up on the batch; count its spans with this reason.
    Drop(DropReason),
}

/// Classifies a non-OK gRPC status. `retry_info` is the delay of a
/// google.rpc.RetryInfo detail, when the status carries one.
pub fn classify_grpc(code: tonic::Code, retry_info: Option<Duration>) -> Verdict {
    use tonic::Code;
    match code {
        Code::Cancelled
        | Code::DeadlineExceeded
        | Code::Aborted
        | Code::OutOfRange
        | Code::Unavailable
        | Code::DataLoss => Verdict::Retry { after: None },
        Code::ResourceExhausted => match retry_info {
            Some(after) => Verdict::Retry { after: Some(after) },
            None => Verdict::Drop(DropReason::Rejected),
        },
        Code::InvalidArgument
        | Code::NotFound
        | Code::AlreadyExists
        | Code::PermissionDenied
        | Code::FailedPrecondition
        | Code::Unimplemented
        | Code::Unauthenticated => Verdict::Drop(DropReason::Rejected),
        Code::Ok | Code::Unknown | Code::Internal => Verdict::Drop(DropReason::NonRetryable),
    }
}

/// Classifies a non-2xx HTTP status; `retry_after` is the parsed header.
pub fn classify_http(status: u16, retry_after: Option<Duration>) -> Verdict {
    match status {
        429 | 502 | 503 | 504 => Verdict::Retry { after: retry_after },
        400..=499 => Verdict::Drop(DropReason::Rejected),
        _ => Verdict::Drop(DropReason::NonRetryable),
    }
}

/// Parses a `Retry-After` value: delta-seconds or an HTTP-date (a date in
/// the past means "now"). `None` when it is neither.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Exponential backoff with jitter for one batch.
#[derive(Clone, Debug)]
pub struct Backoff {
    nominal: Duration,
    max: Duration,
}

impl Backoff {
    pub fn new(settings: &RetrySettings) -> Self {
        Self { nominal: settings.initial_backoff, max: settings.max_backoff.max(settings.initial_backoff) }
    }

    /// The next delay (jittered), then doubles the nominal delay up to the cap.
    pub fn next_delay(&mut self) -> Duration {
        let delay = jitter(self.nominal, fastrand::f64());
        self.nominal = self.nominal.saturating_mul(2).min(self.max);
        delay
    }
}

/// `nominal * (0.5 + 0.5 * unit)`, `unit` in [0, 1).
pub fn jitter(nominal: Duration, unit: f64) -> Duration {
    nominal.mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    #[test]
    fn grpc_codes_follow_the_otlp_table() {
        let retry = Verdict::Retry { after: None };
        let rejected = Verdict::Drop(DropReason::Rejected);
        let other = Verdict::Drop(DropReason::NonRetryable);
        let table = [
            (Code::Cancelled, retry),
            (Code::Unknown, other),
            (Code::InvalidArgument, rejected),
            (Code::DeadlineExceeded, retry),
            (Code::NotFound, rejected),
            (Code::AlreadyExists, rejected),
            (Code::PermissionDenied, rejected),
            (Code::ResourceExhausted, rejected),
            (Code::FailedPrecondition, rejected),
            (Code::Aborted, retry),
            (Code::OutOfRange, retry),
            (Code::Unimplemented, rejected),
            (Code::Internal, other),
            (Code::Unavailable, retry),
            (Code::DataLoss, retry),
            (Code::Unauthenticated, rejected),
        ];
        for (code, want) in table {
            assert_eq!(classify_grpc(code, None), want, "{code:?}");
        }
    }

    #[test]
    fn resource_exhausted_is_retried_only_with_retry_info_delay() {
        let d = Duration::from_millis(1500);
        assert_eq!(classify_grpc(Code::ResourceExhausted, Some(d)), Verdict::Retry { after: Some(d) });
        assert_eq!(classify_grpc(Code::ResourceExhausted, None), Verdict::Drop(DropReason::Rejected));
    }

    #[test]
    fn http_statuses_follow_the_otlp_table() {
        let hint = Some(Duration::from_secs(3));
        for status in [429, 502, 503, 504] {
            assert_eq!(classify_http(status, hint), Verdict::Retry { after: hint }, "{status}");
            assert_eq!(classify_http(status, None), Verdict::Retry { after: None }, "{status}");
        }
        for status in [400, 401, 403, 404, 408, 413, 415] {
            assert_eq!(classify_http(status, hint), Verdict::Drop(DropReason::Rejected), "{status}");
        }
        for status in [500, 501, 505, 301, 100] {
            assert_eq!(classify_http(status, hint), Verdict::Drop(DropReason::NonRetryable), "{status}");
        }
    }

    #[test]
    fn retry_after_accepts_seconds_and_http_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").expect("date");
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO), "past date");
        assert_eq!(parse_retry_after("-5", now), None);
        assert_eq!(parse_retry_after("1.5", now), None);
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("99999999999999999999999", now), None, "overflow is not a panic");
    }

    #[test]
    fn jitter_stays_within_half_to_full_nominal() {
        let n = Duration::from_secs(2);
        assert_eq!(jitter(n, 0.0), Duration::from_secs(1));
        assert!(jitter(n, 0.999_999) <= n);
        assert_eq!(jitter(n, 5.0), n, "out-of-range unit is clamped");
    }

    #[test]
    fn backoff_doubles_within_bounds_and_caps() {
        let settings = RetrySettings {
            initial_backoff: Duration::from_millis(1000),
            max_backoff: Duration::from_secs(30),
            max_elapsed: Duration::from_secs(60),
        };
        let mut b = Backoff::new(&settings);
        let mut nominal = Duration::from_millis(1000);
        for _ in 0..20 {
            let d = b.next_delay();
            assert!(d >= nominal / 2 && d <= nominal, "{d:?} outside [{:?}, {nominal:?}]", nominal / 2);
            nominal = (nominal * 2).min(Duration::from_secs(30));
        }
        assert_eq!(nominal, Duration::from_secs(30), "reached the cap");
    }
}
