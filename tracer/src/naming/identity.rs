//! What `/proc` says of a process that its name is made from: its kernel name, executable and
//! command line. All three are untrusted: any bytes, read with a bound.

use std::{fs, path::Path};

/// At most this many bytes of a command line are read; the rest is ignored.
pub const MAX_CMDLINE: usize = 64 * 1024;

/// `PF_KTHREAD` in a task's flags (`/proc/PID/stat`, field 9).
const PF_KTHREAD: u64 = 0x0020_0000;

/// A process as its name is made from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identity {
    /// The main thread's kernel name.
    pub comm: String,
    /// The executable's path, as the process's own mount namespace names it; empty when
    /// unknown (kernel threads, a process that exited, no permission).
    pub exe: String,
    /// The arguments (`argv`), lossily decoded.
    pub args: Vec<String>,
    /// A kernel thread (`PF_KTHREAD`).
    pub kernel: bool,
}

impl Identity {
    /// Whether this is all the process will show: a kernel thread, or a process with its
    /// command line. A process in the middle of an `exec` has none yet.
    pub fn is_settled(&self) -> bool {
        self.kernel || !self.args.is_empty()
    }

    /// Reads process `pid` from `/proc`, with `comm` as its main thread's kernel name; None
    /// when it is gone.
    pub fn of_process(pid: u32, comm: &str) -> Option<Self> {
        let dir = Path::new("/proc").join(pid.to_string());
        let stat = crate::kernel::procfs::read_text(dir.join("stat")).ok()?;
        let kernel = stat_flags(&stat).is_some_and(|flags| flags & PF_KTHREAD != 0);
        let exe = fs::read_link(dir.join("exe"))
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let args = fs::read(dir.join("cmdline"))
            .map(|raw| parse_cmdline(&raw))
            .unwrap_or_default();
        Some(Self {
            comm: comm.to_owned(),
            exe,
            args,
            kernel,
        })
    }

    /// The executable's file name.
    pub fn exe_base(&self) -> &str {
        self.exe.rsplit('/').next().unwrap_or("")
    }

    /// The arguments joined by single spaces.
    pub fn cmdline(&self) -> String {
        self.args.join(" ")
    }
}

/// The flags field of a `/proc/PID/stat` line (after the parenthesised name, which may hold
/// any bytes, spaces and parentheses included).
fn stat_flags(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    // state ppid pgrp session tty_nr tpgid flags
    rest.split_whitespace().nth(6)?.parse().ok()
}

/// `argv` from the NUL-separated bytes of `/proc/PID/cmdline`, at most [`MAX_CMDLINE`] of them.
pub fn parse_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = &raw[..raw.len().min(MAX_CMDLINE)];
    let raw = raw.strip_suffix(&[0]).unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_flags_follow_any_name() {
        let stat = "42 (a) b (c)) S 2 0 0 0 -1 2129984 0 0";
        assert_eq!(stat_flags(stat), Some(2_129_984));
        assert_eq!(stat_flags("42 (x"), None);
    }

    #[test]
    fn command_lines_are_bounded_and_lossy() {
        assert_eq!(parse_cmdline(b"python3\0app.py\0"), ["python3", "app.py"]);
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        assert_eq!(parse_cmdline(b"a\0\0b\0"), ["a", "", "b"]);
        assert_eq!(parse_cmdline(b"\xff\xfe\0"), ["\u{fffd}\u{fffd}"]);
        let long = vec![b'x'; MAX_CMDLINE * 2];
        assert_eq!(parse_cmdline(&long)[0].len(), MAX_CMDLINE);
    }

    #[test]
    fn this_process_reads_as_itself() {
        let me = Identity::of_process(std::process::id(), "me").unwrap();
        assert!(!me.kernel);
        assert!(!me.exe.is_empty());
        assert!(!me.args.is_empty());
        // kthreadd is PID 2 on Linux.
        if let Some(kthreadd) = Identity::of_process(2, "kthreadd") {
            assert!(kthreadd.kernel);
            assert!(kthreadd.args.is_empty());
        }
    }
}
