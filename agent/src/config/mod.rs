//! Agent configuration: the YAML config file, CLI overrides applied in one
//! place ([`Config::apply_cli`]), defaults in one place ([`Default`] impls),
//! and [`Config::validate`] with precise messages.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::protocol::Privacy;

/// Largest `output_queue` (spans a line output may hold).
pub const MAX_OUTPUT_QUEUE: usize = 1 << 20;

/// Longest quoted value kept in a YAML error message.
const QUOTED_KEEP: usize = 48;

/// serde_yaml quotes the offending value whole (`invalid type: string
/// "..."`): a file of the wrong kind, read as one long string, would be
/// printed entire (and it may hold secrets). Keeps the value's first
/// characters and says how long it is.
pub(crate) fn shorten_quoted(message: &str) -> String {
    let (Some(open), Some(close)) = (message.find('"'), message.rfind('"')) else {
        return message.to_owned();
    };
    let value = message.get(open + 1..close).unwrap_or("");
    let n = value.chars().count();
    if n <= QUOTED_KEEP {
        return message.to_owned();
    }
    let kept: String = value.chars().take(QUOTED_KEEP).collect();
    format!("{}\"{kept}...\" ({n} characters){}", &message[..open], &message[close + 1..])
}

/// Bounds of `capture.max_sockets`: below the smallest, LRU eviction would
/// churn on a quiet host; the largest is 4 Mi entries (about 360 MiB).
pub const MIN_SOCKETS: u32 = 1_024;
pub const MAX_SOCKETS: u32 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read { file: String, source: std::io::Error },
    #[error("{file}:{line}:{column}: {message}")]
    Parse { file: String, line: usize, column: usize, message: String },
    #[error("{0}")]
    Invalid(String),
}

/// Where spans go.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// One readable line per span on stdout.
    Stdout,
    /// One JSON object per span on stdout.
    Jsonl,
    /// OTLP to the configured endpoint(s).
    Otlp,
    /// Nothing (capture and count only).
    None,
}

/// Capture and tracking limits.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSection {
    /// Payload bytes copied per syscall (4096..=16384).
    pub capture_bytes: u32,
    /// Ring buffer size in bytes (power of two).
    pub ring_buffer_bytes: u32,
    /// Ring buffer bytes that wake the agent early (each CPU wakes it after
    /// writing its share of them).
    pub wakeup_bytes: u32,
    /// The agent drains the ring buffer at least this often (ms). Each
    /// drain cycle has a fixed cost (wake-ups of the capture and async
    /// threads, cold caches): at 10 ms it added about 1 us per request at
    /// 9k req/s; busy hosts are drained earlier by `wakeup_bytes` anyway.
    pub drain_interval_ms: u64,
    /// Nice value of the capture thread (-20..=19). Below 0 it is scheduled
    /// ahead of the traced processes' threads when events are pending, so a
    /// host whose cores are all busy does not overflow the ring buffer
    /// (needs CAP_SYS_NICE; without it the thread keeps nice 0 and says so).
    pub capture_thread_nice: i32,
    /// Sockets the kernel remembers at most (its (process, fd) -> socket
    /// map, least recently used evicted first). Each costs about 90 bytes of
    /// kernel memory whether used or not (11.5 MiB at the default); an
    /// evicted socket that is used again is looked up again (an fd-table
    /// walk), so a host with more live sockets than this pays that on
    /// every call of the oldest ones. The map of SSL objects' sockets gets
    /// half as many entries ([`kspan_common::tls_objects`]).
    pub max_sockets: u32,
    /// Tracked connections at most.
    pub max_connections: usize,
    /// Connections without traffic for this long are forgotten (s).
    pub idle_timeout_secs: u64,
    /// Processes whose metadata is cached at most.
    pub max_processes: usize,
    /// Spans queued between capture and export at most.
    pub span_queue: usize,
    /// How long a span may wait in the linker for its parent span on this
    /// host (a server span for a client issued inside it; a traced client
    /// span at the other end of a local connection) (ms). 0 disables linking.
    pub link_hold_ms: u64,
    /// Spans held by the linker at most (beyond: the oldest leave unlinked).
    pub link_max_held: usize,
    /// Client spans waiting for their server span at most, per thread.
    pub link_max_per_thread: usize,
    /// Capture TLS plaintext through uprobes on OpenSSL and GnuTLS (library
    /// files mapped by traced processes, the system's libssl and libgnutls,
    /// statically linked executables). Off: TLS connections show only their handshake.
    pub tls: bool,
    /// With `tls`: a uprobe on the dynamic loader's `_dl_debug_state` reports
    /// library loads, so a libssl loaded late is attached at once. Off: it is
    /// found by the post-exec and 2-second scans, and no uprobe sits in the
    /// loader that every process runs (programs run under valgrind or other
    /// binary translators stop with SIGTRAP on a uprobe).
    pub tls_loader_hook: bool,
    /// Trace Unix domain stream sockets too (an app talking to PostgreSQL
    /// or Redis through a socket file, nginx proxying to gunicorn or
    /// php-fpm over one); their spans name the socket path as
    /// `server.address` with `network.transport=unix`.
    pub unix_sockets: bool,
    /// In Go programs, nest client calls by the goroutine that made them
    /// (the kernel reads it at each data call) rather than by thread.
    pub go_goroutines: bool,
    /// Diagnostic: attach every program but have each return at once (no
    /// events, no spans). What the traced processes lose then is what the
    /// kernel's tracepoint and uprobe machinery alone costs on this host,
    /// the floor under kspan's own overhead (`cargo xtask bench` reports it).
    pub attach_only: bool,
    /// Capture every iovec of a vectored call, and sweep a process's socket
    /// entries at its exec, exit and `close_range`, with `bpf_loop` (Linux
    /// 5.17+). kspan falls back by itself on kernels without it (then only
    /// the first 8 iovecs of a call are captured, and there are no sweeps);
    /// `false` forces that fallback.
    pub bpf_loop: bool,
}

