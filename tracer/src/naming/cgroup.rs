//! Where a process runs, from its cgroup (`/proc/PID/cgroup`): the systemd unit and the
//! container. The path is an untrusted string (any bytes, any length), read with a bound.
//!
//! The cgroup path formats recognised, each with its systemd-driver form:
//! - systemd services and scopes: `/system.slice/orders.service`,
//!   `/user.slice/user-1000.slice/user@1000.service/app.slice/sync.service`;
//! - Docker: `/docker/ID`, `/system.slice/docker-ID.scope`;
//! - containerd with Kubernetes (CRI): `/kubepods/burstable/podUID/ID`,
//!   `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podUID.slice/cri-containerd-ID.scope`;
//! - CRI-O: `/kubepods/besteffort/podUID/crio-ID`, `.../crio-ID.scope`;
//! - Podman: `/machine.slice/libpod-ID.scope` (and rootless, under `user@UID.service`),
//!   `/libpod_parent/libpod-ID`.
//!
//! `ID` is the container's 64 hex digits. The conmon monitors of CRI-O and Podman
//! (`crio-conmon-ID.scope`, `libpod-conmon-ID.scope`) are not the container.

use std::{fs, io::Read as _, path::Path};

/// At most this many bytes of `/proc/PID/cgroup` are read.
pub const MAX_CGROUP_FILE: usize = 16 * 1024;

/// A container id is shown by its first this many hex digits, as `docker ps` does.
pub const CONTAINER_ID_DIGITS: usize = 12;

/// The systemd unit and container a process runs in; empty where there is none.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Placement {
    /// The innermost systemd service (`orders.service`), else the innermost scope that is not
    /// a container's (`session-3.scope`).
    pub unit: String,
    /// The first [`CONTAINER_ID_DIGITS`] hex digits of the container's id.
    pub container: String,
}

impl Placement {
    /// Reads where process `pid` runs; the default (both empty) when its cgroup cannot be
    /// read (it exited, or no cgroup is mounted).
    pub fn of_process(pid: u32) -> Self {
        let path = Path::new("/proc").join(pid.to_string()).join("cgroup");
        let mut raw = Vec::new();
        let read =
            fs::File::open(path).and_then(|f| f.take(MAX_CGROUP_FILE as u64).read_to_end(&mut raw));
        match read {
            Ok(_) => Self::of_cgroup_file(&String::from_utf8_lossy(&raw)),
            Err(_) => Self::default(),
        }
    }

    /// Where the process of this `/proc/PID/cgroup` text runs: from its cgroup v2 path
    /// (`0::PATH`), else from the v1 hierarchy systemd keeps (`name=systemd`), else from the
    /// first v1 path that names a container.
    pub fn of_cgroup_file(text: &str) -> Self {
        let mut v1 = Vec::new();
        for line in text.lines() {
            let mut fields = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if id == "0" && controllers.is_empty() {
                let placement = Self::of_path(path);
                if placement != Self::default() {
                    return placement;
                }
            } else if controllers == "name=systemd" {
                v1.insert(0, path);
            } else {
                v1.push(path);
            }
        }
        let mut placement = Self::default();
        for path in v1 {
            let found = Self::of_path(path);
            if placement.unit.is_empty() {
                placement.unit = found.unit;
            }
            if placement.container.is_empty() {
                placement.container = found.container;
            }
        }
        placement
    }

    /// Where a process in cgroup `path` runs.
    pub fn of_path(path: &str) -> Self {
        let mut service = None;
        let mut scope = None;
        let mut container = None;
        for part in path.split('/') {
            if let Some(id) = container_id(part) {
                container = Some(id);
            } else if part.ends_with(".service") && is_unit_name(part) {
                service = Some(part);
            } else if part.ends_with(".scope") && is_unit_name(part) && !is_monitor(part) {
                scope = Some(part);
            }
        }
        Self {
            unit: service.or(scope).unwrap_or_default().to_owned(),
            container: container
                .map(|id| id[..CONTAINER_ID_DIGITS].to_owned())
                .unwrap_or_default(),
        }
    }
}

/// The 64 hex digits of the container a cgroup path component names: the id alone (the
/// cgroupfs drivers), or as `RUNTIME-ID` with or without `.scope` (the systemd drivers).
fn container_id(part: &str) -> Option<&str> {
    if is_id(part) {
        return Some(part);
    }
    let name = part.strip_suffix(".scope").unwrap_or(part);
    let (runtime, id) = name.rsplit_once('-')?;
    let known = matches!(
        runtime,
        "docker" | "cri-containerd" | "crio" | "libpod" | "containerd"
    );
    (known && is_id(id)).then_some(id)
}

/// A container's full id: 64 lowercase hex digits.
fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// A container runtime's monitor process scope (`crio-conmon-ID.scope`).
fn is_monitor(part: &str) -> bool {
    part.contains("-conmon-")
}

