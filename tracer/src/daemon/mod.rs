//! `tracer daemon`: attaches system-wide and serves Prometheus metrics.

mod blocked;
mod budget;
pub mod config;
#[cfg(test)]
mod encoders;
mod histograms;
mod http;
pub mod labels;
pub mod metrics;
mod notify;
mod python;
pub mod state;

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, RwLock},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use tokio::signal::unix::{SignalKind, signal};
use tracer_common::event::EventKind;

use self::{
    config::{Compiled, Config, Overrides},
    metrics::{ProcessRow, Scrape},
    state::{State, Values},
};
use crate::{
    capture::{comm_to_string, events::Event},
    error::{Error, Result},
    kernel::{monotonic_ns, privileges, procfs},
    naming::{Identity, cgroup::Placement},
    probes::{Options, Probes},
};

/// Lifecycle events only: scheduling and futex activity is aggregated in the kernel.
const STREAMED: [EventKind; 3] = [
    EventKind::ThreadCreated,
    EventKind::ThreadExited,
    EventKind::ThreadRenamed,
];

/// How long an exited thread stays in the kernel map before its last counts are read, so
/// that its final switch is in them.
const HARVEST_DELAY: Duration = Duration::from_millis(200);
/// How often the daemon drains its (lifecycle-only, so sparse) ring buffer; the programs
/// wake it sooner when the buffer fills. A process is named from `/proc` when its exec is
/// drained, so a process that ends sooner after its exec keeps its kernel name; a new thread
/// gets its series at the first scrape after it is drained, by the name known then, so the
/// reading of a new Python thread's name has this long to find it first.
const LIFECYCLE_DRAIN: Duration = Duration::from_millis(250);
/// How long a process named without its command line is named again, at each drain.
const UNSETTLED_FOR: Duration = Duration::from_secs(2);

/// How often threads that exited unseen (lost events) are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// How the daemon was started.
#[derive(Debug, Clone, Default)]
pub struct Args {
    pub config: Option<PathBuf>,
    pub overrides: Overrides,
    pub print_config: bool,
}

/// State shared by the event loop and scrapes.
pub struct Shared {
    probes: Mutex<Probes>,
    python: Mutex<python::PythonThreads>,
    state: Mutex<State>,
    config: RwLock<(Config, Compiled)>,
    last_scrape: Mutex<Duration>,
    /// Threads' switches out as the scrapes saw them, for `tracer_thread_blocked_seconds`.
    sleepers: Mutex<blocked::Sleepers>,
}

/// Runs the daemon until SIGTERM or SIGINT.
pub fn run(args: Args) -> Result<()> {
    let config = Config::load(args.config.as_deref(), &args.overrides)?;
    if args.print_config {
        print!("{}", config.to_toml());
        return Ok(());
    }
    privileges::require_tracing("run the daemon")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("tracer-daemon")
        .enable_all()
        .build()
        .map_err(|e| Error::io("starting the event loop", e))?;
    runtime.block_on(serve(args, config))
}

