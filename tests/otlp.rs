//! End-to-end: kspan traces real HTTP servers and exports OTLP (HTTP/protobuf
//! and gRPC) to a real collector (rotel); the collector's detailed debug log
//! must show one Resource per traced process with its attributes, and every span.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kspan_e2e::servers::{Rotel, nginx, python_http};
use kspan_e2e::*;

/// A span as rotel logged it: name, kind, attributes.
type LoggedSpan = (String, String, BTreeMap<String, String>);

/// One ResourceSpans as rotel logged it.
#[derive(Debug, Default)]
struct Logged {
    resource: BTreeMap<String, String>,
    spans: Vec<LoggedSpan>,
}

/// `-> key: Type(value)` -> (key, value)
fn kv(line: &str) -> Option<(String, String)> {
    let rest = line.trim_start().strip_prefix("-> ")?;
    let (k, v) = rest.split_once(": ")?;
    let v = v.split_once('(').map_or(v, |(_, inner)| inner.strip_suffix(')').unwrap_or(inner));
    Some((k.trim().to_owned(), v.to_owned()))
}

fn parse(log: &str) -> Vec<Logged> {
    let mut out: Vec<Logged> = Vec::new();
    let mut section = "";
    for line in log.lines() {
        let t = line.trim_start();
        if t.starts_with("ResourceSpans #") {
            out.push(Logged::default());
            section = "resource";
        } else if t.starts_with("ScopeSpans #") {
            section = "scope";
        } else if t.starts_with("Span #") {
            if let Some(r) = out.last_mut() {
                r.spans.push(Default::default());
            }
            section = "span";
        } else if let Some(r) = out.last_mut() {
            if section == "resource" {
                if let Some((k, v)) = kv(line) {
                    r.resource.insert(k, v);
                }
            } else if section == "span"
                && let Some(s) = r.spans.last_mut()
            {
                if let Some(v) = t.strip_prefix("Name").and_then(|x| x.trim_start().strip_prefix(':')) {
                    s.0 = v.trim().to_owned();
                } else if let Some(v) = t.strip_prefix("Kind").and_then(|x| x.trim_start().strip_prefix(':')) {
                    s.1 = v.trim().to_owned();
                } else if let Some((k, v)) = kv(line) {
                    s.2.insert(k, v);
                }
            }
        }
    }
    out
}

