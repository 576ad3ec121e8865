//! `tracer_thread_blocked_seconds`: how long threads asleep at a scrape have been asleep.
//!
//! The programs do no work for it: in the daemon, `sched_switch` reads no clock for a thread
//! it switches out (unless it falls asleep in a futex wait), so when a thread fell asleep is
//! known only within the scrapes. Each scrape notes every thread's count of switches out
//! (`snapshots`); a thread whose count has not changed since a scrape, that is on no CPU and
//! that the kernel shows asleep, has been asleep since its last switch out, which came no
//! later than the first scrape that saw its count. That scrape's time is used, or, for a
//! thread that fell asleep in a futex wait, the time the programs noted it did (exact). A
//! thread never switched out while traced has been asleep since the attach at least.
//!
//! The kernel's own record of when a thread last ran (`se.exec_start`, in
//! `/proc/TID/sched`) is in its run queue's task clock, which leaves out interrupt and steal
//! time and drifts from `CLOCK_MONOTONIC`: it is not used.

use tracer_common::thread::ThreadStats;

use super::state::{FastMap, SeriesKey};
use crate::kernel::procfs;

/// What the latest scrape saw of one thread.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// Its switches out.
    snapshots: u32,
    /// When it may have last been switched out, at the earliest.
    since_ns: u64,
    /// The scrape that saw it.
    scrape: u64,
    /// Whether `/proc` showed it asleep since `snapshots` last changed, once read: a thread
    /// that has not been switched out since is asleep still (unless it was woken and has
    /// been waiting for a CPU ever since), so a scrape reads `/proc` for no thread twice.
    asleep: Option<bool>,
}

/// Every thread's count of switches out as the scrapes saw it.
#[derive(Debug)]
pub struct Sleepers {
    /// When the probes were attached.
    attach_ns: u64,
    /// When the previous scrape was.
    previous_ns: u64,
    /// Scrapes so far.
    scrape: u64,
    seen: FastMap<u32, Seen>,
}

impl Sleepers {
    pub fn new(attach_ns: u64) -> Self {
        Self {
            attach_ns,
            previous_ns: attach_ns,
            scrape: 0,
            seen: FastMap::default(),
        }
    }

    /// Starts a scrape at `now_ns`; then [`Self::note`] every thread, and [`Self::finish`].
    pub fn begin(&mut self) {
        self.scrape += 1;
    }

    /// Notes thread `tid` at a scrape at `now_ns`, with its kernel map entry (None when it
    /// has none: it has not left a CPU since the attach). Returns since when it has not been
    /// switched out at the latest (`now_ns` when it was just now).
    pub fn note(&mut self, tid: u32, stats: Option<&ThreadStats>, now_ns: u64) -> u64 {
        let (snapshots, since_ns) = match stats {
            None => (0, self.attach_ns),
            // Never switched out while traced: since the attach, or its birth.
            Some(s) if s.snapshots == 0 => (0, s.since_ns.max(self.attach_ns)),
            Some(s) => {
                let unchanged = self
                    .seen
                    .get(&tid)
                    .filter(|seen| seen.snapshots == s.snapshots);
                let since = match unchanged {
                    Some(seen) => seen.since_ns,
                    None => {
                        // Switched out since the previous scrape (or, for a thread not seen
                        // before, since the attach); when exactly is known for a switch out
                        // into a futex wait.
                        let after = if self.seen.contains_key(&tid) {
                            self.previous_ns
                        } else {
                            self.attach_ns
                        };
                        let asleep_at = s.futex_call.start_ns;
                        if asleep_at > after && asleep_at <= now_ns {
                            asleep_at
                        } else {
                            now_ns
                        }
                    }
                };
                (s.snapshots, since)
            }
        };
        let asleep = self
            .seen
            .get(&tid)
            .filter(|seen| seen.snapshots == snapshots && seen.since_ns == since_ns)
            .and_then(|seen| seen.asleep);
        self.seen.insert(
            tid,
            Seen {
                snapshots,
                since_ns,
                scrape: self.scrape,
                asleep,
            },
        );
        since_ns
    }

    /// Whether thread `tid` of process `tgid` is asleep as the kernel shows it (`S`, `D`,
    /// `I`), read from `/proc` once for each of its switches out.
    fn asleep(&mut self, tgid: u32, tid: u32) -> bool {
        if let Some(known) = self.seen.get(&tid).and_then(|seen| seen.asleep) {
            return known;
        }
        let asleep = procfs::thread_is_asleep(tgid, tid);
        if let Some(seen) = self.seen.get_mut(&tid) {
            seen.asleep = Some(asleep);
        }
        asleep
    }

    /// Ends a scrape at `now_ns`: threads it did not note are gone.
    pub fn finish(&mut self, now_ns: u64) {
        let scrape = self.scrape;
        self.seen.retain(|_, seen| seen.scrape == scrape);
        self.previous_ns = now_ns;
    }
}