async fn serve(args: Args, config: Config) -> Result<()> {
    let compiled = config.compile()?;
    let mut probes = Probes::load(Options {
        filtered: false,
        stream: &STREAMED,
        max_threads: config.max_traced_threads,
        futex: config.futex_waits,
    })?;
    let ring = probes.take_events()?;
    probes.attach()?;
    let attach_ns = monotonic_ns();
    let mut state = State::default();
    // Threads that exist at the attach are found once, here; later ones by their creation.
    let started = std::time::Instant::now();
    let mut processes = 0;
    for (tid, tgid, comm) in procfs::all_threads() {
        if let Some(counts) = procfs::thread_counts(tgid, tid) {
            state.note_attach_counts(tid, counts);
        }
        if tid == tgid {
            let name = process_name(&compiled, tgid, &comm);
            state.add_thread(tid, tgid, comm);
            state.process_names.insert(tgid, name);
            processes += 1;
        } else {
            state.add_thread(tid, tgid, comm);
        }
    }
    eprintln!(
        "tracer: {} threads of {processes} processes found in /proc in {:.1} ms",
        state.threads.len(),
        started.elapsed().as_secs_f64() * 1e3
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|e| Error::io(format!("listening on {}", config.listen), e))?;
    let listen = listener
        .local_addr()
        .map_err(|e| Error::io("reading the listen address", e))?;
    let shared = Arc::new(Shared {
        probes: Mutex::new(probes),
        python: Mutex::new(python::PythonThreads::default()),
        state: Mutex::new(state),
        config: RwLock::new((config, compiled)),
        last_scrape: Mutex::new(Duration::ZERO),
        sleepers: Mutex::new(blocked::Sleepers::new(attach_ns)),
    });
    // Signals are handled from here on: one that came between READY and the event loop
    // would otherwise end the daemon with the default action.
    let signals = Signals::new()?;
    let poke = python::start(shared.clone());
    start_read_ahead(shared.clone());
    tokio::spawn(http::serve(listener, shared.clone()));
    notify::notify("READY=1");
    eprintln!("tracer: serving metrics at http://{listen}/metrics");
    let result = event_loop(&args, &shared, ring, signals, &poke).await;
    notify::notify("STOPPING=1");
    result
}

/// Starts [`blocked::read_ahead`] on a thread of its own.
fn start_read_ahead(shared: Arc<Shared>) {
    let _ = std::thread::Builder::new()
        .name("tracer-blocked".into())
        .spawn(move || {
            blocked::read_ahead(
                &shared.sleepers,
                || {
                    let config = shared.config.read().expect("config lock");
                    u64::try_from(config.1.blocked_min.as_nanos()).unwrap_or(u64::MAX)
                },
                || {
                    let mut looks: state::FastMap<u32, blocked::Look> = state::FastMap::default();
                    shared
                        .probes
                        .lock()
                        .expect("probes lock")
                        .for_each_thread(|tid, stats| {
                            looks.insert(tid, blocked::Look::of(stats));
                        });
                    let state = shared.state.lock().expect("state lock");
                    state
                        .threads
                        .iter()
                        .map(|(&tid, t)| (tid, t.tgid, looks.get(&tid).copied()))
                        .collect()
                },
                monotonic_ns,
            )
        });
}

/// The signals the daemon acts on.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        let handle =
            |kind, name: &str| signal(kind).map_err(|e| Error::io(format!("handling {name}"), e));
        Ok(Self {
            interrupt: handle(SignalKind::interrupt(), "SIGINT")?,
            terminate: handle(SignalKind::terminate(), "SIGTERM")?,
            hangup: handle(SignalKind::hangup(), "SIGHUP")?,
        })
    }
}

async fn event_loop(
    args: &Args,
    shared: &Shared,
    mut ring: RingBuf<MapData>,
    signals: Signals,
    poke: &std::sync::mpsc::Sender<python::Poke>,
) -> Result<()> {
    let Signals {
        mut interrupt,
        mut terminate,
        mut hangup,
    } = signals;
    let mut drain = tokio::time::interval(LIFECYCLE_DRAIN);
    let mut housekeeping = tokio::time::interval(Duration::from_secs(1));
    let mut last_sweep = Instant::now();
    let mut exited: Vec<(u32, u32, Instant)> = Vec::new();
    let mut unsettled: Vec<(u32, Instant)> = Vec::new();
    loop {
        tokio::select! {
            _ = drain.tick() => {
                while let Some(item) = ring.next() {
                    if let Some(event) = Event::decode(&item) {
                        apply(shared, &event, &mut exited, &mut unsettled, poke);
                    }
                }
                settle_names(shared, &mut unsettled);
                // Exited threads leave the kernel map promptly: under heavy thread churn
                // their entries would otherwise crowd out new threads.
                let now = Instant::now();
                let due: Vec<(u32, u32)> = exited.iter().filter(|(_, _, at)| now.duration_since(*at) >= HARVEST_DELAY).map(|&(tid, tgid, _)| (tid, tgid)).collect();
                exited.retain(|(_, _, at)| now.duration_since(*at) < HARVEST_DELAY);
                harvest(shared, &due, Reuse::Check);
            }
            _ = housekeeping.tick() => {
                let now = Instant::now();
                if now.duration_since(last_sweep) >= SWEEP_INTERVAL {
                    last_sweep = now;
                    sweep(shared);
                }
                let expiry = shared.config.read().expect("config lock").0.series_expiry();
                shared.state.lock().expect("state lock").expire(now, expiry);
            }
            _ = hangup.recv() => reload(args, shared),
            _ = interrupt.recv() => return Ok(()),
            _ = terminate.recv() => return Ok(()),
        }
    }
}

