"""A heartbeat thread that stops and starts again on command, for
`tracer_thread_blocked_seconds`.

The `heartbeat` thread (its kernel name too, so that it has one name however it is read)
beats every 50 ms (a short sleep) while it is told to. The main thread first prints one JSON line with both threads' kernel ids, then reads commands on stdin:
`stop` makes the heartbeat, at its next beat, print `stopped NS` (its `CLOCK_MONOTONIC`
time) and block until `start`, after which it prints `started NS` and beats again. At end of
input the program exits.
"""

import json
import sys
import threading
import time

BEAT = 0.05

go = threading.Event()
go.set()
named = threading.Event()
printing = threading.Lock()


def say(line):
    with printing:
        print(line, flush=True)


def beat():
    with open("/proc/self/task/%d/comm" % threading.get_native_id(), "w") as comm:
        comm.write("heartbeat")
    named.set()
    while True:
        if not go.is_set():
            say("stopped %d" % time.monotonic_ns())
            go.wait()
            say("started %d" % time.monotonic_ns())
        time.sleep(BEAT)


def main():
    heartbeat = threading.Thread(name="heartbeat", target=beat, daemon=True)
    heartbeat.start()
    named.wait()
    say(json.dumps({"heartbeat": heartbeat.native_id,
                    "MainThread": threading.main_thread().native_id}))
    for line in sys.stdin:
        command = line.strip()
        if command == "stop":
            go.clear()
        elif command == "start":
            go.set()
    return 0


if __name__ == "__main__":
    sys.exit(main())
