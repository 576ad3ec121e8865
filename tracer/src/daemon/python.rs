//! CPython processes seen by the daemon: their GIL, whose futex waits the kernel side counts
//! as GIL waits, and their `threading` names, used as thread labels.
//!
//! A thread of its own attaches to each process once (when it appears or execs) and then
//! reads a Python process's names again when it starts threads (just after, and at the
//! [`FOLLOW_UPS`]), and otherwise at waits that grow from [`REFRESH`] to [`LONGEST_REFRESH`]
//! while nothing changes: a host of many quiet Python services costs little, and one that
//! starts threads all the time costs only its own readings. Event handling never waits for
//! it.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc,
        mpsc::{Receiver, RecvTimeoutError, Sender},
    },
    time::{Duration, Instant},
};

use super::Shared;
use crate::python::Interpreter;

/// What the daemon knows of Python processes, for scrapes.
#[derive(Debug, Default)]
pub struct PythonThreads {
    /// `threading` name by thread id.
    pub names: HashMap<u32, String>,
    /// Thread groups that run CPython.
    pub processes: HashSet<u32>,
}

/// How long after it was read a Python process's names are read again without a reason, at
/// first; each reading that finds them as they were doubles the wait, up to
/// [`LONGEST_REFRESH`], and one that finds a change, or a new thread, starts it over.
const REFRESH: Duration = Duration::from_secs(1);
/// The longest wait between two readings of a Python process that starts no thread: how late
/// a thread renamed in Python (`t.name = ...`) is seen at the most.
const LONGEST_REFRESH: Duration = Duration::from_secs(8);
/// After a process started threads, its names are read again this long after: a new
/// `threading.Thread` is in `threading._active` only once it has run (it may wait for the
/// GIL first).
const FOLLOW_UPS: [Duration; 3] = [
    Duration::from_millis(100),
    Duration::from_millis(300),
    Duration::from_millis(600),
];

/// Why a process's interpreter is looked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Cause {
    /// It started threads: tried at most once a [`REFRESH`], so that a process that is not
    /// Python and starts threads all the time costs little.
    Thread,
    /// Its interpreter could not be read when it started threads: tried again at the
    /// [`FOLLOW_UPS`].
    Retry,
    /// It was renamed by `exec`: it is another program now.
    Exec,
}

/// Why the scanner should look at a process.
#[derive(Clone, Copy, Debug)]
pub enum Poke {
    /// It started a thread.
    Thread(u32),
    /// It was renamed by `exec` (or otherwise): it may have become a Python program.
    Renamed(u32),
}

/// Starts the scanner; it looks at the processes it is poked about.
pub fn start(shared: Arc<Shared>) -> Sender<Poke> {
    let (poke, pokes) = std::sync::mpsc::channel();
    let _ = std::thread::Builder::new()
        .name("tracer-python".into())
        .spawn(move || scan(&shared, &pokes));
    poke
}

/// A Python process the scanner reads.
struct Known {
    interpreter: Interpreter,
    schedule: Schedule,
}

/// When a Python process is read, by what its readings found.
#[derive(Debug)]
struct Schedule {
    /// What its last reading found.
    names: HashMap<u32, String>,
    /// When it is read next without a poke.
    next: Instant,
    /// The wait before that reading.
    wait: Duration,
    /// The readings due after its last thread start.
    follow_ups: Vec<Instant>,
}

impl Schedule {
    /// A process to read at `now`.
    fn new(now: Instant) -> Self {
        Self {
            names: HashMap::new(),
            next: now,
            wait: REFRESH,
            follow_ups: Vec::new(),
        }
    }

    /// Whether it is to be read at `now`; takes the follow-ups that are due.
    fn is_due(&mut self, now: Instant) -> bool {
        let before = self.follow_ups.len();
        self.follow_ups.retain(|&at| at > now);
        self.next <= now || self.follow_ups.len() < before
    }

    /// The next moment it is due at.
    fn soonest(&self) -> Instant {
        self.follow_ups
            .iter()
            .copied()
            .fold(self.next, Instant::min)
    }

    /// Takes a reading's names, and schedules the next reading by what changed.
    fn read(&mut self, names: HashMap<u32, String>, now: Instant) {
        self.wait = if names == self.names {
            (self.wait * 2).min(LONGEST_REFRESH)
        } else {
            REFRESH
        };
        self.names = names;
        self.next = now + self.wait;
    }

