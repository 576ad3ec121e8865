//! The threads of a capture: who they are, who created them, their names over time.

use std::collections::BTreeMap;

use super::{comm_to_string, events::Event};

/// A kernel rename of a thread seen during the capture.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Rename {
    pub ts_ns: u64,
    pub from: String,
    pub to: String,
}

/// What is known about one thread from `/proc` and lifecycle events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadInfo {
    pub tid: u32,
    /// Thread group (process) id.
    pub pid: u32,
    /// The latest kernel name seen.
    pub comm: String,
    /// The thread that created it; `None` when it existed before the capture.
    pub parent_tid: Option<u32>,
    pub created_ns: Option<u64>,
    pub exited_ns: Option<u64>,
    pub renames: Vec<Rename>,
}

/// Every thread of the traced processes, by thread id.
#[derive(Debug, Default)]
pub struct ThreadTable {
    threads: BTreeMap<u32, ThreadInfo>,
}

impl ThreadTable {
    /// Adds a thread that existed when the capture started (a no-op if already known).
    pub fn add_existing(&mut self, pid: u32, tid: u32, comm: String) {
        self.threads.entry(tid).or_insert_with(|| ThreadInfo {
            tid,
            pid,
            comm,
            parent_tid: None,
            created_ns: None,
            exited_ns: None,
            renames: Vec::new(),
        });
    }

    /// Updates the table from a lifecycle event; other events leave it as it is.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::ThreadCreated(e) => {
                let info = ThreadInfo {
                    tid: e.tid,
                    pid: e.tgid,
                    comm: comm_to_string(&e.comm),
                    parent_tid: Some(e.parent_tid),
                    created_ns: Some(e.header.ts_ns),
                    exited_ns: None,
                    renames: Vec::new(),
                };
                // A reused thread id starts a new thread.
                self.threads.insert(e.tid, info);
            }
            Event::ThreadExited(e) => {
                if let Some(t) = self.threads.get_mut(&e.tid) {
                    t.exited_ns = Some(e.header.ts_ns);
                    t.comm = comm_to_string(&e.comm);
                }
            }
            Event::ThreadRenamed(e) => {
                if let Some(t) = self.threads.get_mut(&e.tid) {
                    let to = comm_to_string(&e.new_comm);
                    t.renames.push(Rename {
                        ts_ns: e.header.ts_ns,
                        from: comm_to_string(&e.old_comm),
                        to: to.clone(),
                    });
                    t.comm = to;
                }
            }
            Event::Switch(_) | Event::Wakeup(_) | Event::FutexWait(_) => {}
        }
    }

    pub fn get(&self, tid: u32) -> Option<&ThreadInfo> {
        self.threads.get(&tid)
    }

    /// Threads in thread id order.
    pub fn iter(&self) -> impl Iterator<Item = &ThreadInfo> {
        self.threads.values()
    }

    pub fn len(&self) -> usize {
        self.threads.len()
    }

    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.threads.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::event::{EventKind, Header, ThreadCreated, ThreadExited, ThreadRenamed};

    use super::*;

    fn header(kind: EventKind, ts_ns: u64) -> Header {
        Header {
            kind: kind as u32,
            cpu: 0,
            ts_ns,
        }
    }

    fn comm(name: &str) -> [u8; 16] {
        let mut c = [0; 16];
        c[..name.len()].copy_from_slice(name.as_bytes());
        c
    }

    #[test]
    fn a_thread_is_created_renamed_by_another_and_exits() {
        let mut table = ThreadTable::default();
        table.add_existing(100, 100, "main".into());
        table.apply(&Event::ThreadCreated(ThreadCreated {
            header: header(EventKind::ThreadCreated, 10),
            tid: 101,
            tgid: 100,
            parent_tid: 100,
            parent_tgid: 100,
            clone_flags: 0x3d0f00,
            comm: comm("main"),
        }));
        table.apply(&Event::ThreadRenamed(ThreadRenamed {
            header: header(EventKind::ThreadRenamed, 20),
            tid: 101,
            tgid: 100,
            writer_tid: 100,
            _pad: 0,
            old_comm: comm("main"),
            new_comm: comm("worker"),
        }));
        table.apply(&Event::ThreadExited(ThreadExited {
            header: header(EventKind::ThreadExited, 30),
            tid: 101,
            tgid: 100,
            group_dead: 0,
            _pad: 0,
            comm: comm("worker"),
        }));
        let t = table.get(101).unwrap();
        assert_eq!(t.parent_tid, Some(100));
        assert_eq!((t.created_ns, t.exited_ns), (Some(10), Some(30)));
        assert_eq!(t.comm, "worker");
        assert_eq!(
            t.renames,
            [Rename {
                ts_ns: 20,
                from: "main".into(),
                to: "worker".into()
            }]
        );
        let main = table.get(100).unwrap();
        assert_eq!((main.parent_tid, main.created_ns), (None, None));
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn renames_of_unknown_threads_are_ignored() {
        let mut table = ThreadTable::default();
        table.apply(&Event::ThreadRenamed(ThreadRenamed {
            header: header(EventKind::ThreadRenamed, 20),
            tid: 7,
            tgid: 7,
            writer_tid: 7,
            _pad: 0,
            old_comm: comm("a"),
            new_comm: comm("b"),
        }));
        assert!(table.is_empty());
    }
}
