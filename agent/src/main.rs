//! `kspan`: CLI -> Config -> run.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use kspan::config::{CliOverrides, Config, OutputKind};

#[derive(Parser)]
#[command(name = "kspan", version, about = "Distributed traces for any Linux service, from eBPF, without code changes")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Trace processes and export spans.
    Run {
        /// Trace this process and its descendants (repeatable).
        #[arg(long = "pid")]
        pids: Vec<u32>,
        /// Trace processes whose executable path or command line matches (repeatable).
        #[arg(long = "exe", value_name = "REGEX")]
        exe: Vec<String>,
        /// Only sockets with this local or peer port (repeatable).
        #[arg(long = "port")]
        ports: Vec<u16>,
        /// Trace every process (the default when no --pid/--exe is given).
        #[arg(long)]
        all: bool,
        /// YAML config file.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// Where spans go (repeatable); default: otlp if an endpoint is configured, else stdout.
        #[arg(long = "output", value_enum)]
        outputs: Vec<OutputKind>,
        /// Business rules and sampling file.
        #[arg(long, value_name = "FILE")]
        rules: Option<PathBuf>,
        /// Address for /metrics, /healthz and /readyz.
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<SocketAddr>,
    },
    /// Check or try out a business rules file.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Subcommand)]
enum RulesCommand {
    /// Validate a rules file (exit 1 with file:line:column on error).
    Check { file: PathBuf },
    /// Show which rules fire on one span and the sampling decision.
    Test {
        file: PathBuf,
        /// The span as JSON: {"name", "kind", "duration_ms", "attributes", "private", "resource", "trace_id"}.
        #[arg(long)]
        span: String,
    },
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("KSPAN_LOG").unwrap_or_else(|_| "info".into()))
        .init();
    match Cli::parse().command {
        Command::Run { pids, exe, ports, all, config, outputs, rules, metrics_addr } => {
            let mut cfg = match &config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            cfg.apply_cli(CliOverrides {
                pids,
                exe,
                ports,
                all,
                outputs,
                rules_file: rules,
                metrics_listen: metrics_addr,
            });
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .thread_name("kspan-async")
                .build()
                .context("starting the tokio runtime")?;
            rt.block_on(kspan::run::run(cfg)).map_err(|e| anyhow::anyhow!("{e}"))
        }
        Command::Rules { command: RulesCommand::Check { file } } => {
            println!("{}", kspan::rules::cli::check(&file)?);
            Ok(())
        }
        Command::Rules { command: RulesCommand::Test { file, span } } => {
            println!("{}", kspan::rules::cli::test(&file, &span)?);
            Ok(())
        }
    }
}
