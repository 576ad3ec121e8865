"""Two non-daemon threads that do short work and end, and two daemon threads
that never end.

The daemon threads nap in a loop until the other two have done their work,
then block forever on an event that is never set. Once both are blocked the
main thread ends the workers one at a time (``truth.finish``), reads the
daemons' counters from /proc/self/task/TID (they cannot change afterwards),
writes the truth and ends the process; the daemon threads die with it.
"""

import threading
import time

import truth

WORKERS = 2
DAEMONS = 2
DAEMON_NAP = 0.01
SETTLE = 0.05


def work(_thread):
    total = 0
    for round_ in range(5):
        for i in range(20000):
            total += i * round_
        time.sleep(0.01)
    return total


def linger(_thread, stop_napping, parked, never):
    while not stop_napping.is_set():
        time.sleep(DAEMON_NAP)
    parked.set()
    never.wait()


def main():
    baseline = truth.gate()
    stop_napping = threading.Event()
    never = threading.Event()
    parked = [threading.Event() for _ in range(DAEMONS)]

    workers = [truth.TrackedThread("worker-%d" % i, "worker", work)
               for i in range(WORKERS)]
    daemons = [truth.TrackedThread("daemon-%d" % i, "daemon", linger,
                                   args=(stop_napping, parked[i], never),
                                   daemon=True)
               for i in range(DAEMONS)]
    for t in workers + daemons:
        t.start()
    truth.wait_done(workers)

    # The daemons stop napping before the workers end, so that nothing
    # contends with a worker's exit.
    stop_napping.set()
    for event in parked:
        event.wait()
    # Give the daemon threads time to take the GIL and go to sleep in
    # `never.wait()`; from then on their counters stay put.
    time.sleep(SETTLE)
    truth.finish("daemon_threads", baseline, threads=workers, daemons=daemons)


if __name__ == "__main__":
    main()
