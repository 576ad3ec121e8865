//! The daemon's metric families, written at scrape time as Prometheus text exposition
//! (format 0.0.4). The text is written straight from the collected values into one buffer,
//! without intermediate metric objects: with 10 000 thread series a scrape is some 160 000
//! lines, and building objects for them cost several times the collection itself.

use std::fmt::Write as _;

use tracer_common::{event::EventKind, thread::HISTOGRAM_BUCKETS};

use super::{
    histograms::Hists,
    labels,
    state::{FastMap, SeriesKey, Values},
};

/// Histogram bounds exported: every other power of two from 2^10 ns (1 µs) to 2^34 ns (17 s).
pub const EXPORTED_BUCKETS: [usize; 13] = [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34];

/// The `le` label of each exported bucket, in seconds.
static LE: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    EXPORTED_BUCKETS
        .iter()
        .map(|&bound| format!("{}", (1u64 << bound) as f64 / 1e9))
        .collect()
});

/// Everything one scrape exports.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Per (process, thread) series.
    pub series: FastMap<SeriesKey, Values>,
    /// Per process name: threads created, exited, alive; the run-queue and futex waits of all
    /// its threads.
    pub processes: Vec<ProcessRow>,
    pub lost: Vec<(EventKind, u64)>,
    pub folded: u64,
    pub last_scrape_seconds: f64,
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    /// Program name, run time, run count (present when `kernel.bpf_stats_enabled` is on).
    pub programs: Vec<(String, f64, u64)>,
    pub bpf_stats_enabled: bool,
    /// Per series asleep for at least `blocked_min_secs`: the longest one of its threads has
    /// been asleep, in nanoseconds.
    pub blocked: FastMap<SeriesKey, u64>,
}

/// One process name's row.
#[derive(Debug, Default, Clone)]
pub struct ProcessRow {
    pub process: String,
    pub threads_created: u64,
    pub threads_exited: u64,
    pub threads_alive: u64,
    /// The sum of its series as exported by the same scrape.
    pub totals: Values,
    /// Its histograms.
    pub hists: Hists,
}

/// A sample value: integers print exactly, seconds as decimals.
#[derive(Clone, Copy)]
enum Num {
    Int(u64),
    Float(f64),
    /// Nanoseconds shown as seconds.
    Seconds(u64),
}

/// Writes exposition text into one growing buffer.
struct Out {
    text: String,
}

