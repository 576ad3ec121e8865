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
//!
//! Reading `/proc` for a thread costs some 20 µs, so a host of 10 000 idle threads would
//! make the scrape that sees them pass `blocked_min_secs` take 200 ms: [`read_ahead`] reads
//! it in the background for every thread that a scrape in the next seconds may need.

use tracer_common::thread::ThreadStats;

use super::state::{FastMap, SeriesKey};
use crate::kernel::procfs;

/// What the latest scrape saw of one thread.
#[derive(Clone, Copy, Debug)]
struct Seen {
    /// Its process.
    tgid: u32,
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

    /// Notes thread `tid` of process `tgid` at a scrape at `now_ns`, with its kernel map entry
    /// (None when it has none: it has not left a CPU since the attach). Returns since when it
    /// has not been switched out at the latest (`now_ns` when it was just now).
    pub fn note(&mut self, tid: u32, tgid: u32, stats: Option<&ThreadStats>, now_ns: u64) -> u64 {
        let (snapshots, since_ns) = self.since(tid, stats.map(Look::of), now_ns);
        let asleep = self
            .seen
            .get(&tid)
            .filter(|seen| seen.snapshots == snapshots && seen.since_ns == since_ns)
            .and_then(|seen| seen.asleep);
        self.seen.insert(
            tid,
            Seen {
                tgid,
                snapshots,
                since_ns,
                scrape: self.scrape,
                asleep,
            },
        );
        since_ns
    }

    /// The switches out of thread `tid` with map entry `look` at `now_ns`, and since when it
    /// has not been switched out at the latest.
    fn since(&self, tid: u32, look: Option<Look>, now_ns: u64) -> (u32, u64) {
        match look {
            None => (0, self.attach_ns),
            // Never switched out while traced: since the attach, or its birth.
            Some(l) if l.snapshots == 0 => (0, l.since_ns.max(self.attach_ns)),
            Some(l) => {
                let seen = self.seen.get(&tid);
                let since = match seen.filter(|seen| seen.snapshots == l.snapshots) {
                    Some(seen) => seen.since_ns,
                    None => {
                        // Switched out since the previous scrape (or, for a thread not seen
                        // before, since the attach); when exactly is known for a switch out
                        // into a futex wait.
                        let after = if seen.is_some() {
                            self.previous_ns
                        } else {
                            self.attach_ns
                        };
                        let asleep_at = l.futex_start_ns;
                        if asleep_at > after && asleep_at <= now_ns {
                            asleep_at
                        } else {
                            now_ns
                        }
                    }
                };
                (l.snapshots, since)
            }
        }
    }

    /// Whether a scrape has been.
    pub fn scraped(&self) -> bool {
        self.scrape > 0
    }

    /// The threads whose `/proc` state a scrape before `now_ns + ahead_ns` may need and that
    /// has not been read: those not switched out since the latest scrape would be asleep
    /// for `min_ns` by then. Before the first scrape, `unseen` (thread and process ids and
    /// map entries) are taken as the first scrape would see them.
    pub fn due(
        &mut self,
        now_ns: u64,
        min_ns: u64,
        ahead_ns: u64,
        unseen: Vec<(u32, u32, Option<Look>)>,
    ) -> Vec<Due> {
        if self.scrape == 0 {
            for (tid, tgid, look) in unseen {
                let (snapshots, since_ns) = self.since(tid, look, now_ns);
                // Switched out just now, as far as the first scrape will know: from its time.
                if since_ns == now_ns {
                    continue;
                }
                self.seen.entry(tid).or_insert(Seen {
                    tgid,
                    snapshots,
                    since_ns,
                    scrape: 0,
                    asleep: None,
                });
            }
        }
        let by = now_ns.saturating_add(ahead_ns);
        self.seen
            .iter()
            .filter(|(_, seen)| seen.asleep.is_none() && seen.since_ns.saturating_add(min_ns) <= by)
            .map(|(&tid, seen)| Due {
                tid,
                tgid: seen.tgid,
                snapshots: seen.snapshots,
                since_ns: seen.since_ns,
            })
            .collect()
    }

    /// Keeps what `/proc` showed of `due` while read ahead: it stands while the thread is
    /// not switched out again (a scrape that saw it switched out since has forgotten it).
    pub fn learn(&mut self, due: &Due, asleep: bool) {
        if let Some(seen) = self.seen.get_mut(&due.tid)
            && seen.snapshots == due.snapshots
            && seen.since_ns == due.since_ns
            && seen.asleep.is_none()
        {
            seen.asleep = Some(asleep);
        }
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

/// What the sleepers take of a thread's kernel map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Look {
    snapshots: u32,
    since_ns: u64,
    futex_start_ns: u64,
}

impl Look {
    pub fn of(stats: &ThreadStats) -> Self {
        Self {
            snapshots: stats.snapshots,
            since_ns: stats.since_ns,
            futex_start_ns: stats.futex_call.start_ns,
        }
    }
}

/// A thread whose `/proc` state is to be read ahead of the scrape that needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Due {
    tid: u32,
    tgid: u32,
    snapshots: u32,
    since_ns: u64,
}

