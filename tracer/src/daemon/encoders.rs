//! The exposition writers side by side, on one synthetic scrape of a host: the daemon's own
//! ([`metrics::render`]), the `prometheus` crate's text encoder (metric families built from
//! the scrape, as a collector of values kept elsewhere builds them) and `prometheus-client`'s
//! (a collector encoding straight from the scrape, with no metric objects). A test checks
//! that the three write the same samples; `cargo xtask bench --only exposition` times them.

use std::{
    collections::BTreeMap,
    sync::Arc,
    time::{Duration, Instant},
};

use tracer_common::{event::EventKind, thread::HISTOGRAM_BUCKETS};

use super::{
    labels,
    metrics::{self, EXPORTED_BUCKETS, ProcessRow, Scrape},
    state::{SeriesKey, Values},
};

/// A thread name no writer may let out of its label value.
const HOSTILE_NAME: &str = "evil\"} 1\nfake_metric{a=\"\\";

/// A host of `threads` thread series spread over `processes` processes, each asleep past
/// `blocked_min_secs`, the first process a CPython one (with GIL waits); every value differs.
fn host(processes: usize, threads: usize) -> Scrape {
    let mut scrape = Scrape {
        lost: EventKind::ALL.iter().map(|&k| (k, k as u64)).collect(),
        folded: 12,
        last_scrape_seconds: 0.0123,
        cpu_seconds: 4.5,
        resident_bytes: 40 << 20,
        ..Scrape::default()
    };
    for p in 0..processes {
        let process = format!("svc-{p}");
        let mut row = ProcessRow {
            process: process.clone(),
            threads_created: (threads / processes + p) as u64,
            threads_exited: p as u64,
            threads_alive: (threads / processes) as u64,
            ..ProcessRow::default()
        };
        for t in 0..threads / processes {
            let thread = if p == 1 && t == 0 {
                HOSTILE_NAME.to_owned()
            } else {
                format!("worker-{t}")
            };
            let key = SeriesKey::new(process.clone(), thread);
            let n = (p * 100_003 + t * 7) as u64 + 1;
            let values = Values {
                voluntary_switches: n * 31,
                involuntary_switches: n % 977,
                on_cpu_ns: n * 1_234_567,
                runqueue_wait_ns: n * 4_321,
                runqueue_waits: n * 3,
                futex_waits: n * 11,
                futex_wait_ns: n * 987_654_321,
                gil_wait_ns: if p == 0 { n * 55_555 } else { 0 },
                python: u64::from(p == 0),
            };
            row.totals.runqueue_wait_ns += values.runqueue_wait_ns;
            row.totals.futex_wait_ns += values.futex_wait_ns;
            scrape.blocked.insert(key.clone(), 12_000_000_000 + n);
            scrape.series.insert(key, values);
        }
        for (i, (rq, fx)) in row
            .hists
            .runqueue
            .iter_mut()
            .zip(row.hists.futex.iter_mut())
            .enumerate()
        {
            *rq = (i * (p + 3)) as u64;
            *fx = (i * i + p) as u64;
        }
        scrape.processes.push(row);
    }
    scrape
}

/// A counter family of thread series: its name, help and value (`None`: no sample).
type SeriesCounter = (&'static str, &'static str, fn(&Values) -> Option<f64>);

/// The per-series counter families other than the switches, in the contract's names.
const SERIES_COUNTERS: [SeriesCounter; 5] = [
    ("tracer_thread_cpu_seconds_total", "Time on a CPU.", |v| {
        Some(seconds(v.on_cpu_ns))
    }),
    (
        "tracer_thread_runqueue_wait_seconds_total",
        "Time runnable but waiting for a CPU.",
        |v| Some(seconds(v.runqueue_wait_ns)),
    ),
    (
        "tracer_thread_futex_waits_total",
        "Futex waits (locks, condition variables): times the thread fell asleep in one.",
        |v| Some(v.futex_waits as f64),
    ),
    (
        "tracer_thread_futex_wait_seconds_total",
        "Time blocked in futex waits, until woken.",
        |v| Some(seconds(v.futex_wait_ns)),
    ),
    (
        "tracer_python_gil_wait_seconds_total",
        "Time blocked waiting for the CPython GIL, for threads of Python processes.",
        |v| (v.python > 0).then(|| seconds(v.gil_wait_ns)),
    ),
];

