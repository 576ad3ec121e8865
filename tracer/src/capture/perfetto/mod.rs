//! `.pftrace` output: a Perfetto trace, streamed as the capture runs.
//!
//! A trace is the protobuf message `Trace`, whose only field is the repeated `TracePacket`
//! (field 1): each packet is appended as it is made, so memory stays bounded whatever the
//! length of the capture, and the file is a valid trace after every packet.
//!
//! What the packets carry, in the encodings Perfetto's own recorder uses so that its trace
//! processor derives the same things from them:
//! - `SystemInfo` (the kernel release decides how `prev_state` is decoded), a `ClockSnapshot`,
//!   and a `ProcessTree` at the start with the threads present then, and at the end with every
//!   thread's best name;
//! - scheduling as ftrace events in per-CPU `FtraceEventBundle`s: `sched_switch` and
//!   `sched_waking` (the waker as the event's `pid`), from which Perfetto derives each thread's
//!   states (Running, Runnable, Sleeping, ...); `task_newtask`, `task_rename` and
//!   `sched_process_exit` for the threads' lives. Tasks outside the capture appear as the idle
//!   task (pid 0) in `sched_switch`, so that CPU tracks show the traced threads only. A
//!   `sched_waking` recorded while its thread was still switching out is written just after
//!   that switch: the thread was runnable from then on, not asleep;
//! - `TrackEvent`s on each thread's track: a slice per futex wait (address and op as debug
//!   annotations), instants for creation, renames and exit, and flows from a waker to the
//!   thread it woke (ending when that thread gets a CPU).
//!
//! Timestamps are `CLOCK_BOOTTIME`, Perfetto's default trace clock: the capture's
//! `CLOCK_MONOTONIC` times plus the offset between the two clocks at the start.

mod proto;
mod schema;

use std::{
    collections::HashMap,
    ffi::OsString,
    fs::File,
    io::{BufWriter, Write as _},
    path::{Path, PathBuf},
};

use tracer_common::event::{EventKind, FUTEX_WAITV_OP, Wakeup, futex_op_name};

use self::{
    proto::Message,
    schema::{
        bundle, clock_snapshot, debug_annotation, ftrace, packet, process_tree, system_info, trace,
        track_descriptor, track_event,
    },
};
use super::{comm_to_string, events::Event, summary::Summary, threads::ThreadTable};
use crate::error::{Error, Result};

/// The packet sequence every packet is written on.
const SEQUENCE_ID: u64 = 1;

/// A CPU's ftrace events are written out as one bundle once they take this many bytes.
const BUNDLE_BYTES: usize = 32 << 10;

/// `prev_state` of `sched_switch` when the task was preempted, as Perfetto decodes it for
/// kernels from 4.14 on (`TASK_REPORT_MAX`).
const PREEMPTED: u64 = 0x100;

/// `FUTEX_PRIVATE_FLAG`.
const FUTEX_PRIVATE: u32 = 128;

/// Streams a capture to a `.pftrace` file.
pub struct TraceWriter {
    path: PathBuf,
    out: BufWriter<File>,
    /// `CLOCK_BOOTTIME - CLOCK_MONOTONIC` at the start.
    boot_offset_ns: u64,
    /// The packet being written.
    packet: Message,
    /// Ftrace events not yet written, per CPU: `FtraceEventBundle.event` fields.
    cpus: Vec<Message>,
    /// Track of each thread that has one.
    tracks: HashMap<u32, u64>,
    next_uuid: u64,
    next_flow: u64,
    /// Threads woken by a traced thread and not yet on a CPU, with the flow from the waker.
    woken: HashMap<u32, Woken>,
    /// Where each traced thread's latest switch left it.
    on_cpu: HashMap<u32, OnCpu>,
    /// `sched_waking`s of threads still on their CPU, written once they switch out.
    deferred: HashMap<u32, Wakeup>,
    process: Process,
}

/// A thread's latest switch: onto a CPU or off it, and when.
#[derive(Clone, Copy, Debug)]
struct OnCpu {
    running: bool,
    since_ns: u64,
}

/// A wakeup by a traced thread, shown as a flow once the woken thread runs.
#[derive(Clone, Copy, Debug)]
struct Woken {
    flow: u64,
    ts_ns: u64,
    waker_tid: u32,
}

/// The traced process, as the `ProcessTree` packets describe it.
#[derive(Clone, Debug, Default)]
struct Process {
    pid: u32,
    ppid: Option<u32>,
    cmdline: Vec<String>,
}

/// A debug annotation's value.
#[derive(Clone, Copy, Debug)]
enum Arg<'a> {
    Uint(u64),
    Int(i64),
    Bool(bool),
    Str(&'a str),
    Pointer(u64),
}

