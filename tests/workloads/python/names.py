"""Threads with names the kernel cannot hold, for the name tests.

``names.py [all]`` starts, next to ``MainThread``:

- ``a-python-thread-name-longer-than-fifteen-bytes`` (role ``longname``);
- non-ASCII names of each string width CPython stores: ``café-crème``
  (Latin-1), ``名前-スレッド-ünïcödé`` (UCS-2), ``émoji-🧵-thread`` (UCS-4)
  (role ``unicode``);
- ``before-rename``, which renames itself ``after-rename-at-run-time``
  (``t.name = ...``) ``RENAME_AFTER`` seconds after it started (role
  ``renamed``);
- two ``ThreadPoolExecutor(thread_name_prefix="pool")`` workers, ``pool_0``
  and ``pool_1`` (role ``pool``);
- two threads started with ``_thread.start_new_thread``: one calls
  ``threading.current_thread()`` and so gets a ``Dummy-N`` thread object
  (role ``dummy``), the other does not and has no Python name at all (role
  ``raw``, ``python_name`` null; its ``name`` is its kernel name).

All of them stay alive together: once every thread is running and renamed,
the main thread waits ``HOLD`` seconds (longer than tracer takes between two
readings of a process it is not told about), or, with ``TRACER_HOLD=stdin``,
until it has printed ``holding`` and read a line on stdin; then it writes the
truth file and ends them. The truth records each
thread's final Python name in ``python_name``, its counters as read from
``/proc/self/task/TID`` at that point.

``names.py late`` starts one thread, ``named-at-start``, which runs under that
name for ``LATE_RENAME_AFTER`` seconds, renames itself
``renamed-50-ms-before-it-ended``, and ends ``LATE_END_AFTER`` seconds later,
its record (role ``renamed_late``) read by itself as its last action; the main
thread joins it and writes the truth file ``LATE_HOLD`` seconds later.

``names.py churn`` keeps starting short-lived threads with long names until
it ends the process abruptly (``os._exit``) while threads are still being
created: a process that goes away while it is being read. No truth file.
"""

import _thread
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import truth

HOLD = 1.5
RENAME_AFTER = 0.05
HOLD_ENV = "TRACER_HOLD"
LONG_NAME = "a-python-thread-name-longer-than-fifteen-bytes"
UNICODE_NAMES = ["café-crème", "名前-スレッド-ünïcödé", "émoji-🧵-thread"]
BEFORE_RENAME = "before-rename"
AFTER_RENAME = "after-rename-at-run-time"
POOL_WORKERS = 2
LATE_FIRST_NAME = "named-at-start"
LATE_FINAL_NAME = "renamed-50-ms-before-it-ended"
LATE_RENAME_AFTER = 0.3
LATE_END_AFTER = 0.05
LATE_HOLD = 0.3


class Seen:
    """What a thread noted about itself once running."""

    def __init__(self, role, parent_tid, inherited_comm):
        self.role = role
        self.parent_tid = parent_tid
        self.inherited_comm = inherited_comm
        self.tid = None
        self.comm_at_start = None
        self.python_name = None
        self.renames = []

    def note_start(self):
        self.tid = threading.get_native_id()
        self.comm_at_start = truth.read_comm()
        self.renames = truth.spawn_renames(self.inherited_comm, self.comm_at_start)

    def record(self):
        directory = truth.task_dir(self.tid)
        comm = truth.read_comm(directory)
        if comm != self.comm_at_start:
            # Python 3.14 names the kernel thread when the thread renames itself.
            self.renames.append({"from": self.comm_at_start, "to": comm})
        record = truth.make_record(
            self.tid, self.python_name or comm, comm, self.parent_tid,
            self.renames, self.role, False, True, truth.read_counters(directory))
        record["python_name"] = self.python_name
        return record


