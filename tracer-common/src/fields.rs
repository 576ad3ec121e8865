//! Configuration handed to the eBPF programs at load time as read-only globals.

/// Where the programs find what they read, taken at load time from this kernel's
/// `/sys/kernel/tracing/events/*/*/format` files and its BTF, so that no layout is compiled in.
///
/// The scheduler and task programs are BTF tracepoints: they get the tracepoint's arguments
/// (`task_struct` pointers) and read the tasks at these offsets. The futex programs are
/// syscall tracepoints and read their records at the `futex_*`/`waitv_*`/`sys_exit_ret`
/// offsets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    /// `syscalls/sys_enter_futex`.
    pub futex_uaddr: u32,
    pub futex_op: u32,
    /// `syscalls/sys_enter_futex_waitv`.
    pub waitv_waiters: u32,
    pub waitv_nr_futexes: u32,
    /// `syscalls/sys_exit_futex` and `syscalls/sys_exit_futex_waitv`.
    pub sys_exit_ret: u32,
    /// Non-zero when `sched_process_exit` passes `group_dead` as its second argument.
    pub exit_group_dead: u32,
    /// Bit that `sched_switch` reports in `prev_state` for a preemption
    /// (the kernel's `TASK_REPORT_MAX`).
    pub switch_preempt_bit: u64,
    /// Offsets in `struct task_struct`: `pid`, `tgid`, `prio`, `comm`, `exit_state`, and the
    /// CPU it last ran on (`thread_info.cpu` or `cpu`).
    pub task_pid: u32,
    pub task_tgid: u32,
    pub task_prio: u32,
    pub task_comm: u32,
    pub task_exit_state: u32,
    pub task_cpu: u32,
    /// The kernel's own per-thread counters: `nvcsw`, `nivcsw`, `se.sum_exec_runtime`,
    /// `sched_info.run_delay`.
    pub task_nvcsw: u32,
    pub task_nivcsw: u32,
    pub task_sum_exec_runtime: u32,
    pub task_run_delay: u32,
    /// Offsets in `struct pt_regs`, the user registers a thread saved on entering the
    /// kernel: the number of the system call it is in (`orig_ax`, `syscallno`) and the
    /// call's first two arguments. Used when [`Settings::futex_at_switch`] is set.
    pub regs_syscall: u32,
    pub regs_arg0: u32,
    pub regs_arg1: u32,
    /// This architecture's numbers of the `futex` and `futex_waitv` system calls.
    pub sys_futex: u32,
    pub sys_futex_waitv: u32,
    pub _pad: u32,
}

/// What the programs trace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Non-zero: trace only threads already in the `THREADS` map and new threads of thread
    /// groups in `PROCESSES` (one capture's target). Zero: trace every thread (the daemon).
    pub filtered: u32,
    /// Bit mask of [`crate::event::EventKind`]s to stream through the ring buffer
    /// (`1 << kind`). Aggregates in `THREADS` are kept whatever it says.
    pub stream: u32,
    /// Non-zero when `sched_wakeup` and `sched_wakeup_new` are attached, so that a thread's
    /// switch to a CPU can be told from a return from a sleep the probes did not see.
    pub wakeups: u32,
    /// Non-zero: `sched_switch` keeps no state of its own. It takes the kernel's counters of
    /// the thread it switches out and notes in `ON_CPU` which thread each CPU runs; user
    /// space reads the kernel's counters of those threads for the time since (the daemon,
    /// which needs no per-event state).
    pub kernel_counts: u32,
    /// Non-zero (with `kernel_counts`): futex waits are seen at `sched_switch`, with no
    /// syscall tracepoint attached. A thread switched out asleep while in a `futex` or
    /// `futex_waitv` call starts a wait; the wait ends when it was woken, which its next
    /// switch out (or its exit) tells from the kernel's counters.
    pub futex_at_switch: u32,
}

impl Fields {
    /// All offsets zero: the placeholder compiled into the programs, replaced at load time.
    pub const UNSET: Self = Self {
        futex_uaddr: 0,
        futex_op: 0,
        waitv_waiters: 0,
        waitv_nr_futexes: 0,
        sys_exit_ret: 0,
        exit_group_dead: 0,
        switch_preempt_bit: 0,
        task_pid: 0,
        task_tgid: 0,
        task_prio: 0,
        task_comm: 0,
        task_exit_state: 0,
        task_cpu: 0,
        task_nvcsw: 0,
        task_nivcsw: 0,
        task_sum_exec_runtime: 0,
        task_run_delay: 0,
        regs_syscall: 0,
        regs_arg0: 0,
        regs_arg1: 0,
        sys_futex: 0,
        sys_futex_waitv: 0,
        _pad: 0,
    };
}

impl Settings {
    /// Trace every thread, stream nothing: the placeholder compiled into the programs.
    pub const UNSET: Self = Self {
        filtered: 0,
        stream: 0,
        wakeups: 0,
        kernel_counts: 0,
        futex_at_switch: 0,
    };

    /// Whether events of `kind` are streamed.
    pub const fn streams(&self, kind: crate::event::EventKind) -> bool {
        self.stream & (1 << kind as u32) != 0
    }
}
