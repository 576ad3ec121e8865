//! Maps and globals shared by every program, and the helpers that use them.

use aya_ebpf::{
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        generated::{bpf_get_current_task_btf, bpf_task_pt_regs},
    },
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};
use tracer_common::{
    PROCESS_WORDS,
    event::{COMM_LEN, EventKind, Header},
    fields::{Fields, Settings},
    process_bit,
    thread::{Counts, ThreadStats, histogram_bucket, state},
};

/// Tracepoint field and `task_struct` offsets, set by user space at load time.
#[unsafe(no_mangle)]
pub static FIELDS: Fields = Fields::UNSET;

/// What to trace, set by user space at load time.
#[unsafe(no_mangle)]
static SETTINGS: Settings = Settings::UNSET;

#[map]
pub static THREADS: HashMap<u32, ThreadStats> = HashMap::with_max_entries(16384, 0);

#[map]
pub static PROCESSES: Array<u64> = Array::with_max_entries(PROCESS_WORDS, 0);

#[map]
pub static GIL: HashMap<u32, [u64; 2]> = HashMap::with_max_entries(1024, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(8 << 20, 0);

#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(EventKind::COUNT, 0);

/// The thread each CPU switched to last (0: idle), in kernel-counts mode.
#[map]
pub static ON_CPU: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Zeroed template for new `THREADS` entries: too large for the eBPF stack.
#[map]
static NEW_THREAD: PerCpuArray<ThreadStats> = PerCpuArray::with_max_entries(1, 0);

/// One field of [`FIELDS`], read on its own rather than copying the whole struct.
macro_rules! field {
    ($name:ident) => {
        $crate::maps::global(&raw const $crate::maps::FIELDS.$name)
    };
}
pub(crate) use field;

/// Reads a `T` at `offset` in a tracepoint record (0 if the read fails). The verifier only
/// allows direct context loads at offsets fixed in the instruction, and these come from
/// globals set at load time, so the read goes through `bpf_probe_read_kernel`.
///
/// # Safety
/// `offset` must be the offset of a field of type `T` in this tracepoint's record, and an
/// all-zero `T` must be valid.
#[inline(always)]
pub unsafe fn record<T: Copy>(ctx: &aya_ebpf::programs::TracePointContext, offset: u32) -> T {
    // SAFETY: the caller guarantees the field is there and that zero is a valid `T`.
    unsafe {
        ctx.read_at::<T>(offset as usize)
            .unwrap_or(core::mem::zeroed())
    }
}

/// A task: a `task_struct` pointer the verifier knows as one (a BTF tracepoint's argument, or
/// `bpf_get_current_task_btf`). Its fields are loaded directly: the offsets are read-only
/// globals, which the verifier sees as constants and checks against the kernel's BTF.
#[derive(Clone, Copy)]
pub struct Task(pub *const u8);

impl Task {
    /// The thread running this program.
    #[inline(always)]
    pub fn current() -> Self {
        // SAFETY: no preconditions.
        Self(unsafe { bpf_get_current_task_btf() } as *const u8)
    }

    /// The field of type `T` at `offset`.
    #[inline(always)]
    fn load<T: Copy>(self, offset: u32) -> T {
        load(self.0, offset)
    }

    /// The user registers the task saved on entering the kernel (`struct pt_regs`), which
    /// say which system call it is in, if any.
    #[inline(always)]
    pub fn user_regs(self) -> UserRegs {
        // SAFETY: the helper takes any task pointer the verifier knows as one, and returns
        // a pointer it knows as a `struct pt_regs`.
        UserRegs(unsafe { bpf_task_pt_regs(self.0 as *mut _) } as *const u8)
    }

    /// `(tid, tgid)`: the kernel's `pid` and `tgid`.
    #[inline(always)]
    pub fn ids(self) -> (u32, u32) {
        (self.load(field!(task_pid)), self.load(field!(task_tgid)))
    }

    /// The kernel's `pid`: the thread id.
    #[inline(always)]
    pub fn tid(self) -> u32 {
        self.load(field!(task_pid))
    }

    #[inline(always)]
    pub fn prio(self) -> i32 {
        self.load(field!(task_prio))
    }

    /// The CPU the task is on, or is queued for.
    #[inline(always)]
    pub fn cpu(self) -> u32 {
        self.load(field!(task_cpu))
    }

    #[inline(always)]
    pub fn comm(self) -> [u8; COMM_LEN] {
        let offset = field!(task_comm);
        let [a, b]: [u64; 2] = [self.load(offset), self.load(offset + 8)];
        // SAFETY: two plain integers make the 16 bytes.
        unsafe { core::mem::transmute([a, b]) }
    }

    #[inline(always)]
    pub fn exit_state(self) -> u32 {
        self.load(field!(task_exit_state))
    }

    /// The kernel's own counters of the task.
    #[inline(always)]
    pub fn counts(self) -> Counts {
        Counts {
            voluntary_switches: self.load(field!(task_nvcsw)),
            involuntary_switches: self.load(field!(task_nivcsw)),
            on_cpu_ns: self.load(field!(task_sum_exec_runtime)),
            runqueue_wait_ns: self.load(field!(task_run_delay)),
        }
    }
}

/// A task's saved user registers, from [`Task::user_regs`]; loaded like a task's fields.
#[derive(Clone, Copy)]
pub struct UserRegs(*const u8);

impl UserRegs {
    /// The number of the system call the task is in (meaningless when it is in none).
    #[inline(always)]
    pub fn syscall(self) -> u32 {
        load(self.0, field!(regs_syscall))
    }

    /// The first two arguments of that system call.
    #[inline(always)]
    pub fn args(self) -> (u64, u64) {
        (
            load(self.0, field!(regs_arg0)),
            load(self.0, field!(regs_arg1)),
        )
    }
}

/// The field of type `T` at `offset` of a kernel object the verifier knows by its BTF type.
#[inline(always)]
fn load<T: Copy>(object: *const u8, offset: u32) -> T {
    // SAFETY: a load the verifier checks against the object's BTF and turns into one that
    // cannot fault.
    unsafe { core::ptr::read_volatile(object.add(offset as usize) as *const T) }
}

/// Reads a global that user space sets before loading; the volatile read keeps the compiler
/// from folding in the placeholder.
#[inline(always)]
pub fn global<T: Copy>(global: *const T) -> T {
    // SAFETY: only called with pointers to this object's immutable statics.
    unsafe { core::ptr::read_volatile(global) }
}

#[inline(always)]
pub fn settings() -> Settings {
    // SAFETY: a plain read of a global that user space rewrites before loading; the volatile
    // read keeps the compiler from folding in the placeholder.
    unsafe { core::ptr::read_volatile(&SETTINGS) }
}

#[inline(always)]
pub fn now_ns() -> u64 {
    // SAFETY: no preconditions.
    unsafe { bpf_ktime_get_ns() }
}

/// `(tid, tgid)` of the current thread.
#[inline(always)]
pub fn current() -> (u32, u32) {
    let id = bpf_get_current_pid_tgid();
    (id as u32, (id >> 32) as u32)
}

#[inline(always)]
pub fn header(kind: EventKind, ts_ns: u64) -> Header {
    Header {
        kind: kind as u32,
        // SAFETY: no preconditions.
        cpu: unsafe { bpf_get_smp_processor_id() },
        ts_ns,
    }
}

/// The traced thread `tid`, if it is traced. In unfiltered mode every thread is, and an
/// entry is made on first sight, at `now()`.
#[inline(always)]
pub fn thread(tid: u32, tgid: u32, now: impl FnOnce() -> u64) -> Option<&'static mut ThreadStats> {
    let filtered = settings().filtered != 0;
    if filtered && !traced_process(tgid) {
        return None;
    }
    if let Some(t) = THREADS.get_ptr_mut(tid) {
        // SAFETY: map values stay valid for the program's run.
        return Some(unsafe { &mut *t });
    }
    if filtered {
        return None;
    }
    insert_thread(tid, tgid, now(), 0)
}

