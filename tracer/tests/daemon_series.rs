//! `tracer daemon`'s series: per-process histograms summed from the thread series, the
//! host-wide series budget, and the compressed exposition.

mod support;

use std::{
    collections::BTreeMap,
    process::Command,
    time::{Duration, Instant},
};

use support::{prom::value, *};

/// A sample's value in integer units of `1e-9` (nanoseconds for seconds): the daemon writes
/// at most nine decimals, so this is exact, and sums of it are too.
fn nanos(value: f64) -> u64 {
    (value * 1e9).round() as u64
}

/// Every process's `tracer_futex_wait_seconds` counts exactly the waits and the time of its
/// thread series in the same scrape, and no histogram has a `thread` label. The workload's
/// lockers contend on a mutex, so its process has waits to count.
#[test]
fn futex_histogram_of_a_process_sums_its_thread_counters() {
    if !can_trace("futex_histogram_of_a_process_sums_its_thread_counters") {
        return;
    }
    let daemon = Daemon::start(&[], &[]);
    let dir = scratch();
    let truth_path = dir.path().join("truth.json");
    let (workload, process) = private_workload(dir.path());
    let status = Command::new(&workload)
        .arg("mixed")
        .env("TRACER_TRUTH", &truth_path)
        .status()
        .unwrap();
    assert!(status.success());
    let truth = read_json(&truth_path);
    let threads = truth["threads"].as_array().unwrap();
    let text = daemon.text_after_exits(&process, threads.len() - 1);

    let histograms: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" histogram"))
        .collect();
    assert!(histograms.contains(&"tracer_futex_wait_seconds"), "{text}");
    let samples = prom::parse(&text);
    for s in &samples {
        assert!(
            !(histograms.iter().any(|h| s.name.starts_with(h)) && s.labels.contains_key("thread")),
            "a histogram with a thread label: {s:?}"
        );
    }
    // (waits, wait nanoseconds) by process: from the thread counters, and from the histogram.
    let mut threads_sum: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    let mut histogram: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for s in &samples {
        let Some(p) = s.labels.get("process").map(String::as_str) else {
            continue;
        };
        match s.name.as_str() {
            "tracer_thread_futex_waits_total" => {
                threads_sum.entry(p).or_default().0 += s.value as u64
            }
            "tracer_thread_futex_wait_seconds_total" => {
                threads_sum.entry(p).or_default().1 += nanos(s.value);
            }
            "tracer_futex_wait_seconds_count" => histogram.entry(p).or_default().0 = s.value as u64,
            "tracer_futex_wait_seconds_sum" => histogram.entry(p).or_default().1 = nanos(s.value),
            _ => {}
        }
    }
    for (p, sums) in &threads_sum {
        assert_eq!(
            histogram.get(p).copied().unwrap_or_default(),
            *sums,
            "process {p}: histogram (count, ns) against its threads' counters"
        );
    }
    // The lockers' waits are in it: at least one per locker that the kernel saw block.
    let lockers: u64 = threads
        .iter()
        .filter(|t| t["role"] == "locker")
        .map(|t| u64::from(t["voluntary_switches"].as_u64().unwrap() > 0))
        .sum();
    let (waits, _) = histogram[process.as_str()];
    assert!(
        lockers > 0 && waits >= lockers,
        "{waits} waits, {lockers} lockers that blocked"
    );
}

/// One task's name, whether it is asleep, and its voluntary and involuntary switches, from
/// `/proc/PID/task/TID/status`.
fn task_status(pid: u32, tid: &str) -> Option<(String, bool, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
    };
    Some((
        field("Name:")?,
        field("State:")?.starts_with('S'),
        field("voluntary_ctxt_switches:")?.parse().ok()?,
        field("nonvoluntary_ctxt_switches:")?.parse().ok()?,
    ))
}

/// Every thread of process `pid` by name: (asleep, voluntary, involuntary switches).
fn threads_of(pid: u32) -> BTreeMap<String, (bool, u64, u64)> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|e| {
            let tid = e.ok()?.file_name().into_string().ok()?;
            let (name, asleep, v, i) = task_status(pid, &tid)?;
            Some((name, (asleep, v, i)))
        })
        .collect()
}

/// A `thread-workload rounds` process under a name of its own.
struct RoundsProcess {
    name: String,
    threads: usize,
    child: std::process::Child,
    stdout: std::io::BufReader<std::process::ChildStdout>,
}

impl RoundsProcess {
    /// Starts `threads` round threads and returns once they all wait.
    fn start(dir: &std::path::Path, name: String, threads: usize) -> Self {
        let path = dir.join(&name);
        std::fs::copy(rust_workload(), &path).unwrap();
        let mut child = Command::new(&path)
            .arg("rounds")
            .env("TRACER_ROUND_THREADS", threads.to_string())
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut process = Self {
            name,
            threads,
            child,
            stdout,
        };
        assert_eq!(process.line(), format!("rounds {threads}"));
        process
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut self.stdout, &mut line).unwrap();
        line.trim().to_owned()
    }

    /// Runs round `k` of every thread, to its end.
    fn round(&mut self, k: usize) {
        use std::io::Write as _;
        writeln!(self.child.stdin.as_mut().unwrap()).unwrap();
        assert_eq!(self.line(), format!("round {k} done"));
    }
}