impl Out {
    fn header(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// Escaped `k="v",...` for `pairs`, to reuse across a series' lines.
    fn labels(pairs: &[(&str, &str)]) -> String {
        let mut text = String::with_capacity(64);
        for (i, (k, v)) in pairs.iter().enumerate() {
            if i > 0 {
                text.push(',');
            }
            text.push_str(k);
            text.push_str("=\"");
            if v.contains(['\\', '"', '\n']) {
                for c in v.chars() {
                    match c {
                        '\\' => text.push_str("\\\\"),
                        '"' => text.push_str("\\\""),
                        '\n' => text.push_str("\\n"),
                        c => text.push(c),
                    }
                }
            } else {
                text.push_str(v);
            }
            text.push('"');
        }
        text
    }

    /// `name{labels,extra} value`; `extra` is a label whose value needs no escaping.
    fn line(&mut self, name: &str, labels: &str, extra: Option<(&str, &str)>, value: Num) {
        self.text.push_str(name);
        if !labels.is_empty() || extra.is_some() {
            self.text.push('{');
            self.text.push_str(labels);
            if let Some((k, v)) = extra {
                if !labels.is_empty() {
                    self.text.push(',');
                }
                self.text.push_str(k);
                self.text.push_str("=\"");
                self.text.push_str(v);
                self.text.push('"');
            }
            self.text.push('}');
        }
        self.text.push(' ');
        match value {
            Num::Int(n) => push_u64(&mut self.text, n),
            Num::Float(f) => {
                let _ = write!(self.text, "{f}");
            }
            Num::Seconds(ns) => push_seconds(&mut self.text, ns),
        }
        self.text.push('\n');
    }

    fn sample(&mut self, name: &str, pairs: &[(&str, &str)], value: Num) {
        self.line(name, &Self::labels(pairs), None, value);
    }

    /// A histogram from log2 buckets (bucket `i` holds durations below 2^i ns).
    fn histogram(
        &mut self,
        name: &str,
        labels: &str,
        buckets: &[u64; HISTOGRAM_BUCKETS],
        sum_ns: u64,
    ) {
        let bucket_name = Suffixed::new(name, "_bucket");
        for (cumulative, le) in exported_counts(buckets).into_iter().zip(LE.iter()) {
            self.line(
                &bucket_name.0,
                labels,
                Some(("le", le)),
                Num::Int(cumulative),
            );
        }
        let total: u64 = buckets.iter().sum();
        self.line(
            &bucket_name.0,
            labels,
            Some(("le", "+Inf")),
            Num::Int(total),
        );
        self.line(
            &Suffixed::new(name, "_sum").0,
            labels,
            None,
            Num::Seconds(sum_ns),
        );
        self.line(
            &Suffixed::new(name, "_count").0,
            labels,
            None,
            Num::Int(total),
        );
    }
}

/// The cumulative counts of log2 `buckets` at each of [`EXPORTED_BUCKETS`] (the waits
/// below 2^bound ns); the total is the `+Inf` bucket.
pub fn exported_counts(buckets: &[u64; HISTOGRAM_BUCKETS]) -> [u64; EXPORTED_BUCKETS.len()] {
    let mut counts = [0; EXPORTED_BUCKETS.len()];
    let (mut cumulative, mut next) = (0, 0);
    for (count, &bound) in counts.iter_mut().zip(&EXPORTED_BUCKETS) {
        while next <= bound {
            cumulative += buckets[next];
            next += 1;
        }
        *count = cumulative;
    }
    counts
}

/// The escaped labels of the series of `thread` in the process identity `process`.
pub fn series_labels(process: &str, thread: &str) -> String {
    Out::labels(
        &labels::label_pairs(process)
            .chain([("thread", thread)])
            .collect::<Vec<_>>(),
    )
}

/// The escaped labels of a process identity ([`labels`]).
fn process_labels(process: &str) -> String {
    Out::labels(&labels::label_pairs(process).collect::<Vec<_>>())
}

/// Appends `n` in decimal.
fn push_u64(text: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    push_ascii(text, &digits[at..]);
}

/// Appends ASCII digits and points.
fn push_ascii(text: &mut String, ascii: &[u8]) {
    text.push_str(std::str::from_utf8(ascii).expect("ASCII digits"));
}

/// Appends `ns` nanoseconds as decimal seconds, exactly (`1.5`, `0.000001024`, `3`).
fn push_seconds(text: &mut String, ns: u64) {
    push_u64(text, ns / 1_000_000_000);
    let mut fraction = ns % 1_000_000_000;
    if fraction == 0 {
        return;
    }
    // The nine decimals, then without the trailing zeros.
    let mut digits = [b'.', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0', b'0'];
    for at in (1..digits.len()).rev() {
        digits[at] = b'0' + (fraction % 10) as u8;
        fraction /= 10;
    }
    let end = digits.iter().rposition(|&b| b != b'0').map_or(1, |i| i + 1);
    push_ascii(text, &digits[..end]);
}

/// A metric name with a suffix.
struct Suffixed(String);

impl Suffixed {
    fn new(name: &str, suffix: &str) -> Self {
        Self(format!("{name}{suffix}"))
    }
}

/// Lines a scrape writes per thread series, for sizing the buffer.
const LINES_PER_SERIES: usize = 7;
/// Lines a scrape writes per process (two histograms and three counts), for sizing the buffer.
const LINES_PER_PROCESS: usize = 2 * (EXPORTED_BUCKETS.len() + 3) + 3;

/// The exposition text of a scrape, in the contract's metric names.
pub fn render(s: &Scrape) -> String {
    let mut out = Out {
        text: String::with_capacity(
            128 * (LINES_PER_SERIES * s.series.len() + LINES_PER_PROCESS * s.processes.len() + 64),
        ),
    };
    let processes =
        |out: &mut Out, name: &str, kind: &str, help: &str, value: &dyn Fn(&ProcessRow) -> u64| {
            if s.processes.is_empty() {
                return;
            }
            out.header(name, kind, help);
            for p in &s.processes {
                out.line(name, &process_labels(&p.process), None, Num::Int(value(p)));
            }
        };
    processes(
        &mut out,
        "tracer_threads_created_total",
        "counter",
        "Threads created in a process, by process name.",
        &|p| p.threads_created,
    );
    processes(
        &mut out,
        "tracer_threads_exited_total",
        "counter",
        "Threads of a process that exited (not its main thread), by process name.",
        &|p| p.threads_exited,
    );
    processes(
        &mut out,
        "tracer_threads",
        "gauge",
        "Threads alive, by process name.",
        &|p| p.threads_alive,
    );

    // Each series with its labels, escaped when the series was made.
    let series: Vec<(&str, &Values)> = s.series.iter().map(|(k, v)| (k.labels(), v)).collect();
    if !series.is_empty() {
        let name = "tracer_thread_context_switches_total";
        out.header(
            name,
            "counter",
            "Context switches: voluntary (the thread blocked) or involuntary (it was preempted).",
        );
        for (labels, v) in &series {
            out.line(
                name,
                labels,
                Some(("kind", "voluntary")),
                Num::Int(v.voluntary_switches),
            );
            out.line(
                name,
                labels,
                Some(("kind", "involuntary")),
                Num::Int(v.involuntary_switches),
            );
        }
        for (name, help, get) in [
            (
                "tracer_thread_cpu_seconds_total",
                "Time on a CPU.",
                (|v: &Values| v.on_cpu_ns) as fn(&Values) -> u64,
            ),
            (
                "tracer_thread_runqueue_wait_seconds_total",
                "Time runnable but waiting for a CPU.",
                |v: &Values| v.runqueue_wait_ns,
            ),
        ] {
            out.header(name, "counter", help);
            for (labels, v) in &series {
                out.line(name, labels, None, Num::Seconds(get(v)));
            }
        }
        let name = "tracer_thread_futex_waits_total";
        out.header(
            name,
            "counter",
            "Futex waits (locks, condition variables): times the thread fell asleep in one.",
        );
        for (labels, v) in &series {
            out.line(name, labels, None, Num::Int(v.futex_waits));
        }
        let name = "tracer_thread_futex_wait_seconds_total";
        out.header(name, "counter", "Time blocked in futex waits, until woken.");
        for (labels, v) in &series {
            out.line(name, labels, None, Num::Seconds(v.futex_wait_ns));
        }
    }
    let python: Vec<&(&str, &Values)> = series.iter().filter(|(_, v)| v.python > 0).collect();
    if !python.is_empty() {
        let name = "tracer_python_gil_wait_seconds_total";
        out.header(
            name,
            "counter",
            "Time blocked waiting for the CPython GIL, for threads of Python processes.",
        );
        for (labels, v) in python {
            out.line(name, labels, None, Num::Seconds(v.gil_wait_ns));
        }
    }
    blocked_family(&mut out, &s.blocked);
    if !s.processes.is_empty() {
        let labels: Vec<String> = s
            .processes
            .iter()
            .map(|p| process_labels(&p.process))
            .collect();
        let name = "tracer_runqueue_latency_seconds";
        out.header(
            name,
            "histogram",
            "Run-queue waits (wakeup or preemption to running), by process name.",
        );
        for (p, labels) in s.processes.iter().zip(&labels) {
            let t = &p.totals;
            out.histogram(name, labels, &p.hists.runqueue, t.runqueue_wait_ns);
        }
        let name = "tracer_futex_wait_seconds";
        out.header(
            name,
            "histogram",
            "Futex waits (locks, condition variables) and the time blocked in them, by process name.",
        );
        for (p, labels) in s.processes.iter().zip(&labels) {
            let t = &p.totals;
            out.histogram(name, labels, &p.hists.futex, t.futex_wait_ns);
        }
    }
    let name = "tracer_events_lost_total";
    out.header(
        name,
        "counter",
        "Events that did not fit in the ring buffer, by kind.",
    );
    for (kind, n) in &s.lost {
        out.sample(name, &[("kind", kind.name())], Num::Int(*n));
    }
    for (name, kind, help, value) in [
        (
            "tracer_series_folded_total",
            "counter",
            "Threads counted in thread=\"other\" because their process had used its share of max_series or its max_threads_per_process.",
            Num::Int(s.folded),
        ),
        (
            "tracer_scrape_duration_seconds",
            "gauge",
            "How long the previous scrape took to collect and write.",
            Num::Float(s.last_scrape_seconds),
        ),
        (
            "tracer_process_cpu_seconds_total",
            "counter",
            "CPU time of the tracer daemon itself (user and system).",
            Num::Float(s.cpu_seconds),
        ),
        (
            "tracer_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the tracer daemon itself.",
            Num::Int(s.resident_bytes),
        ),
    ] {
        out.header(name, kind, help);
        out.sample(name, &[], value);
    }
    if s.bpf_stats_enabled && !s.programs.is_empty() {
        let name = "tracer_bpf_program_run_seconds_total";
        out.header(
            name,
            "counter",
            "Time spent in each eBPF program (kernel.bpf_stats_enabled=1).",
        );
        for (p, secs, _) in &s.programs {
            out.sample(name, &[("program", p)], Num::Float(*secs));
        }
        let name = "tracer_bpf_program_runs_total";
        out.header(
            name,
            "counter",
            "Runs of each eBPF program (kernel.bpf_stats_enabled=1).",
        );
        for (p, _, runs) in &s.programs {
            out.sample(name, &[("program", p)], Num::Int(*runs));
        }
    }
    out.text
}

/// `tracer_thread_blocked_seconds`, for the series in `blocked`, labelled as every thread
/// series.
fn blocked_family(out: &mut Out, blocked: &FastMap<SeriesKey, u64>) {
    if blocked.is_empty() {
        return;
    }
    let name = "tracer_thread_blocked_seconds";
    out.header(
        name,
        "gauge",
        "How long a thread has been asleep (off a CPU and not runnable), for threads asleep at \
         least blocked_min_secs; the longest of a series' threads.",
    );
    for (key, &ns) in blocked {
        out.line(name, key.labels(), None, Num::Seconds(ns));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_thread_names_are_escaped() {
        let key = SeriesKey::new("app", "evil\"} 1\nfake_metric{a=\"\\");
        let scrape = Scrape {
            series: FastMap::from_iter([(key, Values::default())]),
            ..Scrape::default()
        };
        let text = render(&scrape);
        assert!(
            !text.lines().any(|l| l.starts_with("fake_metric")),
            "{text}"
        );
        assert!(
            text.contains(r#"thread="evil\"} 1\nfake_metric{a=\"\\""#),
            "{text}"
        );
    }

    #[test]
    fn histograms_are_cumulative_in_seconds() {
        let mut hists = Hists::default();
        hists.futex[5] = 2; // < 32 ns
        hists.futex[20] = 3; // < ~1 ms
        hists.futex[39] = 1; // open-ended
        let text = render(&Scrape {
            processes: vec![ProcessRow {
                process: "p".into(),
                totals: Values {
                    futex_wait_ns: 1_500_000_000,
                    ..Values::default()
                },
                hists,
                ..ProcessRow::default()
            }],
            ..Scrape::default()
        });
        for line in [
            r#"tracer_futex_wait_seconds_bucket{process="p",le="0.000001024"} 2"#,
            r#"tracer_futex_wait_seconds_bucket{process="p",le="0.001048576"} 5"#,
            r#"tracer_futex_wait_seconds_bucket{process="p",le="+Inf"} 6"#,
            r#"tracer_futex_wait_seconds_sum{process="p"} 1.5"#,
            r#"tracer_futex_wait_seconds_count{process="p"} 6"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn thread_series_are_counters_and_gauges_only() {
        let v = Values {
            futex_waits: 4,
            futex_wait_ns: 8_000,
            ..Values::default()
        };
        let mut hists = Hists::default();
        hists.futex[12] = 4;
        let key = SeriesKey::new("p", "t");
        let text = render(&Scrape {
            series: FastMap::from_iter([(key, v.clone())]),
            processes: vec![ProcessRow {
                process: "p".into(),
                totals: v,
                hists,
                ..ProcessRow::default()
            }],
            ..Scrape::default()
        });
        let histograms: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
            .collect();
        assert_eq!(
            histograms,
            [
                "tracer_runqueue_latency_seconds",
                "tracer_futex_wait_seconds"
            ]
        );
        for line in text.lines().filter(|l| l.contains("thread=")) {
            assert!(!histograms.iter().any(|h| line.starts_with(h)), "{line}");
        }
        for line in [
            r#"tracer_thread_futex_waits_total{process="p",thread="t"} 4"#,
            r#"tracer_thread_futex_wait_seconds_total{process="p",thread="t"} 0.000008"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in {text}");
        }
    }

    #[test]
    fn numbers_are_exact() {
        let mut text = String::new();
        for (ns, shown) in [
            (0, "0"),
            (1_500_000_000, "1.5"),
            (1_024, "0.000001024"),
            (3_000_000_000, "3"),
            (7, "0.000000007"),
        ] {
            text.clear();
            push_seconds(&mut text, ns);
            assert_eq!(text, shown);
        }
        text.clear();
        push_u64(&mut text, u64::MAX);
        assert_eq!(text, u64::MAX.to_string());
    }

    #[test]
    fn every_family_has_help_and_type_once() {
        let key = SeriesKey::new("p", "t");
        let text = render(&Scrape {
            series: FastMap::from_iter([(key.clone(), Values::default())]),
            processes: vec![ProcessRow {
                process: "p".into(),
                ..ProcessRow::default()
            }],
            lost: vec![(EventKind::Switch, 0)],
            blocked: FastMap::from_iter([(key, 12_500_000_000)]),
            ..Scrape::default()
        });
        assert!(
            text.lines()
                .any(|l| l == r#"tracer_thread_blocked_seconds{process="p",thread="t"} 12.5"#),
            "{text}"
        );
        let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE")).collect();
        let mut unique = types.clone();
        unique.dedup();
        assert_eq!(types.len(), unique.len());
        assert_eq!(
            types.len(),
            text.lines().filter(|l| l.starts_with("# HELP")).count()
        );
        assert!(types.len() >= 12, "{text}");
    }
}
