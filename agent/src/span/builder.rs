//! From a connection exchange to a [`Span`]: ids, kernel timestamps converted
//! to wall-clock time, semantic-convention attributes and W3C trace context.

use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::SmallRng;

use super::context::{new_span_id, new_trace_id, parse_traceparent};
use super::model::{ProcessResource, Span, SpanKind};
use crate::conntrack::ConnExchange;
use crate::protocol::{Privacy, Role};

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
    /// Samples both clocks now (bpf_ktime_get_ns is CLOCK_MONOTONIC).
    pub fn now() -> Self {
        Self { offset_ns: clock_ns(libc::CLOCK_REALTIME) - clock_ns(libc::CLOCK_MONOTONIC) }
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
