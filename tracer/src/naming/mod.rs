//! Process names: the `process` label of the daemon's series and the `process` of a capture.
//!
//! By default a CPython process is named by its main script (file name without `.py`) or
//! the module it runs with `-m`, a kernel thread is `kernel`, and any other process by its
//! main thread's kernel name. `[[process_names]]` rules, first match wins, name a process
//! from a template instead. A process is named once, when it is first seen and again when it
//! execs, never per scrape.

pub mod cgroup;
pub mod identity;
mod python;

use regex::Regex;
use serde::{Deserialize, Serialize};

pub use self::identity::Identity;
use crate::error::{Error, Result};

/// The name of every kernel thread.
pub const KERNEL: &str = "kernel";

/// Names are cut to this many bytes (at a character boundary).
pub const MAX_NAME: usize = 128;

/// A `[[process_names]]` rule: a process matching every pattern given is named `name`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ProcessNameRule {
    /// Regular expression on the main thread's kernel name (whole name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// Regular expression on the executable (whole path, or whole file name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// Regular expression searched in the command line (arguments joined by spaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// The name: text with `{comm}`, `{exe}` (file name), `{default}` (the name tracer would
    /// give) and the patterns' capture groups, `{1}` or `{group}`; `{{` and `}}` for braces.
    pub name: String,
}

/// One piece of a name template.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Comm,
    Exe,
    Default,
    /// A capture group, by number or name.
    Group(String),
}

#[derive(Clone, Debug)]
struct Rule {
    comm: Option<Regex>,
    exe: Option<Regex>,
    cmdline: Option<Regex>,
    name: Vec<Piece>,
}

/// Compiled `[[process_names]]` rules.
#[derive(Clone, Debug, Default)]
pub struct Namer {
    rules: Vec<Rule>,
}

impl Namer {
    /// Compiles `rules`, failing with the rule and the reason on a bad pattern or template.
    pub fn new(rules: &[ProcessNameRule]) -> Result<Self> {
        let rules = rules
            .iter()
            .enumerate()
            .map(|(i, rule)| {
                compile(rule).map_err(|e| Error::Config(format!("process_names[{i}]: {e}")))
            })
            .collect::<Result<_>>()?;
        Ok(Self { rules })
    }

    /// The name of the process `identity` describes.
    pub fn name(&self, identity: &Identity) -> String {
        let default = default_name(identity);
        for rule in &self.rules {
            if let Some(name) = rule.apply(identity, &default) {
                return cut(name);
            }
        }
        cut(default)
    }
}

/// The name a process has without rules.
pub fn default_name(identity: &Identity) -> String {
    if identity.kernel {
        return KERNEL.to_owned();
    }
    let interpreter = if identity.exe.is_empty() {
        // Unreadable `exe` (another user's process): its `argv[0]`.
        identity
            .args
            .first()
            .is_some_and(|a| python::is_interpreter(a.rsplit('/').next().unwrap_or("")))
    } else {
        python::is_interpreter(identity.exe_base())
    };
    if interpreter && let Some(name) = python::main_name(identity.args.get(1..).unwrap_or_default())
    {
        return name;
    }
    identity.comm.clone()
}

fn cut(mut name: String) -> String {
    if name.len() > MAX_NAME {
        let mut end = MAX_NAME;
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        name.truncate(end);
    }
    name
}

fn compile(rule: &ProcessNameRule) -> std::result::Result<Rule, String> {
    let regex = |pattern: &Option<String>, whole: bool| {
        pattern
            .as_ref()
            .map(|p| {
                let p = if whole {
                    format!("^(?:{p})$")
                } else {
                    p.clone()
                };
                Regex::new(&p).map_err(|e| format!("bad pattern {p:?}: {e}"))
            })
            .transpose()
    };
    let compiled = Rule {
        comm: regex(&rule.comm, true)?,
        exe: regex(&rule.exe, true)?,
        cmdline: regex(&rule.cmdline, false)?,
        name: template(&rule.name)?,
    };
    for piece in &compiled.name {
        if let Piece::Group(group) = piece
            && !compiled.has_group(group)
        {
            return Err(format!(
                "the name uses {{{group}}}, which no pattern captures"
            ));
        }
    }
    Ok(compiled)
}

