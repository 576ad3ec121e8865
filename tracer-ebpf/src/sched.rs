//! Scheduler tracepoints: `sched_switch`, `sched_wakeup`, `sched_wakeup_new`, `sched_waking`.
//!
//! A thread moves between three states: on a CPU, queued (runnable, waiting for a CPU) and
//! blocked. Time in each is charged when the thread leaves it; the kernel counts a switch as
//! voluntary exactly when the thread left the CPU in a sleeping state without being preempted.

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_probe_read_kernel},
    macros::tracepoint,
    programs::TracePointContext,
};
use tracer_common::{
    event::{EventKind, Switch, Wakeup},
    thread::{BORN_TRACED, Counts, Snapshot, state},
};

use crate::maps::{current, emit, field, header, now_ns, observe, record, settings, thread};

#[tracepoint]
pub fn sched_switch(ctx: TracePointContext) -> u32 {
    let _ = try_sched_switch(&ctx);
    0
}

#[tracepoint]
pub fn sched_wakeup(ctx: TracePointContext) -> u32 {
    let _ = try_sched_wakeup(&ctx, false);
    0
}

#[tracepoint]
pub fn sched_wakeup_new(ctx: TracePointContext) -> u32 {
    let _ = try_sched_wakeup(&ctx, true);
    0
}

/// Streams who woke a traced thread; the state moves on `sched_wakeup`.
#[tracepoint]
pub fn sched_waking(ctx: TracePointContext) -> u32 {
    let _ = try_sched_waking(&ctx);
    0
}