fn apply(
    shared: &Shared,
    event: &Event,
    exited: &mut Vec<(u32, u32, Instant)>,
    unsettled: &mut Vec<(u32, Instant)>,
    poke: &std::sync::mpsc::Sender<python::Poke>,
) {
    let now = Instant::now();
    // A new process (named as its parent until it execs) or an exec (which renames its main
    // thread) is named now, from /proc, before the state is locked.
    let named = match event {
        Event::ThreadCreated(e) if e.tgid != e.parent_tgid => {
            Some((e.tgid, comm_to_string(&e.comm)))
        }
        Event::ThreadRenamed(e) if e.tid == e.tgid => Some((e.tgid, comm_to_string(&e.new_comm))),
        _ => None,
    }
    .map(|(tgid, comm)| {
        let config = shared.config.read().expect("config lock");
        let (name, settled) = process_name_now(&config.1, tgid, &comm);
        if !settled && !unsettled.iter().any(|&(t, _)| t == tgid) {
            unsettled.push((tgid, now));
        }
        (tgid, name)
    });
    let mut state = shared.state.lock().expect("state lock");
    match event {
        Event::ThreadCreated(e) => {
            let in_process = e.tgid == e.parent_tgid;
            state.thread_created(e.tid, e.tgid, comm_to_string(&e.comm), in_process, now);
            // A forked process may be Python already (it inherits its parent's memory).
            let _ = poke.send(if in_process {
                python::Poke::Thread(e.tgid)
            } else {
                python::Poke::Renamed(e.tgid)
            });
        }
        Event::ThreadRenamed(e) => {
            state.thread_renamed(e.tid, comm_to_string(&e.new_comm));
            if e.tid == e.tgid {
                let _ = poke.send(python::Poke::Renamed(e.tgid));
            }
        }
        Event::ThreadExited(e) => exited.push((e.tid, e.tgid, now)),
        Event::Switch(_) | Event::Wakeup(_) | Event::FutexWait(_) => {}
    }
    if let Some((tgid, name)) = named {
        state.process_names.insert(tgid, name);
    }
}

/// The identity of process `tgid` in series ([`labels`]), whose main thread is called
/// `comm`: its name from its command line and executable by `rules` (from `comm` alone when
/// /proc no longer has it), with its unit and container from its cgroup when `rules` asks.
fn process_name(rules: &Compiled, tgid: u32, comm: &str) -> String {
    process_name_now(rules, tgid, comm).0
}

/// [`process_name`], and whether `/proc` showed all a name is made from: in the middle of an
/// `exec` a process has its new executable and kernel name, but its command line (and with
/// it a Python service's script) only a moment later.
fn process_name_now(rules: &Compiled, tgid: u32, comm: &str) -> (String, bool) {
    let identity = Identity::of_process(tgid, comm);
    let settled = identity.as_ref().is_none_or(Identity::is_settled);
    let identity = identity.unwrap_or_else(|| Identity {
        comm: comm.to_owned(),
        ..Identity::default()
    });
    let placement = if rules.labels.any() {
        Placement::of_process(tgid)
    } else {
        Placement::default()
    };
    (
        labels::process_key(rules.namer.name(&identity), &placement, rules.labels),
        settled,
    )
}

