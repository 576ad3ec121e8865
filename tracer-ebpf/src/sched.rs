//! Scheduler tracepoints: `sched_switch`, `sched_wakeup`, `sched_wakeup_new`, `sched_waking`.
//!
//! A thread moves between three states: on a CPU, queued (runnable, waiting for a CPU) and
//! blocked. Time in each is charged when the thread leaves it; the kernel counts a switch as
//! voluntary exactly when the thread left the CPU in a sleeping state without being preempted.
//!
//! These are BTF tracepoints (`tp_btf`): they get the scheduler's own arguments, with no trace
//! record built for them, and the kernel guards each program against recursion on its own. A
//! classic tracepoint program is skipped whenever any other one is running on its CPU, and
//! syscall tracepoint programs can be preempted: every switch on that CPU would go unseen.

use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};
use tracer_common::{
    event::{EventKind, Switch, Wakeup},
    thread::{Counts, ThreadStats, state, waking},
};

use crate::maps::{
    ON_CPU, Task, count_lost, current, emit, field, header, now_ns, observe, settings, thread,
};

/// `sched_switch(bool preempt, struct task_struct *prev, struct task_struct *next,
/// unsigned int prev_state)`; user space checks this shape in the kernel's BTF.
#[btf_tracepoint(function = "sched_switch")]
pub fn sched_switch(ctx: BtfTracePointContext) -> i32 {
    let _ = try_sched_switch(&ctx);
    0
}

/// `sched_wakeup(struct task_struct *p)`.
#[btf_tracepoint(function = "sched_wakeup")]
pub fn sched_wakeup(ctx: BtfTracePointContext) -> i32 {
    let _ = try_sched_wakeup(&ctx, EventKind::Wakeup, false);
    0
}

/// `sched_wakeup_new(struct task_struct *p)`.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn sched_wakeup_new(ctx: BtfTracePointContext) -> i32 {
    let _ = try_sched_wakeup(&ctx, EventKind::Wakeup, true);
    0
}

/// `sched_waking(struct task_struct *p)`: streams who woke a traced thread; the state moves
/// on `sched_wakeup`.
#[btf_tracepoint(function = "sched_waking")]
pub fn sched_waking(ctx: BtfTracePointContext) -> i32 {
    let _ = try_sched_wakeup(&ctx, EventKind::Waking, false);
    0
}

fn try_sched_switch(ctx: &BtfTracePointContext) -> Result<(), i32> {
    // Only the ids are read until one of the two threads turns out to be traced.
    let prev_task = Task(ctx.arg::<*const u8>(1));
    let next_task = Task(ctx.arg::<*const u8>(2));
    // A read-only global: the verifier keeps only one of the two paths.
    if settings().kernel_counts != 0 {
        return switch_kernel_counts(ctx, prev_task, next_task);
    }
    let (prev_tid, prev_tgid) = prev_task.ids();
    let (next_tid, next_tgid) = next_task.ids();
    // The clock is read once, and only for a traced thread: in a capture, switches between
    // other processes' threads end at `thread`'s process check, with no lookup and no clock.
    let mut clock = 0;
    let mut now = || {
        if clock == 0 {
            clock = now_ns();
        }
        clock
    };
    let prev = if prev_tid == 0 {
        None
    } else {
        thread(prev_tid, prev_tgid, &mut now)
    };
    let next = if next_tid == 0 {
        None
    } else {
        thread(next_tid, next_tgid, &mut now)
    };
    // `black_box` keeps the optimiser from testing both pointers at once (`prev | next`),
    // which the verifier rejects.
    if !core::hint::black_box(prev.is_some()) && next.is_none() {
        return Ok(());
    }
    let now = now();
    let (preempt, prev_state) = preempt_and_prev_state(ctx);
    let mut voluntary = left_asleep(preempt, prev_state);

    // An exited thread's last switches are streamed (they end its time on a CPU), not counted.
    if let Some(t) = prev
        && t.state != state::EXITED
    {
        let kernel = prev_task.counts();
        // With a known starting point, the kernel's own count says which kind this switch was
        // (it tells a sleep cut short by a signal, which the argument shows as running).
        if t.has_known_start() {
            voluntary = kernel.voluntary_switches > t.last.kernel.voluntary_switches;
        }
        if t.state == state::ON_CPU || t.state == state::UNKNOWN {
            t.on_cpu_ns += now.saturating_sub(t.since_ns);
        }
        if voluntary {
            t.voluntary_switches += 1;
            t.state = state::BLOCKED;
        } else {
            t.involuntary_switches += 1;
            t.state = state::QUEUED;
        }
        t.since_ns = now;
        take_kernel_snapshot(t, kernel);
    }

    if let Some(t) = next
        && t.state != state::EXITED
    {
        // A thread never seen before may have been blocked, unless a wakeup would have
        // been seen.
        if t.state == state::QUEUED || t.state == state::UNKNOWN && settings().wakeups != 0 {
            t.runqueue_wait_ns += now.saturating_sub(t.since_ns);
        }
        t.state = state::ON_CPU;
        t.since_ns = now;
    }

    emit(EventKind::Switch, || Switch {
        header: header(EventKind::Switch, now),
        prev_tid,
        prev_tgid,
        next_tid,
        next_tgid,
        prev_state: reported_state(preempt, prev_state, prev_task),
        prev_prio: prev_task.prio(),
        next_prio: next_task.prio(),
        voluntary: voluntary as u32,
        _pad: 0,
    });
    Ok(())
}

