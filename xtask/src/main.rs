//! `cargo xtask`: setup, build, run, test, bench. `run` and `test` call setup
//! themselves; setup is idempotent (it checks before installing).

mod bench;
mod setup;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

const USAGE: &str = "usage: cargo xtask <command>
  setup [--minimal]     install what kspan and its tests need (idempotent);
                        --minimal: only the eBPF toolchain (rust-src, bpf-linker)
  build [--debug]       build the eBPF object and the kspan binary (release by default)
  run -- <kspan args>   setup --minimal, build, then run kspan (as root), e.g.
                        cargo xtask run -- run --exe nginx
  test [--no-fuzz] [--fuzz-seconds N]
                        setup, build, unit + end-to-end tests, bounded fuzzing
  bench [--seconds N] [--rounds N] [--no-criterion]
        [--only http|https|https-curl|linking|db|otlp]
                        whole-system benchmarks with and without kspan (nginx
                        HTTP and HTTPS under wrk, HTTPS under a curl loop,
                        linking's own cost, PostgreSQL, Redis, OTLP), plus
                        criterion";

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace").to_path_buf()
}

/// Runs a command, failing with its command line if it fails.
pub fn sh(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: $ {cmd:?}");
    let st = cmd.status().with_context(|| format!("spawning {cmd:?}"))?;
    if !st.success() {
        bail!("command failed ({st}): {cmd:?}");
    }
    Ok(())
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// A cargo invocation for the nightly toolchain (rustup proxy), without the
/// stable toolchain's environment leaking in.
pub fn cargo_nightly() -> Command {
    let mut c = Command::new("cargo");
    c.arg("+nightly");
    for var in ["RUSTC", "RUSTDOC", "CARGO", "RUSTUP_TOOLCHAIN", "RUSTC_WRAPPER"] {
        c.env_remove(var);
    }
    c
}

pub fn ebpf_object() -> PathBuf {
    root().join("ebpf/probes/target/bpfel-unknown-none/release/kspan-probes")
}

pub fn build(release: bool) -> Result<PathBuf> {
    sh(cargo_nightly().current_dir(root().join("ebpf/probes")).args(["build", "--release"]))?;
    let obj = ebpf_object();
    if !obj.exists() {
        bail!("eBPF build produced no object at {}", obj.display());
    }
    let mut c = cargo();
    c.current_dir(root()).args(["build", "-p", "kspan", "--bin", "kspan"]).env("KSPAN_BPF_OBJECT", &obj);
    if release {
        c.arg("--release");
    }
    sh(&mut c)?;
    Ok(root().join(if release { "target/release/kspan" } else { "target/debug/kspan" }))
}

fn test(args: &[String]) -> Result<()> {
    let mut fuzz_seconds: u64 = 20;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--no-fuzz" => fuzz_seconds = 0,
            "--fuzz-seconds" => fuzz_seconds = it.next().context("--fuzz-seconds needs a value")?.parse()?,
            other => bail!("unknown test option {other}\n{USAGE}"),
        }
    }
    setup::setup(false)?;
    let bin = build(false)?;
    let obj = ebpf_object();
    // Unit, golden and integration tests of every crate, then the end-to-end
    // suite (which loads the real eBPF programs and drives real servers).
    sh(cargo()
        .current_dir(root())
        .args(["test", "--workspace", "--exclude", "kspan-e2e"])
        .env("KSPAN_BPF_OBJECT", &obj))?;
    sh(cargo()
        .current_dir(root())
        .args(["test", "-p", "kspan-e2e", "--", "--test-threads=1"])
        .env("KSPAN_HELM", setup::helm_path())
        .env("KSPAN_BIN", &bin)
        .env("KSPAN_BPF_OBJECT", &obj))?;
    if fuzz_seconds > 0 {
        fuzz(fuzz_seconds)?;
    }
    eprintln!("xtask: all tests passed");
    Ok(())
}

/// Runs every fuzz target for a bounded time from its committed seeds.
fn fuzz(seconds: u64) -> Result<()> {
    let dir = root().join("agent/fuzz");
    let targets = ["http", "http2", "postgres", "redis", "event_decode", "gopclntab"];
    sh(cargo_nightly().current_dir(&dir).args(["fuzz", "build", "-O"]))?;
    for t in targets {
        let corpus = std::env::temp_dir().join(format!("kspan-fuzz-corpus-{t}"));
        std::fs::create_dir_all(&corpus)?;
        let seeds = dir.join("seeds").join(t);
        let mut c = cargo_nightly();
        c.current_dir(&dir).args(["fuzz", "run", "-O", t]).arg(&corpus);
        if seeds.is_dir() {
            c.arg(&seeds);
        }
        c.args(["--", &format!("-max_total_time={seconds}"), "-rss_limit_mb=2048"]);
        sh(&mut c)?;
    }
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first() else {
        println!("{USAGE}");
        return Ok(());
    };
    let rest = &args[1..];
    match cmd.as_str() {
        "setup" => setup::setup(rest.iter().any(|a| a == "--minimal")),
        "build" => build(!rest.iter().any(|a| a == "--debug")).map(|p| eprintln!("xtask: built {}", p.display())),
        "run" => {
            setup::setup(true)?;
            let bin = build(true)?;
            let kspan_args: Vec<&String> = rest.iter().skip_while(|a| *a == "--").collect();
            let err = exec(&bin, &kspan_args);
            Err(err)
        }
        "test" => test(rest),
        "bench" => bench::bench(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            Ok(())
        }
        other => bail!("unknown command {other}\n{USAGE}"),
    }
}

fn exec(bin: &Path, args: &[&String]) -> anyhow::Error {
    use std::os::unix::process::CommandExt;
    eprintln!("xtask: exec {} {}", bin.display(), args.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(" "));
    anyhow::anyhow!(Command::new(bin).args(args).exec())
}