/// A `TrackEvent` on a thread's track.
struct Mark<'a> {
    kind: u64,
    name: &'a str,
    category: &'a str,
    args: &'a [(&'a str, Arg<'a>)],
    /// A flow that starts (or continues) here.
    flow_out: Option<u64>,
    /// A flow that ends here.
    flow_in: Option<u64>,
}

impl<'a> Mark<'a> {
    fn new(kind: u64, category: &'a str, name: &'a str, args: &'a [(&'a str, Arg<'a>)]) -> Self {
        Self {
            kind,
            name,
            category,
            args,
            flow_out: None,
            flow_in: None,
        }
    }
}

impl TraceWriter {
    /// Creates (truncates) the file; nothing is written until [`Self::begin`].
    pub fn create(path: &Path) -> Result<Self> {
        let file = File::create(path).map_err(|source| Error::Output {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(1 << 16, file),
            boot_offset_ns: boot_offset_ns(),
            packet: Message::new(),
            cpus: Vec::new(),
            tracks: HashMap::new(),
            next_uuid: 1,
            next_flow: 1,
            woken: HashMap::new(),
            on_cpu: HashMap::new(),
            deferred: HashMap::new(),
            process: Process::default(),
        })
    }

    /// Writes what the trace starts with: the system, the clocks, and process `pid` with the
    /// threads in `table`. `argv` is its command line when tracer started it (else read from
    /// `/proc`).
    pub fn begin(
        &mut self,
        pid: u32,
        argv: Option<&[OsString]>,
        started_ns: u64,
        table: &ThreadTable,
    ) -> Result<()> {
        self.process = Process {
            pid,
            ppid: parent_of(pid),
            cmdline: match argv {
                Some(argv) => argv
                    .iter()
                    .map(|a| a.to_string_lossy().into_owned())
                    .collect(),
                None => command_line(pid),
            },
        };
        self.system_info()?;
        self.clock_snapshot()?;
        let threads: Vec<(u32, u32, String)> = table
            .iter()
            .map(|t| (t.tid, t.pid, t.comm.clone()))
            .collect();
        self.process_tree(started_ns, &threads)?;
        for (tid, pid, _) in threads {
            self.track(pid, tid)?;
        }
        Ok(())
    }