/// `sched_switch` in kernel-counts mode: the thread switched out gets a snapshot of the
/// kernel's counters (with the run-queue wait that ended when it was switched in), and this
/// CPU's `ON_CPU` slot names the thread switched in. One map lookup and no clock read: the
/// kernel's counters already say all that the switches did. With futex waits seen here, the
/// clock is read only by threads that fall asleep in a futex wait, or leave their CPU after
/// one.
#[inline(always)]
fn switch_kernel_counts(
    ctx: &BtfTracePointContext,
    prev_task: Task,
    next_task: Task,
) -> Result<(), i32> {
    if let Some(slot) = ON_CPU.get_ptr_mut(0) {
        // SAFETY: this CPU's own slot; no other writer while we run.
        unsafe { *slot = next_task.tid() };
    }
    let (tid, tgid) = prev_task.ids();
    if tid == 0 {
        return Ok(());
    }
    let Some(t) = thread(tid, tgid, now_ns) else {
        return Ok(());
    };
    if t.state == state::EXITED {
        return Ok(());
    }
    let kernel = prev_task.counts();
    // A read-only global: the verifier keeps this only when it is set.
    if settings().futex_at_switch != 0 {
        let (preempt, prev_state) = preempt_and_prev_state(ctx);
        crate::futex::at_switch_out(t, prev_task, kernel, left_asleep(preempt, prev_state));
    }
    take_kernel_snapshot(t, kernel);
    Ok(())
}

/// `sched_switch`'s `preempt` and `prev_state` arguments.
#[inline(always)]
fn preempt_and_prev_state(ctx: &BtfTracePointContext) -> (bool, u64) {
    (ctx.arg::<u64>(0) & 1 != 0, ctx.arg::<u64>(3) & 0xffff_ffff)
}

/// Whether the thread switched out left its CPU asleep: `__schedule` counts such a switch in
/// `nvcsw`, when the task was not preempted and its state was not TASK_RUNNING.
#[inline(always)]
fn left_asleep(preempt: bool, prev_state: u64) -> bool {
    !preempt && prev_state != 0
}

/// Takes `kernel`, the thread's counters as the kernel keeps them now (at a switch out, or
/// its exit), as its latest snapshot. With a reading before (the last snapshot, or zero for
/// a thread born traced) the run-queue wait that ended at its latest switch to a CPU goes
/// into its histogram, as the kernel counted it: between two readings the thread was
/// switched in exactly once, so its run delay grew by exactly that wait.
#[inline(always)]
pub(crate) fn take_kernel_snapshot(t: &mut ThreadStats, kernel: Counts) {
    if t.has_known_start() {
        let waited = kernel
            .runqueue_wait_ns
            .saturating_sub(t.last.kernel.runqueue_wait_ns);
        t.runqueue_waits += 1;
        observe(&mut t.runqueue_hist, waited);
    }
    t.take_snapshot(kernel);
}

/// `prev_state` as the classic `sched_switch` tracepoint reports it: the preemption bit
/// (`TASK_REPORT_MAX`), or the highest reportable state bit of the task (0: runnable).
#[inline(always)]
fn reported_state(preempt: bool, prev_state: u64, prev: Task) -> u64 {
    let preempt_bit = field!(switch_preempt_bit);
    if preempt {
        return preempt_bit;
    }
    // The reportable states are the bits below `TASK_REPORT_IDLE`, the bit below the
    // preemption bit.
    let mut bits = (prev_state | prev.exit_state() as u64) & ((preempt_bit >> 1) - 1);
    bits |= bits >> 1;
    bits |= bits >> 2;
    bits |= bits >> 4;
    bits |= bits >> 8;
    bits ^ (bits >> 1)
}

/// `sched_wakeup` and `sched_wakeup_new` move a traced thread to the run queue and stream
/// the wakeup; `sched_waking` only streams it (`kind`).
#[inline(always)]
fn try_sched_wakeup(
    ctx: &BtfTracePointContext,
    kind: EventKind,
    new_task: bool,
) -> Result<(), i32> {
    if kind == EventKind::Waking && !settings().streams(kind) {
        return Ok(());
    }
    let task = Task(ctx.arg::<*const u8>(0));
    let (tid, tgid) = task.ids();
    if tid == 0 {
        return Ok(());
    }
    let now = now_ns();
    let Some(t) = thread(tid, tgid, || now) else {
        return Ok(());
    };
    if settings().streams(EventKind::Waking) {
        note_waking(t, kind, new_task);
    }
    if kind != EventKind::Waking {
        match t.state {
            // A wakeup that raced with the thread going to sleep: it never left the CPU.
            state::ON_CPU | state::QUEUED | state::EXITED => {}
            _ => {
                t.off_cpu_ns += now.saturating_sub(t.since_ns);
                t.state = state::QUEUED;
                t.since_ns = now;
            }
        }
    }
    emit(kind, || Wakeup {
        header: header(kind, now),
        tid,
        tgid,
        current_tid: current().0,
        target_cpu: task.cpu(),
        prio: task.prio(),
        new_task: new_task as u32,
    });
    Ok(())
}

/// Keeps whether `t`'s wakeups follow their `sched_waking`. The kernel traces a waking for
/// every wakeup of a sleeping thread (`try_to_wake_up` does so before it queues the thread),
/// yet on rare occasions the waking's program does not run (seen for wakings raised in hard
/// interrupts): a wakeup since which no waking was seen counts that waking as lost. A new
/// thread's first wakeup has no waking.
#[inline(always)]
fn note_waking(t: &mut ThreadStats, kind: EventKind, new_task: bool) {
    if kind == EventKind::Waking {
        t.waking = waking::SEEN;
    } else if !new_task {
        if t.waking == waking::WOKEN {
            count_lost(EventKind::Waking);
        }
        t.waking = waking::WOKEN;
    }
}
