//! Python packages the tests use, installed from PyPI into `target/pydeps` when missing:
//! Perfetto's published trace protos (`perfetto`, which ships `perfetto_trace_pb2`) and the
//! protobuf runtime, to decode `.pftrace` files independently of tracer's encoder.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

/// Pinned so that every machine decodes traces with the same protos.
const PACKAGES: [&str; 2] = ["perfetto==0.59.1", "protobuf==7.36.2"];

/// The Python the tests run (Debian's); its `pip` installs the packages.
const PYTHON: &str = "/usr/bin/python3";

/// Where the packages go, for `PYTHONPATH`.
pub fn dir(root: &Path) -> PathBuf {
    root.join("target/pydeps")
}

fn installed(dir: &Path) -> bool {
    dir.join("perfetto/protos/perfetto/trace/perfetto_trace_pb2.py")
        .is_file()
        && dir.join("google/protobuf/__init__.py").is_file()
}

/// Installs the packages unless they are there.
pub fn ensure(root: &Path) -> Result<()> {
    let dir = dir(root);
    if installed(&dir) {
        return Ok(());
    }
    let has_pip = Command::new(PYTHON)
        .args(["-m", "pip", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has_pip {
        eprintln!("xtask: installing Debian's python3-pip");
        super::run_command(Command::new("apt-get").args(["update", "-q"]))?;
        super::run_command(
            Command::new("apt-get")
                .args([
                    "install",
                    "-y",
                    "-q",
                    "--no-install-recommends",
                    "python3-pip",
                ])
                .env("DEBIAN_FRONTEND", "noninteractive"),
        )
        .context("installing python3-pip (are you root?)")?;
    }
    eprintln!(
        "xtask: installing {} into {}",
        PACKAGES.join(" "),
        dir.display()
    );
    // Into a fresh directory first, so that an interrupted install is not taken for a
    // complete one.
    let partial = dir.with_extension("partial");
    let _ = fs::remove_dir_all(&partial);
    super::run_command(
        Command::new(PYTHON)
            .args(["-m", "pip", "install", "--disable-pip-version-check"])
            .args(["--no-input", "--quiet", "--target"])
            .arg(&partial)
            .args(PACKAGES)
            .env("PIP_ROOT_USER_ACTION", "ignore"),
    )
    .context("installing the Python packages the trace tests use (is PyPI reachable?)")?;
    let _ = fs::remove_dir_all(&dir);
    fs::rename(&partial, &dir)
        .with_context(|| format!("moving {} to {}", partial.display(), dir.display()))
}