    /// Adds one event; `table` already includes what the event says about threads.
    pub fn write(&mut self, event: &Event, table: &ThreadTable) -> Result<()> {
        let comm = |tid: u32| table.get(tid).map(|t| t.comm.as_str());
        let pid_of = |tid: u32| table.get(tid).map_or(tid, |t| t.pid);
        let h = event.header();
        let (cpu, ts) = (h.cpu, h.ts_ns);
        match event {
            Event::ThreadCreated(e) => {
                let name = comm_to_string(&e.comm);
                self.ftrace(cpu, ts, e.parent_tid, |m| {
                    m.message(ftrace::TASK_NEWTASK, |n| {
                        n.int(ftrace::newtask::PID, i64::from(e.tid));
                        string_if_any(n, ftrace::newtask::COMM, &name);
                        n.uint(ftrace::newtask::CLONE_FLAGS, e.clone_flags);
                    });
                })?;
                // A new thread with a reused id gets a track of its own.
                self.tracks.remove(&e.tid);
                self.woken.remove(&e.tid);
                self.on_cpu.remove(&e.tid);
                self.deferred.remove(&e.tid);
                let flow = comm(e.parent_tid).is_some().then(|| self.flow());
                if let Some(flow) = flow {
                    let args = [("tid", Arg::Uint(e.tid.into()))];
                    let mut mark =
                        Mark::new(track_event::TYPE_INSTANT, "thread", "create thread", &args);
                    mark.flow_out = Some(flow);
                    self.mark(pid_of(e.parent_tid), e.parent_tid, ts, &mark)?;
                }
                let args = [
                    ("parent_tid", Arg::Uint(e.parent_tid.into())),
                    ("comm", Arg::Str(&name)),
                ];
                let mut mark =
                    Mark::new(track_event::TYPE_INSTANT, "thread", "thread start", &args);
                mark.flow_in = flow;
                self.mark(e.tgid, e.tid, ts, &mark)?;
            }
            Event::ThreadExited(e) => {
                let name = comm_to_string(&e.comm);
                self.ftrace(cpu, ts, e.tid, |m| {
                    m.message(ftrace::SCHED_PROCESS_EXIT, |x| {
                        string_if_any(x, ftrace::exit::COMM, &name);
                        x.int(ftrace::exit::PID, i64::from(e.tid))
                            .int(ftrace::exit::TGID, i64::from(e.tgid));
                    });
                })?;
                let args = [
                    ("comm", Arg::Str(&name)),
                    ("last_of_process", Arg::Bool(e.group_dead != 0)),
                ];
                let mark = Mark::new(track_event::TYPE_INSTANT, "thread", "thread exit", &args);
                self.mark(pid_of(e.tid), e.tid, ts, &mark)?;
            }
            Event::ThreadRenamed(e) => {
                let (from, to) = (comm_to_string(&e.old_comm), comm_to_string(&e.new_comm));
                self.ftrace(cpu, ts, e.writer_tid, |m| {
                    m.message(ftrace::TASK_RENAME, |r| {
                        r.int(ftrace::rename::PID, i64::from(e.tid));
                        string_if_any(r, ftrace::rename::OLDCOMM, &from);
                        string_if_any(r, ftrace::rename::NEWCOMM, &to);
                    });
                })?;
                if comm(e.tid).is_some() {
                    let args = [
                        ("from", Arg::Str(&from)),
                        ("to", Arg::Str(&to)),
                        ("by_tid", Arg::Uint(e.writer_tid.into())),
                    ];
                    let mark = Mark::new(track_event::TYPE_INSTANT, "thread", "rename", &args);
                    self.mark(pid_of(e.tid), e.tid, ts, &mark)?;
                }
            }
            Event::Switch(e) => {
                // Tasks outside the capture are shown as the idle task.
                let prev = comm(e.prev_tid).map(|c| (e.prev_tid, c));
                let next = comm(e.next_tid).map(|c| (e.next_tid, c));
                let prev_state = if e.prev_state >= PREEMPTED {
                    PREEMPTED
                } else {
                    e.prev_state
                };
                self.ftrace(cpu, ts, prev.map_or(0, |p| p.0), |m| {
                    m.message(ftrace::SCHED_SWITCH, |s| {
                        if let Some((_, c)) = prev {
                            string_if_any(s, ftrace::switch::PREV_COMM, c);
                        }
                        s.int(ftrace::switch::PREV_PID, prev.map_or(0, |p| p.0.into()))
                            .int(ftrace::switch::PREV_PRIO, e.prev_prio.into())
                            .int(ftrace::switch::PREV_STATE, prev_state as i64);
                        if let Some((_, c)) = next {
                            string_if_any(s, ftrace::switch::NEXT_COMM, c);
                        }
                        s.int(ftrace::switch::NEXT_PID, next.map_or(0, |n| n.0.into()))
                            .int(ftrace::switch::NEXT_PRIO, e.next_prio.into());
                    });
                })?;
                let (off, on) = (
                    OnCpu {
                        running: false,
                        since_ns: ts,
                    },
                    OnCpu {
                        running: true,
                        since_ns: ts,
                    },
                );
                if prev.is_some() {
                    self.on_cpu.insert(e.prev_tid, off);
                    if let Some(waking) = self.deferred.remove(&e.prev_tid) {
                        let at = waking.header.ts_ns.max(ts + 1);
                        self.waking(&waking, at, table)?;
                    }
                }
                if next.is_some() {
                    self.on_cpu.insert(e.next_tid, on);
                }
                if next.is_some()
                    && let Some(woken) = self.woken.remove(&e.next_tid)
                {
                    let waker = comm(woken.waker_tid).unwrap_or_default();
                    let args = [
                        ("waker_tid", Arg::Uint(woken.waker_tid.into())),
                        ("waker", Arg::Str(waker)),
                        ("latency_ns", Arg::Uint(ts.saturating_sub(woken.ts_ns))),
                    ];
                    let mut mark = Mark::new(track_event::TYPE_INSTANT, "sched", "woken", &args);
                    mark.flow_in = Some(woken.flow);
                    self.mark(pid_of(e.next_tid), e.next_tid, ts, &mark)?;
                }
            }
            Event::Wakeup(e) => {
                if event.kind() != EventKind::Waking {
                    // Thread states come from `sched_waking`, which names the waker; of the
                    // other wakeups only those of new threads are kept.
                    return if e.new_task != 0 {
                        self.waking(e, ts, table)
                    } else {
                        Ok(())
                    };
                }
                // A waker can run while its wakee is still switching out (the wakee set its
                // state to sleep, the waker saw that, and the switch completed after): the
                // wakee was runnable from the switch on, and Perfetto would show it asleep
                // until it ran, so such a waking is written just after the switch.
                match self.on_cpu.get(&e.tid) {
                    Some(&OnCpu {
                        running: true,
                        since_ns,
                    }) if ts >= since_ns && !self.deferred.contains_key(&e.tid) => {
                        self.deferred.insert(e.tid, *e);
                    }
                    Some(&OnCpu {
                        running: false,
                        since_ns,
                    }) => self.waking(e, ts.max(since_ns + 1), table)?,
                    _ => self.waking(e, ts, table)?,
                }
                if e.current_tid != e.tid
                    && let (Some(_), Some(wakee)) = (comm(e.current_tid), comm(e.tid))
                {
                    let flow = self.flow();
                    let args = [
                        ("wakee_tid", Arg::Uint(e.tid.into())),
                        ("wakee", Arg::Str(wakee)),
                    ];
                    let mut mark = Mark::new(track_event::TYPE_INSTANT, "sched", "wakeup", &args);
                    mark.flow_out = Some(flow);
                    self.mark(pid_of(e.current_tid), e.current_tid, ts, &mark)?;
                    self.woken.insert(
                        e.tid,
                        Woken {
                            flow,
                            ts_ns: ts,
                            waker_tid: e.current_tid,
                        },
                    );
                }
            }
            Event::FutexWait(e) => {
                let op = futex_op_label(e.op);
                let mut args = vec![("uaddr", Arg::Pointer(e.uaddr)), ("op", Arg::Str(&op))];
                if e.op == FUTEX_WAITV_OP {
                    args.push(("nr_futexes", Arg::Uint(e.nr_futexes.into())));
                }
                let begin = Mark::new(track_event::TYPE_SLICE_BEGIN, "futex", "futex wait", &args);
                self.mark(e.tgid, e.tid, e.start_ns, &begin)?;
                let result = [("ret", Arg::Int(e.ret))];
                let end = Mark::new(track_event::TYPE_SLICE_END, "futex", "", &result);
                self.mark(e.tgid, e.tid, ts, &end)?;
            }
        }
        Ok(())
    }

