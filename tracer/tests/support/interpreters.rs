//! The CPythons the Python workloads run on: the host's (Debian's and pyenv's) and those of
//! the Debian sid root, each started on the host, in a PID namespace of its own, or in its
//! own root.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use super::*;

/// A CPython the workloads run on: one of the host's, or one in a root file system of its own.
pub struct Python {
    /// The interpreter, as its own process sees it.
    pub executable: PathBuf,
    /// Its version, `3.14.10`.
    pub version: String,
    /// The root it runs in (through `chroot`); `None` for the host's.
    pub root: Option<PathBuf>,
}

/// How a workload is started: the command before the script, and what it does.
pub struct Launch {
    pub command: Command,
    /// The command forks the interpreter (else it execs it in place).
    pub forks: bool,
    /// The kernel names the process had before it became the interpreter, when it is
    /// started by `record -- CMD`: tracer's, then those of any launcher that exec'd it.
    pub execs: Vec<&'static str>,
}

/// The files of one run: in a scratch directory with the Python workloads copied in, seen
/// by the workload at `inside` (within its root).
pub struct Files {
    pub dir: tempfile::TempDir,
    pub inside: PathBuf,
}

impl Files {
    /// `name` in the directory, as the tests see it.
    pub fn host(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `name` in the directory, as the workload sees it.
    pub fn seen(&self, name: &str) -> PathBuf {
        self.inside.join(name)
    }
}

impl Python {
    /// A host's interpreter.
    pub fn host(executable: PathBuf, version: String) -> Self {
        Self {
            executable,
            version,
            root: None,
        }
    }

    /// How tests name it.
    pub fn label(&self) -> String {
        match &self.root {
            None => format!("Python {}", self.version),
            Some(root) => format!("Python {} in {}", self.version, root.display()),
        }
    }

    /// A scratch directory for one run (inside the root for a Python in a root of its own),
    /// with the Python workloads in it.
    pub fn files(&self) -> Files {
        let (dir, inside) = match &self.root {
            None => {
                let dir = scratch();
                let inside = dir.path().to_owned();
                (dir, inside)
            }
            Some(root) => {
                let dir = tempfile::Builder::new()
                    .prefix("tracer-test-")
                    .tempdir_in(root.join("tmp"))
                    .expect("temp dir in the root");
                let inside = Path::new("/tmp").join(dir.path().file_name().unwrap());
                (dir, inside)
            }
        };
        let workloads = python_workload("");
        for entry in std::fs::read_dir(&workloads).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "py") {
                std::fs::copy(&path, dir.path().join(path.file_name().unwrap())).unwrap();
            }
        }
        Files { dir, inside }
    }

    /// The command that runs the interpreter (its arguments to be added), in a PID namespace
    /// of its own with `pid_namespace`. A Python in a root of its own runs there through
    /// `unshare --root` in a mount namespace of its own, with a `/proc` mounted in that
    /// namespace only: the kernel drops the mount when the workload ends, however it ends.
    pub fn launch(&self, pid_namespace: bool) -> Launch {
        let mut prefix: Vec<String> = Vec::new();
        if pid_namespace {
            // `--kill-child`: the interpreter, the namespace's init, dies with the launcher.
            prefix.extend(["--pid", "--fork", "--kill-child"].map(String::from));
        }
        if let Some(root) = &self.root {
            prefix.extend(["--mount", "--propagation", "private"].map(String::from));
            prefix.push(format!("--root={}", root.display()));
        }
        if prefix.is_empty() {
            return Launch {
                command: Command::new(&self.executable),
                forks: false,
                execs: vec!["tracer"],
            };
        }
        // Its own /proc: the workloads read their counters there, and in a PID namespace it
        // must be the namespace's.
        prefix.push("--mount-proc".into());
        let mut command = Command::new("unshare");
        command.args(&prefix).arg(&self.executable);
        Launch {
            command,
            forks: pid_namespace,
            execs: if pid_namespace {
                vec![]
            } else {
                vec!["tracer", "unshare"]
            },
        }
    }

    /// The version of the interpreter, when it is CPython 3.8 or later.
    pub fn version_of(launch: Launch) -> Option<String> {
        let mut command = launch.command;
        let out = command
            .args([
                "-c",
                "import sys; v = sys.version_info; print('%d.%d.%d' % v[:3]); \
                 sys.exit(v < (3, 8))",
            ])
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }
}

/// Every CPython 3.8 or later here: `TRACER_PYTHON` (else Debian's), then pyenv's, then those
/// of the Debian sid root (`sid_pythons`).
pub fn pythons() -> Vec<Python> {
    let mut candidates = vec![python()];
    let root = std::env::var_os("PYENV_ROOT").map_or_else(|| "/root/.pyenv".into(), PathBuf::from);
    if let Ok(dir) = std::fs::read_dir(root.join("versions")) {
        let mut found: Vec<PathBuf> = dir
            .filter_map(|e| Some(e.ok()?.path().join("bin/python3")))
            .filter(|p| p.exists())
            .collect();
        found.sort();
        candidates.extend(found);
    }
    let mut found: Vec<Python> = candidates
        .into_iter()
        .filter_map(|p| {
            let version = Python::version_of(Python::host(p.clone(), String::new()).launch(false))?;
            Some(Python::host(p, version))
        })
        .collect();
    assert!(
        !found.is_empty() || std::env::var_os("CI").is_none(),
        "no CPython 3.8 or later found"
    );
    found.extend(sid_pythons());
    eprintln!(
        "Pythons: {}",
        found
            .iter()
            .map(|p| format!("{} ({})", p.executable.display(), p.label()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    found
}

/// Debian sid's `python3.14` and `python3.15`, in the root file system `TRACER_SID_ROOT`
/// (`cargo xtask test` makes it in `target/sid-root`). Under `CI=true` a missing root or
/// interpreter fails the test; elsewhere it is skipped, saying why.
pub fn sid_pythons() -> Vec<Python> {
    let missing = |why: String| {
        assert!(
            std::env::var_os("CI").is_none(),
            "the Pythons of the Debian sid root must be tested under CI, but {why} \
             (`cargo xtask test` makes the root and sets TRACER_SID_ROOT)"
        );
        eprintln!(
            "skipped the Pythons of the Debian sid root: {why} (`cargo xtask test` makes it)"
        );
        Vec::new()
    };
    let Some(root) = std::env::var_os("TRACER_SID_ROOT").map(PathBuf::from) else {
        return missing("TRACER_SID_ROOT is not set".into());
    };
    let mut found = Vec::new();
    for executable in ["/usr/bin/python3.14", "/usr/bin/python3.15"] {
        let mut python = Python {
            executable: executable.into(),
            version: String::new(),
            root: Some(root.clone()),
        };
        let Some(version) = Python::version_of(python.launch(false)) else {
            return missing(format!("{executable} does not run in {}", root.display()));
        };
        python.version = version;
        found.push(python);
    }
    found
}

/// A child process killed (and reaped) when a test is done with it, also when it fails
/// midway: no workload outlives its test.
pub struct KillOnDrop(pub std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}
