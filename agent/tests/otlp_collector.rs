//! OTLP export to a real collector, rotel: two traced processes sent over
//! OTLP/gRPC (gzip) and OTLP/HTTP; rotel's detailed debug log must show both
//! resources with their attributes and every span. Fails (never skips) when
//! rotel-agent cannot be found.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{base_config, exporter, free_port, metrics, process, span};
use kspan::export::otlp::Protocol;
use kspan::export::{Exporters, Output};
use kspan::span::model::ProcessResource;
use tokio::time::Instant;

// ---------------------------------------------------------------- (b) real collector

fn rotel_binary() -> std::path::PathBuf {
    if let Ok(p) = std::env::var("ROTEL_AGENT") {
        return p.into();
    }
    if let Ok(out) = std::process::Command::new("which").arg("rotel-agent").output()
        && out.status.success()
    {
        let p = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !p.is_empty() {
            return p.into();
        }
    }
    let py = std::process::Command::new("python3")
        .args(["-c", "import rotel,os;print(os.path.dirname(rotel.__file__))"])
        .output();
    if let Ok(out) = py
        && out.status.success()
    {
        let p = std::path::PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()).join("rotel-agent");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "rotel-agent not found (tried $ROTEL_AGENT, PATH and the `rotel` Python package). \
         Install it with `pip install rotel`; this test needs a real OTLP collector."
    );
}

