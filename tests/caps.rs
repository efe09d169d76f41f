//! End-to-end least privilege: kspan as user `nobody` (uid 65534) holding
//! only CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH traces
//! HTTP, PostgreSQL and Redis like root kspan does; with any one of the four
//! removed it exits non-zero within seconds, naming the missing capability.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kspan_e2e::servers::{child_pid_of, postgres, python_http, redis};
use kspan_e2e::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);

fn db_system(s: &Value) -> &str {
    attr_str(s, "db.system.name").unwrap_or("")
}

/// The `Uid:` (real, effective, ...) and `CapEff:` lines of a process.
fn uid_and_caps(pid: u32) -> (String, u64) {
    (status_field(pid, "Uid:"), u64::from_str_radix(&status_field(pid, "CapEff:"), 16).expect("CapEff hex"))
}

#[test]
fn nobody_with_four_capabilities_traces_http_postgres_and_redis() {
    let app = python_http("caps");
    let pg = postgres();
    let postmaster = child_pid_of(pg.pid());
    let r = redis();
    let k = Kspan::start_unprivileged(
        &KSPAN_CAPS,
        &[
            "--pid",
            &app.pid().to_string(),
            "--pid",
            &postmaster.to_string(),
            "--exe",
            "bin/psql$",
            "--exe",
            "redis-cli$",
        ],
    );
    let (uid, caps) = uid_and_caps(k.pid());
    assert_eq!(uid.split_whitespace().collect::<Vec<_>>(), ["65534"; 4], "kspan runs as nobody");
    // CAP_DAC_READ_SEARCH=2, CAP_SYS_PTRACE=19, CAP_PERFMON=38, CAP_BPF=39, nothing else.
    assert_eq!(caps, (1 << 2) | (1 << 19) | (1 << 38) | (1 << 39), "effective capabilities {caps:#x}");

    run_ok(Command::new("curl").args(["-s", "-o", "/dev/null"]).arg(format!("http://127.0.0.1:{}/users/7", app.port)));
    let http = k.wait_spans(1, WAIT, |s| {
        kind(s) == "server" && s["resource"]["process.pid"].as_i64() == Some(app.pid() as i64)
    });
    assert_eq!(attr_str(&http[0], "http.route"), Some("/users/{id}"), "{:#}", http[0]);
    assert_eq!(attr_i64(&http[0], "http.response.status_code"), Some(200));
    // process.* resource attributes come from /proc of a root-owned process.
    assert_eq!(resource_str(&http[0], "process.executable.name").map(|e| e.starts_with("python")), Some(true));

    run_ok(
        Command::new("psql")
            .args(["-h", "127.0.0.1", "-p", &pg.port.to_string(), "-U", "postgres", "-d", "kspan", "-qc"])
            .arg("SELECT 1 AS one")
            .env("PGSSLMODE", "disable"),
    );
    let pg_client = k.wait_spans(1, WAIT, |s| {
        db_system(s) == "postgresql" && kind(s) == "client" && attr_str(s, "db.operation.name") == Some("SELECT")
    });
    assert_eq!(attr_i64(&pg_client[0], "server.port"), Some(pg.port as i64));
    // The backend belongs to the `postgres` user: server spans need CAP_SYS_PTRACE for its /proc.
    let pg_server = k.wait_spans(1, WAIT, |s| {
        db_system(s) == "postgresql" && kind(s) == "server" && attr_str(s, "db.operation.name") == Some("SELECT")
    });
    assert_eq!(resource_str(&pg_server[0], "process.executable.name"), Some("postgres"));

    run_ok(Command::new("redis-cli").args(["-p", &r.port.to_string(), "SET", "caps:1", "v"]));
    run_ok(Command::new("redis-cli").args(["-p", &r.port.to_string(), "GET", "caps:1"]));
    let redis_spans = k.wait_spans(2, WAIT, |s| db_system(s) == "redis" && kind(s) == "client");
    let ops: Vec<&str> = redis_spans.iter().filter_map(|s| attr_str(s, "db.operation.name")).collect();
    assert!(ops.contains(&"SET") && ops.contains(&"GET"), "{ops:?}");
    assert_eq!(http_get(k.metrics_port, "/healthz").lines().next().map(|l| l.contains("200")), Some(true));
    assert!(k.stop(), "kspan exits cleanly on SIGTERM");
}

/// Runs `kspan run` with `caps`; returns (exit success, stderr, elapsed),
/// killing it after `limit`.
fn run_briefly(caps: &[&str], limit: Duration) -> (Option<bool>, String, Duration) {
    let u = Unprivileged::new(caps);
    let mut child = u
        .command()
        .args(["run", "--output", "jsonl", "--metrics-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--pid", &std::process::id().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn setpriv kspan");
    let t = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break Some(st.success());
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child.stderr.take().expect("stderr").read_to_string(&mut err).expect("read stderr");
    (status, err, t.elapsed())
}

#[test]
fn each_missing_capability_fails_fast_and_is_named() {
    for missing in KSPAN_CAPS {
        let held: Vec<&str> = KSPAN_CAPS.iter().copied().filter(|c| *c != missing).collect();
        let (status, err, took) = run_briefly(&held, Duration::from_secs(10));
        assert_eq!(
            status,
            Some(false),
            "without {missing}: kspan must exit non-zero within 10 s (took {took:?}):\n{err}"
        );
        let name = format!("CAP_{}", missing.to_uppercase());
        assert!(err.contains(&name), "without {missing}: the error names {name}:\n{err}");
        let others: Vec<String> = held.iter().map(|c| format!("CAP_{}", c.to_uppercase())).collect();
        assert!(
            others.iter().all(|o| !err.contains(&format!("missing {o}")) && !err.contains(&format!(", {o} (to"))),
            "without {missing}: only it is reported missing:\n{err}"
        );
    }
}

#[test]
fn the_deployments_grant_exactly_the_tested_capabilities() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy");
    let k8s = KSPAN_CAPS.map(|c| c.to_uppercase()).join(", ");
    let systemd = KSPAN_CAPS.map(|c| format!("CAP_{}", c.to_uppercase())).join(" ");
    let granting = [
        ("kubernetes/50-daemonset.yaml", format!("add: [{k8s}]")),
        ("helm/kspan/values.yaml", format!("capabilities: [{k8s}]")),
        ("systemd/kspan.service", format!("AmbientCapabilities={systemd}")),
        ("systemd/kspan.service", format!("CapabilityBoundingSet={systemd}")),
    ];
    for (file, line) in granting {
        let text = std::fs::read_to_string(root.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        assert!(text.lines().any(|l| l.trim() == line), "{file} has the line `{line}`");
    }
}