impl Default for CaptureSection {
    fn default() -> Self {
        Self {
            capture_bytes: 4096,
            ring_buffer_bytes: 8 << 20,
            wakeup_bytes: 256 << 10,
            drain_interval_ms: 50,
            capture_thread_nice: -5,
            max_sockets: kspan_common::MAX_SOCKETS,
            max_connections: 65_536,
            idle_timeout_secs: 600,
            max_processes: 16_384,
            span_queue: 8_192,
            link_hold_ms: 500,
            link_max_held: 16_384,
            link_max_per_thread: 256,
            tls: true,
            tls_loader_hook: true,
            unix_sockets: true,
            go_goroutines: true,
            attach_only: false,
            bpf_loop: true,
        }
    }
}

/// Which processes and sockets are traced. Empty means every process.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SelectSection {
    /// These processes and their descendants.
    pub pids: Vec<u32>,
    /// Processes whose executable path or command line matches one of these regexes.
    pub exe: Vec<String>,
    /// Only sockets with one of these local or peer ports.
    pub ports: Vec<u16>,
    /// Every process (overrides pids/exe).
    pub all: bool,
    /// Only processes in pods of these namespaces (needs pod metadata; host
    /// processes and pods not known yet are not traced).
    pub namespaces: Vec<String>,
    /// Only processes in pods carrying every one of these labels.
    pub pod_labels: BTreeMap<String, String>,
}

impl SelectSection {
    /// The pod-level part of the selection.
    pub fn pod_filter(&self) -> crate::enrich::k8s::PodFilter {
        crate::enrich::k8s::PodFilter { namespaces: self.namespaces.clone(), labels: self.pod_labels.clone() }
    }
}

/// Pod metadata from the Kubernetes API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KubernetesSection {
    /// Watch this node's pods. Unset: when running in a cluster
    /// (KUBERNETES_SERVICE_HOST is set).
    pub enabled: Option<bool>,
    /// This node's name. Unset: KSPAN_NODE_NAME, then NODE_NAME (downward API).
    pub node_name: Option<String>,
    /// Pods cached at most (beyond: not stored, counted).
    pub max_pods: usize,
}

impl Default for KubernetesSection {
    fn default() -> Self {
        Self { enabled: None, node_name: None, max_pods: crate::enrich::k8s::DEFAULT_MAX_PODS }
    }
}

impl KubernetesSection {
    /// Whether to watch pods, given the environment.
    pub fn active(&self, env: &dyn Fn(&str) -> Option<String>) -> bool {
        self.enabled.unwrap_or_else(|| env("KUBERNETES_SERVICE_HOST").is_some_and(|h| !h.is_empty()))
    }
}

/// Self-telemetry HTTP endpoint.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySection {
    /// Address of /metrics, /healthz, /readyz; `null` disables it.
    pub listen: Option<SocketAddr>,
}

