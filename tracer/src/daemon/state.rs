//! What the daemon knows between scrapes: live threads and processes (from `/proc` at start
//! and lifecycle events after), and per-series totals of threads that are gone.
//!
//! Counters of live threads are read from the kernel map at each scrape; only exited threads'
//! final counts are kept here, so that a series never goes backwards when its threads end.

use std::{
    collections::{HashMap, HashSet},
    time::{Duration, Instant},
};

use tracer_common::thread::{BORN_TRACED, Counts, ThreadStats, state};

use super::{config::Compiled, histograms::Hists};
use crate::capture::summary::Counters;

/// FNV-1a: much cheaper than the default hasher for the short keys hashed on every scrape
/// (thread ids, thread and process names), and these maps hold no attacker-chosen volume
/// beyond the series cap.
#[derive(Clone, Copy)]
pub struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Self(0xcbf2_9ce4_8422_2325)
    }
}

impl std::hash::Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A hash map with [`Fnv`] hashing.
pub type FastMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<Fnv>>;

/// The label of the series threads over a process's cap fold into.
pub const OTHER: &str = "other";

/// Identity of an exported per-thread series. Shared, so that the threads of a series and
/// every scrape's maps hold it without copying its names, and its exposition labels are
/// escaped once, when the series is made.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey(std::sync::Arc<Series>);

/// The names of a series.
#[derive(Debug)]
pub struct Series {
    /// The process identity ([`super::labels`]).
    pub process: String,
    /// The thread label.
    pub thread: String,
    /// `process="…",thread="…"` (and `unit`, `container`), escaped.
    labels: String,
}

impl SeriesKey {
    /// The series of `thread` in the process identity `process`.
    pub fn new(process: impl Into<String>, thread: impl Into<String>) -> Self {
        let (process, thread) = (process.into(), thread.into());
        let labels = super::metrics::series_labels(&process, &thread);
        Self(std::sync::Arc::new(Series {
            process,
            thread,
            labels,
        }))
    }

    /// Its escaped exposition labels.
    pub fn labels(&self) -> &str {
        &self.0.labels
    }
}

impl std::ops::Deref for SeriesKey {
    type Target = Series;

    fn deref(&self) -> &Series {
        &self.0
    }
}

impl PartialEq for Series {
    fn eq(&self, other: &Self) -> bool {
        (&self.process, &self.thread) == (&other.process, &other.thread)
    }
}

impl Eq for Series {}

impl std::hash::Hash for Series {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.process.hash(state);
        self.thread.hash(state);
    }
}

impl PartialOrd for Series {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Series {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.process, &self.thread).cmp(&(&other.process, &other.thread))
    }
}

/// The counters of one series (or one thread); its histograms count in its process's
/// ([`super::histograms::Hists`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Values {
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub on_cpu_ns: u64,
    pub runqueue_wait_ns: u64,
    pub runqueue_waits: u64,
    /// Futex waits: a thread's is the sum of its futex histogram, so that a process's
    /// histogram counts exactly the waits of its thread series.
    pub futex_waits: u64,
    pub futex_wait_ns: u64,
    pub gil_wait_ns: u64,
    /// Non-zero when the series has threads of a CPython process.
    pub python: u64,
}

impl Values {
    /// A thread's values now; `python` when its process runs CPython. `running`: the
    /// kernel's CPU time and run-queue wait of a thread on a CPU now (`/proc/TID/schedstat`),
    /// which grew since its last switch out.
    pub fn of_thread(
        stats: &ThreadStats,
        now_ns: u64,
        python: bool,
        running: Option<(u64, u64)>,
    ) -> Self {
        let caught_up;
        let stats = match running.and_then(|now| caught_up_with(stats, now)) {
            Some(s) => {
                caught_up = s;
                &caught_up
            }
            None => stats,
        };
        let c = Counters::settle(stats, now_ns, true, false);
        Self {
            voluntary_switches: c.voluntary_switches,
            involuntary_switches: c.involuntary_switches,
            on_cpu_ns: c.on_cpu_ns,
            runqueue_wait_ns: c.runqueue_wait_ns,
            runqueue_waits: stats.runqueue_waits,
            futex_waits: stats.futex_hist.iter().copied().map(u64::from).sum(),
            futex_wait_ns: c.futex_wait_ns,
            gil_wait_ns: stats.gil_wait_ns,
            python: u64::from(python),
        }
    }

