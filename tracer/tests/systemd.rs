//! The systemd unit and `cargo xtask install`: an installation staged into a directory,
//! the unit as `systemd-analyze verify` sees it, and the unit run by a systemd of its own
//! (PID 1 of new PID, mount and cgroup namespaces), hardening included, scraped while a
//! workload runs, reloaded and stopped.

#[allow(dead_code, reason = "the test uses part of what xtask install offers")]
#[path = "../../xtask/src/install.rs"]
mod install;
mod support;

use std::{
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use support::{services::*, *};

const SYSTEMD: &str = "/lib/systemd/systemd";
const SYSTEMD_ANALYZE: &str = "/usr/bin/systemd-analyze";

/// The workspace.
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A staging root outside /tmp and /var/tmp (services get private ones, and the namespace
/// its own /tmp), readable by the service's unprivileged user.
fn staging(name: &str) -> tempfile::TempDir {
    let mut base = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    if base.starts_with("/tmp") || base.starts_with("/var/tmp") {
        base = PathBuf::from("/var/lib/tracer-tests");
        std::fs::create_dir_all(&base).expect("staging base");
    }
    let dir = tempfile::Builder::new()
        .prefix(name)
        .tempdir_in(base)
        .expect("staging dir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// `cargo xtask install --root ROOT`, with this build's binary.
fn stage(root: &Path) -> install::Installed {
    install::install(&workspace(), &tracer(), root).expect("staging an installation")
}

/// The installed unit with `ExecStart` running the staged binary and configuration.
fn unit_for(root: &Path) -> String {
    let unit = std::fs::read_to_string(root.join(install::UNIT)).unwrap();
    let exec_start = format!(
        "ExecStart={} daemon --config {}",
        root.join(install::BINARY).display(),
        root.join(install::CONFIG).display()
    );
    let lines: Vec<String> = unit
        .lines()
        .map(|l| {
            if l.starts_with("ExecStart=") {
                exec_start.clone()
            } else {
                l.to_owned()
            }
        })
        .collect();
    lines.join("\n") + "\n"
}

#[test]
fn install_stages_binary_unit_and_config() {
    let dir = staging("tracer-install-");
    let root = dir.path();
    let first = stage(root);
    assert_eq!(first.written.len(), 3, "{first:?}");
    for (path, mode) in [
        (install::BINARY, 0o755),
        (install::UNIT, 0o644),
        (install::CONFIG, 0o644),
    ] {
        let meta = std::fs::metadata(root.join(path)).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, mode, "{path}");
    }
    let unit = std::fs::read_to_string(root.join(install::UNIT)).unwrap();
    assert!(
        unit.contains(
            "\nExecStart=/usr/local/bin/tracer daemon --config /etc/tracer/tracer.toml\n"
        )
    );
    // The installed binary is this build's, and runs.
    let out = Command::new(root.join(install::BINARY))
        .args(["daemon", "--config"])
        .arg(root.join(install::CONFIG))
        .arg("--print-config")
        .output()
        .unwrap();
    expect_success("installed tracer daemon --print-config", &out);

    // Installing again replaces the binary and the unit, and keeps a configuration the
    // administrator changed.
    let config = root.join(install::CONFIG);
    std::fs::write(&config, "max_threads_per_process = 8\n").unwrap();
    std::fs::write(root.join(install::BINARY), "stale").unwrap();
    let second = stage(root);
    assert_eq!(second.kept, std::slice::from_ref(&config));
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "max_threads_per_process = 8\n"
    );
    assert_eq!(
        std::fs::metadata(root.join(install::BINARY)).unwrap().len(),
        std::fs::metadata(tracer()).unwrap().len()
    );
}

#[test]
fn unit_passes_systemd_analyze_verify() {
    const TEST: &str = "unit_passes_systemd_analyze_verify";
    if !have_program(TEST, Path::new(SYSTEMD_ANALYZE), "systemd") {
        return;
    }
    let dir = staging("tracer-verify-");
    stage(dir.path());
    let unit = dir.path().join("tracer.service");
    std::fs::write(&unit, unit_for(dir.path())).unwrap();
    let out = Command::new(SYSTEMD_ANALYZE)
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("running systemd-analyze");
    let said =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && !said.contains("tracer"),
        "systemd-analyze verify ({}):\n{said}",
        out.status
    );
}

/// Run by bash as PID 1 of the new namespaces, with the unit to run as its argument: gives
/// the namespace its own /run, /tmp, /proc, cgroup2 root and unit directories (nothing from
/// the machine's units is started), then becomes systemd.
///
/// systemd reads `/proc` of its own PID namespace (a `/proc` of another namespace makes it
/// misread its main process and stop it with SIGKILL). The daemon needs the host's: the
/// kernel reports thread ids as the host numbers them, so the service gets the host's
/// `/proc` bound over its own, as a daemon on the host (or in a `hostPID` pod) sees it.
const BOOT: &str = r#"
set -eu
unit="$1"
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir /run/host-proc
mount --rbind /proc /run/host-proc
mount -t proc proc /proc
umount -R -l /sys/fs/cgroup
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /etc/systemd/system
mount -t tmpfs tmpfs /usr/lib/systemd/system
units=/usr/lib/systemd/system
for t in sysinit basic shutdown; do
    printf '[Unit]\nDescription=%s\nDefaultDependencies=no\n' "$t" > "$units/$t.target"
done
printf '[Unit]\nDescription=tracer test\nDefaultDependencies=no\nWants=tracer.service\n' \
    > "$units/tracer-test.target"
cp "$unit" /etc/systemd/system/tracer.service
mkdir /etc/systemd/system/tracer.service.d
printf '[Service]\nBindReadOnlyPaths=/run/host-proc:/proc\nStandardOutput=append:/run/tracer.log\nStandardError=append:/run/tracer.log\n' \
    > /etc/systemd/system/tracer.service.d/test.conf
exec env -i container=tracer-test PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    /lib/systemd/systemd --system --unit=tracer-test.target --show-status=no --log-target=null
"#;

/// The cgroup2 hierarchy and this process's place in it.
fn own_cgroup() -> Option<PathBuf> {
    let mount = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"]
        .iter()
        .map(Path::new)
        .find(|m| m.join("cgroup.controllers").exists())?;
    let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
    Some(mount.join(path.trim_start_matches('/')))
}

/// A cgroup for the namespace's systemd, removed (with what it made inside) when dropped.
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        fn remove(dir: &Path) {
            if let Ok(entries) = std::fs::read_dir(dir) {
                for entry in entries.flatten() {
                    if entry.file_type().is_ok_and(|t| t.is_dir()) {
                        remove(&entry.path());
                    }
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        // The namespace's processes take a moment to go after its PID 1 is killed.
        wait_until(Duration::from_secs(5), || {
            remove(&self.0);
            !self.0.exists()
        });
    }
}

/// `systemctl ARGS` inside the namespace of `systemd` (its PID here).
fn systemctl(systemd: u32, args: &[&str]) -> String {
    let out = Command::new("nsenter")
        .args(["-t", &systemd.to_string(), "-m", "-p", "systemctl"])
        .args(args)
        .output()
        .expect("running nsenter");
    expect_success(&format!("systemctl {}", args.join(" ")), &out);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn property(systemd: u32, name: &str) -> String {
    systemctl(systemd, &["show", "tracer.service", "--value", "-p", name])
        .trim()
        .to_owned()
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or("")
        .trim()
        .to_owned()
}

#[test]
fn service_runs_hardened_under_systemd() {
    const TEST: &str = "service_runs_hardened_under_systemd";
    if !can_trace(TEST) || !have_program(TEST, Path::new(SYSTEMD), "systemd") {
        return;
    }
    let dir = staging("tracer-systemd-");
    let root = dir.path();
    stage(root);
    let port = free_port();
    let config = root.join(install::CONFIG);
    let mut text = std::fs::read_to_string(&config).unwrap();
    text.push_str(&format!("listen = \"{}\"\n", localhost(port)));
    std::fs::write(&config, text).unwrap();
    let unit = root.join("tracer.service");
    std::fs::write(&unit, unit_for(root)).unwrap();
    let boot = root.join("boot.sh");
    std::fs::write(&boot, BOOT).unwrap();

    let cgroup = own_cgroup()
        .map(|c| c.join(format!("tracer-test-{}", std::process::id())))
        .expect("no cgroup2 hierarchy to give systemd");
    std::fs::create_dir_all(&cgroup).expect("creating a cgroup");
    let cgroup = Cgroup(cgroup);
    let namespace = Running::start(
        "systemd",
        Command::new("sh")
            .arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
            .arg("sh")
            .arg(&cgroup.0)
            .args([
                "unshare", "--pid", "--fork", "--mount", "--uts", "--ipc", "--cgroup",
            ])
            .arg("--kill-child=SIGKILL")
            .arg("bash")
            .arg(&boot)
            .arg(&unit)
            .current_dir("/"),
        &root.join("systemd.log"),
    );
    let unshare = namespace.child.id();
    let mut systemd = 0;
    let started = wait_until(Duration::from_secs(30), || {
        let children = std::fs::read_to_string(format!("/proc/{unshare}/task/{unshare}/children"))
            .unwrap_or_default();
        systemd = children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        systemd != 0 && matches!(http_get(localhost(port), "/metrics"), Ok((200, _)))
    });
    let service_log = PathBuf::from(format!("/proc/{systemd}/root/run/tracer.log"));
    assert!(
        started,
        "the service never served /metrics:\n{}\n{}",
        namespace.log_text(),
        std::fs::read_to_string(&service_log).unwrap_or_default()
    );

    // Type=notify: active once READY=1 came.
    assert_eq!(property(systemd, "ActiveState"), "active");
    assert_eq!(property(systemd, "SubState"), "running");
    assert_eq!(property(systemd, "Type"), "notify");

    // It runs as an unprivileged user with three capabilities, no new privileges, and a
    // system call filter.
    let procs = std::fs::read_to_string(cgroup.0.join("system.slice/tracer.service/cgroup.procs"))
        .expect("the service's cgroup");
    let pid: u32 = procs.split_whitespace().next().unwrap().parse().unwrap();
    let uid = status_field(pid, "Uid");
    assert!(!uid.starts_with("0\t"), "runs as root: Uid {uid}");
    let cap_bpf_perfmon_dac_read_search = (1u64 << 39) | (1 << 38) | (1 << 2);
    for set in ["CapEff", "CapBnd", "CapAmb"] {
        let caps = u64::from_str_radix(&status_field(pid, set), 16).unwrap();
        assert_eq!(caps, cap_bpf_perfmon_dac_read_search, "{set} {caps:x}");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2");

    // And sees the machine's threads.
    let out = Command::new(rust_workload()).arg("mixed").output().unwrap();
    expect_success("thread-workload mixed", &out);
    let mut metrics = String::new();
    let seen = wait_until(Duration::from_secs(10), || {
        metrics = http_get(localhost(port), "/metrics")
            .map(|r| r.1)
            .unwrap_or_default();
        metrics.contains("tracer_threads_created_total{process=\"thread-workload\"}")
            && metrics.contains("tracer_thread_cpu_seconds_total{process=\"thread-workload\",")
    });
    assert!(
        seen,
        "the workload's threads are not in /metrics:\n{metrics}"
    );

    // ExecReload= rereads the configuration in place.
    let main_pid = property(systemd, "MainPID");
    systemctl(systemd, &["reload", "tracer.service"]);
    let reloaded = wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(&service_log).is_ok_and(|l| l.contains("configuration reloaded"))
    });
    assert!(reloaded, "no reload in the service's log");
    assert_eq!(property(systemd, "ActiveState"), "active");
    assert_eq!(property(systemd, "MainPID"), main_pid);

    // Stopping is SIGTERM and a clean exit.
    systemctl(systemd, &["stop", "tracer.service"]);
    assert_eq!(property(systemd, "ActiveState"), "inactive");
    assert_eq!(property(systemd, "Result"), "success");
    assert_eq!(property(systemd, "ExecMainStatus"), "0");
    drop(namespace);
}