impl Default for TelemetrySection {
    fn default() -> Self {
        Self { listen: Some(SocketAddr::from(([127, 0, 0, 1], 9464))) }
    }
}

/// The whole config file.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub capture: CaptureSection,
    pub select: SelectSection,
    pub privacy: Privacy,
    /// Outputs; empty means `otlp` if an endpoint is configured, else `stdout`.
    pub outputs: Vec<OutputKind>,
    /// Spans each line output (`stdout`, `jsonl`) may hold before dropping;
    /// `None`: [`crate::export::stdout::DEFAULT_CAPACITY`].
    pub output_queue: Option<usize>,
    /// `executable name -> service.name` when a process sets no OTEL_SERVICE_NAME.
    pub service_names: HashMap<String, String>,
    /// Extra resource attributes on every span.
    pub resource_attributes: HashMap<String, String>,
    pub telemetry: TelemetrySection,
    pub kubernetes: KubernetesSection,
    /// Business rules and sampling (see docs/rules.md).
    pub rules_file: Option<PathBuf>,
    /// Seconds allowed to flush spans at shutdown.
    pub shutdown_timeout_secs: Option<u64>,
    /// OTLP endpoints (in addition to the OTEL_EXPORTER_OTLP_* variables).
    pub otlp: Vec<crate::export::OtlpConfig>,
}

/// CLI selections and outputs (already parsed by clap in main.rs).
#[derive(Clone, Debug, Default)]
pub struct CliOverrides {
    pub pids: Vec<u32>,
    pub exe: Vec<String>,
    pub ports: Vec<u16>,
    pub all: bool,
    pub outputs: Vec<OutputKind>,
    pub rules_file: Option<PathBuf>,
    pub metrics_listen: Option<SocketAddr>,
}

