//! HTTP/2: nginx serving cleartext HTTP/2 (prior knowledge) to h2load, with
//! 10 concurrent streams on each of 32 connections, with and without kspan
//! (`--pid` nginx: one SERVER span per stream, paired by stream id).

use std::process::Command;

use anyhow::{Context, Result, bail};
use kspan_e2e::servers::nginx_h2c;

use super::compare;

pub fn h2_bench(bin: &std::path::Path, secs: u32, n_rounds: u32) -> Result<()> {
    let ng = nginx_h2c();
    let url = format!("http://127.0.0.1:{}/index.html", ng.port);
    let load = || h2load(&url, secs, None);
    compare(
        &format!("nginx h2c + h2load (-t2 -c32 -m10, {secs}s), kspan --pid nginx: req/s"),
        n_rounds,
        0.98,
        bin,
        &["--pid".into(), ng.pid().to_string()],
        ng.pid(),
        &load,
    )
}

/// h2load on `url` (2 threads, 32 connections, 10 streams each) for `secs`
/// seconds, with `LD_LIBRARY_PATH` set to `lib_dir` if given; its req/s.
pub(super) fn h2load(url: &str, secs: u32, lib_dir: Option<&std::path::Path>) -> Result<f64> {
    let mut cmd = Command::new("h2load");
    if let Some(d) = lib_dir {
        cmd.env("LD_LIBRARY_PATH", d);
    }
    let out = cmd
        .args(["-t", "2", "-c", "32", "-m", "10", "-D", &secs.to_string(), url])
        .output()
        .context("h2load (apt install nghttp2-client; `cargo xtask setup` does it)")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("h2load failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_h2load(&text).with_context(|| format!("no rate in h2load output:\n{text}"))
}

/// Requests per second from h2load's `finished in 10.00s, 12345.67 req/s, ...`.
fn parse_h2load(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.starts_with("finished in"))?;
    let rate = line.split(", ").nth(1)?.strip_suffix(" req/s")?;
    rate.parse().ok()
}

#[cfg(test)]
mod tests {
    #[test]
    fn parses_h2load_output() {
        let out = "starting benchmark...\n\nfinished in 5.00s, 41234.20 req/s, 10.12MB/s\nrequests: 206171 total\n";
        assert_eq!(super::parse_h2load(out), Some(41234.20));
        assert_eq!(super::parse_h2load("finished in 5.00s\n"), None);
    }
}
