//! Field numbers of the Perfetto trace messages tracer writes, from Perfetto's published
//! protos (`protos/perfetto/trace/...`). Only the fields used are listed.

/// `Trace` (trace.proto).
pub mod trace {
    pub const PACKET: u32 = 1;
}

/// `TracePacket` (trace_packet.proto).
pub mod packet {
    pub const FTRACE_EVENTS: u32 = 1;
    pub const PROCESS_TREE: u32 = 2;
    pub const CLOCK_SNAPSHOT: u32 = 6;
    pub const TIMESTAMP: u32 = 8;
    pub const TRUSTED_PACKET_SEQUENCE_ID: u32 = 10;
    pub const TRACK_EVENT: u32 = 11;
    pub const SEQUENCE_FLAGS: u32 = 13;
    pub const SYSTEM_INFO: u32 = 45;
    pub const TRACK_DESCRIPTOR: u32 = 60;
    pub const FIRST_PACKET_ON_SEQUENCE: u32 = 87;

    /// `SequenceFlags.SEQ_INCREMENTAL_STATE_CLEARED`.
    pub const SEQ_INCREMENTAL_STATE_CLEARED: u64 = 1;
}

/// `SystemInfo` (common/system_info.proto) and its `Utsname`.
pub mod system_info {
    pub const UTSNAME: u32 = 1;
    pub const PAGE_SIZE: u32 = 6;
    pub const NUM_CPUS: u32 = 8;

    pub mod utsname {
        pub const SYSNAME: u32 = 1;
        pub const VERSION: u32 = 2;
        pub const RELEASE: u32 = 3;
        pub const MACHINE: u32 = 4;
    }
}

/// `ClockSnapshot` (clock_snapshot.proto).
pub mod clock_snapshot {
    pub const CLOCKS: u32 = 1;

    pub mod clock {
        pub const CLOCK_ID: u32 = 1;
        pub const TIMESTAMP: u32 = 2;
    }

    /// `BuiltinClocks`.
    pub const REALTIME: u64 = 1;
    pub const MONOTONIC: u64 = 3;
    pub const BOOTTIME: u64 = 6;
}

/// `ProcessTree` (ps/process_tree.proto).
pub mod process_tree {
    pub const PROCESSES: u32 = 1;
    pub const THREADS: u32 = 2;

    pub mod process {
        pub const PID: u32 = 1;
        pub const PPID: u32 = 2;
        pub const CMDLINE: u32 = 3;
    }

    pub mod thread {
        pub const TID: u32 = 1;
        pub const NAME: u32 = 2;
        pub const TGID: u32 = 3;
    }
}

/// `FtraceEventBundle` (ftrace/ftrace_event_bundle.proto).
pub mod bundle {
    pub const CPU: u32 = 1;
    pub const EVENT: u32 = 2;
    pub const LOST_EVENTS: u32 = 3;
}

/// `FtraceEvent` (ftrace/ftrace_event.proto) and the events tracer writes in it.
pub mod ftrace {
    pub const TIMESTAMP: u32 = 1;
    /// The task running when the event was recorded (`common_pid`).
    pub const PID: u32 = 2;

    pub const SCHED_SWITCH: u32 = 4;
    pub const SCHED_WAKING: u32 = 20;
    pub const SCHED_WAKEUP_NEW: u32 = 114;
    pub const TASK_NEWTASK: u32 = 235;
    pub const TASK_RENAME: u32 = 236;
    pub const SCHED_PROCESS_EXIT: u32 = 238;

    /// `SchedSwitchFtraceEvent` (ftrace/sched.proto).
    pub mod switch {
        pub const PREV_COMM: u32 = 1;
        pub const PREV_PID: u32 = 2;
        pub const PREV_PRIO: u32 = 3;
        pub const PREV_STATE: u32 = 4;
        pub const NEXT_COMM: u32 = 5;
        pub const NEXT_PID: u32 = 6;
        pub const NEXT_PRIO: u32 = 7;
    }

    /// `SchedWakingFtraceEvent` and `SchedWakeupNewFtraceEvent` (same fields).
    pub mod waking {
        pub const COMM: u32 = 1;
        pub const PID: u32 = 2;
        pub const PRIO: u32 = 3;
        pub const SUCCESS: u32 = 4;
        pub const TARGET_CPU: u32 = 5;
    }

    /// `TaskNewtaskFtraceEvent` (ftrace/task.proto).
    pub mod newtask {
        pub const PID: u32 = 1;
        pub const COMM: u32 = 2;
        pub const CLONE_FLAGS: u32 = 3;
    }

    /// `TaskRenameFtraceEvent` (ftrace/task.proto).
    pub mod rename {
        pub const PID: u32 = 1;
        pub const OLDCOMM: u32 = 2;
        pub const NEWCOMM: u32 = 3;
    }

    /// `SchedProcessExitFtraceEvent` (ftrace/sched.proto).
    pub mod exit {
        pub const COMM: u32 = 1;
        pub const PID: u32 = 2;
        pub const TGID: u32 = 3;
    }
}

/// `TrackDescriptor` (track_event/track_descriptor.proto) and `ThreadDescriptor`.
pub mod track_descriptor {
    pub const UUID: u32 = 1;
    pub const THREAD: u32 = 4;

    pub mod thread {
        pub const PID: u32 = 1;
        pub const TID: u32 = 2;
    }
}

/// `TrackEvent` (track_event/track_event.proto).
pub mod track_event {
    pub const DEBUG_ANNOTATIONS: u32 = 4;
    pub const TYPE: u32 = 9;
    pub const TRACK_UUID: u32 = 11;
    pub const CATEGORIES: u32 = 22;
    pub const NAME: u32 = 23;
    pub const FLOW_IDS: u32 = 47;
    pub const TERMINATING_FLOW_IDS: u32 = 48;

    /// `TrackEvent.Type`.
    pub const TYPE_SLICE_BEGIN: u64 = 1;
    pub const TYPE_SLICE_END: u64 = 2;
    pub const TYPE_INSTANT: u64 = 3;
}

/// `DebugAnnotation` (track_event/debug_annotation.proto).
pub mod debug_annotation {
    pub const BOOL_VALUE: u32 = 2;
    pub const UINT_VALUE: u32 = 3;
    pub const INT_VALUE: u32 = 4;
    pub const STRING_VALUE: u32 = 6;
    pub const POINTER_VALUE: u32 = 7;
    pub const NAME: u32 = 10;
}
