"""Checks a `tracer record` Perfetto trace (.pftrace) against a workload's ground truth.

The trace is decoded with Perfetto's own published protos (the `perfetto` package on PyPI,
`perfetto_trace_pb2`), never with tracer's encoder. Usage:

    check_trace.py TRACE --truth TRUTH --summary SUMMARY [--form command|pid]
    check_trace.py TRACE --interrupted PID

The first form holds a whole capture against the truth file the workload wrote
(`tracer.truth/v1`) and the summary tracer wrote in the same run (`tracer.record/v1`, for the
best names and futex wait counts). The second checks a capture stopped by a signal: a complete,
decodable trace of process PID. Prints what it found; exits 1 listing every problem.
"""

import argparse
import json
import os
import sys
from collections import Counter, defaultdict

from perfetto.protos.perfetto.trace import perfetto_trace_pb2 as pb

SEQUENCE_ID = 1
CLONE_THREAD = 0x10000
BOOTTIME = 6
# sched_switch prev_state values Perfetto decodes on kernels from 4.14 on: running (0), one
# TASK_REPORT flag, or preempted (TASK_REPORT_MAX).
PREEMPTED = 0x100
VALID_STATES = {0, 0x1, 0x2, 0x4, 0x8, 0x10, 0x20, 0x40, 0x80, PREEMPTED}
SLEEPING = {0x1, 0x2, 0x4, 0x8, 0x40, 0x80}
# Switches: within 3 or 2% of the kernel's count, as the summary's own tests allow, and up to
# this many more for the thread's teardown after it read its count.
SWITCH_TOLERANCE = 3
TEARDOWN_SWITCHES = 10


class Trace:
    """The parts of a decoded trace the checks look at."""

    def __init__(self, path):
        with open(path, "rb") as f:
            data = f.read()
        self.size = len(data)
        trace = pb.Trace()
        trace.ParseFromString(data)
        self.packets = list(trace.packet)
        self.process_trees = []  # (timestamp, ProcessTree)
        self.system_info = None
        self.clock_ids = set()
        self.ftrace = []  # (timestamp, cpu, common pid, kind, event)
        self.lost_events = False
        self.tracks = {}  # uuid -> (pid, tid)
        self.undescribed_tracks = set()
        self.track_events = []  # (timestamp, tid, TrackEvent)
        self.sequence_problems = []
        for i, p in enumerate(self.packets):
            if p.trusted_packet_sequence_id != SEQUENCE_ID:
                self.sequence_problems.append("packet %d is on sequence %d" % (i, p.trusted_packet_sequence_id))
            kind = p.WhichOneof("data")
            if kind == "system_info":
                self.system_info = p.system_info
            elif kind == "clock_snapshot":
                self.clock_ids.update(c.clock_id for c in p.clock_snapshot.clocks)
            elif kind == "process_tree":
                self.process_trees.append((p.timestamp, p.process_tree))
            elif kind == "track_descriptor":
                d = p.track_descriptor
                self.tracks[d.uuid] = (d.thread.pid, d.thread.tid)
            elif kind == "track_event":
                e = p.track_event
                if e.track_uuid not in self.tracks:
                    self.undescribed_tracks.add(e.track_uuid)
                tid = self.tracks.get(e.track_uuid, (0, 0))[1]
                self.track_events.append((p.timestamp, tid, e))
            elif kind == "ftrace_events":
                bundle = p.ftrace_events
                self.lost_events |= bundle.lost_events
                for e in bundle.event:
                    self.ftrace.append((e.timestamp, bundle.cpu, e.pid, e.WhichOneof("event"), e))
        self.ftrace.sort(key=lambda x: x[0])
        self.track_events.sort(key=lambda x: x[0])
        self.process_trees.sort(key=lambda x: x[0])
        first = self.packets[0] if self.packets else None
        if first is None or not first.HasField("system_info"):
            self.sequence_problems.append("the first packet is not SystemInfo")
        elif not first.sequence_flags & 1:
            self.sequence_problems.append("the first packet does not clear the sequence's state")

    def of_kind(self, kind):
        return [(ts, cpu, pid, getattr(e, kind)) for ts, cpu, pid, k, e in self.ftrace if k == kind]

    def final_names(self):
        """tid -> (tgid, name) from the last ProcessTree."""
        if not self.process_trees:
            return {}
        return {t.tid: (t.tgid, t.name) for t in self.process_trees[-1][1].threads}


