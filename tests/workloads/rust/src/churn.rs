//! `churn`: creates and ends many short-lived threads with random names, a few at a time.
//! The count comes from `TRACER_CHURN_THREADS` (default 100 000); only the main thread is
//! recorded in the truth file.

use std::{
    env, thread,
    time::{SystemTime, UNIX_EPOCH},
};

use crate::tracked::Tracked;

/// Threads alive at once.
const BATCH: usize = 32;

/// A small xorshift generator: names only need to differ, not to be unpredictable.
struct Names(u64);

impl Names {
    fn next(&mut self) -> String {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        format!("churn-{:010x}", self.0 & 0xff_ffff_ffff)
    }
}

pub fn run(_main: &mut Tracked) {
    let total: usize = env::var("TRACER_CHURN_THREADS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
        | 1;
    let mut names = Names(seed);
    let mut started = 0;
    while started < total {
        let batch: Vec<_> = (0..BATCH.min(total - started))
            .map(|_| {
                thread::Builder::new()
                    .name(names.next())
                    .stack_size(64 * 1024)
                    .spawn(|| std::hint::black_box(0u64))
                    .expect("spawn a churn thread")
            })
            .collect();
        started += batch.len();
        for handle in batch {
            handle.join().expect("churn thread");
        }
    }
}
