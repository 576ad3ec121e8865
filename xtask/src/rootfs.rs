//! A Debian sid root file system with `python3.14` and `python3.15`, for the tests that
//! trace Python in a root of its own on Debian's newest interpreters.
//!
//! It is made by `mmdebstrap` from Debian's packages, from the mirror this machine's own apt
//! sources name, and kept in `target/sid-root`, so that later runs reuse it. It is built in
//! a directory of its own and renamed into place only when complete, with a stamp file
//! saying what it holds: an interrupted build is never taken for a complete one.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, bail};

/// The suite the root is made of.
const SUITE: &str = "sid";

/// mmdebstrap's variant: only the packages Debian marks essential, then [`PACKAGES`].
const VARIANT: &str = "essential";

/// What the root holds beyond the essential packages.
const PACKAGES: [&str; 2] = ["python3.14", "python3.15"];

/// The stamp file, at the top of a complete root.
const STAMP: &str = ".tracer-sid-root";

/// Used when the apt sources name no Debian mirror.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";

/// Debian's suite names and aliases, by which a source is told to be Debian's main archive
/// (rather than its security archive, updates or someone else's repository).
const DEBIAN_SUITES: [&str; 12] = [
    "buster",
    "bullseye",
    "bookworm",
    "trixie",
    "forky",
    "duke",
    "sid",
    "oldoldstable",
    "oldstable",
    "stable",
    "testing",
    "unstable",
];

/// Where the root is kept.
pub fn dir(root: &Path) -> PathBuf {
    root.join("target/sid-root")
}

/// What the stamp of a root built now starts with; a root whose stamp starts otherwise was
/// built for something else and is made again.
fn request() -> String {
    format!(
        "suite {SUITE}\nvariant {VARIANT}\npackages {}\n",
        PACKAGES.join(" ")
    )
}

/// Whether the root at `dir` is complete and holds what is asked for now.
fn is_complete(dir: &Path) -> bool {
    fs::read_to_string(dir.join(STAMP)).is_ok_and(|stamp| stamp.starts_with(&request()))
}

/// Makes the root unless a complete one is there, and returns its path.
pub fn ensure(root: &Path) -> Result<PathBuf> {
    let dir = dir(root);
    if is_complete(&dir) {
        return Ok(dir);
    }
    super::setup::install_missing(&["mmdebstrap"])?;
    let mirror = machine_mirror();
    let partial = dir.with_extension("partial");
    remove(&partial)?;
    eprintln!(
        "xtask: making a Debian {SUITE} root with {} from {mirror} into {} (downloads its packages, once)",
        PACKAGES.join(", "),
        dir.display()
    );
    let started = Instant::now();
    // In a mount namespace of its own: whatever mmdebstrap mounts in the root while it
    // builds goes with it, even when it is killed.
    super::run_command(
        Command::new("unshare")
            .args(["--mount", "--propagation", "private", "mmdebstrap"])
            .args(["--mode=root", "--quiet"])
            .arg(format!("--variant={VARIANT}"))
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg("--aptopt=Acquire::Check-Valid-Until \"false\"")
            .args([
                "--dpkgopt=path-exclude=/usr/share/man/*",
                "--dpkgopt=path-exclude=/usr/share/doc/*",
                "--dpkgopt=path-exclude=/usr/share/locale/*",
            ])
            .arg(SUITE)
            .arg(&partial)
            .arg(&mirror),
    )
    .with_context(|| format!("making the {SUITE} root with mmdebstrap from {mirror}"))?;
    let versions = installed_versions(&partial)?;
    fs::write(
        partial.join(STAMP),
        format!("{}mirror {mirror}\n{versions}", request()),
    )?;
    remove(&dir)?;
    fs::rename(&partial, &dir)
        .with_context(|| format!("moving {} to {}", partial.display(), dir.display()))?;
    eprintln!(
        "xtask: the {SUITE} root is ready in {:.0} s: {}",
        started.elapsed().as_secs_f64(),
        versions.trim().replace('\n', ", ")
    );
    Ok(dir)
}

