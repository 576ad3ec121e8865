//! Scenario `tokio`: a multi-thread tokio runtime whose threads the program names with
//! `thread_name_fn`: two workers, and the two blocking threads that two concurrent
//! `spawn_blocking` calls of a task start (their parent is the worker running it). Every name (`tracer-tokio-thread-N`) is longer than the
//! kernel keeps, so every thread's `comm` is `tracer-tokio-th`.
//!
//! tokio calls `thread_name_fn` on the thread about to spawn one (the main thread for the
//! workers, a worker for blocking threads), which notes itself and its `comm` under the
//! name; the new thread finds them by its name in `on_thread_start`, and reads its counters
//! in `on_thread_stop`, the last code tokio runs on it.

use std::{
    cell::RefCell,
    collections::HashMap,
    hint::black_box,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use crate::{
    tracked::Tracked,
    truth::{self, Rename, ThreadRecord},
};

const WORKERS: usize = 2;
const BLOCKING: usize = 2;
const NAME_PREFIX: &str = "tracer-tokio-thread-";
const TASKS: usize = 8;
const TASK_NAPS: usize = 5;
const TASK_NAP: Duration = Duration::from_millis(2);
const BLOCKING_NAP: Duration = Duration::from_millis(30);

/// Who spawned a runtime thread, noted under the thread's name.
struct Spawn {
    parent_tid: i32,
    inherited_comm: String,
}

thread_local! {
    static ME: RefCell<Option<Tracked>> = const { RefCell::new(None) };
}

pub fn run(main: &mut Tracked) {
    let spawns: Arc<Mutex<HashMap<String, Spawn>>> = Arc::default();
    let records: Arc<Mutex<Vec<ThreadRecord>>> = Arc::default();
    let counter = Arc::new(AtomicUsize::new(0));

    let runtime = {
        let (spawns_named, spawns_started) = (spawns.clone(), spawns.clone());
        let records = records.clone();
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .max_blocking_threads(BLOCKING)
            .enable_time()
            .thread_name_fn(move || {
                let name = format!("{NAME_PREFIX}{}", counter.fetch_add(1, Ordering::Relaxed));
                let spawn = Spawn {
                    parent_tid: truth::gettid(),
                    inherited_comm: truth::own_comm().expect("read own comm"),
                };
                spawns_named
                    .lock()
                    .expect("spawns lock")
                    .insert(name.clone(), spawn);
                name
            })
            .on_thread_start(move || {
                let name = thread::current()
                    .name()
                    .expect("runtime threads are named")
                    .to_owned();
                let spawn = spawns_started
                    .lock()
                    .expect("spawns lock")
                    .remove(&name)
                    .expect("the spawner noted this thread");
                let mut me = Tracked::new(name, "tokio", Some(spawn.parent_tid));
                me.push_rename(Rename {
                    from: spawn.inherited_comm,
                    to: truth::own_comm().expect("read own comm"),
                });
                ME.with(|slot| *slot.borrow_mut() = Some(me));
            })
            .on_thread_stop(move || {
                let me = ME.with(|slot| slot.borrow_mut().take()).expect("started");
                let mine = me.finish().expect("read own counters");
                records.lock().expect("records lock").extend(mine);
            })
            .build()
            .expect("build the tokio runtime")
    };

    runtime.block_on(async {
        let tasks: Vec<_> = (0..TASKS)
            .map(|i| {
                tokio::spawn(async move {
                    for _ in 0..TASK_NAPS {
                        tokio::time::sleep(TASK_NAP).await;
                        spin(Duration::from_micros(200 * (i as u64 + 1)));
                    }
                })
            })
            .collect();
        // From a task, on a worker: both blocking tasks are queued before either ends, so
        // that worker starts two blocking threads.
        let blocking = tokio::spawn(async {
            let blocking: Vec<_> = (0..BLOCKING)
                .map(|_| tokio::task::spawn_blocking(|| thread::sleep(BLOCKING_NAP)))
                .collect();
            for task in blocking {
                task.await.expect("blocking task panicked");
            }
        });
        for task in tasks {
            task.await.expect("task panicked");
        }
        blocking.await.expect("task panicked");
    });
    // Shutting down joins every worker and blocking thread.
    drop(runtime);

    let records = std::mem::take(&mut *records.lock().expect("records lock"));
    assert_eq!(
        records.len(),
        WORKERS + BLOCKING,
        "runtime threads: {:?}",
        records.iter().map(|r| &r.name).collect::<Vec<_>>()
    );
    main.adopt(records);
}

fn spin(duration: Duration) {
    let start = Instant::now();
    let mut x = 1u64;
    while start.elapsed() < duration {
        x = black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
    }
}
