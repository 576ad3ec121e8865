//! `cargo xtask install`: the release binary, the systemd unit and the default
//! configuration, each in its place under a root directory (`/`, or a staging directory).
//!
//! Depends on `std` and `anyhow` only: tracer's tests stage an installation with this
//! same code.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Where each file goes, relative to the root.
pub const BINARY: &str = "usr/local/bin/tracer";
pub const UNIT: &str = "etc/systemd/system/tracer.service";
pub const CONFIG: &str = "etc/tracer/tracer.toml";

/// The sources, relative to the workspace.
pub const UNIT_SOURCE: &str = "deploy/systemd/tracer.service";
pub const CONFIG_SOURCE: &str = "deploy/tracer.toml";

/// What one installation did.
#[derive(Debug, Default)]
pub struct Installed {
    /// Files written.
    pub written: Vec<PathBuf>,
    /// Files left as they were (an existing configuration).
    pub kept: Vec<PathBuf>,
}

/// Installs `binary` and the workspace's unit and configuration under `root`. The binary and
/// the unit are replaced; an existing configuration is kept.
pub fn install(workspace: &Path, binary: &Path, root: &Path) -> Result<Installed> {
    let mut done = Installed::default();
    let target = root.join(BINARY);
    replace(binary, &target, 0o755)?;
    done.written.push(target);
    let target = root.join(UNIT);
    replace(&workspace.join(UNIT_SOURCE), &target, 0o644)?;
    done.written.push(target);
    let target = root.join(CONFIG);
    if target.exists() {
        done.kept.push(target);
    } else {
        replace(&workspace.join(CONFIG_SOURCE), &target, 0o644)?;
        done.written.push(target);
    }
    Ok(done)
}

/// Copies `from` to `to` through a temporary file in the same directory and a rename, so
/// that a running binary is replaced rather than written over.
fn replace(from: &Path, to: &Path, mode: u32) -> Result<()> {
    let dir = to.parent().context("an installed file has a directory")?;
    fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = to.file_name().context("an installed file has a name")?;
    let temporary = dir.join(format!(".{}.new", name.to_string_lossy()));
    match fs::remove_file(&temporary) {
        Err(e) if e.kind() != ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("removing {}", temporary.display()));
        }
        _ => {}
    }
    fs::copy(from, &temporary)
        .with_context(|| format!("copying {} to {}", from.display(), temporary.display()))?;
    fs::set_permissions(&temporary, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", temporary.display()))?;
    fs::rename(&temporary, to)
        .with_context(|| format!("moving {} to {}", temporary.display(), to.display()))
}