    /// A reading failed for a passing reason: try again soon.
    fn failed(&mut self, now: Instant) {
        self.next = now + REFRESH;
    }

    /// It started threads: read it now and at the follow-ups.
    fn started_threads(&mut self, now: Instant) {
        self.follow_ups = FOLLOW_UPS.iter().map(|&d| now + d).collect();
        self.wait = REFRESH;
        self.next = now;
    }
}

fn scan(shared: &Shared, pokes: &Receiver<Poke>) {
    let mut known: HashMap<u32, Known> = HashMap::new();
    // When each process was last tried without success: one that was not Python (or not
    // ready) is tried again when it starts a thread, at most once a second.
    let mut tried: HashMap<u32, Instant> = HashMap::new();
    let mut not_python: HashSet<(PathBuf, u64)> = HashSet::new();
    let mut first = true;
    // Processes whose interpreter is looked for again, and when.
    let mut retries: Vec<(Instant, u32)> = Vec::new();
    loop {
        let mut due: HashMap<u32, Cause> = HashMap::new();
        let add = |due: &mut HashMap<u32, Cause>, tgid: u32, cause: Cause| {
            let at = due.entry(tgid).or_insert(cause);
            *at = (*at).max(cause);
        };
        let now = Instant::now();
        let wait = known
            .values()
            .map(|process| process.schedule.soonest())
            .chain(retries.iter().map(|&(at, _)| at))
            .map(|at| at.saturating_duration_since(now))
            .min()
            .map_or(LONGEST_REFRESH, |soonest| soonest.min(LONGEST_REFRESH));
        if first {
            first = false;
            let state = shared.state.lock().expect("state lock");
            for &tgid in state.process_names.keys() {
                add(&mut due, tgid, Cause::Exec);
            }
        } else {
            match pokes.recv_timeout(wait) {
                Ok(first_poke) => {
                    // Let a burst of thread starts settle, and take every poke of it.
                    std::thread::sleep(Duration::from_millis(20));
                    for poke in std::iter::once(first_poke).chain(pokes.try_iter()) {
                        match poke {
                            Poke::Thread(tgid) => add(&mut due, tgid, Cause::Thread),
                            Poke::Renamed(tgid) => {
                                tried.remove(&tgid);
                                add(&mut due, tgid, Cause::Exec);
                            }
                        };
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        let now = Instant::now();
        retries.retain(|&(at, tgid)| {
            if at > now {
                return true;
            }
            add(&mut due, tgid, Cause::Retry);
            false
        });
        // Processes that became another program, and those whose interpreter was found gone.
        let mut reborn: Vec<u32> = Vec::new();
        let mut ended: Vec<u32> = Vec::new();
        for (tgid, cause) in due {
            match (known.get_mut(&tgid), cause) {
                (Some(process), Cause::Thread) => {
                    process.schedule.started_threads(now);
                    continue;
                }
                // Renamed by its main thread: an `exec` (or a fork into a reused id) makes
                // another program of it, which is looked for afresh.
                (Some(_), Cause::Exec) => {
                    known.remove(&tgid);
                    reborn.push(tgid);
                }
                (Some(_), Cause::Retry) => continue,
                (None, _) => {}
            }
            // An attempt at `exec` does not hold back the one at the first threads: a program
            // linked to libpython has no interpreter until the loader has mapped it.
            if cause == Cause::Thread {
                if tried.get(&tgid).is_some_and(|at| at.elapsed() < REFRESH) {
                    continue;
                }
                tried.insert(tgid, now);
            }
            match Interpreter::attach_excluding(tgid, &mut not_python) {
                Ok(Some(interpreter)) => {
                    let mut process = Known {
                        interpreter,
                        schedule: Schedule::new(now),
                    };
                    if cause == Cause::Thread {
                        process.schedule.started_threads(now);
                    }
                    known.insert(tgid, process);
                }
                // Python, but not readable yet (or just now): a process that starts its
                // threads once, at its start, is not poked again.
                Err(_) if cause == Cause::Thread => {
                    retries.extend(FOLLOW_UPS.iter().map(|&d| (now + d, tgid)));
                }
                Ok(None) | Err(_) => {}
            }
        }
        let mut names = HashMap::new();
        known.retain(|&tgid, process| {
            if !process.schedule.is_due(now) {
                return true;
            }
            match process.interpreter.thread_names() {
                Ok(found) => {
                    names.extend(found.iter().map(|(&tid, name)| (tid, name.clone())));
                    process.schedule.read(found, now);
                    if let Some(gil) = process.interpreter.gil_range() {
                        shared
                            .probes
                            .lock()
                            .expect("probes lock")
                            .set_gil(tgid, Some(gil));
                    }
                    true
                }
                Err(_) if !std::path::Path::new(&format!("/proc/{tgid}")).exists() => {
                    ended.push(tgid);
                    false
                }
                // A passing failure (the process was busy changing what was read): keep it,
                // and try again soon.
                Err(_) => {
                    process.schedule.failed(now);
                    true
                }
            }
        });
        // A process that became a program that is not Python (yet): its interpreter is
        // forgotten at once, with its threads' names.
        reborn.retain(|tgid| !known.contains_key(tgid));
        for &tgid in ended.iter().chain(&reborn) {
            shared
                .probes
                .lock()
                .expect("probes lock")
                .set_gil(tgid, None);
        }
        tried.retain(|tgid, _| std::path::Path::new(&format!("/proc/{tgid}")).exists());
        // Names and processes stay known until the daemon has retired their threads, which
        // can be after the process is gone; those of a process that became another program
        // go at once.
        let live_threads: HashMap<u32, u32> = {
            let state = shared.state.lock().expect("state lock");
            state
                .threads
                .iter()
                .map(|(&tid, t)| (tid, t.tgid))
                .collect()
        };
        let live_processes: HashSet<u32> = live_threads.values().copied().collect();
        let mut python = shared.python.lock().expect("python lock");
        python.names.retain(|tid, _| {
            live_threads
                .get(tid)
                .is_some_and(|tgid| !reborn.contains(tgid))
        });
        python.names.extend(names);
        python
            .processes
            .retain(|tgid| live_processes.contains(tgid) && !reborn.contains(tgid));
        python.processes.extend(known.keys().copied());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(pairs: &[(u32, &str)]) -> HashMap<u32, String> {
        pairs.iter().map(|&(tid, n)| (tid, n.to_owned())).collect()
    }

    #[test]
    fn a_quiet_process_is_read_ever_less_often_up_to_the_longest_wait() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start);
        assert!(schedule.is_due(start));
        let mut now = start;
        let mut waits = Vec::new();
        for _ in 0..6 {
            schedule.read(names(&[(10, "MainThread"), (11, "worker")]), now);
            waits.push(schedule.next - now);
            assert!(!schedule.is_due(now));
            now = schedule.next;
            assert!(schedule.is_due(now));
        }
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        // The first reading finds names where there were none.
        assert_eq!(secs, [1, 2, 4, 8, 8, 8]);
    }

    /// A schedule read four times with nothing changed, and when its next reading is due.
    fn settled() -> (Schedule, Instant) {
        let mut now = Instant::now();
        let mut schedule = Schedule::new(now);
        for _ in 0..4 {
            schedule.read(names(&[(10, "MainThread")]), now);
            now = schedule.next;
        }
        (schedule, now)
    }

    #[test]
    fn a_changed_name_or_a_new_thread_starts_the_waits_over() {
        let (mut schedule, now) = settled();
        assert_eq!(schedule.wait, LONGEST_REFRESH);
        schedule.read(names(&[(10, "renamed")]), now);
        assert_eq!(schedule.next - now, REFRESH);

        schedule.read(names(&[(10, "renamed")]), now);
        assert_eq!(schedule.wait, 2 * REFRESH);
        schedule.started_threads(now);
        assert!(schedule.is_due(now), "read at once");
        schedule.read(names(&[(10, "renamed")]), now);
        // And at each follow-up, though nothing else is due before a second.
        for follow_up in FOLLOW_UPS {
            let at = now + follow_up;
            assert_eq!(schedule.soonest(), at);
            assert!(!schedule.is_due(at - Duration::from_millis(1)));
            assert!(schedule.is_due(at));
            assert!(!schedule.is_due(at), "each follow-up is taken once");
        }
        assert_eq!(schedule.soonest(), now + 2 * REFRESH);
    }

    #[test]
    fn a_failed_reading_is_tried_again_within_a_second() {
        let (mut schedule, now) = settled();
        schedule.failed(now);
        assert_eq!(schedule.soonest(), now + REFRESH);
    }
}
