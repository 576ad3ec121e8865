//! `tracer check`: can this machine run tracer, and if not, what exactly is missing.

use std::{fmt, path::Path};

use tracer_common::event::EventKind;

use crate::{
    kernel::{privileges, tracefs},
    probes::{self, Options, Probes},
};

/// The outcome of one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Ok(String),
    /// Works, but something is worth knowing.
    Note(String),
    /// Blocks tracing; the second part says what to do.
    Fail(String, String),
}

/// One named check and its outcome.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: &'static str,
    pub outcome: Outcome,
}

impl fmt::Display for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Ok(detail) => write!(f, "ok    {:<14} {detail}", self.name),
            Outcome::Note(detail) => write!(f, "note  {:<14} {detail}", self.name),
            Outcome::Fail(problem, fix) => {
                write!(
                    f,
                    "FAIL  {:<14} {problem}\n      {:<14} fix: {fix}",
                    self.name, ""
                )
            }
        }
    }
}

/// Runs every check in order; later checks are skipped when they cannot work.
pub fn run() -> Vec<Check> {
    let mut checks = vec![kernel_version(), privileges()];
    let privileged = matches!(checks[1].outcome, Outcome::Ok(_));
    checks.push(btf());
    let tracefs = tracefs_check(privileged);
    let have_tracefs = matches!(tracefs.outcome, Outcome::Ok(_));
    checks.push(tracefs);
    if have_tracefs {
        checks.push(tracepoints());
    }
    if privileged {
        checks.push(ring_buffer());
    }
    if privileged
        && checks
            .iter()
            .all(|c| !matches!(c.outcome, Outcome::Fail(..)))
    {
        checks.push(programs());
    }
    checks
}

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}

/// `(major, minor)` of a kernel release string such as `6.18.44-foo`.
pub fn parse_release(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(|c: char| !c.is_ascii_digit());
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

fn kernel_version() -> Check {
    let release = kernel_release();
    let outcome = match parse_release(&release) {
        Some(v) if v >= (5, 8) => Outcome::Ok(format!("Linux {release}")),
        Some(_) => Outcome::Fail(
            format!("Linux {release} is older than 5.8, which brought BPF ring buffers"),
            "run tracer on Linux 5.8 or later".into(),
        ),
        None => Outcome::Note(format!("cannot read the kernel version ({release:?})")),
    };
    Check {
        name: "kernel",
        outcome,
    }
}

fn privileges() -> Check {
    let missing = privileges::missing_for_tracing(privileges::effective_capabilities());
    let outcome = if missing.is_empty() {
        Outcome::Ok("may load and attach eBPF tracing programs".into())
    } else {
        Outcome::Fail(
            format!("missing {}", missing.join(" and ")),
            "run tracer as root (sudo), or grant CAP_BPF and CAP_PERFMON".into(),
        )
    };
    Check {
        name: "privileges",
        outcome,
    }
}

fn btf() -> Check {
    let outcome = if Path::new("/sys/kernel/btf/vmlinux").exists() {
        Outcome::Ok("/sys/kernel/btf/vmlinux present".into())
    } else {
        Outcome::Fail(
            "no /sys/kernel/btf/vmlinux: the scheduler's tracepoint arguments and task layout \
             are unknown"
                .into(),
            "a kernel built with CONFIG_DEBUG_INFO_BTF=y (Linux 5.5 or later)".into(),
        )
    };
    Check {
        name: "btf",
        outcome,
    }
}

fn tracefs_check(privileged: bool) -> Check {
    let outcome = match (tracefs::find(), privileged) {
        (Some(root), _) => Outcome::Ok(format!("mounted at {}", root.display())),
        (None, false) => Outcome::Fail(
            "not mounted (or not readable by this user)".into(),
            "run as root: tracer mounts it itself, or `mount -t tracefs tracefs /sys/kernel/tracing`"
                .into(),
        ),
        (None, true) => match tracefs::root() {
            Ok(root) => Outcome::Ok(format!("mounted it at {}", root.display())),
            Err(e) => Outcome::Fail(
                e.to_string(),
                "enable CONFIG_FTRACE, or mount tracefs at /sys/kernel/tracing".into(),
            ),
        },
    };
    Check {
        name: "tracefs",
        outcome,
    }
}

fn tracepoints() -> Check {
    let outcome = match tracefs::find().map(|root| probes::fields::read(&root)) {
        Some(Ok(fields)) => {
            let waitv = if fields.waitv_waiters == 0 {
                "; no futex_waitv (Linux < 5.16): its waits are not seen"
            } else {
                ""
            };
            Outcome::Ok(format!(
                "sched, task and futex tracepoints and their arguments readable{waitv}"
            ))
        }
        Some(Err(e)) => Outcome::Fail(
            e.to_string(),
            "a kernel with CONFIG_FTRACE_SYSCALLS and the sched and task tracepoints".into(),
        ),
        None => Outcome::Fail("tracefs not mounted".into(), "see tracefs above".into()),
    };
    Check {
        name: "tracepoints",
        outcome,
    }
}

fn ring_buffer() -> Check {
    // BPF_MAP_CREATE of a BPF_MAP_TYPE_RINGBUF (27) of one page.
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        map_flags: u32,
    }
    let attr = MapCreate {
        map_type: 27,
        key_size: 0,
        value_size: 0,
        max_entries: 4096,
        map_flags: 0,
    };
    // SAFETY: bpf(BPF_MAP_CREATE = 0, attr, size) with a valid attribute prefix.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &raw const attr,
            size_of::<MapCreate>() as u32,
        )
    };
    let outcome = if fd >= 0 {
        // SAFETY: closing the descriptor just created.
        unsafe { libc::close(fd as i32) };
        Outcome::Ok("BPF ring buffer maps can be created".into())
    } else {
        let err = std::io::Error::last_os_error();
        Outcome::Fail(
            format!("creating a BPF ring buffer failed: {err}"),
            "Linux 5.8 or later with CONFIG_BPF_SYSCALL, run as root".into(),
        )
    };
    Check {
        name: "ring buffer",
        outcome,
    }
}

fn programs() -> Check {
    // The verifier sees different code for a capture (filtered) and the daemon (every thread).
    let modes = [("record", true), ("daemon", false)];
    let failure = modes.iter().find_map(|&(mode, filtered)| {
        Probes::load(Options {
            filtered,
            stream: &EventKind::ALL,
            max_threads: 64,
            futex: true,
        })
        .err()
        .map(|e| format!("{mode}: {e}"))
    });
    let outcome = match failure {
        None => {
            Outcome::Ok("every program passes the kernel's verifier (record and daemon)".into())
        }
        Some(e) => Outcome::Fail(
            e,
            "report this with `uname -r` and the message above".into(),
        ),
    };
    Check {
        name: "programs",
        outcome,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releases_parse() {
        assert_eq!(parse_release("6.18.44-fc-v445"), Some((6, 18)));
        assert_eq!(parse_release("5.4.0"), Some((5, 4)));
        assert_eq!(parse_release("garbage"), None);
    }

    #[test]
    fn failures_say_what_to_do() {
        let check = Check {
            name: "tracefs",
            outcome: Outcome::Fail("not mounted".into(), "mount it".into()),
        };
        let text = check.to_string();
        assert!(text.starts_with("FAIL  tracefs"), "{text}");
        assert!(text.contains("fix: mount it"), "{text}");
    }
}
