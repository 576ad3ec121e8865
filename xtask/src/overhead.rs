//! What tracing costs the traced: `perf bench` throughput under each tracer, as a ratio to
//! the same benchmark untraced in the same round; record-mode event loss; the daemon's own
//! CPU and memory.

use std::{
    fmt::Write as _,
    io::{BufRead as _, BufReader},
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::bench::{BASELINE_ENV, BASELINE_LABEL_ENV, Daemon, Section, median, process_usage};

/// Rounds of every configuration, interleaved.
const ROUNDS: usize = 7;

/// What runs alongside a benchmark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Tracer {
    None,
    Daemon,
    /// `tracer daemon` with `futex_waits = false`: no syscall tracepoints.
    DaemonWithoutFutex,
    /// `tracer daemon` of the binary named by [`BASELINE_ENV`].
    Baseline,
    /// `tracer record --pid` of an unrelated sleeping process: what the filter costs others.
    RecordOther,
    Bpftrace,
    PerfSched,
}

impl Tracer {
    /// Every tracer of this run: the baseline only when one is named.
    fn all() -> Vec<Self> {
        let mut all = vec![Self::None, Self::Daemon, Self::DaemonWithoutFutex];
        if std::env::var_os(BASELINE_ENV).is_some() {
            all.push(Self::Baseline);
        }
        all.extend([Self::RecordOther, Self::Bpftrace, Self::PerfSched]);
        all
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "untraced",
            Self::Daemon => "`tracer daemon`",
            Self::DaemonWithoutFutex => "`tracer daemon`, `futex_waits = false`",
            Self::Baseline => "baseline `tracer daemon`",
            Self::RecordOther => "`tracer record` of another process",
            Self::Bpftrace => "bpftrace off-CPU script",
            Self::PerfSched => "`perf sched record`",
        }
    }
}

/// A running tracer, stopped when dropped.
enum Running {
    Nothing,
    /// Stopped by its own `Drop`.
    Daemon {
        _daemon: Daemon,
    },
    Child(Child, Option<Child>),
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Self::Child(child, target) = self {
            // A tracer can miss a SIGINT (bpftrace once did, and the whole run waited on it):
            // it is sent again every second, and after 10 s the tracer is killed.
            'stopped: {
                for _ in 0..10 {
                    // SAFETY: signalling our own child, not yet reaped.
                    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
                    for _ in 0..10 {
                        if child.try_wait().ok().flatten().is_some() {
                            break 'stopped;
                        }
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                let _ = child.kill();
                let _ = child.wait();
            }
            if let Some(target) = target {
                let _ = target.kill();
                let _ = target.wait();
            }
        }
    }
}

/// Starts `child` and waits until a line of its stderr contains `ready`.
fn wait_ready(mut child: Child, ready: &str) -> Result<Child> {
    let mut reader = BufReader::new(child.stderr.take().context("stderr")?);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || Instant::now() > deadline {
            bail!("tracer for the benchmark did not start");
        }
        if line.contains(ready) {
            break;
        }
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        while reader.read_line(&mut sink).unwrap_or(0) > 0 {
            sink.clear();
        }
    });
    Ok(child)
}

