//! The host-wide budget of thread series (`max_series`), shared max-min fairly across
//! processes at each scrape by water-filling: every process gets the same level of series,
//! except that one needing less keeps what it needs, and one already holding more keeps what
//! it holds (a thread's series is sticky once assigned); the rest split what is left.

use std::collections::{HashMap, HashSet};

use super::{
    config::Compiled,
    state::{OTHER, SeriesKey, State, Values},
};

/// One process's thread series: those it holds already, and those it would have if every
/// thread it has now had a series of its own (at least `held`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Demand {
    pub held: usize,
    pub wanted: usize,
}

impl Demand {
    /// The series this process gets at `level`: the level, within what it holds and wants.
    pub fn share(self, level: usize) -> usize {
        level.clamp(self.held, self.wanted.max(self.held))
    }
}

/// The fair level of `demands` under `budget`: the largest `level` whose shares add up to at
/// most `budget`. It is at least the largest demand when every demand fits, and 0 when even
/// what the processes hold does not.
pub fn fair_level(demands: &[Demand], budget: usize) -> usize {
    let total = |level: usize| -> usize { demands.iter().map(|d| d.share(level)).sum() };
    let top = demands
        .iter()
        .map(|d| d.wanted.max(d.held))
        .max()
        .unwrap_or(0);
    if total(top) <= budget {
        return top;
    }
    // total(lo) <= budget < total(hi), or lo = 0.
    let (mut lo, mut hi) = (0, top);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if total(mid) <= budget {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    lo
}

/// A live thread that has no series yet, as a scrape found it.
pub struct Pending<'a> {
    pub tid: u32,
    /// Its name beyond the kernel's (its Python name), when known.
    pub name: Option<&'a str>,
    pub values: Values,
}

impl Pending<'_> {
    /// How busy the thread has been since the attach: switches, then CPU time.
    fn busyness(&self) -> (u64, u64) {
        let v = &self.values;
        (v.voluntary_switches + v.involuntary_switches, v.on_cpu_ns)
    }
}