    /// Combines every field with `other`'s.
    fn zip_with(&mut self, other: &Self, op: fn(u64, u64) -> u64) {
        for (a, b) in [
            (&mut self.voluntary_switches, other.voluntary_switches),
            (&mut self.involuntary_switches, other.involuntary_switches),
            (&mut self.on_cpu_ns, other.on_cpu_ns),
            (&mut self.runqueue_wait_ns, other.runqueue_wait_ns),
            (&mut self.runqueue_waits, other.runqueue_waits),
            (&mut self.futex_waits, other.futex_waits),
            (&mut self.futex_wait_ns, other.futex_wait_ns),
            (&mut self.gil_wait_ns, other.gil_wait_ns),
            (&mut self.python, other.python),
        ] {
            *a = op(*a, b);
        }
    }

    pub fn add(&mut self, other: &Self) {
        self.zip_with(other, u64::wrapping_add);
    }
}

impl Monotonic for Values {
    fn at_least(&mut self, floor: &Self) {
        self.zip_with(floor, u64::max);
    }
}

/// Counts exported as counters, which must never go backwards.
pub(super) trait Monotonic: Clone {
    /// Raises every count to at least `floor`'s.
    fn at_least(&mut self, floor: &Self);
}

/// Raises each of `live` to what was last exported under its key in `reported`, and keeps
/// it there as the last exported.
pub(super) fn clamp_to_reported<K, V, S, T>(
    live: &mut HashMap<K, V, S>,
    reported: &mut HashMap<K, V, T>,
) where
    K: Eq + std::hash::Hash + Clone,
    V: Monotonic,
    T: std::hash::BuildHasher,
{
    for (key, values) in live.iter_mut() {
        match reported.get_mut(key) {
            Some(previous) => {
                values.at_least(previous);
                previous.clone_from(values);
            }
            None => {
                reported.insert(key.clone(), values.clone());
            }
        }
    }
}

/// `stats` with a snapshot of the kernel's counters of a thread running now: its switch
/// counts are those of its last switch out, its CPU time and run-queue wait as `/proc`
/// shows them now (`(on_cpu_ns, runqueue_wait_ns)`). None when the counters have no known
/// start (a thread seen before it was ever switched out while traced).
fn caught_up_with(
    stats: &ThreadStats,
    (on_cpu_ns, runqueue_wait_ns): (u64, u64),
) -> Option<ThreadStats> {
    if !stats.has_known_start() || stats.state == state::EXITED {
        return None;
    }
    let last = stats.last.kernel;
    let mut stats = *stats;
    stats.take_snapshot(Counts {
        on_cpu_ns: on_cpu_ns.max(last.on_cpu_ns),
        runqueue_wait_ns: runqueue_wait_ns.max(last.runqueue_wait_ns),
        ..last
    });
    Some(stats)
}

/// A live thread as the daemon knows it.
#[derive(Clone, Debug)]
pub struct Thread {
    pub tgid: u32,
    pub comm: String,
    /// The series it counts in, fixed the first time it is exported.
    pub series: Option<SeriesKey>,
    /// Its series was labelled by its kernel name because its Python name was not known yet:
    /// it moves, once, to its Python name's series when that is learnt.
    pub by_kernel_name: bool,
}

/// A process name's lifecycle counts.
#[derive(Clone, Debug, Default)]
pub struct ProcessCounts {
    pub threads_created: u64,
    pub threads_exited: u64,
    pub last_seen: Option<Instant>,
}

