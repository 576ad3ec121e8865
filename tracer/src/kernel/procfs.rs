//! Processes and threads as `/proc` shows them.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// A process's directory under `/proc`.
fn process_dir(pid: u32) -> PathBuf {
    PathBuf::from(format!("/proc/{pid}"))
}

/// A text file of `/proc`, with bytes that are not UTF-8 read as U+FFFD: `stat` and `status`
/// hold the kernel name, which is any bytes (a name cut at 15 bytes inside a character, as
/// CPython 3.14 and later name their threads), and the fields around it must still be read.
pub fn read_text(path: impl AsRef<Path>) -> io::Result<String> {
    let raw = fs::read(path)?;
    Ok(match String::from_utf8(raw) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    })
}

/// Whether `pid` is a running process (a thread group leader, not a zombie).
pub fn process_exists(pid: u32) -> bool {
    match thread_group_of(pid) {
        Ok(tgid) => tgid == pid && !is_zombie(pid),
        Err(_) => false,
    }
}

fn is_zombie(pid: u32) -> bool {
    read_text(process_dir(pid).join("stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .unwrap_or(true)
}

/// The thread group (process) id of thread `tid`.
pub fn thread_group_of(tid: u32) -> io::Result<u32> {
    let status = read_text(process_dir(tid).join("status"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:")?.trim().parse().ok())
        .ok_or_else(|| io::Error::other("no Tgid in status"))
}

/// `/proc/PID/task/TID/NAME`.
fn task_file(pid: u32, tid: u32, name: &str) -> PathBuf {
    process_dir(pid)
        .join("task")
        .join(tid.to_string())
        .join(name)
}

/// The state letter of thread `tid` of process `pid` (`R`, `S`, `D`, ...) in its `stat`,
/// read after the parenthesised kernel name (any bytes, not UTF-8 included).
fn thread_state(pid: u32, tid: u32) -> Option<char> {
    let stat = read_text(task_file(pid, tid, "stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    rest.trim_start().chars().next()
}

/// The thread ids of process `pid`.
pub fn threads(pid: u32) -> Result<Vec<u32>> {
    let dir = process_dir(pid).join("task");
    let entries = fs::read_dir(&dir).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => Error::NoSuchProcess(pid),
        _ => Error::io(format!("listing {}", dir.display()), e),
    })?;
    let mut tids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Ok(tids)
}

/// The kernel name (`comm`) of thread `tid` of process `pid`, if it still exists.
pub fn thread_comm(pid: u32, tid: u32) -> Option<String> {
    let raw = fs::read(task_file(pid, tid, "comm")).ok()?;
    let raw = raw.strip_suffix(b"\n").unwrap_or(&raw);
    Some(String::from_utf8_lossy(raw).into_owned())
}

/// The system call thread `tid` of process `pid` is blocked in, as the kernel shows it in
/// `/proc/PID/task/TID/syscall` (which needs the right to debug the process): its number
/// and six arguments. None when it runs, is in no system call, or cannot be read.
pub fn thread_syscall(pid: u32, tid: u32) -> Option<(u64, [u64; 6])> {
    let text = fs::read_to_string(task_file(pid, tid, "syscall")).ok()?;
    parse_syscall(&text)
}

/// `/proc/PID/task/TID/syscall`'s text: `NR ARG1..ARG6 SP PC` (hex arguments), `-1 SP PC`
/// outside a system call, `running`.
fn parse_syscall(text: &str) -> Option<(u64, [u64; 6])> {
    let mut fields = text.split_ascii_whitespace();
    let nr = fields.next()?.parse().ok()?;
    let mut args = [0; 6];
    for arg in &mut args {
        *arg = u64::from_str_radix(fields.next()?.strip_prefix("0x")?, 16).ok()?;
    }
    Some((nr, args))
}

/// Whether thread `tid` of process `pid` is running or runnable right now (`R` in its stat).
pub fn thread_is_runnable(pid: u32, tid: u32) -> bool {
    thread_state(pid, tid) == Some('R')
}

/// The command line of process `pid`, arguments joined by spaces (its comm if it has none).
pub fn command_line(pid: u32) -> Option<String> {
    let raw = fs::read(process_dir(pid).join("cmdline")).ok()?;
    let args: Vec<String> = raw
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    if args.is_empty() {
        thread_comm(pid, pid)
    } else {
        Some(args.join(" "))
    }
}

/// Every thread on the machine: `(tid, tgid, comm)`.
pub fn all_threads() -> Vec<(u32, u32, String)> {
    let Ok(processes) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut all = Vec::new();
    for pid in processes.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok()) {
        for tid in threads(pid).unwrap_or_default() {
            if let Some(comm) = thread_comm(pid, tid) {
                all.push((tid, pid, comm));
            }
        }
    }
    all
}

/// The kernel's CPU time and run-queue wait of thread `tid` so far, in nanoseconds
/// (`/proc/TID/schedstat`), if it exists.
pub fn schedstat(tid: u32) -> Option<(u64, u64)> {
    let text = fs::read_to_string(process_dir(tid).join("schedstat")).ok()?;
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    Some((fields.next()?.ok()?, fields.next()?.ok()?))
}

/// The kernel's counters of thread `tid` of process `pid` now: its switches
/// (`voluntary_ctxt_switches`, `nonvoluntary_ctxt_switches` in its `status`), CPU time and
/// run-queue wait (its `schedstat`). None once it is gone.
pub fn thread_counts(pid: u32, tid: u32) -> Option<tracer_common::thread::Counts> {
    let status = read_text(task_file(pid, tid, "status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse::<u64>().ok())
    };
    let text = fs::read_to_string(task_file(pid, tid, "schedstat")).ok()?;
    let mut times = text.split_whitespace().map(str::parse::<u64>);
    Some(tracer_common::thread::Counts {
        voluntary_switches: field("voluntary_ctxt_switches:")?,
        involuntary_switches: field("nonvoluntary_ctxt_switches:")?,
        on_cpu_ns: times.next()?.ok()?,
        runqueue_wait_ns: times.next()?.ok()?,
    })
}

/// Whether thread `tid` of process `pid` is asleep now, as the kernel shows it in
/// `/proc/PID/task/TID/stat`: `S` (interruptible), `D` (uninterruptible) or `I` (idle kernel
/// thread). (Not `/proc/TID/stat`, which sums over every thread of the process.)
pub fn thread_is_asleep(pid: u32, tid: u32) -> bool {
    thread_state(pid, tid).is_some_and(|state| matches!(state, 'S' | 'D' | 'I'))
}

/// Thread group and name of thread `tid`, if it exists.
pub fn thread_identity(tid: u32) -> Option<(u32, String)> {
    let tgid = thread_group_of(tid).ok()?;
    Some((tgid, thread_comm(tgid, tid)?))
}

/// CPU seconds (user + system) and resident bytes of this process.
pub fn own_usage() -> (f64, u64) {
    // SAFETY: no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let cpu = fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            // Fields 14 and 15 of stat (utime, stime), counted after the command.
            let utime: f64 = fields.get(11)?.parse().ok()?;
            let stime: f64 = fields.get(12)?.parse().ok()?;
            Some((utime + stime) / ticks)
        })
        .unwrap_or(0.0);
    let rss = fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("VmRSS:")?
                    .trim()
                    .strip_suffix("kB")?
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
        })
        .unwrap_or(0)
        * 1024;
    (cpu, rss)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_seen_with_its_threads() {
        let pid = std::process::id();
        assert!(process_exists(pid));
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::Builder::new()
            .name("procfs-probe".into())
            .spawn(move || {
                // SAFETY: no preconditions.
                tx.send(unsafe { libc::gettid() } as u32).unwrap();
                done_rx.recv().unwrap();
            })
            .unwrap();
        let tid = rx.recv().unwrap();
        let tids = threads(pid).unwrap();
        assert!(tids.contains(&pid) && tids.contains(&tid), "{tids:?}");
        assert_eq!(thread_comm(pid, tid).as_deref(), Some("procfs-probe"));
        assert_eq!(thread_group_of(tid).unwrap(), pid);
        done_tx.send(()).unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn a_thread_whose_kernel_name_is_not_utf8_is_read() {
        let pid = std::process::id();
        let (tx, rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let handle = std::thread::spawn(move || {
            // "名前-ス" cut inside its last character, as a 15-byte kernel name can be.
            let name = b"\xe5\x90\x8d\xe5\x89\x8d-\xe3\x82\0";
            // SAFETY: PR_SET_NAME reads a NUL-terminated name of at most 16 bytes.
            assert_eq!(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) }, 0);
            // SAFETY: no preconditions.
            let tid = unsafe { libc::gettid() } as u32;
            // Its own stat, read while it runs.
            tx.send((tid, thread_is_runnable(pid, tid))).unwrap();
            done_rx.recv().unwrap();
        });
        let (tid, runnable) = rx.recv().unwrap();
        assert!(runnable, "a thread reading its own stat is running");
        assert_eq!(thread_comm(pid, tid).as_deref(), Some("名前-\u{fffd}"));
        assert_eq!(thread_group_of(tid).unwrap(), pid);
        let status = read_text(process_dir(pid).join(format!("task/{tid}/status"))).unwrap();
        assert!(status.starts_with("Name:\t名前-\u{fffd}\n"), "{status}");
        done_tx.send(()).unwrap();
        handle.join().unwrap();
    }

    #[test]
    fn a_missing_process_is_reported_as_such() {
        // Pids are below 2^22 on Linux.
        let missing = 4_194_304 + 17;
        assert!(!process_exists(missing));
        assert!(matches!(threads(missing), Err(Error::NoSuchProcess(p)) if p == missing));
    }

    #[test]
    fn syscall_lines_give_the_call_and_its_arguments() {
        let blocked = "202 0x55d0c0de1040 0x80 0x2 0x0 0x0 0x0 0x7ffc1e0 0x7f3a91\n";
        assert_eq!(
            parse_syscall(blocked),
            Some((202, [0x55d0_c0de_1040, 0x80, 2, 0, 0, 0]))
        );
        assert_eq!(parse_syscall("running\n"), None);
        assert_eq!(parse_syscall("-1 0x7ffc1e0 0x7f3a91\n"), None);
    }
}