/// Reads ahead, once a second, whether the threads that the next scrapes may report are
/// asleep (see [`Sleepers::due`]), outside the scrape and without holding `sleepers` while
/// reading. `min_ns` gives `blocked_min_secs` in nanoseconds, `known` the threads known
/// (thread and process ids and map entries, asked for only before the first scrape),
/// `now_ns` the clock.
pub fn read_ahead(
    sleepers: &std::sync::Mutex<Sleepers>,
    min_ns: impl Fn() -> u64,
    known: impl Fn() -> Vec<(u32, u32, Option<Look>)>,
    now_ns: impl Fn() -> u64,
) -> ! {
    const PERIOD: std::time::Duration = std::time::Duration::from_secs(1);
    /// A scrape up to this long after a read-ahead finds what it read: the period and a
    /// margin for the reading itself.
    const AHEAD_NS: u64 = 2_500_000_000;
    loop {
        std::thread::sleep(PERIOD);
        let min_ns = min_ns();
        // Asked for before `sleepers` is locked: a scrape locks the state first.
        let scraped = sleepers.lock().expect("sleepers lock").scraped();
        let unseen = if scraped { Vec::new() } else { known() };
        let due = sleepers
            .lock()
            .expect("sleepers lock")
            .due(now_ns(), min_ns, AHEAD_NS, unseen);
        if due.is_empty() {
            continue;
        }
        let read: Vec<(Due, bool)> = due
            .into_iter()
            .map(|due| (due, procfs::thread_is_asleep(due.tgid, due.tid)))
            .collect();
        let mut sleepers = sleepers.lock().expect("sleepers lock");
        for (due, asleep) in &read {
            sleepers.learn(due, *asleep);
        }
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
        let since = s.note(7, 1, stats, now_ns);
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

    #[test]
    fn read_ahead_covers_the_threads_a_coming_scrape_may_report_and_only_those() {
        let min = 10_000;
        let mut s = Sleepers::new(0);
        // Before any scrape: threads known from /proc, as asleep since the attach.
        let due = s.due(7_000, min, 2_500, vec![(7, 1, None)]);
        assert!(due.is_empty(), "{due:?}");
        let due = s.due(8_000, min, 2_500, vec![(7, 1, None)]);
        assert_eq!(due.len(), 1);
        s.learn(&due[0], true);
        assert!(s.due(8_500, min, 2_500, Vec::new()).is_empty());
        // The first scrape finds it not in the kernel map: what was read stands.
        assert_eq!(scrape(&mut s, None, 10_500), 0);
        assert_eq!(s.seen[&7].asleep, Some(true));
        // Switched out since: from this scrape, read again when it nears `min`.
        assert_eq!(scrape(&mut s, Some(&switched_out(1, 0)), 11_000), 11_000);
        assert_eq!(s.seen[&7].asleep, None);
        assert!(s.due(18_000, min, 2_500, Vec::new()).is_empty());
        let due = s.due(19_000, min, 2_500, Vec::new());
        assert_eq!(due.len(), 1);
        // Switched out again before what was read is kept: it is not the thread's state now.
        scrape(&mut s, Some(&switched_out(2, 0)), 19_500);
        s.learn(&due[0], true);
        assert_eq!(s.seen[&7].asleep, None);
        // Known threads count only before the first scrape.
        assert!(
            s.due(100_000, min, 2_500, vec![(8, 1, None)])
                .iter()
                .all(|d| d.tid == 7)
        );
    }

    #[test]
    fn read_ahead_before_the_first_scrape_takes_threads_as_it_will() {
        let min = 10_000;
        let mut s = Sleepers::new(100);
        // Born at 500 and never switched out; in a futex wait since 700; switched out, when
        // not known; not in the map.
        let born = ThreadStats::new(1, state::UNKNOWN, 500);
        let unseen = || {
            vec![
                (1, 1, Some(Look::of(&born))),
                (2, 1, Some(Look::of(&switched_out(1, 700)))),
                (3, 1, Some(Look::of(&switched_out(1, 0)))),
                (4, 1, None),
            ]
        };
        let mut due = s.due(9_000, min, 2_500, unseen());
        due.sort_by_key(|d| d.tid);
        assert_eq!(due.iter().map(|d| d.tid).collect::<Vec<_>>(), [1, 2, 4]);
        for d in &due {
            s.learn(d, true);
        }
        s.begin();
        assert_eq!(s.note(1, 1, Some(&born), 11_000), 500);
        assert_eq!(s.note(2, 1, Some(&switched_out(1, 700)), 11_000), 700);
        assert_eq!(s.note(3, 1, Some(&switched_out(1, 0)), 11_000), 11_000);
        assert_eq!(s.note(4, 1, None, 11_000), 100);
        s.finish(11_000);
        for tid in [1, 2, 4] {
            assert_eq!(s.seen[&tid].asleep, Some(true), "thread {tid}");
        }
        assert_eq!(s.seen[&3].asleep, None);
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
        let key = |_| Some((pid, SeriesKey::new("p", "t")));
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
