//! Records streamed from the eBPF programs to user space through the ring buffer.
//!
//! Every record starts with a [`Header`]; its `kind` says which struct follows.

/// Length of a kernel task name (`TASK_COMM_LEN`), including the terminating NUL.
pub const COMM_LEN: usize = 16;

/// The kind of a ring buffer record. Also the index into the lost-events counters.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EventKind {
    /// [`ThreadCreated`]: `task_newtask`.
    ThreadCreated = 0,
    /// [`ThreadExited`]: `sched_process_exit`.
    ThreadExited = 1,
    /// [`ThreadRenamed`]: `task_rename`.
    ThreadRenamed = 2,
    /// [`Switch`]: `sched_switch`.
    Switch = 3,
    /// [`Wakeup`]: `sched_wakeup` and `sched_wakeup_new`.
    Wakeup = 4,
    /// [`FutexWait`]: a futex wait call (`futex` wait ops or `futex_waitv`) returned.
    FutexWait = 5,
    /// [`Wakeup`]: `sched_waking`, in the waker's context, so `current_tid` is the waker.
    Waking = 6,
}

impl EventKind {
    /// Number of kinds; the lost-events array has this many slots.
    pub const COUNT: u32 = 7;
    /// Every kind, in index order.
    pub const ALL: [Self; Self::COUNT as usize] = [
        Self::ThreadCreated,
        Self::ThreadExited,
        Self::ThreadRenamed,
        Self::Switch,
        Self::Wakeup,
        Self::FutexWait,
        Self::Waking,
    ];

    /// The kind for a raw `kind` value read from a record.
    pub const fn from_u32(value: u32) -> Option<Self> {
        if value < Self::COUNT {
            Some(Self::ALL[value as usize])
        } else {
            None
        }
    }

    /// A short name, as used in metric labels and event files.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ThreadCreated => "thread_created",
            Self::ThreadExited => "thread_exited",
            Self::ThreadRenamed => "thread_renamed",
            Self::Switch => "switch",
            Self::Wakeup => "wakeup",
            Self::FutexWait => "futex_wait",
            Self::Waking => "waking",
        }
    }

    /// The bit for this kind in [`crate::fields::Settings::stream`].
    pub const fn bit(self) -> u32 {
        1 << self as u32
    }
}

/// Common start of every record.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Header {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// CPU the event happened on.
    pub cpu: u32,
    /// `CLOCK_MONOTONIC` nanoseconds (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
}

/// A task was created (`task_newtask`), in the context of the creating thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadCreated {
    pub header: Header,
    /// The new task's thread id.
    pub tid: u32,
    /// The new task's thread group: the creator's for `CLONE_THREAD`, else its own tid.
    pub tgid: u32,
    /// The creating thread.
    pub parent_tid: u32,
    pub parent_tgid: u32,
    pub clone_flags: u64,
    /// The new task's name (inherited from the creator).
    pub comm: [u8; COMM_LEN],
}

/// A thread exited (`sched_process_exit`), in its own context.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadExited {
    pub header: Header,
    pub tid: u32,
    pub tgid: u32,
    /// Non-zero when this was the last thread of its group.
    pub group_dead: u32,
    pub _pad: u32,
    pub comm: [u8; COMM_LEN],
}

/// A thread's kernel name changed (`task_rename`); the writer may be another thread.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ThreadRenamed {
    pub header: Header,
    /// The renamed thread.
    pub tid: u32,
    /// Its thread group.
    pub tgid: u32,
    /// The thread that wrote the name.
    pub writer_tid: u32,
    pub _pad: u32,
    pub old_comm: [u8; COMM_LEN],
    pub new_comm: [u8; COMM_LEN],
}

/// A CPU switched from one thread to another (`sched_switch`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Switch {
    pub header: Header,
    pub prev_tid: u32,
    pub prev_tgid: u32,
    pub next_tid: u32,
    /// Thread group of the next thread (0 for a CPU's idle task).
    pub next_tgid: u32,
    /// `prev_state` as the tracepoint reports it.
    pub prev_state: u64,
    pub prev_prio: i32,
    pub next_prio: i32,
    /// 1 when the kernel counts this switch in the previous thread's voluntary switches.
    pub voluntary: u32,
    pub _pad: u32,
}

/// A thread became runnable (`sched_wakeup`, or `sched_wakeup_new` for a new task), or is
/// being woken (`sched_waking`, header kind [`EventKind::Waking`]).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Wakeup {
    pub header: Header,
    /// The thread woken.
    pub tid: u32,
    pub tgid: u32,
    /// The thread running when the wakeup was recorded: for `sched_waking` the waker; for
    /// `sched_wakeup` not always (a wakeup may complete on the wakee's CPU).
    pub current_tid: u32,
    pub target_cpu: u32,
    pub prio: i32,
    /// 1 for `sched_wakeup_new`.
    pub new_task: u32,
}