struct Child(std::process::Child);
impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_collector_receives_both_processes_over_grpc_and_http() {
    let bin = rotel_binary();
    let dir = std::env::temp_dir().join(format!("kspan-rotel-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let log_path = dir.join("stdout.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let (grpc, http) = (free_port(), free_port());
    let _rotel = Child(
        std::process::Command::new(&bin)
            .arg("start")
            .args(["--otlp-grpc-endpoint", &grpc.to_string(), "--otlp-http-endpoint", &http.to_string()])
            .args(["--exporter", "blackhole", "--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .arg("--pid-file")
            .arg(dir.join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.join("rotel.log"))
            .env("NO_COLOR", "1")
            .stdout(log.try_clone().expect("clone"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display())),
    );
    let until = Instant::now() + Duration::from_secs(15);
    for addr in [grpc, http] {
        while tokio::net::TcpStream::connect(addr).await.is_err() {
            assert!(Instant::now() < until, "rotel did not listen on {addr}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let (_t, m) = metrics();
    let mut grpc_cfg = base_config("grpc", grpc);
    grpc_cfg.protocol = Some(Protocol::Grpc);
    grpc_cfg.compression = Some(kspan::export::otlp::Compression::Gzip);
    grpc_cfg.resource_attributes.insert("kspan.test.transport".into(), "grpc".into());
    let mut http_cfg = base_config("http", http);
    http_cfg.resource_attributes.insert("kspan.test.transport".into(), "http".into());
    let exporters = Exporters::new(vec![Output::Otlp(exporter(grpc_cfg, &m)), Output::Otlp(exporter(http_cfg, &m))]);

    let mut frontend = ProcessResource::clone(&process(1111, "frontend"));
    frontend.attributes.set("k8s.pod.name", "frontend-7d9f");
    let frontend = Arc::new(frontend);
    let mut inventory = ProcessResource::clone(&process(2222, "inventory"));
    inventory.attributes.set("process.runtime.name", "go");
    let inventory = Arc::new(inventory);
    for n in 0..3u64 {
        exporters.submit(span(&frontend, n, &format!("frontend-op-{n}")));
        exporters.submit(span(&inventory, 10 + n, &format!("inventory-op-{n}")));
    }
    let report = exporters.shutdown(Duration::from_secs(10)).await;
    for name in ["grpc", "http"] {
        let r = report.output(name).expect(name);
        assert_eq!((r.exported, r.dropped_total()), (6, 0), "{report:?}");
    }

    // rotel prints every received ResourceSpans; wait until all arrived.
    let want: Vec<(&str, &str, Vec<&str>, std::collections::BTreeSet<String>)> = ["grpc", "http"]
        .into_iter()
        .flat_map(|transport| {
            [
                ("frontend", vec!["process.pid: Int(1111)", "k8s.pod.name: Str(frontend-7d9f)"]),
                ("inventory", vec!["process.pid: Int(2222)", "process.runtime.name: Str(go)"]),
            ]
            .into_iter()
            .map(move |(service, attrs)| {
                let names = (0..3).map(|n| format!("{service}-op-{n}")).collect();
                (transport, service, attrs, names)
            })
        })
        .collect();
    let until = Instant::now() + Duration::from_secs(15);
    let (text, blocks) = loop {
        let text = strip_ansi(&std::fs::read_to_string(&log_path).unwrap_or_default());
        let blocks = parse_debug_log(&text);
        let complete = want.iter().all(|(t, svc, _, names)| {
            blocks.get(&(t.to_string(), svc.to_string())).is_some_and(|b| b.names.len() == names.len())
        });
        if complete || Instant::now() > until {
            break (text, blocks);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let _ = std::fs::remove_dir_all(&dir);
    for (transport, service, attrs, names) in &want {
        let b = blocks
            .get(&(transport.to_string(), service.to_string()))
            .unwrap_or_else(|| panic!("no {service} resource over {transport} in rotel's log:\n{text}"));
        for attr in attrs {
            assert!(b.resource.iter().any(|r| r == attr), "{service}/{transport}: `{attr}` missing: {b:?}");
        }
        assert_eq!(&b.names, names, "{service}/{transport}: spans");
        assert!(b.scopes.iter().all(|s| s.starts_with("kspan ")), "{b:?}");
    }
    assert_eq!(blocks.len(), want.len(), "unexpected resources: {blocks:?}");
    assert!(!text.contains("never-exported"), "a private attribute reached the collector");
}

#[derive(Debug, Default)]
struct LoggedResource {
    resource: Vec<String>,
    scopes: Vec<String>,
    names: std::collections::BTreeSet<String>,
}

/// Groups rotel's detailed trace debug log by (kspan.test.transport,
/// service.name): resource attributes as `key: Type(value)`, scopes, span names.
fn parse_debug_log(text: &str) -> std::collections::BTreeMap<(String, String), LoggedResource> {
    let mut out: std::collections::BTreeMap<(String, String), LoggedResource> = Default::default();
    let mut current: Option<LoggedResource> = None;
    let mut in_resource = false;
    let flush = |cur: Option<LoggedResource>, out: &mut std::collections::BTreeMap<_, LoggedResource>| {
        let Some(cur) = cur else { return };
        let find = |key: &str| {
            cur.resource
                .iter()
                .find_map(|r| r.strip_prefix(key))
                .and_then(|v| v.strip_prefix(": Str("))
                .and_then(|v| v.strip_suffix(')'))
                .unwrap_or_default()
                .to_owned()
        };
        let entry: &mut LoggedResource = out.entry((find("kspan.test.transport"), find("service.name"))).or_default();
        entry.resource.extend(cur.resource);
        entry.scopes.extend(cur.scopes);
        entry.names.extend(cur.names);
    };
    for line in text.lines() {
        if line.starts_with("ResourceSpans #") {
            flush(current.take(), &mut out);
            current = Some(LoggedResource::default());
            in_resource = false;
        }
        let Some(cur) = current.as_mut() else {
            continue;
        };
        if line.starts_with("Resource attributes:") {
            in_resource = true;
        } else if line.starts_with("ScopeSpans #") {
            in_resource = false;
        } else if let Some(attr) = line.trim_start().strip_prefix("-> ").filter(|_| in_resource) {
            cur.resource.push(attr.trim().to_owned());
        } else if let Some(scope) = line.strip_prefix("InstrumentationScope ") {
            cur.scopes.push(scope.trim().to_owned());
        } else if let Some(name) = line.trim_start().strip_prefix("Name").and_then(|r| r.trim_start().strip_prefix(':'))
        {
            cur.names.insert(name.trim().to_owned());
        }
    }
    flush(current, &mut out);
    out
}