impl Drop for RoundsProcess {
    fn drop(&mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// Per process, every thread by name: (asleep, voluntary, involuntary switches).
type Reading = Vec<BTreeMap<String, (bool, u64, u64)>>;

/// Runs round `k` of `processes`, then waits until all their threads are asleep again and
/// returns a reading of the kernel's counters that did not change across a scrape, and the
/// scrape.
fn round_and_scrape(
    daemon: &Daemon,
    processes: &mut [RoundsProcess],
    k: usize,
) -> (Reading, Vec<prom::Sample>) {
    for p in processes.iter_mut() {
        p.round(k);
    }
    let pids: Vec<u32> = processes.iter().map(|p| p.child.id()).collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let first: Reading = pids.iter().map(|&pid| threads_of(pid)).collect();
        if first.iter().all(|t| t.values().all(|(asleep, ..)| *asleep)) {
            let samples = daemon.samples();
            let second: Reading = pids.iter().map(|&pid| threads_of(pid)).collect();
            if first == second {
                return (first, samples);
            }
        }
        assert!(Instant::now() < deadline, "the workloads never settled");
        std::thread::sleep(POLL);
    }
}

/// Switches (voluntary, involuntary) by thread label of `process`'s thread series.
fn switch_series<'a>(samples: &'a [prom::Sample], process: &str) -> BTreeMap<&'a str, (u64, u64)> {
    let mut series: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for s in samples {
        if s.name == "tracer_thread_context_switches_total" && s.labels["process"] == process {
            let e = series.entry(s.labels["thread"].as_str()).or_default();
            match s.labels["kind"].as_str() {
                "voluntary" => e.0 += s.value as u64,
                _ => e.1 += s.value as u64,
            }
        }
    }
    series
}

/// `a - b` field by field.
fn minus(a: (u64, u64), b: (u64, u64)) -> (u64, u64) {
    (a.0 - b.0, a.1 - b.1)
}

/// Three processes of 6, 41 and 61 threads (the main one and the round threads, each of its
/// own name) under `max_series = 30`: the small one keeps its 6 series, the others split the
/// 24 left, 12 each: their 11 busiest threads named and `thread="other"`. Every switch the
/// kernel counts for a process is in its named series or in its `other`.
///
/// The threads predate the daemon, which counts a thread's switches from its first switch out
/// after the attach: the first round gives every thread that one, the second is compared.
#[test]
fn the_series_budget_is_shared_fairly_and_folds_into_other() {
    if !can_trace("the_series_budget_is_shared_fairly_and_folds_into_other") {
        return;
    }
    let dir = scratch();
    let prefix = format!("sb{}", std::process::id() % 1_000_000);
    let mut processes: Vec<RoundsProcess> = [("a", 5), ("b", 40), ("c", 60)]
        .into_iter()
        .map(|(suffix, n)| RoundsProcess::start(dir.path(), format!("{prefix}{suffix}"), n))
        .collect();
    // The daemon finds every thread in /proc at its start, and its first scrape (after the
    // first round) admits them all at once.
    let config = dir.path().join("tracer.toml");
    let include = format!(
        "include_processes = [{}]\n",
        ["a", "b", "c", "d"]
            .map(|x| format!("\"{prefix}{x}\""))
            .join(", ")
    );
    std::fs::write(&config, format!("max_series = 30\n{include}")).unwrap();
    let daemon = Daemon::start(&["--config", config.to_str().unwrap()], &[]);
    let pids: Vec<u32> = processes.iter().map(|p| p.child.id()).collect();
    let start: Reading = pids.iter().map(|&pid| threads_of(pid)).collect();
    let (first, samples1) = round_and_scrape(&daemon, &mut processes, 1);
    let (second, samples2) = round_and_scrape(&daemon, &mut processes, 2);
    let mut folded = 0;
    for (i, (p, share)) in processes.iter().zip([6, 12, 12]).enumerate() {
        let process = p.name.as_str();
        let switches = |r: &Reading, name: &str| (r[i][name].1, r[i][name].2);
        let (series1, series2) = (
            switch_series(&samples1, process),
            switch_series(&samples2, process),
        );
        assert_eq!(series1.len(), share, "{process}: {series1:?}");
        assert_eq!(
            series1.keys().collect::<Vec<_>>(),
            series2.keys().collect::<Vec<_>>(),
            "{process}: series are sticky"
        );
        let named: Vec<&str> = series1.keys().copied().filter(|t| *t != "other").collect();
        let threads = p.threads + 1;
        assert_eq!(
            series1.contains_key("other"),
            named.len() < threads,
            "{process}: {series1:?}"
        );
        folded += threads - named.len();
        // What the kernel counted in the second round is in the named series and `other`.
        let sum = |a: (u64, u64), b: (u64, u64)| (a.0 + b.0, a.1 + b.1);
        let kernel = second[i]
            .keys()
            .map(|n| minus(switches(&second, n), switches(&first, n)))
            .fold((0, 0), sum);
        let exported = minus(
            series2.values().copied().fold((0, 0), sum),
            series1.values().copied().fold((0, 0), sum),
        );
        assert_eq!(
            exported, kernel,
            "{process}: (voluntary, involuntary) switches"
        );
        for name in &named {
            assert_eq!(
                minus(series2[name], series1[name]),
                minus(switches(&second, name), switches(&first, name)),
                "{process}/{name}"
            );
        }
        // The named are the busiest of the first round: no folded thread switched more.
        let busy = |n: &str| {
            let (v, i) = minus(switches(&first, n), switches(&start, n));
            v + i
        };
        let busiest_folded = first[i]
            .keys()
            .filter(|n| !named.contains(&n.as_str()))
            .map(|n| busy(n))
            .max()
            .unwrap_or(0);
        let least_named = named.iter().map(|n| busy(n)).min().unwrap();
        assert!(
            least_named >= busiest_folded,
            "{process}: a named thread switched {least_named} times, a folded one {busiest_folded}"
        );
    }
    assert_eq!(folded, 30 + 50);
    assert_eq!(
        value(&samples2, "tracer_series_folded_total", &[]),
        folded as f64
    );

    // A larger budget on SIGHUP: a new process of 21 threads names them all, and the
    // threads folded before stay in `other`.
    std::fs::write(&config, format!("max_series = 200\n{include}")).unwrap();
    daemon.signal(libc::SIGHUP);
    let deadline = Instant::now() + PATIENCE;
    while !daemon
        .log
        .lock()
        .unwrap()
        .contains("configuration reloaded")
    {
        assert!(Instant::now() < deadline, "no reload");
        std::thread::sleep(POLL);
    }
    let mut late = [RoundsProcess::start(dir.path(), format!("{prefix}d"), 20)];
    let (_, samples3) = round_and_scrape(&daemon, &mut late, 1);
    let series = switch_series(&samples3, &late[0].name);
    assert_eq!(series.len(), 21, "{series:?}");
    assert!(!series.contains_key("other"), "{series:?}");
    for p in &processes {
        assert_eq!(
            switch_series(&samples3, &p.name).keys().collect::<Vec<_>>(),
            switch_series(&samples2, &p.name).keys().collect::<Vec<_>>(),
            "{}: series are sticky across a reload",
            p.name
        );
    }
    assert_eq!(
        value(&samples3, "tracer_series_folded_total", &[]),
        folded as f64
    );
}

