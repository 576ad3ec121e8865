//! `spin`: one thread named `spinner` stays on a CPU for `TRACER_SPIN_SECS` (default 3)
//! seconds without blocking, as a real-time (`SCHED_FIFO`) thread where allowed, so that
//! almost nothing switches it out; prints `spin <tid>` once it runs.

use std::{
    env,
    io::Write as _,
    time::{Duration, Instant},
};

use crate::tracked::{Tracked, join_all, spawn};

pub fn run(main: &mut Tracked) {
    let secs: f64 = env::var("TRACER_SPIN_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let spinner = spawn("spinner", "cpu", move |me| {
        let param = libc::sched_param { sched_priority: 1 };
        // SAFETY: plain system calls on the calling thread. Without the privilege to run
        // as a real-time thread it spins as an ordinary one.
        unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
        println!("spin {}", me.tid());
        let _ = std::io::stdout().flush();
        let end = Instant::now() + Duration::from_secs_f64(secs);
        let mut n = 0u64;
        while Instant::now() < end {
            n = std::hint::black_box(n.wrapping_add(1));
        }
    });
    main.adopt(join_all(vec![spinner]));
}
