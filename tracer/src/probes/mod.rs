//! Loading tracer's eBPF programs, attaching them, and reading what they keep.

mod batch;
pub mod fields;

use std::time::Duration;

use aya::{
    Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, TracePoint},
};
use tracer_common::{
    event::EventKind,
    fields::{Fields, Settings},
    names,
    thread::{ThreadStats, state},
};

use crate::{
    error::{Error, Result},
    kernel::{monotonic_ns, tracefs},
};

/// The eBPF object built by `build.rs`, embedded in the binary.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tracer.bpf.o"));

/// BTF tracepoints: program and tracepoint name (the same), and the tracepoint's group, in
/// attach order: lifecycle first, so that no thread is created unseen once scheduling events
/// flow.
const BTF_TRACEPOINTS: [(&str, &str); 7] = [
    ("task_newtask", "task"),
    ("task_rename", "task"),
    ("sched_process_exit", "sched"),
    ("sched_wakeup_new", "sched"),
    ("sched_waking", "sched"),
    ("sched_wakeup", "sched"),
    ("sched_switch", "sched"),
];

/// Syscall tracepoints, by program and tracepoint name (the same).
const SYSCALL_TRACEPOINTS: [&str; 4] = [
    "sys_enter_futex",
    "sys_exit_futex",
    "sys_enter_futex_waitv",
    "sys_exit_futex_waitv",
];

/// How the programs are loaded.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Trace only the processes given to [`Probes::track_process`] (a capture), or every
    /// thread on the machine (the daemon).
    pub filtered: bool,
    /// Event kinds to stream through the ring buffer.
    pub stream: &'static [EventKind],
    /// Capacity of the per-thread map.
    pub max_threads: u32,
    /// Whether futex waits are traced.
    pub futex: bool,
}

/// tracer's programs, loaded into the kernel.
pub struct Probes {
    ebpf: Ebpf,
    fields: Fields,
    /// Whether `sched_waking` events are wanted: its program only streams them.
    wakers: bool,
    /// Whether `sched_wakeup` and `sched_wakeup_new` are attached (see [`wants_wakeups`]).
    wakeups: bool,
    /// Whether the futex programs (syscall tracepoints) are loaded and attached.
    futex_syscalls: bool,
}

impl Probes {
    /// Reads this kernel's tracepoint layouts (mounting tracefs if needed) and loads the
    /// programs through the verifier. Nothing is attached yet.
    pub fn load(options: Options) -> Result<Self> {
        let root = tracefs::root()?;
        let fields = fields::read(&root)?;
        raise_memlock_limit();
        let at_switch = futex_at_switch(&options, &fields);
        match Self::load_with(&options, fields, at_switch) {
            // `bpf_task_pt_regs` came in Linux 5.15: older kernels trace futex waits with
            // the syscall tracepoints instead.
            Err(e) if at_switch => Self::load_with(&options, fields, false).map_err(|_| e),
            loaded => loaded,
        }
    }

    /// Loads the programs, with futex waits seen at `sched_switch` when `futex_at_switch`,
    /// else (if wanted at all) by the syscall tracepoints.
    fn load_with(options: &Options, fields: Fields, futex_at_switch: bool) -> Result<Self> {
        let wakeups = wants_wakeups(options);
        let futex_syscalls = options.futex && !futex_at_switch;
        let settings = Settings {
            filtered: u32::from(options.filtered),
            stream: options
                .stream
                .iter()
                .fold(0, |mask, kind| mask | kind.bit()),
            wakeups: u32::from(wakeups),
            kernel_counts: u32::from(kernel_counts(options)),
            futex_at_switch: u32::from(futex_at_switch),
        };
        let mut ebpf = EbpfLoader::new()
            .override_global(names::FIELDS, &fields, true)
            .override_global(names::SETTINGS, &settings, true)
            .map_max_entries(names::THREADS, options.max_threads)
            .load(OBJECT)
            .map_err(|e| Error::Load(error_chain(&e)))?;
        let btf = aya::Btf::from_sys_fs().map_err(|e| Error::Load(error_chain(&e)))?;
        for (name, _) in BTF_TRACEPOINTS {
            let program: &mut BtfTracePoint = program_mut(&mut ebpf, name)?;
            program
                .load(name, &btf)
                .map_err(|e| Error::Load(format!("{name}: {}", error_chain(&e))))?;
        }
        for name in syscall_programs(futex_syscalls, &fields) {
            let program: &mut TracePoint = program_mut(&mut ebpf, name)?;
            program
                .load()
                .map_err(|e| Error::Load(format!("{name}: {}", error_chain(&e))))?;
        }
        let wakers = options.stream.contains(&EventKind::Waking);
        Ok(Self {
            ebpf,
            fields,
            wakers,
            wakeups,
            futex_syscalls,
        })
    }

