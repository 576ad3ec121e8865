//! The daemon's metric families, built at scrape time.

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};
use tracer_common::{event::EventKind, thread::HISTOGRAM_BUCKETS};

use super::state::{SeriesKey, Values};

/// Histogram bounds exported: every other power of two from 2^10 ns (1 µs) to 2^34 ns (17 s).
pub const EXPORTED_BUCKETS: [usize; 13] = [10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30, 32, 34];

/// Everything one scrape exports.
#[derive(Debug, Default)]
pub struct Scrape {
    /// Per (process, thread) series, sorted.
    pub series: Vec<(SeriesKey, Values)>,
    /// Per process name: threads created, exited, alive; run-queue waits of all its threads.
    pub processes: Vec<ProcessRow>,
    pub lost: Vec<(EventKind, u64)>,
    pub folded: u64,
    pub last_scrape_seconds: f64,
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    /// Program name, run time, run count (present when `kernel.bpf_stats_enabled` is on).
    pub programs: Vec<(String, f64, u64)>,
    pub bpf_stats_enabled: bool,
}

/// One process name's row.
#[derive(Debug, Default, Clone)]
pub struct ProcessRow {
    pub process: String,
    pub threads_created: u64,
    pub threads_exited: u64,
    pub threads_alive: u64,
    pub runqueue: Values,
}

fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(name, value)| {
            let mut pair = LabelPair::default();
            pair.set_name((*name).to_owned());
            pair.set_value((*value).to_owned());
            pair
        })
        .collect()
}

fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
    let mut family = MetricFamily::default();
    family.set_name(name.to_owned());
    family.set_help(help.to_owned());
    family.set_field_type(kind);
    family.set_metric(metrics);
    family
}

fn counter(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut c = Counter::default();
    c.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_counter(c);
    m
}