fn export_to_rotel(env: &[(&str, &str)], rotel: &Rotel) {
    let app = python_http("otlp");
    let ng = nginx();
    let k = Kspan::start_with_env(
        &["--output", "otlp", "--pid", &app.pid().to_string(), "--pid", &ng.pid().to_string()],
        env,
    );
    for i in 0..3 {
        run_ok(
            std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{}/users/{i}", app.port)),
        );
    }
    for p in ["/index.html", "/missing.html"] {
        run_ok(
            std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{}{p}", ng.port)),
        );
    }
    k.wait_spans(5, Duration::from_secs(20), |s| kind(s) == "server");
    assert!(k.stop(), "kspan flushes and exits cleanly");

    let t = Instant::now();
    let (py, ngx) = loop {
        let logged = parse(&rotel.output());
        let by = |key: &str, want: &str| -> Vec<&Logged> {
            logged.iter().filter(|r| r.resource.get(key).map(String::as_str) == Some(want)).collect()
        };
        let count = |rs: &[&Logged]| rs.iter().map(|r| r.spans.len()).sum::<usize>();
        // The python app serves in its own process; nginx serves in its worker (a child of the master).
        let (a, b) = (by("process.pid", &app.pid().to_string()), by("service.name", "nginx"));
        if (count(&a) >= 3 && count(&b) >= 2) || t.elapsed() > Duration::from_secs(15) {
            let flat = |rs: Vec<&Logged>| -> (BTreeMap<String, String>, Vec<LoggedSpan>) {
                let res = rs.first().map(|r| r.resource.clone()).unwrap_or_default();
                (res, rs.into_iter().flat_map(|r| r.spans.clone()).collect())
            };
            break (flat(a), flat(b));
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let log = rotel.output();
    assert_eq!(py.1.len(), 3, "python spans at the collector:\n{log}");
    assert_eq!(ngx.1.len(), 2, "nginx spans at the collector:\n{log}");
    // One Resource per process, with its own identity.
    assert!(py.0.get("service.name").is_some_and(|s| s.starts_with("python")), "{:?}", py.0);
    assert_eq!(ngx.0.get("service.name").map(String::as_str), Some("nginx"));
    for r in [&py.0, &ngx.0] {
        assert_eq!(r.get("telemetry.distro.name").map(String::as_str), Some("kspan"));
        assert!(
            r.contains_key("host.name")
                && r.contains_key("service.instance.id")
                && r.contains_key("process.executable.name"),
            "{r:?}"
        );
    }
    for (name, kind, attrs) in &py.1 {
        assert_eq!(name, "GET /users/{id}");
        assert!(kind.to_lowercase().contains("server"), "{kind}");
        assert_eq!(attrs.get("http.response.status_code").map(String::as_str), Some("200"));
        assert_eq!(attrs.get("http.route").map(String::as_str), Some("/users/{id}"));
    }
    let codes: Vec<&str> =
        ngx.1.iter().filter_map(|s| s.2.get("http.response.status_code").map(String::as_str)).collect();
    assert!(codes.contains(&"200") && codes.contains(&"404"), "{codes:?}");
}

#[test]
fn exports_over_otlp_http_to_a_real_collector() {
    let rotel = Rotel::start();
    let endpoint = format!("http://127.0.0.1:{}", rotel.http_port);
    export_to_rotel(&[("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint)], &rotel);
}

#[test]
fn exports_over_otlp_grpc_with_gzip_to_a_real_collector() {
    let rotel = Rotel::start();
    let endpoint = format!("http://127.0.0.1:{}", rotel.grpc_port);
    export_to_rotel(
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
        ],
        &rotel,
    );
}

/// A stop spends its grace period on exporting first. The OTLP batch is
/// held (a 60 s schedule) until SIGTERM; the agent is then killed 1.5 s
/// later, as an orchestrator does when the grace period runs out, while
/// its programs are still detaching (each detach waits for the kernel's
/// grace periods: 3-5 s for the whole set on this VM). The spans must be
/// at the collector all the same.
#[test]
fn held_spans_reach_the_collector_before_a_kill_cuts_the_detach_short() {
    let rotel = Rotel::start();
    let app = python_http("otlp-stop");
    let conf = format!(
        "otlp:\n  - endpoint: http://127.0.0.1:{}\n    protocol: http/protobuf\n    scheduled_delay_ms: 60000\n",
        rotel.http_port
    );
    let (_dir, conf) = config_file("otlp-stop", &conf);
    let k = Kspan::start(&["--output", "otlp", "--pid", &app.pid().to_string(), "--config", &conf]);
    for i in 0..3 {
        run_ok(
            std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null"])
                .arg(format!("http://127.0.0.1:{}/users/{i}", app.port)),
        );
    }
    k.wait_spans(3, Duration::from_secs(20), |s| kind(s) == "server");
    let pid = k.pid() as i32;
    // SAFETY: plain kill(2) on our child's pid.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    std::thread::sleep(Duration::from_millis(1500));
    let detached = k.log().contains("programs detached");
    // SAFETY: as above; the harness reaps the child when `k` drops.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    let t = Instant::now();
    let count = || {
        let logged = parse(&rotel.output());
        logged
            .iter()
            .filter(|r| r.resource.get("process.pid") == Some(&app.pid().to_string()))
            .map(|r| r.spans.len())
            .sum::<usize>()
    };
    while count() < 3 && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        count(),
        3,
        "spans at the collector after SIGTERM and a kill 1.5 s later (detach finished by then: {detached}); \
         kspan log:\n{}\ncollector:\n{}",
        k.log(),
        rotel.output()
    );
}