    /// Starts tracing process `tgid`: its threads `tids` now, and every thread it creates.
    /// `flags` ([`tracer_common::thread::BORN_TRACED`]) apply to the threads in `tids`.
    pub fn track_process(&mut self, tgid: u32, tids: &[u32], flags: u32) -> Result<()> {
        let mut processes: Array<_, u64> = self.map_mut(names::PROCESSES)?;
        let (word, bit) = tracer_common::process_bit(tgid);
        processes
            .get(&word, 0)
            .and_then(|bits| processes.set(word, bits | bit, 0))
            .map_err(|e| Error::Load(format!("tracking process {tgid}: {}", error_chain(&e))))?;
        let now = monotonic_ns();
        let mut threads: HashMap<_, u32, ThreadStats> = self.map_mut(names::THREADS)?;
        for &tid in tids {
            // A thread already seen (by a new-task event) keeps its state. One asleep now
            // starts blocked: were its wakeup not reported (the kernel, rarely, reports
            // none), its first switch in would otherwise count the time since now as a
            // run-queue wait.
            if threads.get(&tid, 0).is_err() {
                let known = if crate::kernel::procfs::thread_is_runnable(tgid, tid) {
                    state::UNKNOWN
                } else {
                    state::BLOCKED
                };
                let mut stats = ThreadStats::new(tgid, known, now);
                stats.flags = flags;
                threads.insert(tid, stats, 0).map_err(|e| {
                    Error::Load(format!("tracking thread {tid}: {}", error_chain(&e)))
                })?;
            }
        }
        Ok(())
    }

    /// Attaches every program to its tracepoint.
    pub fn attach(&mut self) -> Result<()> {
        let failed = |name: &str, category: &str, e: &dyn std::error::Error| Error::Attach {
            program: name.into(),
            category: category.into(),
            name: name.into(),
            message: error_chain(e),
        };
        for (name, group) in BTF_TRACEPOINTS {
            let skipped = match name {
                "sched_waking" => !self.wakers,
                "sched_wakeup" | "sched_wakeup_new" => !self.wakeups,
                _ => false,
            };
            if skipped {
                continue;
            }
            let program: &mut BtfTracePoint = program_mut(&mut self.ebpf, name)?;
            program.attach().map_err(|e| failed(name, group, &e))?;
        }
        for name in syscall_programs(self.futex_syscalls, &self.fields) {
            let program: &mut TracePoint = program_mut(&mut self.ebpf, name)?;
            program
                .attach("syscalls", name)
                .map_err(|e| failed(name, "syscalls", &e))?;
        }
        Ok(())
    }

