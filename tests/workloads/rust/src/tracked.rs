//! Tracked threads: each thread keeps what it knows about itself and turns
//! it into a [`ThreadRecord`] as the last thing it does.

use std::{
    ffi::CString,
    fs, io,
    sync::mpsc,
    thread::{self, JoinHandle},
};

use crate::truth::{self, Counters, Rename, ThreadRecord};

/// What a thread knows about itself while it runs.
pub struct Tracked {
    tid: i32,
    start: Option<Counters>,
    name: String,
    role: &'static str,
    parent_tid: Option<i32>,
    renames: Vec<Rename>,
    lock_contender: bool,
    baseline: Option<Counters>,
    /// Records of threads this one spawned and joined (and their descendants).
    descendants: Vec<ThreadRecord>,
}

impl Tracked {
    /// The process's main thread. Call it on the main thread.
    pub fn main() -> Self {
        Self::new("main".to_owned(), "main", None)
    }

    /// The calling thread, named `name` by the program.
    pub fn new(name: String, role: &'static str, parent_tid: Option<i32>) -> Self {
        Self {
            start: None,
            tid: truth::gettid(),
            name,
            role,
            parent_tid,
            renames: Vec::new(),
            lock_contender: false,
            baseline: None,
            descendants: Vec::new(),
        }
    }

    pub fn tid(&self) -> i32 {
        self.tid
    }

    /// Marks this thread as one that blocked on a contended lock.
    pub fn set_lock_contender(&mut self) {
        self.lock_contender = true;
    }

    pub fn set_baseline(&mut self, counters: Counters) {
        self.baseline = Some(counters);
    }

    /// Notes a rename of this thread that another thread carried out.
    pub fn push_rename(&mut self, rename: Rename) {
        self.renames.push(rename);
    }

    /// Renames the calling thread with `prctl(PR_SET_NAME)` and notes it.
    pub fn rename_self(&mut self, new_name: &str) -> io::Result<()> {
        let from = truth::own_comm()?;
        let c_name = CString::new(new_name).map_err(io::Error::other)?;
        // SAFETY: PR_SET_NAME reads a NUL-terminated string that outlives the call.
        let rc =
            unsafe { libc::prctl(libc::PR_SET_NAME, c_name.as_ptr() as libc::c_ulong, 0, 0, 0) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        let to = truth::own_comm()?;
        self.renames.push(Rename { from, to });
        Ok(())
    }

    /// Takes over the records returned by a joined child.
    pub fn adopt(&mut self, records: Vec<ThreadRecord>) {
        self.descendants.extend(records);
    }

    /// Reads the final `comm` and, last of all, the counters; returns this
    /// thread's record followed by those of its descendants.
    pub fn finish(self) -> io::Result<Vec<ThreadRecord>> {
        let comm = truth::own_comm()?;
        let counters = Counters::of_current_thread()?;
        let mut records = Vec::with_capacity(1 + self.descendants.len());
        records.push(ThreadRecord {
            tid: self.tid,
            name: self.name,
            comm,
            parent_tid: self.parent_tid,
            renames: self.renames,
            role: self.role,
            lock_contender: self.lock_contender,
            daemon: false,
            counters,
            baseline: self.baseline,
            start: self.start,
        });
        records.extend(self.descendants);
        Ok(records)
    }
}

/// Spawns a thread named `name` that runs `body` and returns its records.
///
/// `std` names the kernel thread from inside the new thread, which is a
/// kernel rename from the inherited `comm` (the spawning thread's) to the
/// name truncated to 15 bytes; the record lists it.
/// A tracked thread: its join handle, and the turn it waits for before its last reading.
pub struct Handle {
    join: JoinHandle<Vec<ThreadRecord>>,
    done: mpsc::Receiver<()>,
    turn: mpsc::Sender<()>,
}

/// Spawns a named thread that runs `body`, then waits for its turn (see [`join_all`]) and
/// reads its own counters as the last thing it does.
pub fn spawn<F>(name: &str, role: &'static str, body: F) -> Handle
where
    F: FnOnce(&mut Tracked) + Send + 'static,
{
    let parent_tid = truth::gettid();
    let inherited = truth::own_comm().expect("read own comm");
    let owned_name = name.to_owned();
    let (done_tx, done) = mpsc::channel();
    let (turn, turn_rx) = mpsc::channel::<()>();
    let join = thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            let start = Counters::of_current_thread().expect("read own counters");
            let mut me = Tracked::new(owned_name, role, Some(parent_tid));
            me.start = Some(start);
            let named = truth::own_comm().expect("read own comm");
            me.push_rename(Rename {
                from: inherited,
                to: named,
            });
            body(&mut me);
            let _ = done_tx.send(());
            let _ = turn_rx.recv();
            me.finish().expect("read own counters")
        })
        .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
    Handle { join, done, turn }
}

/// Ends `handles` one at a time: once every one of them has done its work, each in turn
/// reads its counters and exits while the others wait, so that nothing competes with a
/// thread between its last reading and its exit.
pub fn join_all(handles: Vec<Handle>) -> Vec<ThreadRecord> {
    for handle in &handles {
        let _ = handle.done.recv();
    }
    let mut records = Vec::new();
    for handle in handles {
        let _ = handle.turn.send(());
        records.extend(
            handle
                .join
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
        );
    }
    records
}

/// Renames another thread of this process through
/// `/proc/self/task/<tid>/comm` and returns the change as the kernel saw it.
pub fn rename_task(tid: i32, new_name: &str) -> io::Result<Rename> {
    let from = truth::task_comm(tid)?;
    fs::write(truth::task_dir(tid).join("comm"), new_name)?;
    let to = truth::task_comm(tid)?;
    Ok(Rename { from, to })
}