/// A futex wait call returned.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FutexWait {
    pub header: Header,
    pub tid: u32,
    pub tgid: u32,
    /// The futex word (for `futex_waitv`, the first one).
    pub uaddr: u64,
    /// When the call was entered; `header.ts_ns` is when it returned.
    pub start_ns: u64,
    /// The `futex` op, or [`FUTEX_WAITV_OP`] for `futex_waitv`.
    pub op: u32,
    /// Number of futexes waited on (1 except for `futex_waitv`).
    pub nr_futexes: u32,
    /// The syscall's return value.
    pub ret: i64,
}

/// `op` of a [`FutexWait`] that came from `futex_waitv`.
pub const FUTEX_WAITV_OP: u32 = 0xffff_ffff;

/// Futex operation numbers (`FUTEX_*` in `linux/futex.h`), after masking with
/// [`FUTEX_CMD_MASK`].
pub mod futex_op {
    pub const WAIT: u32 = 0;
    pub const WAKE: u32 = 1;
    pub const REQUEUE: u32 = 3;
    pub const CMP_REQUEUE: u32 = 4;
    pub const WAKE_OP: u32 = 5;
    pub const LOCK_PI: u32 = 6;
    pub const UNLOCK_PI: u32 = 7;
    pub const TRYLOCK_PI: u32 = 8;
    pub const WAIT_BITSET: u32 = 9;
    pub const WAKE_BITSET: u32 = 10;
    pub const WAIT_REQUEUE_PI: u32 = 11;
    pub const CMP_REQUEUE_PI: u32 = 12;
    pub const LOCK_PI2: u32 = 13;
}

/// `FUTEX_PRIVATE_FLAG | FUTEX_CLOCK_REALTIME` cleared.
pub const FUTEX_CMD_MASK: u32 = !(128 | 256);

/// Whether a futex op (after masking) can block the caller.
pub const fn is_futex_wait(op: u32) -> bool {
    matches!(
        op & FUTEX_CMD_MASK,
        futex_op::WAIT
            | futex_op::LOCK_PI
            | futex_op::WAIT_BITSET
            | futex_op::WAIT_REQUEUE_PI
            | futex_op::LOCK_PI2
    )
}

/// The name of a futex op, for event files and traces.
pub const fn futex_op_name(op: u32) -> &'static str {
    if op == FUTEX_WAITV_OP {
        return "WAITV";
    }
    match op & FUTEX_CMD_MASK {
        futex_op::WAIT => "WAIT",
        futex_op::WAKE => "WAKE",
        futex_op::REQUEUE => "REQUEUE",
        futex_op::CMP_REQUEUE => "CMP_REQUEUE",
        futex_op::WAKE_OP => "WAKE_OP",
        futex_op::LOCK_PI => "LOCK_PI",
        futex_op::UNLOCK_PI => "UNLOCK_PI",
        futex_op::TRYLOCK_PI => "TRYLOCK_PI",
        futex_op::WAIT_BITSET => "WAIT_BITSET",
        futex_op::WAKE_BITSET => "WAKE_BITSET",
        futex_op::WAIT_REQUEUE_PI => "WAIT_REQUEUE_PI",
        futex_op::CMP_REQUEUE_PI => "CMP_REQUEUE_PI",
        futex_op::LOCK_PI2 => "LOCK_PI2",
        _ => "OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_ops_include_private_and_realtime_variants() {
        assert!(is_futex_wait(futex_op::WAIT));
        assert!(is_futex_wait(futex_op::WAIT | 128));
        assert!(is_futex_wait(futex_op::WAIT_BITSET | 128 | 256));
        assert!(is_futex_wait(futex_op::LOCK_PI2 | 128));
        assert!(is_futex_wait(futex_op::WAIT_REQUEUE_PI));
        assert!(!is_futex_wait(futex_op::WAKE | 128));
        assert!(!is_futex_wait(futex_op::TRYLOCK_PI));
        assert!(!is_futex_wait(futex_op::UNLOCK_PI));
    }

    #[test]
    fn kinds_round_trip() {
        for kind in EventKind::ALL {
            assert_eq!(EventKind::from_u32(kind as u32), Some(kind));
        }
        assert_eq!(EventKind::from_u32(EventKind::COUNT), None);
    }
}