/// Names again the processes named in the middle of an `exec` (see [`process_name_now`]),
/// until `/proc` shows their command line or [`UNSETTLED_FOR`] has passed.
fn settle_names(shared: &Shared, unsettled: &mut Vec<(u32, Instant)>) {
    if unsettled.is_empty() {
        return;
    }
    let config = shared.config.read().expect("config lock");
    let now = Instant::now();
    unsettled.retain(|&(tgid, since)| {
        let comm = shared
            .state
            .lock()
            .expect("state lock")
            .threads
            .get(&tgid)
            .map(|t| t.comm.clone());
        let Some(comm) = comm else {
            return false;
        };
        let (name, settled) = process_name_now(&config.1, tgid, &comm);
        if settled {
            shared
                .state
                .lock()
                .expect("state lock")
                .process_renamed(tgid, name);
        }
        !settled && now.duration_since(since) < UNSETTLED_FOR
    });
}

/// Whether a thread id handed to [`harvest`] may name a newer thread by now.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Reuse {
    /// From exit events: the kernel may have given the id to a new thread since the exit.
    Check,
    /// From `/proc`: no thread has the id now.
    Impossible,
}

/// Moves exited threads' last counts from the kernel map into their series.
///
/// Between an exit and its harvest the kernel may give the thread's id to a new thread
/// (ids wrap at `pid_max`, quickly on a host that churns threads): its entry in the map is
/// then not marked exited, and it and the new thread's series are left alone; only the
/// exit is counted.
fn harvest(shared: &Shared, tids: &[(u32, u32)], reuse: Reuse) {
    if tids.is_empty() {
        return;
    }
    let now_ns = monotonic_ns();
    let now = Instant::now();
    let config = shared.config.read().expect("config lock");
    let mut probes = shared.probes.lock().expect("probes lock");
    let mut state = shared.state.lock().expect("state lock");
    let mut python = shared.python.lock().expect("python lock");
    for &(tid, exited_tgid) in tids {
        let tgid = state.threads.get(&tid).map(|t| t.tgid);
        let is_python = tgid.is_some_and(|tgid| python.processes.contains(&tgid));
        let stats = probes.thread(tid);
        if reuse == Reuse::Check
            && stats.is_some_and(|s| s.state != tracer_common::thread::state::EXITED)
        {
            state.exit_of_a_reused_id(tid, exited_tgid, now);
            continue;
        }
        let last = stats.map(|stats| {
            let stats = state.since_attach(tid, &stats).unwrap_or(stats);
            (
                Values::of_thread(&stats, now_ns, is_python, None),
                histograms::Hists::of_thread(&stats),
            )
        });
        probes.remove_thread(tid);
        let name = python.names.remove(&tid);
        state.thread_exited(tid, last, name.as_deref(), now, &config.1);
    }
}

/// Finds map entries of threads that no longer exist (their exit event was lost).
fn sweep(shared: &Shared) {
    let mut gone = Vec::new();
    shared
        .probes
        .lock()
        .expect("probes lock")
        .for_each_thread(|tid, stats| {
            if !std::path::Path::new(&format!("/proc/{tid}")).exists() {
                gone.push((tid, stats.tgid));
            }
        });
    harvest(shared, &gone, Reuse::Impossible);
}

