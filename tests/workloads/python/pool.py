"""A ThreadPoolExecutor with four workers running 40 small tasks.

The first four tasks wait for each other on a barrier, so the executor (which
only adds a worker when none is idle) has to start all four workers. After
the work, four "report" tasks meet on a second barrier, so each worker runs
exactly one; each then records the worker running it. The main thread did
every submit, so it is every worker's parent.

A worker's counters are read in its report task, so what the worker does
after that (finishing the task, taking the shutdown sentinel from the queue,
passing it on, ending) is not in them. To keep that part free of contention
the workers end one at a time: each report task waits for its exit turn
(``truth.ExitTurn``) before reading; the main thread first shuts the executor
down without waiting, so the sentinel is queued behind the report tasks,
then gives the turns one by one, joining each worker before the next.
"""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import truth

WORKERS = 4
TASKS = 40
BARRIER_TIMEOUT = 10.0


def small_task(index, start_barrier):
    if index < WORKERS:
        start_barrier.wait()
    total = 0
    for i in range(5000):
        total += i % (index + 1)
    time.sleep(0.002)
    return total


def report(report_barrier, turn, parent_tid, inherited_comm):
    try:
        report_barrier.wait()
    except BaseException:
        turn.abandon()
        raise
    turn.wait()
    comm = truth.read_comm()
    return truth.current_thread_record(
        "pool", parent_tid, truth.spawn_renames(inherited_comm, comm))


def main():
    baseline = truth.gate()
    main_tid = threading.get_native_id()
    main_comm = truth.read_comm()
    start_barrier = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)
    report_barrier = threading.Barrier(WORKERS, timeout=BARRIER_TIMEOUT)

    executor = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="pool")
    work = [executor.submit(small_task, i, start_barrier) for i in range(TASKS)]
    for future in work:
        future.result()
    turns = [truth.ExitTurn() for _ in range(WORKERS)]
    reports = [executor.submit(report, report_barrier, turn, main_tid, main_comm)
               for turn in turns]
    # The report tasks are queued, the sentinel goes behind them: a worker
    # whose report returned takes it, passes it on and ends at once.
    executor.shutdown(wait=False)
    # Each report task waits for its turn on a different worker (the
    # barrier); the turn notes that worker's thread, which is then joined.
    truth.end_in_turn(turns)
    executor.shutdown(wait=True)

    records = sorted((f.result() for f in reports), key=lambda r: r["name"])
    if len({r["tid"] for r in records}) != WORKERS:
        raise AssertionError("report tasks did not run on %d distinct workers" % WORKERS)
    truth.finish("pool", baseline, records=records)


if __name__ == "__main__":
    main()