/// The per-process counts, in the contract's names: name, type, help, value.
type ProcessCount = (&'static str, bool, &'static str, fn(&ProcessRow) -> u64);

const PROCESS_COUNTS: [ProcessCount; 3] = [
    (
        "tracer_threads_created_total",
        true,
        "Threads created in a process, by process name.",
        |p| p.threads_created,
    ),
    (
        "tracer_threads_exited_total",
        true,
        "Threads of a process that exited (not its main thread), by process name.",
        |p| p.threads_exited,
    ),
    (
        "tracer_threads",
        false,
        "Threads alive, by process name.",
        |p| p.threads_alive,
    ),
];

/// The per-process histograms: name, and their buckets and sum of nanoseconds.
type ProcessHistogram = (
    &'static str,
    fn(&ProcessRow) -> (&[u64; HISTOGRAM_BUCKETS], u64),
);

const PROCESS_HISTOGRAMS: [ProcessHistogram; 2] = [
    ("tracer_runqueue_latency_seconds", |p| {
        (&p.hists.runqueue, p.totals.runqueue_wait_ns)
    }),
    ("tracer_futex_wait_seconds", |p| {
        (&p.hists.futex, p.totals.futex_wait_ns)
    }),
];

/// The daemon's own one-sample families: name, is a counter, value.
fn daemon_samples(s: &Scrape) -> [(&'static str, bool, f64); 4] {
    [
        ("tracer_series_folded_total", true, s.folded as f64),
        (
            "tracer_scrape_duration_seconds",
            false,
            s.last_scrape_seconds,
        ),
        ("tracer_process_cpu_seconds_total", true, s.cpu_seconds),
        (
            "tracer_process_resident_memory_bytes",
            false,
            s.resident_bytes as f64,
        ),
    ]
}

fn seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The upper bound of each exported bucket, in seconds.
fn bounds() -> impl Iterator<Item = f64> {
    EXPORTED_BUCKETS.iter().map(|&b| (1u64 << b) as f64 / 1e9)
}

/// The scrape through the `prometheus` crate: metric families built, then text-encoded.
fn with_prometheus(s: &Scrape) -> String {
    use prometheus::proto::{
        Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
    };

    fn pairs<'a>(process: &'a str, extra: &[(&'static str, &'a str)]) -> Vec<LabelPair> {
        labels::label_pairs(process)
            .chain(extra.iter().copied())
            .map(|(k, v)| {
                let mut pair = LabelPair::default();
                pair.set_name(k.to_owned());
                pair.set_value(v.to_owned());
                pair
            })
            .collect()
    }
    fn sample(labels: Vec<LabelPair>, counter: bool, value: f64) -> Metric {
        let mut metric = Metric::from_label(labels);
        if counter {
            let mut c = Counter::default();
            c.set_value(value);
            metric.set_counter(c);
        } else {
            let mut g = Gauge::default();
            g.set_value(value);
            metric.set_gauge(g);
        }
        metric
    }
    fn family(name: &str, help: &str, kind: MetricType, metrics: Vec<Metric>) -> MetricFamily {
        let mut family = MetricFamily::default();
        family.set_name(name.to_owned());
        family.set_help(help.to_owned());
        family.set_field_type(kind);
        family.set_metric(metrics);
        family
    }
    let kind = |counter: bool| {
        if counter {
            MetricType::COUNTER
        } else {
            MetricType::GAUGE
        }
    };

    let mut families = Vec::new();
    for (name, counter, help, value) in PROCESS_COUNTS {
        let metrics = s
            .processes
            .iter()
            .map(|p| sample(pairs(&p.process, &[]), counter, value(p) as f64))
            .collect();
        families.push(family(name, help, kind(counter), metrics));
    }
    let mut switches = Vec::with_capacity(2 * s.series.len());
    for (key, v) in &s.series {
        for (label, n) in [
            ("voluntary", v.voluntary_switches),
            ("involuntary", v.involuntary_switches),
        ] {
            let labels = pairs(&key.process, &[("thread", &key.thread), ("kind", label)]);
            switches.push(sample(labels, true, n as f64));
        }
    }
    families.push(family(
        "tracer_thread_context_switches_total",
        "Context switches: voluntary (the thread blocked) or involuntary (it was preempted).",
        MetricType::COUNTER,
        switches,
    ));
    for (name, help, value) in SERIES_COUNTERS {
        let metrics = s
            .series
            .iter()
            .filter_map(|(key, v)| {
                let labels = pairs(&key.process, &[("thread", &key.thread)]);
                Some(sample(labels, true, value(v)?))
            })
            .collect();
        families.push(family(name, help, MetricType::COUNTER, metrics));
    }
    let blocked = s
        .blocked
        .iter()
        .map(|(key, &ns)| {
            let labels = pairs(&key.process, &[("thread", &key.thread)]);
            sample(labels, false, seconds(ns))
        })
        .collect();
    families.push(family(
        "tracer_thread_blocked_seconds",
        "How long a thread has been asleep.",
        MetricType::GAUGE,
        blocked,
    ));
    for (name, pick) in PROCESS_HISTOGRAMS {
        let metrics = s
            .processes
            .iter()
            .map(|p| {
                let (buckets, sum_ns) = pick(p);
                let mut histogram = Histogram::default();
                histogram.set_bucket(
                    metrics::exported_counts(buckets)
                        .into_iter()
                        .zip(bounds())
                        .map(|(count, bound)| {
                            let mut bucket = Bucket::default();
                            bucket.set_cumulative_count(count);
                            bucket.set_upper_bound(bound);
                            bucket
                        })
                        .collect(),
                );
                histogram.set_sample_count(buckets.iter().sum());
                histogram.set_sample_sum(seconds(sum_ns));
                let mut metric = Metric::from_label(pairs(&p.process, &[]));
                metric.set_histogram(histogram);
                metric
            })
            .collect();
        families.push(family(
            name,
            "Waits by process name.",
            MetricType::HISTOGRAM,
            metrics,
        ));
    }
    let lost = s
        .lost
        .iter()
        .map(|&(k, n)| {
            let mut pair = LabelPair::default();
            pair.set_name("kind".to_owned());
            pair.set_value(k.name().to_owned());
            sample(vec![pair], true, n as f64)
        })
        .collect();
    families.push(family(
        "tracer_events_lost_total",
        "Events that did not fit in the ring buffer, by kind.",
        MetricType::COUNTER,
        lost,
    ));
    for (name, counter, value) in daemon_samples(s) {
        let metrics = vec![sample(Vec::new(), counter, value)];
        families.push(family(name, "The daemon itself.", kind(counter), metrics));
    }
    let mut text = String::new();
    prometheus::TextEncoder::new()
        .encode_utf8(&families, &mut text)
        .expect("valid families");
    text
}

