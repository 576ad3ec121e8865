//! `tracer record`: one capture of one process, from attach to its end.

pub mod launch;

use std::{
    ffi::OsString,
    os::fd::{FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{SignalKind, signal},
};
use tracer_common::{event::EventKind, thread::BORN_TRACED};

use crate::{
    capture::{
        blocked,
        events::Event,
        jsonl::EventWriter,
        perfetto::TraceWriter,
        summary::{Counters, PythonSummary, SCHEMA, Summary, ThreadSummary},
        table,
        threads::ThreadTable,
    },
    error::{Error, Result},
    kernel::{monotonic_ns, privileges, procfs, raise_reader_priority},
    naming::{self, Identity},
    probes::{self, DRAIN_GRACE, Options, Probes},
    python::{
        memory::ProcessMemory,
        watch::{Names, Tracker},
    },
};

/// What to record and where to put it.
#[derive(Debug, Clone)]
pub struct Request {
    pub target: Target,
    pub duration: Option<Duration>,
    /// Files to write, each in the format its extension names.
    pub outputs: Vec<PathBuf>,
}

/// The process a capture follows.
#[derive(Debug, Clone)]
pub enum Target {
    /// A running process.
    Pid(u32),
    /// A command started once the probes are attached.
    Command(Vec<OsString>),
}

/// The files a capture writes, by their extension.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputKind {
    Summary,
    Events,
    Perfetto,
}

impl OutputKind {
    /// The format of `path`, from its extension.
    pub fn of(path: &Path) -> Result<Self> {
        match path.extension().and_then(|e| e.to_str()) {
            Some("json") => Ok(Self::Summary),
            Some("jsonl") => Ok(Self::Events),
            Some("pftrace") => Ok(Self::Perfetto),
            _ => Err(Error::OutputFormat(path.to_owned())),
        }
    }
}

/// The files of one capture, at most one per format.
#[derive(Debug, Default)]
struct Outputs {
    summary: Option<PathBuf>,
    events: Option<PathBuf>,
    perfetto: Option<PathBuf>,
}

impl Outputs {
    fn plan(paths: &[PathBuf]) -> Result<Self> {
        let mut outputs = Self::default();
        for path in paths {
            let slot = match OutputKind::of(path)? {
                OutputKind::Summary => &mut outputs.summary,
                OutputKind::Events => &mut outputs.events,
                OutputKind::Perfetto => &mut outputs.perfetto,
            };
            if slot.replace(path.clone()).is_some() {
                return Err(Error::DuplicateOutput(path.clone()));
            }
        }
        Ok(outputs)
    }
}

/// Fails early when `path` cannot be written, without truncating what is there.
fn check_writable(path: &Path) -> Result<()> {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map(drop)
        .map_err(|source| Error::Output {
            path: path.to_owned(),
            source,
        })
}

/// Why a capture ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    TargetExited,
    Duration,
    Signal(&'static str),
}

/// Runs a capture and writes its outputs; returns the summary.
pub fn run(request: Request) -> Result<Summary> {
    let outputs = Outputs::plan(&request.outputs)?;
    privileges::require_tracing("record")?;
    // The command is forked before any other thread exists in this process.
    let held = match &request.target {
        Target::Pid(pid) => {
            if !procfs::process_exists(*pid) {
                return Err(Error::NoSuchProcess(*pid));
            }
            None
        }
        Target::Command(argv) => Some(launch::hold(argv)?),
    };
    // After the fork: the command keeps the niceness it was given.
    raise_reader_priority();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the event loop", e))?;
    runtime.block_on(capture(request, outputs, held))
}

