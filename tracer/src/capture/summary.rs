//! The `record` JSON summary, schema `tracer.record/v1`.

use std::{collections::BTreeMap, fs, io::Write as _, path::Path};

use serde::Serialize;
use tracer_common::thread::{BORN_TRACED, Counts, ThreadStats, state};

use super::threads::{Rename, ThreadInfo};
use crate::error::{Error, Result};

/// The schema name written in every summary.
pub const SCHEMA: &str = "tracer.record/v1";

/// A whole capture.
#[derive(Clone, Debug, Serialize)]
pub struct Summary {
    pub schema: &'static str,
    pub pid: u32,
    pub command: String,
    /// The process's name, as the daemon's `process` label has it by default.
    pub process: String,
    /// `CLOCK_MONOTONIC` nanoseconds when the probes were attached.
    pub started_ns: u64,
    pub duration_ns: u64,
    pub lost_events: u64,
    /// `lost_events` by event kind (`switch`, `waking`, ...), the kinds with losses only.
    pub lost_events_by_kind: BTreeMap<&'static str, u64>,
    /// The CPython interpreter of the process, when it runs one that tracer read.
    pub python: Option<PythonSummary>,
    pub threads: Vec<ThreadSummary>,
    /// Cycles of threads blocked at the end, each waiting for the next (`waiting_for_tid`),
    /// from its smallest tid.
    pub deadlocks: Vec<Vec<u32>>,
}

/// The CPython interpreter a capture's process runs.
#[derive(Clone, Debug, Serialize)]
pub struct PythonSummary {
    /// `3.14.10`.
    pub version: String,
    /// A free-threaded build (`Py_GIL_DISABLED`): there is no GIL, so every thread's
    /// `gil_wait_ns` is null.
    pub free_threaded: bool,
}

/// One thread of a capture. Counters cover the capture only.
#[derive(Clone, Debug, Serialize)]
pub struct ThreadSummary {
    pub tid: u32,
    pub pid: u32,
    pub comm: String,
    pub name: String,
    pub name_source: &'static str,
    pub parent_tid: Option<u32>,
    pub created_ns: Option<u64>,
    pub exited_ns: Option<u64>,
    pub renames: Vec<Rename>,
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub on_cpu_ns: u64,
    pub runqueue_wait_ns: u64,
    pub off_cpu_ns: u64,
    pub futex_waits: u64,
    pub futex_wait_ns: u64,
    pub gil_wait_ns: Option<u64>,
    /// How long the thread had been asleep when the capture ended; None when it was not.
    pub blocked_ns: Option<u64>,
    /// The thread owning the lock it was blocked acquiring at the end, where known.
    pub waiting_for_tid: Option<u32>,
}

/// What the kernel side counted for a thread, with the time since its last state change
/// charged up to `end_ns` when the thread is still alive.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub on_cpu_ns: u64,
    pub runqueue_wait_ns: u64,
    pub off_cpu_ns: u64,
    pub futex_waits: u64,
    pub futex_wait_ns: u64,
}

impl Counters {
    /// Counters at `end_ns`. `alive` says whether the thread still exists; `runnable`
    /// whether it is running or runnable now, for a thread the probes never saw switch.
    ///
    /// Switches, on-CPU time and run-queue wait are the kernel's own counters between the
    /// first and the latest time the thread left a CPU, plus what the events show before
    /// and after; without such readings, what the events show.
    pub fn settle(stats: &ThreadStats, end_ns: u64, alive: bool, runnable: bool) -> Self {
        let mut derived = stats.derived();
        let mut off_cpu_ns = stats.off_cpu_ns;
        if alive {
            let open = end_ns.saturating_sub(stats.since_ns);
            match stats.state {
                state::ON_CPU => derived.on_cpu_ns += open,
                state::QUEUED => derived.runqueue_wait_ns += open,
                state::BLOCKED => off_cpu_ns += open,
                state::EXITED => {}
                _ if runnable => derived.on_cpu_ns += open,
                _ => off_cpu_ns += open,
            }
        }
        let counts = if stats.snapshots == 0 {
            derived
        } else {
            let (first, last) = (&stats.first, &stats.last);
            // The kernel's counters when the capture started: zero for a thread born in it.
            let base = if stats.flags & BORN_TRACED != 0 {
                Counts::ZERO
            } else {
                map2(&first.kernel, &first.derived, u64::saturating_sub)
            };
            let since_last = map2(&derived, &last.derived, u64::saturating_sub);
            map2(
                &map2(&last.kernel, &base, u64::saturating_sub),
                &since_last,
                u64::saturating_add,
            )
        };
        Self {
            voluntary_switches: counts.voluntary_switches,
            involuntary_switches: counts.involuntary_switches,
            on_cpu_ns: counts.on_cpu_ns,
            runqueue_wait_ns: counts.runqueue_wait_ns,
            off_cpu_ns,
            futex_waits: stats.futex_waits,
            futex_wait_ns: stats.futex_wait_ns,
        }
    }
}