/// The scrape as a `prometheus-client` collector encodes it: straight from the values.
#[derive(Debug)]
struct Collected(Arc<Scrape>);

impl prometheus_client::collector::Collector for Collected {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder,
    ) -> Result<(), std::fmt::Error> {
        use prometheus_client::{encoding::NoLabelSet, metrics::MetricType};

        // The library adds `_total` to a counter's name itself.
        let bare = |name: &'static str| name.strip_suffix("_total").unwrap_or(name);
        let kind = |counter: bool| {
            if counter {
                MetricType::Counter
            } else {
                MetricType::Gauge
            }
        };
        let s = &*self.0;
        let process_labels: Vec<Vec<(&str, &str)>> = s
            .processes
            .iter()
            .map(|p| labels::label_pairs(&p.process).collect())
            .collect();
        let series: Vec<(Vec<(&str, &str)>, &Values)> = s
            .series
            .iter()
            .map(|(key, v)| {
                let labels = labels::label_pairs(&key.process)
                    .chain([("thread", key.thread.as_str())])
                    .collect();
                (labels, v)
            })
            .collect();
        for (name, counter, help, value) in PROCESS_COUNTS {
            let mut family = encoder.encode_descriptor(bare(name), help, None, kind(counter))?;
            for (p, labels) in s.processes.iter().zip(&process_labels) {
                let mut sample = family.encode_family(labels)?;
                if counter {
                    sample.encode_counter::<NoLabelSet, _, u64>(&value(p), None)?;
                } else {
                    sample.encode_gauge(&value(p))?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "tracer_thread_context_switches",
            "Context switches: voluntary (the thread blocked) or involuntary (it was preempted).",
            None,
            MetricType::Counter,
        )?;
        for (labels, v) in &series {
            for (label, n) in [
                ("voluntary", v.voluntary_switches),
                ("involuntary", v.involuntary_switches),
            ] {
                let kind = [("kind", label)];
                family
                    .encode_family(&(&labels[..], &kind[..]))?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
        for (name, help, value) in SERIES_COUNTERS {
            let mut family =
                encoder.encode_descriptor(bare(name), help, None, MetricType::Counter)?;
            for (labels, v) in &series {
                if let Some(value) = value(v) {
                    family
                        .encode_family(labels)?
                        .encode_counter::<NoLabelSet, _, f64>(&value, None)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "tracer_thread_blocked_seconds",
            "How long a thread has been asleep.",
            None,
            MetricType::Gauge,
        )?;
        for (key, &ns) in &s.blocked {
            let labels: Vec<(&str, &str)> = labels::label_pairs(&key.process)
                .chain([("thread", key.thread.as_str())])
                .collect();
            family.encode_family(&labels)?.encode_gauge(&seconds(ns))?;
        }
        for (name, pick) in PROCESS_HISTOGRAMS {
            let mut family = encoder.encode_descriptor(
                name,
                "Waits by process name.",
                None,
                MetricType::Histogram,
            )?;
            for (p, labels) in s.processes.iter().zip(&process_labels) {
                let (buckets, sum_ns) = pick(p);
                let total: u64 = buckets.iter().sum();
                // The library takes each bucket's own count and adds them up.
                let mut below = 0;
                let mut own: Vec<(f64, u64)> = metrics::exported_counts(buckets)
                    .into_iter()
                    .zip(bounds())
                    .map(|(count, bound)| (bound, count - std::mem::replace(&mut below, count)))
                    .collect();
                own.push((f64::INFINITY, total - below));
                family
                    .encode_family(labels)?
                    .encode_histogram::<NoLabelSet>(seconds(sum_ns), total, &own, None)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "tracer_events_lost",
            "Events that did not fit in the ring buffer, by kind.",
            None,
            MetricType::Counter,
        )?;
        for &(k, n) in &s.lost {
            let labels = [("kind", k.name())];
            family
                .encode_family(&&labels[..])?
                .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
        }
        for (name, counter, value) in daemon_samples(s) {
            let mut family =
                encoder.encode_descriptor(bare(name), "The daemon itself.", None, kind(counter))?;
            if counter {
                family.encode_counter::<NoLabelSet, _, f64>(&value, None)?;
            } else {
                family.encode_gauge(&value)?;
            }
        }
        Ok(())
    }
}

/// The registry `prometheus-client` encodes `scrape` from.
fn client_registry(scrape: Arc<Scrape>) -> prometheus_client::registry::Registry {
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(Collected(scrape)));
    registry
}

fn with_prometheus_client(registry: &prometheus_client::registry::Registry) -> String {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("encodes");
    text
}

/// The samples of exposition `text`: each series (its name and its labels, unescaped and
/// sorted, `le` as a number) and its value.
fn samples(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
        let (name, mut pairs) = match series.split_once('{') {
            Some((name, rest)) => (name, label_values(rest)),
            None => (series, Vec::new()),
        };
        for (k, v) in &mut pairs {
            if k == "le" && v != "+Inf" {
                *v = v.parse::<f64>().expect("a bound").to_string();
            }
        }
        pairs.sort();
        let value: f64 = value.parse().expect("a number");
        let old = samples.insert(format!("{name}{pairs:?}"), value);
        assert!(old.is_none(), "{name}{pairs:?} twice");
    }
    samples
}

/// The pairs of `k="v",...}`, unescaped.
fn label_values(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = text.chars();
    loop {
        let key: String = chars.by_ref().take_while(|&c| c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "a quoted value after {key}");
        let mut value = String::new();
        while let Some(c) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next() {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("an escape at the end"),
                },
                c => value.push(c),
            }
        }
        pairs.push((key, value));
        match chars.next() {
            Some(',') => continue,
            Some('}') | None => return pairs,
            Some(c) => panic!("{c:?} after a label"),
        }
    }
}

/// The median of `runs` timings of `write` and the length of what it wrote.
fn time(runs: usize, mut write: impl FnMut() -> String) -> (Duration, usize) {
    let bytes = write().len();
    let mut times: Vec<Duration> = (0..runs)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(write());
            start.elapsed()
        })
        .collect();
    times.sort();
    (times[runs / 2], bytes)
}

