//! What tracer reads from the running kernel outside eBPF: tracefs, procfs, privileges.

pub mod btf;
pub mod privileges;
pub mod procfs;
pub mod tracefs;

/// `CLOCK_MONOTONIC` now, in nanoseconds: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The niceness of the thread that drains a capture's ring buffer.
const READER_NICE: libc::c_int = -10;

/// Raises the calling thread's scheduling weight (nice −10, which needs `CAP_SYS_NICE`) so
/// that the ring buffer is drained even when the traced threads keep every CPU busy: with
/// hundreds of runnable threads a reader of normal weight gets a CPU too rarely, and events
/// are lost when the buffer fills. Drains take little time, so the traced threads hardly
/// notice. Without the privilege the thread stays as it is.
pub fn raise_reader_priority() {
    // SAFETY: gettid has no preconditions; nice is per thread on Linux, so `setpriority` on
    // this thread's id changes only it.
    unsafe {
        let tid = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, tid, READER_NICE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `CAP_SYS_NICE`, which lowering a niceness needs.
    const CAP_SYS_NICE: u32 = 23;

    /// The niceness of thread `tid`.
    fn nice_of(tid: libc::pid_t) -> libc::c_int {
        // SAFETY: no preconditions.
        unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) }
    }

    #[test]
    fn the_reader_thread_alone_gets_the_higher_weight() {
        if privileges::effective_capabilities() & (1 << CAP_SYS_NICE) == 0 {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("skipped: without CAP_SYS_NICE the reader keeps its niceness");
            return;
        }
        // SAFETY: no preconditions.
        let outer = unsafe { libc::gettid() };
        let before = nice_of(outer);
        let reader = std::thread::spawn(|| {
            raise_reader_priority();
            // SAFETY: no preconditions.
            nice_of(unsafe { libc::gettid() })
        });
        assert_eq!(reader.join().unwrap(), READER_NICE);
        assert_eq!(nice_of(outer), before, "other threads keep theirs");
    }
}
