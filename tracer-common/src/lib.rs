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
    /// Thread groups whose new threads are traced in filtered mode (key: tgid, value: unused).
    pub const PROCESSES: &str = "PROCESSES";
    /// The ring buffer of [`crate::event`] records.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU count of events that did not fit in the ring buffer, indexed by event kind.
    pub const LOST: &str = "LOST";
    /// The CPython GIL's address range, `[start, end)`, by thread group, for processes the
    /// daemon found to run CPython.
    pub const GIL: &str = "GIL";
    /// Global: [`crate::fields::Fields`], offsets read from tracefs and the kernel's BTF.
    pub const FIELDS: &str = "FIELDS";
    /// Global: [`crate::fields::Settings`].
    pub const SETTINGS: &str = "SETTINGS";
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: all of these are `#[repr(C)]` structs of integers and byte arrays with explicit
    // padding fields, so every bit pattern is valid.
    unsafe impl aya::Pod for crate::fields::Fields {}
    unsafe impl aya::Pod for crate::fields::Settings {}
    unsafe impl aya::Pod for crate::thread::ThreadStats {}
}
