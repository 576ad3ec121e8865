//! Reading a traced process's Python thread names during a capture, off the event loop.
//!
//! A [`Watcher`] owns a thread that reads the interpreter when asked (a thread was created
//! or renamed: a new `threading.Thread` shows up in `threading._active` once it runs, so
//! the reading waits a little and tries again for threads not found yet), every second
//! while the process is a Python one, and once more at the end. Names are kept after
//! their threads exit. The event loop only sends messages; it never waits for a reading.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    ops::Range,
    path::PathBuf,
    sync::mpsc::{self, RecvTimeoutError},
    thread::JoinHandle,
    time::{Duration, Instant},
};

use tracer_common::event::FutexWait;

use super::{Error, Interpreter, gil::FutexTimes, layout::Version};
use crate::capture::{events::Event, summary::ThreadSummary};

/// How long after a thread is created or renamed the interpreter is read.
const SETTLE: Duration = Duration::from_millis(5);
/// When threads created but not found yet are looked for again, after the first reading.
const RETRIES: [Duration; 6] = [
    Duration::from_millis(20),
    Duration::from_millis(50),
    Duration::from_millis(100),
    Duration::from_millis(250),
    Duration::from_millis(500),
    Duration::from_millis(1000),
];
/// How often a Python process is read without being asked (names change without events).
const PERIOD: Duration = Duration::from_secs(1);
/// Readings take at most this share of the watcher's time: a process with so many threads
/// that a reading takes long is read less often (at most every `1/PERIOD_SHARE` readings'
/// time when unasked, every `1/ASKED_SHARE` when asked).
const PERIOD_SHARE: u32 = 20;
const ASKED_SHARE: u32 = 4;

enum Message {
    Created(u32),
    Renamed,
    Exited(u32),
    Finish,
}

/// What the readings of one process found, merged.
#[derive(Clone, Debug, Default)]
pub struct Outcome {
    /// The interpreter's version, once it was found.
    pub version: Option<Version>,
    /// The interpreter is a free-threaded build: it has no GIL.
    pub free_threaded: bool,
    /// The latest `threading` name seen of each kernel thread.
    pub names: HashMap<u32, String>,
    /// Threads seen with a Python thread state or `Thread` object.
    pub python_tids: BTreeSet<u32>,
    /// The main interpreter's GIL state.
    pub gil: Option<Range<u64>>,
    /// Readings (or threads within one) that failed while the process was alive.
    pub failures: u64,
    /// The last of those failures.
    pub last_error: Option<String>,
}

/// Reads a process's Python thread names on a thread of its own.
pub struct Watcher {
    sender: mpsc::Sender<Message>,
    worker: Option<JoinHandle<Outcome>>,
}

impl Watcher {
    /// Starts watching process `pid`; the first reading happens at once.
    pub fn start(pid: u32) -> Self {
        let (sender, receiver) = mpsc::channel();
        let worker = std::thread::Builder::new()
            .name("python-names".into())
            .spawn(move || Worker::new(pid).run(&receiver))
            .ok();
        Self { sender, worker }
    }

    /// A thread `tid` of the process was created.
    pub fn thread_created(&self, tid: u32) {
        let _ = self.sender.send(Message::Created(tid));
    }

    /// A thread of the process was renamed by the kernel (Python 3.14 names threads so).
    pub fn thread_renamed(&self) {
        let _ = self.sender.send(Message::Renamed);
    }

    /// Thread `tid` of the process (not its main thread) exited: its final name is read
    /// from its `Thread` object.
    pub fn thread_exited(&self, tid: u32) {
        let _ = self.sender.send(Message::Exited(tid));
    }

    /// Reads the process one last time (if it is still there) and returns what was found.
    pub fn finish(mut self) -> Outcome {
        let _ = self.sender.send(Message::Finish);
        self.worker
            .take()
            .and_then(|w| w.join().ok())
            .unwrap_or_default()
    }
}