    /// Writes what is left and what the trace ends with (every thread's best name), then
    /// flushes and syncs the file.
    pub fn finish(mut self, summary: &Summary, table: &ThreadTable) -> Result<()> {
        let deferred: Vec<Wakeup> = self.deferred.drain().map(|(_, w)| w).collect();
        for waking in deferred {
            self.waking(&waking, waking.header.ts_ns, table)?;
        }
        for cpu in 0..self.cpus.len() {
            self.flush_cpu(cpu)?;
        }
        let threads: Vec<(u32, u32, String)> = summary
            .threads
            .iter()
            .map(|t| (t.tid, t.pid, t.name.clone()))
            .collect();
        let end_ns = summary.started_ns + summary.duration_ns;
        self.process_tree(end_ns, &threads)?;
        if summary.lost_events > 0 {
            // Perfetto notes the loss; which CPUs lost events is not known.
            self.emit(None, |p| {
                p.message(packet::FTRACE_EVENTS, |b| {
                    b.uint(bundle::CPU, 0).bool(bundle::LOST_EVENTS, true);
                });
            })?;
        }
        crate::capture::flush_and_sync(&mut self.out).map_err(|source| self.error(source))
    }

    fn error(&self, source: std::io::Error) -> Error {
        Error::Output {
            path: self.path.clone(),
            source,
        }
    }

    fn boot_ns(&self, monotonic_ns: u64) -> u64 {
        monotonic_ns + self.boot_offset_ns
    }

    fn flow(&mut self) -> u64 {
        self.next_flow += 1;
        self.next_flow - 1
    }

    /// Appends `self.packet`, framed as one `Trace.packet`.
    fn write_packet(&mut self) -> Result<()> {
        let (head, n) = proto::frame(trace::PACKET, &self.packet);
        self.out
            .write_all(&head[..n])
            .and_then(|()| self.out.write_all(self.packet.as_bytes()))
            .map_err(|source| Error::Output {
                path: self.path.clone(),
                source,
            })
    }

    /// Writes a packet on the sequence, with `fill` adding its data.
    fn emit(&mut self, ts_ns: Option<u64>, fill: impl FnOnce(&mut Message)) -> Result<()> {
        self.packet.clear();
        if let Some(ts) = ts_ns {
            self.packet.uint(packet::TIMESTAMP, self.boot_ns(ts));
        }
        fill(&mut self.packet);
        self.packet
            .uint(packet::TRUSTED_PACKET_SEQUENCE_ID, SEQUENCE_ID);
        self.write_packet()
    }

    /// The first packet: the kernel, for decoding `prev_state`; it also starts the sequence.
    fn system_info(&mut self) -> Result<()> {
        let uts = uname();
        // SAFETY: no preconditions.
        let (page_size, cpus) = unsafe {
            (
                libc::sysconf(libc::_SC_PAGESIZE),
                libc::sysconf(libc::_SC_NPROCESSORS_CONF),
            )
        };
        self.emit(None, |p| {
            p.message(packet::SYSTEM_INFO, |s| {
                s.message(system_info::UTSNAME, |u| {
                    u.string(system_info::utsname::SYSNAME, &uts[0])
                        .string(system_info::utsname::VERSION, &uts[1])
                        .string(system_info::utsname::RELEASE, &uts[2])
                        .string(system_info::utsname::MACHINE, &uts[3]);
                });
                if page_size > 0 {
                    s.uint(system_info::PAGE_SIZE, page_size as u64);
                }
                if cpus > 0 {
                    s.uint(system_info::NUM_CPUS, cpus as u64);
                }
            })
            .uint(
                packet::SEQUENCE_FLAGS,
                packet::SEQ_INCREMENTAL_STATE_CLEARED,
            )
            .bool(packet::FIRST_PACKET_ON_SEQUENCE, true);
        })
    }