/// Whether `part` can be a systemd unit name: at most 255 bytes of ASCII letters, digits and
/// `:-_.\@`, which is what systemd allows.
fn is_unit_name(part: &str) -> bool {
    part.len() <= 255
        && part
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b":-_.\\@".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "4f1c2a9b8e7d6c5b4a39281706f5e4d3c2b1a09f8e7d6c5b4a392817f6e5d4c3";
    const SHORT: &str = "4f1c2a9b8e7d";

    fn v2(path: &str) -> Placement {
        Placement::of_cgroup_file(&format!("0::{path}\n"))
    }

    fn placed(unit: &str, container: &str) -> Placement {
        Placement {
            unit: unit.into(),
            container: container.into(),
        }
    }

    #[test]
    fn systemd_services_are_their_unit() {
        assert_eq!(
            v2("/system.slice/orders.service"),
            placed("orders.service", "")
        );
        assert_eq!(
            v2("/user.slice/user-1000.slice/user@1000.service/app.slice/sync.service"),
            placed("sync.service", "")
        );
        // A service's own sub-cgroups (delegation) still name it.
        assert_eq!(
            v2("/system.slice/worker.service/payload"),
            placed("worker.service", "")
        );
    }

    #[test]
    fn scopes_name_the_unit_only_without_a_service() {
        assert_eq!(
            v2("/user.slice/user-1000.slice/session-3.scope"),
            placed("session-3.scope", "")
        );
        assert_eq!(v2("/init.scope"), placed("init.scope", ""));
        assert_eq!(v2("/"), Placement::default());
    }

    #[test]
    fn docker_with_either_driver() {
        assert_eq!(v2(&format!("/docker/{ID}")), placed("", SHORT));
        assert_eq!(
            v2(&format!("/system.slice/docker-{ID}.scope")),
            placed("", SHORT)
        );
    }

    #[test]
    fn containerd_cri_in_kubernetes_with_either_driver() {
        assert_eq!(
            v2(&format!(
                "/kubepods/burstable/pod8d2c5e0e-3c3f-4a59-9a57-7d2b1f3c0a11/{ID}"
            )),
            placed("", SHORT)
        );
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-burstable.slice/\
                 kubepods-burstable-pod8d2c5e0e_3c3f_4a59_9a57_7d2b1f3c0a11.slice/\
                 cri-containerd-{ID}.scope"
            )),
            placed("", SHORT)
        );
    }

    #[test]
    fn cri_o_with_either_driver_and_not_its_monitor() {
        assert_eq!(
            v2(&format!("/kubepods/besteffort/pod0a1b/crio-{ID}")),
            placed("", SHORT)
        );
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b.slice/\
                 crio-{ID}.scope"
            )),
            placed("", SHORT)
        );
        assert_eq!(
            v2(&format!(
                "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0a1b.slice/\
                 crio-conmon-{ID}.scope"
            )),
            Placement::default()
        );
    }

    #[test]
    fn podman_rootful_rootless_and_cgroupfs() {
        assert_eq!(
            v2(&format!("/machine.slice/libpod-{ID}.scope")),
            placed("", SHORT)
        );
        // A container with systemd inside: its payload's own sub-cgroup.
        assert_eq!(
            v2(&format!("/machine.slice/libpod-{ID}.scope/container")),
            placed("", SHORT)
        );
        assert_eq!(
            v2(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            placed("user@1000.service", SHORT)
        );
        assert_eq!(
            v2(&format!("/libpod_parent/libpod-{ID}")),
            placed("", SHORT)
        );
        assert_eq!(
            v2(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            Placement::default()
        );
    }

    #[test]
    fn cgroup_v1_uses_systemds_hierarchy_then_any_container() {
        let text = format!(
            "12:memory:/docker/{ID}\n11:cpu,cpuacct:/docker/{ID}\n\
             1:name=systemd:/system.slice/docker.service\n0::/\n"
        );
        assert_eq!(
            Placement::of_cgroup_file(&text),
            placed("docker.service", SHORT)
        );
    }

    #[test]
    fn untrusted_paths_name_nothing_they_should_not() {
        // Not hex, too short, upper case, unknown runtime, names that are no unit names.
        for path in [
            "/docker/not-an-id",
            &format!("/docker/{}", &ID[..63]),
            &format!("/docker/{}", ID.to_uppercase()),
            "/system.slice/a b.service",
            "/system.slice/caf\u{e9}.service",
            "garbage without slashes",
            "",
        ] {
            let got = v2(path);
            assert!(
                got.container.is_empty() && got.unit.is_empty(),
                "{path:?}: {got:?}"
            );
        }
        // An id under a runtime not known is no container; its scope is still a unit.
        assert_eq!(
            v2(&format!("/system.slice/other-{ID}.scope")),
            placed(&format!("other-{ID}.scope"), "")
        );
        let long = format!("/{}.service", "a".repeat(300));
        assert_eq!(v2(&long), Placement::default());
        // Garbage lines around a valid one.
        let text = format!("\u{0}\u{7f}::\nno colons\n0::/system.slice/docker-{ID}.scope\n");
        assert_eq!(Placement::of_cgroup_file(&text), placed("", SHORT));
    }

    #[test]
    fn this_process_is_read() {
        // Whatever this machine's cgroups are, reading them succeeds and stays bounded.
        let me = Placement::of_process(std::process::id());
        assert!(me.unit.len() <= 255 && me.container.len() <= CONTAINER_ID_DIGITS);
        assert_eq!(Placement::of_process(u32::MAX), Placement::default());
    }
}
