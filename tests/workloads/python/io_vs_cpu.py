"""Two CPU-bound threads (pure-Python arithmetic) and two I/O-bound threads
(short sleeps and small file writes and reads) sharing the GIL.

Every thread contends on the GIL, which is a futex-based condition variable:
the CPU-bound threads take it from each other at every switch interval, and
each I/O-bound thread waits for it after every sleep while a CPU-bound thread
holds it.
"""

import os
import tempfile
import time

import truth

CPU_THREADS = 2
CPU_FOR = 0.6
IO_THREADS = 2
IO_ROUNDS = 60
IO_NAP = 0.005
IO_BLOCK = b"x" * 4096


def crunch(_thread):
    deadline = time.monotonic() + CPU_FOR
    x = 1
    while time.monotonic() < deadline:
        for i in range(1000):
            x = (x * 31 + i) % 1000003
    return x


def shuffle_file(_thread, path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(IO_ROUNDS):
            time.sleep(IO_NAP)
            os.lseek(fd, 0, os.SEEK_SET)
            os.write(fd, IO_BLOCK)
            os.lseek(fd, 0, os.SEEK_SET)
            if os.read(fd, len(IO_BLOCK)) != IO_BLOCK:
                raise RuntimeError("read back something else than was written")
    finally:
        os.close(fd)


def main():
    baseline = truth.gate()
    with tempfile.TemporaryDirectory(prefix="io_vs_cpu.") as scratch:
        threads = [truth.TrackedThread("cpu-%d" % i, "cpu", crunch,
                                       lock_contender=True)
                   for i in range(CPU_THREADS)]
        threads += [truth.TrackedThread("io-%d" % i, "io", shuffle_file,
                                        args=(os.path.join(scratch, "io-%d" % i),),
                                        lock_contender=True)
                    for i in range(IO_THREADS)]
        for t in threads:
            t.start()
        truth.wait_done(threads)
    truth.finish("io_vs_cpu", baseline, threads=threads)


if __name__ == "__main__":
    main()
