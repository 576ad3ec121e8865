//! Daemon configuration: a TOML file, command-line flags over it, reloaded on SIGHUP.

use std::{net::SocketAddr, path::Path, time::Duration};

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::{
    error::{Error, Result},
    naming::{KERNEL, Namer, ProcessNameRule},
};

/// Where `/metrics` is served unless configured otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9464";

/// The daemon's settings, as written in its TOML file.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Address of the metrics endpoint.
    pub listen: SocketAddr,
    /// Thread series kept per process; further thread names fold into `thread="other"`.
    pub max_threads_per_process: usize,
    /// Thread series of the whole host, shared fairly across processes at each scrape; a
    /// process over its share folds further threads into `thread="other"`.
    pub max_series: usize,
    /// Seconds a series of threads that are all gone is kept before it expires.
    pub series_expiry_secs: u64,
    /// Process names (regular expressions, whole name) to export; empty means all.
    pub include_processes: Vec<String>,
    /// Process names (regular expressions, whole name) never exported.
    pub exclude_processes: Vec<String>,
    /// Rules applied in order to thread names before they become labels.
    pub thread_name_rules: Vec<NameRule>,
    /// Rules naming processes (first match wins); a process no rule matches gets the
    /// default name.
    pub process_names: Vec<ProcessNameRule>,
    /// Labels added to every process and thread series, from where the process runs.
    pub labels: Vec<Label>,
    /// Threads the kernel map can hold at once.
    pub max_traced_threads: u32,
    /// Whether futex waits are traced (`tracer_futex_wait_seconds`, GIL waits). They are seen
    /// in `sched_switch`, from the system call a thread falls asleep in; where tracer does
    /// not know this architecture's saved registers, by syscall tracepoints, which send
    /// every system call of every thread through the kernel's tracing path while attached.
    pub futex_waits: bool,
    /// Seconds a thread must have been asleep to be in `tracer_thread_blocked_seconds`.
    pub blocked_min_secs: u64,
}

/// Rewrites thread names matching `pattern` (a regular expression) to `replacement`
/// (`$1`-style groups allowed), e.g. `worker-\d+` to `worker-N`; with `process`, only in
/// processes whose name matches it (whole name).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NameRule {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<String>,
    pub pattern: String,
    pub replacement: String,
}

/// A label the configuration's `labels` can add, read from the process's cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Label {
    /// `unit`: the systemd unit the process runs in (`orders.service`).
    Unit,
    /// `container`: the first 12 hex digits of the process's container id.
    Container,
}

/// Which of the optional labels series carry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Labels {
    pub unit: bool,
    pub container: bool,
}

impl Labels {
    /// Whether any of them is on (and the cgroups must be read).
    pub const fn any(self) -> bool {
        self.unit || self.container
    }
}

/// The default thread name rules: a kernel thread's name loses what follows its first `/`,
/// the CPU, the work item or the device it is for (`kworker/0:1-events` is `kworker`).
pub fn default_thread_name_rules() -> Vec<NameRule> {
    vec![NameRule {
        process: Some(KERNEL.to_owned()),
        pattern: "/.*$".to_owned(),
        replacement: String::new(),
    }]
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default address"),
            max_threads_per_process: 64,
            max_series: 2000,
            series_expiry_secs: 600,
            include_processes: Vec::new(),
            exclude_processes: Vec::new(),
            thread_name_rules: default_thread_name_rules(),
            process_names: Vec::new(),
            labels: Vec::new(),
            max_traced_threads: 32768,
            futex_waits: true,
            blocked_min_secs: 10,
        }
    }
}

/// Flags that override the file.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
}

