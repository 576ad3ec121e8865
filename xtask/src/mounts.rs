//! The guard at the end of `cargo xtask test`: no mount may outlive the tests. A mount left
//! under the workspace (a `/proc` bound into a root file system, say) keeps the checkout
//! from being removed, so it is unmounted and reported as a failure.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};

/// Unmounts every mount point below `workspace` and fails naming them; does nothing when
/// there is none.
pub fn check(workspace: &Path) -> Result<()> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    let mut left = mount_points_below(workspace, &mountinfo);
    if left.is_empty() {
        return Ok(());
    }
    // The deepest first, so that none is under another still mounted.
    left.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    let mut problems = Vec::new();
    for point in &left {
        if let Err(e) = unmount(point) {
            problems.push(format!("{} (could not unmount it: {e})", point.display()));
        } else {
            problems.push(format!("{} (unmounted)", point.display()));
        }
    }
    bail!(
        "mounts were left under the workspace: {}",
        problems.join(", ")
    )
}

/// Detaches the mount at `point`.
fn unmount(point: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let path = std::ffi::CString::new(point.as_os_str().as_bytes())?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// The mount points of a `/proc/PID/mountinfo` text strictly below `dir`.
fn mount_points_below(dir: &Path, mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|field| PathBuf::from(unescape(field)))
        .filter(|point| point != dir && point.starts_with(dir))
        .collect()
}

/// A mountinfo field with its octal escapes (`\040` for a space, `\134` for `\`) undone.
fn unescape(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|b| (b'0'..=b'7').contains(b)));
        match (bytes[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTINFO: &str = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
25 22 0:5 / /proc rw,nosuid shared:12 - proc proc rw
90 22 0:5 / /work/wt1/target/sid-root/proc rw,nosuid shared:12 - proc proc rw
91 22 254:0 /x /work/wt1\\040copy/target rw shared:1 - ext4 /dev/vda rw
92 22 254:0 /y /work/wt10/target rw shared:1 - ext4 /dev/vda rw
93 22 254:0 /z /work/wt1 rw shared:1 - ext4 /dev/vda rw
";

    #[test]
    fn mounts_strictly_below_the_workspace_are_found() {
        assert_eq!(
            mount_points_below(Path::new("/work/wt1"), MOUNTINFO),
            [PathBuf::from("/work/wt1/target/sid-root/proc")]
        );
    }

    #[test]
    fn escaped_mount_points_are_read_as_they_are() {
        assert_eq!(
            mount_points_below(Path::new("/work/wt1 copy"), MOUNTINFO),
            [PathBuf::from("/work/wt1 copy/target")]
        );
        assert_eq!(unescape(r"a\134b\040c\04"), r"a\b c\04");
    }

    #[test]
    fn no_mount_below_is_no_failure() {
        assert!(mount_points_below(Path::new("/srv"), MOUNTINFO).is_empty());
    }
}