/// Splits a name template into its pieces.
fn template(text: &str) -> std::result::Result<Vec<Piece>, String> {
    let mut pieces = Vec::new();
    let mut literal = String::new();
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                literal.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                literal.push('}');
            }
            '{' => {
                let mut key = String::new();
                loop {
                    match chars.next() {
                        Some('}') => break,
                        Some(c) => key.push(c),
                        None => return Err(format!("unclosed {{ in name {text:?}")),
                    }
                }
                if !literal.is_empty() {
                    pieces.push(Piece::Text(std::mem::take(&mut literal)));
                }
                pieces.push(match key.as_str() {
                    "comm" => Piece::Comm,
                    "exe" => Piece::Exe,
                    "default" => Piece::Default,
                    _ if !key.is_empty() => Piece::Group(key),
                    _ => return Err(format!("empty {{}} in name {text:?}")),
                });
            }
            '}' => return Err(format!("unmatched }} in name {text:?}")),
            c => literal.push(c),
        }
    }
    if !literal.is_empty() {
        pieces.push(Piece::Text(literal));
    }
    Ok(pieces)
}

impl Rule {
    fn patterns(&self) -> impl Iterator<Item = &Regex> {
        [&self.comm, &self.exe, &self.cmdline].into_iter().flatten()
    }

    fn has_group(&self, group: &str) -> bool {
        self.patterns().any(|re| match group.parse::<usize>() {
            Ok(n) => n < re.captures_len(),
            Err(_) => re.capture_names().flatten().any(|g| g == group),
        })
    }