struct Worker {
    pid: u32,
    interpreter: Option<Interpreter>,
    /// Mapped files already found to hold no interpreter.
    not_python: HashSet<(PathBuf, u64)>,
    outcome: Outcome,
    /// Threads created and not named yet, with the readings tried since.
    pending: HashMap<u32, usize>,
    /// Threads that exited since the last reading, whose final names it reads.
    exited: HashSet<u32>,
    /// The interpreter is one tracer cannot read (its version): no more tries.
    unsupported: bool,
    /// How long the last reading took.
    cost: Duration,
}

impl Worker {
    fn new(pid: u32) -> Self {
        Self {
            pid,
            interpreter: None,
            not_python: HashSet::new(),
            outcome: Outcome::default(),
            pending: HashMap::new(),
            exited: HashSet::new(),
            unsupported: false,
            cost: Duration::ZERO,
        }
    }

    fn run(mut self, receiver: &mpsc::Receiver<Message>) -> Outcome {
        // Readings take a CPU only when no other thread wants it, so that they do not
        // preempt the traced threads; the last one, which the end of the capture waits for,
        // runs at the normal priority.
        set_idle_priority(true);
        self.read();
        let mut due: Option<Instant> = None;
        let mut periodic = Instant::now() + PERIOD;
        loop {
            let wake = due.map_or(periodic, |d| d.min(periodic));
            match receiver.recv_timeout(wake.saturating_duration_since(Instant::now())) {
                Ok(Message::Created(tid)) => {
                    // A reused thread id is a new thread: the old name is not its name.
                    self.outcome.names.remove(&tid);
                    self.outcome.python_tids.remove(&tid);
                    self.exited.remove(&tid);
                    self.pending.insert(tid, 0);
                    due = Some(soonest(due, Instant::now() + self.after(SETTLE)));
                }
                Ok(Message::Renamed) => {
                    due = Some(soonest(due, Instant::now() + self.after(SETTLE)));
                }
                Ok(Message::Exited(tid)) => {
                    if self.interpreter.is_some() {
                        self.exited.insert(tid);
                        due = Some(soonest(due, Instant::now() + self.after(SETTLE)));
                    }
                }
                Ok(Message::Finish) | Err(RecvTimeoutError::Disconnected) => {
                    set_idle_priority(false);
                    self.read();
                    return self.outcome;
                }
                Err(RecvTimeoutError::Timeout) => {
                    let now = Instant::now();
                    let asked = due.is_some_and(|d| d <= now);
                    if asked || (now >= periodic && self.interpreter.is_some()) {
                        self.read();
                    }
                    if now >= periodic {
                        periodic = now + PERIOD.max(self.cost * PERIOD_SHARE);
                    }
                    if asked {
                        due = self.next_retry(now);
                    }
                }
            }
        }
    }

    /// When to look again for threads created but not named yet: never in a process that
    /// is not (yet) a Python one, whose threads have no Python name to wait for.
    fn next_retry(&mut self, now: Instant) -> Option<Instant> {
        if self.interpreter.is_none() {
            self.pending.clear();
            return None;
        }
        let names = &self.outcome.names;
        self.pending.retain(|tid, tries| {
            *tries += 1;
            !names.contains_key(tid) && *tries <= RETRIES.len()
        });
        let fewest = self.pending.values().min()?;
        Some(now + self.after(RETRIES[fewest - 1]))
    }

    /// `delay`, or longer when readings are costly.
    fn after(&self, delay: Duration) -> Duration {
        delay.max(self.cost * ASKED_SHARE)
    }

    /// Reads the interpreter, finding it first if needed, and merges what it shows.
    fn read(&mut self) {
        let start = Instant::now();
        self.read_now();
        self.cost = start.elapsed();
    }

