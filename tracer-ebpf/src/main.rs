//! tracer's eBPF programs: scheduler, task lifecycle and futex tracepoints that keep
//! per-thread aggregates in `THREADS` and stream events through `EVENTS`.
#![no_std]
#![no_main]

mod futex;
mod lifecycle;
mod maps;
mod sched;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
