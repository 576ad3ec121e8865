//! Per-process histograms (run-queue and futex waits), summed from the per-thread log2
//! histograms of the kernel map. They are kept apart from the per-series counters: a scrape
//! adds 80 buckets per thread into its process, and moves only the counters by series.

use std::collections::HashMap;

use tracer_common::thread::{HISTOGRAM_BUCKETS, ThreadStats};

use super::state::{FastMap, Monotonic, State, clamp_to_reported};

/// The histograms of one thread, or of all threads of a process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hists {
    /// Run-queue waits: bucket `i` holds waits below 2^i ns.
    pub runqueue: [u64; HISTOGRAM_BUCKETS],
    /// Futex waits, the same way.
    pub futex: [u64; HISTOGRAM_BUCKETS],
}

impl Default for Hists {
    fn default() -> Self {
        Self {
            runqueue: [0; HISTOGRAM_BUCKETS],
            futex: [0; HISTOGRAM_BUCKETS],
        }
    }
}

impl Hists {
    /// A thread's histograms as the kernel map has them.
    pub fn of_thread(stats: &ThreadStats) -> Self {
        let mut hists = Self::default();
        hists.add_thread(stats);
        hists
    }

    /// Adds a thread's histograms from the kernel map.
    pub fn add_thread(&mut self, stats: &ThreadStats) {
        for (a, &b) in self.runqueue.iter_mut().zip(&stats.runqueue_hist) {
            *a += u64::from(b);
        }
        for (a, &b) in self.futex.iter_mut().zip(&stats.futex_hist) {
            *a += u64::from(b);
        }
    }

    pub fn add(&mut self, other: &Self) {
        for (a, b) in self.runqueue.iter_mut().zip(&other.runqueue) {
            *a = a.wrapping_add(*b);
        }
        for (a, b) in self.futex.iter_mut().zip(&other.futex) {
            *a = a.wrapping_add(*b);
        }
    }
}

impl Monotonic for Hists {
    /// Raises every bucket to at least `floor`'s.
    fn at_least(&mut self, floor: &Self) {
        for (a, b) in self.runqueue.iter_mut().zip(&floor.runqueue) {
            *a = (*a).max(*b);
        }
        for (a, b) in self.futex.iter_mut().zip(&floor.futex) {
            *a = (*a).max(*b);
        }
    }
}

impl State {
    /// Keeps the histograms of an exited thread of `process` in its process's.
    pub fn retire_hists(&mut self, process: &str, hists: &Hists) {
        match self.retired_hists.get_mut(process) {
            Some(total) => total.add(hists),
            None => {
                self.retired_hists.insert(process.to_owned(), hists.clone());
            }
        }
    }

    /// Each process's histograms: those of its live threads in `live` (by thread group id)
    /// and of its exited ones, never below what was last exported.
    pub fn finish_hists(&mut self, live: FastMap<u32, Hists>) -> HashMap<String, Hists> {
        let mut by_process: HashMap<String, Hists> = HashMap::new();
        for (tgid, hists) in live {
            let Some(name) = self.process_names.get(&tgid) else {
                continue;
            };
            match by_process.get_mut(name) {
                Some(total) => total.add(&hists),
                None => {
                    by_process.insert(name.clone(), hists);
                }
            }
        }
        for (name, hists) in &self.retired_hists {
            by_process.entry(name.clone()).or_default().add(hists);
        }
        clamp_to_reported(&mut by_process, &mut self.reported_hists);
        by_process
    }

    /// Forgets the histograms of processes no longer exported.
    pub fn expire_hists(&mut self) {
        let live: std::collections::HashSet<&String> = self.process_names.values().collect();
        let keep = |name: &String| live.contains(name) || self.processes.contains_key(name);
        self.retired_hists.retain(|name, _| keep(name));
        self.reported_hists.retain(|name, _| keep(name));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_histogram_sums_live_and_exited_threads_and_never_falls() {
        let mut state = State::default();
        state.add_thread(1, 1, "p".into());
        let mut one = Hists::default();
        one.futex[3] = 2;
        state.retire_hists("p", &one);
        let mut live = FastMap::default();
        live.insert(1, one.clone());
        let first = state.finish_hists(live);
        assert_eq!(first["p"].futex[3], 4);
        // The live thread's counts lower (its entry was replaced): the process keeps 4.
        let second = state.finish_hists(FastMap::default());
        assert_eq!(second["p"].futex[3], 4);
    }
}