    /// The boot, monotonic and real-time clocks at one instant.
    fn clock_snapshot(&mut self) -> Result<()> {
        let monotonic = clock_ns(libc::CLOCK_MONOTONIC);
        let clocks = [
            (clock_snapshot::BOOTTIME, self.boot_ns(monotonic)),
            (clock_snapshot::MONOTONIC, monotonic),
            (clock_snapshot::REALTIME, clock_ns(libc::CLOCK_REALTIME)),
        ];
        self.emit(Some(monotonic), |p| {
            p.message(packet::CLOCK_SNAPSHOT, |s| {
                for (id, ts) in clocks {
                    s.message(clock_snapshot::CLOCKS, |c| {
                        c.uint(clock_snapshot::clock::CLOCK_ID, id)
                            .uint(clock_snapshot::clock::TIMESTAMP, ts);
                    });
                }
            });
        })
    }

    /// The process and `threads` (`tid`, `pid`, name) at `ts_ns`.
    fn process_tree(&mut self, ts_ns: u64, threads: &[(u32, u32, String)]) -> Result<()> {
        let process = std::mem::take(&mut self.process);
        let written = self.emit(Some(ts_ns), |p| {
            p.message(packet::PROCESS_TREE, |t| {
                t.message(process_tree::PROCESSES, |m| {
                    m.int(process_tree::process::PID, process.pid.into());
                    if let Some(ppid) = process.ppid {
                        m.int(process_tree::process::PPID, ppid.into());
                    }
                    for arg in &process.cmdline {
                        m.string(process_tree::process::CMDLINE, arg);
                    }
                });
                for (tid, pid, name) in threads {
                    t.message(process_tree::THREADS, |m| {
                        m.int(process_tree::thread::TID, (*tid).into());
                        string_if_any(m, process_tree::thread::NAME, name);
                        m.int(process_tree::thread::TGID, (*pid).into());
                    });
                }
            });
        });
        self.process = process;
        written
    }

    /// The track of thread `tid`, described in the trace the first time it is needed.
    fn track(&mut self, pid: u32, tid: u32) -> Result<u64> {
        if let Some(&uuid) = self.tracks.get(&tid) {
            return Ok(uuid);
        }
        let uuid = self.next_uuid;
        self.next_uuid += 1;
        self.tracks.insert(tid, uuid);
        self.emit(None, |p| {
            p.message(packet::TRACK_DESCRIPTOR, |d| {
                d.uint(track_descriptor::UUID, uuid)
                    .message(track_descriptor::THREAD, |t| {
                        t.int(track_descriptor::thread::PID, pid.into())
                            .int(track_descriptor::thread::TID, tid.into());
                    });
            });
        })?;
        Ok(uuid)
    }

    /// A `TrackEvent` on the track of thread `tid` of process `pid`.
    fn mark(&mut self, pid: u32, tid: u32, ts_ns: u64, mark: &Mark<'_>) -> Result<()> {
        let uuid = self.track(pid, tid)?;
        self.emit(Some(ts_ns), |p| {
            p.message(packet::TRACK_EVENT, |e| {
                e.uint(track_event::TYPE, mark.kind)
                    .uint(track_event::TRACK_UUID, uuid);
                if !mark.name.is_empty() {
                    e.string(track_event::CATEGORIES, mark.category)
                        .string(track_event::NAME, mark.name);
                }
                for (name, value) in mark.args {
                    e.message(track_event::DEBUG_ANNOTATIONS, |a| {
                        a.string(debug_annotation::NAME, name);
                        match *value {
                            Arg::Uint(v) => a.uint(debug_annotation::UINT_VALUE, v),
                            Arg::Int(v) => a.int(debug_annotation::INT_VALUE, v),
                            Arg::Bool(v) => a.bool(debug_annotation::BOOL_VALUE, v),
                            Arg::Str(v) => a.string(debug_annotation::STRING_VALUE, v),
                            Arg::Pointer(v) => a.uint(debug_annotation::POINTER_VALUE, v),
                        };
                    });
                }
                if let Some(flow) = mark.flow_out {
                    e.fixed64(track_event::FLOW_IDS, flow);
                }
                if let Some(flow) = mark.flow_in {
                    e.fixed64(track_event::TERMINATING_FLOW_IDS, flow);
                }
            });
        })
    }