    /// The name this rule gives `identity`, when every pattern matches.
    fn apply(&self, identity: &Identity, default: &str) -> Option<String> {
        let comm = match &self.comm {
            Some(re) => Some(re.captures(&identity.comm)?),
            None => None,
        };
        let exe = match &self.exe {
            Some(re) => Some(
                re.captures(&identity.exe)
                    .or_else(|| re.captures(identity.exe_base()))?,
            ),
            None => None,
        };
        let line = identity.cmdline();
        let cmdline = match &self.cmdline {
            Some(re) => Some(re.captures(&line)?),
            None => None,
        };
        let captures = [comm, exe, cmdline];
        let group = |key: &str| -> String {
            captures
                .iter()
                .flatten()
                .find_map(|c| match key.parse::<usize>() {
                    Ok(n) => c.get(n),
                    Err(_) => c.name(key),
                })
                .map_or_else(String::new, |m| m.as_str().to_owned())
        };
        let mut name = String::new();
        for piece in &self.name {
            match piece {
                Piece::Text(t) => name.push_str(t),
                Piece::Comm => name.push_str(&identity.comm),
                Piece::Exe => name.push_str(identity.exe_base()),
                Piece::Default => name.push_str(default),
                Piece::Group(g) => name.push_str(&group(g)),
            }
        }
        // A template that came out empty (its groups did not take part) names nothing.
        (!name.is_empty()).then_some(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn process(comm: &str, exe: &str, args: &[&str]) -> Identity {
        Identity {
            comm: comm.into(),
            exe: exe.into(),
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            kernel: false,
        }
    }

    fn rule(
        comm: Option<&str>,
        exe: Option<&str>,
        cmdline: Option<&str>,
        name: &str,
    ) -> ProcessNameRule {
        ProcessNameRule {
            comm: comm.map(Into::into),
            exe: exe.map(Into::into),
            cmdline: cmdline.map(Into::into),
            name: name.into(),
        }
    }

    #[test]
    fn defaults_name_scripts_modules_kernel_threads_and_the_rest() {
        let namer = Namer::default();
        let orders = process(
            "python3",
            "/usr/bin/python3.11",
            &["python3", "/srv/orders_service.py"],
        );
        assert_eq!(namer.name(&orders), "orders_service");
        let http = process(
            "python3",
            "/usr/bin/python3.11",
            &["python3", "-m", "http.server"],
        );
        assert_eq!(namer.name(&http), "http.server");
        let inline = process("python3", "/usr/bin/python3.11", &["python3", "-c", "pass"]);
        assert_eq!(namer.name(&inline), "python3");
        let kworker = Identity {
            kernel: true,
            ..process("kworker/0:1", "", &[])
        };
        assert_eq!(namer.name(&kworker), KERNEL);
        let nginx = process("nginx", "/usr/sbin/nginx", &["nginx: worker process"]);
        assert_eq!(namer.name(&nginx), "nginx");
        // Another user's process, whose executable cannot be read.
        let theirs = process("python3", "", &["/usr/bin/python3", "job.py"]);
        assert_eq!(namer.name(&theirs), "job");
        // A script that merely looks like an interpreter's argument.
        let tool = process("tool", "/usr/bin/tool", &["tool", "x.py"]);
        assert_eq!(namer.name(&tool), "tool");
    }

    #[test]
    fn first_matching_rule_names_with_captures() {
        let namer = Namer::new(&[
            rule(
                None,
                None,
                Some(r"--queue[= ](?P<queue>\w+)"),
                "celery-{queue}",
            ),
            rule(Some("postgres"), None, Some(r"postgres: (\w+)"), "pg-{1}"),
            rule(None, Some("python3.*"), None, "py:{default}"),
            rule(None, Some("python3.*"), None, "never"),
        ])
        .unwrap();
        let worker = process(
            "celery",
            "/usr/bin/python3.11",
            &["python3", "-m", "celery", "--queue=mail"],
        );
        assert_eq!(namer.name(&worker), "celery-mail");
        let pg = process(
            "postgres",
            "/usr/lib/postgresql/bin/postgres",
            &["postgres: checkpointer"],
        );
        assert_eq!(namer.name(&pg), "pg-checkpointer");
        let app = process("python3", "/usr/bin/python3.11", &["python3", "app.py"]);
        assert_eq!(namer.name(&app), "py:app");
        let other = process("bash", "/usr/bin/bash", &["bash"]);
        assert_eq!(namer.name(&other), "bash");
    }

    #[test]
    fn a_rule_that_matches_nothing_leaves_the_default() {
        let namer = Namer::new(&[rule(Some("nothing-is-called-this"), None, None, "x")]).unwrap();
        assert_eq!(
            namer.name(&process("sshd", "/usr/sbin/sshd", &["sshd"])),
            "sshd"
        );
        // Optional groups that did not take part make no name.
        let namer = Namer::new(&[rule(None, None, Some("(a)?b"), "{1}")]).unwrap();
        assert_eq!(namer.name(&process("b", "/b", &["b"])), "b");
    }

    #[test]
    fn malformed_rules_are_refused_with_their_reason() {
        let err = |r: ProcessNameRule| Namer::new(&[r]).unwrap_err().to_string();
        assert!(err(rule(Some("("), None, None, "x")).contains("bad pattern"));
        assert!(err(rule(Some("a"), None, None, "{2}")).contains("no pattern captures"));
        assert!(err(rule(Some("a"), None, None, "{nope}")).contains("no pattern captures"));
        assert!(err(rule(Some("a"), None, None, "x{")).contains("unclosed"));
        assert!(err(rule(Some("a"), None, None, "x}")).contains("unmatched"));
        assert!(err(rule(Some("a"), None, None, "{}")).contains("empty"));
        let braces = Namer::new(&[rule(Some("a"), None, None, "{{{comm}}}")]).unwrap();
        assert_eq!(braces.name(&process("a", "", &[])), "{a}");
    }

    #[test]
    fn names_from_untrusted_command_lines_are_bounded() {
        let namer = Namer::new(&[rule(None, None, Some("(.*)"), "{1}")]).unwrap();
        let long = "é".repeat(200);
        let name = namer.name(&process("x", "/x", &[&long]));
        assert!(
            name.len() <= MAX_NAME && name.chars().all(|c| c == 'é'),
            "{name}"
        );
    }
}
