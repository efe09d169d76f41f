//! Harness for end-to-end tests: runs the real `kspan` binary (path in
//! `KSPAN_BIN`, set by `cargo xtask test`) as root, or as `nobody` with only
//! the capabilities it needs ([`Unprivileged`]), with JSON-lines output,
//! starts real servers on free ports, and collects the spans kspan prints.
//!
//! Every helper fails loudly (panics with context) rather than skipping: a
//! missing binary, server or privilege is a test failure, not a pass.

pub mod servers;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

/// Path of the kspan binary under test.
pub fn kspan_bin() -> PathBuf {
    let p = std::env::var_os("KSPAN_BIN")
        .map(PathBuf::from)
        .expect("KSPAN_BIN is not set: run the end-to-end tests with `cargo xtask test`");
    assert!(p.exists(), "KSPAN_BIN {} does not exist", p.display());
    p
}

/// Directory of the test apps (Python servers and clients).
pub fn apps_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("apps")
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}

/// Waits until something accepts on `port`.
pub fn wait_port(port: u16, timeout: Duration) {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {timeout:?}");
}

/// A running kspan and the spans it printed.
pub struct Kspan {
    child: Child,
    spans: Arc<Mutex<Vec<Value>>>,
    log: Arc<Mutex<String>>,
    pub metrics_port: u16,
    _unprivileged: Option<Unprivileged>,
}

impl Kspan {
    /// Starts `kspan run --output jsonl <args>` and waits until it is attached.
    pub fn start(args: &[&str]) -> Self {
        Self::start_with_env(args, &[])
    }

    /// Like [`Kspan::start`] with extra environment variables.
    pub fn start_with_env(args: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_command(Command::new(kspan_bin()), None, args, env)
    }

    /// Like [`Kspan::start`], but as user `nobody` holding only `caps`
    /// (see [`Unprivileged`]).
    pub fn start_unprivileged(caps: &[&str], args: &[&str]) -> Self {
        let u = Unprivileged::new(caps);
        Self::start_command(u.command(), Some(u), args, &[])
    }

    fn start_command(mut cmd: Command, keep: Option<Unprivileged>, args: &[&str], env: &[(&str, &str)]) -> Self {
        let metrics_port = free_port();
        let mut child = cmd
            .arg("run")
            .args(["--output", "jsonl", "--metrics-addr", &format!("127.0.0.1:{metrics_port}")])
            .args(args)
            .envs(env.iter().copied())
            // E2E_KSPAN_LOG: another log filter while debugging a test.
            .env("KSPAN_LOG", std::env::var("E2E_KSPAN_LOG").unwrap_or_else(|_| "info".into()))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn kspan");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let log = Arc::new(Mutex::new(String::new()));
        let out = child.stdout.take().expect("stdout");
        let s2 = spans.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                match serde_json::from_str::<Value>(&line) {
                    Ok(v) => s2.lock().unwrap().push(v),
                    Err(e) => panic!("kspan printed a non-JSON line on stdout ({e}): {line}"),
                }
            }
        });
        let err = child.stderr.take().expect("stderr");
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                eprintln!("[kspan] {line}");
                let mut l = l2.lock().unwrap();
                l.push_str(&line);
                l.push('\n');
            }
        });
        let k = Self { child, spans, log, metrics_port, _unprivileged: keep };
        k.wait_log("kspan is running", Duration::from_secs(60));
        k
    }

    /// Waits until stderr contains `needle`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) {
        let t = Instant::now();
        while t.elapsed() < timeout {
            if self.log.lock().unwrap().contains(needle) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("kspan did not log {needle:?} within {timeout:?}; log:\n{}", self.log.lock().unwrap());
    }

    /// The kspan process id (setpriv execs kspan in place, so the same).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    /// All spans so far.
    pub fn spans(&self) -> Vec<Value> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until at least `n` spans match `pred`, then a short grace period
    /// for extra (unexpected) ones; returns the matching spans.
    pub fn wait_spans(&self, n: usize, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
        let t = Instant::now();
        loop {
            let got: Vec<Value> = self.spans().into_iter().filter(|s| pred(s)).collect();
            if got.len() >= n {
                std::thread::sleep(Duration::from_millis(300));
                return self.spans().into_iter().filter(|s| pred(s)).collect();
            }
            if t.elapsed() > timeout {
                let metrics = self.metrics();
                let counters: Vec<&str> =
                    metrics.lines().filter(|l| !l.starts_with('#') && !l.ends_with(" 0")).collect();
                panic!(
                    "wanted {n} matching spans within {timeout:?}, got {}: {:#?}\nall spans: {:#?}\nlog:\n{}\nnon-zero metrics:\n{}",
                    got.len(),
                    got,
                    self.spans(),
                    self.log(),
                    counters.join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Fetches /metrics.
    pub fn metrics(&self) -> String {
        http_get(self.metrics_port, "/metrics")
    }

    /// The metrics once they hold the line `want` (counters are published
    /// once a second); fails if they do not within 10 s.
    pub fn wait_metric(&self, want: &str) -> String {
        let t = std::time::Instant::now();
        let mut m = self.metrics();
        while !m.lines().any(|l| l == want) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(200));
            m = self.metrics();
        }
        assert!(m.lines().any(|l| l == want), "no `{want}` in the metrics:\n{m}");
        m
    }

    /// Sends SIGUSR1 (pause or resume capture) and waits until the metrics
    /// report `paused` (published once a second; detaching takes seconds).
    pub fn toggle_pause(&self, paused: bool) {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGUSR1) };
        let want = format!("kspan_capture_paused {}", paused as u8);
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if self.metrics().lines().any(|l| l == want) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("kspan did not report {want:?} within 20 s; log:\n{}", self.log());
    }

    /// kspan's program links: its open perf event and BPF link descriptors.
    pub fn links(&self) -> usize {
        let Ok(dir) = std::fs::read_dir(format!("/proc/{}/fd", self.child.id())) else { return 0 };
        dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
            .filter(|t| {
                let t = t.to_string_lossy();
                t == "anon_inode:[perf_event]" || t == "anon_inode:bpf_link"
            })
            .count()
    }

    /// Sends SIGTERM and waits for exit; returns the exit status success.
    pub fn stop(mut self) -> bool {
        // SAFETY: plain kill(2) on our child's pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(st)) = self.child.try_wait() {
                return st.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        false
    }
}