    /// The ring buffer of events. Call once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| Error::Load("map EVENTS missing".into()))?;
        RingBuf::try_from(map).map_err(|e| Error::Load(error_chain(&e)))
    }

    /// What the programs keep for thread `tid`.
    pub fn thread(&self, tid: u32) -> Option<ThreadStats> {
        let threads: HashMap<_, u32, ThreadStats> = self.map(names::THREADS).ok()?;
        threads.get(&tid, 0).ok()
    }

    /// Calls `f` with every thread in the kernel map.
    pub fn for_each_thread(&self, mut f: impl FnMut(u32, &ThreadStats)) {
        if let Some(aya::maps::Map::HashMap(data)) = self.ebpf.map(names::THREADS) {
            use std::os::fd::{AsFd as _, AsRawFd as _};
            let fd = data.fd().as_fd().as_raw_fd();
            let mut seen = 0usize;
            match batch::for_each(fd, 1024, |tid, stats| {
                seen += 1;
                f(tid, stats);
            }) {
                Ok(()) => return,
                // Without batch lookups, fall back to one entry at a time (from the start,
                // so only when nothing was handed out yet).
                Err(_) if seen == 0 => {}
                Err(_) => return,
            }
        }
        let Ok(threads) = self.map::<HashMap<_, u32, ThreadStats>>(names::THREADS) else {
            return;
        };
        for (tid, stats) in threads.iter().flatten() {
            f(tid, &stats);
        }
    }

    /// Sets (or with `None` forgets) the CPython GIL's address range of process `tgid`: its
    /// threads' futex waits there are counted as GIL waits.
    pub fn set_gil(&mut self, tgid: u32, range: Option<std::ops::Range<u64>>) {
        if let Ok(mut gil) = self.map_mut::<HashMap<_, u32, [u64; 2]>>(names::GIL) {
            let _ = match range {
                Some(r) => gil.insert(tgid, [r.start, r.end], 0),
                None => gil.remove(&tgid),
            };
        }
    }

    /// Forgets thread `tid` in the kernel map (after it exited and was accounted for).
    pub fn remove_thread(&mut self, tid: u32) {
        if let Ok(mut threads) = self.map_mut::<HashMap<_, u32, ThreadStats>>(names::THREADS) {
            let _ = threads.remove(&tid);
        }
    }

    /// Run time and run count of each program, as the kernel counts them while
    /// `kernel.bpf_stats_enabled` is 1.
    pub fn program_stats(&self) -> Vec<(String, Duration, u64)> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some((name.to_owned(), info.run_time(), info.run_count()))
            })
            .collect()
    }

    /// The threads on a CPU when last switched to, in kernel-counts mode (see
    /// [`Settings::kernel_counts`]): their kernel counters may have grown since their last
    /// switch out. Empty in other modes.
    pub fn threads_on_cpu(&self) -> Vec<u32> {
        let Ok(map) = self.map::<PerCpuArray<_, u32>>(names::ON_CPU) else {
            return Vec::new();
        };
        map.get(&0, 0)
            .map(|per_cpu| per_cpu.iter().copied().filter(|&tid| tid != 0).collect())
            .unwrap_or_default()
    }

    /// Events lost, by kind (index: `EventKind as usize`): those that did not fit in the ring
    /// buffer, and runs of a program that the kernel skipped (it runs no program on a CPU
    /// where the same one is already running, and counts the skipped runs as recursion
    /// misses), whose events were never seen at all.
    pub fn lost(&self) -> [u64; EventKind::COUNT as usize] {
        let mut lost = [0; EventKind::COUNT as usize];
        if let Ok(map) = self.map::<PerCpuArray<_, u64>>(names::LOST) {
            for (i, slot) in lost.iter_mut().enumerate() {
                if let Ok(per_cpu) = map.get(&(i as u32), 0) {
                    *slot = per_cpu.iter().sum();
                }
            }
        }
        for (name, program) in self.ebpf.programs() {
            if let Some(kind) = program_kind(name)
                && let Ok(fd) = program.fd()
            {
                use std::os::fd::{AsFd as _, AsRawFd as _};
                lost[kind as usize] += recursion_misses(fd.as_fd().as_raw_fd());
            }
        }
        lost
    }

    fn map<'a, M>(&'a self, name: &str) -> Result<M>
    where
        M: TryFrom<&'a aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map(name)
            .ok_or_else(|| Error::Load(format!("map {name} missing from the object")))?;
        M::try_from(map).map_err(|e| Error::Load(format!("map {name}: {}", error_chain(&e))))
    }

    fn map_mut<'a, M>(&'a mut self, name: &str) -> Result<M>
    where
        M: TryFrom<&'a mut aya::maps::Map, Error = aya::maps::MapError>,
    {
        let map = self
            .ebpf
            .map_mut(name)
            .ok_or_else(|| Error::Load(format!("map {name} missing from the object")))?;
        M::try_from(map).map_err(|e| Error::Load(format!("map {name}: {}", error_chain(&e))))
    }
}

/// How often the ring buffer is drained when the programs did not ask for it sooner.
pub const DRAIN_INTERVAL: Duration = Duration::from_millis(25);

/// How long to keep reading after a capture stops, for events still in flight
/// (a thread's last switch comes after its exit event).
pub const DRAIN_GRACE: Duration = Duration::from_millis(50);

