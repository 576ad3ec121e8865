//! Ground truth: scheduler counters read from procfs, per-thread records
//! and the `tracer.truth/v1` file.

use std::{
    ffi::OsString,
    fs, io,
    path::{Path, PathBuf},
};

use serde::Serialize;

/// Schema tag written at the top of every truth file.
pub const SCHEMA: &str = "tracer.truth/v1";

/// Environment variable naming the truth file; nothing is written without it.
pub const TRUTH_ENV: &str = "TRACER_TRUTH";

/// Per-thread scheduler counters as the kernel reports them in
/// `status` (context switches) and `schedstat` (cpu time, wait, slices).
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Counters {
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub on_cpu_ns: u64,
    pub runqueue_wait_ns: u64,
    pub timeslices: u64,
    /// CLOCK_MONOTONIC just before the counters were read (0 when read of another thread).
    pub read_ns: u64,
}

impl Counters {
    /// Counters of the calling thread.
    pub fn of_current_thread() -> io::Result<Self> {
        let read_ns = monotonic_ns()?;
        refresh_own_runtime()?;
        let counters = Self::read_from(Path::new("/proc/thread-self"))?;
        Ok(Self {
            read_ns,
            ..counters
        })
    }

    fn read_from(dir: &Path) -> io::Result<Self> {
        let status = fs::read_to_string(dir.join("status"))?;
        let schedstat = fs::read_to_string(dir.join("schedstat"))?;
        Self::parse(&status, &schedstat)
    }

    /// Parses the text of a task's `status` and `schedstat` files.
    fn parse(status: &str, schedstat: &str) -> io::Result<Self> {
        let mut sched = schedstat.split_ascii_whitespace().map(str::parse::<u64>);
        let mut next_sched = |what: &str| match sched.next() {
            Some(Ok(v)) => Ok(v),
            _ => Err(invalid(format!("schedstat: bad or missing {what}"))),
        };
        Ok(Self {
            voluntary_switches: status_field(status, "voluntary_ctxt_switches")?,
            involuntary_switches: status_field(status, "nonvoluntary_ctxt_switches")?,
            on_cpu_ns: next_sched("on_cpu_ns")?,
            runqueue_wait_ns: next_sched("runqueue_wait_ns")?,
            timeslices: next_sched("timeslices")?,
            read_ns: 0,
        })
    }
}

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's timestamps (`ktime`).
fn monotonic_ns() -> io::Result<u64> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64)
}

/// The kernel folds a running thread's cpu time into the runtime that
/// `schedstat` shows only at ticks and context switches, so a thread reading
/// its own file sees a value up to one tick old (0 for a young thread).
/// Asking for the thread's cpu clock updates it first.
fn refresh_own_runtime() -> io::Result<()> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn status_field(status: &str, key: &str) -> io::Result<u64> {
    status
        .lines()
        .find_map(|line| {
            let (k, v) = line.split_once(':')?;
            (k == key).then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| invalid(format!("status: bad or missing {key}")))
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

/// `/proc/self/task/<tid>`.
pub fn task_dir(tid: i32) -> PathBuf {
    PathBuf::from(format!("/proc/self/task/{tid}"))
}

/// Kernel tid of the calling thread.
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::gettid() }
}

/// Kernel name (`comm`) of the calling thread.
pub fn own_comm() -> io::Result<String> {
    read_comm(Path::new("/proc/thread-self/comm"))
}

/// Kernel name (`comm`) of another thread of this process.
pub fn task_comm(tid: i32) -> io::Result<String> {
    read_comm(&task_dir(tid).join("comm"))
}

fn read_comm(path: &Path) -> io::Result<String> {
    let mut comm = fs::read_to_string(path)?;
    if comm.ends_with('\n') {
        comm.pop();
    }
    Ok(comm)
}

/// One kernel `comm` change of a thread.
#[derive(Clone, Debug, Serialize)]
pub struct Rename {
    pub from: String,
    pub to: String,
}

/// The truth about one thread, as it appears in the `threads` array.
#[derive(Debug, Serialize)]
pub struct ThreadRecord {
    pub tid: i32,
    pub name: String,
    pub comm: String,
    pub parent_tid: Option<i32>,
    pub renames: Vec<Rename>,
    pub role: &'static str,
    pub lock_contender: bool,
    pub daemon: bool,
    #[serde(flatten)]
    pub counters: Counters,
    pub baseline: Option<Counters>,
    /// The counters as a spawned thread read them first thing (`None` for the main thread).
    pub start: Option<Counters>,
}

#[derive(Serialize)]
struct Truth<'a> {
    schema: &'static str,
    workload: &'a str,
    pid: u32,
    threads: &'a [ThreadRecord],
}

/// Writes the truth file atomically (`PATH.tmp`, then rename to `PATH`).
pub fn write(path: &Path, workload: &str, threads: &[ThreadRecord]) -> io::Result<()> {
    let truth = Truth {
        schema: SCHEMA,
        workload,
        pid: std::process::id(),
        threads,
    };
    let mut json = serde_json::to_vec_pretty(&truth).map_err(io::Error::other)?;
    json.push(b'\n');
    let mut tmp = OsString::from(path.as_os_str());
    tmp.push(".tmp");
    fs::write(&tmp, json)?;
    fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_and_schedstat() {
        let status = "Name:\tx\nvoluntary_ctxt_switches:\t12\nnonvoluntary_ctxt_switches:\t3\n";
        let c = Counters::parse(status, "1000 250 7\n").unwrap();
        assert_eq!(c.voluntary_switches, 12);
        assert_eq!(c.involuntary_switches, 3);
        assert_eq!(c.on_cpu_ns, 1000);
        assert_eq!(c.runqueue_wait_ns, 250);
        assert_eq!(c.timeslices, 7);
    }

    #[test]
    fn rejects_missing_fields() {
        assert!(Counters::parse("voluntary_ctxt_switches:\t1\n", "1 2 3").is_err());
        let status = "voluntary_ctxt_switches:\t1\nnonvoluntary_ctxt_switches:\t2\n";
        assert!(Counters::parse(status, "1 2").is_err());
    }

    #[test]
    fn reads_own_thread() {
        let c = Counters::of_current_thread().unwrap();
        assert!(c.on_cpu_ns > 0);
        assert!(!own_comm().unwrap().ends_with('\n'));
    }
}