    /// Adds an ftrace event recorded on `cpu` while task `pid` ran; `fill` adds its payload.
    fn ftrace(
        &mut self,
        cpu: u32,
        ts_ns: u64,
        pid: u32,
        fill: impl FnOnce(&mut Message),
    ) -> Result<()> {
        let ts = self.boot_ns(ts_ns);
        let cpu = cpu as usize;
        if self.cpus.len() <= cpu {
            self.cpus.resize_with(cpu + 1, Message::new);
        }
        let events = &mut self.cpus[cpu];
        events.message(bundle::EVENT, |e| {
            e.uint(ftrace::TIMESTAMP, ts).uint(ftrace::PID, pid.into());
            fill(e);
        });
        if events.len() >= BUNDLE_BYTES {
            self.flush_cpu(cpu)?;
        }
        Ok(())
    }

    /// A `sched_waking` (or `sched_wakeup_new`) ftrace event at `ts_ns`, recorded while the
    /// waker ran.
    fn waking(&mut self, e: &Wakeup, ts_ns: u64, table: &ThreadTable) -> Result<()> {
        let field = if e.header.kind == EventKind::Waking as u32 {
            ftrace::SCHED_WAKING
        } else {
            ftrace::SCHED_WAKEUP_NEW
        };
        let wakee = table.get(e.tid).map(|t| t.comm.as_str());
        self.ftrace(e.header.cpu, ts_ns, e.current_tid, |m| {
            m.message(field, |w| {
                if let Some(c) = wakee {
                    string_if_any(w, ftrace::waking::COMM, c);
                }
                w.int(ftrace::waking::PID, e.tid.into())
                    .int(ftrace::waking::PRIO, e.prio.into())
                    .int(ftrace::waking::SUCCESS, 1)
                    .int(ftrace::waking::TARGET_CPU, e.target_cpu.into());
            });
        })
    }

    /// Writes the ftrace events waiting for `cpu` as one bundle.
    fn flush_cpu(&mut self, cpu: usize) -> Result<()> {
        if self.cpus[cpu].is_empty() {
            return Ok(());
        }
        let mut events = std::mem::take(&mut self.cpus[cpu]);
        let written = self.emit(None, |p| {
            p.message(packet::FTRACE_EVENTS, |b| {
                b.uint(bundle::CPU, cpu as u64).raw(events.as_bytes());
            });
        });
        events.clear();
        self.cpus[cpu] = events;
        written
    }
}

/// Strings are left out when empty: Perfetto would take an empty name as a name.
fn string_if_any(m: &mut Message, field: u32, value: &str) {
    if !value.is_empty() {
        m.string(field, value);
    }
}

