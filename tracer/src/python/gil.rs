//! GIL waits: futex waits on a word inside the interpreter's GIL state.
//!
//! A thread that wants the GIL while another holds it waits on the condition variable (and
//! then the mutex) of `struct _gil_runtime_state`; a thread made to drop it waits on the
//! switch condition variable in the same struct. So a futex wait whose address lies in the
//! struct is time spent waiting for the GIL. Its address becomes known only once the
//! interpreter is read, so wait time is kept by address until then.

use std::{collections::HashMap, ops::Range};

use tracer_common::event::FutexWait;

/// The most (thread, address) pairs kept; waits beyond are counted in `dropped`.
const MAX_PAIRS: usize = 1 << 20;

/// Futex wait time by thread and futex address.
#[derive(Debug, Default, Clone)]
pub struct FutexTimes {
    by_address: HashMap<(u32, u64), u64>,
    /// Waits not kept because the table was full.
    pub dropped: u64,
}

impl FutexTimes {
    /// Adds a wait of `ns` by thread `tid` on the futex at `uaddr`.
    pub fn add(&mut self, tid: u32, uaddr: u64, ns: u64) {
        let full = self.by_address.len() >= MAX_PAIRS;
        match self.by_address.get_mut(&(tid, uaddr)) {
            Some(total) => *total = total.saturating_add(ns),
            None if full => self.dropped += 1,
            None => {
                self.by_address.insert((tid, uaddr), ns);
            }
        }
    }

    /// Adds a futex wait event.
    pub fn observe(&mut self, event: &FutexWait) {
        self.add(
            event.tid,
            event.uaddr,
            event.header.ts_ns.saturating_sub(event.start_ns),
        );
    }

    /// Wait time per thread on futexes inside `range`.
    pub fn within(&self, range: &Range<u64>) -> HashMap<u32, u64> {
        let mut totals = HashMap::new();
        for (&(tid, uaddr), &ns) in &self.by_address {
            if range.contains(&uaddr) {
                *totals.entry(tid).or_insert(0u64) += ns;
            }
        }
        totals
    }
}

#[cfg(test)]
mod tests {
    use tracer_common::event::{EventKind, Header};

    use super::*;

    fn wait(tid: u32, uaddr: u64, start_ns: u64, end_ns: u64) -> FutexWait {
        FutexWait {
            header: Header {
                kind: EventKind::FutexWait as u32,
                cpu: 0,
                ts_ns: end_ns,
            },
            tid,
            tgid: 1,
            uaddr,
            start_ns,
            op: 128,
            nr_futexes: 1,
            ret: 0,
        }
    }

    #[test]
    fn waits_inside_the_gil_state_are_summed_per_thread() {
        let gil = 0x1000..0x1000 + 208;
        let mut times = FutexTimes::default();
        times.observe(&wait(1, 0x1000 + 48, 100, 400)); // the condition variable
        times.observe(&wait(1, 0x1000 + 96, 500, 600)); // the mutex
        times.observe(&wait(1, 0x5000, 0, 10_000)); // a lock elsewhere
        times.observe(&wait(2, 0x1000 + 207, 0, 50));
        times.observe(&wait(3, 0x1000 + 208, 0, 70)); // just past the end
        times.observe(&wait(4, 0x1000 + 48, 10, 5)); // clock went backwards: no time
        let within = times.within(&gil);
        assert_eq!(within.get(&1), Some(&400));
        assert_eq!(within.get(&2), Some(&50));
        assert_eq!(within.get(&3), None);
        assert_eq!(within.get(&4), Some(&0));
    }
}