#[test]
fn the_writers_write_the_same_samples() {
    let scrape = Arc::new(host(4, 40));
    let ours = samples(&metrics::render(&scrape));
    assert_eq!(
        ours.len(),
        40 * 7 + 10 + 4 * (3 + 2 * 16) + EventKind::ALL.len() + 4
    );
    assert!(
        ours.keys()
            .any(|k| k.contains(r#""evil\"} 1\nfake_metric{a=\"\\""#))
    );
    let theirs = [
        ("prometheus", samples(&with_prometheus(&scrape))),
        (
            "prometheus-client",
            samples(&with_prometheus_client(&client_registry(scrape.clone()))),
        ),
    ];
    for (writer, theirs) in theirs {
        assert_eq!(
            ours.keys().collect::<Vec<_>>(),
            theirs.keys().collect::<Vec<_>>(),
            "{writer}"
        );
        for (series, value) in &ours {
            let other = theirs[series];
            assert!(
                (value - other).abs() <= 1e-9 * value.abs().max(1.0),
                "{writer}: {series} is {other}, not {value}"
            );
        }
    }
}

/// Prints, for each writer and host, one line `EXPOSITION writer processes threads median_ns
/// bytes` for `cargo xtask bench`.
#[test]
#[ignore = "a benchmark: run by cargo xtask bench --only exposition"]
fn exposition_writers_side_by_side() {
    const RUNS: usize = 21;
    for (processes, threads) in [(40, 2000), (5, 10_000)] {
        let scrape = Arc::new(host(processes, threads));
        let registry = client_registry(scrape.clone());
        for (writer, (median, bytes)) in [
            ("tracer", time(RUNS, || metrics::render(&scrape))),
            ("prometheus", time(RUNS, || with_prometheus(&scrape))),
            (
                "prometheus-client",
                time(RUNS, || with_prometheus_client(&registry)),
            ),
        ] {
            println!(
                "EXPOSITION {writer} {processes} {threads} {} {bytes}",
                median.as_nanos()
            );
        }
    }
}
