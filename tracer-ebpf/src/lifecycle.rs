//! Thread lifecycle tracepoints: `task_newtask`, `sched_process_exit`, `task_rename`, all
//! BTF tracepoints like the scheduler's (see `sched.rs`).

use aya_ebpf::{
    helpers::bpf_probe_read_kernel_str_bytes, macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use tracer_common::{
    event::{COMM_LEN, EventKind, ThreadCreated, ThreadExited, ThreadRenamed},
    thread::{BORN_TRACED, state},
};

use crate::maps::{
    Task, current, emit, field, header, insert_thread, now_ns, settings, thread, traced_process,
};

/// `task_newtask(struct task_struct *task, unsigned long clone_flags)`, in the creator's
/// context; user space checks these shapes in the kernel's BTF.
#[btf_tracepoint(function = "task_newtask")]
pub fn task_newtask(ctx: BtfTracePointContext) -> i32 {
    let _ = try_task_newtask(&ctx);
    0
}

/// `sched_process_exit(struct task_struct *p[, bool group_dead])`, in the exiting thread.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn sched_process_exit(ctx: BtfTracePointContext) -> i32 {
    let _ = try_sched_process_exit(&ctx);
    0
}

/// `task_rename(struct task_struct *task, const char *comm)`, before the name changes.
#[btf_tracepoint(function = "task_rename")]
pub fn task_rename(ctx: BtfTracePointContext) -> i32 {
    let _ = try_task_rename(&ctx);
    0
}

fn try_task_newtask(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let task = Task(ctx.arg::<*const u8>(0));
    let clone_flags = ctx.arg::<u64>(1);
    // The new task's ids are set by now: its creator's thread group for `CLONE_THREAD`.
    let (tid, tgid) = task.ids();
    let (parent_tid, parent_tgid) = current();
    let now = now_ns();
    if settings().filtered != 0 {
        // A capture follows the threads of its target processes only.
        if !traced_process(tgid) {
            return Ok(());
        }
    }
    insert_thread(tid, tgid, now, BORN_TRACED);
    emit(EventKind::ThreadCreated, || ThreadCreated {
        header: header(EventKind::ThreadCreated, now),
        tid,
        tgid,
        parent_tid,
        parent_tgid,
        clone_flags,
        comm: task.comm(),
    });
    Ok(())
}

fn try_sched_process_exit(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let task = Task(ctx.arg::<*const u8>(0));
    let (tid, _) = task.ids();
    // A read-only global: the verifier drops the argument read on kernels without it.
    let group_dead = if field!(exit_group_dead) != 0 {
        ctx.arg::<u64>(1) & 1
    } else {
        0
    };
    let (_, tgid) = current();
    let now = now_ns();
    let Some(t) = thread(tid, tgid, || now) else {
        return Ok(());
    };
    // The exiting thread is on its CPU: close its time there and stop counting (in
    // kernel-counts mode the snapshot below says it all).
    if settings().kernel_counts == 0 && (t.state == state::ON_CPU || t.state == state::UNKNOWN) {
        t.on_cpu_ns += now.saturating_sub(t.since_ns);
    }
    t.state = state::EXITED;
    t.since_ns = now;
    // The thread's counters end as the kernel's own at this moment, which is what `/proc`
    // shows for it now. Time derived from events since the last switch would also count
    // time the hypervisor ran something else on this virtual CPU ("steal"), which the
    // kernel leaves out of a thread's CPU time; CPU time is as of the kernel's last
    // accounting of this thread, at most a tick ago.
    let kernel = Task::current().counts();
    // A futex wait seen at `sched_switch` that the thread was woken from: it ran since.
    if settings().futex_at_switch != 0 && t.futex_call.start_ns != 0 {
        crate::futex::end_wait(t, kernel, now);
    }
    crate::sched::take_kernel_snapshot(t, kernel);
    emit(EventKind::ThreadExited, || ThreadExited {
        header: header(EventKind::ThreadExited, now),
        tid,
        tgid,
        group_dead: group_dead as u32,
        _pad: 0,
        comm: task.comm(),
    });
    Ok(())
}

fn try_task_rename(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let task = Task(ctx.arg::<*const u8>(0));
    let new_name = ctx.arg::<u64>(1);
    // The writer is not always the renamed thread (`/proc/PID/task/TID/comm`).
    let (tid, tgid) = task.ids();
    let now = now_ns();
    if thread(tid, tgid, || now).is_none() {
        return Ok(());
    }
    let (writer_tid, _) = current();
    emit(EventKind::ThreadRenamed, || {
        let mut new_comm = [0u8; COMM_LEN];
        // SAFETY: a checked read of the kernel's new name; a fault leaves it empty.
        let _ = unsafe { bpf_probe_read_kernel_str_bytes(new_name as *const u8, &mut new_comm) };
        ThreadRenamed {
            header: header(EventKind::ThreadRenamed, now),
            tid,
            tgid,
            writer_tid,
            _pad: 0,
            old_comm: task.comm(),
            new_comm,
        }
    });
    Ok(())
}
