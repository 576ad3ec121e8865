//! The one error type of tracer's commands: each variant says what went wrong and what to do.

use std::{io, path::PathBuf};

/// What can stop a tracer command.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("no process with pid {0} (is it still running?)")]
    NoSuchProcess(u32),

    #[error(
        "tracer needs root privileges to {action}: it is running as uid {uid} without {missing}; \
         run it with sudo, or as root"
    )]
    NotPrivileged {
        action: &'static str,
        uid: u32,
        missing: String,
    },

    #[error("tracefs is not available: {0}")]
    Tracefs(String),

    #[error("unsupported kernel: {0}")]
    UnsupportedKernel(String),

    #[error("loading the eBPF programs failed: {0}")]
    Load(String),

    #[error("attaching {program} to tracepoint {category}/{name} failed: {message}")]
    Attach {
        program: String,
        category: String,
        name: String,
        message: String,
    },

    #[error("cannot start `{command}`: {source}")]
    Spawn {
        command: String,
        #[source]
        source: io::Error,
    },

    #[error("cannot write {}: {source}", path.display())]
    Output {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "cannot tell the output format of {}: use a .json, .jsonl or .pftrace file name",
        .0.display()
    )]
    OutputFormat(PathBuf),

    #[error("two outputs of the same format: {}; give one file per format", .0.display())]
    DuplicateOutput(PathBuf),

    #[error("invalid configuration: {0}")]
    Config(String),

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

impl Error {
    /// An I/O error with what tracer was doing when it happened.
    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io {
            context: context.into(),
            source,
        }
    }
}

/// Result with tracer's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
