//! Threads blocked when a capture ends: for how long, on whom, and the deadlocks among them.
//!
//! How long comes from the kernel side's state (`state`, `since_ns`); a thread never seen to
//! leave a CPU while traced, and asleep at the end, has been asleep since the attach at least.
//! The kernel's own record of when a thread last ran (`se.exec_start` in
//! `/proc/PID/task/TID/sched`) is in its run queue's task clock, which leaves out interrupt
//! and steal time and so drifts from `CLOCK_MONOTONIC` (by tens of seconds on a virtual
//! machine up for an hour): it is not used.
//!
//! On whom comes from the lock the thread is blocked on, read from the process's memory at
//! the futex address of the call it is in. That memory is untrusted: an owner is believed
//! only when the words look like the lock they claim to be and it names a thread of the
//! process.

use std::collections::BTreeMap;

use tracer_common::{
    event::{FUTEX_CMD_MASK, FUTEX_WAITV_OP, futex_op, is_futex_wait},
    thread::{FutexCall, ThreadStats, state},
};

use crate::{kernel::procfs, python::memory::Memory};

/// The thread-id bits of a PI futex word (`FUTEX_TID_MASK`).
const FUTEX_TID_MASK: u32 = 0x3fff_ffff;
/// A glibc `pthread_mutex_t` word with waiters (`lll_lock` sets it to 2 before sleeping).
const MUTEX_CONTENDED: u32 = 2;
/// The bits of a glibc mutex's `__kind`: type, robust, PI, protect, shared, elision.
const MUTEX_KIND_BITS: u32 = 0x3ff;
/// Offsets in glibc's `struct __pthread_mutex_s` (x86_64 and arm64): `int __lock` at 0,
/// `unsigned __count` at 4, `int __owner` at 8, `unsigned __nusers` at 12, `int __kind` at 16.
const MUTEX_OWNER_OFFSET: usize = 8;
const MUTEX_KIND_OFFSET: usize = 16;
/// The words read at a futex address: the mutex up to and including `__kind`.
const WORDS: usize = 5;

/// How long a thread alive at `end_ns` had been asleep then, or None when it was not.
/// `asleep_now`: whether `/proc` shows it asleep (not `R`), for a thread the programs never
/// saw switch; such a thread counts from the attach (`started_ns`).
pub fn blocked_ns(
    stats: Option<&ThreadStats>,
    started_ns: u64,
    end_ns: u64,
    asleep_now: bool,
) -> Option<u64> {
    // A thread with no entry has not been seen at all: as one never seen to switch.
    let (state, since) = stats.map_or((state::UNKNOWN, started_ns), |s| (s.state, s.since_ns));
    match state {
        state::BLOCKED if since <= end_ns => Some(end_ns - since),
        state::UNKNOWN if asleep_now => Some(end_ns.saturating_sub(since.max(started_ns))),
        _ => None,
    }
}

/// The futex call thread `tid` of process `pid` is blocked in, `(uaddr, op)`: the one the
/// programs saw it enter (`call`), else the one the kernel shows it in (a call entered before
/// the attach). None for any other system call, and for `futex_waitv`.
pub fn futex_call(pid: u32, tid: u32, call: Option<&FutexCall>) -> Option<(u64, u32)> {
    if let Some(call) = call.filter(|c| c.start_ns != 0) {
        return (call.op != FUTEX_WAITV_OP).then_some((call.uaddr, call.op));
    }
    let (nr, args) = procfs::thread_syscall(pid, tid)?;
    let op = args[1] as u32;
    (nr == libc::SYS_futex as u64 && is_futex_wait(op)).then_some((args[0], op))
}

/// The owner of the lock a thread waits for in futex call `(uaddr, op)`, read from `memory`
/// (the thread's process), if it can be known and `is_thread` says it is a thread of the
/// process.
pub fn lock_owner(
    memory: &dyn Memory,
    (uaddr, op): (u64, u32),
    is_thread: impl Fn(u32) -> bool,
) -> Option<u32> {
    if uaddr == 0 || uaddr % 8 != 0 {
        return None;
    }
    let mut bytes = [0u8; 4 * WORDS];
    memory.read(uaddr, &mut bytes).ok()?;
    let word =
        |offset: usize| u32::from_le_bytes(bytes[offset..offset + 4].try_into().expect("4 bytes"));
    let owner = owner_in(
        op,
        word(0),
        word(MUTEX_OWNER_OFFSET),
        word(MUTEX_KIND_OFFSET),
    )?;
    is_thread(owner).then_some(owner)
}

/// The owner a lock's words name, by the futex op the waiter is in: a PI futex's word holds
/// its owner's tid; a glibc mutex waited on with a plain wait is contended (or, robust,
/// holds its owner's tid) and keeps its owner in `__owner`, with a `__kind` glibc knows.
fn owner_in(op: u32, lock: u32, owner: u32, kind: u32) -> Option<u32> {
    let tid = match op & FUTEX_CMD_MASK {
        futex_op::LOCK_PI | futex_op::LOCK_PI2 => lock & FUTEX_TID_MASK,
        futex_op::WAIT | futex_op::WAIT_BITSET => {
            let plain = lock == MUTEX_CONTENDED;
            let robust = lock & FUTEX_TID_MASK == owner;
            if !(plain || robust) || kind & !MUTEX_KIND_BITS != 0 {
                return None;
            }
            owner
        }
        _ => return None,
    };
    (tid != 0).then_some(tid)
}