async fn capture(
    request: Request,
    outputs: Outputs,
    held: Option<launch::Held>,
) -> Result<Summary> {
    let pid = match (&request.target, &held) {
        (_, Some(h)) => h.pid,
        (Target::Pid(pid), None) => *pid,
        (Target::Command(_), None) => unreachable!("a command target is always held"),
    };
    // Open outputs first: a bad path fails before anything is traced.
    let mut events_out = outputs
        .events
        .as_deref()
        .map(EventWriter::create)
        .transpose()?;
    let mut trace_out = outputs
        .perfetto
        .as_deref()
        .map(TraceWriter::create)
        .transpose()?;
    if let Some(path) = &outputs.summary {
        check_writable(path)?;
    }

    let mut probes = Probes::load(Options {
        filtered: true,
        stream: &EventKind::ALL,
        max_threads: 16384,
        futex: true,
    })?;
    let mut table = ThreadTable::default();
    let tids = procfs::threads(pid)?;
    // A command's process is tracer's own child, held since its fork: it is counted whole,
    // from zero, like a thread created during the capture.
    let flags = if held.is_some() { BORN_TRACED } else { 0 };
    probes.track_process(pid, &tids, flags)?;
    probes.attach()?;
    let started_ns = monotonic_ns();
    // Threads created between the listing and the attach were not seen by task_newtask.
    let tids = procfs::threads(pid).unwrap_or(tids);
    probes.track_process(pid, &tids, flags)?;
    for &tid in &tids {
        let comm = procfs::thread_comm(pid, tid).unwrap_or_default();
        table.add_existing(pid, tid, comm);
    }
    let command = match &request.target {
        Target::Command(argv) => argv
            .iter()
            .map(|a| a.to_string_lossy())
            .collect::<Vec<_>>()
            .join(" "),
        Target::Pid(_) => procfs::command_line(pid).unwrap_or_default(),
    };
    let process = process_name(&request.target, pid);
    if let Some(out) = trace_out.as_mut() {
        let argv = match &request.target {
            Target::Command(argv) => Some(argv.as_slice()),
            Target::Pid(_) => None,
        };
        out.begin(pid, argv, started_ns, &table)?;
    }
    // From here on Ctrl-C and SIGTERM end the capture cleanly rather than the process.
    let stops = Stops::new(pid)?;
    // SAFETY: the ring buffer owns its descriptor and keeps it open until it is dropped,
    // which only happens with the `AsyncFd`.
    let mut ring = unsafe { AsyncFd::register(probes.take_events()?) }
        .map_err(|e| Error::io("watching the event ring buffer", e.into()))?;
    if let Some(held) = held {
        held.release()?;
    }
    // Python thread names are read from the process's memory on a thread of their own.
    let mut python = Tracker::start(pid);
    eprintln!(
        "tracer: recording pid {pid} ({} threads at start); Ctrl-C to stop",
        table.len()
    );

    let stop = watch(
        stops,
        &mut ring,
        request.duration,
        &mut table,
        &mut python,
        &mut events_out,
        &mut trace_out,
    )
    .await?;
    let end_ns = monotonic_ns();
    // Events in flight (a thread's final switch comes after its exit event) still count.
    tokio::time::sleep(DRAIN_GRACE).await;
    drain(
        ring.get_mut(),
        &mut table,
        &mut python,
        &mut events_out,
        &mut trace_out,
    )?;

    if stop == Stop::TargetExited
        && matches!(request.target, Target::Command(_))
        && let Some(status) = launch::reap(pid)
    {
        eprintln!(
            "tracer: `{}` {}",
            table::printable(&command),
            launch::describe_status(status)
        );
    }
    let lost = probes.lost();
    let names = python.finish();
    let summary = summarize(
        &probes, &table, &names, pid, command, process, started_ns, end_ns, &lost,
    );
    if let Some(writer) = events_out {
        writer.finish()?;
    }
    if let Some(writer) = trace_out {
        writer.finish(&summary, &table)?;
    }
    if let Some(path) = &outputs.summary {
        summary.write(path)?;
    }
    if let Stop::Signal(name) = stop {
        eprintln!("tracer: stopped by {name}");
    }
    report_lost(&lost);
    if let Some(warning) = names.warning() {
        eprintln!("{warning}");
    }
    print!("{}", table::render(&summary));
    Ok(summary)
}

