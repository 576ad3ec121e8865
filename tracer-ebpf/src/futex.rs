//! Futex waits, seen in one of two ways:
//! - in a capture, by the syscall tracepoints `sys_enter_futex`/`sys_exit_futex` for every op
//!   that can block, and `sys_enter_futex_waitv`/`sys_exit_futex_waitv`: every wait call,
//!   with its result;
//! - in the daemon, at `sched_switch` ([`at_switch_out`]): every time a thread falls asleep
//!   in one of those calls. No syscall tracepoint is attached, and while one is, the kernel
//!   takes its slower path for every system call of every thread.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    event::{EventKind, FUTEX_WAITV_OP, FutexWait, is_futex_wait},
    thread::{Counts, FutexCall, ThreadStats},
};

use crate::maps::{GIL, Task, current, emit, field, header, now_ns, observe, record, thread};

/// Offset of `uaddr` in the user's `struct futex_waitv { u64 val; u64 uaddr; u32 flags; u32 __reserved; }`,
/// a fixed user ABI.
const WAITV_UADDR_OFFSET: usize = 8;

#[tracepoint]
pub fn sys_enter_futex(ctx: TracePointContext) -> u32 {
    let _ = try_enter_futex(&ctx);
    0
}

#[tracepoint]
pub fn sys_enter_futex_waitv(ctx: TracePointContext) -> u32 {
    let _ = try_enter_futex_waitv(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_futex(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

#[tracepoint]
pub fn sys_exit_futex_waitv(ctx: TracePointContext) -> u32 {
    let _ = try_exit(&ctx);
    0
}

fn try_enter_futex(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets come from the tracepoint's own format file.
    let op = unsafe { record::<u32>(ctx, field!(futex_op)) };
    if !is_futex_wait(op) {
        return Ok(());
    }
    // SAFETY: as above.
    let uaddr = unsafe { record::<u64>(ctx, field!(futex_uaddr)) };
    enter(uaddr, op, 1)
}

fn try_enter_futex_waitv(ctx: &TracePointContext) -> Result<(), i32> {
    // SAFETY: offsets come from the tracepoint's own format file.
    let (waiters, nr_futexes) = unsafe {
        (
            record::<u64>(ctx, field!(waitv_waiters)),
            record::<u32>(ctx, field!(waitv_nr_futexes)),
        )
    };
    enter(first_waitv_uaddr(waiters), FUTEX_WAITV_OP, nr_futexes)
}

/// The address of the first futex in the current thread's `futex_waitv` array at `waiters`.
#[inline(always)]
fn first_waitv_uaddr(waiters: u64) -> u64 {
    // SAFETY: a checked read of user memory; a fault leaves the address unknown (0).
    unsafe {
        bpf_probe_read_user((waiters as usize + WAITV_UADDR_OFFSET) as *const u64).unwrap_or(0)
    }
}

/// Keeps the call in the thread's entry until it returns: no map operation of its own.
#[inline(always)]
fn enter(uaddr: u64, op: u32, nr_futexes: u32) -> Result<(), i32> {
    let (tid, tgid) = current();
    let now = now_ns();
    let Some(t) = thread(tid, tgid, || now) else {
        return Ok(());
    };
    t.futex_call = FutexCall {
        start_ns: now,
        uaddr,
        op,
        nr_futexes,
    };
    Ok(())
}

fn try_exit(ctx: &TracePointContext) -> Result<(), i32> {
    let (tid, tgid) = current();
    let Some(t) = thread(tid, tgid, now_ns) else {
        return Ok(());
    };
    // Most futex calls are wakes, with no wait in flight: they return here.
    let call = t.futex_call;
    if call.start_ns == 0 {
        return Ok(());
    }
    let now = now_ns();
    t.futex_call = FutexCall::NONE;
    count_wait(t, tgid, call.uaddr, now.saturating_sub(call.start_ns));
    emit(EventKind::FutexWait, || FutexWait {
        header: header(EventKind::FutexWait, now),
        tid,
        tgid,
        uaddr: call.uaddr,
        start_ns: call.start_ns,
        op: call.op,
        nr_futexes: call.nr_futexes,
        // SAFETY: offset from the tracepoint's own format file.
        ret: unsafe { record::<i64>(ctx, field!(sys_exit_ret)) },
    });
    Ok(())
}

/// Counts a futex wait of `waited` ns on `uaddr` by thread `t` of process `tgid`, as a GIL
/// wait too when `uaddr` is in its process's GIL.
#[inline(always)]
fn count_wait(t: &mut ThreadStats, tgid: u32, uaddr: u64, waited: u64) {
    t.futex_waits += 1;
    t.futex_wait_ns += waited;
    observe(&mut t.futex_hist, waited);
    // SAFETY: a plain copy of the value.
    if let Some(&[start, end]) = unsafe { GIL.get(tgid) }
        && (start..end).contains(&uaddr)
    {
        t.gil_waits += 1;
        t.gil_wait_ns += waited;
    }
}

/// `sched_switch` switches out `task`, traced as `t`, whose counters the kernel has at
/// `kernel`; `asleep` when it leaves its CPU not runnable. Call before `t` takes `kernel`
/// as its snapshot.
///
/// A wait started at its last switch out ends here; and when it falls asleep in a futex
/// call that can block, a wait starts, kept in its entry like a call in flight.
#[inline(always)]
pub(crate) fn at_switch_out(t: &mut ThreadStats, task: Task, kernel: Counts, asleep: bool) {
    let mut now = 0;
    if t.futex_call.start_ns != 0 {
        now = now_ns();
        end_wait(t, kernel, now);
    }
    if !asleep {
        return;
    }
    let regs = task.user_regs();
    let syscall = regs.syscall();
    let waitv = syscall == field!(sys_futex_waitv);
    if syscall != field!(sys_futex) && !waitv {
        return;
    }
    let (arg0, arg1) = regs.args();
    let (uaddr, op, nr_futexes) = if waitv {
        // `sched_switch` runs in the thread switched out: its memory is the current one.
        (first_waitv_uaddr(arg0), FUTEX_WAITV_OP, arg1 as u32)
    } else if is_futex_wait(arg1 as u32) {
        (arg0, arg1 as u32, 1)
    } else {
        return;
    };
    t.futex_call = FutexCall {
        start_ns: if now == 0 { now_ns() } else { now },
        uaddr,
        op,
        nr_futexes,
    };
}

/// Ends the wait that `t` fell asleep in at its last switch out, `t.futex_call.start_ns`,
/// now that it left its CPU again (or exits) with the kernel's counters at `kernel`. Since
/// that switch out it was asleep, then woken to wait in a run queue, then on a CPU until
/// `now`; the kernel counted the last two, and the rest of the time is the wait.
#[inline(always)]
pub(crate) fn end_wait(t: &mut ThreadStats, kernel: Counts, now: u64) {
    let call = t.futex_call;
    t.futex_call = FutexCall::NONE;
    let since_woken = kernel
        .on_cpu_ns
        .saturating_sub(t.last.kernel.on_cpu_ns)
        .saturating_add(
            kernel
                .runqueue_wait_ns
                .saturating_sub(t.last.kernel.runqueue_wait_ns),
        );
    let waited = now
        .saturating_sub(call.start_ns)
        .saturating_sub(since_woken);
    count_wait(t, t.tgid, call.uaddr, waited);
}