/// The gauge's values: for each series, the longest any of its threads has been asleep,
/// among `threads` (`(tid, since_ns)` from [`Sleepers::note`]) asleep for `min_ns` at least at
/// `now_ns`, not on a CPU (`running`), and asleep as the kernel shows them (`S`, `D`, `I`:
/// read only for those, once for each of their switches out). `series` gives a thread's process id and series, if it is exported.
pub fn gauges(
    sleepers: &mut Sleepers,
    threads: &[(u32, u64)],
    running: &[u32],
    now_ns: u64,
    min_ns: u64,
    series: impl Fn(u32) -> Option<(u32, SeriesKey)>,
) -> FastMap<SeriesKey, u64> {
    let mut gauges = FastMap::default();
    for &(tid, since_ns) in threads {
        let asleep_ns = now_ns.saturating_sub(since_ns);
        if asleep_ns < min_ns || running.contains(&tid) {
            continue;
        }
        let Some((tgid, key)) = series(tid) else {
            continue;
        };
        if !sleepers.asleep(tgid, tid) {
            continue;
        }
        let longest = gauges.entry(key).or_insert(0);
        *longest = asleep_ns.max(*longest);
    }
    gauges
}

#[cfg(test)]
mod tests {
    use tracer_common::thread::{Counts, FutexCall, state};

    use super::*;

    /// An entry switched out `n` times, the last one into a futex wait at `futex_ns` (0: not).
    fn switched_out(n: u32, futex_ns: u64) -> ThreadStats {
        let mut stats = ThreadStats::new(1, state::UNKNOWN, 0);
        for _ in 0..n {
            stats.take_snapshot(Counts::ZERO);
        }
        stats.futex_call = FutexCall {
            start_ns: futex_ns,
            ..FutexCall::NONE
        };
        stats
    }

    /// One scrape at `now_ns` of thread 7.
    fn scrape(s: &mut Sleepers, stats: Option<&ThreadStats>, now_ns: u64) -> u64 {
        s.begin();
        let since = s.note(7, stats, now_ns);
        s.finish(now_ns);
        since
    }

    #[test]
    fn a_thread_not_switched_out_since_the_attach_counts_from_it() {
        let mut s = Sleepers::new(100);
        assert_eq!(scrape(&mut s, None, 1_000), 100);
        assert_eq!(scrape(&mut s, Some(&switched_out(0, 0)), 2_000), 100);
        // Born after the attach and never switched out: from its birth.
        let born = ThreadStats::new(1, state::UNKNOWN, 500);
        assert_eq!(scrape(&mut s, Some(&born), 3_000), 500);
    }

    #[test]
    fn a_switch_out_counts_from_the_scrape_that_saw_it_or_its_futex_wait() {
        let mut s = Sleepers::new(100);
        assert_eq!(scrape(&mut s, Some(&switched_out(3, 0)), 1_000), 1_000);
        // Not switched out again: still since then.
        assert_eq!(scrape(&mut s, Some(&switched_out(3, 0)), 2_000), 1_000);
        // Switched out again, into a futex wait at 2_500: exactly since then.
        assert_eq!(scrape(&mut s, Some(&switched_out(4, 2_500)), 3_000), 2_500);
        assert_eq!(scrape(&mut s, Some(&switched_out(4, 2_500)), 4_000), 2_500);
        // A futex wait older than the previous scrape is not this switch out's.
        assert_eq!(scrape(&mut s, Some(&switched_out(5, 2_500)), 5_000), 5_000);
    }

    #[test]
    fn threads_a_scrape_did_not_see_are_forgotten() {
        let mut s = Sleepers::new(0);
        assert_eq!(scrape(&mut s, Some(&switched_out(2, 0)), 1_000), 1_000);
        s.begin();
        s.finish(2_000);
        // Seen again as new: since the attach at the earliest, so from this scrape.
        assert_eq!(scrape(&mut s, Some(&switched_out(2, 0)), 3_000), 3_000);
    }

    /// The calling thread's id.
    fn current_tid() -> u32 {
        // SAFETY: no preconditions.
        unsafe { libc::gettid() as u32 }
    }

    #[test]
    fn only_threads_asleep_long_enough_and_off_every_cpu_have_a_gauge() {
        // This thread is running: it reads its own state.
        let me = current_tid();
        let pid = std::process::id();
        let key = |_| {
            Some((
                pid,
                SeriesKey {
                    process: "p".into(),
                    thread: "t".into(),
                },
            ))
        };
        assert!(gauges(&mut Sleepers::new(0), &[(me, 0)], &[], 10_000, 10, key).is_empty());
        assert!(gauges(&mut Sleepers::new(0), &[(me, 0)], &[me], 10_000, 10, key).is_empty());
        // A thread asleep in a channel receive for the test.
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let (tid_tx, tid_rx) = std::sync::mpsc::channel();
        let sleeper = std::thread::spawn(move || {
            tid_tx.send(current_tid()).unwrap();
            rx.recv().unwrap();
        });
        let tid = tid_rx.recv().unwrap();
        while !procfs::thread_is_asleep(pid, tid) {
            std::thread::yield_now();
        }
        let found = gauges(
            &mut Sleepers::new(0),
            &[(tid, 4_000)],
            &[],
            10_000,
            5_000,
            key,
        );
        assert_eq!(found.values().copied().collect::<Vec<_>>(), [6_000]);
        assert!(
            gauges(
                &mut Sleepers::new(0),
                &[(tid, 6_000)],
                &[],
                10_000,
                5_000,
                key
            )
            .is_empty()
        );
        tx.send(()).unwrap();
        sleeper.join().unwrap();
    }
}
