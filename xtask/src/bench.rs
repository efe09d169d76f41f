//! `cargo xtask bench`: whole-system benchmarks that run the same load with
//! and without kspan in one run and print ratios, then the criterion benches
//! of the hot paths (parsers, rules, encoding).

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use kspan_e2e::servers::nginx;
use kspan_e2e::{free_port, http_get};

use crate::{cargo, root, setup, sh};

/// One load-generator result.
#[derive(Clone, Copy, Debug, Default)]
struct Load {
    rps: f64,
    p99_ms: f64,
}

/// Parses wrk's `Requests/sec:` and the `99%` latency line (with --latency).
fn parse_wrk(out: &str) -> Result<Load> {
    let rps = out
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .context("wrk printed no Requests/sec")?;
    let p99 =
        out.lines().find_map(|l| l.trim().strip_prefix("99%")).map(|v| parse_duration_ms(v.trim())).unwrap_or(f64::NAN);
    Ok(Load { rps, p99_ms: p99 })
}

fn parse_duration_ms(v: &str) -> f64 {
    let (num, unit): (String, String) = v.chars().partition(|c| c.is_ascii_digit() || *c == '.');
    let n: f64 = num.parse().unwrap_or(f64::NAN);
    match unit.as_str() {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        _ => f64::NAN,
    }
}

fn wrk(port: u16, secs: u32) -> Result<Load> {
    let out = Command::new("wrk")
        .args(["-t2", "-c32", &format!("-d{secs}s"), "--latency"])
        .arg(format!("http://127.0.0.1:{port}/index.html"))
        .output()
        .context("running wrk")?;
    if !out.status.success() {
        bail!("wrk failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// CPU ticks (user + system) and peak RSS (KiB) of a process.
fn proc_usage(pid: u32) -> (u64, u64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map(|(_, r)| r.split_whitespace().collect()).unwrap_or_default();
    let ticks = fields.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + fields.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (ticks, hwm)
}

fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

struct Agent {
    child: Child,
    metrics_port: u16,
}

impl Agent {
    fn start(bin: &std::path::Path, args: &[String]) -> Result<Self> {
        let metrics_port = free_port();
        let child = Command::new(bin)
            .arg("run")
            .args(["--output", "none", "--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(args)
            .env("KSPAN_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .context("starting kspan")?;
        for _ in 0..200 {
            if std::net::TcpStream::connect(("127.0.0.1", metrics_port)).is_ok()
                && http_get(metrics_port, "/readyz").contains("200 OK")
            {
                return Ok(Self { child, metrics_port });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!("kspan did not become ready")
    }

    fn metric_sum(&self, prefix: &str) -> f64 {
        http_get(self.metrics_port, "/metrics")
            .lines()
            .filter(|l| l.starts_with(prefix))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: signal our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

fn http_bench(bin: &std::path::Path, secs: u32) -> Result<()> {
    let ng = nginx();
    wrk(ng.port, 2)?; // warm-up
    let base1 = wrk(ng.port, secs)?;
    let agent = Agent::start(bin, &["--pid".into(), ng.pid().to_string()])?;
    let (t0, _) = proc_usage(agent.child.id());
    let with = wrk(ng.port, secs)?;
    let (t1, rss_kib) = proc_usage(agent.child.id());
    let spans = agent.metric_sum("kspan_spans_built_total");
    let lost = agent.metric_sum("kspan_kernel_lost_total");
    drop(agent);
    let base2 = wrk(ng.port, secs)?;
    let base = Load { rps: (base1.rps + base2.rps) / 2.0, p99_ms: (base1.p99_ms + base2.p99_ms) / 2.0 };
    let cpu_core = (t1 - t0) as f64 / clk_tck() / secs as f64;
    let per_10k = cpu_core / (with.rps / 10_000.0);
    println!("== nginx + wrk (-t2 -c32, {secs}s), kspan --pid nginx --output none");
    println!("baseline req/s        {:>10.0}  (runs: {:.0}, {:.0})", base.rps, base1.rps, base2.rps);
    println!("with kspan req/s      {:>10.0}", with.rps);
    println!("req/s ratio           {:>10.3}   target >= 0.98", with.rps / base.rps);
    println!(
        "p99 baseline / kspan  {:>7.3} ms / {:.3} ms  (delta {:+.3} ms)",
        base.p99_ms,
        with.p99_ms,
        with.p99_ms - base.p99_ms
    );
    println!(
        "agent CPU             {:>10.1} % of one core ({:.2} % per 10k req/s, target <= 2 %)",
        cpu_core * 100.0,
        per_10k * 100.0
    );
    println!("agent peak RSS        {:>10.1} MiB  target <= 40 MiB", rss_kib as f64 / 1024.0);
    println!("spans built           {spans:>10.0}  (requests served with kspan: ~{:.0})", with.rps * secs as f64);
    println!("kernel lost events    {lost:>10.0}  target 0");
    Ok(())
}

pub fn bench(args: &[String]) -> Result<()> {
    let secs: u32 =
        args.iter().position(|a| a == "--seconds").and_then(|i| args.get(i + 1)?.parse().ok()).unwrap_or(10);
    let skip_criterion = args.iter().any(|a| a == "--no-criterion");
    setup::setup(false)?;
    let bin = crate::build(true)?;
    http_bench(&bin, secs)?;
    if !skip_criterion {
        sh(cargo().current_dir(root()).args(["bench", "-p", "kspan", "--", "--quick"]))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_wrk_output() {
        let out = "Running 2s test\n  Latency Distribution\n     50%  310.00us\n     99%    2.51ms\nRequests/sec:  51234.56\n";
        let l = parse_wrk(out).unwrap();
        assert_eq!(l.rps, 51234.56);
        assert!((l.p99_ms - 2.51).abs() < 1e-9);
        assert!((parse_duration_ms("310.00us") - 0.31).abs() < 1e-9);
        assert_eq!(parse_duration_ms("1.5s"), 1500.0);
    }
}
