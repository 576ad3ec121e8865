//! `rounds`: holds `TRACER_ROUND_THREADS` (default 100) threads `round-00000`, `round-00001`,
//! ... blocked on a condition variable; prints `rounds <n>` once they all wait. At each line
//! on stdin every thread runs one round, thread `i` napping 50 µs `i + 1` times (so later
//! threads are busier), and waits again; then the main thread prints `round <k> done`. End of
//! input ends the program.

use std::{
    env,
    io::{BufRead as _, Write as _},
    sync::{Arc, Condvar, Mutex},
    thread,
    time::Duration,
};

use crate::tracked::Tracked;

/// What the threads share: the round to run, and how many threads have run it.
struct Rounds {
    /// The round asked for; `None` once the program ends.
    round: Option<u64>,
    /// Threads that ran the current round (or, before any, that are waiting).
    done: usize,
}

/// The shared state, with what the threads wait on (`start`) and the main thread waits on
/// (`finished`), apart so that no thread is woken for the other's news.
struct Shared {
    state: Mutex<Rounds>,
    start: Condvar,
    finished: Condvar,
}

pub fn run(_main: &mut Tracked) {
    let total: usize = env::var("TRACER_ROUND_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100);
    let shared = Arc::new(Shared {
        state: Mutex::new(Rounds {
            round: Some(0),
            done: 0,
        }),
        start: Condvar::new(),
        finished: Condvar::new(),
    });
    let handles: Vec<_> = (0..total)
        .map(|i| {
            let shared = shared.clone();
            thread::Builder::new()
                .name(format!("round-{i:05}"))
                .stack_size(64 * 1024)
                .spawn(move || worker(i, &shared))
                .expect("spawn a round thread")
        })
        .collect();
    let wait_all = || {
        let mut state = shared.state.lock().expect("rounds lock");
        while state.done < total {
            state = shared.finished.wait(state).expect("rounds wait");
        }
    };
    wait_all();
    println!("rounds {total}");
    let _ = std::io::stdout().flush();
    let mut lines = std::io::stdin().lock().lines();
    let mut round = 0;
    while let Some(Ok(_)) = lines.next() {
        round += 1;
        {
            let mut state = shared.state.lock().expect("rounds lock");
            state.round = Some(round);
            state.done = 0;
        }
        shared.start.notify_all();
        wait_all();
        println!("round {round} done");
        let _ = std::io::stdout().flush();
    }
    shared.state.lock().expect("rounds lock").round = None;
    shared.start.notify_all();
    for handle in handles {
        handle.join().expect("round thread");
    }
}

/// Thread `i`: runs each round asked for, then says so.
fn worker(i: usize, shared: &Shared) {
    let mut ran = 0;
    loop {
        {
            let mut state = shared.state.lock().expect("rounds lock");
            state.done += 1;
            shared.finished.notify_one();
            loop {
                match state.round {
                    None => return,
                    Some(r) if r > ran => {
                        ran = r;
                        break;
                    }
                    Some(_) => state = shared.start.wait(state).expect("rounds wait"),
                }
            }
        }
        for _ in 0..=i {
            thread::sleep(Duration::from_micros(50));
        }
    }
}