impl Drop for Kspan {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The capabilities kspan needs without root, as setpriv names them.
pub const KSPAN_CAPS: [&str; 4] = ["bpf", "perfmon", "sys_ptrace", "dac_read_search"];

/// The uid and gid kspan runs as in the least-privilege tests (`nobody`).
pub const NOBODY: u32 = 65534;

/// A copy of the kspan binary that `nobody` can execute (mode 0755 in a
/// fresh temporary directory, removed on drop), run through `setpriv` as
/// uid/gid 65534 with no supplementary groups and exactly `caps` in the
/// bounding, inheritable, ambient (hence permitted and effective) sets.
pub struct Unprivileged {
    dir: servers::TempDir,
    caps: Vec<String>,
}

impl Unprivileged {
    pub fn new(caps: &[&str]) -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = servers::TempDir::new("unpriv");
        let bin = dir.0.join("kspan");
        std::fs::copy(kspan_bin(), &bin).expect("copy kspan");
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).expect("chmod kspan");
        std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).expect("chmod dir");
        Self { dir, caps: caps.iter().map(|c| (*c).to_owned()).collect() }
    }

    /// `setpriv ... -- <copied kspan>`; arguments for kspan follow.
    pub fn command(&self) -> Command {
        let plus: Vec<String> = self.caps.iter().map(|c| format!("+{c}")).collect();
        let set = if plus.is_empty() { "-all".to_owned() } else { plus.join(",") };
        let mut cmd = Command::new("setpriv");
        cmd.args(["--reuid", &NOBODY.to_string(), "--regid", &NOBODY.to_string(), "--clear-groups"])
            .args(["--inh-caps", &format!("-all,{set}"), "--ambient-caps", &format!("-all,{set}")])
            .args(["--bounding-set", &format!("-all,{set}"), "--"])
            .arg(self.dir.0.join("kspan"));
        cmd
    }
}

/// A test app of `tests/apps` driven line by line: its stdout is read a
/// line at a time, a line on its stdin lets it go on. Killed on drop.
pub struct Interactive {
    pub child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Interactive {
    /// Starts `python3 tests/apps/<script> <args>` (with `env`).
    pub fn start(script: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new("python3")
            .arg(apps_dir().join(script))
            .args(args)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{script}: {e}"));
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        Self { child, out }
    }

    /// The app's next line of output (empty at its end).
    pub fn line(&mut self) -> String {
        let mut line = String::new();
        self.out.read_line(&mut line).expect("read app output");
        line
    }

    /// Sends an empty line: the app goes on.
    pub fn go_on(&mut self) {
        use std::io::Write;
        writeln!(self.child.stdin.as_mut().expect("stdin")).expect("write app input");
    }

    /// Closes its stdin and waits for the app to exit; true if it succeeded.
    pub fn wait(mut self) -> bool {
        drop(self.child.stdin.take());
        self.child.wait().is_ok_and(|s| s.success())
    }
}

impl Drop for Interactive {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kspan config file holding `yaml`, in a temporary directory named after
/// `tag`: the path for `--config`, and the directory (removed when dropped,
/// so it is kept as long as kspan runs).
pub fn config_file(tag: &str, yaml: &str) -> (servers::TempDir, String) {
    let dir = servers::TempDir::new(tag);
    let conf = dir.0.join("kspan.yaml");
    std::fs::write(&conf, yaml).expect("write kspan.yaml");
    let path = conf.to_str().expect("UTF-8 temporary path").to_owned();
    (dir, path)
}

/// Minimal HTTP GET over loopback (for the metrics endpoint).
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read");
    body
}

/// Span attribute as string.
pub fn attr<'a>(span: &'a Value, key: &str) -> Option<&'a Value> {
    span.get("attributes").and_then(|a| a.get(key))
}

pub fn attr_str<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    attr(span, key).and_then(Value::as_str)
}

pub fn attr_i64(span: &Value, key: &str) -> Option<i64> {
    attr(span, key).and_then(Value::as_i64)
}

pub fn resource_str<'a>(span: &'a Value, key: &str) -> Option<&'a str> {
    span.get("resource").and_then(|a| a.get(key)).and_then(Value::as_str)
}

pub fn kind(span: &Value) -> &str {
    span["kind"].as_str().unwrap_or("")
}

pub fn duration_ns(span: &Value) -> u64 {
    let s = span["start_unix_nanos"].as_u64().expect("start");
    let e = span["end_unix_nanos"].as_u64().expect("end");
    e.saturating_sub(s)
}

/// The value of line `field` (`Uid:`, `VmRSS:`...) of `/proc/PID/status`,
/// trimmed; panics if the process or the line is missing.
pub fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("process status");
    let value = status.lines().find_map(|l| l.strip_prefix(field)).unwrap_or_else(|| panic!("no {field} in status"));
    value.trim().to_owned()
}

/// Runs a command to completion, panicking with its output on failure.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
