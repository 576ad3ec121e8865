//! Ring buffer records decoded into [`Event`]s.

use serde_json::{Value, json};
use tracer_common::event::{
    EventKind, FutexWait, Header, Switch, ThreadCreated, ThreadExited, ThreadRenamed, Wakeup,
    futex_op_name,
};

use super::comm_to_string;

/// One decoded record. `Wakeup` holds `sched_wakeup`, `sched_wakeup_new` and `sched_waking`
/// records; [`Event::kind`] tells them apart.
#[derive(Clone, Copy, Debug)]
pub enum Event {
    ThreadCreated(ThreadCreated),
    ThreadExited(ThreadExited),
    ThreadRenamed(ThreadRenamed),
    Switch(Switch),
    Wakeup(Wakeup),
    FutexWait(FutexWait),
}

/// Copies a `T` out of the start of `bytes`, if there are enough of them.
fn read<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() >= size_of::<T>()).then(|| {
        // SAFETY: length checked; `T` is plain `#[repr(C)]` data valid for any bytes, and
        // `read_unaligned` has no alignment requirement.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
    })
}

impl Event {
    /// Decodes one ring buffer record; `None` for a short or unknown one.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        let header: Header = read(bytes)?;
        Some(match EventKind::from_u32(header.kind)? {
            EventKind::ThreadCreated => Self::ThreadCreated(read(bytes)?),
            EventKind::ThreadExited => Self::ThreadExited(read(bytes)?),
            EventKind::ThreadRenamed => Self::ThreadRenamed(read(bytes)?),
            EventKind::Switch => Self::Switch(read(bytes)?),
            EventKind::Wakeup | EventKind::Waking => Self::Wakeup(read(bytes)?),
            EventKind::FutexWait => Self::FutexWait(read(bytes)?),
        })
    }

    pub fn header(&self) -> &Header {
        match self {
            Self::ThreadCreated(e) => &e.header,
            Self::ThreadExited(e) => &e.header,
            Self::ThreadRenamed(e) => &e.header,
            Self::Switch(e) => &e.header,
            Self::Wakeup(e) => &e.header,
            Self::FutexWait(e) => &e.header,
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Self::ThreadCreated(_) => EventKind::ThreadCreated,
            Self::ThreadExited(_) => EventKind::ThreadExited,
            Self::ThreadRenamed(_) => EventKind::ThreadRenamed,
            Self::Switch(_) => EventKind::Switch,
            Self::Wakeup(e) if e.header.kind == EventKind::Waking as u32 => EventKind::Waking,
            Self::Wakeup(_) => EventKind::Wakeup,
            Self::FutexWait(_) => EventKind::FutexWait,
        }
    }

    /// The event as one JSON object, as written to `.jsonl` files.
    pub fn json(&self) -> Value {
        let h = self.header();
        let mut value = match self {
            Self::ThreadCreated(e) => json!({
                "tid": e.tid, "pid": e.tgid, "parent_tid": e.parent_tid,
                "parent_pid": e.parent_tgid, "clone_flags": e.clone_flags,
                "comm": comm_to_string(&e.comm),
            }),
            Self::ThreadExited(e) => json!({
                "tid": e.tid, "pid": e.tgid, "group_dead": e.group_dead != 0,
                "comm": comm_to_string(&e.comm),
            }),
            Self::ThreadRenamed(e) => json!({
                "tid": e.tid, "pid": e.tgid, "writer_tid": e.writer_tid,
                "from": comm_to_string(&e.old_comm), "to": comm_to_string(&e.new_comm),
            }),
            Self::Switch(e) => json!({
                "prev_tid": e.prev_tid, "prev_pid": e.prev_tgid, "prev_state": e.prev_state,
                "prev_prio": e.prev_prio, "voluntary": e.voluntary != 0,
                "next_tid": e.next_tid, "next_pid": e.next_tgid, "next_prio": e.next_prio,
            }),
            Self::Wakeup(e) if e.header.kind == EventKind::Waking as u32 => json!({
                "tid": e.tid, "pid": e.tgid, "waker_tid": e.current_tid,
                "target_cpu": e.target_cpu, "prio": e.prio,
            }),
            Self::Wakeup(e) => json!({
                "tid": e.tid, "pid": e.tgid, "current_tid": e.current_tid,
                "target_cpu": e.target_cpu, "prio": e.prio, "new_task": e.new_task != 0,
            }),
            Self::FutexWait(e) => json!({
                "tid": e.tid, "pid": e.tgid, "uaddr": format!("{:#x}", e.uaddr),
                "op": futex_op_name(e.op), "nr_futexes": e.nr_futexes,
                "start_ns": e.start_ns, "duration_ns": h.ts_ns.saturating_sub(e.start_ns),
                "ret": e.ret,
            }),
        };
        let object = value.as_object_mut().expect("events are objects");
        object.insert("ts_ns".into(), h.ts_ns.into());
        object.insert("cpu".into(), h.cpu.into());
        object.insert("kind".into(), self.kind().name().into());
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes_of<T>(value: &T) -> Vec<u8> {
        // SAFETY: reading the bytes of plain data.
        unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), size_of::<T>()) }
            .to_vec()
    }

    fn header(kind: EventKind) -> Header {
        Header {
            kind: kind as u32,
            cpu: 1,
            ts_ns: 5_000,
        }
    }

    #[test]
    fn decodes_a_rename_with_an_untrusted_name() {
        let mut new_comm = [0u8; 16];
        new_comm[..6].copy_from_slice(b"a\"b\n\xff!");
        let raw = ThreadRenamed {
            header: header(EventKind::ThreadRenamed),
            tid: 11,
            tgid: 10,
            writer_tid: 10,
            _pad: 0,
            old_comm: *b"old\0\0\0\0\0\0\0\0\0\0\0\0\0",
            new_comm,
        };
        let event = Event::decode(&bytes_of(&raw)).unwrap();
        assert_eq!(event.kind(), EventKind::ThreadRenamed);
        let json = event.json();
        assert_eq!(json["to"], "a\"b\n\u{fffd}!");
        assert_eq!(json["from"], "old");
        assert_eq!(json["ts_ns"], 5_000);
        // The line written to a .jsonl file stays one line.
        assert!(!json.to_string().contains('\n'));
    }

    #[test]
    fn decodes_a_futex_wait_with_its_duration() {
        let raw = FutexWait {
            header: header(EventKind::FutexWait),
            tid: 3,
            tgid: 3,
            uaddr: 0x7f00_0000_1000,
            start_ns: 1_000,
            op: 128,
            nr_futexes: 1,
            ret: -11,
        };
        let event = Event::decode(&bytes_of(&raw)).unwrap();
        let Event::FutexWait(e) = event else {
            panic!("{event:?}")
        };
        assert!(tracer_common::event::is_futex_wait(e.op));
        let json = event.json();
        assert_eq!(json["duration_ns"], 4_000);
        assert_eq!(json["op"], "WAIT");
        assert_eq!(json["uaddr"], "0x7f0000001000");
    }

    #[test]
    fn a_waking_names_its_waker() {
        let raw = Wakeup {
            header: header(EventKind::Waking),
            tid: 12,
            tgid: 10,
            current_tid: 11,
            target_cpu: 1,
            prio: 120,
            new_task: 0,
        };
        let event = Event::decode(&bytes_of(&raw)).unwrap();
        assert!(matches!(event, Event::Wakeup(_)));
        assert_eq!(event.kind(), EventKind::Waking);
        let json = event.json();
        assert_eq!(json["kind"], "waking");
        assert_eq!(json["waker_tid"], 11);
        let wakeup = Wakeup {
            header: header(EventKind::Wakeup),
            ..raw
        };
        assert_eq!(
            Event::decode(&bytes_of(&wakeup)).unwrap().kind(),
            EventKind::Wakeup
        );
    }

    #[test]
    fn short_and_unknown_records_are_rejected() {
        let raw = header(EventKind::Switch);
        assert!(Event::decode(&bytes_of(&raw)).is_none());
        let unknown = Header {
            kind: 99,
            cpu: 0,
            ts_ns: 0,
        };
        let mut bytes = bytes_of(&unknown);
        bytes.resize(128, 0);
        assert!(Event::decode(&bytes).is_none());
    }
}
