//! The per-thread table `record` prints when it ends.

use std::fmt::Write as _;

use super::summary::Summary;

/// Milliseconds with one decimal.
fn ms(ns: u64) -> String {
    format!("{:.1}", ns as f64 / 1e6)
}

/// A thread name made safe for a terminal: control and text-direction characters are shown
/// escaped, everything else as it is.
pub fn printable(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        let bidi = matches!(c, '\u{200e}'..='\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}');
        if c.is_control() || bidi {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    out
}

/// Renders the summary as a fixed-width table, one thread a row.
pub fn render(summary: &Summary) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "pid {} `{}` ({}): {} threads, {:.3} s, {} events lost",
        summary.pid,
        printable(&summary.command),
        printable(&summary.process),
        summary.threads.len(),
        summary.duration_ns as f64 / 1e9,
        summary.lost_events
    );
    let _ = writeln!(
        out,
        "{:>8} {:<24} {:>8} {:>8} {:>7} {:>10} {:>10} {:>10} {:>7} {:>10} {:>10} {:>9}",
        "TID",
        "NAME",
        "PARENT",
        "VOLUNT",
        "INVOL",
        "CPU ms",
        "RUNQ ms",
        "OFFCPU ms",
        "FUTEX",
        "FUTEX ms",
        "BLOCKED s",
        "WAITS FOR"
    );
    for t in &summary.threads {
        let name = short_name(&t.name);
        let parent = t
            .parent_tid
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        let _ = writeln!(
            out,
            "{:>8} {:<24} {:>8} {:>8} {:>7} {:>10} {:>10} {:>10} {:>7} {:>10} {:>10} {:>9}",
            t.tid,
            name,
            parent,
            t.voluntary_switches,
            t.involuntary_switches,
            ms(t.on_cpu_ns),
            ms(t.runqueue_wait_ns),
            ms(t.off_cpu_ns),
            t.futex_waits,
            ms(t.futex_wait_ns),
            t.blocked_ns
                .map_or_else(|| "-".to_owned(), |ns| format!("{:.3}", ns as f64 / 1e9)),
            t.waiting_for_tid
                .map_or_else(|| "-".to_owned(), |tid| tid.to_string()),
        );
    }
    for cycle in &summary.deadlocks {
        let _ = writeln!(out, "deadlock: {}", describe_cycle(summary, cycle));
    }
    out
}

/// A thread name for a table cell: printable, at most 24 characters.
fn short_name(name: &str) -> String {
    let name = printable(name);
    if name.chars().count() > 24 {
        name.chars().take(23).collect::<String>() + "…"
    } else {
        name
    }
}

/// A deadlock by thread names, each waiting for the next, back to the first:
/// `a (1201) -> b (1202) -> a (1201)`.
fn describe_cycle(summary: &Summary, cycle: &[u32]) -> String {
    let named = |tid: &u32| {
        let name = summary
            .threads
            .iter()
            .find(|t| t.tid == *tid)
            .map_or_else(String::new, |t| printable(&t.name));
        format!("{name} ({tid})")
    };
    cycle
        .iter()
        .chain(cycle.first())
        .map(named)
        .collect::<Vec<_>>()
        .join(" -> ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::{
        summary::{Counters, SCHEMA, ThreadSummary},
        threads::ThreadTable,
    };

    #[test]
    fn blocked_threads_and_deadlocks_are_shown_by_name() {
        let mut table = ThreadTable::default();
        table.add_existing(10, 11, "locker-a".into());
        table.add_existing(10, 12, "locker-b".into());
        let mut threads: Vec<ThreadSummary> = table
            .iter()
            .map(|t| ThreadSummary::new(t, Counters::default()))
            .collect();
        threads[0].blocked_ns = Some(2_500_000_000);
        threads[0].waiting_for_tid = Some(12);
        threads[1].blocked_ns = Some(2_400_000_000);
        threads[1].waiting_for_tid = Some(11);
        let summary = Summary {
            schema: SCHEMA,
            pid: 10,
            command: "deadlock".into(),
            process: "deadlock".into(),
            started_ns: 0,
            duration_ns: 2_000_000_000,
            lost_events: 0,
            lost_events_by_kind: Default::default(),
            threads,
            deadlocks: vec![vec![11, 12]],
            python: None,
        };
        let text = render(&summary);
        let row = text.lines().find(|l| l.contains("locker-a")).unwrap();
        assert!(row.ends_with("2.500        12"), "{row}");
        assert_eq!(
            text.lines().last(),
            Some("deadlock: locker-a (11) -> locker-b (12) -> locker-a (11)")
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\nb\x1b[31m"), "a\\u{a}b\\u{1b}[31m");
        assert_eq!(printable("wörker \"x\" \u{202e}"), "wörker \"x\" \\u{202e}");
    }
}