/// Reads events until the target exits, the duration passes or a signal asks to stop.
/// What ends a capture besides its duration: the target's exit and the stop signals.
struct Stops {
    exited: AsyncFd<OwnedFd>,
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl Stops {
    fn new(pid: u32) -> Result<Self> {
        Ok(Self {
            exited: pidfd(pid)?,
            interrupt: signal(SignalKind::interrupt())
                .map_err(|e| Error::io("handling SIGINT", e))?,
            terminate: signal(SignalKind::terminate())
                .map_err(|e| Error::io("handling SIGTERM", e))?,
        })
    }
}

async fn watch(
    stops: Stops,
    ring: &mut AsyncFd<RingBuf<MapData>>,
    duration: Option<Duration>,
    table: &mut ThreadTable,
    python: &mut Tracker,
    events_out: &mut Option<EventWriter>,
    trace_out: &mut Option<TraceWriter>,
) -> Result<Stop> {
    let Stops {
        exited,
        mut interrupt,
        mut terminate,
    } = stops;
    let deadline = tokio::time::sleep(duration.unwrap_or(Duration::MAX / 4));
    tokio::pin!(deadline);
    // The programs wake us only when the buffer fills up; otherwise it is drained on a timer.
    let mut tick = tokio::time::interval(probes::DRAIN_INTERVAL);
    loop {
        tokio::select! {
            ready = ring.readable_mut() => {
                let mut guard = ready.map_err(|e| Error::io("reading events", e))?;
                drain(guard.get_inner_mut(), table, python, events_out, trace_out)?;
                guard.clear_ready();
            }
            _ = tick.tick() => drain(ring.get_mut(), table, python, events_out, trace_out)?,
            _ = exited.readable() => return Ok(Stop::TargetExited),
            () = &mut deadline, if duration.is_some() => return Ok(Stop::Duration),
            _ = interrupt.recv() => return Ok(Stop::Signal("SIGINT")),
            _ = terminate.recv() => return Ok(Stop::Signal("SIGTERM")),
        }
    }
}

/// Handles every event waiting in the ring buffer.
fn drain(
    ring: &mut RingBuf<MapData>,
    table: &mut ThreadTable,
    python: &mut Tracker,
    events_out: &mut Option<EventWriter>,
    trace_out: &mut Option<TraceWriter>,
) -> Result<()> {
    while let Some(item) = ring.next() {
        let Some(event) = Event::decode(&item) else {
            continue;
        };
        table.apply(&event);
        python.observe(&event);
        if let Some(out) = events_out.as_mut() {
            out.write(&event)?;
        }
        if let Some(out) = trace_out.as_mut() {
            out.write(&event, table)?;
        }
    }
    Ok(())
}

/// The traced process's name by the default rules (see [`crate::naming`]): for a command,
/// from what it is about to exec; for a running process, from /proc.
fn process_name(target: &Target, pid: u32) -> String {
    let identity = match target {
        Target::Command(argv) => {
            let exe = argv
                .first()
                .and_then(|program| launch::resolve(program).ok())
                .and_then(|path| std::fs::canonicalize(path).ok())
                .map(|path| path.to_string_lossy().into_owned())
                .unwrap_or_default();
            let args: Vec<String> = argv
                .iter()
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            // The kernel names the process after the file it execs, cut to 15 bytes.
            let file = args
                .first()
                .map_or("", |p| p.rsplit('/').next().unwrap_or(""));
            let comm = String::from_utf8_lossy(&file.as_bytes()[..file.len().min(15)]).into_owned();
            Identity {
                comm,
                exe,
                args,
                kernel: false,
            }
        }
        Target::Pid(_) => {
            let comm = procfs::thread_comm(pid, pid).unwrap_or_default();
            Identity::of_process(pid, &comm).unwrap_or(Identity {
                comm,
                ..Identity::default()
            })
        }
    };
    naming::default_name(&identity)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    probes: &Probes,
    table: &ThreadTable,
    names: &Names,
    pid: u32,
    command: String,
    process: String,
    started_ns: u64,
    end_ns: u64,
    lost: &[u64],
) -> Summary {
    let memory = ProcessMemory::new(pid);
    let threads: Vec<ThreadSummary> = table
        .iter()
        .map(|info| {
            let alive =
                info.exited_ns.is_none() && procfs::thread_comm(info.pid, info.tid).is_some();
            let mut info = info.clone();
            if let Some(comm) = alive
                .then(|| procfs::thread_comm(info.pid, info.tid))
                .flatten()
            {
                info.comm = comm;
            }
            let stats = probes.thread(info.tid);
            let runnable = alive && procfs::thread_is_runnable(info.pid, info.tid);
            let counters = stats
                .map(|stats| Counters::settle(&stats, end_ns, alive, runnable))
                .unwrap_or_default();
            let mut thread = ThreadSummary::new(&info, counters);
            if alive {
                thread.blocked_ns =
                    blocked::blocked_ns(stats.as_ref(), started_ns, end_ns, !runnable);
            }
            if thread.blocked_ns.is_some()
                && let Some(call) =
                    blocked::futex_call(pid, info.tid, stats.as_ref().map(|s| &s.futex_call))
            {
                thread.waiting_for_tid = blocked::lock_owner(&memory, call, |tid| {
                    table
                        .get(tid)
                        .is_some_and(|t| t.pid == pid && t.exited_ns.is_none())
                        && procfs::thread_group_of(tid).is_ok_and(|tgid| tgid == pid)
                });
            }
            names.label(&mut thread);
            thread
        })
        .collect();
    let waits = threads
        .iter()
        .filter_map(|t| Some((t.tid, t.waiting_for_tid?)))
        .collect();
    Summary {
        schema: SCHEMA,
        pid,
        command,
        process,
        started_ns,
        duration_ns: end_ns.saturating_sub(started_ns),
        lost_events: lost.iter().sum(),
        lost_events_by_kind: EventKind::ALL
            .iter()
            .zip(lost)
            .filter(|&(_, &n)| n > 0)
            .map(|(kind, &n)| (kind.name(), n))
            .collect(),
        deadlocks: blocked::deadlocks(&waits),
        python: names.outcome.version.map(|version| PythonSummary {
            version: version.to_string(),
            free_threaded: names.outcome.free_threaded,
        }),
        threads,
    }
}

fn report_lost(lost: &[u64]) {
    for (kind, &n) in EventKind::ALL.iter().zip(lost) {
        if n == 0 {
            continue;
        }
        if *kind == EventKind::Waking {
            eprintln!(
                "tracer: warning: {n} waking events were lost (the ring buffer was full, or \
                 the kernel ran no program for them); the wakeups themselves were counted"
            );
        } else {
            eprintln!(
                "tracer: warning: {n} {} events were lost (the ring buffer was full)",
                kind.name()
            );
        }
    }
}

/// A descriptor that becomes readable when process `pid` exits.
fn pidfd(pid: u32) -> Result<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ESRCH) {
            return Err(Error::NoSuchProcess(pid));
        }
        return Err(Error::io(
            format!("watching process {pid} (pidfd_open)"),
            err,
        ));
    }
    // SAFETY: a new descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // SAFETY: `OwnedFd` keeps the descriptor open until the `AsyncFd` drops it.
    unsafe { AsyncFd::register(fd) }.map_err(|e| Error::io("watching the target process", e.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_kind_follows_the_extension() {
        assert_eq!(
            OutputKind::of(Path::new("a.json")).unwrap(),
            OutputKind::Summary
        );
        assert_eq!(
            OutputKind::of(Path::new("dir/a.jsonl")).unwrap(),
            OutputKind::Events
        );
        assert_eq!(
            OutputKind::of(Path::new("capture.pftrace")).unwrap(),
            OutputKind::Perfetto
        );
        let err = OutputKind::of(Path::new("a.txt")).unwrap_err().to_string();
        assert!(err.contains(".json, .jsonl or .pftrace"), "{err}");
    }
}
