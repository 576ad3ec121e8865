//! CPython processes seen by the daemon: their GIL, whose futex waits the kernel side counts
//! as GIL waits, and their `threading` names, used as thread labels.
//!
//! A thread of its own attaches to each process once (when it appears or execs) and then
//! rereads the names of the Python processes whenever one of them starts a thread, and every
//! second; event handling never waits for it.

use std::{
    collections::{HashMap, HashSet},
    path::PathBuf,
    sync::{
        Arc,
        mpsc::{Receiver, RecvTimeoutError, Sender},
    },
    time::Duration,
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

/// How often known Python processes' names are reread without a reason.
const REFRESH: Duration = Duration::from_secs(1);
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

fn scan(shared: &Shared, pokes: &Receiver<Poke>) {
    let mut interpreters: HashMap<u32, Interpreter> = HashMap::new();
    // When each process was last tried without success: one that was not Python (or not
    // ready) is tried again when it starts a thread, at most once a second.
    let mut tried: HashMap<u32, std::time::Instant> = HashMap::new();
    let mut not_python: HashSet<(PathBuf, u64)> = HashSet::new();
    let mut first = true;
    // When to read again after threads were started.
    let mut follow_ups: Vec<std::time::Instant> = Vec::new();
    // Processes whose interpreter is looked for again, and when.
    let mut retries: Vec<(std::time::Instant, u32)> = Vec::new();
    loop {
        let mut due: HashMap<u32, Cause> = HashMap::new();
        let add = |due: &mut HashMap<u32, Cause>, tgid: u32, cause: Cause| {
            let at = due.entry(tgid).or_insert(cause);
            *at = (*at).max(cause);
        };
        let now = std::time::Instant::now();
        follow_ups.retain(|&at| at > now);
        let wait = follow_ups
            .iter()
            .chain(retries.iter().map(|(at, _)| at))
            .map(|&at| at.saturating_duration_since(now))
            .min()
            .map_or(REFRESH, |soonest| soonest.min(REFRESH));
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
                            Poke::Thread(tgid) => {
                                // At most a few dozen: pokes come at least 20 ms apart.
                                let now = std::time::Instant::now();
                                follow_ups.extend(FOLLOW_UPS.iter().map(|&d| now + d));
                                add(&mut due, tgid, Cause::Thread);
                            }
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
        let now = std::time::Instant::now();
        retries.retain(|&(at, tgid)| {
            if at > now {
                return true;
            }
            add(&mut due, tgid, Cause::Retry);
            false
        });
        for (tgid, cause) in due {
            if interpreters.contains_key(&tgid) {
                continue;
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
                    interpreters.insert(tgid, interpreter);
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
        interpreters.retain(|&tgid, interpreter| match interpreter.thread_names() {
            Ok(found) => {
                names.extend(found);
                if let Some(gil) = interpreter.gil_range() {
                    shared
                        .probes
                        .lock()
                        .expect("probes lock")
                        .set_gil(tgid, Some(gil));
                }
                true
            }
            Err(_) if !std::path::Path::new(&format!("/proc/{tgid}")).exists() => {
                shared
                    .probes
                    .lock()
                    .expect("probes lock")
                    .set_gil(tgid, None);
                false
            }
            // A passing failure (the process was busy changing what was read): keep it.
            Err(_) => true,
        });
        tried.retain(|tgid, _| std::path::Path::new(&format!("/proc/{tgid}")).exists());
        // Names and processes stay known until the daemon has retired their threads, which
        // can be after the process is gone.
        let (live_threads, live_processes): (HashSet<u32>, HashSet<u32>) = {
            let state = shared.state.lock().expect("state lock");
            (
                state.threads.keys().copied().collect(),
                state.threads.values().map(|t| t.tgid).collect(),
            )
        };
        let mut python = shared.python.lock().expect("python lock");
        python.names.retain(|tid, _| live_threads.contains(tid));
        python.names.extend(names);
        python
            .processes
            .retain(|tgid| live_processes.contains(tgid));
        python.processes.extend(interpreters.keys().copied());
    }
}
