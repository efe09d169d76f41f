//! Container ids from `/proc/<pid>/cgroup` (cgroup v1 and v2; containerd,
//! CRI-O, Docker and Podman path formats).

/// The container id (64 lower-case hex chars) in a cgroup file's text, if any.
pub fn container_id(cgroup_file: &str) -> Option<String> {
    cgroup_file.lines().find_map(|line| {
        // v1: "<id>:<controllers>:<path>", v2: "0::<path>"
        let path = line.splitn(3, ':').nth(2)?;
        path.rsplit('/').find_map(id_in_segment)
    })
}

/// Extracts an id from one path segment such as `docker-<id>.scope`,
/// `cri-containerd-<id>.scope`, `crio-<id>.scope`, `libpod-<id>.scope` or `<id>`.
fn id_in_segment(seg: &str) -> Option<String> {
    let seg = seg.strip_suffix(".scope").unwrap_or(seg);
    let id = seg.rsplit(['-', ':']).next()?;
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "3f4c5e1b2a7d9c8e6f5a4b3c2d1e0f9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d3e";

    #[test]
    fn docker_cgroup_v2() {
        let f = format!("0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id(&f).as_deref(), Some(ID));
    }

    #[test]
    fn docker_cgroup_v1() {
        let f = format!("12:pids:/docker/{ID}\n11:memory:/docker/{ID}\n");
        assert_eq!(container_id(&f).as_deref(), Some(ID));
    }

    #[test]
    fn containerd_in_kubernetes() {
        let f = format!(
            "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_id(&f).as_deref(), Some(ID));
    }

    #[test]
    fn crio_and_cgroupfs_driver() {
        assert_eq!(container_id(&format!("0::/kubepods.slice/crio-{ID}.scope")).as_deref(), Some(ID));
        assert_eq!(
            container_id(&format!("4:cpu:/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{ID}"))
                .as_deref(),
            Some(ID)
        );
        assert_eq!(container_id(&format!("0::/machine.slice/libpod-{ID}.scope/container")).as_deref(), Some(ID));
    }

    #[test]
    fn host_processes_have_no_container() {
        assert_eq!(container_id("0::/user.slice/user-0.slice/session-1.scope\n"), None);
        assert_eq!(container_id("0::/\n"), None);
        assert_eq!(container_id(""), None);
        assert_eq!(container_id(&format!("0::/docker-{}.scope", &ID[..40])), None);
    }

    const POD: &str = "pod1a2b3c4d_5e6f_7a8b_9c0d_1e2f3a4b5c6d";

    #[test]
    fn containerd_cgroup_v1_systemd_and_cgroupfs_drivers() {
        let systemd = format!(
            "12:memory:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{POD}.slice/cri-containerd-{ID}.scope\n\
             1:name=systemd:/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-{POD}.slice/cri-containerd-{ID}.scope\n"
        );
        assert_eq!(container_id(&systemd).as_deref(), Some(ID));
        let cgroupfs = format!("11:pids:/kubepods/burstable/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{ID}\n");
        assert_eq!(container_id(&cgroupfs).as_deref(), Some(ID));
    }

    #[test]
    fn containerd_cgroup_v2_cgroupfs_driver() {
        let f = format!("0::/kubepods/besteffort/pod1a2b3c4d-5e6f-7a8b-9c0d-1e2f3a4b5c6d/{ID}\n");
        assert_eq!(container_id(&f).as_deref(), Some(ID));
    }

    #[test]
    fn crio_cgroup_v1_and_v2_systemd_slices() {
        let v1 = format!(
            "10:cpu,cpuacct:/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD}.slice/crio-{ID}.scope\n"
        );
        assert_eq!(container_id(&v1).as_deref(), Some(ID));
        let v2 = format!("0::/kubepods.slice/kubepods-{POD}.slice/crio-{ID}.scope/container\n");
        assert_eq!(container_id(&v2).as_deref(), Some(ID), "sub-cgroup under the scope");
    }

    #[test]
    fn docker_systemd_driver_v1_and_cri_dockerd_in_kubernetes() {
        let v1 = format!("9:devices:/system.slice/docker-{ID}.scope\n");
        assert_eq!(container_id(&v1).as_deref(), Some(ID));
        let k8s =
            format!("0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-{POD}.slice/docker-{ID}.scope\n");
        assert_eq!(container_id(&k8s).as_deref(), Some(ID));
    }

    #[test]
    fn nested_runtime_reports_the_innermost_container() {
        let outer = "a".repeat(64);
        let f =
            format!("0::/system.slice/docker-{outer}.scope/kubelet.slice/kubepods.slice/cri-containerd-{ID}.scope\n");
        assert_eq!(container_id(&f).as_deref(), Some(ID), "kind-style node in a container");
    }

    #[test]
    fn uppercase_or_pod_segments_are_not_ids() {
        assert_eq!(container_id(&format!("0::/kubepods.slice/kubepods-{POD}.slice\n")), None);
        assert_eq!(container_id(&format!("0::/docker/{}\n", ID.to_ascii_uppercase())), None);
    }
}
