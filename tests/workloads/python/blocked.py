"""Threads that know how they are blocked, for tracer's `blocked_ns`, `waiting_for_tid` and
`deadlocks`.

- `lock-a` takes `lock_a` and then wants `lock_b`; `lock-b` takes `lock_b` and then wants
  `lock_a` (both `threading.Lock`): once each holds its first lock, both go for the second and
  are blocked forever.
- `sleeper` is in `time.sleep` for an hour.
- `spinner` computes forever: it is always running or runnable.

Once every thread is on its way (each locker holds its first lock), the main thread prints one
JSON line (flushed) with each thread's kernel id by name, then waits forever too.
"""

import json
import sys
import threading
import time

lock_a, lock_b = threading.Lock(), threading.Lock()
both_hold_one = threading.Barrier(3)


def lock_both(first, second):
    with first:
        both_hold_one.wait()
        with second:
            pass


def spin():
    n = 0
    while True:
        n += 1


def main():
    threads = [
        threading.Thread(name="lock-a", target=lock_both, args=(lock_a, lock_b), daemon=True),
        threading.Thread(name="lock-b", target=lock_both, args=(lock_b, lock_a), daemon=True),
        threading.Thread(name="sleeper", target=time.sleep, args=(3600,), daemon=True),
        threading.Thread(name="spinner", target=spin, daemon=True),
    ]
    for t in threads:
        t.start()
    both_hold_one.wait()
    tids = {t.name: t.native_id for t in threads}
    tids["MainThread"] = threading.main_thread().native_id
    print(json.dumps(tids), flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())
