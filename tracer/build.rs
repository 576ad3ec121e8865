//! Builds the eBPF programs (`tracer-ebpf`) for `bpfel-unknown-none` and leaves the object in
//! `OUT_DIR/tracer.bpf.o` for `include_bytes!`.
//!
//! The eBPF crate needs a compiler with a prebuilt `core` for the BPF target and unstable
//! features (`asm_experimental_arch`), which the host toolchain may not have: by default it is
//! built with Debian's `/usr/bin/cargo` and `/usr/bin/rustc` under `RUSTC_BOOTSTRAP=1`
//! (`TRACER_BPF_CARGO` and `TRACER_BPF_RUSTC` override them), and linked by `bpf-linker`.
//! `cargo xtask build` installs all of that on a fresh machine.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, bail};

fn main() -> anyhow::Result<()> {
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").context("no manifest dir")?);
    let workspace = manifest_dir.parent().context("no workspace dir")?;
    let ebpf_dir = workspace.join("tracer-ebpf");
    let common_dir = workspace.join("tracer-common");
    for dir in [&ebpf_dir, &common_dir] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for var in ["TRACER_BPF_CARGO", "TRACER_BPF_RUSTC", "TRACER_BPF_OBJECT"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let object = out_dir.join("tracer.bpf.o");

    // A prebuilt object (for example from another machine) skips the eBPF build.
    if let Some(prebuilt) = env::var_os("TRACER_BPF_OBJECT") {
        std::fs::copy(&prebuilt, &object).with_context(|| {
            format!(
                "copying TRACER_BPF_OBJECT={}",
                Path::new(&prebuilt).display()
            )
        })?;
        return Ok(());
    }

    let cargo = env::var("TRACER_BPF_CARGO").unwrap_or_else(|_| "/usr/bin/cargo".into());
    let rustc = env::var("TRACER_BPF_RUSTC").unwrap_or_else(|_| "/usr/bin/rustc".into());
    let target_dir = out_dir.join("ebpf-target");
    let arch = env::var("CARGO_CFG_TARGET_ARCH").context("no target arch")?;
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .args(["build", "--package", "tracer-ebpf", "--bins", "--release"])
        .args(["--target", "bpfel-unknown-none", "--target-dir"])
        .arg(&target_dir)
        .env("RUSTC", &rustc)
        .env("RUSTC_BOOTSTRAP", "1")
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            format!("--cfg=bpf_target_arch=\"{arch}\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf"),
        );
    // The outer build's settings are for the host compiler, not this one.
    for var in [
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    // `bpf-linker` is installed by `cargo install`, so make sure cargo's bin dir is searched.
    if let Some(home) = env::var_os("CARGO_HOME")
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cargo").into()))
    {
        let bin = Path::new(&home).join("bin");
        let path = env::var_os("PATH").unwrap_or_default();
        let mut paths: Vec<PathBuf> = env::split_paths(&path).collect();
        if !paths.contains(&bin) {
            paths.push(bin);
        }
        cmd.env("PATH", env::join_paths(paths)?);
    }
    let status = cmd.status().with_context(|| {
        format!("running {cargo} to build the eBPF programs; run `cargo xtask setup` to install the eBPF toolchain")
    })?;
    if !status.success() {
        bail!(
            "building the eBPF programs failed ({status}); run `cargo xtask setup` to install the eBPF toolchain"
        );
    }
    let built = target_dir.join("bpfel-unknown-none/release/tracer");
    std::fs::copy(&built, &object)
        .with_context(|| format!("copying {} to {}", built.display(), object.display()))?;
    Ok(())
}
