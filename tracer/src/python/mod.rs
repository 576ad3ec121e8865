//! CPython threads seen from outside: the `threading` name of each kernel thread of a
//! Python process, and where its GIL lives, read from the process's memory while it runs.
//!
//! [`Interpreter::attach`] finds `_PyRuntime` in the executable or `libpython` the process
//! has mapped, and the version's [`layout`]. [`Interpreter::snapshot`] then walks the
//! interpreters and their thread states (every thread that runs Python code) and the
//! `threading._active` dict (every `threading.Thread` started, by its `_native_id`).
//! Memory of another process is untrusted input: reads are bounded, lists and dicts are
//! walked with caps and cycle checks, and any failure is an error, never a guess.
//!
//! [`watch::Watcher`] runs the reading on a thread of its own for a capture, and
//! [`gil::FutexTimes`] keeps futex wait time by address until the GIL's address is known.

pub mod elf;
pub mod gil;
pub mod layout;
pub mod maps;
pub mod memory;
pub mod objects;
pub mod watch;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    io,
    ops::Range,
    path::{Path, PathBuf},
};

use self::{
    elf::Elf,
    layout::{DEBUG_OFFSETS_LEN, Layout, Version},
    memory::{Memory, ProcessMemory, at},
    objects::{Reader, TypeInfo},
};

/// Why reading a Python process failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {len} bytes at {addr:#x}: {source}")]
    Read {
        addr: u64,
        len: usize,
        #[source]
        source: io::Error,
    },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("ELF: {0}")]
    Elf(String),
    #[error("unexpected data: {0}")]
    Invalid(String),
    #[error("unsupported: {0}")]
    Unsupported(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The most interpreters, and thread states per interpreter, walked.
const MAX_INTERPRETERS: usize = 256;
const MAX_THREAD_STATES: usize = 1 << 16;

/// What one reading of an interpreter found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `threading.Thread.name` by kernel thread id.
    pub names: HashMap<u32, String>,
    /// Kernel threads that have a Python thread state or a `Thread` object.
    pub python_tids: BTreeSet<u32>,
    /// The main interpreter's GIL, once the interpreter is initialized.
    pub gil: Option<Range<u64>>,
    /// Threads that could not be read (each is left out of `names`).
    pub failures: u64,
}

/// A CPython interpreter in another process.
pub struct Interpreter {
    pid: u32,
    memory: ProcessMemory,
    layout: Layout,
    /// Address of `_PyRuntime`.
    runtime: u64,
    types: HashMap<u64, TypeInfo>,
    /// `threading._active` by interpreter, once found.
    active: HashMap<u64, u64>,
    gil: Option<Range<u64>>,
    /// In a PID namespace, the host id of each thread id seen in one, kept after the
    /// thread is gone: a thread that ended is still named by its `Thread` object.
    namespace_ids: HashMap<u32, u32>,
}

/// The most thread ids of a PID namespace remembered.
const MAX_NAMESPACE_IDS: usize = 1 << 16;

/// A file the process has mapped that may hold `_PyRuntime`.
struct Candidate {
    path: PathBuf,
    /// Where to open it from this process (through `/proc/PID/...`).
    open: Vec<PathBuf>,
    mappings: Vec<maps::Mapping>,
}

fn proc_path(pid: u32, rest: impl AsRef<Path>) -> PathBuf {
    Path::new("/proc").join(pid.to_string()).join(rest)
}

/// The files worth looking into, `libpython` first, then the executable.
fn candidates(pid: u32, exe: &Path, mappings: &[maps::Mapping]) -> Vec<Candidate> {
    let mut found: Vec<Candidate> = Vec::new();
    for m in mappings {
        let Some(path) = &m.path else { continue };
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let is_lib = name.starts_with("libpython");
        let is_exe = exe == path.as_path();
        if !is_lib && !is_exe {
            continue;
        }
        if let Some(c) = found.iter_mut().find(|c| c.path == *path) {
            c.mappings.push(m.clone());
            continue;
        }
        let mut open = vec![proc_path(
            pid,
            format!("map_files/{:x}-{:x}", m.start, m.end),
        )];
        if is_exe {
            open.push(proc_path(pid, "exe"));
        }
        open.push(proc_path(pid, "root").join(path.strip_prefix("/").unwrap_or(path)));
        found.push(Candidate {
            path: path.clone(),
            open,
            mappings: vec![m.clone()],
        });
    }
    found.sort_by_key(|c| {
        !c.path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with("libpython"))
    });
    found
}