impl Config {
    /// Reads and parses a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { file: file.clone(), source })?;
        Self::parse(&text, &file)
    }

    /// Parses config text; errors carry file, line and column.
    pub fn parse(text: &str, file: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text).map_err(|e| {
            let (line, column) = e.location().map_or((0, 0), |l| (l.line(), l.column()));
            ConfigError::Parse { file: file.to_owned(), line, column, message: shorten_quoted(&e.to_string()) }
        })
    }

    /// CLI flags extend/override the file.
    pub fn apply_cli(&mut self, cli: CliOverrides) {
        self.select.pids.extend(cli.pids);
        self.select.exe.extend(cli.exe);
        self.select.ports.extend(cli.ports);
        self.select.all |= cli.all;
        if !cli.outputs.is_empty() {
            self.outputs = cli.outputs;
        }
        if cli.rules_file.is_some() {
            self.rules_file = cli.rules_file;
        }
        if cli.metrics_listen.is_some() {
            self.telemetry.listen = cli.metrics_listen;
        }
    }

    /// True when no process selector is set (trace the whole host).
    pub fn traces_all(&self) -> bool {
        self.select.all || (self.select.pids.is_empty() && self.select.exe.is_empty())
    }

    /// Checks values that serde cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let c = &self.capture;
        let bad = |m: String| Err(ConfigError::Invalid(m));
        if let Some(n) = self.output_queue
            && !(1..=MAX_OUTPUT_QUEUE).contains(&n)
        {
            return bad(format!("output_queue = {n}: must be between 1 and {MAX_OUTPUT_QUEUE}"));
        }
        if !(kspan_common::MIN_CAPTURE as u32..=kspan_common::MAX_CAPTURE as u32).contains(&c.capture_bytes) {
            return bad(format!(
                "capture.capture_bytes = {}: must be between {} and {}",
                c.capture_bytes,
                kspan_common::MIN_CAPTURE,
                kspan_common::MAX_CAPTURE
            ));
        }
        if !c.ring_buffer_bytes.is_power_of_two() || c.ring_buffer_bytes < 4096 {
            return bad(format!("capture.ring_buffer_bytes = {}: must be a power of two >= 4096", c.ring_buffer_bytes));
        }
        if !(-20..=19).contains(&c.capture_thread_nice) {
            return bad(format!("capture.capture_thread_nice = {}: must be between -20 and 19", c.capture_thread_nice));
        }
        if !(MIN_SOCKETS..=MAX_SOCKETS).contains(&c.max_sockets) {
            return bad(format!(
                "capture.max_sockets = {}: must be between {MIN_SOCKETS} and {MAX_SOCKETS}",
                c.max_sockets
            ));
        }
        if c.max_connections == 0 || c.span_queue == 0 || c.max_processes == 0 {
            return bad("capture.max_connections, span_queue and max_processes must be > 0".into());
        }
        for re in &self.select.exe {
            if let Err(e) = regex::RegexBuilder::new(re).size_limit(1 << 20).build() {
                return bad(format!("select.exe {re:?}: {e}"));
            }
        }
        if self.select.pids.contains(&0) {
            return bad("select.pids: 0 is not a process id".into());
        }
        if self.kubernetes.max_pods == 0 {
            return bad("kubernetes.max_pods must be > 0".into());
        }
        if self.kubernetes.enabled == Some(false) && !self.select.pod_filter().is_empty() {
            return bad("select.namespaces and select.pod_labels need pod metadata: kubernetes.enabled is false".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_queue_is_bounded() {
        let c = Config::parse("output_queue: 65536\n", "k.yaml").unwrap();
        assert_eq!(c.output_queue, Some(65536));
        c.validate().unwrap();
        for bad in ["output_queue: 0\n", "output_queue: 2000000\n"] {
            let e = Config::parse(bad, "k.yaml").unwrap().validate().unwrap_err().to_string();
            assert!(e.contains("output_queue = ") && e.contains("must be between 1 and 1048576"), "{e}");
        }
    }

    #[test]
    fn a_long_quoted_value_is_shortened_in_errors() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\ndaemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n".repeat(20);
        let msg = Config::parse(&passwd, "/etc/passwd").unwrap_err().to_string();
        assert!(msg.starts_with("/etc/passwd:1:1: invalid type: string \"root:x:0:0:root:"), "{msg}");
        assert!(msg.contains("...\" (1599 characters), expected"), "{msg}");
        assert!(msg.len() < 200, "{msg}");
        assert_eq!(shorten_quoted("unknown field `x`, expected `y`"), "unknown field `x`, expected `y`");
        assert_eq!(
            shorten_quoted("invalid type: string \"abc\", expected u32"),
            "invalid type: string \"abc\", expected u32"
        );
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = Config::parse("", "x.yaml").unwrap();
        assert_eq!(c.capture.capture_bytes, 4096);
        assert!(c.traces_all());
        assert!(c.capture.tls && c.capture.tls_loader_hook);
        assert!(!c.capture.attach_only, "the diagnostic is off unless asked for");
        c.validate().unwrap();
        assert!(Config::parse("capture:\n  attach_only: true\n", "x.yaml").unwrap().capture.attach_only);
        let c = Config::parse("capture:\n  tls_loader_hook: false\n", "x.yaml").unwrap();
        assert!(c.capture.tls && !c.capture.tls_loader_hook);
    }

    #[test]
    fn unknown_keys_name_file_line_and_column() {
        let err = Config::parse("capture:\n  capture_bytes: 8192\n  ring_bytes: 4\n", "kspan.yaml").unwrap_err();
        let msg = err.to_string();
        assert!(msg.starts_with("kspan.yaml:3:"), "{msg}");
        assert!(msg.contains("unknown field `ring_bytes`"), "{msg}");
    }

    #[test]
    fn validation_rejects_bad_values() {
        let mut c = Config::default();
        c.capture.capture_bytes = 100;
        assert!(c.validate().unwrap_err().to_string().contains("capture.capture_bytes = 100"));
        let mut c = Config::default();
        c.capture.ring_buffer_bytes = 5000;
        assert!(c.validate().is_err());
        for n in [MIN_SOCKETS - 1, MAX_SOCKETS + 1] {
            let mut c = Config::default();
            c.capture.max_sockets = n;
            assert!(c.validate().unwrap_err().to_string().contains(&format!("capture.max_sockets = {n}")));
        }
        let c = Config::parse("capture:\n  max_sockets: 4096\n", "x.yaml").unwrap();
        c.validate().unwrap();
        assert_eq!(c.capture.max_sockets, 4096);
        let mut c = Config::default();
        c.select.exe = vec!["(unclosed".into()];
        assert!(c.validate().unwrap_err().to_string().contains("select.exe"));
    }

    #[test]
    fn pod_selection_and_kubernetes_section() {
        let c = Config::parse(
            "select:\n  namespaces: [shop]\n  pod_labels: {app: web}\nkubernetes:\n  node_name: n1\n  max_pods: 10\n",
            "f",
        )
        .unwrap();
        c.validate().unwrap();
        let f = c.select.pod_filter();
        assert_eq!(f.namespaces, ["shop"]);
        assert_eq!(f.labels.get("app").map(String::as_str), Some("web"));
        assert_eq!(c.kubernetes.max_pods, 10);
        assert!(!c.kubernetes.active(&|_| None), "auto: off outside a cluster");
        assert!(c.kubernetes.active(&|k| (k == "KUBERNETES_SERVICE_HOST").then(|| "10.0.0.1".into())));
        let off = Config::parse("select:\n  namespaces: [shop]\nkubernetes:\n  enabled: false\n", "f").unwrap();
        assert!(off.validate().unwrap_err().to_string().contains("kubernetes.enabled is false"));
        assert!(Config::parse("kubernetes:\n  max_pods: 0\n", "f").unwrap().validate().is_err());
    }

    #[test]
    fn cli_overrides_extend_the_file() {
        let mut c = Config::parse("select:\n  pids: [10]\noutputs: [jsonl]\n", "f").unwrap();
        c.apply_cli(CliOverrides { pids: vec![11], outputs: vec![OutputKind::Stdout], ..Default::default() });
        assert_eq!(c.select.pids, vec![10, 11]);
        assert_eq!(c.outputs, vec![OutputKind::Stdout]);
        assert!(!c.traces_all());
    }

    /// Config and rules files shipped under deploy/ (examples, systemd,
    /// Kubernetes ConfigMap, Helm defaults) parse and validate.
    mod shipped {
        use super::*;

        fn deploy(path: &str) -> String {
            let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path);
            std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        }

        fn check_config(text: &str, name: &str) -> Config {
            let c = Config::parse(text, name).unwrap_or_else(|e| panic!("{e}"));
            c.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
            crate::export::OtlpConfig::from_env_and_file(&c.otlp, &|_| None)
                .unwrap_or_else(|e| panic!("{name}: otlp: {e}"));
            c
        }

        fn check_rules(text: &str, name: &str) {
            crate::rules::RuleSet::from_str(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }

        /// `data` of the ConfigMap in a (possibly multi-document) manifest.
        fn configmap_data(manifest: &str) -> HashMap<String, String> {
            for doc in serde_yaml::Deserializer::from_str(manifest) {
                let v = serde_yaml::Value::deserialize(doc).expect("manifest YAML");
                if v["kind"] == "ConfigMap" {
                    return serde_yaml::from_value(v["data"].clone()).expect("ConfigMap data");
                }
            }
            panic!("no ConfigMap in the manifest");
        }

        #[test]
        fn example_config_documents_keys_that_exist() {
            let c = check_config(&deploy("examples/kspan.yaml"), "examples/kspan.yaml");
            assert_eq!(c.otlp.len(), 1);
            assert_eq!(c.select.exe.len(), 2);
            assert_eq!(c.service_names.get("nginx").map(String::as_str), Some("edge-proxy"));
        }

        #[test]
        fn systemd_config_parses_and_listens_on_loopback() {
            let c = check_config(&deploy("systemd/kspan.yaml"), "systemd/kspan.yaml");
            assert!(c.telemetry.listen.is_some_and(|a| a.ip().is_loopback()));
        }

        #[test]
        fn kubernetes_configmap_config_and_rules_are_valid() {
            let data = configmap_data(&deploy("kubernetes/40-configmap.yaml"));
            let c = check_config(&data["config.yaml"], "ConfigMap config.yaml");
            assert_eq!(c.telemetry.listen, Some(SocketAddr::from(([0, 0, 0, 0], 9464))), "probes reach the pod");
            assert_eq!(c.rules_file.as_deref(), Some(Path::new("/etc/kspan/rules.yaml")));
            check_rules(&data["rules.yaml"], "ConfigMap rules.yaml");
        }

        #[test]
        fn helm_default_config_and_rules_are_valid() {
            let values: serde_yaml::Value =
                serde_yaml::from_str(&deploy("helm/kspan/values.yaml")).expect("values.yaml");
            let config = serde_yaml::to_string(&values["config"]).expect("config");
            check_config(&config, "values.yaml config");
            check_rules(values["rules"].as_str().expect("rules is a YAML string"), "values.yaml rules");
        }
    }
}
