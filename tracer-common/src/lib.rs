//! Types shared by tracer's eBPF programs (`tracer-ebpf`) and its user-space side (`tracer`).
//!
//! Everything here is `#[repr(C)]` plain data: the kernel side writes it into maps and the
//! ring buffer, the user side reads the same bytes back.
#![no_std]

pub mod event;
pub mod fields;
pub mod thread;

/// Names of the maps and globals both sides refer to.
pub mod names {
    /// Per-thread state and aggregates, keyed by thread id ([`crate::thread::ThreadStats`]).
    pub const THREADS: &str = "THREADS";
    /// Thread groups traced in filtered mode, a bitmap (see [`crate::process_bit`]): their
    /// threads, present and new. Checked before any per-thread lookup, so that threads of
    /// other processes cost a capture next to nothing.
    pub const PROCESSES: &str = "PROCESSES";
    /// The ring buffer of [`crate::event`] records.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU count of events that did not fit in the ring buffer, indexed by event kind.
    pub const LOST: &str = "LOST";
    /// Per CPU, the thread it switched to last (0: idle), kept when
    /// [`crate::fields::Settings::kernel_counts`] is set.
    pub const ON_CPU: &str = "ON_CPU";
    /// The CPython GIL's address range, `[start, end)`, by thread group, for processes the
    /// daemon found to run CPython.
    pub const GIL: &str = "GIL";
    /// Global: [`crate::fields::Fields`], offsets read from tracefs and the kernel's BTF.
    pub const FIELDS: &str = "FIELDS";
    /// Global: [`crate::fields::Settings`].
    pub const SETTINGS: &str = "SETTINGS";
}

/// Words in the [`names::PROCESSES`] bitmap: one bit for every possible thread group id
/// (the kernel's `PID_MAX_LIMIT` on 64-bit machines, 2^22).
pub const PROCESS_WORDS: u32 = (1 << 22) / 64;

/// The word of the [`names::PROCESSES`] bitmap that holds `tgid`, and its bit there.
#[inline(always)]
pub const fn process_bit(tgid: u32) -> (u32, u64) {
    (tgid / 64, 1 << (tgid % 64))
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `#[repr(C)]` structs of integers and byte arrays with explicit
    // padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for crate::fields::Fields {}
    unsafe impl aya::Pod for crate::fields::Settings {}
    unsafe impl aya::Pod for crate::thread::ThreadStats {}
}