#[allow(
    dead_code,
    reason = "the API for other users of a process's interpreter (the daemon); tests use it"
)]
impl Interpreter {
    /// Finds the CPython interpreter of process `pid`: `Ok(None)` when the process has no
    /// `_PyRuntime` (not Python, or not loaded yet); an error when it cannot be read or its
    /// version is not supported.
    pub fn attach(pid: u32) -> Result<Option<Self>> {
        Self::attach_excluding(pid, &mut HashSet::new())
    }

    /// [`Interpreter::attach`], skipping the mapped files (path and inode) of `not_python`
    /// and adding to it those found to hold no interpreter: looking again later (Python may
    /// not be loaded yet) then costs only a read of the process's maps.
    pub fn attach_excluding(
        pid: u32,
        not_python: &mut HashSet<(PathBuf, u64)>,
    ) -> Result<Option<Self>> {
        let text = std::fs::read_to_string(proc_path(pid, "maps")).map_err(|e| Error::Io {
            context: format!("reading /proc/{pid}/maps"),
            source: e,
        })?;
        let mappings = maps::parse(&text);
        if mappings.is_empty() {
            // What the kernel shows a reader not allowed to see the process's memory (and
            // processes that have none left).
            return Err(Error::Io {
                context: format!("reading /proc/{pid}/maps"),
                source: io::Error::new(io::ErrorKind::PermissionDenied, "no mappings visible"),
            });
        }
        let exe = std::fs::read_link(proc_path(pid, "exe")).map_err(|e| Error::Io {
            context: format!("reading /proc/{pid}/exe"),
            source: e,
        })?;
        let memory = ProcessMemory::new(pid);
        for candidate in candidates(pid, &exe, &mappings) {
            let identity = (candidate.path.clone(), candidate.mappings[0].inode);
            if not_python.contains(&identity) {
                continue;
            }
            let Some(elf) = candidate.open.iter().find_map(|p| Elf::open(p).ok()) else {
                continue;
            };
            let Some(symbol) = elf.symbol("_PyRuntime")? else {
                if not_python.len() < 1024 {
                    not_python.insert(identity);
                }
                continue;
            };
            let first = candidate
                .mappings
                .iter()
                .min_by_key(|m| m.offset)
                .expect("a candidate has a mapping");
            let bias =
                elf::load_bias(elf.segments(), first.start, first.offset).ok_or_else(|| {
                    Error::Elf(format!("{} is mapped oddly", candidate.path.display()))
                })?;
            let runtime = at(symbol.value, bias)?;
            let layout = Self::layout(&memory, &elf, bias, runtime, &candidate.path)?;
            let mut interpreter = Self {
                pid,
                memory,
                layout,
                runtime,
                types: HashMap::new(),
                active: HashMap::new(),
                gil: None,
                namespace_ids: HashMap::new(),
            };
            interpreter.gil = interpreter.read_gil().ok().flatten();
            return Ok(Some(interpreter));
        }
        Ok(None)
    }