/// The daemon's state; see the module documentation.
#[derive(Debug, Default)]
pub struct State {
    pub threads: FastMap<u32, Thread>,
    /// Names of thread group leaders, by tgid.
    pub process_names: HashMap<u32, String>,
    pub processes: HashMap<String, ProcessCounts>,
    /// Thread labels admitted per process (at most the cap), `other` not among them.
    pub(super) admitted: HashMap<String, HashSet<String>>,
    /// Processes that have a `thread="other"` series.
    pub(super) other: HashSet<String>,
    /// Named thread series each process may have, as the last scrape shared the budget.
    pub(super) allowance: HashMap<String, usize>,
    /// The fair level of the last scrape (None before the first).
    pub(super) level: Option<usize>,
    /// Final values of exited threads, by series, and when a thread of it was last seen.
    pub(super) retired: FastMap<SeriesKey, (Values, Instant)>,
    /// Values last exported, by series.
    reported: FastMap<SeriesKey, Values>,
    /// Histograms of exited threads, by process name.
    pub(super) retired_hists: HashMap<String, Hists>,
    /// Histograms last exported, by process name.
    pub(super) reported_hists: HashMap<String, Hists>,
    /// Threads whose series folded into `thread="other"`.
    pub folded: u64,
    /// The kernel's counters of threads that predate the attach, read from `/proc` just
    /// after it: see [`State::since_attach`].
    attach_counts: FastMap<u32, Counts>,
}

impl State {
    /// The process name of thread group `tgid` (the leader's name).
    pub fn process_name(&self, tgid: u32) -> Option<&str> {
        self.process_names.get(&tgid).map(String::as_str)
    }

    /// Records a thread seen alive (at start, or created).
    pub fn add_thread(&mut self, tid: u32, tgid: u32, comm: String) {
        if tid == tgid {
            self.process_names.insert(tgid, comm.clone());
        }
        self.threads.insert(
            tid,
            Thread {
                tgid,
                comm,
                series: None,
                by_kernel_name: false,
            },
        );
    }

    /// Keeps `counts`, the kernel's counters of thread `tid` read from `/proc` after the
    /// attach.
    pub fn note_attach_counts(&mut self, tid: u32, counts: Counts) {
        self.attach_counts.insert(tid, counts);
    }

    /// `stats` of thread `tid` counted from the attach. The programs' first snapshot of a
    /// thread that predates the attach is taken at its first switch out, after that switch
    /// (and the time on a CPU before it) are in the kernel's counters; the counters read from
    /// `/proc` just after the attach are older unless the thread was switched out in between.
    /// Both only grow, so the lower of each is the base.
    pub fn since_attach(&self, tid: u32, stats: &ThreadStats) -> Option<ThreadStats> {
        let base = self.attach_counts.get(&tid)?;
        if stats.snapshots == 0 || stats.flags & BORN_TRACED != 0 {
            return None;
        }
        let mut stats = *stats;
        let first = &mut stats.first.kernel;
        first.voluntary_switches = first.voluntary_switches.min(base.voluntary_switches);
        first.involuntary_switches = first.involuntary_switches.min(base.involuntary_switches);
        first.on_cpu_ns = first.on_cpu_ns.min(base.on_cpu_ns);
        first.runqueue_wait_ns = first.runqueue_wait_ns.min(base.runqueue_wait_ns);
        Some(stats)
    }

    /// A new task: a thread of an existing process (`in_process`), or a new process's first
    /// thread. Only the former counts as a thread created: the first thread of a forked
    /// process still carries its parent's name until it execs.
    pub fn thread_created(
        &mut self,
        tid: u32,
        tgid: u32,
        comm: String,
        in_process: bool,
        now: Instant,
    ) {
        // An id the kernel has given again: its counters start anew.
        self.attach_counts.remove(&tid);
        self.add_thread(tid, tgid, comm);
        if in_process {
            let process = self.process_name(tgid).unwrap_or("").to_owned();
            let counts = self.processes.entry(process).or_default();
            counts.threads_created += 1;
            counts.last_seen = Some(now);
        }
    }

