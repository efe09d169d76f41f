//! Embeds the eBPF object built by `cargo xtask build` into the agent, so
//! `kspan` is a single binary. Without one (e.g. plain `cargo test` of the
//! parsers), an empty object is embedded and `kspan run` says how to build it.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let default = manifest.join("../ebpf/probes/target/bpfel-unknown-none/release/kspan-probes");
    let src = std::env::var_os("KSPAN_BPF_OBJECT").map(PathBuf::from).unwrap_or(default);
    println!("cargo:rerun-if-env-changed=KSPAN_BPF_OBJECT");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("kspan-probes.o");
    let bytes = std::fs::read(&src).unwrap_or_default();
    std::fs::write(&out, bytes).expect("write embedded eBPF object");
}