fn reload(args: &Args, shared: &Shared) {
    match Config::load(args.config.as_deref(), &args.overrides)
        .and_then(|c| c.compile().map(|k| (c, k)))
    {
        Ok((config, compiled)) => {
            let mut current = shared.config.write().expect("config lock");
            if config.listen != current.0.listen {
                eprintln!("tracer: the listen address changes only on restart");
            }
            if config.futex_waits != current.0.futex_waits {
                eprintln!("tracer: futex_waits changes only on restart");
            }
            // Processes are named again under the new rules; live threads whose process or
            // label changed join the series of their new names at the next scrape.
            let mut state = shared.state.lock().expect("state lock");
            let leaders: Vec<(u32, String)> = state
                .process_names
                .keys()
                .filter_map(|&tgid| Some((tgid, state.threads.get(&tgid)?.comm.clone())))
                .collect();
            for (tgid, comm) in leaders {
                state
                    .process_names
                    .insert(tgid, process_name(&compiled, tgid, &comm));
            }
            let python = shared.python.lock().expect("python lock");
            state.keep_series_unless_renamed(&compiled, &python.names);
            drop(python);
            drop(state);
            *current = (config, compiled);
            eprintln!("tracer: configuration reloaded");
        }
        Err(e) => eprintln!("tracer: keeping the previous configuration: {e}"),
    }
}

impl Shared {
    /// Collects every metric now and renders the exposition text.
    pub fn render(&self) -> String {
        let started = Instant::now();
        let scrape = self.collect();
        let text = metrics::render(&scrape);
        *self.last_scrape.lock().expect("scrape lock") = started.elapsed();
        text
    }

