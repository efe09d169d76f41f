//! From a connection exchange to a [`Span`]: ids, kernel timestamps converted
//! to wall-clock time, semantic-convention attributes and W3C trace context.
//!
//! Kernel timestamps are `CLOCK_MONOTONIC`; a span's wall-clock times are
//! that plus the offset between the wall clock and the monotonic clock. NTP
//! slews both clocks alike, but a step of the wall clock (NTP correcting a
//! host that booted with a wrong time, `date -s`) or a suspended host moves
//! the offset: the capture thread samples it again every second
//! ([`SpanBuilder::resync_clock`]), and a change over [`CLOCK_STEP_NS`]
//! is taken, so span times follow the wall clock within a second instead of
//! keeping a start-time offset for the agent's whole life. Smaller
//! differences are sampling noise and are ignored, so spans of one trace
//! never shift against each other by it.

use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::context::{new_span_id, new_trace_id, parse_traceparent};
use super::model::{ProcessResource, Span, SpanKind};
use crate::conntrack::ConnExchange;
use crate::protocol::{Privacy, Role};

/// A change of the wall-clock offset taken for a step (1 ms).
pub const CLOCK_STEP_NS: i128 = 1_000_000;

/// Converts kernel monotonic nanoseconds to Unix nanoseconds.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
}

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: valid out-pointer for clock_gettime.
    unsafe { libc::clock_gettime(id, &mut ts) };
    ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
}

impl Clock {
    /// Samples both clocks now (bpf_ktime_get_ns is CLOCK_MONOTONIC): the
    /// wall clock between two monotonic reads, kept from the tightest of a
    /// few tries (a thread preempted between the reads would skew it).
    pub fn now() -> Self {
        let mut best: Option<(i128, i128)> = None;
        for _ in 0..4 {
            let before = clock_ns(libc::CLOCK_MONOTONIC);
            let wall = clock_ns(libc::CLOCK_REALTIME);
            let after = clock_ns(libc::CLOCK_MONOTONIC);
            let (gap, offset) = (after - before, wall - (before + after) / 2);
            if best.is_none_or(|(g, _)| gap < g) {
                best = Some((gap, offset));
            }
            if gap < 20_000 {
                break;
            }
        }
        Self { offset_ns: best.map_or(0, |(_, o)| o) }
    }

    /// A fixed offset (tests).
    pub fn with_offset(offset_ns: i128) -> Self {
        Self { offset_ns }
    }

    pub fn to_unix(&self, mono_ns: u64) -> u64 {
        (mono_ns as i128 + self.offset_ns).max(0) as u64
    }

    /// Current kernel monotonic time.
    pub fn monotonic_now() -> u64 {
        clock_ns(libc::CLOCK_MONOTONIC) as u64
    }
}

/// Counters of the span stage.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuilderStats {
    pub built: u64,
    /// Requests with a `traceparent` header that is not valid W3C.
    pub bad_traceparent: u64,
    /// Requests that joined an incoming trace.
    pub joined_trace: u64,
}

/// Builds spans.
pub struct SpanBuilder {
    clock: Clock,
    privacy: Privacy,
    rng: SmallRng,
    pub stats: BuilderStats,
}

impl SpanBuilder {
    /// Kernel monotonic ns as unix ns, by the clock spans are built with.
    pub fn unix_ns(&self, mono_ns: u64) -> u64 {
        self.clock.to_unix(mono_ns)
    }

    pub fn new(clock: Clock, privacy: Privacy) -> Self {
        Self { clock, privacy, rng: SmallRng::from_os_rng(), stats: BuilderStats::default() }
    }

    /// Samples the clocks again (see the module header); returns the wall
    /// clock's step in ns when it moved by more than [`CLOCK_STEP_NS`].
    pub fn resync_clock(&mut self) -> Option<i128> {
        self.resync_to(Clock::now())
    }

    fn resync_to(&mut self, now: Clock) -> Option<i128> {
        let step = now.offset_ns - self.clock.offset_ns;
        (step.abs() > CLOCK_STEP_NS).then(|| {
            self.clock = now;
            step
        })
    }

    pub fn build(&mut self, cx: &ConnExchange, resource: Arc<ProcessResource>) -> Span {
        let ex = &cx.exchange;
        let mut d = ex.record.describe(ex.role, &cx.meta, &self.privacy);
        if cx.meta.tls {
            // OTel `tls.*`: the bytes came through an established TLS session.
            d.attributes.set("tls.established", true);
        }
        let kind = match ex.role {
            Role::Server => SpanKind::Server,
            Role::Client => SpanKind::Client,
        };
        let incoming = d.traceparent.as_deref().map(|v| (v, parse_traceparent(v)));
        let (trace_id, parent_span_id, trace_flags, trace_state) = match incoming {
            Some((_, Some(tp))) => {
                self.stats.joined_trace += 1;
                (tp.trace_id, tp.parent_id, tp.flags, d.tracestate.clone().unwrap_or_default())
            }
            Some((_, None)) => {
                self.stats.bad_traceparent += 1;
                (new_trace_id(&mut self.rng), [0; 8], 1, String::new())
            }
            None => (new_trace_id(&mut self.rng), [0; 8], 1, String::new()),
        };
        self.stats.built += 1;
        Span {
            trace_id,
            span_id: new_span_id(&mut self.rng),
            parent_span_id,
            trace_state,
            trace_flags,
            name: d.name,
            kind,
            start_unix_ns: self.clock.to_unix(ex.start_ns),
            end_unix_ns: self.clock.to_unix(ex.end_ns.max(ex.start_ns)),
            status: d.status,
            attributes: d.attributes,
            private: d.private,
            events: Vec::new(),
            resource,
            tid: ex.tid,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stepped_wall_clock_is_followed_and_sampling_noise_is_not() {
        let mut b = SpanBuilder::new(Clock::with_offset(1_000_000_000), Privacy::default());
        // Noise (under 1 ms) leaves the offset alone: spans of one trace
        // built a second apart do not shift against each other.
        assert_eq!(b.resync_to(Clock::with_offset(1_000_400_000)), None);
        assert_eq!(b.unix_ns(5), 1_000_000_005);
        // A step forward (NTP's first correction) and back are taken.
        assert_eq!(b.resync_to(Clock::with_offset(121_000_000_000)), Some(120_000_000_000));
        assert_eq!(b.unix_ns(5), 121_000_000_005);
        assert_eq!(b.resync_to(Clock::with_offset(61_000_000_000)), Some(-60_000_000_000));
        assert_eq!(b.unix_ns(5), 61_000_000_005);
    }

    #[test]
    fn samples_of_this_hosts_clocks_agree_within_the_step_threshold() {
        let (a, b) = (Clock::now(), Clock::now());
        assert!((a.offset_ns - b.offset_ns).abs() < CLOCK_STEP_NS, "{a:?} {b:?}");
        let wall = clock_ns(libc::CLOCK_REALTIME);
        let converted = a.to_unix(Clock::monotonic_now()) as i128;
        assert!((converted - wall).abs() < 50_000_000, "{converted} vs {wall}");
    }
}