/// `op` applied field by field.
fn map2(a: &Counts, b: &Counts, op: fn(u64, u64) -> u64) -> Counts {
    Counts {
        voluntary_switches: op(a.voluntary_switches, b.voluntary_switches),
        involuntary_switches: op(a.involuntary_switches, b.involuntary_switches),
        on_cpu_ns: op(a.on_cpu_ns, b.on_cpu_ns),
        runqueue_wait_ns: op(a.runqueue_wait_ns, b.runqueue_wait_ns),
    }
}

impl ThreadSummary {
    pub fn new(info: &ThreadInfo, counters: Counters) -> Self {
        Self {
            tid: info.tid,
            pid: info.pid,
            comm: info.comm.clone(),
            name: info.comm.clone(),
            name_source: "comm",
            parent_tid: info.parent_tid,
            created_ns: info.created_ns,
            exited_ns: info.exited_ns,
            renames: info.renames.clone(),
            voluntary_switches: counters.voluntary_switches,
            involuntary_switches: counters.involuntary_switches,
            on_cpu_ns: counters.on_cpu_ns,
            runqueue_wait_ns: counters.runqueue_wait_ns,
            off_cpu_ns: counters.off_cpu_ns,
            futex_waits: counters.futex_waits,
            futex_wait_ns: counters.futex_wait_ns,
            gil_wait_ns: None,
            blocked_ns: None,
            waiting_for_tid: None,
        }
    }
}

impl Summary {
    /// Writes the summary to `path` atomically: a reader sees the old file or the whole new one.
    pub fn write(&self, path: &Path) -> Result<()> {
        let fail = |source| Error::Output {
            path: path.to_owned(),
            source,
        };
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = std::path::PathBuf::from(tmp);
        let mut file = fs::File::create(&tmp).map_err(fail)?;
        serde_json::to_writer_pretty(&mut file, self).map_err(|e| fail(e.into()))?;
        file.write_all(b"\n").map_err(fail)?;
        file.sync_all().map_err(fail)?;
        fs::rename(&tmp, path).map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::thread::Snapshot;

    use super::*;

    fn stats(state: u32, since_ns: u64) -> ThreadStats {
        let mut s = ThreadStats::new(1, state, since_ns);
        s.on_cpu_ns = 100;
        s.runqueue_wait_ns = 10;
        s.off_cpu_ns = 1000;
        s
    }

    #[test]
    fn open_intervals_are_charged_to_the_current_state() {
        let on = Counters::settle(&stats(state::ON_CPU, 500), 800, true, false);
        assert_eq!(
            (on.on_cpu_ns, on.runqueue_wait_ns, on.off_cpu_ns),
            (400, 10, 1000)
        );
        let queued = Counters::settle(&stats(state::QUEUED, 500), 800, true, false);
        assert_eq!(queued.runqueue_wait_ns, 310);
        let blocked = Counters::settle(&stats(state::BLOCKED, 500), 800, true, false);
        assert_eq!(blocked.off_cpu_ns, 1300);
        let unseen_running = Counters::settle(&stats(state::UNKNOWN, 500), 800, true, true);
        assert_eq!(unseen_running.on_cpu_ns, 400);
        let unseen_sleeping = Counters::settle(&stats(state::UNKNOWN, 500), 800, true, false);
        assert_eq!(unseen_sleeping.off_cpu_ns, 1300);
    }

    #[test]
    fn kernel_readings_replace_derived_counts_between_snapshots() {
        // A thread alive before the capture: 2 switches and 5 µs on CPU seen before its first
        // reading, then the kernel counted 10 more switches, then 1 more switch seen since.
        let mut s = stats(state::BLOCKED, 500);
        s.voluntary_switches = 3;
        s.on_cpu_ns = 7_000;
        s.snapshots = 2;
        s.first = Snapshot {
            kernel: Counts {
                voluntary_switches: 100,
                on_cpu_ns: 1_000_000,
                ..Counts::ZERO
            },
            derived: Counts {
                voluntary_switches: 2,
                on_cpu_ns: 5_000,
                ..Counts::ZERO
            },
        };
        s.last = Snapshot {
            kernel: Counts {
                voluntary_switches: 110,
                on_cpu_ns: 1_050_000,
                ..Counts::ZERO
            },
            derived: Counts {
                voluntary_switches: 2,
                on_cpu_ns: 6_000,
                ..Counts::ZERO
            },
        };
        let c = Counters::settle(&s, 800, true, false);
        assert_eq!(c.voluntary_switches, 2 + 10 + 1);
        assert_eq!(c.on_cpu_ns, 5_000 + 50_000 + 1_000);
        // Born in the capture: the kernel's counts are whole.
        s.flags = BORN_TRACED;
        let born = Counters::settle(&s, 800, true, false);
        assert_eq!(born.voluntary_switches, 110 + 1);
    }

    #[test]
    fn exited_threads_are_not_charged_after_their_end() {
        let gone = Counters::settle(&stats(state::BLOCKED, 500), 800, false, false);
        assert_eq!((gone.on_cpu_ns, gone.off_cpu_ns), (100, 1000));
    }
}
