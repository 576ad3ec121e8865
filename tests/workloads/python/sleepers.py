"""99 threads, all alive at once, that each sleep half a second once."""

import time

import truth

THREADS = 99
NAP = 0.5


def nap(_thread):
    time.sleep(NAP)


def main():
    baseline = truth.gate()
    threads = [truth.TrackedThread("sleeper-%02d" % i, "sleeper", nap)
               for i in range(THREADS)]
    for t in threads:
        t.start()
    truth.finish("sleepers", baseline, threads=threads)


if __name__ == "__main__":
    main()
