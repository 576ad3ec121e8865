"""Four threads incrementing one counter under a threading.Lock.

Each increment does a little work while holding the lock, and every
NAP_EVERY increments the holder naps briefly while still holding it, which
releases the GIL long enough for the other threads to take it in turn, find
the lock held and block on it (a futex wait). time.sleep(0) is not enough:
on Python 3.8 and 3.9 the sleeping thread usually takes the GIL back before
any other thread wakes up. A thread counts the acquisitions it found
contended; `lock_contender` is true when there was at least one.
"""

import threading
import time

import truth

THREADS = 4
INCREMENTS = 20000
WORK_IN_LOCK = 20
NAP_EVERY = 200
NAP = 0.0002


class Counter:
    def __init__(self):
        self.lock = threading.Lock()
        self.value = 0


def increment(thread, counter):
    lock = counter.lock
    contended = 0
    for n in range(INCREMENTS):
        if not lock.acquire(blocking=False):
            contended += 1
            lock.acquire()
        try:
            value = counter.value
            for i in range(WORK_IN_LOCK):
                value += i - i
            counter.value = value + 1
            if n % NAP_EVERY == 0:
                time.sleep(NAP)
        finally:
            lock.release()
    thread.lock_contender = contended > 0


def main():
    baseline = truth.gate()
    counter = Counter()
    threads = [truth.TrackedThread("locker-%d" % i, "locker", increment,
                                   args=(counter,))
               for i in range(THREADS)]
    for t in threads:
        t.start()
    truth.wait_done(threads)
    expected = THREADS * INCREMENTS
    if counter.value != expected:
        raise AssertionError("counter is %d, expected %d" % (counter.value, expected))
    truth.finish("lock_counter", baseline, threads=threads, counter=counter.value)


if __name__ == "__main__":
    main()