impl Config {
    /// The file at `path` (defaults where it is silent), with `overrides` applied.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self> {
        let mut config = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| Error::io(format!("reading config {}", path.display()), e))?;
                Self::parse(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?
            }
            None => Self::default(),
        };
        if let Some(listen) = overrides.listen {
            config.listen = listen;
        }
        config.compile()?;
        Ok(config)
    }

    pub fn parse(text: &str) -> std::result::Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The effective configuration as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    pub fn series_expiry(&self) -> Duration {
        Duration::from_secs(self.series_expiry_secs)
    }

    /// How long a thread must have been asleep to be in `tracer_thread_blocked_seconds`.
    pub fn blocked_min(&self) -> Duration {
        Duration::from_secs(self.blocked_min_secs)
    }

    /// Checks the settings and compiles the patterns.
    pub fn compile(&self) -> Result<Compiled> {
        if self.max_threads_per_process == 0 {
            return Err(Error::Config(
                "max_threads_per_process must be at least 1".into(),
            ));
        }
        if self.max_series == 0 {
            return Err(Error::Config("max_series must be at least 1".into()));
        }
        if self.max_traced_threads < 64 {
            return Err(Error::Config(
                "max_traced_threads must be at least 64".into(),
            ));
        }
        let whole = |p: &String| {
            Regex::new(&format!("^(?:{p})$"))
                .map_err(|e| Error::Config(format!("bad process pattern {p:?}: {e}")))
        };
        Ok(Compiled {
            include: self
                .include_processes
                .iter()
                .map(whole)
                .collect::<Result<_>>()?,
            exclude: self
                .exclude_processes
                .iter()
                .map(whole)
                .collect::<Result<_>>()?,
            rules: self
                .thread_name_rules
                .iter()
                .map(|r| {
                    let process = r.process.as_ref().map(whole).transpose()?;
                    Regex::new(&r.pattern)
                        .map(|re| (process, re, r.replacement.clone()))
                        .map_err(|e| {
                            Error::Config(format!("bad thread name pattern {:?}: {e}", r.pattern))
                        })
                })
                .collect::<Result<_>>()?,
            namer: Namer::new(&self.process_names)?,
            labels: self.compile_labels()?,
            max_threads_per_process: self.max_threads_per_process,
            max_series: self.max_series,
            blocked_min: self.blocked_min(),
        })
    }
}

impl Config {
    fn compile_labels(&self) -> Result<Labels> {
        let mut labels = Labels::default();
        for label in &self.labels {
            let on = match label {
                Label::Unit => &mut labels.unit,
                Label::Container => &mut labels.container,
            };
            if *on {
                return Err(Error::Config(format!(
                    "labels lists {:?} twice",
                    label_name(*label)
                )));
            }
            *on = true;
        }
        Ok(labels)
    }
}

/// A label's name as series carry it.
pub const fn label_name(label: Label) -> &'static str {
    match label {
        Label::Unit => "unit",
        Label::Container => "container",
    }
}

/// The parts of a [`Config`] used on every scrape, ready to use.
#[derive(Clone, Debug)]
pub struct Compiled {
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    rules: Vec<(Option<Regex>, Regex, String)>,
    /// Names processes.
    pub namer: Namer,
    /// The optional labels series carry.
    pub labels: Labels,
    pub max_threads_per_process: usize,
    pub max_series: usize,
    /// `blocked_min_secs`.
    pub blocked_min: Duration,
}

impl Compiled {
    /// Whether a process with this name (or [`super::labels`] identity) is exported.
    pub fn exports(&self, process: &str) -> bool {
        let process = super::labels::name_of(process);
        (self.include.is_empty() || self.include.iter().any(|re| re.is_match(process)))
            && !self.exclude.iter().any(|re| re.is_match(process))
    }

