//! Futex wait tracepoints: `sys_enter_futex`/`sys_exit_futex` for every op that can block,
//! and `sys_enter_futex_waitv`/`sys_exit_futex_waitv`.

use aya_ebpf::{helpers::bpf_probe_read_user, macros::tracepoint, programs::TracePointContext};
use tracer_common::{
    event::{EventKind, FUTEX_WAITV_OP, FutexWait, is_futex_wait},
    thread::FutexCall,
};

use crate::maps::{GIL, current, emit, field, header, now_ns, observe, record, thread};

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
    // SAFETY: a checked read of user memory; a fault leaves the address unknown (0).
    let uaddr = unsafe {
        bpf_probe_read_user((waiters as usize + WAITV_UADDR_OFFSET) as *const u64).unwrap_or(0)
    };
    enter(uaddr, FUTEX_WAITV_OP, nr_futexes)
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
    let waited = now.saturating_sub(call.start_ns);
    t.futex_waits += 1;
    t.futex_wait_ns += waited;
    observe(&mut t.futex_hist, waited);
    // SAFETY: a plain copy of the value.
    if let Some(&[start, end]) = unsafe { GIL.get(tgid) }
        && (start..end).contains(&call.uaddr)
    {
        t.gil_waits += 1;
        t.gil_wait_ns += waited;
    }
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