/// Whether `sched_wakeup` and `sched_wakeup_new` are needed: for off-CPU time (a capture's
/// summary) or their events. The daemon needs neither: the kernel's own counters, read at
/// every switch, give it run-queue time and each run-queue wait, and a thread that sleeps
/// and wakes often then pays for one probe where it paid for two.
fn wants_wakeups(options: &Options) -> bool {
    options.filtered || options.stream.contains(&EventKind::Wakeup)
}

/// Whether `sched_switch` can leave all counting to the kernel (see
/// [`Settings::kernel_counts`]): when every thread is traced for its aggregates alone, as the
/// daemon does. A capture needs the programs' own states, for off-CPU time and its events.
fn kernel_counts(options: &Options) -> bool {
    !options.filtered && !options.stream.contains(&EventKind::Switch) && !wants_wakeups(options)
}

/// The syscall tracepoint programs to load and attach: the futex ones when `futex_syscalls`,
/// those of `futex_waitv` only on kernels that have it.
fn syscall_programs(futex_syscalls: bool, fields: &Fields) -> impl Iterator<Item = &'static str> {
    let waitv = fields.waitv_waiters != 0;
    SYSCALL_TRACEPOINTS
        .into_iter()
        .filter(move |name| futex_syscalls && (waitv || !name.ends_with("waitv")))
}

/// Whether futex waits are wanted and can be seen at `sched_switch` (see
/// [`Settings::futex_at_switch`]): in kernel-counts mode, when no futex event is streamed (those carry each call's result,
/// which only the syscall tracepoints see) and tracer knows where this architecture saves a
/// thread's system call number. The syscall tracepoints are then left out: while one is
/// attached, every system call of every thread takes the kernel's slower path.
fn futex_at_switch(options: &Options, fields: &Fields) -> bool {
    options.futex
        && kernel_counts(options)
        && !options.stream.contains(&EventKind::FutexWait)
        && fields.sys_futex != 0
}

/// The kind of event program `name` records.
fn program_kind(name: &str) -> Option<EventKind> {
    Some(match name {
        "task_newtask" => EventKind::ThreadCreated,
        "task_rename" => EventKind::ThreadRenamed,
        "sched_process_exit" => EventKind::ThreadExited,
        "sched_switch" => EventKind::Switch,
        "sched_wakeup" | "sched_wakeup_new" => EventKind::Wakeup,
        "sched_waking" => EventKind::Waking,
        name if name.contains("futex") => EventKind::FutexWait,
        _ => return None,
    })
}

/// The `recursion_misses` the kernel shows for the program behind `fd` (0 where unknown).
fn recursion_misses(fd: std::os::fd::RawFd) -> u64 {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|line| line.strip_prefix("recursion_misses:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Program `name` of the object, as its type `P`.
fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Load(format!("program {name} missing from the object")))?
        .try_into()
        .map_err(|e| Error::Load(format!("{name}: {}", error_chain(&e))))
}

/// Kernels before 5.11 charge BPF memory to `RLIMIT_MEMLOCK`; lift it where allowed.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit; failure leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
}

/// An error and its causes, joined by `: `.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFECYCLE: [EventKind; 3] = [
        EventKind::ThreadCreated,
        EventKind::ThreadExited,
        EventKind::ThreadRenamed,
    ];

    fn options(filtered: bool, stream: &'static [EventKind]) -> Options {
        Options {
            filtered,
            stream,
            max_threads: 1024,
            futex: true,
        }
    }

    #[test]
    fn futex_waits_are_seen_at_switch_only_by_an_unfiltered_aggregating_trace() {
        let known = Fields {
            sys_futex: 202,
            ..Fields::UNSET
        };
        // The daemon: every thread, lifecycle events only.
        assert!(futex_at_switch(&options(false, &LIFECYCLE), &known));
        // A capture needs each call's result, and its own states.
        assert!(!futex_at_switch(&options(true, &EventKind::ALL), &known));
        assert!(!futex_at_switch(
            &options(false, &[EventKind::FutexWait]),
            &known
        ));
        // Not wanted at all (`futex_waits = false`).
        let unwanted = Options {
            futex: false,
            ..options(false, &LIFECYCLE)
        };
        assert!(!futex_at_switch(&unwanted, &known));
        // Unknown saved registers: the syscall tracepoints.
        assert!(!futex_at_switch(
            &options(false, &LIFECYCLE),
            &Fields::UNSET
        ));
    }
}
