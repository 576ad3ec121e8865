//! Scenario `mixed`, in three stages that each start their threads together
//! and join them all before the next stage begins:
//! 1. cpu: three spinners on two cores (preemption) and two sleepers;
//! 2. locks: four threads contending on one `Mutex`;
//! 3. threads and names: a spawner with children, a long thread name, a
//!    thread that renames itself and one that the main thread renames.

use std::{
    hint::black_box,
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use crate::tracked::{self, Tracked};

const SPINNERS: usize = 3;
const SPIN_FOR: Duration = Duration::from_millis(300);

const SLEEPERS: usize = 2;
const SLEEPER_NAPS: usize = 20;
const SLEEPER_NAP: Duration = Duration::from_millis(5);

const LOCKERS: usize = 4;
const LOCK_ROUNDS: u64 = 2000;
const WORK_IN_LOCK: Duration = Duration::from_micros(20);
/// Work between unlock and the next lock, so that a woken waiter can take the
/// lock before the previous holder comes back: every round is a handoff.
const WORK_OUTSIDE_LOCK: Duration = Duration::from_micros(10);

const CHILDREN: usize = 3;
const CHILD_NAPS: usize = 5;
const CHILD_NAP: Duration = Duration::from_millis(10);

const LONG_NAME: &str = "a-thread-name-longer-than-fifteen-bytes";
const RENAMED_SELF: &str = "renamed-self";
const VICTIM_RENAMED: &str = "victim-renamed";

pub fn run(main: &mut Tracked) {
    cpu_stage(main);
    lock_stage(main);
    naming_stage(main);
}

fn join_all(main: &mut Tracked, handles: Vec<tracked::Handle>) {
    main.adopt(tracked::join_all(handles));
}

fn cpu_stage(main: &mut Tracked) {
    let mut handles = Vec::new();

    for i in 0..SPINNERS {
        handles.push(tracked::spawn(&format!("spinner-{i}"), "spinner", |_| {
            spin_for(SPIN_FOR);
        }));
    }

    for i in 0..SLEEPERS {
        handles.push(tracked::spawn(&format!("sleeper-{i}"), "sleeper", |_| {
            for _ in 0..SLEEPER_NAPS {
                thread::sleep(SLEEPER_NAP);
            }
        }));
    }

    join_all(main, handles);
}

fn lock_stage(main: &mut Tracked) {
    let mut handles = Vec::new();
    let shared = Arc::new(Mutex::new(0_u64));
    for i in 0..LOCKERS {
        let shared = Arc::clone(&shared);
        handles.push(tracked::spawn(
            &format!("locker-{i}"),
            "locker",
            move |me| {
                me.set_lock_contender();
                for _ in 0..LOCK_ROUNDS {
                    {
                        let mut count = shared.lock().expect("lock poisoned");
                        *count += 1;
                        spin_for(WORK_IN_LOCK);
                    }
                    spin_for(WORK_OUTSIDE_LOCK);
                }
            },
        ));
    }

    join_all(main, handles);
    let total = *shared.lock().expect("lock poisoned");
    assert_eq!(total, LOCKERS as u64 * LOCK_ROUNDS, "lost mutex updates");
}

fn naming_stage(main: &mut Tracked) {
    let mut handles = Vec::new();
    handles.push(tracked::spawn("spawner", "spawner", |me| {
        let children: Vec<_> = (0..CHILDREN)
            .map(|i| {
                tracked::spawn(&format!("child-{i}"), "child", |_| {
                    for _ in 0..CHILD_NAPS {
                        thread::sleep(CHILD_NAP);
                    }
                })
            })
            .collect();
        me.adopt(tracked::join_all(children));
    }));

    handles.push(tracked::spawn(LONG_NAME, "longname", |_| {
        for _ in 0..4 {
            thread::sleep(Duration::from_millis(5));
        }
    }));

    handles.push(tracked::spawn("renamer", "renamer", |me| {
        thread::sleep(Duration::from_millis(20));
        me.rename_self(RENAMED_SELF).expect("rename self");
        thread::sleep(Duration::from_millis(20));
    }));

    // The victim reports its tid, then blocks until the main thread has
    // renamed it and sent back the change.
    let (tid_tx, tid_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    handles.push(tracked::spawn("victim", "victim", move |me| {
        tid_tx.send(me.tid()).expect("send victim tid");
        let rename = done_rx.recv().expect("wait for rename");
        me.push_rename(rename);
        thread::sleep(Duration::from_millis(10));
    }));
    let victim = tid_rx.recv().expect("receive victim tid");
    let rename = tracked::rename_task(victim, VICTIM_RENAMED).expect("rename victim");
    done_tx.send(rename).expect("release victim");

    join_all(main, handles);
}

/// Busy-loops on integer arithmetic until `duration` of wall time has passed.
fn spin_for(duration: Duration) {
    let start = Instant::now();
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    while start.elapsed() < duration {
        for _ in 0..64 {
            x = black_box(
                x.wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407),
            );
        }
    }
    black_box(x);
}