fn try_sched_switch(ctx: &TracePointContext) -> Result<(), i32> {
    // The previous thread is the current one: its ids need no read. Nothing else is read
    // until one of the two threads turns out to be traced.
    let (prev_tid, prev_tgid) = current();
    // SAFETY: offsets come from the tracepoint's own format file.
    let next_tid = unsafe { record::<i32>(ctx, field!(switch_next_pid)) } as u32;
    let now = now_ns();
    let prev = if prev_tid == 0 {
        None
    } else {
        thread(prev_tid, prev_tgid, now)
    };
    let next = if next_tid == 0 {
        None
    } else {
        thread(next_tid, 0, now)
    };
    // `black_box` keeps the optimiser from testing both pointers at once (`prev | next`),
    // which the verifier rejects.
    if !core::hint::black_box(prev.is_some()) && next.is_none() {
        return Ok(());
    }
    // SAFETY: as above.
    let prev_state = unsafe { record::<u64>(ctx, field!(switch_prev_state)) };
    // `__schedule` counts `nvcsw` when the task was not preempted and its state was not
    // TASK_RUNNING; the tracepoint reports preemption as the `TASK_REPORT_MAX` bit.
    let mut voluntary =
        prev_state & field!(switch_preempt_bit) == 0 && prev_state & field!(switch_state_mask) != 0;

    // An exited thread's last switches are streamed (they end its time on a CPU), not counted.
    if let Some(t) = prev
        && t.state != state::EXITED
    {
        t.tgid = prev_tgid;
        let kernel = task_counts();
        // With a known starting point, the kernel's own count says which kind this switch was
        // (it tells a sleep cut short by a signal, which the tracepoint shows as running).
        if let Some(kernel) = kernel
            && (t.snapshots > 0 || t.flags & BORN_TRACED != 0)
        {
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
        if let Some(kernel) = kernel {
            t.last = Snapshot {
                kernel,
                derived: t.derived(),
            };
            if t.snapshots == 0 {
                t.first = t.last;
            }
            t.snapshots += 1;
        }
    }

    let mut next_tgid = 0;
    if let Some(t) = next {
        next_tgid = t.tgid;
        if t.state != state::EXITED {
            if t.state == state::QUEUED || t.state == state::UNKNOWN {
                let waited = now.saturating_sub(t.since_ns);
                t.runqueue_wait_ns += waited;
                t.runqueue_waits += 1;
                observe(&mut t.runqueue_hist, waited);
            }
            t.state = state::ON_CPU;
            t.since_ns = now;
        }
    }

    emit(EventKind::Switch, || Switch {
        header: header(EventKind::Switch, now),
        prev_tid,
        prev_tgid: if prev_tid == 0 { 0 } else { prev_tgid },
        next_tid,
        next_tgid,
        prev_state,
        // SAFETY: as above.
        prev_prio: unsafe { record::<i32>(ctx, field!(switch_prev_prio)) },
        // SAFETY: as above.
        next_prio: unsafe { record::<i32>(ctx, field!(switch_next_prio)) },
        voluntary: voluntary as u32,
        _pad: 0,
    });
    Ok(())
}

/// The kernel's counters of the current task, when their offsets are known.
#[inline(always)]
pub(crate) fn task_counts() -> Option<Counts> {
    if field!(task_counters) == 0 {
        return None;
    }
    // SAFETY: the current task is valid while its program runs.
    let task = unsafe { bpf_get_current_task() } as usize;
    // SAFETY: checked reads of kernel memory at offsets from this kernel's BTF; user space
    // sets `task_counters` only when `nivcsw` directly follows `nvcsw`.
    unsafe {
        let [voluntary_switches, involuntary_switches] =
            bpf_probe_read_kernel((task + field!(task_nvcsw) as usize) as *const [u64; 2]).ok()?;
        Some(Counts {
            voluntary_switches,
            involuntary_switches,
            on_cpu_ns: bpf_probe_read_kernel(
                (task + field!(task_sum_exec_runtime) as usize) as *const u64,
            )
            .ok()?,
            runqueue_wait_ns: bpf_probe_read_kernel(
                (task + field!(task_run_delay) as usize) as *const u64,
            )
            .ok()?,
        })
    }
}

fn try_sched_wakeup(ctx: &TracePointContext, new_task: bool) -> Result<(), i32> {
    // SAFETY: offsets come from the tracepoint's own format file.
    let tid = unsafe { record::<i32>(ctx, field!(wakeup_pid)) } as u32;
    if tid == 0 {
        return Ok(());
    }
    let now = now_ns();
    let Some(t) = thread(tid, 0, now) else {
        return Ok(());
    };
    // SAFETY: as above.
    let (prio, target_cpu) = unsafe {
        (
            record::<i32>(ctx, field!(wakeup_prio)),
            record::<i32>(ctx, field!(wakeup_target_cpu)) as u32,
        )
    };
    match t.state {
        // A wakeup that raced with the thread going to sleep: it never left the CPU.
        state::ON_CPU | state::QUEUED | state::EXITED => {}
        _ => {
            if t.state == state::BLOCKED || t.state == state::UNKNOWN {
                t.off_cpu_ns += now.saturating_sub(t.since_ns);
            }
            t.state = state::QUEUED;
            t.since_ns = now;
        }
    }
    let tgid = t.tgid;
    let (current_tid, _) = current();
    emit(EventKind::Wakeup, || Wakeup {
        header: header(EventKind::Wakeup, now),
        tid,
        tgid,
        current_tid,
        target_cpu,
        prio,
        new_task: new_task as u32,
    });
    Ok(())
}

fn try_sched_waking(ctx: &TracePointContext) -> Result<(), i32> {
    if !settings().streams(EventKind::Waking) {
        return Ok(());
    }
    // SAFETY: offsets come from the tracepoint's own format file (the layout of sched_wakeup).
    let tid = unsafe { record::<i32>(ctx, field!(wakeup_pid)) } as u32;
    if tid == 0 {
        return Ok(());
    }
    let now = now_ns();
    let Some(t) = thread(tid, 0, now) else {
        return Ok(());
    };
    // SAFETY: as above.
    let (prio, target_cpu) = unsafe {
        (
            record::<i32>(ctx, field!(wakeup_prio)),
            record::<i32>(ctx, field!(wakeup_target_cpu)) as u32,
        )
    };
    let tgid = t.tgid;
    let (waker_tid, _) = current();
    emit(EventKind::Waking, || Wakeup {
        header: header(EventKind::Waking, now),
        tid,
        tgid,
        current_tid: waker_tid,
        target_cpu,
        prio,
        new_task: 0,
    });
    Ok(())
}