impl State {
    /// Gives each of `pending` its series, under the per-process cap and the host-wide
    /// budget of `rules.max_series` thread series, and returns them with their values.
    /// Threads of processes not exported are left out.
    ///
    /// The budget is shared by [`fair_level`] among every process holding or wanting series;
    /// a process over its share keeps the series it has, names its busiest new threads while
    /// it has room and folds the rest into `thread="other"`, which takes one of its places.
    pub fn admit(
        &mut self,
        pending: Vec<Pending<'_>>,
        rules: &Compiled,
    ) -> Vec<(SeriesKey, Values)> {
        // The thread label and process of each pending thread, by process.
        let mut by_process: HashMap<String, Vec<(String, Pending<'_>)>> = HashMap::new();
        for p in pending {
            let Some(thread) = self.threads.get(&p.tid) else {
                continue;
            };
            let Some(process) = self.process_name(thread.tgid) else {
                continue;
            };
            if !rules.exports(process) {
                continue;
            }
            let label = rules.thread_label(process, p.name.unwrap_or(&thread.comm));
            by_process
                .entry(process.to_owned())
                .or_default()
                .push((label, p));
        }
        let cap = rules.max_threads_per_process;
        let mut processes: Vec<&String> = self.admitted.keys().chain(&self.other).collect();
        processes.extend(by_process.keys());
        processes.sort();
        processes.dedup();
        let mut named_wanted: HashMap<String, usize> = HashMap::new();
        let demands: Vec<(String, Demand)> = processes
            .into_iter()
            .map(|process| {
                let admitted = self.admitted.get(process);
                let held_named = admitted.map_or(0, |a| a.len());
                let mut new: Vec<&str> = by_process
                    .get(process)
                    .into_iter()
                    .flatten()
                    .map(|(label, _)| label.as_str())
                    .filter(|label| !admitted.is_some_and(|a| a.contains(*label)))
                    .collect();
                new.sort_unstable();
                new.dedup();
                let named = (held_named + new.len()).min(cap).max(held_named);
                let other = self.other.contains(process) || held_named + new.len() > named;
                named_wanted.insert(process.clone(), named);
                let demand = Demand {
                    held: held_named + usize::from(self.other.contains(process)),
                    wanted: named + usize::from(other),
                };
                (process.clone(), demand)
            })
            .collect();
        let just_demands: Vec<Demand> = demands.iter().map(|(_, d)| *d).collect();
        let level = fair_level(&just_demands, rules.max_series);
        self.level = Some(level);
        self.allowance = demands
            .into_iter()
            .map(|(process, demand)| {
                let named = named_wanted[&process];
                let held_named = self.admitted.get(&process).map_or(0, |a| a.len());
                let share = demand.share(level);
                let allowed = if share >= demand.wanted {
                    named
                } else {
                    share.saturating_sub(1).max(held_named)
                };
                (process, allowed)
            })
            .collect();
        let mut admitted = Vec::new();
        for (process, mut threads) in by_process {
            threads
                .sort_by(|(_, a), (_, b)| b.busyness().cmp(&a.busyness()).then(a.tid.cmp(&b.tid)));
            for (label, p) in threads {
                let key = self.series_for_label(&process, label, cap);
                if let Some(t) = self.threads.get_mut(&p.tid) {
                    t.by_kernel_name = p.name.is_none() && key.thread != OTHER;
                    t.series = Some(key.clone());
                }
                admitted.push((key, p.values));
            }
        }
        admitted
    }

    /// After a reload, frees the series of the threads whose process name or label the new
    /// `rules` change, for them to be admitted again; every other thread keeps its series,
    /// `thread="other"` included, so that no counts move between series. `names` are the
    /// threads' names beyond the kernel's (Python names).
    pub fn keep_series_unless_renamed(&mut self, rules: &Compiled, names: &HashMap<u32, String>) {
        for (tid, thread) in &mut self.threads {
            let Some(key) = &thread.series else {
                continue;
            };
            let process = self.process_names.get(&thread.tgid);
            let name = names.get(tid).unwrap_or(&thread.comm);
            let same = process == Some(&key.process)
                && (key.thread == OTHER || rules.thread_label(&key.process, name) == key.thread);
            if !same {
                thread.series = None;
            }
        }
    }

    /// Frees the series of the threads that were labelled by their kernel name before their
    /// Python name (in `names`) was known, and whose Python name labels them otherwise, for
    /// them to be admitted under it: a CPython thread is exported a scrape or two before its
    /// interpreter has been read. Their counts move with them; a series left with no thread
    /// is gone from the next scrape, and its place is free again.
    pub fn label_by_python_names(&mut self, rules: &Compiled, names: &HashMap<u32, String>) {
        let mut left: HashSet<SeriesKey> = HashSet::new();
        for (tid, thread) in &mut self.threads {
            if !thread.by_kernel_name {
                continue;
            }
            let (Some(key), Some(name)) = (&thread.series, names.get(tid)) else {
                continue;
            };
            thread.by_kernel_name = false;
            if rules.thread_label(&key.process, name) != key.thread {
                left.extend(thread.series.take());
            }
        }
        self.free_places(left);
    }

    /// A process named in the middle of its `exec` has its name now: its threads leave the
    /// series of the name it had, to be admitted under the new one.
    pub fn process_renamed(&mut self, tgid: u32, name: String) {
        let Some(old) = self.process_names.insert(tgid, name.clone()) else {
            return;
        };
        if old == name {
            return;
        }
        let mut left: HashSet<SeriesKey> = HashSet::new();
        for thread in self.threads.values_mut() {
            if thread.tgid == tgid && thread.series.as_ref().is_some_and(|k| k.process == old) {
                left.extend(thread.series.take());
            }
        }
        self.free_places(left);
    }

    /// Frees the places of the series in `left` that no thread, live or exited, counts in.
    fn free_places(&mut self, mut left: HashSet<SeriesKey>) {
        if left.is_empty() {
            return;
        }
        for key in self.threads.values().filter_map(|t| t.series.as_ref()) {
            left.remove(key);
        }
        for key in left {
            if self.retired.contains_key(&key) {
                continue;
            }
            if let Some(admitted) = self.admitted.get_mut(&key.process) {
                admitted.remove(&key.thread);
                if admitted.is_empty() {
                    self.admitted.remove(&key.process);
                }
            }
        }
    }

    /// The series a thread labelled `label` of `process` counts in: its label's when that is
    /// admitted already or the process has room for it, else `thread="other"` (counted as
    /// folded). The room is what the last scrape allowed the process; a process it did not
    /// see may have the fair level's less one (for its `other`).
    pub fn series_for_label(&mut self, process: &str, label: String, cap: usize) -> SeriesKey {
        let allowed = self
            .allowance
            .get(process)
            .copied()
            .or_else(|| self.level.map(|level| level.saturating_sub(1)))
            .unwrap_or(usize::MAX)
            .min(cap);
        let admitted = self.admitted.entry(process.to_owned()).or_default();
        let thread = if admitted.contains(&label) {
            label
        } else if admitted.len() < allowed {
            admitted.insert(label.clone());
            label
        } else {
            self.folded += 1;
            self.other.insert(process.to_owned());
            OTHER.to_owned()
        };
        SeriesKey::new(process.to_owned(), thread)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::config::Config;

    fn busy(tid: u32, switches: u64) -> Pending<'static> {
        Pending {
            tid,
            name: None,
            values: Values {
                voluntary_switches: switches,
                ..Values::default()
            },
        }
    }

    fn labels(admitted: &[(SeriesKey, Values)], process: &str) -> Vec<String> {
        let mut labels: Vec<String> = admitted
            .iter()
            .filter(|(k, _)| k.process == process)
            .map(|(k, _)| k.thread.clone())
            .collect();
        labels.sort();
        labels.dedup();
        labels
    }

    /// Process `p` has six threads (`p`, `w2`..`w6`, busier the higher), `q` two; 5 series.
    #[test]
    fn the_busiest_threads_are_named_and_series_stay_where_they_are() {
        let rules = Config {
            max_series: 5,
            ..Config::default()
        }
        .compile()
        .unwrap();
        let mut state = State::default();
        state.add_thread(1, 1, "p".into());
        for tid in 2..=6 {
            state.add_thread(tid, 1, format!("w{tid}"));
        }
        state.add_thread(10, 10, "q".into());
        state.add_thread(11, 10, "x".into());
        let pending = [1, 2, 3, 4, 5, 6, 10, 11].map(|tid| busy(tid, u64::from(tid)));
        let admitted = state.admit(pending.into(), &rules);
        // q needs 2 and keeps them; p gets the 3 left: its two busiest and `other`.
        assert_eq!(labels(&admitted, "q"), ["q", "x"]);
        assert_eq!(labels(&admitted, "p"), [OTHER, "w5", "w6"]);
        assert_eq!(state.folded, 4);
        let other: u64 = admitted
            .iter()
            .filter(|(k, _)| k.thread == OTHER)
            .map(|(_, v)| v.voluntary_switches)
            .sum();
        assert_eq!(
            other,
            1 + 2 + 3 + 4,
            "the folded threads' counts are in other"
        );
        // A busy new thread of q: the budget is spent, so it folds, and p keeps its series.
        state.add_thread(12, 10, "y".into());
        let admitted = state.admit(vec![busy(12, 100)], &rules);
        assert_eq!(labels(&admitted, "q"), [OTHER]);
        assert_eq!(state.folded, 5);
        assert_eq!(
            state.threads[&6].series.as_ref().map(|k| k.thread.as_str()),
            Some("w6")
        );
    }

    /// A CPython process exported before its interpreter was read: its threads move to their
    /// Python names' series once, and a later Python rename does not move them again.
    #[test]
    fn threads_exported_before_their_python_names_were_known_move_to_them_once() {
        let rules = Config {
            max_series: 3,
            ..Config::default()
        }
        .compile()
        .unwrap();
        let mut state = State::default();
        state.add_thread(1, 1, "python3".into());
        state.add_thread(2, 1, "heartbeat-of-th".into());
        let admitted = state.admit(vec![busy(1, 1), busy(2, 2)], &rules);
        assert_eq!(labels(&admitted, "python3"), ["heartbeat-of-th", "python3"]);
        let mut names: HashMap<u32, String> = [
            (1, "MainThread".to_owned()),
            (2, "heartbeat-of-the-ingest-service".to_owned()),
        ]
        .into();
        state.label_by_python_names(&rules, &names);
        let freed: Vec<Pending<'_>> = [1, 2]
            .into_iter()
            .filter(|tid| state.threads[tid].series.is_none())
            .map(|tid| Pending {
                name: names.get(&tid).map(String::as_str),
                ..busy(tid, u64::from(tid))
            })
            .collect();
        assert_eq!(
            freed.len(),
            2,
            "both threads leave their kernel names' series"
        );
        let admitted = state.admit(freed, &rules);
        // The kernel names' places are free again, so both fit in a budget of three.
        assert_eq!(
            labels(&admitted, "python3"),
            ["MainThread", "heartbeat-of-the-ingest-service"]
        );
        assert_eq!(state.folded, 0);
        let switches: u64 = admitted.iter().map(|(_, v)| v.voluntary_switches).sum();
        assert_eq!(switches, 3, "the counts moved with the threads");
        names.insert(2, "renamed-in-python".to_owned());
        state.label_by_python_names(&rules, &names);
        assert!(
            state.threads.values().all(|t| t.series.is_some()),
            "a thread labelled by its Python name keeps its series"
        );
    }

    /// A process first named in the middle of its `exec` (by its interpreter, without its
    /// script): its threads move to its script's name, other processes' threads stay.
    #[test]
    fn a_process_named_again_takes_its_threads_along() {
        let rules = Config::default().compile().unwrap();
        let mut state = State::default();
        state.add_thread(1, 1, "python3".into());
        state.add_thread(2, 1, "worker".into());
        state.add_thread(10, 10, "python3".into());
        state.admit(vec![busy(1, 1), busy(2, 1), busy(10, 1)], &rules);
        state.process_renamed(1, "io_vs_cpu".into());
        assert!(state.threads[&1].series.is_none() && state.threads[&2].series.is_none());
        let admitted = state.admit(vec![busy(1, 1), busy(2, 1)], &rules);
        assert_eq!(labels(&admitted, "io_vs_cpu"), ["python3", "worker"]);
        assert_eq!(
            state.threads[&10]
                .series
                .as_ref()
                .map(|k| k.process.as_str()),
            Some("python3"),
            "another process of the old name keeps its series"
        );
        assert!(
            !state.admitted["python3"].contains("worker"),
            "the old name's place no thread holds is free"
        );
    }

    fn wants(wanted: &[usize]) -> Vec<Demand> {
        wanted
            .iter()
            .map(|&wanted| Demand { held: 0, wanted })
            .collect()
    }

    fn shares(demands: &[Demand], budget: usize) -> Vec<usize> {
        let level = fair_level(demands, budget);
        demands.iter().map(|d| d.share(level)).collect()
    }

    #[test]
    fn a_process_needing_less_than_the_level_keeps_all_it_needs() {
        // 6 + 12 + 12 = 30: the small one keeps its 6, the others split the remaining 24.
        assert_eq!(shares(&wants(&[6, 41, 61]), 30), [6, 12, 12]);
        assert_eq!(fair_level(&wants(&[6, 41, 61]), 30), 12);
    }

    #[test]
    fn everything_fits_under_a_large_budget() {
        let demands = wants(&[3, 50, 7]);
        assert_eq!(fair_level(&demands, 1000), 50);
        assert_eq!(shares(&demands, 1000), [3, 50, 7]);
        assert_eq!(shares(&demands, 60), [3, 50, 7]);
    }

    #[test]
    fn equal_demands_split_the_budget_evenly() {
        assert_eq!(shares(&wants(&[100, 100, 100, 100]), 40), [10, 10, 10, 10]);
        // What does not divide evenly is left over rather than given to one of them.
        assert_eq!(shares(&wants(&[100, 100, 100]), 40), [13, 13, 13]);
    }

    #[test]
    fn what_a_process_holds_it_keeps() {
        let demands = [
            Demand {
                held: 20,
                wanted: 25,
            },
            Demand {
                held: 0,
                wanted: 30,
            },
            Demand { held: 2, wanted: 4 },
        ];
        // 30 to share: the first holds 20, the third needs 4, the second gets the 6 left.
        assert_eq!(shares(&demands, 30), [20, 6, 4]);
        // Holdings over the budget: nobody gets more than it holds.
        assert_eq!(fair_level(&demands, 10), 0);
        assert_eq!(shares(&demands, 10), [20, 0, 2]);
    }

    #[test]
    fn no_processes_and_no_budget() {
        assert_eq!(fair_level(&[], 10), 0);
        assert_eq!(shares(&wants(&[5, 5]), 0), [0, 0]);
    }

    #[test]
    fn shares_never_exceed_the_budget_unless_holdings_do() {
        for budget in 0..200 {
            for wanted in [[1, 2, 3], [50, 50, 1], [0, 70, 9], [199, 1, 1]] {
                let demands = wants(&wanted);
                let level = fair_level(&demands, budget);
                let given: usize = demands.iter().map(|d| d.share(level)).sum();
                assert!(given <= budget, "{wanted:?} under {budget}: {given}");
                // And no higher level would fit.
                let next: usize = demands.iter().map(|d| d.share(level + 1)).sum();
                assert!(
                    next > budget || next == given,
                    "{wanted:?} under {budget}: level {level} is not the highest"
                );
            }
        }
    }
}
