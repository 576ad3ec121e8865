//! Per-thread state and aggregates kept in the `THREADS` map.

/// Number of log2 buckets in a [`ThreadStats`] histogram: bucket `i` counts durations `d`
/// with `2^(i-1) <= d < 2^i` nanoseconds (bucket 0: `d == 0`); the last one is open-ended.
pub const HISTOGRAM_BUCKETS: usize = 40;

/// Scheduler state of a thread as the programs last saw it.
pub mod state {
    /// Not seen since the capture started.
    pub const UNKNOWN: u32 = 0;
    /// Running on a CPU since `since_ns`.
    pub const ON_CPU: u32 = 1;
    /// Runnable, waiting in a run queue since `since_ns`.
    pub const QUEUED: u32 = 2;
    /// Switched out and not runnable since `since_ns`.
    pub const BLOCKED: u32 = 3;
    /// Exited (`sched_process_exit`) at `since_ns`: the kernel's teardown of the thread after
    /// that is not charged to it, as `/proc` can no longer show it.
    pub const EXITED: u32 = 4;
}

/// Whether a thread's latest wakeup followed its own `sched_waking` ([`ThreadStats::waking`]),
/// kept only while wakings are streamed.
pub mod waking {
    /// No wakeup seen since the capture started.
    pub const UNKNOWN: u32 = 0;
    /// A `sched_waking` was seen and its `sched_wakeup` not yet.
    pub const SEEN: u32 = 1;
    /// The thread was woken (`sched_wakeup`): the next wakeup needs a `sched_waking` of its
    /// own, and one without counts as a lost waking.
    pub const WOKEN: u32 = 2;
}

/// [`ThreadStats::flags`]: the thread was created while traced, so the kernel's counters
/// for it started at zero within the capture.
pub const BORN_TRACED: u32 = 1;

/// Scheduler counters, as the kernel keeps them or as the programs derive them from events.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub voluntary_switches: u64,
    pub involuntary_switches: u64,
    pub on_cpu_ns: u64,
    pub runqueue_wait_ns: u64,
}

impl Counts {
    pub const ZERO: Self = Self {
        voluntary_switches: 0,
        involuntary_switches: 0,
        on_cpu_ns: 0,
        runqueue_wait_ns: 0,
    };
}

/// The kernel's counters for a thread (`task_struct`) read when it left a CPU, with the
/// programs' derived counts at that same moment.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub kernel: Counts,
    pub derived: Counts,
}

/// A futex wait call in flight, kept in its thread's entry from entry to return.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FutexCall {
    /// When the call started; 0 when the thread is in no futex wait call.
    pub start_ns: u64,
    pub uaddr: u64,
    pub op: u32,
    pub nr_futexes: u32,
}

impl FutexCall {
    pub const NONE: Self = Self {
        start_ns: 0,
        uaddr: 0,
        op: 0,
        nr_futexes: 0,
    };
}

/// One thread's state and counters. Counters cover only the time the thread was traced.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadStats {
    /// Thread group id.
    pub tgid: u32,
    /// One of [`state`].
    pub state: u32,
    /// [`BORN_TRACED`] or 0.
    pub flags: u32,
    /// Number of [`Snapshot`]s taken (switches out with the kernel's counters read).
    pub snapshots: u32,
    /// One of [`waking`].
    pub waking: u32,
    pub _pad: u32,
    /// At the first and the latest snapshot.
    pub first: Snapshot,
    pub last: Snapshot,
    /// When the thread entered `state`.
    pub since_ns: u64,
    /// Switches the kernel counts in `nvcsw` (the thread blocked).
    pub voluntary_switches: u64,
    /// Switches the kernel counts in `nivcsw` (the thread was preempted or yielded).
    pub involuntary_switches: u64,
    /// Time on a CPU.
    pub on_cpu_ns: u64,
    /// Time runnable but waiting for a CPU.
    pub runqueue_wait_ns: u64,
    /// Run-queue waits in `runqueue_hist`.
    pub runqueue_waits: u64,
    /// Time switched out and not runnable.
    pub off_cpu_ns: u64,
    /// Futex waits: wait calls that returned (syscall tracepoints), or with
    /// [`crate::fields::Settings::futex_at_switch`] the times the thread fell asleep in one
    /// and was woken.
    pub futex_waits: u64,
    /// Time spent in those calls (with `futex_at_switch`: asleep in them).
    pub futex_wait_ns: u64,
    /// Futex waits on the CPython GIL of the thread's process (see the `GIL` map), and
    /// their time.
    pub gil_waits: u64,
    pub gil_wait_ns: u64,
    /// The futex wait call the thread is in, if any (with `futex_at_switch`: the one it fell
    /// asleep in at its last switch out).
    pub futex_call: FutexCall,
    /// Log2 histogram of run-queue waits, as the kernel measured each (its run delay).
    pub runqueue_hist: [u32; HISTOGRAM_BUCKETS],
    /// Log2 histogram of futex wait calls.
    pub futex_hist: [u32; HISTOGRAM_BUCKETS],
}