    /// The version's layout: from `_Py_DebugOffsets` from 3.13, else from `Py_Version` (3.11
    /// on) or the file's name.
    fn layout(
        memory: &ProcessMemory,
        elf: &Elf<std::fs::File>,
        bias: u64,
        runtime: u64,
        path: &Path,
    ) -> Result<Layout> {
        let head = memory.bytes(runtime, 8)?;
        if head == layout::DEBUG_COOKIE {
            return Layout::from_debug_offsets(&memory.bytes(runtime, DEBUG_OFFSETS_LEN)?);
        }
        let version = match elf.symbol("Py_Version")? {
            Some(symbol) => Version::from_hex(memory.u64(at(symbol.value, bias)?)? & 0xffff_ffff),
            None => path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(Version::from_file_name)
                .ok_or_else(|| {
                    Error::Unsupported(format!("no version known for {}", path.display()))
                })?,
        };
        if version.at_least(3, 13) {
            return Err(Error::Invalid(format!(
                "Python {version} without debug offsets"
            )));
        }
        Layout::builtin(version)
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn version(&self) -> Version {
        self.layout.version
    }

    /// Whether the interpreter is a free-threaded build (`Py_GIL_DISABLED`), which has no
    /// GIL.
    pub fn free_threaded(&self) -> bool {
        self.layout.free_threaded
    }

    /// The main interpreter's GIL state (`struct _gil_runtime_state`): futex waits on an
    /// address in it are waits for the GIL. Known once the interpreter is initialized.
    pub fn gil_range(&self) -> Option<Range<u64>> {
        self.gil.clone()
    }

    /// Whether a futex word at `uaddr` belongs to the GIL.
    pub fn is_gil(&self, uaddr: u64) -> bool {
        self.gil.as_ref().is_some_and(|r| r.contains(&uaddr))
    }

    /// `threading` names by kernel thread id, as they are now.
    pub fn thread_names(&mut self) -> Result<HashMap<u32, String>> {
        Ok(self.snapshot()?.names)
    }

    fn read_gil(&self) -> Result<Option<Range<u64>>> {
        gil_state(&self.memory, &self.layout, self.runtime)
    }

    /// Reads every interpreter's threads now.
    pub fn snapshot(&mut self) -> Result<Snapshot> {
        let mut snapshot = Snapshot::default();
        if self.gil.is_none() {
            self.gil = self.read_gil()?;
        }
        snapshot.gil = self.gil.clone();
        let layout = self.layout;
        let memory = self.memory;
        let head = memory.ptr(at(self.runtime, layout.runtime_interpreters_head)?)?;
        let interpreters = walk(&memory, head, layout.interp_next, MAX_INTERPRETERS)?;
        let tasks = task_ids(self.pid);
        if self.namespace_ids.len() + tasks.from_namespace.len() > MAX_NAMESPACE_IDS {
            self.namespace_ids.clear();
        }
        self.namespace_ids.extend(&tasks.from_namespace);
        let mut reader = Reader::new(&memory, &layout, &mut self.types);
        for interp in interpreters {
            let idents = thread_states(&memory, &layout, interp, &tasks, &mut snapshot)?;
            let Some(active) = active_dict(&mut reader, &mut self.active, interp)? else {
                continue;
            };
            for (key, thread) in reader.dict_items(active)? {
                match thread_name(&mut reader, key, thread, &idents, &tasks) {
                    Ok(Some((tid, name))) => {
                        snapshot.python_tids.insert(tid);
                        snapshot.names.insert(tid, name);
                    }
                    Ok(None) => {}
                    Err(_) => snapshot.failures += 1,
                }
            }
        }
        Ok(snapshot)
    }
}

impl Interpreter {
    /// The names of threads of `exited` (that ended since they were last read) as their
    /// `threading.Thread` objects have them now: the name a thread had when it ended, also
    /// when it was renamed after the last reading. A `Thread` stays in `threading._dangling`
    /// (a `WeakSet` of every `Thread` made) as long as the program keeps a reference to it,
    /// as a program that joins its threads does.
    pub fn final_names(&mut self, exited: &HashSet<u32>) -> Result<HashMap<u32, String>> {
        let mut names = HashMap::new();
        if exited.is_empty() {
            return Ok(names);
        }
        let layout = self.layout;
        let memory = self.memory;
        let head = memory.ptr(at(self.runtime, layout.runtime_interpreters_head)?)?;
        let interpreters = walk(&memory, head, layout.interp_next, MAX_INTERPRETERS)?;
        let mut tasks = task_ids(self.pid);
        if !tasks.from_namespace.is_empty() {
            for (&own, &host) in &self.namespace_ids {
                tasks.from_namespace.entry(own).or_insert(host);
            }
        }
        let mut reader = Reader::new(&memory, &layout, &mut self.types);
        for interp in interpreters {
            let Some(dangling) = threading_global(&mut reader, interp, "_dangling")? else {
                continue;
            };
            let [Some(data)] = reader.attributes(dangling, ["data"])? else {
                continue;
            };
            for item in reader.set_items(data)? {
                let Ok(Some(thread)) = reader.weakref_target(item) else {
                    continue;
                };
                if let Ok(Some((tid, name))) =
                    thread_name(&mut reader, 0, thread, &HashMap::new(), &tasks)
                    && exited.contains(&tid)
                {
                    names.insert(tid, name);
                }
            }
        }
        Ok(names)
    }
}

/// The main interpreter's GIL state (`struct _gil_runtime_state`) of the runtime at
/// `runtime`, once the interpreter is initialized; never for a free-threaded build, which
/// has no GIL to wait for (its layout gives no GIL offset).
fn gil_state<M: Memory>(memory: &M, l: &Layout, runtime: u64) -> Result<Option<Range<u64>>> {
    if l.free_threaded {
        return Ok(None);
    }
    let start = match (l.runtime_gil, l.interp_gil_pointer) {
        (Some(offset), _) => at(runtime, offset)?,
        (None, Some(pointer)) => {
            let main = memory.ptr(at(runtime, l.runtime_interpreters_head + 8)?)?;
            if main == 0 {
                return Ok(None);
            }
            let gil = memory.ptr(at(main, pointer)?)?;
            if gil == 0 {
                return Ok(None);
            }
            gil
        }
        (None, None) => return Ok(None),
    };
    Ok(Some(start..at(start, layout::GIL_STATE_SIZE)?))
}

/// The global `name` of the `threading` module of `interp`, if it is imported there.
fn threading_global<M: Memory>(
    reader: &mut Reader<'_, M>,
    interp: u64,
    name: &str,
) -> Result<Option<u64>> {
    let modules = reader.mem.ptr(at(interp, reader.layout.interp_modules)?)?;
    if modules == 0 {
        return Ok(None);
    }
    let Some(threading) = reader.dict_get(modules, "threading")? else {
        return Ok(None);
    };
    let globals = reader
        .mem
        .ptr(at(threading, reader.layout.first_field())?)?;
    reader.dict_get(globals, name)
}

/// Notes the kernel thread of each thread state of `interp`; returns them by
/// `threading.get_ident()`.
fn thread_states<M: Memory>(
    memory: &M,
    l: &Layout,
    interp: u64,
    tasks: &Tasks,
    snapshot: &mut Snapshot,
) -> Result<HashMap<u64, u32>> {
    let mut tstate = memory.ptr(at(interp, l.interp_threads_head)?)?;
    // The fields read of each thread state, in one read.
    let span = l
        .tstate_next
        .max(l.tstate_thread_id)
        .max(l.tstate_native_thread_id.unwrap_or(0))
        + 8;
    let field = |bytes: &[u8], offset: u64| {
        let at = offset as usize;
        u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"))
    };
    let mut idents = HashMap::new();
    let mut seen = HashSet::new();
    while tstate != 0 {
        if !seen.insert(tstate) || seen.len() > MAX_THREAD_STATES {
            return Err(Error::Invalid(format!(
                "thread states loop or exceed {MAX_THREAD_STATES} at {tstate:#x}"
            )));
        }
        let bytes = memory.bytes(tstate, span as usize)?;
        let ident = field(&bytes, l.tstate_thread_id);
        let tid = match l.tstate_native_thread_id {
            Some(offset) => u32::try_from(field(&bytes, offset))
                .ok()
                .and_then(|id| tasks.host_id(id)),
            None => pthread_tid(memory, ident, tasks),
        };
        if let Some(tid) = tid.filter(|&t| t > 0) {
            snapshot.python_tids.insert(tid);
            idents.insert(ident, tid);
        }
        tstate = field(&bytes, l.tstate_next);
    }
    Ok(idents)
}

/// `threading._active` of `interp`, if `threading` is imported there; `cache` keeps it by
/// interpreter once found.
fn active_dict<M: Memory>(
    reader: &mut Reader<'_, M>,
    cache: &mut HashMap<u64, u64>,
    interp: u64,
) -> Result<Option<u64>> {
    if let Some(&active) = cache.get(&interp) {
        if reader.is_dict(active).unwrap_or(false) {
            return Ok(Some(active));
        }
        cache.remove(&interp);
    }
    let Some(active) = threading_global(reader, interp, "_active")? else {
        return Ok(None);
    };
    if !reader.is_dict(active)? {
        return Err(Error::Invalid("threading._active is not a dict".into()));
    }
    cache.insert(interp, active);
    Ok(Some(active))
}

/// The kernel thread and name of one `threading._active` entry.
fn thread_name<M: Memory>(
    reader: &mut Reader<'_, M>,
    key: u64,
    thread: u64,
    idents: &HashMap<u64, u32>,
    tasks: &Tasks,
) -> Result<Option<(u32, String)>> {
    let [name, native_id] = reader.attributes(thread, ["_name", "_native_id"])?;
    let Some(name) = name else {
        return Ok(None);
    };
    let tid = match native_id
        .map(|id| reader.small_int(id))
        .transpose()?
        .flatten()
    {
        Some(id) => u32::try_from(id).ok().and_then(|id| tasks.host_id(id)),
        // No native id: the thread state of the same ident has it.
        None => reader
            .small_int(key)?
            .and_then(|ident| idents.get(&(ident as u64)).copied()),
    };
    let Some(tid) = tid.filter(|&t| t > 0) else {
        return Ok(None);
    };
    Ok(Some((tid, reader.string(name)?)))
}

/// The nodes of a linked list from `first`, following the pointer at `next`; an error on
/// a cycle or more than `max` nodes.
fn walk<M: Memory>(mem: &M, first: u64, next: u64, max: usize) -> Result<Vec<u64>> {
    let mut nodes = Vec::new();
    let mut seen = HashSet::new();
    let mut node = first;
    while node != 0 {
        if !seen.insert(node) {
            return Err(Error::Invalid(format!("cycle in a list at {node:#x}")));
        }
        if nodes.len() >= max {
            return Err(Error::Invalid(format!("list longer than {max}")));
        }
        nodes.push(node);
        node = mem.ptr(at(node, next)?)?;
    }
    Ok(nodes)
}

/// The threads of a process now, by the kernel's (the host's) ids, and for a process in a
/// PID namespace of its own (a container, `unshare --pid`) by the ids it knows them by,
/// which are what its memory holds.
#[derive(Debug, Default)]
pub struct Tasks {
    host: HashSet<u32>,
    /// The process's own id of each thread, to the host's; empty when they are the same.
    from_namespace: HashMap<u32, u32>,
}

impl Tasks {
    /// Threads whose own ids are their host ids.
    pub fn same_ids(host: HashSet<u32>) -> Self {
        Self {
            host,
            from_namespace: HashMap::new(),
        }
    }