    fn collect(&self) -> Scrape {
        let now_ns = monotonic_ns();
        let config = self.config.read().expect("config lock");
        let rules = &config.1;
        let probes = self.probes.lock().expect("probes lock");
        let mut state = self.state.lock().expect("state lock");
        let python = self.python.lock().expect("python lock");
        state.label_by_python_names(rules, &python.names);
        let mut series: state::FastMap<state::SeriesKey, Values> =
            state::FastMap::with_capacity_and_hasher(state.threads.len(), Default::default());
        // Histograms by thread group id, of every thread in the map.
        let mut hists: state::FastMap<u32, histograms::Hists> = state::FastMap::default();
        // The threads on a CPU now: their CPU time since their last switch out is the kernel's.
        let running: Vec<(u32, (u64, u64))> = probes
            .threads_on_cpu()
            .into_iter()
            .filter_map(|tid| Some((tid, procfs::schedstat(tid)?)))
            .collect();
        let mut in_map: state::FastMap<u32, ()> =
            state::FastMap::with_capacity_and_hasher(state.threads.len(), Default::default());
        // Threads not yet in a series, admitted to theirs once all are known.
        let mut pending: Vec<budget::Pending<'_>> = Vec::new();
        let mut sleepers = self.sleepers.lock().expect("sleepers lock");
        sleepers.begin();
        // Each thread with since when it has not been switched out, at the latest.
        let mut unswitched: Vec<(u32, u64)> = Vec::new();
        probes.for_each_thread(|tid, stats| {
            in_map.insert(tid, ());
            unswitched.push((tid, sleepers.note(tid, stats.tgid, Some(stats), now_ns)));
            let is_python = python.processes.contains(&stats.tgid);
            let now = running.iter().find(|(t, _)| *t == tid).map(|(_, now)| *now);
            let rebased = state.since_attach(tid, stats);
            let values =
                Values::of_thread(rebased.as_ref().unwrap_or(stats), now_ns, is_python, now);
            // The common case: a known thread already assigned to its series.
            if let Some(key) = state.threads.get(&tid).and_then(|t| t.series.as_ref()) {
                hists.entry(stats.tgid).or_default().add_thread(stats);
                match series.get_mut(key) {
                    Some(total) => total.add(&values),
                    None => {
                        series.insert(key.clone(), values);
                    }
                }
                return;
            }
            if !state.threads.contains_key(&tid) {
                // Not announced by an event (it predates a lost one): ask /proc.
                let Some((tgid, comm)) = procfs::thread_identity(tid) else {
                    return;
                };
                state.process_names.entry(tgid).or_insert_with(|| {
                    let comm = procfs::thread_comm(tgid, tgid).unwrap_or_default();
                    process_name(rules, tgid, &comm)
                });
                state.add_thread(tid, tgid, comm);
            }
            hists.entry(stats.tgid).or_default().add_thread(stats);
            let name = python.names.get(&tid).map(String::as_str);
            pending.push(budget::Pending { tid, name, values });
        });
        // Threads that have not left a CPU since the attach (asleep all along, an idle pool,
        // a deadlocked pair) have no entry in the kernel map: they are in their series too,
        // with nothing counted since the attach.
        for (&tid, thread) in &state.threads {
            if in_map.contains_key(&tid) {
                continue;
            }
            unswitched.push((tid, sleepers.note(tid, thread.tgid, None, now_ns)));
            let values = Values {
                python: u64::from(python.processes.contains(&thread.tgid)),
                ..Values::default()
            };
            match &thread.series {
                Some(key) => series.entry(key.clone()).or_default().add(&values),
                None => {
                    let name = python.names.get(&tid).map(String::as_str);
                    pending.push(budget::Pending { tid, name, values });
                }
            }
        }
        for (key, values) in state.admit(pending, rules) {
            series.entry(key).or_default().add(&values);
        }
        sleepers.finish(now_ns);
        let on_cpu: Vec<u32> = running.iter().map(|&(tid, _)| tid).collect();
        let min_ns = u64::try_from(rules.blocked_min.as_nanos()).unwrap_or(u64::MAX);
        let blocked = blocked::gauges(&mut sleepers, &unswitched, &on_cpu, now_ns, min_ns, |tid| {
            let thread = state.threads.get(&tid)?;
            Some((thread.tgid, thread.series.clone()?))
        });
        drop(sleepers);
        state.finish_scrape(&mut series);
        let mut hists = state.finish_hists(hists);
        // A process's run-queue and futex waits: those of all its series as exported.
        let mut totals: state::FastMap<&str, Values> = state::FastMap::default();
        for (key, values) in &series {
            match totals.get_mut(key.process.as_str()) {
                Some(total) => total.add(values),
                None => {
                    totals.insert(&key.process, values.clone());
                }
            }
        }
        let mut alive: state::FastMap<&str, u64> = state::FastMap::default();
        for t in state.threads.values() {
            if let Some(name) = state.process_names.get(&t.tgid) {
                *alive.entry(name.as_str()).or_default() += 1;
            }
        }
        let mut processes: Vec<ProcessRow> = alive
            .iter()
            .map(|(name, &n)| ((*name).to_owned(), n))
            .chain(state.processes.keys().map(|name| (name.clone(), 0)))
            .filter(|(name, _)| rules.exports(name))
            .map(|(name, n)| ProcessRow {
                threads_alive: alive.get(name.as_str()).copied().unwrap_or(n),
                threads_created: state.processes.get(&name).map_or(0, |c| c.threads_created),
                threads_exited: state.processes.get(&name).map_or(0, |c| c.threads_exited),
                totals: totals.remove(name.as_str()).unwrap_or_default(),
                hists: hists.remove(&name).unwrap_or_default(),
                process: name,
            })
            .collect();
        processes.sort_by(|a, b| a.process.cmp(&b.process));
        processes.dedup_by(|a, b| a.process == b.process);
        let (cpu_seconds, resident_bytes) = procfs::own_usage();
        let bpf_stats_enabled = std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled")
            .is_ok_and(|v| v.trim() == "1");
        Scrape {
            series,
            processes,
            lost: EventKind::ALL.iter().copied().zip(probes.lost()).collect(),
            folded: state.folded,
            last_scrape_seconds: self.last_scrape.lock().expect("scrape lock").as_secs_f64(),
            cpu_seconds,
            resident_bytes,
            programs: if bpf_stats_enabled {
                probes
                    .program_stats()
                    .into_iter()
                    .map(|(name, time, runs)| (name, time.as_secs_f64(), runs))
                    .collect()
            } else {
                Vec::new()
            },
            bpf_stats_enabled,
            blocked,
        }
    }
}