/// Whether thread group `tgid` is one a capture traces (filtered mode): one array load.
#[inline(always)]
pub fn traced_process(tgid: u32) -> bool {
    let (word, bit) = process_bit(tgid);
    PROCESSES.get(word).is_some_and(|w| w & bit != 0)
}

/// Makes a `THREADS` entry for `tid` in state `UNKNOWN` since `now`, with `flags`.
#[inline(always)]
pub fn insert_thread(
    tid: u32,
    tgid: u32,
    now: u64,
    flags: u32,
) -> Option<&'static mut ThreadStats> {
    let template = NEW_THREAD.get_ptr_mut(0)?;
    // SAFETY: the per-CPU slot is only used by this program run; its counters stay zero.
    let template = unsafe { &mut *template };
    template.tgid = tgid;
    template.state = state::UNKNOWN;
    template.since_ns = now;
    template.flags = flags;
    THREADS.insert(tid, template, 0).ok()?;
    // SAFETY: as in `thread`.
    THREADS.get_ptr_mut(tid).map(|t| unsafe { &mut *t })
}

/// Counts an event that did not fit in the ring buffer.
#[inline(always)]
pub fn count_lost(kind: EventKind) {
    if let Some(n) = LOST.get_ptr_mut(kind as u32) {
        // SAFETY: per-CPU slot; no other writer on this CPU while we run.
        unsafe { *n += 1 };
    }
}

/// Writes the record `make` builds to the ring buffer if `kind` is streamed, counting it
/// lost when the buffer is full. `make` runs only when the record is wanted.
#[inline(always)]
pub fn emit<T: 'static>(kind: EventKind, make: impl FnOnce() -> T) {
    if !settings().streams(kind) {
        return;
    }
    match EVENTS.reserve::<T>(0) {
        Some(mut entry) => {
            entry.write(make());
            entry.submit(wakeup_flags());
        }
        None => count_lost(kind),
    }
}

/// Bytes waiting in the ring buffer above which the reader is woken at once.
const WAKEUP_BYTES: u64 = 1 << 20;

/// Waking the reader on every record would make it preempt the very threads it traces, and
/// each of its wakeups would cause more records: it drains on a timer instead, and is woken
/// early only when the buffer fills up.
#[inline(always)]
fn wakeup_flags() -> u64 {
    if EVENTS.query(BPF_RB_AVAIL_DATA as u64) > WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Adds `ns` to a log2 histogram.
#[inline(always)]
pub fn observe(hist: &mut [u32; tracer_common::thread::HISTOGRAM_BUCKETS], ns: u64) {
    // The optimiser knows the bucket is in range and would drop the check below, which the
    // verifier needs to see; `black_box` hides the value from it.
    let bucket = core::hint::black_box(histogram_bucket(ns));
    if let Some(slot) = hist.get_mut(bucket) {
        *slot += 1;
    }
}