    /// Threads `(host id, own id)` of a process in a PID namespace of its own.
    pub fn in_namespace(ids: impl IntoIterator<Item = (u32, u32)>) -> Self {
        let mut tasks = Self::default();
        for (host, own) in ids {
            tasks.host.insert(host);
            tasks.from_namespace.insert(own, host);
        }
        tasks
    }

    /// The host id of the thread the process knows as `id`. A thread no longer there keeps
    /// its id where the ids are the host's (its name is kept for its exit), and has none
    /// in a namespace, where the id cannot be translated.
    pub fn host_id(&self, id: u32) -> Option<u32> {
        if self.from_namespace.is_empty() {
            Some(id)
        } else {
            self.from_namespace.get(&id).copied()
        }
    }

    /// Whether the process has a thread it knows as `id` now.
    fn has(&self, id: u32) -> Option<u32> {
        self.host_id(id).filter(|host| self.host.contains(host))
    }
}

/// The threads of process `pid` now (none if it cannot be listed), with the ids of its own
/// PID namespace from each thread's `NSpid` (its last entry is the innermost namespace's).
fn task_ids(pid: u32) -> Tasks {
    let host: Vec<u32> = std::fs::read_dir(proc_path(pid, "task"))
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let own = |tid: u32| -> Option<u32> {
        let status =
            crate::kernel::procfs::read_text(proc_path(pid, format!("task/{tid}/status"))).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("NSpid:"))?
            .split_whitespace()
            .last()?
            .parse()
            .ok()
    };
    match own(pid) {
        Some(own_pid) if own_pid != pid => {
            Tasks::in_namespace(host.into_iter().filter_map(|tid| Some((tid, own(tid)?))))
        }
        _ => Tasks::same_ids(host.into_iter().collect()),
    }
}

/// The kernel thread of a glibc `pthread_t` (the address of its `struct pthread`, whose
/// `tid` field is at 0x2d0 on x86-64), accepted only if it is a thread of the process.
/// Up to 3.10 thread states keep only the `pthread_t`.
fn pthread_tid<M: Memory>(mem: &M, pthread: u64, tasks: &Tasks) -> Option<u32> {
    if !cfg!(target_arch = "x86_64") || pthread == 0 {
        return None;
    }
    let tid = mem.u32(pthread.checked_add(0x2d0)?).ok()?;
    tasks.has(tid)
}

#[cfg(test)]
mod tests;
