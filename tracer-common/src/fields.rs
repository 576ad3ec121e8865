//! Configuration handed to the eBPF programs at load time as read-only globals.

/// Byte offsets of the tracepoint fields the programs read, taken at load time from
/// `/sys/kernel/tracing/events/*/*/format` so that no kernel layout is compiled in.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Fields {
    /// `sched/sched_switch`.
    pub switch_prev_pid: u32,
    pub switch_prev_prio: u32,
    pub switch_prev_state: u32,
    pub switch_next_pid: u32,
    pub switch_next_prio: u32,
    /// `sched/sched_wakeup`, `sched/sched_wakeup_new` and `sched/sched_waking` (same layout).
    pub wakeup_pid: u32,
    pub wakeup_prio: u32,
    pub wakeup_target_cpu: u32,
    /// `task/task_newtask`.
    pub newtask_pid: u32,
    pub newtask_comm: u32,
    pub newtask_clone_flags: u32,
    /// `task/task_rename`.
    pub rename_pid: u32,
    pub rename_oldcomm: u32,
    pub rename_newcomm: u32,
    /// `sched/sched_process_exit`.
    pub exit_pid: u32,
    pub exit_group_dead: u32,
    /// `syscalls/sys_enter_futex`.
    pub futex_uaddr: u32,
    pub futex_op: u32,
    /// `syscalls/sys_enter_futex_waitv`.
    pub waitv_waiters: u32,
    pub waitv_nr_futexes: u32,
    /// `syscalls/sys_exit_futex` and `syscalls/sys_exit_futex_waitv`.
    pub sys_exit_ret: u32,
    pub _pad: u32,
    /// Bit set in `sched_switch.prev_state` when the switch was a preemption
    /// (the kernel's `TASK_REPORT_MAX`).
    pub switch_preempt_bit: u64,
    /// Mask of the task state bits in `sched_switch.prev_state`; zero under it means runnable.
    pub switch_state_mask: u64,
    /// Offsets in `struct task_struct` of the kernel's own per-thread counters (from BTF):
    /// `nvcsw`, `nivcsw`, `se.sum_exec_runtime`, `sched_info.run_delay`.
    pub task_nvcsw: u32,
    pub task_nivcsw: u32,
    pub task_sum_exec_runtime: u32,
    pub task_run_delay: u32,
    /// Non-zero when the `task_*` offsets are known (the kernel has BTF).
    pub task_counters: u32,
    pub _pad2: u32,
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
}

impl Fields {
    /// All offsets zero: the placeholder compiled into the programs, replaced at load time.
    pub const UNSET: Self = Self {
        switch_prev_pid: 0,
        switch_prev_prio: 0,
        switch_prev_state: 0,
        switch_next_pid: 0,
        switch_next_prio: 0,
        wakeup_pid: 0,
        wakeup_prio: 0,
        wakeup_target_cpu: 0,
        newtask_pid: 0,
        newtask_comm: 0,
        newtask_clone_flags: 0,
        rename_pid: 0,
        rename_oldcomm: 0,
        rename_newcomm: 0,
        exit_pid: 0,
        exit_group_dead: 0,
        futex_uaddr: 0,
        futex_op: 0,
        waitv_waiters: 0,
        waitv_nr_futexes: 0,
        sys_exit_ret: 0,
        _pad: 0,
        switch_preempt_bit: 0,
        switch_state_mask: 0,
        task_nvcsw: 0,
        task_nivcsw: 0,
        task_sum_exec_runtime: 0,
        task_run_delay: 0,
        task_counters: 0,
        _pad2: 0,
    };
}

impl Settings {
    /// Trace every thread, stream nothing: the placeholder compiled into the programs.
    pub const UNSET: Self = Self {
        filtered: 0,
        stream: 0,
    };

    /// Whether events of `kind` are streamed.
    pub const fn streams(&self, kind: crate::event::EventKind) -> bool {
        self.stream & (1 << kind as u32) != 0
    }
}
