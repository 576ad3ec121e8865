//! Whether this process may load and attach eBPF tracing programs.

use std::fs;

use crate::error::{Error, Result};

const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// The effective capability set of this process (`CapEff` in `/proc/self/status`).
pub fn effective_capabilities() -> u64 {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status.lines().find_map(|line| {
                let hex = line.strip_prefix("CapEff:")?.trim();
                u64::from_str_radix(hex, 16).ok()
            })
        })
        .unwrap_or(0)
}

/// The capabilities missing to trace, by name; empty when tracing is allowed.
///
/// Tracing programs need `CAP_BPF` and `CAP_PERFMON`, or `CAP_SYS_ADMIN` on their own.
pub fn missing_for_tracing(caps: u64) -> Vec<&'static str> {
    let has = |cap: u32| caps & (1 << cap) != 0;
    if has(CAP_SYS_ADMIN) {
        return Vec::new();
    }
    let mut missing = Vec::new();
    if !has(CAP_BPF) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_PERFMON) {
        missing.push("CAP_PERFMON");
    }
    missing
}

/// Fails with a clear message unless this process may trace.
pub fn require_tracing(action: &'static str) -> Result<()> {
    let missing = missing_for_tracing(effective_capabilities());
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::NotPrivileged {
        action,
        // SAFETY: no preconditions.
        uid: unsafe { libc::geteuid() },
        missing: missing.join(" and "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sys_admin_alone_is_enough() {
        assert!(missing_for_tracing(1 << CAP_SYS_ADMIN).is_empty());
    }

    #[test]
    fn bpf_and_perfmon_are_both_needed() {
        assert_eq!(missing_for_tracing(0), ["CAP_BPF", "CAP_PERFMON"]);
        assert_eq!(missing_for_tracing(1 << CAP_BPF), ["CAP_PERFMON"]);
        assert!(missing_for_tracing((1 << CAP_BPF) | (1 << CAP_PERFMON)).is_empty());
    }
}
