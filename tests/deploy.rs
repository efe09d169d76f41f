//! The deployment artefacts under deploy/ are valid: the plain Kubernetes
//! manifests against the Kubernetes API schemas (kubernetes-validate, strict),
//! the Helm chart's Chart.yaml/values.yaml as YAML with balanced templates,
//! the systemd unit with `systemd-analyze verify`, and nothing anywhere asks
//! for a privileged container.
//!
//! Not covered: rendering the Helm templates (no helm binary is installable
//! from the registries this project uses); the config and rules files they
//! carry are parsed by the agent's unit tests (config::tests::shipped).

use std::path::{Path, PathBuf};
use std::process::Command;

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
