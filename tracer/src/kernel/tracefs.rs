//! tracefs: finding (and if need be mounting) it, and reading tracepoint `format` files.

use std::{
    ffi::CString,
    fs,
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// Where tracefs is mounted on current kernels, and the older debugfs location.
const MOUNT_POINTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// The tracefs root, mounting tracefs at `/sys/kernel/tracing` when it is not mounted yet.
pub fn root() -> Result<PathBuf> {
    if let Some(found) = find() {
        return Ok(found);
    }
    mount()?;
    find().ok_or_else(|| {
        Error::Tracefs("tracefs was mounted at /sys/kernel/tracing but has no events".into())
    })
}

/// The tracefs root if it is mounted.
pub fn find() -> Option<PathBuf> {
    MOUNT_POINTS
        .iter()
        .map(Path::new)
        .find(|p| p.join("events").is_dir())
        .map(Path::to_path_buf)
}

fn mount() -> Result<()> {
    let target = MOUNT_POINTS[0];
    if !Path::new(target).is_dir() {
        return Err(Error::Tracefs(format!(
            "{target} does not exist; is this kernel built with CONFIG_FTRACE?"
        )));
    }
    let fs = CString::new("tracefs").expect("no NUL");
    let dir = CString::new(target).expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe { libc::mount(fs.as_ptr(), dir.as_ptr(), fs.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(Error::Tracefs(format!(
            "it is not mounted and mounting it failed ({err}); \
             mount it with `mount -t tracefs tracefs {target}`"
        )));
    }
    Ok(())
}

/// One field of a tracepoint record, from its `format` file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    /// The C declaration, e.g. `char prev_comm[16]`.
    pub declaration: String,
    pub offset: u32,
    pub size: u32,
}

/// A tracepoint's record layout and print format.
#[derive(Clone, Debug, Default)]
pub struct Format {
    pub event: String,
    pub fields: Vec<Field>,
    pub print_fmt: String,
}

impl Format {
    /// Reads `events/CATEGORY/NAME/format` under the tracefs root.
    pub fn read(root: &Path, category: &str, name: &str) -> Result<Self> {
        let path = root.join("events").join(category).join(name).join("format");
        let text = fs::read_to_string(&path).map_err(|e| {
            Error::Tracefs(format!(
                "cannot read {} ({e}); this kernel may lack the {category}/{name} tracepoint",
                path.display()
            ))
        })?;
        Ok(Self::parse(&format!("{category}/{name}"), &text))
    }

    /// Parses the text of a `format` file.
    pub fn parse(event: &str, text: &str) -> Self {
        let mut format = Self {
            event: event.to_owned(),
            ..Self::default()
        };
        for line in text.lines() {
            let line = line.trim();
            if let Some(rest) = line.strip_prefix("print fmt:") {
                format.print_fmt = rest.trim().to_owned();
            } else if line.starts_with("field:")
                && let Some(field) = parse_field(line)
            {
                format.fields.push(field);
            }
        }
        format
    }

    /// The field called `name`, checking that it is `size` bytes wide
    /// (`None` for `size` accepts any width).
    pub fn field(&self, name: &str, size: Option<u32>) -> Result<&Field> {
        let field = self.fields.iter().find(|f| f.name == name).ok_or_else(|| {
            Error::UnsupportedKernel(format!("tracepoint {} has no field `{name}`", self.event))
        })?;
        if let Some(size) = size
            && field.size != size
        {
            return Err(Error::UnsupportedKernel(format!(
                "tracepoint {} field `{}` is {} bytes, expected {size}",
                self.event, field.declaration, field.size
            )));
        }
        Ok(field)
    }

    /// Offset of the field called `name`, checking its width.
    pub fn offset(&self, name: &str, size: u32) -> Result<u32> {
        self.field(name, Some(size)).map(|f| f.offset)
    }
}

/// Parses `field:TYPE NAME;\toffset:N;\tsize:N;\tsigned:N;`.
fn parse_field(line: &str) -> Option<Field> {
    let mut declaration = None;
    let mut offset = None;
    let mut size = None;
    for part in line.split(';') {
        let part = part.trim();
        if let Some(d) = part.strip_prefix("field:") {
            declaration = Some(d.trim().to_owned());
        } else if let Some(o) = part.strip_prefix("offset:") {
            offset = o.trim().parse().ok();
        } else if let Some(s) = part.strip_prefix("size:") {
            size = s.trim().parse().ok();
        }
    }
    let declaration = declaration?;
    // The name is the last token, less any array suffix: `char comm[16]`, `u32 * uaddr`,
    // `__data_loc char[] name`.
    let last = declaration
        .rsplit(|c: char| c.is_whitespace() || c == '*')
        .next()?;
    let name = last.split('[').next()?.to_owned();
    if name.is_empty() {
        return None;
    }
    Some(Field {
        name,
        declaration,
        offset: offset?,
        size: size?,
    })
}

/// The largest state flag `{ 0x.., "X" }` that `sched_switch`'s print format lists for
/// `prev_state`. The kernel's `TASK_REPORT_MAX` (its preemption marker) is the next bit up.
pub fn largest_state_flag(print_fmt: &str) -> Option<u64> {
    let mut largest = None;
    let mut rest = print_fmt;
    while let Some(start) = rest.find("{ 0x") {
        let after = &rest[start + 4..];
        let digits: String = after.chars().take_while(char::is_ascii_hexdigit).collect();
        if let Ok(value) = u64::from_str_radix(&digits, 16)
            && after[digits.len()..].trim_start().starts_with(", \"")
        {
            largest = largest.max(Some(value));
        }
        rest = after;
    }
    largest
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCHED_SWITCH: &str = "name: sched_switch
ID: 372
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:char prev_comm[16];\toffset:8;\tsize:16;\tsigned:0;
\tfield:pid_t prev_pid;\toffset:24;\tsize:4;\tsigned:1;
\tfield:long prev_state;\toffset:32;\tsize:8;\tsigned:1;
\tfield:pid_t next_pid;\toffset:56;\tsize:4;\tsigned:1;

print fmt: \"prev_comm=%s prev_pid=%d\", (REC->prev_state & ((((0x00000000 | 0x00000001) + 1) << 1) - 1)) ? __print_flags(REC->prev_state & 0xff, \"|\", { 0x00000001, \"S\" }, { 0x00000002, \"D\" }, { 0x00000040, \"P\" }, { 0x00000080, \"I\" }) : \"R\"
";

    #[test]
    fn parses_fields_and_print_format() {
        let format = Format::parse("sched/sched_switch", SCHED_SWITCH);
        assert_eq!(format.offset("prev_pid", 4).unwrap(), 24);
        assert_eq!(format.offset("prev_state", 8).unwrap(), 32);
        assert_eq!(format.offset("next_pid", 4).unwrap(), 56);
        let comm = format.field("prev_comm", Some(16)).unwrap();
        assert_eq!(
            (comm.offset, comm.declaration.as_str()),
            (8, "char prev_comm[16]")
        );
        assert_eq!(largest_state_flag(&format.print_fmt), Some(0x80));
    }

    #[test]
    fn data_loc_and_pointer_fields_are_named() {
        let format = Format::parse(
            "x/y",
            "\tfield:__data_loc char[] parent_comm;\toffset:8;\tsize:4;\tsigned:0;\n\
             \tfield:u32 * uaddr;\toffset:16;\tsize:8;\tsigned:0;\n",
        );
        assert_eq!(format.offset("parent_comm", 4).unwrap(), 8);
        assert_eq!(format.offset("uaddr", 8).unwrap(), 16);
    }

    #[test]
    fn missing_or_resized_fields_are_errors() {
        let format = Format::parse("sched/sched_switch", SCHED_SWITCH);
        let missing = format.offset("prev_cpu", 4).unwrap_err().to_string();
        assert!(missing.contains("no field `prev_cpu`"), "{missing}");
        let resized = format.offset("prev_state", 4).unwrap_err().to_string();
        assert!(resized.contains("is 8 bytes, expected 4"), "{resized}");
    }

    #[test]
    fn reads_this_kernels_sched_switch_when_mounted() {
        let Some(root) = find() else {
            assert!(
                std::env::var_os("CI").is_none(),
                "tracefs must be mounted under CI"
            );
            eprintln!("skipped: tracefs is not mounted here (run as root, or `tracer check`)");
            return;
        };
        let format = Format::read(&root, "sched", "sched_switch").unwrap();
        assert!(format.offset("next_pid", 4).is_ok());
        assert!(largest_state_flag(&format.print_fmt).is_some());
    }
}
