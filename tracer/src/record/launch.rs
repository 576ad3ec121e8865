//! `record -- CMD`: the command is forked first and held before `exec` until every probe is
//! attached, so its first instruction is already traced.

use std::{
    env,
    ffi::{CString, OsStr, OsString},
    io,
    os::{
        fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
        unix::ffi::{OsStrExt as _, OsStringExt as _},
    },
    path::{Path, PathBuf},
};

use crate::error::{Error, Result};

/// A forked child waiting at the gate, not yet running the command.
pub struct Held {
    pub pid: u32,
    command: String,
    gate: OwnedFd,
    exec_error: OwnedFd,
}

fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Finds `program` the way a shell does: as a path if it has a `/`, else in `$PATH`.
pub fn resolve(program: &OsStr) -> io::Result<PathBuf> {
    let is_executable = |p: &Path| {
        let Ok(c) = CString::new(p.as_os_str().as_bytes()) else {
            return false;
        };
        // SAFETY: a valid C string.
        p.is_file() && unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0
    };
    if program.as_bytes().contains(&b'/') {
        return Ok(PathBuf::from(program));
    }
    let path = env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "not found in PATH"))
}

fn c_string(s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "contains a NUL byte"))
}

/// Forks a child that will run `argv` once [`Held::release`] is called. Must be called while
/// this process has a single thread: the child only waits, then `execve`s.
pub fn hold(argv: &[OsString]) -> Result<Held> {
    let command = argv
        .iter()
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ");
    let spawn_error = |source| Error::Spawn {
        command: command.clone(),
        source,
    };
    let program = argv.first().ok_or_else(|| {
        spawn_error(io::Error::new(
            io::ErrorKind::InvalidInput,
            "no command given",
        ))
    })?;
    let path = c_string(
        resolve(program)
            .map_err(spawn_error)?
            .into_os_string()
            .into_vec(),
    )
    .map_err(spawn_error)?;
    let args = argv
        .iter()
        .map(|a| c_string(a.as_bytes()))
        .collect::<io::Result<Vec<_>>>()
        .map_err(spawn_error)?;
    let envs = env::vars_os()
        .map(|(k, v)| {
            let mut kv = k.into_vec();
            kv.push(b'=');
            kv.extend(v.into_vec());
            c_string(kv)
        })
        .collect::<io::Result<Vec<_>>>()
        .map_err(spawn_error)?;
    let mut arg_ptrs: Vec<*const libc::c_char> = args.iter().map(|a| a.as_ptr()).collect();
    arg_ptrs.push(std::ptr::null());
    let mut env_ptrs: Vec<*const libc::c_char> = envs.iter().map(|e| e.as_ptr()).collect();
    env_ptrs.push(std::ptr::null());

    let (gate_read, gate_write) = pipe().map_err(spawn_error)?;
    let (error_read, error_write) = pipe().map_err(spawn_error)?;
    // SAFETY: the caller guarantees a single-threaded process; the child below only makes
    // async-signal-safe calls on memory prepared before the fork.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(spawn_error(io::Error::last_os_error()));
    }
    if pid == 0 {
        // SAFETY: child side; every call is async-signal-safe.
        unsafe {
            // Only tracer may hold the gate's write end, so that its exit reads as EOF here.
            libc::close(gate_write.as_raw_fd());
            let mut byte = 0u8;
            let n = libc::read(gate_read.as_raw_fd(), (&raw mut byte).cast(), 1);
            if n != 1 {
                // tracer went away before releasing us: do not run untraced.
                libc::_exit(125);
            }
            libc::execve(path.as_ptr(), arg_ptrs.as_ptr(), env_ptrs.as_ptr());
            let errno = *libc::__errno_location();
            libc::write(
                error_write.as_raw_fd(),
                (&raw const errno).cast(),
                size_of::<i32>(),
            );
            libc::_exit(127);
        }
    }
    drop(gate_read);
    drop(error_write);
    Ok(Held {
        pid: pid as u32,
        command,
        gate: gate_write,
        exec_error: error_read,
    })
}

impl Held {
    /// Lets the child `exec` the command, and reports whether that worked.
    pub fn release(self) -> Result<()> {
        let go = 1u8;
        // SAFETY: writing one byte from a valid buffer to our pipe.
        unsafe { libc::write(self.gate.as_raw_fd(), (&raw const go).cast(), 1) };
        drop(self.gate);
        let mut errno = 0i32;
        // SAFETY: reading at most 4 bytes into a 4-byte buffer; EOF means exec succeeded.
        let n = unsafe {
            libc::read(
                self.exec_error.as_raw_fd(),
                (&raw mut errno).cast(),
                size_of::<i32>(),
            )
        };
        if n == size_of::<i32>() as isize {
            reap(self.pid);
            return Err(Error::Spawn {
                command: self.command,
                source: io::Error::from_raw_os_error(errno),
            });
        }
        Ok(())
    }
}

/// Collects the exit status of child `pid` (blocking), so that it leaves no zombie.
pub fn reap(pid: u32) -> Option<i32> {
    let mut status = 0;
    // SAFETY: valid out-pointer.
    let rc = unsafe { libc::waitpid(pid as i32, &mut status, 0) };
    (rc == pid as i32).then_some(status)
}

/// A `waitpid` status in words.
pub fn describe_status(status: i32) -> String {
    if libc::WIFEXITED(status) {
        format!("exited with status {}", libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        format!("was killed by signal {}", libc::WTERMSIG(status))
    } else {
        format!("ended with wait status {status:#x}")
    }
}