/// A futex op as it reads in `linux/futex.h`, e.g. `WAIT_BITSET_PRIVATE`.
fn futex_op_label(op: u32) -> String {
    let name = futex_op_name(op);
    if op != FUTEX_WAITV_OP && op & FUTEX_PRIVATE != 0 {
        format!("{name}_PRIVATE")
    } else {
        name.to_owned()
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `CLOCK_BOOTTIME - CLOCK_MONOTONIC` (the time the machine spent suspended), read between two
/// monotonic readings.
fn boot_offset_ns() -> u64 {
    let before = clock_ns(libc::CLOCK_MONOTONIC);
    let boot = clock_ns(libc::CLOCK_BOOTTIME);
    let after = clock_ns(libc::CLOCK_MONOTONIC);
    boot.saturating_sub(before / 2 + after / 2)
}

/// `sysname`, `version`, `release`, `machine` of this kernel.
fn uname() -> [String; 4] {
    // SAFETY: `utsname` is plain data; `uname` fills it or fails, leaving it zeroed.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a `utsname`.
    unsafe { libc::uname(&mut uts) };
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field.iter().map(|&c| c as u8).collect();
        comm_to_string(&bytes)
    };
    [
        text(&uts.sysname),
        text(&uts.version),
        text(&uts.release),
        text(&uts.machine),
    ]
}

/// The parent of process `pid`, from `/proc/PID/stat`.
fn parent_of(pid: u32) -> Option<u32> {
    let stat = crate::kernel::procfs::read_text(format!("/proc/{pid}/stat")).ok()?;
    // `pid (comm) state ppid ...`; the name may contain anything, so split after its last `)`.
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The arguments of process `pid`, from `/proc/PID/cmdline`.
fn command_line(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|&b| b == 0)
                .filter(|arg| !arg.is_empty())
                .map(|arg| String::from_utf8_lossy(arg).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    //! The writer's choices, read back with a minimal protobuf reader. The integration tests
    //! decode whole traces with Perfetto's own protos.

    use tracer_common::event::{FutexWait, Header, Switch};

    use super::*;
    use crate::capture::summary::{Counters, SCHEMA, ThreadSummary};

    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Value<'a> {
        Int(u64),
        Bytes(&'a [u8]),
    }

    fn varint(buf: &mut &[u8]) -> u64 {
        let mut value = 0;
        for shift in (0..64).step_by(7) {
            let byte = buf[0];
            *buf = &buf[1..];
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                break;
            }
        }
        value
    }

    fn fields(mut buf: &[u8]) -> Vec<(u32, Value<'_>)> {
        let mut out = Vec::new();
        while !buf.is_empty() {
            let key = varint(&mut buf);
            let value = match key & 7 {
                0 => Value::Int(varint(&mut buf)),
                1 => {
                    let (v, rest) = buf.split_at(8);
                    buf = rest;
                    Value::Int(u64::from_le_bytes(v.try_into().unwrap()))
                }
                2 => {
                    let n = varint(&mut buf) as usize;
                    let (v, rest) = buf.split_at(n);
                    buf = rest;
                    Value::Bytes(v)
                }
                other => panic!("wire type {other}"),
            };
            out.push(((key >> 3) as u32, value));
        }
        out
    }

    fn get<'a>(fields: &[(u32, Value<'a>)], number: u32) -> Option<Value<'a>> {
        fields.iter().find(|(n, _)| *n == number).map(|(_, v)| *v)
    }

    fn int(fields: &[(u32, Value<'_>)], number: u32) -> Option<u64> {
        match get(fields, number)? {
            Value::Int(v) => Some(v),
            Value::Bytes(_) => None,
        }
    }

    fn message<'a>(fields: &[(u32, Value<'a>)], number: u32) -> Option<Vec<(u32, Value<'a>)>> {
        match get(fields, number)? {
            Value::Bytes(b) => Some(self::fields(b)),
            Value::Int(_) => None,
        }
    }

    fn header(kind: EventKind, cpu: u32, ts_ns: u64) -> Header {
        Header {
            kind: kind as u32,
            cpu,
            ts_ns,
        }
    }

    fn switch(cpu: u32, ts_ns: u64, prev_tid: u32, prev_state: u64, next_tid: u32) -> Event {
        Event::Switch(Switch {
            header: header(EventKind::Switch, cpu, ts_ns),
            prev_tid,
            prev_tgid: 0,
            next_tid,
            next_tgid: 0,
            prev_state,
            prev_prio: 120,
            next_prio: 120,
            voluntary: 0,
            _pad: 0,
        })
    }

    #[test]
    fn a_capture_reads_back_as_perfetto_expects_it() {
        let dir = std::env::temp_dir().join(format!("tracer-perfetto-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("unit.pftrace");
        let mut table = ThreadTable::default();
        table.add_existing(100, 100, "main".into());
        table.add_existing(100, 101, "worker".into());
        let mut w = TraceWriter::create(&path).unwrap();
        w.boot_offset_ns = 0;
        let argv = [OsString::from("prog"), OsString::from("arg")];
        w.begin(100, Some(&argv), 5, &table).unwrap();
        let events = [
            // main leaves cpu 0 to a task outside the capture; the worker runs on cpu 1.
            switch(0, 10, 100, 0x1, 555),
            switch(1, 15, 0, 0, 101),
            // The worker is woken (by a task outside the capture) while it still runs.
            Event::Wakeup(Wakeup {
                header: header(EventKind::Waking, 0, 20),
                tid: 101,
                tgid: 100,
                current_tid: 555,
                target_cpu: 1,
                prio: 120,
                new_task: 0,
            }),
            Event::FutexWait(FutexWait {
                header: header(EventKind::FutexWait, 1, 30),
                tid: 101,
                tgid: 100,
                uaddr: 0x7f00_1000,
                start_ns: 12,
                op: 128,
                nr_futexes: 1,
                ret: 0,
            }),
            switch(1, 25, 101, 0x1, 0),
            switch(1, 35, 0, 0, 101),
            // Preempted: written as Perfetto's TASK_REPORT_MAX whatever this kernel's is.
            switch(1, 40, 101, 0x400, 0),
        ];
        for event in &events {
            w.write(event, &table).unwrap();
        }
        let summary = Summary {
            schema: SCHEMA,
            pid: 100,
            command: "prog arg".into(),
            process: "prog".into(),
            started_ns: 5,
            duration_ns: 50,
            lost_events: 0,
            lost_events_by_kind: Default::default(),
            threads: table
                .iter()
                .map(|t| ThreadSummary::new(t, Counters::default()))
                .collect(),
            deadlocks: Vec::new(),
            python: None,
        };
        w.finish(&summary, &table).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        let trace = fields(&bytes);
        assert!(trace.iter().all(|(n, _)| *n == schema::trace::PACKET));
        let packets: Vec<_> = trace
            .iter()
            .map(|(_, v)| match v {
                Value::Bytes(b) => fields(b),
                Value::Int(_) => panic!("a packet is a message"),
            })
            .collect();
        assert!(
            packets
                .iter()
                .all(|p| { int(p, packet::TRUSTED_PACKET_SEQUENCE_ID) == Some(SEQUENCE_ID) })
        );
        assert!(message(&packets[0], packet::SYSTEM_INFO).is_some());
        assert_eq!(
            int(&packets[0], packet::SEQUENCE_FLAGS),
            Some(packet::SEQ_INCREMENTAL_STATE_CLEARED)
        );

        // Ftrace events by timestamp: (ts, pid, event field, event).
        let mut ftrace_events = Vec::new();
        for p in &packets {
            let Some(bundle) = message(p, packet::FTRACE_EVENTS) else {
                continue;
            };
            for (n, v) in &bundle {
                if *n == bundle::EVENT {
                    let Value::Bytes(b) = v else { panic!() };
                    let e = fields(b);
                    let (kind, body) = e
                        .iter()
                        .find(|(n, _)| *n > ftrace::PID && *n != 5)
                        .map(|(n, v)| match v {
                            Value::Bytes(b) => (*n, fields(b)),
                            Value::Int(_) => panic!(),
                        })
                        .unwrap();
                    let ts = int(&e, ftrace::TIMESTAMP).unwrap();
                    ftrace_events.push((ts, int(&e, ftrace::PID).unwrap(), kind, body));
                }
            }
        }
        ftrace_events.sort_by_key(|e| e.0);
        let at = |ts: u64| ftrace_events.iter().find(|e| e.0 == ts).unwrap();

        // The task outside the capture is the idle task, with no name to take.
        let (_, pid, kind, body) = at(10);
        assert_eq!((*pid, *kind), (100, ftrace::SCHED_SWITCH));
        assert_eq!(int(body, ftrace::switch::NEXT_PID), Some(0));
        assert!(get(body, ftrace::switch::NEXT_COMM).is_none());
        assert_eq!(
            get(body, ftrace::switch::PREV_COMM),
            Some(Value::Bytes(b"main"))
        );
        // The waking that came while the worker still ran is written just after its switch.
        let (_, waker, kind, body) = at(26);
        assert_eq!((*waker, *kind), (555, ftrace::SCHED_WAKING));
        assert_eq!(int(body, ftrace::waking::PID), Some(101));
        let states = ftrace_events
            .iter()
            .filter(|e| e.2 == ftrace::SCHED_SWITCH)
            .map(|e| int(&e.3, ftrace::switch::PREV_STATE).unwrap())
            .collect::<Vec<_>>();
        assert_eq!(states, [1, 0, 1, 0, PREEMPTED]);

        // The futex wait is a slice on the worker's track, with its address and op.
        let tracks: HashMap<u64, u64> = packets
            .iter()
            .filter_map(|p| message(p, packet::TRACK_DESCRIPTOR))
            .map(|d| {
                let thread = message(&d, track_descriptor::THREAD).unwrap();
                (
                    int(&d, track_descriptor::UUID).unwrap(),
                    int(&thread, track_descriptor::thread::TID).unwrap(),
                )
            })
            .collect();
        let slices: Vec<_> = packets
            .iter()
            .filter_map(|p| Some((int(p, packet::TIMESTAMP)?, message(p, packet::TRACK_EVENT)?)))
            .filter(|(_, e)| int(e, track_event::TYPE) != Some(track_event::TYPE_INSTANT))
            .collect();
        assert_eq!(slices.len(), 2);
        let (begin_ts, begin) = &slices[0];
        assert_eq!(*begin_ts, 12);
        assert_eq!(tracks[&int(begin, track_event::TRACK_UUID).unwrap()], 101);
        assert_eq!(
            get(begin, track_event::NAME),
            Some(Value::Bytes(b"futex wait"))
        );
        let annotations: Vec<_> = begin
            .iter()
            .filter(|(n, _)| *n == track_event::DEBUG_ANNOTATIONS)
            .map(|(_, v)| match v {
                Value::Bytes(b) => fields(b),
                Value::Int(_) => panic!(),
            })
            .collect();
        assert_eq!(
            get(&annotations[0], debug_annotation::NAME),
            Some(Value::Bytes(b"uaddr"))
        );
        assert_eq!(
            int(&annotations[0], debug_annotation::POINTER_VALUE),
            Some(0x7f00_1000)
        );
        assert_eq!(
            get(&annotations[1], debug_annotation::STRING_VALUE),
            Some(Value::Bytes(b"WAIT_PRIVATE"))
        );
        assert_eq!(slices[1].0, 30);

        // The last process tree names every thread.
        let trees: Vec<_> = packets
            .iter()
            .filter_map(|p| message(p, packet::PROCESS_TREE))
            .collect();
        assert_eq!(trees.len(), 2);
        let names: Vec<_> = trees[1]
            .iter()
            .filter(|(n, _)| *n == process_tree::THREADS)
            .map(|(_, v)| match v {
                Value::Bytes(b) => get(&fields(b), process_tree::thread::NAME).unwrap(),
                Value::Int(_) => panic!(),
            })
            .collect();
        assert_eq!(names, [Value::Bytes(b"main"), Value::Bytes(b"worker")]);
    }
}