def common_checks(trace, pid, problems):
    problems.extend(trace.sequence_problems)
    if trace.system_info is None:
        problems.append("no SystemInfo packet")
    elif trace.system_info.utsname.release != os.uname().release:
        problems.append("SystemInfo release %r is not this kernel's %r"
                        % (trace.system_info.utsname.release, os.uname().release))
    if BOOTTIME not in trace.clock_ids:
        problems.append("no ClockSnapshot with the boot clock")
    if len(trace.process_trees) < 2:
        problems.append("expected a ProcessTree at the start and at the end, got %d" % len(trace.process_trees))
    for _, tree in trace.process_trees:
        if [p.pid for p in tree.processes] != [pid]:
            problems.append("ProcessTree lists processes %s, not %d" % ([p.pid for p in tree.processes], pid))
        elif not tree.processes[0].cmdline:
            problems.append("ProcessTree has no command line for %d" % pid)
    if trace.undescribed_tracks:
        problems.append("TrackEvents on tracks never described: %s" % sorted(trace.undescribed_tracks))
    for ts, cpu, _, switch in trace.of_kind("sched_switch"):
        if switch.prev_state not in VALID_STATES:
            problems.append("sched_switch at %d has prev_state %#x" % (ts, switch.prev_state))
            break
    if not trace.of_kind("sched_switch"):
        problems.append("no sched_switch events")