    fn read_now(&mut self) {
        if self.unsupported {
            return;
        }
        if self.interpreter.is_none() {
            match Interpreter::attach_excluding(self.pid, &mut self.not_python) {
                Ok(Some(interpreter)) => {
                    self.outcome.version = Some(interpreter.version());
                    self.outcome.free_threaded = interpreter.free_threaded();
                    self.interpreter = Some(interpreter);
                }
                Ok(None) => return,
                Err(e) => {
                    self.unsupported = matches!(e, Error::Unsupported(_));
                    return self.failed(&e);
                }
            }
        }
        let interpreter = self.interpreter.as_mut().expect("attached above");
        match interpreter.snapshot() {
            Ok(snapshot) => {
                self.outcome.names.extend(snapshot.names);
                self.outcome.python_tids.extend(snapshot.python_tids);
                if snapshot.gil.is_some() {
                    self.outcome.gil = snapshot.gil;
                }
                if snapshot.failures > 0 && crate::kernel::procfs::process_exists(self.pid) {
                    self.outcome.failures += snapshot.failures;
                    self.outcome.last_error = Some(format!(
                        "{} threads of the interpreter could not be read",
                        snapshot.failures
                    ));
                }
            }
            Err(e) => {
                // Found again at the next reading: the process may have run `exec`.
                self.interpreter = None;
                self.exited.clear();
                return self.failed(&e);
            }
        }
        if !self.exited.is_empty() {
            let exited = std::mem::take(&mut self.exited);
            match interpreter.final_names(&exited) {
                Ok(names) => self.outcome.names.extend(names),
                Err(e) => self.failed(&e),
            }
        }
    }

    /// Counts a failed reading, unless the process is gone (its end is no failure).
    fn failed(&mut self, error: &Error) {
        if crate::kernel::procfs::process_exists(self.pid) {
            self.outcome.failures += 1;
            self.outcome.last_error = Some(error.to_string());
        }
    }
}

/// Puts the calling thread in the `SCHED_IDLE` class, or back in the normal one; failures
/// leave it as it is.
fn set_idle_priority(idle: bool) {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // SAFETY: pid 0 is the calling thread; `param` is valid for the call.
    unsafe { libc::sched_setscheduler(0, policy, &param) };
}

fn soonest(current: Option<Instant>, candidate: Instant) -> Instant {
    current.map_or(candidate, |c| c.min(candidate))
}

/// The Python side of one capture: the watcher of its process, and futex wait time by
/// address for the GIL.
pub struct Tracker {
    pid: u32,
    watcher: Watcher,
    futexes: FutexTimes,
}

impl Tracker {
    pub fn start(pid: u32) -> Self {
        Self {
            pid,
            watcher: Watcher::start(pid),
            futexes: FutexTimes::default(),
        }
    }

    /// Takes note of an event of the capture.
    pub fn observe(&mut self, event: &Event) {
        match event {
            Event::ThreadCreated(e) if e.tgid == self.pid => self.watcher.thread_created(e.tid),
            Event::ThreadRenamed(e) if e.tgid == self.pid || e.tgid == 0 => {
                self.watcher.thread_renamed()
            }
            Event::ThreadExited(e) if e.tgid == self.pid && e.tid != e.tgid => {
                self.watcher.thread_exited(e.tid)
            }
            Event::FutexWait(e) if e.tgid == self.pid => self.observe_futex(e),
            _ => {}
        }
    }

    fn observe_futex(&mut self, e: &FutexWait) {
        self.futexes.observe(e);
    }

    /// Ends the watching (one last reading) and returns the names and GIL waits found.
    pub fn finish(self) -> Names {
        let outcome = self.watcher.finish();
        let gil_waits = outcome
            .gil
            .as_ref()
            .map(|gil| self.futexes.within(gil))
            .unwrap_or_default();
        Names { outcome, gil_waits }
    }
}

/// The Python names and GIL waits of a finished capture.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub outcome: Outcome,
    /// GIL wait time by thread (threads that never waited are absent).
    pub gil_waits: HashMap<u32, u64>,
}

impl Names {
    /// Gives a thread of the summary its Python name and GIL wait, when it has them.
    pub fn label(&self, thread: &mut ThreadSummary) {
        let tid = thread.tid;
        if let Some(name) = self.outcome.names.get(&tid) {
            thread.name = name.clone();
            thread.name_source = "python";
        }
        let waited = self.gil_waits.get(&tid).copied();
        let is_python = self.outcome.python_tids.contains(&tid) || waited.is_some();
        // A free-threaded build has no GIL: its threads' GIL wait stays null.
        if self.outcome.gil.is_some() && !self.outcome.free_threaded && is_python {
            thread.gil_wait_ns = Some(waited.unwrap_or(0));
        }
    }