impl ThreadStats {
    /// A thread first seen at `now_ns` in `state`.
    pub const fn new(tgid: u32, state: u32, now_ns: u64) -> Self {
        Self {
            tgid,
            state,
            flags: 0,
            snapshots: 0,
            waking: waking::UNKNOWN,
            _pad: 0,
            first: Snapshot {
                kernel: Counts::ZERO,
                derived: Counts::ZERO,
            },
            last: Snapshot {
                kernel: Counts::ZERO,
                derived: Counts::ZERO,
            },
            since_ns: now_ns,
            voluntary_switches: 0,
            involuntary_switches: 0,
            on_cpu_ns: 0,
            runqueue_wait_ns: 0,
            runqueue_waits: 0,
            off_cpu_ns: 0,
            futex_waits: 0,
            futex_wait_ns: 0,
            gil_waits: 0,
            gil_wait_ns: 0,
            futex_call: FutexCall::NONE,
            runqueue_hist: [0; HISTOGRAM_BUCKETS],
            futex_hist: [0; HISTOGRAM_BUCKETS],
        }
    }
}

impl ThreadStats {
    /// This side's counts so far.
    pub const fn derived(&self) -> Counts {
        Counts {
            voluntary_switches: self.voluntary_switches,
            involuntary_switches: self.involuntary_switches,
            on_cpu_ns: self.on_cpu_ns,
            runqueue_wait_ns: self.runqueue_wait_ns,
        }
    }

    /// Whether the thread's counters have a known start: a snapshot of the kernel's counters
    /// taken while traced, or its birth while traced (they started at zero).
    #[inline(always)]
    pub const fn has_known_start(&self) -> bool {
        self.snapshots > 0 || self.flags & BORN_TRACED != 0
    }

    /// Keeps `kernel`, the kernel's counters read now, with the derived ones as they are now:
    /// the latest snapshot, and the first if there was none.
    #[inline(always)]
    pub fn take_snapshot(&mut self, kernel: Counts) {
        self.last = Snapshot {
            kernel,
            derived: self.derived(),
        };
        if self.snapshots == 0 {
            self.first = self.last;
        }
        self.snapshots += 1;
    }
}

/// The histogram bucket for a duration in nanoseconds: its bit length, capped.
#[inline(always)]
pub const fn histogram_bucket(ns: u64) -> usize {
    let bits = (u64::BITS - ns.leading_zeros()) as usize;
    if bits < HISTOGRAM_BUCKETS {
        bits
    } else {
        HISTOGRAM_BUCKETS - 1
    }
}

/// The exclusive upper bound of bucket `i` in nanoseconds (`None` for the open-ended last one).
pub const fn histogram_upper_bound_ns(i: usize) -> Option<u64> {
    if i + 1 >= HISTOGRAM_BUCKETS {
        None
    } else {
        Some(1 << i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_bit_lengths() {
        assert_eq!(histogram_bucket(0), 0);
        assert_eq!(histogram_bucket(1), 1);
        assert_eq!(histogram_bucket(2), 2);
        assert_eq!(histogram_bucket(3), 2);
        assert_eq!(histogram_bucket(1024), 11);
        assert_eq!(histogram_bucket(u64::MAX), HISTOGRAM_BUCKETS - 1);
        // Every duration is below its bucket's upper bound.
        for ns in [0u64, 1, 5, 1000, 123_456_789] {
            let b = histogram_bucket(ns);
            assert!(histogram_upper_bound_ns(b).is_none_or(|up| ns < up), "{ns}");
        }
    }
}