/// Removes `dir` and everything in it, if it is there.
fn remove(dir: &Path) -> Result<()> {
    match fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// `PACKAGE VERSION` lines of the root's interpreters, as its dpkg database has them.
fn installed_versions(dir: &Path) -> Result<String> {
    let out = Command::new("dpkg-query")
        .arg(format!("--admindir={}", dir.join("var/lib/dpkg").display()))
        .args(["-W", "-f=${Package} ${Version}\\n"])
        .args(PACKAGES)
        .output()
        .context("running dpkg-query")?;
    if !out.status.success() {
        bail!(
            "the new root lacks {}: {}",
            PACKAGES.join(" or "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The Debian mirror of this machine's apt sources, else [`DEFAULT_MIRROR`].
fn machine_mirror() -> String {
    let one_line = fs::read_to_string("/etc/apt/sources.list").unwrap_or_default();
    let mut deb822 = Vec::new();
    let mut lists = vec![one_line];
    if let Ok(entries) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = entries.filter_map(|e| Some(e.ok()?.path())).collect();
        paths.sort();
        for path in paths {
            let text = || fs::read_to_string(&path).unwrap_or_default();
            match path.extension().and_then(|e| e.to_str()) {
                Some("sources") => deb822.push(text()),
                Some("list") => lists.push(text()),
                _ => {}
            }
        }
    }
    let sources = lists
        .iter()
        .flat_map(|l| one_line_sources(l))
        .chain(deb822.iter().flat_map(|d| deb822_sources(d)));
    debian_mirror(sources).unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

/// One apt source: what it serves, from where.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Source {
    /// `deb` or `deb-src`.
    kind: String,
    uri: String,
    suites: Vec<String>,
    components: Vec<String>,
}

/// The URI of the first binary source that is Debian's main archive (a Debian suite without
/// a `-security` or `-updates` suffix, with `main`), without a trailing slash.
fn debian_mirror(sources: impl IntoIterator<Item = Source>) -> Option<String> {
    sources
        .into_iter()
        .find(|s| {
            s.kind == "deb"
                && s.components.iter().any(|c| c == "main")
                && s.suites
                    .iter()
                    .any(|suite| DEBIAN_SUITES.contains(&suite.as_str()))
        })
        .map(|s| s.uri.trim_end_matches('/').to_owned())
}

/// The sources of a `sources.list` in the one-line format:
/// `deb [option=value ...] URI SUITE [COMPONENT ...]`, `#` starting a comment.
fn one_line_sources(text: &str) -> Vec<Source> {
    text.lines()
        .filter_map(|line| {
            let line = line.split('#').next().unwrap_or_default().trim();
            let (kind, rest) = line.split_once(char::is_whitespace)?;
            let rest = rest.trim_start();
            // Options in brackets may hold spaces: `[ arch=amd64 signed-by=... ]`.
            let rest = match rest.strip_prefix('[') {
                Some(options) => options.split_once(']')?.1,
                None => rest,
            };
            let mut words = rest.split_whitespace();
            let uri = words.next()?;
            let suite = words.next()?;
            Some(Source {
                kind: kind.to_owned(),
                uri: uri.to_owned(),
                suites: vec![suite.to_owned()],
                components: words.map(str::to_owned).collect(),
            })
        })
        .collect()
}

/// The sources of a deb822 `.sources` file: paragraphs separated by blank lines, each with
/// `Types`, `URIs`, `Suites` and `Components` (several values each, a field continued on
/// lines that start with a space), `Enabled: no` turning one off, `#` lines comments.
fn deb822_sources(text: &str) -> Vec<Source> {
    let mut sources = Vec::new();
    for paragraph in text.split("\n\n").flat_map(|p| p.split("\n\r\n")) {
        let mut fields: Vec<(String, String)> = Vec::new();
        for line in paragraph.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            if line.starts_with([' ', '\t']) {
                if let Some((_, value)) = fields.last_mut() {
                    value.push(' ');
                    value.push_str(line.trim());
                }
                continue;
            }
            if let Some((key, value)) = line.split_once(':') {
                fields.push((key.trim().to_ascii_lowercase(), value.trim().to_owned()));
            }
        }
        let field = |key: &str| -> Vec<String> {
            fields
                .iter()
                .filter(|(k, _)| k == key)
                .flat_map(|(_, v)| v.split_whitespace().map(str::to_owned))
                .collect()
        };
        if field("enabled").first().is_some_and(|e| e == "no") {
            continue;
        }
        let (suites, components) = (field("suites"), field("components"));
        for kind in field("types") {
            for uri in field("uris") {
                sources.push(Source {
                    kind: kind.clone(),
                    uri,
                    suites: suites.clone(),
                    components: components.clone(),
                });
            }
        }
    }
    sources
}

#[cfg(test)]
mod tests {
    use super::*;

    /// This machine's kind of `debian.sources`: the main archive after a comment, then
    /// the security archive.
    const DEBIAN_SOURCES: &str = "Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
";

    #[test]
    fn deb822_main_archive_is_the_mirror() {
        let sources = deb822_sources(DEBIAN_SOURCES);
        assert_eq!(sources.len(), 2);
        assert_eq!(sources[0].suites, ["bookworm", "bookworm-updates"]);
        assert_eq!(
            debian_mirror(sources).as_deref(),
            Some("http://deb.debian.org/debian")
        );
    }

    #[test]
    fn deb822_security_archive_alone_is_no_mirror() {
        let security = DEBIAN_SOURCES.split("\n\n").nth(1).unwrap();
        assert_eq!(debian_mirror(deb822_sources(security)), None);
    }

    #[test]
    fn deb822_several_values_continuations_and_disabled_paragraphs() {
        let text = "Types: deb-src deb\nURIs: http://a.example/debian/\n  http://b.example/debian\n\
                    Suites: trixie\nComponents: contrib\n main\n\n\
                    Enabled: no\nTypes: deb\nURIs: http://off.example/debian\nSuites: sid\n\
                    Components: main\n";
        let sources = deb822_sources(text);
        assert_eq!(sources.len(), 4, "{sources:?}");
        assert_eq!(sources[0].kind, "deb-src");
        assert_eq!(sources[2].uri, "http://a.example/debian/");
        assert_eq!(sources[3].uri, "http://b.example/debian");
        assert_eq!(sources[3].components, ["contrib", "main"]);
        assert_eq!(
            debian_mirror(sources).as_deref(),
            Some("http://a.example/debian")
        );
    }

    #[test]
    fn deb822_other_repositories_are_not_debian() {
        let nodesource = "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\n\
                          Suites: nodistro\nComponents: main\nArchitectures: amd64\n";
        assert_eq!(debian_mirror(deb822_sources(nodesource)), None);
    }

    #[test]
    fn one_line_sources_with_options_and_comments() {
        let text = "# the main archive\n\
                    deb-src http://src.example/debian bookworm main\n\
                    deb [ arch=amd64 signed-by=/usr/share/keyrings/x.gpg ] http://deb.example/debian/ bookworm main contrib # here\n\
                    deb http://security.debian.org/debian-security bookworm-security main\n\
                    \n  \n";
        let sources = one_line_sources(text);
        assert_eq!(sources.len(), 3, "{sources:?}");
        assert_eq!(
            sources[1],
            Source {
                kind: "deb".into(),
                uri: "http://deb.example/debian/".into(),
                suites: vec!["bookworm".into()],
                components: vec!["main".into(), "contrib".into()],
            }
        );
        assert_eq!(
            debian_mirror(sources).as_deref(),
            Some("http://deb.example/debian")
        );
    }

    #[test]
    fn one_line_sources_without_a_debian_suite_are_no_mirror() {
        let text = "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n\
                    deb http://deb.example/debian bookworm-updates main\n\
                    deb http://deb.example/debian\n";
        assert_eq!(debian_mirror(one_line_sources(text)), None);
    }

    #[test]
    fn a_root_is_complete_only_with_the_stamp_of_what_is_asked() {
        let dir = std::env::temp_dir().join(format!("xtask-rootfs-test-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        assert!(!is_complete(&dir), "no stamp");
        fs::write(
            dir.join(STAMP),
            "suite sid\nvariant essential\npackages python3.14\n",
        )
        .unwrap();
        assert!(!is_complete(&dir), "a stamp of other packages");
        fs::write(
            dir.join(STAMP),
            format!("{}mirror x\npython3.14 1\n", request()),
        )
        .unwrap();
        assert!(is_complete(&dir));
        fs::remove_dir_all(&dir).unwrap();
    }
}
