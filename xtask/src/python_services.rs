//! `cargo xtask bench`'s Python services section: the daemon's own CPU on a host of many
//! quiet CPython services, and while one of them starts threads all the time; this build
//! and, side by side in interleaved rounds, the baseline build `TRACER_BENCH_BASELINE`
//! names. Each daemon is measured only once it has read every service's `threading` names.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::bench::{Daemon, Section, baseline, median, process_usage};

/// Quiet services, each a process of its own name.
const SERVICES: usize = 40;
/// Named threads in each, asleep.
const THREADS_EACH: usize = 10;
/// How long each phase is measured.
const MEASURED_FOR: Duration = Duration::from_secs(20);
/// Interleaved rounds; the table gives each figure's median.
const ROUNDS: usize = 3;

const QUIET: &str = "\
import threading, time
for i in range(THREADS):
    threading.Thread(target=time.sleep, args=(86400,), name=f'w{i}', daemon=True).start()
print('ready', flush=True)
time.sleep(86400)
";

/// Starts a thread every 20 ms that runs for 1 ms.
const CHURN: &str = "\
import threading, time
while True:
    t = threading.Thread(target=time.sleep, args=(0.001,), name='short-lived')
    t.start()
    t.join()
    time.sleep(0.02)
";

/// Child processes killed when dropped.
struct Processes(Vec<Child>);

impl Drop for Processes {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A tracer build under test, and what each round measured of it.
struct Build {
    label: String,
    binary: PathBuf,
    costs: Vec<Cost>,
}

impl Build {
    fn new(label: String, binary: PathBuf) -> Self {
        Self {
            label,
            binary,
            costs: Vec::new(),
        }
    }
}

/// What one daemon cost in one round, in % of a core.
struct Cost {
    quiet: f64,
    churning: f64,
    /// Threads the churning service started per second while measured.
    churn_rate: f64,
}

/// The section.
pub fn run(root: &Path) -> Result<Section> {
    let scratch = std::env::temp_dir().join(format!("tracer-python-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = measure(root, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(Section {
        title: "Python services".into(),
        text: table(&result?),
    })
}

fn python() -> PathBuf {
    std::env::var_os("TRACER_PYTHON").map_or_else(|| "python3".into(), PathBuf::from)
}

fn measure(root: &Path, scratch: &Path) -> Result<Vec<Build>> {
    let mut builds = vec![Build::new(
        "this build".to_owned(),
        root.join("target/release/tracer"),
    )];
    if let Some((label, binary)) = baseline() {
        builds.push(Build::new(label, binary));
    }
    let quiet = QUIET.replace("THREADS", &THREADS_EACH.to_string());
    let mut services = Processes(Vec::new());
    for i in 0..SERVICES {
        let script = scratch.join(format!("quiet_{i:02}.py"));
        std::fs::write(&script, &quiet)?;
        let mut child = Command::new(python())
            .arg(&script)
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {}", python().display()))?;
        let mut out = child.stdout.take().context("stdout")?;
        services.0.push(child);
        let mut ready = [0; 6];
        std::io::Read::read_exact(&mut out, &mut ready)?;
        if &ready != b"ready\n" {
            bail!("a quiet service did not start");
        }
    }
    let churn = scratch.join("churn.py");
    std::fs::write(&churn, CHURN)?;
    for round in 0..ROUNDS {
        for build in &mut builds {
            eprintln!(
                "xtask: Python services, round {}: {}",
                round + 1,
                build.label
            );
            build.costs.push(one(&build.binary, &churn)?);
        }
    }
    Ok(builds)
}

/// Thread series of the quiet services named by their `threading` names.
fn named_threads(body: &str) -> usize {
    body.lines()
        .filter(|l| {
            l.strip_prefix("tracer_thread_cpu_seconds_total{process=\"quiet_")
                .and_then(|rest| rest.split_once("thread=\"w"))
                .is_some()
        })
        .count()
}

fn created_by_churn(body: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix("tracer_threads_created_total{process=\"churn\"")?
                .rsplit_once(' ')?
                .1
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

fn one(binary: &Path, churn: &Path) -> Result<Cost> {
    let daemon = Daemon::start_binary(binary, None)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let named = named_threads(&daemon.scrape()?);
        if named == SERVICES * THREADS_EACH {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "{} named {named} of the services' {} threads",
                binary.display(),
                SERVICES * THREADS_EACH
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    // Past the start-up: the walk of /proc and the first readings.
    std::thread::sleep(Duration::from_secs(3));
    let pid = daemon.child.id();
    let busy = |during: &dyn Fn()| {
        let (before, _) = process_usage(pid);
        let started = Instant::now();
        during();
        let (after, _) = process_usage(pid);
        (after - before) / started.elapsed().as_secs_f64() * 100.0
    };
    let quiet = busy(&|| std::thread::sleep(MEASURED_FOR));
    let churner = Processes(vec![Command::new(python()).arg(churn).spawn()?]);
    std::thread::sleep(Duration::from_secs(2));
    let created = created_by_churn(&daemon.scrape()?);
    let started = Instant::now();
    let churning = busy(&|| std::thread::sleep(MEASURED_FOR));
    let churn_rate =
        (created_by_churn(&daemon.scrape()?) - created) / started.elapsed().as_secs_f64();
    drop(churner);
    Ok(Cost {
        quiet,
        churning,
        churn_rate,
    })
}

fn table(builds: &[Build]) -> String {
    let mut text = format!(
        "`tracer daemon`'s CPU (user + system, % of one core) on a host of {SERVICES} CPython \
         services (`{} quiet_NN.py`, each a process of its own name with {THREADS_EACH} named \
         threads asleep), measured once the daemon has every one of their threads under its \
         `threading` name: {} s with nothing else happening, then {} s while one more service \
         (`churn.py`) starts a thread every 20 ms (its rate from the daemon's \
         `tracer_threads_created_total`). Median of {ROUNDS} interleaved rounds.\n\n\
         | build | quiet services | one starting threads | threads started per second |\n\
         |---|---:|---:|---:|\n",
        python().display(),
        MEASURED_FOR.as_secs(),
        MEASURED_FOR.as_secs(),
    );
    let medians: Vec<(f64, f64, f64)> = builds
        .iter()
        .map(|build| {
            let rounds = &build.costs;
            let mut quiet: Vec<f64> = rounds.iter().map(|c| c.quiet).collect();
            let mut churning: Vec<f64> = rounds.iter().map(|c| c.churning).collect();
            let mut rate: Vec<f64> = rounds.iter().map(|c| c.churn_rate).collect();
            (median(&mut quiet), median(&mut churning), median(&mut rate))
        })
        .collect();
    for (build, (quiet, churning, rate)) in builds.iter().zip(&medians) {
        let _ = writeln!(
            text,
            "| {} | {quiet:.2}% | {churning:.2}% | {rate:.0} |",
            build.label
        );
    }
    if let [(quiet, churning, _), (base_quiet, base_churning, _)] = medians[..] {
        let _ = writeln!(
            text,
            "\nThis build against the baseline, {}: {:.2} of its CPU with the services quiet, \
             {:.2} with one starting threads.",
            builds[1].label,
            quiet / base_quiet,
            churning / base_churning
        );
    }
    text
}