    pub fn thread_renamed(&mut self, tid: u32, comm: String) {
        if let Some(t) = self.threads.get_mut(&tid) {
            if t.tgid == tid {
                self.process_names.insert(tid, comm.clone());
            }
            t.comm = comm;
        }
    }

    /// Retires a thread that exited, with its final values (when the kernel map had them).
    /// `name`, when known, is the thread's name beyond the kernel's (its Python name).
    pub fn thread_exited(
        &mut self,
        tid: u32,
        last: Option<(Values, Hists)>,
        name: Option<&str>,
        now: Instant,
        rules: &Compiled,
    ) {
        self.attach_counts.remove(&tid);
        let Some(thread) = self.threads.remove(&tid) else {
            return;
        };
        let process = self.process_name(thread.tgid).unwrap_or("").to_owned();
        // The main thread's end is the process's end, not thread churn.
        if tid != thread.tgid {
            let counts = self.processes.entry(process.clone()).or_default();
            counts.threads_exited += 1;
            counts.last_seen = Some(now);
        }
        if let Some((values, hists)) = last {
            let key = match thread.series {
                Some(key) => key,
                None => self.series_for(&process, name.unwrap_or(&thread.comm), rules),
            };
            self.retire_hists(&key.process.clone(), &hists);
            let entry = self
                .retired
                .entry(key)
                .or_insert_with(|| (Values::default(), now));
            entry.0.add(&values);
            entry.1 = now;
        }
        if tid == thread.tgid {
            self.process_names.remove(&tid);
        }
    }

    /// The exit of thread `tid` of thread group `tgid` whose id a newer thread has by now:
    /// counted for its process, while the newer thread keeps the id's place.
    pub fn exit_of_a_reused_id(&mut self, tid: u32, tgid: u32, now: Instant) {
        if tid == tgid {
            return;
        }
        let process = self.process_name(tgid).unwrap_or("").to_owned();
        let counts = self.processes.entry(process).or_default();
        counts.threads_exited += 1;
        counts.last_seen = Some(now);
    }

    /// The series a thread named `name` of `process` counts in, admitting it under the cap
    /// and the process's share of the budget.
    pub fn series_for(&mut self, process: &str, name: &str, rules: &Compiled) -> SeriesKey {
        let label = rules.thread_label(process, name);
        self.series_for_label(process, label, rules.max_threads_per_process)
    }

    /// Adds the retired values to `live` and clamps every series to what was last exported.
    pub fn finish_scrape(&mut self, live: &mut FastMap<SeriesKey, Values>) {
        for (key, (values, _)) in &self.retired {
            live.entry(key.clone()).or_default().add(values);
        }
        clamp_to_reported(live, &mut self.reported);
        // Series whose threads are all gone stay until they expire.
        self.reported.retain(|key, _| live.contains_key(key));
    }

    /// Forgets series and process counts unseen for `expiry`, freeing their places under the cap.
    pub fn expire(&mut self, now: Instant, expiry: Duration) {
        let mut expired: Vec<SeriesKey> = self
            .retired
            .iter()
            .filter(|(_, (_, seen))| now.duration_since(*seen) >= expiry)
            .map(|(key, _)| key.clone())
            .collect();
        if !expired.is_empty() {
            let live: HashSet<&SeriesKey> = self
                .threads
                .values()
                .filter_map(|t| t.series.as_ref())
                .collect();
            expired.retain(|key| !live.contains(key));
        }
        for key in expired {
            self.retired.remove(&key);
            self.reported.remove(&key);
            if key.thread == OTHER {
                self.other.remove(&key.process);
            } else if let Some(admitted) = self.admitted.get_mut(&key.process) {
                admitted.remove(&key.thread);
                if admitted.is_empty() {
                    self.admitted.remove(&key.process);
                }
            }
        }
        let live_processes: HashSet<&String> = self.process_names.values().collect();
        self.processes.retain(|name, counts| {
            live_processes.contains(name)
                || counts
                    .last_seen
                    .is_none_or(|seen| now.duration_since(seen) < expiry)
        });
        self.expire_hists();
    }

