"""Ground truth for the Python thread workloads (schema ``tracer.truth/v1``).

Every thread reads its own scheduler counters from ``/proc/thread-self`` as
the last thing it does; the main thread gathers the records, reads its own
counters after everything else and writes the truth file named by
``TRACER_TRUTH`` (nothing is written when it is unset). Non-daemon threads
end one at a time (``ExitTurn``), so that nothing contends with what a
thread still does after its read.

With ``TRACER_GATE=1`` the main thread prints ``ready <pid>`` and waits for a
line on stdin before it creates any thread (see ``gate``).

Works on Python 3.8 and later.
"""

import gc
import json
import os
import select
import sys
import threading
import time

# A cyclic garbage collection starts on whatever allocation crosses its
# threshold, in whichever thread makes it, and a full one takes milliseconds
# of CPU here. One that starts after a thread's counter read (building its
# record, or in its teardown) is CPU time the thread's truth does not have.
# The workloads make no reference cycles worth collecting.
gc.disable()

SCHEMA = "tracer.truth/v1"
TRUTH_ENV = "TRACER_TRUTH"
GATE_ENV = "TRACER_GATE"

OWN_DIR = "/proc/thread-self"


def task_dir(tid):
    return "/proc/self/task/%d" % tid


def _read_text(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(fd)
    # A kernel name is 15 bytes, which may end inside a character (3.15 names threads so):
    # bytes that are not UTF-8 become U+FFFD, as tracer shows them.
    return b"".join(chunks).decode(errors="replace")


def read_comm(directory=OWN_DIR):
    """Kernel name (``comm``) of the thread whose procfs directory is given."""
    comm = _read_text(directory + "/comm")
    return comm[:-1] if comm.endswith("\n") else comm


def _status_field(status, key):
    prefix = key + ":"
    for line in status.splitlines():
        if line.startswith(prefix):
            return int(line[len(prefix):])
    raise ValueError("status: missing " + key)


def read_counters(directory=OWN_DIR):
    """Scheduler counters of the thread whose procfs directory is given."""
    read_ns = None
    if directory == OWN_DIR:
        read_ns = time.monotonic_ns()
        # The kernel folds a running thread's cpu time into schedstat only at
        # ticks and context switches; reading the thread's cpu clock updates
        # it, so the value below is current rather than up to a tick old.
        time.thread_time_ns()
    status = _read_text(directory + "/status")
    on_cpu, waited, slices = _read_text(directory + "/schedstat").split()[:3]
    return {
        "voluntary_switches": _status_field(status, "voluntary_ctxt_switches"),
        "involuntary_switches": _status_field(status, "nonvoluntary_ctxt_switches"),
        "on_cpu_ns": int(on_cpu),
        "runqueue_wait_ns": int(waited),
        "timeslices": int(slices),
        "read_ns": read_ns,
    }


def spawn_renames(inherited_comm, comm_at_start):
    """Kernel rename a new thread got at start, if any.

    A new thread inherits the ``comm`` of the thread that created it; Python
    3.8 to 3.13 keep it, later versions name the kernel thread after
    ``Thread.name`` when it starts.
    """
    if inherited_comm is None or comm_at_start == inherited_comm:
        return []
    return [{"from": inherited_comm, "to": comm_at_start}]


def make_record(tid, name, comm, parent_tid, renames, role, lock_contender,
                daemon, counters, baseline=None):
    record = {
        "tid": tid,
        "name": name,
        "comm": comm,
        "parent_tid": parent_tid,
        "renames": renames,
        "role": role,
        "lock_contender": lock_contender,
        "daemon": daemon,
    }
    record.update(counters)
    record["baseline"] = baseline
    return record


def current_thread_record(role, parent_tid, renames, lock_contender=False):
    """Record of the calling thread; its counters are read last."""
    me = threading.current_thread()
    comm = read_comm()
    counters = read_counters()
    return make_record(threading.get_native_id(), me.name, comm, parent_tid,
                       renames, role, lock_contender, me.daemon, counters)


class ExitTurn:
    """Makes threads end one at a time.

    After a thread's last Python code (its counter read) CPython's thread
    teardown still needs the GIL (clearing and deleting the thread state,
    releasing the lock ``join()`` waits on). Threads that end together
    contend for it there, and the main thread waking up in ``join()`` wants
    it too, so the kernel counts switches the thread's own read missed.
    Instead, a thread that has done its work calls ``wait()``: it says it is
    done and blocks until the main thread gives it its turn, then reads its
    counters and ends. The main thread's ``end_in_turn()`` waits until every
    thread is done and parked, then lets them go one at a time; it is not
    woken before the thread it let go has exited. So from its counter read to
    its exit a thread contends with nobody. The waiting is counted: it
    happens before the read.
    """

    def __init__(self):
        self._done = threading.Event()
        self._go = threading.Event()
        self.thread = None

    def wait(self):
        """Called by the thread when its work is done."""
        self.thread = threading.current_thread()
        self._done.set()
        self._go.wait()

    def abandon(self):
        """Called by a thread that fails before ``wait()``: it ends at once
        (without a record), so the main thread does not wait for it forever."""
        self.thread = threading.current_thread()
        self._done.set()

    def wait_done(self):
        """Main thread: waits until the thread called ``wait()``."""
        self._done.wait()

    def let_go(self):
        """Main thread: gives the thread its turn."""
        self._go.set()


# How long the main thread gives threads that said they are done to block
# in ``ExitTurn.wait()`` (the step between saying so and blocking takes the
# GIL for a few microseconds) before it lets the first of them go.
PARK_SETTLE = 0.02
# How long the main thread waits for a thread it let go to end.
EXIT_TIMEOUT = 10.0
# How often it looks when it cannot wait on a thread pidfd.
EXIT_POLL = 0.001

# pidfd_open(2) for Python 3.8, which has no os.pidfd_open: its number on
# the architectures below (those with the common syscall table).
_PIDFD_OPEN = 434
_PIDFD_OPEN_MACHINES = ("x86_64", "aarch64", "i686", "armv7l", "riscv64",
                        "ppc64le", "s390x")
_PIDFD_THREAD = os.O_EXCL  # as the kernel defines it


def _open_thread_pidfd(tid):
    """A pidfd of thread ``tid`` that polls readable when the thread exits
    (``PIDFD_THREAD``, Linux 6.9 and later), or None."""
    try:
        if hasattr(os, "pidfd_open"):
            return os.pidfd_open(tid, _PIDFD_THREAD)
        if os.uname().machine not in _PIDFD_OPEN_MACHINES:
            return None
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.syscall(_PIDFD_OPEN, tid, _PIDFD_THREAD)
        return fd if fd >= 0 else None
    except (OSError, AttributeError):
        return None


def _wait_exited(tid, pidfd):
    """Waits until the thread ``tid`` of this process has exited.

    The waiting must not wake the main thread while the thread is still on
    its way out: waking up, the main thread would want the GIL the thread
    still holds and, when the other CPUs are busy, preempt the thread on its
    CPU. ``join()`` does exactly that (the lock it waits on is released in
    the thread's teardown, before the thread lets go of the GIL), so the main
    thread waits on a thread pidfd, which the kernel signals after the exit a
    tracer sees, and only joins afterwards. Without one it looks every
    ``EXIT_POLL`` whether ``/proc/self/task/TID`` is gone.
    """
    deadline = time.monotonic() + EXIT_TIMEOUT
    if pidfd is not None:
        try:
            poller = select.poll()
            poller.register(pidfd, select.POLLIN)
            poller.poll(EXIT_TIMEOUT * 1000)
        finally:
            os.close(pidfd)
    # The task is released right after the pidfd is signalled.
    path = task_dir(tid)
    while os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(EXIT_POLL)


def end_in_turn(turns):
    """Main thread: lets the threads of ``turns`` (``ExitTurn``) end one at a time.

    Waits until all of them are done, gives them ``PARK_SETTLE`` to block,
    then for each in order: gives it its turn, waits until it has exited
    (``_wait_exited``) and joins it.
    """
    turns = list(turns)
    for turn in turns:
        turn.wait_done()
    if turns:
        time.sleep(PARK_SETTLE)
    for turn in turns:
        thread = turn.thread
        pidfd = _open_thread_pidfd(thread.native_id)
        turn.let_go()
        _wait_exited(thread.native_id, pidfd)
        thread.join()


class TrackedThread(threading.Thread):
    """A thread that runs ``body(self, *args)`` and then records itself.

    ``start()`` notes the creating thread's tid and ``comm``. A thread that
    returns waits for its exit turn (``ExitTurn``; the main thread's
    ``finish()`` gives the turns), then reads its counters as its very last
    action and leaves the result in ``record``; a daemon thread that never
    returns is recorded by the main thread with ``record_from_proc()``.
    Do not ``join()`` a non-daemon tracked thread before ``finish()``: it
    only ends when it gets its turn. ``wait_done()`` waits for its body.
    """

    def __init__(self, name, role, body, args=(), daemon=False,
                 lock_contender=False):
        super().__init__(name=name, daemon=daemon)
        self.role = role
        self.lock_contender = lock_contender
        self.record = None
        self.parent_tid = None
        self.exit_turn = ExitTurn()
        self._body = body
        self._body_args = args
        self._inherited_comm = None
        self._comm_at_start = None
        self._running = threading.Event()

    def start(self):
        self.parent_tid = threading.get_native_id()
        self._inherited_comm = read_comm()
        super().start()

    def run(self):
        self._comm_at_start = read_comm()
        self._running.set()
        try:
            self._body(self, *self._body_args)
        except BaseException:
            self.exit_turn.abandon()
            raise
        if not self.daemon:
            self.exit_turn.wait()
            self.record = current_thread_record(
                self.role, self.parent_tid, self._renames(), self.lock_contender)

    def wait_done(self):
        """Main thread: waits until the body has returned (the thread then
        waits for its exit turn)."""
        self.exit_turn.wait_done()

    def _renames(self):
        return spawn_renames(self._inherited_comm, self._comm_at_start)

    def take_record(self):
        if self.record is None:
            raise RuntimeError("thread %s left no record" % self.name)
        return self.record

    def record_from_proc(self):
        """Record of a live thread, read from /proc/self/task/TID."""
        self._running.wait()
        directory = task_dir(self.native_id)
        comm = read_comm(directory)
        counters = read_counters(directory)
        return make_record(self.native_id, self.name, comm, self.parent_tid,
                           self._renames(), self.role, self.lock_contender,
                           self.daemon, counters)


def wait_done(threads):
    """Main thread: waits until every thread of ``threads`` did its work."""
    for t in threads:
        t.wait_done()


def gate():
    """Start gate; call on the main thread before creating any thread.

    With ``TRACER_GATE=1`` prints ``ready <pid>``, blocks until a line (or
    EOF) arrives on stdin and returns the main thread's counters read right
    after that; otherwise returns None.
    """
    if os.environ.get(GATE_ENV) != "1":
        return None
    sys.stdout.write("ready %d\n" % os.getpid())
    sys.stdout.flush()
    sys.stdin.readline()
    return read_counters()


def _truth_text(workload, threads, fields):
    truth = {
        "schema": SCHEMA,
        "workload": workload,
        "pid": os.getpid(),
        "threads": threads,
    }
    truth.update(fields)
    return json.dumps(truth, indent=2) + "\n"


def _write_all(fd, data):
    while data:
        data = data[os.write(fd, data):]


def _write_text(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as out:
        out.write(text)
    os.replace(tmp, path)


def write(workload, threads, **fields):
    """Writes the truth file atomically (``PATH.tmp`` renamed to ``PATH``)."""
    path = os.environ.get(TRUTH_ENV)
    if path:
        _write_text(path, _truth_text(workload, threads, fields))


# Stands for the main thread's record in the truth text formatted before the
# main thread reads its counters.
_MAIN_SLOT = "tracer-truth: the main thread's record"


def finish(workload, baseline, threads=(), daemons=(), records=(), **fields):
    """Last steps of the main thread.

    Ends the (non-daemon, not joined) ``threads`` one at a time in the order
    given (``end_in_turn``) and collects their records, adds ``records``
    (gathered some other way, their threads already ended) and ``daemons``
    (read from /proc), then reads the main thread's own counters and writes
    the truth file with ``fields`` added at the top level.
    """
    threads = list(threads)
    end_in_turn(t.exit_turn for t in threads)
    others = [t.take_record() for t in threads]
    others.extend(records)
    others.extend(d.record_from_proc() for d in daemons)
    path = os.environ.get(TRUTH_ENV)
    sys.stdout.flush()
    sys.stderr.flush()
    # Between its counter read and its exit the main thread does as little as it can:
    # whatever it ran (or was preempted in) there, the capture counts and the truth does
    # not. Everything but its own record (the last of the list) is formatted and written
    # before the read; after it only the small record and what follows it are formatted
    # and written, in one system call, and the file renamed.
    fd = None
    if path:
        text = _truth_text(workload, others + [_MAIN_SLOT], fields)
        head, tail = text.split(json.dumps(_MAIN_SLOT), 1)
        fd = os.open(path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        _write_all(fd, head.encode())
    main = current_thread_record("main", None, [])
    main["baseline"] = baseline
    if fd is not None:
        record = json.dumps(main, indent=2).replace("\n", "\n    ")
        _write_all(fd, (record + tail).encode())
        os.close(fd)
        os.replace(path + ".tmp", path)
    # End the process here: interpreter shutdown would run on the main thread after its
    # counters were read. Daemon threads end with the process, as they would anyway.
    os._exit(0)