fn gauge(pairs: &[(&str, &str)], value: f64) -> Metric {
    let mut g = Gauge::default();
    g.set_value(value);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// A histogram from log2 buckets (bucket `i` holds durations below 2^i ns).
fn histogram(pairs: &[(&str, &str)], buckets: &[u64; HISTOGRAM_BUCKETS], sum_ns: u64) -> Metric {
    let mut cumulative = 0;
    let mut next = 0;
    let mut exported = Vec::with_capacity(EXPORTED_BUCKETS.len());
    for &bound in &EXPORTED_BUCKETS {
        while next <= bound {
            cumulative += buckets[next];
            next += 1;
        }
        let mut b = Bucket::default();
        b.set_upper_bound((1u64 << bound) as f64 / 1e9);
        b.set_cumulative_count(cumulative);
        exported.push(b);
    }
    let total: u64 = buckets.iter().sum();
    let mut h = Histogram::default();
    h.set_bucket(exported);
    h.set_sample_count(total);
    h.set_sample_sum(sum_ns as f64 / 1e9);
    let mut m = Metric::default();
    m.set_label(labels(pairs));
    m.set_histogram(h);
    m
}

/// The metric families of a scrape, in the contract's names.
pub fn families(s: &Scrape) -> Vec<MetricFamily> {
    let per_process = |f: &dyn Fn(&ProcessRow) -> Metric| s.processes.iter().map(f).collect();
    let per_series = |f: &dyn Fn(&SeriesKey, &Values) -> Vec<Metric>| {
        s.series.iter().flat_map(|(k, v)| f(k, v)).collect()
    };
    let pt = |k: &SeriesKey| [("process", k.process.clone()), ("thread", k.thread.clone())];
    let mut out = vec![
        family(
            "tracer_threads_created_total",
            "Threads created, by process name.",
            MetricType::COUNTER,
            per_process(&|p| counter(&[("process", &p.process)], p.threads_created as f64)),
        ),
        family(
            "tracer_threads_exited_total",
            "Threads exited, by process name.",
            MetricType::COUNTER,
            per_process(&|p| counter(&[("process", &p.process)], p.threads_exited as f64)),
        ),
        family(
            "tracer_threads",
            "Threads alive, by process name.",
            MetricType::GAUGE,
            per_process(&|p| gauge(&[("process", &p.process)], p.threads_alive as f64)),
        ),
        family(
            "tracer_thread_context_switches_total",
            "Context switches: voluntary (the thread blocked) or involuntary (it was preempted).",
            MetricType::COUNTER,
            per_series(&|k, v| {
                let [(_, process), (_, thread)] = pt(k);
                vec![
                    counter(
                        &[
                            ("process", &process),
                            ("thread", &thread),
                            ("kind", "voluntary"),
                        ],
                        v.voluntary_switches as f64,
                    ),
                    counter(
                        &[
                            ("process", &process),
                            ("thread", &thread),
                            ("kind", "involuntary"),
                        ],
                        v.involuntary_switches as f64,
                    ),
                ]
            }),
        ),
        family(
            "tracer_thread_cpu_seconds_total",
            "Time on a CPU.",
            MetricType::COUNTER,
            per_series(&|k, v| {
                let [(_, process), (_, thread)] = pt(k);
                vec![counter(
                    &[("process", &process), ("thread", &thread)],
                    v.on_cpu_ns as f64 / 1e9,
                )]
            }),
        ),
        family(
            "tracer_thread_runqueue_wait_seconds_total",
            "Time runnable but waiting for a CPU.",
            MetricType::COUNTER,
            per_series(&|k, v| {
                let [(_, process), (_, thread)] = pt(k);
                vec![counter(
                    &[("process", &process), ("thread", &thread)],
                    v.runqueue_wait_ns as f64 / 1e9,
                )]
            }),
        ),
        family(
            "tracer_runqueue_latency_seconds",
            "Run-queue waits (wakeup or preemption to running), by process name.",
            MetricType::HISTOGRAM,
            per_process(&|p| {
                histogram(
                    &[("process", &p.process)],
                    &p.runqueue.runqueue_hist,
                    p.runqueue.runqueue_wait_ns,
                )
            }),
        ),
        family(
            "tracer_futex_wait_seconds",
            "Futex wait calls (locks, condition variables) and the time blocked in them.",
            MetricType::HISTOGRAM,
            per_series(&|k, v| {
                let [(_, process), (_, thread)] = pt(k);
                vec![histogram(
                    &[("process", &process), ("thread", &thread)],
                    &v.futex_hist,
                    v.futex_wait_ns,
                )]
            }),
        ),
        family(
            "tracer_events_lost_total",
            "Events that did not fit in the ring buffer, by kind.",
            MetricType::COUNTER,
            s.lost
                .iter()
                .map(|(kind, n)| counter(&[("kind", kind.name())], *n as f64))
                .collect(),
        ),
        family(
            "tracer_series_folded_total",
            "Threads counted in thread=\"other\" because their process had too many thread series.",
            MetricType::COUNTER,
            vec![counter(&[], s.folded as f64)],
        ),
        family(
            "tracer_scrape_duration_seconds",
            "How long the previous scrape took to collect.",
            MetricType::GAUGE,
            vec![gauge(&[], s.last_scrape_seconds)],
        ),
        family(
            "tracer_process_cpu_seconds_total",
            "CPU time of the tracer daemon itself (user and system).",
            MetricType::COUNTER,
            vec![counter(&[], s.cpu_seconds)],
        ),
        family(
            "tracer_process_resident_memory_bytes",
            "Resident memory of the tracer daemon itself.",
            MetricType::GAUGE,
            vec![gauge(&[], s.resident_bytes as f64)],
        ),
    ];
    if s.bpf_stats_enabled {
        out.push(family(
            "tracer_bpf_program_run_seconds_total",
            "Time spent in each eBPF program (kernel.bpf_stats_enabled=1).",
            MetricType::COUNTER,
            s.programs
                .iter()
                .map(|(p, secs, _)| counter(&[("program", p)], *secs))
                .collect(),
        ));
        out.push(family(
            "tracer_bpf_program_runs_total",
            "Runs of each eBPF program (kernel.bpf_stats_enabled=1).",
            MetricType::COUNTER,
            s.programs
                .iter()
                .map(|(p, _, n)| counter(&[("program", p)], *n as f64))
                .collect(),
        ));
    }
    out.retain(|f| !f.get_metric().is_empty());
    out
}

/// Prometheus text exposition of `families`.
pub fn encode(families: &[MetricFamily]) -> String {
    let mut text = String::default();
    prometheus::TextEncoder::new()
        .encode_utf8(families, &mut text)
        .expect("encoding to a string cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_thread_names_are_escaped() {
        let key = SeriesKey {
            process: "app".into(),
            thread: "evil\"} 1\nfake_metric{a=\"\\".into(),
        };
        let scrape = Scrape {
            series: vec![(key, Values::default())],
            ..Scrape::default()
        };
        let text = encode(&families(&scrape));
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
        let mut v = Values::default();
        v.futex_hist[5] = 2; // < 32 ns
        v.futex_hist[20] = 3; // < ~1 ms
        v.futex_hist[39] = 1; // open-ended
        v.futex_wait_ns = 1_500_000_000;
        let key = SeriesKey {
            process: "p".into(),
            thread: "t".into(),
        };
        let text = encode(&families(&Scrape {
            series: vec![(key, v)],
            ..Scrape::default()
        }));
        assert!(
            text.contains(
                r#"tracer_futex_wait_seconds_bucket{process="p",thread="t",le="0.000001024"} 2"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tracer_futex_wait_seconds_bucket{process="p",thread="t",le="0.001048576"} 5"#
            ),
            "{text}"
        );
        assert!(
            text.contains(
                r#"tracer_futex_wait_seconds_bucket{process="p",thread="t",le="+Inf"} 6"#
            ),
            "{text}"
        );
        assert!(
            text.contains(r#"tracer_futex_wait_seconds_sum{process="p",thread="t"} 1.5"#),
            "{text}"
        );
    }
}