def check_full(trace, truth, summary, form, problems, report):
    pid = truth["pid"]
    common_checks(trace, pid, problems)
    # A lost waking is allowed (the kernel, rarely, runs no program for one; tracer counts it
    # from the wakeup that follows); every other loss is a failure.
    by_kind = summary.get("lost_events_by_kind", {})
    lost_wakings = by_kind.get("waking", 0)
    if sum(by_kind.values()) != summary["lost_events"]:
        problems.append("lost_events %d, by kind %s" % (summary["lost_events"], by_kind))
    if summary["lost_events"] != lost_wakings:
        problems.append("events were lost: %s" % by_kind)
    if trace.lost_events != (summary["lost_events"] > 0):
        problems.append("the trace's lost-events mark disagrees with the summary's %d"
                        % summary["lost_events"])
    total_unwoken = 0
    threads = truth["threads"]
    traced = {t["tid"] for t in summary["threads"]}
    by_tid = {t["tid"]: t for t in summary["threads"]}
    names = trace.final_names()

    newtask = {e.pid: (parent, e) for _, _, parent, e in trace.of_kind("task_newtask")}
    renames = defaultdict(list)
    for _, _, _, e in trace.of_kind("task_rename"):
        renames[e.pid].append((e.oldcomm, e.newcomm))
    exits = {e.pid: ts for ts, _, _, e in trace.of_kind("sched_process_exit")}

    # Per thread, in time order: switch-outs, switch-ins and wakings.
    outs = Counter()
    timeline = defaultdict(list)
    strangers = set()
    for ts, cpu, common_pid, kind, e in trace.ftrace:
        if kind == "sched_switch":
            s = e.sched_switch
            for who in (s.prev_pid, s.next_pid):
                if who != 0 and who not in traced:
                    strangers.add(who)
            if s.prev_pid and (s.prev_pid not in exits or ts <= exits[s.prev_pid]):
                outs[s.prev_pid] += 1
            timeline[s.prev_pid].append((ts, "out", s.prev_state))
            timeline[s.next_pid].append((ts, "in", None))
        elif kind == "sched_waking":
            timeline[e.sched_waking.pid].append((ts, "waking", common_pid))
    if strangers:
        problems.append("sched_switch names tasks outside the capture: %s" % sorted(strangers)[:10])

    futex_begins = Counter()
    futex_ends = Counter()
    woken = Counter()
    flow_starts = {}
    flow_ends = []
    for ts, tid, e in trace.track_events:
        if e.type == pb.TrackEvent.TYPE_SLICE_BEGIN and e.name == "futex wait":
            args = {a.name: a for a in e.debug_annotations}
            if "uaddr" not in args or not args["uaddr"].pointer_value or "op" not in args:
                problems.append("futex slice of %d at %d lacks its address or op" % (tid, ts))
            futex_begins[tid] += 1
        elif e.type == pb.TrackEvent.TYPE_SLICE_END:
            futex_ends[tid] += 1
        if e.name == "woken":
            woken[tid] += 1
        for flow in e.flow_ids:
            flow_starts[flow] = ts
        for flow in e.terminating_flow_ids:
            flow_ends.append((flow, ts))
    for flow, ts in flow_ends:
        if flow not in flow_starts or flow_starts[flow] > ts:
            problems.append("flow %d ends at %d without starting before" % (flow, ts))
            break

    main_tid = pid
    for want in threads:
        tid = want["tid"]
        who = "thread %d (%s)" % (tid, want["name"])
        if tid not in names:
            problems.append("%s: missing from the final ProcessTree" % who)
            continue
        tgid, name = names[tid]
        best = by_tid.get(tid, {}).get("name")
        if tgid != pid:
            problems.append("%s: tgid %d" % (who, tgid))
        if name != best or name not in (want["comm"], want["name"]):
            problems.append("%s: named %r; summary %r, comm %r" % (who, name, best, want["comm"]))
        is_main = tid == main_tid
        if not is_main:
            if tid not in newtask:
                problems.append("%s: no task_newtask" % who)
            else:
                parent, e = newtask[tid]
                if parent != want["parent_tid"] or not e.clone_flags & CLONE_THREAD:
                    problems.append("%s: created by %d (flags %#x), truth %s"
                                    % (who, parent, e.clone_flags, want["parent_tid"]))
            if tid not in exits and not want.get("daemon"):
                problems.append("%s: no sched_process_exit" % who)
        want_renames = [(r["from"], r["to"]) for r in want["renames"]]
        if is_main and form == "command":
            want_renames.insert(0, ("tracer", want["comm"]))
        if renames[tid] != want_renames:
            problems.append("%s: task_rename %s, truth %s" % (who, renames[tid], want_renames))

        baseline = want.get("baseline") if form == "pid" else None
        expected = want["voluntary_switches"] + want["involuntary_switches"]
        if baseline:
            expected -= baseline["voluntary_switches"] + baseline["involuntary_switches"]
        # The thread read its truth itself, before its teardown (which on a loaded machine can
        # be preempted or block a few times more): more switches are allowed after it, for a
        # thread whose exit is in the capture. The summary has the kernel's counts up to the
        # exit, read from the task at each switch: the trace must agree with it exactly.
        above = max(SWITCH_TOLERANCE, expected // 50) + (TEARDOWN_SWITCHES if tid in exits else 0)
        if not expected - SWITCH_TOLERANCE <= outs[tid] <= expected + above:
            problems.append("%s: %d sched_switch out, kernel counted %d" % (who, outs[tid], expected))
        # The summary has the kernel's own counts: the trace may lack the few switches the
        # kernel reported to no tracepoint consumer (see below), and has none it did not count.
        counted = by_tid[tid]["voluntary_switches"] + by_tid[tid]["involuntary_switches"]
        if not counted - SWITCH_TOLERANCE <= outs[tid] <= counted + 1:
            problems.append("%s: %d sched_switch out, the summary counts %d" % (who, outs[tid], counted))

        # Perfetto derives Runnable from sched_waking: every return to a CPU after a sleep
        # must follow one. The kernel traces a waking only for a thread already in a sleeping
        # state, and a waker on another CPU may get there while the thread is still switching
        # out: a waking seen while the thread is on a CPU ends the sleep it is entering.
        #
        # The kernel also, rarely, reports no sched_switch for a thread's switch in (an
        # ftrace instance misses the same ones; the thread's own schedstat counts them),
        # mostly a CPU's switch from idle, and often not the waking before it either: a switch
        # out with no switch in since the previous one implies the switch in. The thread then
        # ran since its previous switch out; the wakings beyond the one its sleep needed came
        # while it ran.
        asleep = False
        on_cpu = False
        seen = False
        woken_early = False
        needed_waking = False
        wakings_since_out = 0
        ins = inferred_ins = 0
        unwoken = []
        wakers = Counter()
        for ts, kind, value in sorted(timeline[tid], key=lambda x: x[0]):
            if kind == "out":
                if seen and not on_cpu:
                    inferred_ins += 1
                    woken_early = wakings_since_out > (1 if needed_waking else 0)
                needed_waking = value in SLEEPING and not woken_early
                asleep = needed_waking
                on_cpu = woken_early = False
                wakings_since_out = 0
            elif kind == "waking":
                if on_cpu:
                    woken_early = True
                asleep = False
                wakings_since_out += 1
                wakers[value] += 1
            elif kind == "in":
                ins += 1
                if asleep:
                    unwoken.append(ts)
                asleep = False
                on_cpu = True
            seen = True
        slices = want.get("timeslices")
        if slices is not None:
            if baseline:
                slices -= baseline["timeslices"]
            above = max(SWITCH_TOLERANCE, slices // 50) + (TEARDOWN_SWITCHES if tid in exits else 0)
            if not slices - SWITCH_TOLERANCE <= ins + inferred_ins <= slices + above:
                problems.append("%s: %d switches in (%d of them implied by a switch out), "
                                "the kernel counted %d timeslices"
                                % (who, ins + inferred_ins, inferred_ins, slices))
        if inferred_ins > max(SWITCH_TOLERANCE, ins // 20):
            problems.append("%s: %d switches in implied by a switch out, %d seen"
                            % (who, inferred_ins, ins))
        # One is allowed for a waking that raced with the start of the capture, more only
        # for wakings counted lost.
        total_unwoken += len(unwoken)
        if len(unwoken) > 1 + lost_wakings:
            problems.append("%s: %d switches in after a sleep without a sched_waking (at %s); "
                            "%d wakings counted lost"
                            % (who, len(unwoken), ", ".join(map(str, unwoken[:5])), lost_wakings))

        if by_tid.get(tid) and futex_begins[tid] != by_tid[tid]["futex_waits"]:
            problems.append("%s: %d futex slices, summary counts %d futex waits"
                            % (who, futex_begins[tid], by_tid[tid]["futex_waits"]))
        if futex_begins[tid] != futex_ends[tid]:
            problems.append("%s: %d futex slices begin, %d end" % (who, futex_begins[tid], futex_ends[tid]))
        if want.get("lock_contender"):
            if futex_begins[tid] == 0:
                problems.append("%s: contended a lock but has no futex slices" % who)
            by_peers = sum(n for waker, n in wakers.items() if waker in traced and waker != tid)
            if by_peers == 0:
                problems.append("%s: contended a lock but was never woken by another thread" % who)
            if woken[tid] == 0:
                problems.append("%s: contended a lock but no wakeup flow reaches it" % who)
        report.append("%-40s switches %5d (kernel %5d)  ins %5d+%d  futex slices %5d  wakings %5d"
                      "  flows in %5d"
                      % (who, outs[tid], expected, ins, inferred_ins, futex_begins[tid],
                         sum(wakers.values()), woken[tid]))
    # Each lost waking shows as a return to a CPU without one, unless it came while its
    # thread was still on a CPU (or was one of a thread outside the truth).
    if lost_wakings > total_unwoken + len(traced - {t["tid"] for t in threads}) + 1:
        problems.append("%d wakings counted lost, but only %d returns to a CPU lack one"
                        % (lost_wakings, total_unwoken))


def check_interrupted(trace, pid, problems, report):
    common_checks(trace, pid, problems)
    if pid not in trace.final_names():
        problems.append("process %d's main thread is missing from the final ProcessTree" % pid)
    report.append("%d packets, %d ftrace events, %d track events"
                  % (len(trace.packets), len(trace.ftrace), len(trace.track_events)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trace")
    parser.add_argument("--truth")
    parser.add_argument("--summary")
    parser.add_argument("--form", choices=("command", "pid"), default="command")
    parser.add_argument("--interrupted", type=int, metavar="PID")
    args = parser.parse_args()
    trace = Trace(args.trace)
    problems, report = [], []
    if args.interrupted is not None:
        check_interrupted(trace, args.interrupted, problems, report)
    else:
        with open(args.truth) as f:
            truth = json.load(f)
        with open(args.summary) as f:
            summary = json.load(f)
        check_full(trace, truth, summary, args.form, problems, report)
    print("%s: %d bytes, %d packets" % (args.trace, trace.size, len(trace.packets)))
    for line in report:
        print("  " + line)
    if problems:
        print("PROBLEMS:")
        for p in problems:
            print("  " + p)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
