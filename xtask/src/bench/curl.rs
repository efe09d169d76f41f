//! nginx HTTPS driven by a curl loop: one `curl` process per request, so
//! every request pays a process start, a TCP connection and a full TLS
//! handshake, as short-lived clients and connection-per-request services
//! do. It complements the wrk run (many small requests on long-lived TLS
//! connections, the worst case for per-call uprobes).

use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use kspan_e2e::servers::nginx_tls;

use super::toggle::{Toggle, print_toggled, toggled};
use super::{print_p99, print_rounds, rounds};

/// Concurrent loops: one per core of the machines this is measured on, so
/// the run is CPU-bound and kspan's cost shows as lost requests.
const LOOPS: usize = 2;

/// One `curl` request to `url`; a failed request is an error.
fn curl_once(url: &str) -> Result<()> {
    let st = Command::new("curl").args(["-sfk", "-o", "/dev/null", url]).status()?;
    if !st.success() {
        bail!("curl {url}: {st}");
    }
    Ok(())
}

/// `LOOPS` loops of one `curl` per request to `port` for `secs` seconds;
/// returns (requests per second, p99 latency in ms). A failed request fails
/// the run: a rate of failures would flatter it.
fn curl_loop(port: u16, secs: u32) -> Result<(f64, f64)> {
    let url = format!("https://127.0.0.1:{port}/index.html");
    let started = Instant::now();
    let deadline = started + Duration::from_secs(secs.into());
    let one_loop = || -> Result<Vec<f64>> {
        let mut lat = Vec::new();
        while Instant::now() < deadline {
            let t = Instant::now();
            curl_once(&url)?;
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        Ok(lat)
    };
    let per_loop: Vec<Result<Vec<f64>>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..LOOPS).map(|_| s.spawn(one_loop)).collect();
        hs.into_iter().map(|h| h.join().unwrap_or_else(|_| bail!("curl loop thread panicked"))).collect()
    });
    let mut lat = per_loop.into_iter().collect::<Result<Vec<_>>>()?.concat();
    let secs = started.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let p99 = lat.get(lat.len() * 99 / 100).copied().unwrap_or(f64::NAN);
    Ok((lat.len() as f64 / secs, p99))
}

/// The curl loops run without a break while kspan is paused and resumed
/// (see [`super::toggle`]); returns the pair ratios.
fn curl_toggled(bin: &std::path::Path, port: u16, args: &[String], t: &Toggle) -> Result<Vec<f64>> {
    let url = format!("https://127.0.0.1:{port}/index.html");
    let (done, stop) = (AtomicU64::new(0), AtomicBool::new(false));
    std::thread::scope(|s| {
        let loops: Vec<_> = (0..LOOPS)
            .map(|_| {
                s.spawn(|| -> Result<()> {
                    while !stop.load(Ordering::Relaxed) {
                        curl_once(&url)?;
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(())
                })
            })
            .collect();
        let ratios = toggled(bin, args, t, &|| done.load(Ordering::Relaxed));
        stop.store(true, Ordering::Relaxed);
        for l in loops {
            l.join().unwrap_or_else(|_| bail!("curl loop thread panicked"))?;
        }
        ratios
    })
}

pub(super) fn curl_bench(bin: &std::path::Path, secs: u32, n_rounds: u32, pairs: usize) -> Result<()> {
    let ng = nginx_tls();
    println!(
        "== nginx https + curl loop ({LOOPS} loops, a new curl process, connection and TLS handshake per request, \
         {secs}s), kspan --pid nginx --output none: req/s"
    );
    println!("(curl uses the system libssl: its SSL calls hit kspan's uprobes, whose programs return at once)");
    let load = || curl_loop(ng.port, secs);
    load()?; // warm-up
    let args = ["--pid".to_owned(), ng.pid().to_string()];
    let rs = rounds(n_rounds, bin, &args, ng.pid(), &load)?;
    print_rounds(&rs, 0.97);
    print_p99(&rs);
    if pairs > 0 {
        let t = Toggle { pairs, window: Duration::from_secs(1), settle: Duration::from_millis(300) };
        println!(
            "-- the same, toggled: the curl loops never stop while kspan (started once) is paused and resumed by \
             SIGUSR1"
        );
        let ratios = curl_toggled(bin, ng.port, &args, &t)?;
        print_toggled(&ratios, &t, 0.97);
    }
    Ok(())
}