    /// The name of a thread of `process` (a name or identity) after the normalisation rules.
    pub fn thread_label(&self, process: &str, name: &str) -> String {
        let process = super::labels::name_of(process);
        let mut name = name.to_owned();
        for (only, re, replacement) in &self.rules {
            if only.as_ref().is_none_or(|p| p.is_match(process)) {
                name = re.replace_all(&name, replacement.as_str()).into_owned();
            }
        }
        name
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_then_file_then_flags() {
        let text = r#"
            listen = "0.0.0.0:9000"
            max_threads_per_process = 8
            exclude_processes = ["systemd.*"]
            [[thread_name_rules]]
            pattern = '-\d+$'
            replacement = "-N"
        "#;
        let file = Config::parse(text).unwrap();
        assert_eq!(file.listen.port(), 9000);
        assert_eq!(
            file.series_expiry_secs,
            Config::default().series_expiry_secs
        );
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tracer.toml");
        std::fs::write(&path, text).unwrap();
        let overrides = Overrides {
            listen: Some("127.0.0.1:1234".parse().unwrap()),
        };
        let config = Config::load(Some(&path), &overrides).unwrap();
        assert_eq!(config.listen.port(), 1234);
        let compiled = config.compile().unwrap();
        assert_eq!(compiled.thread_label("app", "worker-17"), "worker-N");
        // A file's rules replace the defaults.
        assert_eq!(compiled.thread_label(KERNEL, "kworker/0:1"), "kworker/0:1");
        assert!(!compiled.exports("systemd-journald"));
        assert!(compiled.exports("python3"));
        // The effective configuration reads back as itself.
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
    }

    #[test]
    fn mistakes_are_reported() {
        assert!(Config::parse("listen = 5").is_err());
        assert!(
            Config::parse("unknown_key = 1")
                .unwrap_err()
                .contains("unknown")
        );
        let bad = Config {
            include_processes: vec!["(".into()],
            ..Config::default()
        };
        assert!(
            bad.compile()
                .unwrap_err()
                .to_string()
                .contains("bad process pattern")
        );
    }

    #[test]
    fn kernel_threads_lose_what_follows_their_slash_by_default() {
        let compiled = Config::default().compile().unwrap();
        for (name, label) in [
            ("kworker/0:1-events", "kworker"),
            ("kworker/u8:3-flush-254:0", "kworker"),
            ("ksoftirqd/1", "ksoftirqd"),
            ("irq/24-virtio0", "irq"),
            ("rcu_preempt", "rcu_preempt"),
        ] {
            assert_eq!(compiled.thread_label(KERNEL, name), label);
        }
        // Only kernel threads.
        assert_eq!(compiled.thread_label("app", "io/0"), "io/0");
    }

    #[test]
    fn labels_are_chosen_by_name_once_each() {
        let config = Config::parse(r#"labels = ["container", "unit"]"#).unwrap();
        let labels = config.compile().unwrap().labels;
        assert!(labels.unit && labels.container);
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
        assert_eq!(
            Config::default().compile().unwrap().labels,
            Labels::default()
        );
        let unknown = Config::parse(r#"labels = ["pod"]"#).unwrap_err();
        assert!(unknown.contains("unknown variant `pod`"), "{unknown}");
        let twice = Config::parse(r#"labels = ["unit", "unit"]"#).unwrap();
        assert!(
            twice
                .compile()
                .unwrap_err()
                .to_string()
                .contains("\"unit\" twice")
        );
    }

    #[test]
    fn process_name_rules_are_read_and_checked() {
        let text = r#"
            [[process_names]]
            cmdline = '--queue=(?P<queue>\w+)'
            name = "worker-{queue}"
        "#;
        let config = Config::parse(text).unwrap();
        assert_eq!(config.process_names.len(), 1);
        assert_eq!(Config::parse(&config.to_toml()).unwrap(), config);
        let bad = Config::parse("[[process_names]]\ncomm = 'x'\nname = '{1}'\n").unwrap();
        assert!(
            bad.compile()
                .unwrap_err()
                .to_string()
                .contains("process_names[0]")
        );
    }

    #[test]
    fn include_patterns_match_whole_names() {
        let config = Config {
            include_processes: vec!["python3".into()],
            ..Config::default()
        };
        let compiled = config.compile().unwrap();
        assert!(compiled.exports("python3"));
        assert!(!compiled.exports("python3.11"));
    }
}
