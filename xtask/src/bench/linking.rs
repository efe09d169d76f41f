//! What linking costs (whole traces): nginx served to wrk with both ends
//! traced, so every request is a CLIENT span (wrk) and a SERVER span
//! (nginx) that kspan links across processes. Paired rounds of kspan with
//! linking off (`capture.link_hold_ms: 0`), on (the default), off again,
//! so the difference is linking alone: holding, matching and releasing.

use anyhow::Result;
use kspan_e2e::servers::nginx;

use super::{AgentRun, median_of, with_agent, with_config, wrk};

/// One off / on / off round.
struct LinkRound {
    off: [AgentRun; 2],
    on: AgentRun,
}

impl LinkRound {
    fn ratio(&self) -> f64 {
        self.on.rate / ((self.off[0].rate + self.off[1].rate) / 2.0)
    }
    /// CPU per request (server, load generator and agent) off over on: the
    /// throughput ratio of a CPU-bound run with perfect scheduling.
    fn cpu_ratio(&self) -> f64 {
        (self.off[0].total_us() + self.off[1].total_us()) / 2.0 / self.on.total_us()
    }
    /// The capture thread's CPU per request in `stage` (us), as the agent
    /// counts it in the run itself (`kspan_capture_thread_cpu_seconds`).
    fn stage_us(run: &AgentRun, stage: &str) -> f64 {
        run.per_op(&format!("kspan_capture_thread_cpu_seconds_total{{stage=\"{stage}\"}}")) * 1e6
    }
    /// Linking's CPU (the agent's own count, in the linking-on run) as a
    /// share of all the CPU a request costs in that run (server, load
    /// generator, agent). Linking runs only in the agent, so on a CPU-bound
    /// host this is the share of requests it costs; both parts come from
    /// one run, so the VM's drift between runs does not enter.
    fn cpu_share(&self) -> f64 {
        let total = self.on.total_us();
        if total > 0.0 { Self::stage_us(&self.on, "link") / total } else { f64::NAN }
    }
    fn off_us(&self) -> f64 {
        (self.off[0].agent_us + self.off[1].agent_us) / 2.0
    }
    /// Spans built per request with linking on (2: client and server).
    fn spans_per_request(&self) -> f64 {
        self.on.per_op("kspan_spans_built_total")
    }
    /// Cross-process links made per request (1 when every server span found its client span).
    fn links_per_request(&self) -> f64 {
        self.on.per_op("kspan_links_total{kind=\"cross_process\"}")
    }
}

pub(super) fn linking_bench(bin: &std::path::Path, secs: u32, n_rounds: u32) -> Result<()> {
    let ng = nginx();
    let load = || wrk("http", None, ng.port, secs, None).map(|l| (l.rps, l.p99_ms));
    println!(
        "== linking: nginx http + wrk (-t2 -c32, {secs}s), kspan --pid nginx --exe 'bin/wrk$' (both ends traced, \
         every server span linked to wrk's client span), linking off / on / off"
    );
    load()?; // warm-up
    let on_args = ["--pid".to_owned(), ng.pid().to_string(), "--exe".to_owned(), "bin/wrk$".to_owned()];
    let (_dir, off_args) = with_config(&on_args, "capture:\n  link_hold_ms: 0\n")?;
    let mut rs = Vec::new();
    for _ in 0..n_rounds.max(1) {
        let off1 = with_agent(bin, &off_args, ng.pid(), &load)?;
        let on = with_agent(bin, &on_args, ng.pid(), &load)?;
        let off2 = with_agent(bin, &off_args, ng.pid(), &load)?;
        let r = LinkRound { off: [off1, off2], on };
        println!(
            "  round: linking off {:.0} / {:.0}, on {:.0} req/s, ratio {:.3}, CPU-model ratio {:.3}; agent {:.2} -> {:.2} us/req \
             (capture thread: drain {:.2}, build {:.2}, link {:.2}, other {:.2} us/req; linking {:.2} % of the CPU per \
             request); \
             {:.2} spans/req, {:.2} cross-process links per request, released unlinked {}",
            r.off[0].rate,
            r.off[1].rate,
            r.on.rate,
            r.ratio(),
            r.cpu_ratio(),
            r.off_us(),
            r.on.agent_us,
            LinkRound::stage_us(&r.on, "drain"),
            LinkRound::stage_us(&r.on, "build"),
            LinkRound::stage_us(&r.on, "link"),
            LinkRound::stage_us(&r.on, "other"),
            r.cpu_share() * 100.0,
            r.spans_per_request(),
            r.links_per_request(),
            r.on.metrics.nonzero("kspan_link_released_unlinked_total"),
        );
        rs.push(r);
    }
    let (ratio, lo, hi) = median_of(&rs, LinkRound::ratio);
    let (cpu_ratio, clo, chi) = median_of(&rs, LinkRound::cpu_ratio);
    let off_us = median_of(&rs, LinkRound::off_us).0;
    let on_us = median_of(&rs, |r| r.on.agent_us).0;
    let spans = median_of(&rs, LinkRound::spans_per_request).0;
    println!(
        "ratio on / off        {ratio:>10.3}  (rounds {lo:.3}-{hi:.3}) target >= 0.98 (linking within the capture-core budget)"
    );
    println!("CPU-model ratio       {cpu_ratio:>10.3}  (rounds {clo:.3}-{chi:.3}; CPU per request off / on)");
    println!(
        "agent CPU per request {off_us:>7.2} us off -> {on_us:.2} us on: {:+.2} us per span between runs; the agent's \
         own count of its linking: {:.2} us per span ({:.2} spans per request)",
        (on_us - off_us) / spans,
        median_of(&rs, |r| LinkRound::stage_us(&r.on, "link")).0 / spans,
        spans
    );
    let (share, slo, shi) = median_of(&rs, LinkRound::cpu_share);
    println!(
        "linking's CPU share   {:>9.2} %  (rounds {:.2}-{:.2} %) of all CPU per request, by the agent's own count of \
         its linking CPU: what a CPU-bound run loses to linking, ratio {:.3} in the worst round",
        share * 100.0,
        slo * 100.0,
        shi * 100.0,
        1.0 - shi
    );
    println!(
        "agent CPU, linking on {:>7.2} % of one core per 10k req/s, {:.2} % per 10k spans/s (target <= 2 %)",
        on_us,
        on_us / spans
    );
    println!(
        "agent, linking on     {:>10.1} MiB RSS under load (largest round), kernel lost events {:.0} (all rounds)",
        rs.iter().map(|r| r.on.load_rss_kib).max().unwrap_or(0) as f64 / 1024.0,
        rs.iter().map(|r| r.on.metrics.sum("kspan_kernel_lost_total")).sum::<f64>()
    );
    println!(
        "links                 {:>10.2} cross-process links per request",
        median_of(&rs, LinkRound::links_per_request).0
    );
    Ok(())
}
