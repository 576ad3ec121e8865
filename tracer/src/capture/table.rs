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
        "{:>8} {:<24} {:>8} {:>8} {:>7} {:>10} {:>10} {:>10} {:>7} {:>10}",
        "TID",
        "NAME",
        "PARENT",
        "VOLUNT",
        "INVOL",
        "CPU ms",
        "RUNQ ms",
        "OFFCPU ms",
        "FUTEX",
        "FUTEX ms"
    );
    for t in &summary.threads {
        let mut name = printable(&t.name);
        if name.chars().count() > 24 {
            name = name.chars().take(23).collect::<String>() + "…";
        }
        let parent = t
            .parent_tid
            .map_or_else(|| "-".to_owned(), |p| p.to_string());
        let _ = writeln!(
            out,
            "{:>8} {:<24} {:>8} {:>8} {:>7} {:>10} {:>10} {:>10} {:>7} {:>10}",
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
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(printable("a\nb\x1b[31m"), "a\\u{a}b\\u{1b}[31m");
        assert_eq!(printable("wörker \"x\" \u{202e}"), "wörker \"x\" \\u{202e}");
    }
}
