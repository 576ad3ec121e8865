//! Thread lifecycle tracepoints: `task_newtask`, `sched_process_exit`, `task_rename`.

use aya_ebpf::{macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    event::{COMM_LEN, EventKind, ThreadCreated, ThreadExited, ThreadRenamed},
    thread::{BORN_TRACED, Snapshot, state},
};

use crate::maps::{
    FUTEX_CALLS, PROCESSES, current, emit, fields, header, insert_thread, now_ns, settings, thread,
};

/// `CLONE_THREAD`: the new task joins its creator's thread group.
const CLONE_THREAD: u64 = 0x0001_0000;

#[tracepoint]
pub fn task_newtask(ctx: TracePointContext) -> u32 {
    let _ = try_task_newtask(&ctx);
    0
}

#[tracepoint]
pub fn sched_process_exit(ctx: TracePointContext) -> u32 {
    let _ = try_sched_process_exit(&ctx);
    0
}

#[tracepoint]
pub fn task_rename(ctx: TracePointContext) -> u32 {
    let _ = try_task_rename(&ctx);
    0
}

fn try_task_newtask(ctx: &TracePointContext) -> Result<(), i32> {
    let f = fields();
    // SAFETY: offsets come from the tracepoint's own format file.
    let (tid, clone_flags, comm) = unsafe {
        (
            ctx.read_at::<i32>(f.newtask_pid as usize)? as u32,
            ctx.read_at::<u64>(f.newtask_clone_flags as usize)?,
            ctx.read_at::<[u8; COMM_LEN]>(f.newtask_comm as usize)?,
        )
    };
    let (parent_tid, parent_tgid) = current();
    let tgid = if clone_flags & CLONE_THREAD != 0 {
        parent_tgid
    } else {
        tid
    };
    let now = now_ns();
    if settings().filtered != 0 {
        // A capture follows the threads of its target processes only.
        // SAFETY: plain lookup of a value we do not keep.
        if unsafe { PROCESSES.get(tgid) }.is_none() {
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
        comm,
    });
    Ok(())
}

fn try_sched_process_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let f = fields();
    // SAFETY: offsets come from the tracepoint's own format file.
    let (tid, group_dead) = unsafe {
        (
            ctx.read_at::<i32>(f.exit_pid as usize)? as u32,
            ctx.read_at::<u8>(f.exit_group_dead as usize)?,
        )
    };
    // A thread killed inside a futex wait never returns from it.
    let _ = FUTEX_CALLS.remove(tid);
    let (_, tgid) = current();
    let now = now_ns();
    let Some(t) = thread(tid, tgid, now) else {
        return Ok(());
    };
    // The exiting thread is on its CPU: close its time there and stop counting.
    if t.state == state::ON_CPU || t.state == state::UNKNOWN {
        t.on_cpu_ns += now.saturating_sub(t.since_ns);
    }
    t.state = state::EXITED;
    t.since_ns = now;
    // Switches the probes never saw (a program of this CPU was preempted mid-run, and the
    // kernel skips every other one there until it resumes) leave the derived tail wrong: the
    // kernel's own counters, read now, take its place. CPU time is then as of the kernel's
    // last accounting of this thread, at most a tick ago.
    if let Some(kernel) = crate::sched::task_counts()
        && (t.snapshots > 0 || t.flags & BORN_TRACED != 0)
        && kernel.voluntary_switches + kernel.involuntary_switches
            != t.last.kernel.voluntary_switches + t.last.kernel.involuntary_switches
    {
        t.last = Snapshot {
            kernel,
            derived: t.derived(),
        };
        if t.snapshots == 0 {
            t.first = t.last;
        }
        t.snapshots += 1;
    }
    // SAFETY: an all-zero byte array is a valid comm when the helper fails.
    let comm = aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; COMM_LEN]);
    emit(EventKind::ThreadExited, || ThreadExited {
        header: header(EventKind::ThreadExited, now),
        tid,
        tgid,
        group_dead: group_dead as u32,
        _pad: 0,
        comm,
    });
    Ok(())
}

fn try_task_rename(ctx: &TracePointContext) -> Result<(), i32> {
    let f = fields();
    // SAFETY: offsets come from the tracepoint's own format file.
    let (tid, old_comm, new_comm) = unsafe {
        (
            ctx.read_at::<i32>(f.rename_pid as usize)? as u32,
            ctx.read_at::<[u8; COMM_LEN]>(f.rename_oldcomm as usize)?,
            ctx.read_at::<[u8; COMM_LEN]>(f.rename_newcomm as usize)?,
        )
    };
    let now = now_ns();
    // The writer is not always the renamed thread (`/proc/PID/task/TID/comm`).
    let (writer_tid, writer_tgid) = current();
    let known_tgid = if writer_tid == tid { writer_tgid } else { 0 };
    let Some(t) = thread(tid, known_tgid, now) else {
        return Ok(());
    };
    let tgid = t.tgid;
    emit(EventKind::ThreadRenamed, || ThreadRenamed {
        header: header(EventKind::ThreadRenamed, now),
        tid,
        tgid,
        writer_tid,
        _pad: 0,
        old_comm,
        new_comm,
    });
    Ok(())
}