    /// A line for the user when readings failed: which names fell back to the kernel's.
    pub fn warning(&self) -> Option<String> {
        let o = &self.outcome;
        (o.failures > 0).then(|| {
            format!(
                "tracer: warning: could not read the process's Python threads ({} failures, \
                 last: {}); threads not read are named by their kernel name",
                o.failures,
                o.last_error.as_deref().unwrap_or("unknown")
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{summary::Counters, threads::ThreadTable};

    fn summary_of(tid: u32, comm: &str) -> ThreadSummary {
        let mut table = ThreadTable::default();
        table.add_existing(1, tid, comm.into());
        let info = table.iter().next().expect("one thread");
        ThreadSummary::new(info, Counters::default())
    }

    #[test]
    fn threads_get_python_names_and_gil_waits_when_known() {
        let mut names = Names::default();
        names.outcome.names.insert(1, "MainThread".into());
        names.outcome.names.insert(2, "名前-スレッド".into());
        names.outcome.python_tids.extend([1, 2, 3]);
        names.outcome.gil = Some(0x1000..0x10d0);
        names.gil_waits.insert(2, 5_000);
        names.gil_waits.insert(4, 7);

        let mut main = summary_of(1, "python3");
        names.label(&mut main);
        assert_eq!(
            (main.name.as_str(), main.name_source),
            ("MainThread", "python")
        );
        assert_eq!(main.gil_wait_ns, Some(0));
        let mut named = summary_of(2, "python3");
        names.label(&mut named);
        assert_eq!(named.name, "名前-スレッド");
        assert_eq!(named.gil_wait_ns, Some(5_000));
        // A thread state without a Thread object: Python, but named by the kernel.
        let mut dummy = summary_of(3, "python3");
        names.label(&mut dummy);
        assert_eq!(
            (dummy.name.as_str(), dummy.name_source),
            ("python3", "comm")
        );
        assert_eq!(dummy.gil_wait_ns, Some(0));
        // Waited on the GIL, so it runs Python even if no reading saw it.
        let mut unseen = summary_of(4, "python3");
        names.label(&mut unseen);
        assert_eq!(unseen.gil_wait_ns, Some(7));
        let mut native = summary_of(5, "worker");
        names.label(&mut native);
        assert_eq!(
            (native.name.as_str(), native.name_source),
            ("worker", "comm")
        );
        assert_eq!(native.gil_wait_ns, None);
        assert!(names.warning().is_none());
    }

    /// A free-threaded build's threads get their names, and no GIL wait (null), even with
    /// futex waits that would count for a GIL build.
    #[test]
    fn free_threaded_builds_name_threads_with_null_gil_waits() {
        let mut names = Names::default();
        names.outcome.free_threaded = true;
        names.outcome.names.insert(1, "MainThread".into());
        names.outcome.python_tids.insert(1);
        names.outcome.gil = Some(0x1000..0x10d0);
        names.gil_waits.insert(1, 5_000);
        let mut main = summary_of(1, "python3.14t");
        names.label(&mut main);
        assert_eq!(
            (main.name.as_str(), main.name_source, main.gil_wait_ns),
            ("MainThread", "python", None)
        );
    }

    #[test]
    fn without_an_interpreter_nothing_changes_and_failures_are_reported() {
        let mut names = Names::default();
        names.gil_waits.insert(1, 10);
        let mut t = summary_of(1, "python3");
        names.label(&mut t);
        assert_eq!((t.name_source, t.gil_wait_ns), ("comm", None));
        names.outcome.failures = 2;
        names.outcome.last_error = Some("reading /proc/1/maps: denied".into());
        let warning = names.warning().unwrap();
        assert!(
            warning.contains("2 failures") && warning.contains("denied"),
            "{warning}"
        );
    }

    #[test]
    fn a_process_that_is_not_python_is_watched_to_the_end() {
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let watcher = Watcher::start(child.id());
        watcher.thread_created(child.id());
        watcher.thread_renamed();
        std::thread::sleep(Duration::from_millis(30));
        let outcome = watcher.finish();
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(outcome.version.is_none() && outcome.names.is_empty());
        assert_eq!(outcome.failures, 0, "{:?}", outcome.last_error);
    }
}
