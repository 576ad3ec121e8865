//! `idle`: holds `TRACER_IDLE_THREADS` (default 10 000) named threads alive, blocked, until a
//! line (or end of input) arrives on stdin; prints `idle <n>` once they all exist.

use std::{
    env,
    io::{BufRead as _, Write as _},
    sync::{Arc, Condvar, Mutex},
    thread,
};

use crate::tracked::Tracked;

pub fn run(_main: &mut Tracked) {
    let total: usize = env::var("TRACER_IDLE_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(10_000);
    let release = Arc::new((Mutex::new(false), Condvar::new()));
    let handles: Vec<_> = (0..total)
        .map(|i| {
            let release = release.clone();
            thread::Builder::new()
                .name(format!("idle-{i:05}"))
                .stack_size(64 * 1024)
                .spawn(move || {
                    let (done, wake) = &*release;
                    let mut done = done.lock().expect("idle lock");
                    while !*done {
                        done = wake.wait(done).expect("idle wait");
                    }
                })
                .expect("spawn an idle thread")
        })
        .collect();
    println!("idle {total}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    let _ = std::io::stdin().lock().read_line(&mut line);
    *release.0.lock().expect("idle lock") = true;
    release.1.notify_all();
    for handle in handles {
        handle.join().expect("idle thread");
    }
}
