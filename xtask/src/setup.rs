//! Installs what building tracer needs, only where it is missing.
//!
//! The eBPF programs are built by Debian's Rust toolchain (`/usr/bin/rustc`, which ships a
//! prebuilt `core` for `bpfel-unknown-none`) and linked by `bpf-linker` built against LLVM 22.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result, bail};

/// Debian packages: the eBPF-capable toolchain, LLVM for bpf-linker, the Python the
/// workloads run on, and for the deployment tests Prometheus (run by the tests themselves,
/// not as a service) and systemd (`systemd-analyze verify`, and a service manager to run
/// the unit under), and `gcc` for the C workloads (`cc`).
const PACKAGES: [&str; 11] = [
    "rustc-web",
    "cargo-web",
    "libstd-rust-web-dev-bpf",
    "llvm-22-dev",
    "libpolly-22-dev",
    "libzstd-dev",
    "zlib1g-dev",
    "python3",
    "prometheus",
    "systemd",
    "gcc",
];

const BPF_LINKER_VERSION: &str = "0.13.0";

/// Makes sure everything is installed and tracefs is mounted.
pub fn ensure() -> Result<()> {
    ensure_packages()?;
    ensure_bpf_linker()?;
    mount_tracefs();
    Ok(())
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        .unwrap_or(false)
}

fn ensure_packages() -> Result<()> {
    install_missing(&PACKAGES)
}

/// Installs those of the Debian `packages` that are not installed, with apt.
pub fn install_missing(packages: &[&str]) -> Result<()> {
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!("xtask: installing Debian packages: {}", missing.join(" "));
    super::run_command(Command::new("apt-get").arg("update").arg("-q"))?;
    super::run_command(
        Command::new("apt-get")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("installing Debian packages (are you root?)")
}

fn cargo_bin() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("bin")
}

fn ensure_bpf_linker() -> Result<()> {
    let linker = cargo_bin().join("bpf-linker");
    let current = Command::new(&linker)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    if current.contains(BPF_LINKER_VERSION) {
        return Ok(());
    }
    eprintln!("xtask: installing bpf-linker {BPF_LINKER_VERSION} (takes a few minutes)");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    super::run_command(
        Command::new(cargo)
            .args(["install", "bpf-linker", "--locked", "--force"])
            .args(["--version", BPF_LINKER_VERSION])
            .args(["--no-default-features", "--features", "llvm-22"])
            .env("LLVM_PREFIX", "/usr/lib/llvm-22"),
    )?;
    if !linker.exists() {
        bail!(
            "bpf-linker was installed but is not at {}",
            linker.display()
        );
    }
    Ok(())
}

/// Mounts tracefs where it is missing; failures are left for tracer to report.
pub fn mount_tracefs() {
    if std::path::Path::new("/sys/kernel/tracing/events").is_dir() {
        return;
    }
    let _ = Command::new("mount")
        .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
        .status();
}