/// The cycles of the wait-for graph `waits` (thread to the thread it waits for), each once,
/// from its smallest tid, ordered by it.
pub fn deadlocks(waits: &BTreeMap<u32, u32>) -> Vec<Vec<u32>> {
    let mut cycles = Vec::new();
    for &start in waits.keys() {
        let mut path = vec![start];
        let mut at = start;
        while let Some(&next) = waits.get(&at) {
            if next == start {
                // Reported from its smallest member only.
                if path.iter().all(|&tid| tid >= start) {
                    cycles.push(path);
                }
                break;
            }
            // A cycle not through `start`, or a path into one: found from its own members.
            if path.contains(&next) || path.len() > waits.len() {
                break;
            }
            path.push(next);
            at = next;
        }
    }
    cycles
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::python::{Error, Result};

    /// Memory holding `words` at 0x1000.
    struct Words(Vec<u32>);

    impl Memory for Words {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<()> {
            let bytes: Vec<u8> = self.0.iter().flat_map(|w| w.to_le_bytes()).collect();
            let start = addr
                .checked_sub(0x1000)
                .ok_or_else(|| Error::Invalid("unmapped".into()))? as usize;
            let src = bytes
                .get(start..start + buf.len())
                .ok_or_else(|| Error::Invalid("unmapped".into()))?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    fn call(op: u32, uaddr: u64) -> (u64, u32) {
        (uaddr, op)
    }

    const PRIVATE: u32 = 128;

    #[test]
    fn a_pi_futex_names_its_owner_in_its_word() {
        let memory = Words(vec![0x8000_0000 | 1202, 0, 0, 0, 0]);
        let ok = |tid| tid == 1202;
        assert_eq!(
            lock_owner(&memory, call(futex_op::LOCK_PI | PRIVATE, 0x1000), ok),
            Some(1202)
        );
        // The same word names no thread of the process.
        assert_eq!(
            lock_owner(&memory, call(futex_op::LOCK_PI2, 0x1000), |_| false),
            None
        );
    }

    #[test]
    fn a_contended_glibc_mutex_names_its_owner() {
        let memory = Words(vec![2, 0, 1201, 1, 0]);
        let owner = lock_owner(&memory, call(futex_op::WAIT | PRIVATE, 0x1000), |t| {
            t == 1201
        });
        assert_eq!(owner, Some(1201));
    }

    #[test]
    fn words_that_are_no_mutex_name_no_one() {
        let any = |_| true;
        // A semaphore waited on at 0: its next word is a flag, not an owner.
        let sem = Words(vec![0, 0, PRIVATE, 0, 0]);
        assert_eq!(lock_owner(&sem, call(futex_op::WAIT, 0x1000), any), None);
        // A contended word with a `__kind` glibc has no bits for.
        let odd = Words(vec![2, 0, 1201, 1, 0xdead_0000]);
        assert_eq!(lock_owner(&odd, call(futex_op::WAIT, 0x1000), any), None);
        // A misaligned address, an address that cannot be read, no address, an
        // op that is no lock.
        assert_eq!(lock_owner(&odd, call(futex_op::WAIT, 0x1004), any), None);
        assert_eq!(lock_owner(&sem, call(futex_op::WAIT, 0x8000), any), None);
        assert_eq!(lock_owner(&sem, call(futex_op::WAIT, 0), any), None);
        let requeue = call(futex_op::WAIT_REQUEUE_PI, 0x1000);
        assert_eq!(lock_owner(&Words(vec![2, 0, 5, 0, 0]), requeue, any), None);
    }

    #[test]
    fn a_robust_mutex_holds_its_owner_in_its_word_too() {
        let memory = Words(vec![0x8000_0000 | 77, 0, 77, 0, 16]);
        assert_eq!(
            lock_owner(&memory, call(futex_op::WAIT, 0x1000), |_| true),
            Some(77)
        );
    }

    #[test]
    fn blocked_time_runs_from_the_last_switch_out_or_the_attach() {
        let blocked = ThreadStats::new(1, state::BLOCKED, 300);
        assert_eq!(blocked_ns(Some(&blocked), 100, 1000, false), Some(700));
        let running = ThreadStats::new(1, state::ON_CPU, 300);
        assert_eq!(blocked_ns(Some(&running), 100, 1000, true), None);
        // Never seen to switch: asleep since the attach, or not asleep.
        let unseen = ThreadStats::new(1, state::UNKNOWN, 90);
        assert_eq!(blocked_ns(Some(&unseen), 100, 1000, true), Some(900));
        assert_eq!(blocked_ns(Some(&unseen), 100, 1000, false), None);
        assert_eq!(blocked_ns(None, 100, 1000, true), Some(900));
        // A thread that fell asleep after the end was not asleep at it.
        let late = ThreadStats::new(1, state::BLOCKED, 1200);
        assert_eq!(blocked_ns(Some(&late), 100, 1000, true), None);
    }

    #[test]
    fn each_cycle_is_reported_once_from_its_smallest_tid() {
        let waits = BTreeMap::from([
            (5, 3),
            (3, 5),
            (7, 3),
            (10, 11),
            (11, 12),
            (12, 10),
            (20, 20),
        ]);
        assert_eq!(
            deadlocks(&waits),
            vec![vec![3, 5], vec![10, 11, 12], vec![20]]
        );
        let chain = BTreeMap::from([(1, 2), (2, 3)]);
        assert!(deadlocks(&chain).is_empty());
    }
}