def run_all():
    baseline = truth.gate()
    main_tid = threading.get_native_id()
    main_comm = truth.read_comm()
    stop = threading.Event()
    seen = []
    started = []

    def body(me, rename_to):
        me.note_start()
        if rename_to:
            time.sleep(RENAME_AFTER)
            threading.current_thread().name = rename_to
        me.python_name = threading.current_thread().name
        started.append(me)
        stop.wait()

    threads = []
    for role, name, rename_to in (
            [("longname", LONG_NAME, None)]
            + [("unicode", n, None) for n in UNICODE_NAMES]
            + [("renamed", BEFORE_RENAME, AFTER_RENAME)]):
        me = Seen(role, main_tid, main_comm)
        seen.append(me)
        threads.append(threading.Thread(target=body, args=(me, rename_to),
                                        name=name, daemon=True))
    for t in threads:
        t.start()

    pool = ThreadPoolExecutor(max_workers=POOL_WORKERS, thread_name_prefix="pool")
    barrier = threading.Barrier(POOL_WORKERS)

    def pool_task(me):
        barrier.wait()
        me.note_start()
        me.python_name = threading.current_thread().name
        started.append(me)
        stop.wait()

    for _ in range(POOL_WORKERS):
        me = Seen("pool", main_tid, main_comm)
        seen.append(me)
        pool.submit(pool_task, me)

    def raw_body(me, named):
        me.note_start()
        if named:
            me.python_name = threading.current_thread().name
        started.append(me)
        stop.wait()

    for role, named in (("dummy", True), ("raw", False)):
        me = Seen(role, main_tid, main_comm)
        seen.append(me)
        _thread.start_new_thread(raw_body, (me, named))

    deadline = time.monotonic() + 10
    while len(started) < len(seen):
        if time.monotonic() > deadline:
            raise RuntimeError("threads did not start")
        time.sleep(0.001)

    if os.environ.get(HOLD_ENV) == "stdin":
        sys.stdout.write("holding\n")
        sys.stdout.flush()
        sys.stdin.readline()
    else:
        time.sleep(HOLD)

    records = [me.record() for me in seen]
    main = truth.current_thread_record("main", None, [])
    main["baseline"] = baseline
    main["python_name"] = threading.current_thread().name
    truth.write("names", [main] + records)
    stop.set()
    pool.shutdown(wait=True)
    sys.stdout.flush()
    os._exit(0)


def late():
    """A thread renamed shortly before it ends, joined by the main thread."""
    baseline = truth.gate()
    main_tid = threading.get_native_id()
    main_comm = truth.read_comm()
    records = []

    def body():
        comm_at_start = truth.read_comm()
        renames = truth.spawn_renames(main_comm, comm_at_start)
        time.sleep(LATE_RENAME_AFTER)
        threading.current_thread().name = LATE_FINAL_NAME
        time.sleep(LATE_END_AFTER)
        comm = truth.read_comm()
        if comm != comm_at_start:
            # Python 3.14 names the kernel thread when the thread renames itself.
            renames.append({"from": comm_at_start, "to": comm})
        record = truth.current_thread_record("renamed_late", main_tid, renames)
        record["python_name"] = threading.current_thread().name
        records.append(record)

    thread = threading.Thread(target=body, name=LATE_FIRST_NAME)
    thread.start()
    thread.join()
    # The program goes on after the thread: what it was last called is read meanwhile.
    time.sleep(LATE_HOLD)
    main = truth.current_thread_record("main", None, [])
    main["baseline"] = baseline
    main["python_name"] = threading.current_thread().name
    truth.write("names-late", [main] + records)


def churn():
    """Starts threads until the process ends itself in the middle of it."""
    end = time.monotonic() + 0.3
    index = 0
    while True:
        name = "churning-thread-with-a-long-name-%d" % index
        threading.Thread(target=time.sleep, args=(0.002,), name=name).start()
        index += 1
        if time.monotonic() > end and index % 7 == 3:
            os._exit(0)


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "all"
    if mode == "all":
        run_all()
    elif mode == "late":
        late()
    elif mode == "churn":
        churn()
    else:
        sys.stderr.write("usage: names.py [all|late|churn]\n")
        sys.exit(2)


if __name__ == "__main__":
    main()