fn start(root: &Path, tracer: Tracer, scratch: &Path) -> Result<Running> {
    let tracer_bin = root.join("target/release/tracer");
    Ok(match tracer {
        Tracer::None => Running::Nothing,
        Tracer::Daemon => Running::Daemon {
            _daemon: Daemon::start(root, None)?,
        },
        Tracer::DaemonWithoutFutex => {
            let config = scratch.join("no-futex.toml");
            std::fs::write(&config, "futex_waits = false\n")?;
            Running::Daemon {
                _daemon: Daemon::start(root, Some(&config))?,
            }
        }
        Tracer::Baseline => Running::Daemon {
            _daemon: Daemon::start_binary(
                Path::new(&std::env::var_os(BASELINE_ENV).context(BASELINE_ENV)?),
                None,
            )?,
        },
        Tracer::RecordOther => {
            let target = Command::new("sleep").arg("3600").spawn()?;
            let child = Command::new(&tracer_bin)
                .args(["record", "--pid", &target.id().to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()?;
            Running::Child(wait_ready(child, "recording pid")?, Some(target))
        }
        Tracer::Bpftrace => {
            let child = Command::new("bpftrace")
                .arg(root.join("xtask/bench/offcpu.bt"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            // bpftrace says "Attaching 1 probe..." on stdout before attaching; give it time.
            std::thread::sleep(Duration::from_secs(3));
            Running::Child(child, None)
        }
        Tracer::PerfSched => {
            let child = Command::new("perf")
                .args(["sched", "record", "-a", "-o"])
                .arg(scratch.join("perf-sched.data"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()?;
            std::thread::sleep(Duration::from_secs(2));
            Running::Child(child, None)
        }
    })
}

/// A benchmark: how to run it and how to read "higher is better" from its output.
struct Bench {
    title: &'static str,
    command: &'static [&'static str],
    score: fn(&str) -> Option<f64>,
}

fn ops_per_sec(out: &str) -> Option<f64> {
    out.lines()
        .find_map(|l| l.trim().strip_suffix("ops/sec")?.trim().parse().ok())
}

fn futex_hash_ops(out: &str) -> Option<f64> {
    out.lines().find_map(|l| {
        l.trim()
            .strip_prefix("Averaged")?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    })
}

/// `perf bench futex wake` prints the average time to wake all threads; its inverse scores.
fn futex_wake_rate(out: &str) -> Option<f64> {
    out.lines().rev().find_map(|l| {
        let ms: f64 = l
            .split(" in ")
            .nth(1)?
            .split_whitespace()
            .next()?
            .parse()
            .ok()?;
        (l.trim_start().starts_with("Wokeup") && ms > 0.0).then(|| 1.0 / ms)
    })
}

const BENCHES: [Bench; 4] = [
    Bench {
        title: "`perf bench sched pipe`, pinned (`taskset -c 0`)",
        command: &[
            "taskset", "-c", "0", "perf", "bench", "sched", "pipe", "-l", "200000",
        ],
        score: ops_per_sec,
    },
    Bench {
        title: "`perf bench sched pipe`, across CPUs",
        command: &["perf", "bench", "sched", "pipe", "-l", "200000"],
        score: ops_per_sec,
    },
    Bench {
        title: "`perf bench futex wake`",
        command: &["perf", "bench", "futex", "wake", "-t", "64"],
        score: futex_wake_rate,
    },
    Bench {
        title: "`perf bench futex hash`",
        command: &["perf", "bench", "futex", "hash", "-t", "2", "-r", "2"],
        score: futex_hash_ops,
    },
];

fn run_bench(bench: &Bench) -> Result<f64> {
    let out = Command::new(bench.command[0])
        .args(&bench.command[1..])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    (bench.score)(&text)
        .with_context(|| format!("no score in the output of {:?}:\n{text}", bench.command))
}

/// Throughput ratios: per round, each tracer's score over the untraced score of that round.
fn ratios(root: &Path, scratch: &Path) -> Result<Section> {
    let mut text = String::from(
        "Throughput with each tracer running, divided by the mean untraced throughput of the runs \
         just before and just after it (every round runs untraced, a tracer, untraced, the next \
         tracer, ..., untraced); median of 7 interleaved rounds (1.00 = no cost). Targets for \
         tracer: >= 0.93 pinned, >= 0.98 across CPUs.\n\n",
    );
    let tracers = Tracer::all();
    let _ = write!(text, "| benchmark | untraced (median) |");
    for t in &tracers[1..] {
        let _ = write!(text, " {} |", t.name());
    }
    let _ = writeln!(text, "\n|---|---:|{}", "---:|".repeat(tracers.len() - 1));
    for bench in &BENCHES {
        // Per round: untraced, first tracer, untraced, second tracer, ..., untraced. Each
        // tracer's ratio is over the mean of the untraced runs either side of it, which
        // cancels a drift of the machine's speed within the round.
        let mut untraced_runs: Vec<f64> = Vec::new();
        let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); tracers.len()];
        let mut failure = None;
        'rounds: for _ in 0..ROUNDS {
            let mut before = match run_bench(bench) {
                Ok(score) => score,
                Err(e) => {
                    failure = Some(e);
                    break 'rounds;
                }
            };
            untraced_runs.push(before);
            for (i, &tracer) in tracers.iter().enumerate().skip(1) {
                let running = start(root, tracer, scratch)?;
                let traced = run_bench(bench);
                drop(running);
                match traced.and_then(|traced| Ok((traced, run_bench(bench)?))) {
                    Ok((traced, after)) => {
                        ratios[i].push(traced / ((before + after) / 2.0));
                        untraced_runs.push(after);
                        before = after;
                    }
                    Err(e) => {
                        failure = Some(e);
                        break 'rounds;
                    }
                }
            }
        }
        if let Some(e) = failure {
            let _ = writeln!(
                text,
                "| {} | could not run: {} |",
                bench.title,
                e.to_string().lines().next().unwrap_or("")
            );
            continue;
        }
        let untraced = median(&mut untraced_runs);
        let _ = write!(text, "| {} | {untraced:.0} |", bench.title);
        for round_ratios in &mut ratios[1..] {
            let _ = write!(text, " {:.2} |", median(round_ratios));
        }
        let _ = writeln!(text);
        eprintln!("xtask: {} done", bench.title);
    }
    let _ = writeln!(
        text,
        "\nFutex wake is scored as the inverse of the time to wake 64 threads. The bpftrace script is \
         `xtask/bench/offcpu.bt`."
    );
    if std::env::var_os(BASELINE_ENV).is_some() {
        let label = std::env::var(BASELINE_LABEL_ENV).unwrap_or_default();
        let _ = writeln!(
            text,
            "The baseline is the daemon of the build `{BASELINE_ENV}` names{}{label}, in the same rounds.",
            if label.is_empty() { "" } else { ": " },
        );
    }
    Ok(Section {
        title: "Overhead on the traced system".into(),
        text,
    })
}

/// `tracer record` of `perf bench sched pipe` at full speed: events seen and lost.
fn record_loss(root: &Path, scratch: &Path) -> Result<Section> {
    let mut text = String::from(
        "`tracer record -o capture.json -o events.jsonl -- perf bench sched pipe -l N`, the fastest \
         scheduling load this machine makes: every switch and wakeup of both threads is an event \
         (target: no loss).\n\n| loops | events | events/s | lost |\n|---:|---:|---:|---:|\n",
    );
    for loops in [100_000, 400_000] {
        let capture = record(root, scratch, &["sched", "pipe", "-l", &loops.to_string()])?;
        let _ = writeln!(
            text,
            "| {loops} | {} | {:.0} | {} |",
            capture.events, capture.rate, capture.lost
        );
    }
    text.push_str(
        "\nThe same with `perf bench sched messaging -t -g G -l 1000`: G groups of 40 threads \
         passing messages, so that ever more runnable threads compete with tracer's reader for \
         the 2 CPUs (the rate a machine this size can produce falls as they do). The first \
         loss, if any, is where the reader no longer drains the ring buffer in time.\n\n\
         | threads | events | events/s | lost |\n|---:|---:|---:|---:|\n",
    );
    let mut first_loss = None;
    let mut highest = 0f64;
    for groups in [1, 5, 10, 20] {
        let capture = record(
            root,
            scratch,
            &[
                "sched",
                "messaging",
                "-t",
                "-g",
                &groups.to_string(),
                "-l",
                "1000",
            ],
        )?;
        let _ = writeln!(
            text,
            "| {} | {} | {:.0} | {} |",
            groups * 40,
            capture.events,
            capture.rate,
            capture.lost
        );
        if capture.lost > 0 && first_loss.is_none() {
            first_loss = Some((groups * 40, capture.rate));
        }
        highest = highest.max(capture.rate);
    }
    let _ = match first_loss {
        Some((threads, rate)) => writeln!(
            text,
            "\nFirst loss: at {rate:.0} events/s, with {threads} runnable threads."
        ),
        None => writeln!(
            text,
            "\nNo event lost at any load here (up to {highest:.0} events/s with these loads, and \
             the sched pipe rates above)."
        ),
    };
    Ok(Section {
        title: "Record mode: event loss".into(),
        text,
    })
}

/// What one `tracer record` of a `perf bench` run streamed and lost.
struct Capture {
    events: usize,
    rate: f64,
    lost: u64,
}

/// Runs `tracer record -- perf bench BENCH_ARGS` writing a summary and an event file.
fn record(root: &Path, scratch: &Path, bench_args: &[&str]) -> Result<Capture> {
    let summary = scratch.join("capture.json");
    let events = scratch.join("events.jsonl");
    let out = Command::new(root.join("target/release/tracer"))
        .args(["record", "-o"])
        .arg(&summary)
        .arg("-o")
        .arg(&events)
        .args(["--", "perf", "bench"])
        .args(bench_args)
        .output()?;
    if !out.status.success() {
        bail!(
            "tracer record failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&summary)?)?;
    let lost = json["lost_events"].as_u64().unwrap_or(0);
    let secs = json["duration_ns"].as_u64().unwrap_or(1) as f64 / 1e9;
    let events = BufReader::new(std::fs::File::open(&events)?)
        .lines()
        .count();
    Ok(Capture {
        events,
        rate: events as f64 / secs,
        lost,
    })
}

/// The daemon's own CPU and memory, idle and while `perf bench sched pipe` runs.
fn daemon_cost(root: &Path) -> Result<Section> {
    let daemon = Daemon::start(root, None)?;
    std::thread::sleep(Duration::from_secs(2));
    let measure = |during: &dyn Fn() -> Result<()>| -> Result<(f64, u64)> {
        let (cpu0, _) = process_usage(daemon.child.id());
        let started = Instant::now();
        during()?;
        let (cpu1, rss) = process_usage(daemon.child.id());
        Ok(((cpu1 - cpu0) / started.elapsed().as_secs_f64() * 100.0, rss))
    };
    let (idle_cpu, idle_rss) = measure(&|| {
        std::thread::sleep(Duration::from_secs(20));
        Ok(())
    })?;
    let (load_cpu, load_rss) = measure(&|| {
        for _ in 0..5 {
            run_bench(&BENCHES[1])?;
            let _ = daemon.scrape()?;
        }
        Ok(())
    })?;
    let mut text = String::from(
        "`tracer daemon` alone for 20 s, then while `perf bench sched pipe` runs 5 times (scraped after \
         each). CPU is the daemon process's user + system time (targets: < 0.5% of a core idle, \
         < 40 MiB).\n\n| | CPU (% of one core) | RSS |\n|---|---:|---:|\n",
    );
    let _ = writeln!(
        text,
        "| idle | {idle_cpu:.2}% | {:.1} MiB |",
        idle_rss as f64 / 1024.0
    );
    let _ = writeln!(
        text,
        "| under load | {load_cpu:.2}% | {:.1} MiB |",
        load_rss as f64 / 1024.0
    );
    Ok(Section {
        title: "Daemon cost".into(),
        text,
    })
}

pub fn run(root: &Path) -> Result<Vec<Section>> {
    let scratch = std::env::temp_dir().join(format!("tracer-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let sections = vec![
        ratios(root, &scratch)?,
        record_loss(root, &scratch)?,
        daemon_cost(root)?,
    ];
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(sections)
}