/// One `GET /metrics` with `accept_encoding`: the response's head and its body as sent.
fn get_metrics(addr: &str, accept_encoding: Option<&str>) -> (String, Vec<u8>) {
    use std::io::{Read as _, Write as _};
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let accept = accept_encoding.map_or(String::new(), |a| format!("Accept-Encoding: {a}\r\n"));
    write!(
        stream,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\n{accept}\r\n"
    )
    .unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let at = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("an HTTP response");
    let head = String::from_utf8(response[..at].to_vec()).unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    (head, response[at + 4..].to_vec())
}

/// The value of header `name` in `head` (any case).
fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The families of exposition text, as its `# TYPE` lines, but for those that come and go
/// with what else runs on the machine (CPython processes, `kernel.bpf_stats_enabled`).
fn families(text: &str) -> Vec<&str> {
    text.lines()
        .filter(|l| l.starts_with("# TYPE"))
        .filter(|l| !l.contains("tracer_python_") && !l.contains("tracer_bpf_"))
        .collect()
}

/// A scrape that accepts gzip gets the exposition compressed, which decodes to the same
/// families as a plain scrape's; one that refuses it (`q=0`) or says nothing gets text.
#[test]
fn the_exposition_is_gzipped_when_the_scraper_accepts_it() {
    if !can_trace("the_exposition_is_gzipped_when_the_scraper_accepts_it") {
        return;
    }
    use std::io::Read as _;
    let daemon = Daemon::start(&[], &[]);
    let (head, plain) = get_metrics(&daemon.addr, None);
    assert_eq!(header(&head, "Content-Encoding"), None, "{head}");
    let plain = String::from_utf8(plain).unwrap();
    let (head, packed) = get_metrics(&daemon.addr, Some("gzip, deflate"));
    assert_eq!(header(&head, "Content-Encoding"), Some("gzip"), "{head}");
    assert_eq!(
        header(&head, "Content-Length"),
        Some(packed.len().to_string().as_str())
    );
    let mut text = String::new();
    flate2::read::GzDecoder::new(packed.as_slice())
        .read_to_string(&mut text)
        .expect("a gzip body");
    prom::parse(&text);
    assert_eq!(families(&text), families(&plain));
    assert!(
        packed.len() * 4 < text.len(),
        "{} bytes compressed from {}",
        packed.len(),
        text.len()
    );
    for refused in ["gzip;q=0", "identity", "br;q=1, gzip;q=0.0"] {
        let (head, body) = get_metrics(&daemon.addr, Some(refused));
        assert_eq!(header(&head, "Content-Encoding"), None, "{refused}: {head}");
        prom::parse(std::str::from_utf8(&body).expect(refused));
    }
}
