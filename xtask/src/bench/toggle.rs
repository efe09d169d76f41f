//! With and without kspan under one unbroken load: kspan runs throughout
//! and SIGUSR1 pauses it (every program detached) and resumes it, window
//! after window, while the load never stops.
//!
//! Why: on this kind of VM a load's rate drifts by 10-40 % within minutes,
//! and an idle gap (kspan starting, a load generator restarting) changes
//! the next run's speed, so separate runs with and without kspan differ by
//! more than kspan costs. Adjacent windows of one load share the drift.
//! Windows go on, off, off, on, on, off... (each pair holds one of each
//! and a linear drift cancels over two pairs); the ratio of each pair is
//! reported with the median, the mean and a bootstrap 95 % interval of
//! the mean.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};

use super::{Agent, Metrics, http_get, median_of};

/// Settings of one toggled measurement.
pub(super) struct Toggle {
    /// Pairs of windows (one with kspan attached, one paused).
    pub pairs: usize,
    /// Length of one window.
    pub window: Duration,
    /// Wait after a state change is confirmed before measuring.
    pub settle: Duration,
}

/// Pair ratios (with kspan / paused) of a load whose completed operations
/// `done()` counts, measured with kspan started with `args`.
pub(super) fn toggled(bin: &std::path::Path, args: &[String], t: &Toggle, done: &dyn Fn() -> u64) -> Result<Vec<f64>> {
    let agent = Agent::start(bin, args)?;
    let mut rates = Vec::with_capacity(t.pairs * 2);
    let mut attached = true;
    for i in 0..t.pairs * 2 {
        let want = i % 4 == 0 || i % 4 == 3;
        if want != attached {
            set_attached(&agent, want)?;
            attached = want;
        }
        std::thread::sleep(t.settle);
        let (n0, t0) = (done(), Instant::now());
        std::thread::sleep(t.window);
        let rate = (done() - n0) as f64 / t0.elapsed().as_secs_f64();
        rates.push((attached, rate));
    }
    drop(agent);
    let ratios: Vec<f64> = rates
        .chunks(2)
        .map(|w| {
            let (on, off) = if w[0].0 { (w[0].1, w[1].1) } else { (w[1].1, w[0].1) };
            if off > 0.0 { on / off } else { f64::NAN }
        })
        .collect();
    Ok(ratios)
}

/// Sends SIGUSR1 and waits until the agent reports the wanted state (the
/// gauge is published as soon as the links are dropped or made).
fn set_attached(agent: &Agent, attached: bool) -> Result<()> {
    // SAFETY: signal our own child.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGUSR1) };
    let want = if attached { 0.0 } else { 1.0 };
    for _ in 0..750 {
        std::thread::sleep(Duration::from_millis(20));
        if Metrics(http_get(agent.metrics_port, "/metrics")).sum("kspan_capture_paused") == want {
            return Ok(());
        }
    }
    bail!("kspan did not {} within 15 s of SIGUSR1", if attached { "resume" } else { "pause" })
}

/// Median, mean and a bootstrap 95 % interval of the mean (2,000
/// resamples, fixed seed: the same ratios print the same interval).
pub(super) fn summary(ratios: &[f64]) -> (f64, f64, f64, f64) {
    let v: Vec<f64> = ratios.iter().copied().filter(|r| r.is_finite()).collect();
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN, f64::NAN);
    }
    let n = v.len();
    let median = median_of(&v, |r| *r).0;
    let mean = v.iter().sum::<f64>() / n as f64;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        // xorshift64*
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        (seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33) as usize
    };
    let mut means: Vec<f64> = (0..2000).map(|_| (0..n).map(|_| v[next() % n]).sum::<f64>() / n as f64).collect();
    means.sort_by(f64::total_cmp);
    (median, mean, means[50], means[1949])
}

/// Prints the pairs and their summary against `target`.
pub(super) fn print_toggled(ratios: &[f64], t: &Toggle, target: f64) {
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.3}")).collect();
    println!("  pair ratios: {}", shown.join(" "));
    let (median, mean, lo, hi) = summary(ratios);
    let verdict = if lo >= target {
        "meets the target"
    } else if hi < target {
        "misses the target"
    } else {
        "undecided: the interval spans the target"
    };
    println!(
        "toggled ratio         {median:>10.3}  median of {} pairs of {:.1} s windows; mean {mean:.3}, 95 % interval \
         {lo:.3}-{hi:.3}; target >= {target}: {verdict}",
        ratios.len(),
        t.window.as_secs_f64()
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_brackets_the_mean() {
        let r = [0.95, 0.97, 0.99, 1.01, 0.98, 0.96, 1.0, 0.97];
        let (median, mean, lo, hi) = summary(&r);
        assert!((median - 0.975).abs() < 1e-9, "{median}");
        assert!((mean - 0.97875).abs() < 1e-9, "{mean}");
        assert!(lo < mean && mean < hi && lo > 0.95 && hi < 1.0, "{lo}-{hi}");
        assert_eq!(summary(&r), summary(&r), "fixed seed");
        assert!(summary(&[]).0.is_nan());
    }
}