    /// Number of series that have kept values of exited threads.
    #[cfg(test)]
    pub fn retired_series(&self) -> usize {
        self.retired.len()
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::thread::BORN_TRACED;

    use super::*;
    use crate::daemon::config::Config;

    fn rules(cap: usize) -> Compiled {
        Config {
            max_threads_per_process: cap,
            ..Config::default()
        }
        .compile()
        .unwrap()
    }

    fn values(v: u64) -> Values {
        Values {
            voluntary_switches: v,
            on_cpu_ns: v * 1000,
            ..Values::default()
        }
    }

    #[test]
    fn names_over_the_cap_fold_into_other() {
        let rules = rules(2);
        let mut state = State::default();
        assert_eq!(state.series_for("p", "a", &rules).thread, "a");
        assert_eq!(state.series_for("p", "b", &rules).thread, "b");
        assert_eq!(state.series_for("p", "a", &rules).thread, "a");
        assert_eq!(state.series_for("p", "c", &rules).thread, OTHER);
        assert_eq!(state.series_for("q", "c", &rules).thread, "c");
        assert_eq!(state.folded, 1);
    }

    #[test]
    fn exited_threads_keep_counting_in_their_series() {
        let rules = rules(8);
        let now = Instant::now();
        let mut state = State::default();
        state.add_thread(10, 10, "app".into());
        state.thread_created(11, 10, "worker".into(), true, now);
        let key = state.series_for("app", "worker", &rules);
        state.threads.get_mut(&11).unwrap().series = Some(key.clone());
        // Scrape 1: the worker is alive with 5.
        let mut live = FastMap::from_iter([(key.clone(), values(5))]);
        state.finish_scrape(&mut live);
        assert_eq!(live[&key].voluntary_switches, 5);
        // It exits with 6; scrape 2 shows no live thread but the series keeps 6.
        state.thread_exited(11, Some((values(6), Hists::default())), None, now, &rules);
        let mut live = FastMap::default();
        state.finish_scrape(&mut live);
        assert_eq!(live[&key].voluntary_switches, 6);
        assert_eq!(state.processes["app"].threads_exited, 1);
        // A new worker of the same name adds to it.
        state.thread_created(12, 10, "worker".into(), true, now);
        let mut live = FastMap::from_iter([(key.clone(), values(1))]);
        state.finish_scrape(&mut live);
        assert_eq!(live[&key].voluntary_switches, 7);
    }

    #[test]
    fn counters_never_go_backwards() {
        let mut state = State::default();
        let key = SeriesKey::new("p", "t");
        state.finish_scrape(&mut FastMap::from_iter([(key.clone(), values(10))]));
        let mut lower = FastMap::from_iter([(key.clone(), values(9))]);
        state.finish_scrape(&mut lower);
        assert_eq!(lower[&key].voluntary_switches, 10);
    }

    #[test]
    fn gone_series_expire_and_free_their_place() {
        let rules = rules(1);
        let start = Instant::now();
        let mut state = State::default();
        state.add_thread(20, 20, "app".into());
        state.thread_created(21, 20, "old".into(), true, start);
        let key = state.series_for("app", "old", &rules);
        state.threads.get_mut(&21).unwrap().series = Some(key);
        state.thread_exited(21, Some((values(1), Hists::default())), None, start, &rules);
        assert_eq!(state.series_for("app", "new", &rules).thread, OTHER);
        state.expire(start + Duration::from_secs(11), Duration::from_secs(10));
        assert_eq!(state.retired_series(), 0);
        assert_eq!(state.series_for("app", "new", &rules).thread, "new");
    }

    /// A thread of kernel-counts mode: switched out twice while traced, kernel counters
    /// `(voluntary, involuntary, cpu, run-queue)` at each.
    fn switched_out_twice(flags: u32) -> ThreadStats {
        let mut stats = ThreadStats::new(30, state::UNKNOWN, 0);
        stats.flags = flags;
        for (v, cpu, rq) in [(10, 1_000, 100), (12, 3_000, 150)] {
            stats.take_snapshot(Counts {
                voluntary_switches: v,
                involuntary_switches: 1,
                on_cpu_ns: cpu,
                runqueue_wait_ns: rq,
            });
        }
        stats
    }

    #[test]
    fn a_running_thread_counts_to_the_kernels_counters_now() {
        let stats = switched_out_twice(0);
        // Counted from its first switch out.
        let last = Values::of_thread(&stats, 0, false, None);
        assert_eq!(last.voluntary_switches, 2);
        assert_eq!(last.on_cpu_ns, 2_000);
        assert_eq!(last.runqueue_wait_ns, 50);
        // On a CPU since: its time there is the kernel's, its switches are unchanged.
        let now = Values::of_thread(&stats, 0, false, Some((7_000, 180)));
        assert_eq!(now.voluntary_switches, 2);
        assert_eq!(now.on_cpu_ns, 6_000);
        assert_eq!(now.runqueue_wait_ns, 80);
        // A reading older than the last switch out never takes a counter back.
        let stale = Values::of_thread(&stats, 0, false, Some((2_000, 120)));
        assert_eq!(stale, last);
    }

    #[test]
    fn a_running_thread_born_traced_counts_from_zero() {
        let mut stats = ThreadStats::new(30, state::UNKNOWN, 0);
        stats.flags = BORN_TRACED;
        let now = Values::of_thread(&stats, 0, false, Some((5_000, 40)));
        assert_eq!((now.on_cpu_ns, now.runqueue_wait_ns), (5_000, 40));
        assert_eq!(now.voluntary_switches + now.involuntary_switches, 0);
        // One that predates the daemon and was never switched out has no starting point.
        let unknown = ThreadStats::new(30, state::UNKNOWN, 0);
        assert_eq!(
            Values::of_thread(&unknown, 0, false, Some((5_000, 40))).on_cpu_ns,
            0
        );
        // Born traced, its counters start at zero.
        let born = Values::of_thread(
            &switched_out_twice(BORN_TRACED),
            0,
            false,
            Some((7_000, 180)),
        );
        assert_eq!((born.voluntary_switches, born.on_cpu_ns), (12, 7_000));
    }

    #[test]
    fn a_thread_older_than_the_attach_counts_from_its_reading_at_the_attach() {
        let stats = switched_out_twice(0);
        let mut state = State::default();
        // Read from `/proc` before its first switch out: that switch counts too.
        let before = Counts {
            voluntary_switches: 9,
            involuntary_switches: 1,
            on_cpu_ns: 600,
            runqueue_wait_ns: 90,
        };
        state.note_attach_counts(30, before);
        let rebased = state.since_attach(30, &stats).unwrap();
        let values = Values::of_thread(&rebased, 0, false, None);
        assert_eq!(values.voluntary_switches, 3);
        assert_eq!(values.on_cpu_ns, 2_400);
        assert_eq!(values.runqueue_wait_ns, 60);
        // Read after it: the first snapshot is the older one.
        let later = Counts {
            voluntary_switches: 11,
            on_cpu_ns: 2_000,
            runqueue_wait_ns: 120,
            ..before
        };
        state.note_attach_counts(30, later);
        let rebased = state.since_attach(30, &stats).unwrap();
        assert_eq!(
            Values::of_thread(&rebased, 0, false, None),
            Values::of_thread(&stats, 0, false, None)
        );
        // A new thread given the id again starts anew.
        state.thread_created(30, 30, "new".into(), false, Instant::now());
        assert!(state.since_attach(30, &stats).is_none());
        // Born traced: counted from zero already.
        state.note_attach_counts(31, before);
        assert!(
            state
                .since_attach(31, &switched_out_twice(BORN_TRACED))
                .is_none()
        );
    }
}
