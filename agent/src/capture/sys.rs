//! Host preconditions for capture: privileges, memlock, tracefs, tracepoint
//! formats. Each failure names exactly what is missing.

use super::CaptureError;

const TRACEFS: &str = "/sys/kernel/tracing";

/// Linux capability numbers kspan needs.
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// Effective capability mask of this process.
pub fn effective_caps() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .unwrap_or(0)
}

/// Capabilities kspan needs with the reason for each; CAP_SYS_ADMIN covers
/// all of them on kernels without CAP_BPF/CAP_PERFMON.
pub const REQUIRED_CAPS: &[(u32, &str, &str)] = &[
    (CAP_BPF, "CAP_BPF", "create maps and load eBPF programs"),
    (CAP_PERFMON, "CAP_PERFMON", "attach tracepoints and read kernel/user memory from eBPF"),
    (CAP_SYS_PTRACE, "CAP_SYS_PTRACE", "read /proc/<pid>/environ, exe and fd of other users' processes"),
    (CAP_DAC_READ_SEARCH, "CAP_DAC_READ_SEARCH", "read tracefs and /proc files owned by other users"),
];

/// Fails with the names of the missing capabilities. Root is not required:
/// a non-root process holding the four [`REQUIRED_CAPS`] (e.g. as ambient
/// capabilities) passes.
pub fn check_privileges() -> Result<(), CaptureError> {
    let missing: Vec<String> =
        missing_caps(effective_caps()).iter().map(|(_, name, why)| format!("{name} (to {why})")).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(CaptureError::Privileges(format!(
            "missing {}; run as root or grant them (CAP_SYS_ADMIN also stands in for CAP_BPF and CAP_PERFMON)",
            missing.join(", ")
        )))
    }
}

/// The [`REQUIRED_CAPS`] entries not covered by the capability mask `caps`;
/// CAP_SYS_ADMIN stands in for CAP_BPF and CAP_PERFMON.
fn missing_caps(caps: u64) -> Vec<&'static (u32, &'static str, &'static str)> {
    let has = |c: u32| caps & (1u64 << c) != 0;
    REQUIRED_CAPS
        .iter()
        .filter(|(c, _, _)| !has(*c) && !(has(CAP_SYS_ADMIN) && (*c == CAP_BPF || *c == CAP_PERFMON)))
        .collect()
}

/// Lifts RLIMIT_MEMLOCK (kernels before 5.11 charge BPF maps to it).
pub fn raise_memlock() {
    let lim = libc::rlimit { rlim_cur: libc::RLIM_INFINITY, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: plain syscall with a valid struct; failure only matters on old kernels.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &lim) } != 0 {
        tracing::debug!("could not raise RLIMIT_MEMLOCK: {}", std::io::Error::last_os_error());
    }
}

/// Mounts tracefs at /sys/kernel/tracing if it is not there.
pub fn ensure_tracefs() -> Result<(), CaptureError> {
    match std::fs::metadata(std::path::Path::new(TRACEFS).join("events")) {
        Ok(m) if m.is_dir() => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            return Err(CaptureError::Tracefs(format!(
                "{TRACEFS}: {e} (reading tracefs needs root or CAP_DAC_READ_SEARCH)"
            )));
        }
        _ => {}
    }
    let c = |s: &str| std::ffi::CString::new(s).map_err(|e| CaptureError::Tracefs(e.to_string()));
    let (src, target, fstype) = (c("tracefs")?, c(TRACEFS)?, c("tracefs")?);
    // SAFETY: valid NUL-terminated strings; no data argument.
    let r = unsafe { libc::mount(src.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if r != 0 {
        return Err(CaptureError::Tracefs(format!(
            "{TRACEFS} is not mounted and mounting it failed: {} (mount it: mount -t tracefs tracefs {TRACEFS})",
            std::io::Error::last_os_error()
        )));
    }
    tracing::info!("mounted tracefs at {TRACEFS}");
    Ok(())
}

/// Whether this kernel has tracepoint `category`/`name` (arm64, for one,
/// has no `dup2` system call).
pub fn tracepoint_exists(category: &str, name: &str) -> bool {
    std::path::Path::new(&format!("{TRACEFS}/events/{category}/{name}")).exists()
}

/// Byte offset of `field` in a tracepoint record, from its format file.
pub fn tracepoint_field_offset(category: &str, name: &str, field: &str) -> Result<u32, CaptureError> {
    let path = format!("{TRACEFS}/events/{category}/{name}/format");
    let text = std::fs::read_to_string(&path).map_err(|e| CaptureError::Tracefs(format!("{path}: {e}")))?;
    parse_field_offset(&text, field).ok_or_else(|| CaptureError::Tracefs(format!("{path}: no field {field}")))
}

fn parse_field_offset(format: &str, field: &str) -> Option<u32> {
    format.lines().find_map(|l| {
        let decl = l.trim().strip_prefix("field:")?;
        let (decl, rest) = decl.split_once(';')?;
        let ident = decl.split_whitespace().last()?.trim_start_matches('*');
        if ident != field {
            return None;
        }
        rest.split(';').find_map(|p| p.trim().strip_prefix("offset:")).and_then(|v| v.parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_field_offsets_in_a_format_file() {
        let f = "name: sched_process_fork\n\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
                 \tfield:pid_t child_pid;\toffset:20;\tsize:4;\tsigned:1;\n";
        assert_eq!(parse_field_offset(f, "child_pid"), Some(20));
        assert_eq!(parse_field_offset(f, "parent_comm"), Some(8));
        assert_eq!(parse_field_offset(f, "nope"), None);
    }

    fn mask(caps: &[u32]) -> u64 {
        caps.iter().fold(0, |m, c| m | 1u64 << c)
    }

    fn names(caps: &[u32]) -> Vec<&'static str> {
        missing_caps(mask(caps)).iter().map(|(_, n, _)| *n).collect()
    }

    #[test]
    fn four_capabilities_suffice_without_root() {
        assert!(names(&[CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]).is_empty());
    }

    #[test]
    fn each_missing_capability_is_named() {
        let all = [CAP_BPF, CAP_PERFMON, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH];
        for (cap, name, _) in REQUIRED_CAPS {
            let held: Vec<u32> = all.iter().copied().filter(|c| c != cap).collect();
            assert_eq!(names(&held), [*name]);
        }
        assert_eq!(names(&[]).len(), 4);
    }

    #[test]
    fn sys_admin_stands_in_for_bpf_and_perfmon_only() {
        assert!(names(&[CAP_SYS_ADMIN, CAP_SYS_PTRACE, CAP_DAC_READ_SEARCH]).is_empty());
        assert_eq!(names(&[CAP_SYS_ADMIN]), ["CAP_SYS_PTRACE", "CAP_DAC_READ_SEARCH"]);
    }
}
