//! `/proc/PID/maps`: which files a process has mapped, and where.

use std::path::PathBuf;

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    /// File offset of `start`.
    pub offset: u64,
    pub inode: u64,
    /// The mapped file, if any (not for anonymous memory, the stack, `[vdso]`...).
    pub path: Option<PathBuf>,
}

/// Parses the text of a maps file; malformed lines are skipped.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Mapping> {
    let mut rest = line;
    let mut field = || {
        let trimmed = rest.trim_start();
        let end = trimmed.find(' ').unwrap_or(trimmed.len());
        let (f, r) = trimmed.split_at(end);
        rest = r;
        (!f.is_empty()).then_some(f)
    };
    let range = field()?;
    let _perms = field()?;
    let offset = u64::from_str_radix(field()?, 16).ok()?;
    let _dev = field()?;
    let inode = field()?.parse().ok()?;
    let (start, end) = range.split_once('-')?;
    let path = rest.trim_start();
    let path = (inode != 0 && path.starts_with('/'))
        .then(|| PathBuf::from(path.strip_suffix(" (deleted)").unwrap_or(path)));
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset,
        inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_files_anonymous_memory_and_odd_names() {
        let text = "\
00400000-00401000 r--p 00000000 08:01 1234 /usr/bin/python3.11
7f0000000000-7f0000021000 rw-p 00000000 00:00 0 
7f1000000000-7f1000200000 r-xp 00023000 08:01 99 /opt/my app/libpython3.12.so.1.0 (deleted)
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
garbage line
";
        let maps = parse(text);
        assert_eq!(maps.len(), 4);
        assert_eq!(
            maps[0].path.as_deref(),
            Some("/usr/bin/python3.11".as_ref())
        );
        assert_eq!(
            (maps[0].start, maps[0].end, maps[0].inode),
            (0x400000, 0x401000, 1234)
        );
        assert_eq!(maps[1].path, None);
        assert_eq!(
            maps[2].path.as_deref(),
            Some("/opt/my app/libpython3.12.so.1.0".as_ref())
        );
        assert_eq!(maps[2].offset, 0x23000);
        assert_eq!(maps[3].path, None);
    }
}
