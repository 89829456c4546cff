//! Allocator tuning for the binaries, which use mimalloc as their global allocator.
//!
//! Training allocates and frees hundreds of megabytes of activations every step. mimalloc's
//! default returns ("purges") freed memory to the OS after a short delay, so the next step
//! page-faults and zeroes the same memory again, a large share of a training step on candle.
//! Setting the purge delay to -1 (never purge) keeps it mapped: peak RSS is unchanged, since
//! the memory is reused at the same peak. See `docs/kernels.md` (allocation) and
//! `docs/benchmarks.md` for the measurements.

use std::os::raw::{c_int, c_long};

// Links the mimalloc C library (the one behind the binaries' `mimalloc::MiMalloc`); its Rust
// bindings only declare `mi_option_set` with their `extended` feature.
use libmimalloc_sys as _;

/// `mi_option_purge_delay` in mimalloc's `mi_option_e` (v3, as built by libmimalloc-sys
/// 0.1.49): the delay in milliseconds before freed memory goes back to the OS; -1 is never.
const MI_OPTION_PURGE_DELAY: c_int = 15;

extern "C" {
    fn mi_option_set(option: c_int, value: c_long);
}

/// Sets mimalloc's purge delay: `None` for never (what [`tune`] does), `Some(ms)` otherwise
/// (mimalloc's default is 1000 ms; benchmarks switch between the two).
pub fn set_purge_delay(ms: Option<u32>) {
    let value = ms.map_or(-1, c_long::from);
    // SAFETY: `mi_option_set` only stores an integer in mimalloc's option table (atomic);
    // the option index is in range for the linked mimalloc version (see the constant).
    unsafe { mi_option_set(MI_OPTION_PURGE_DELAY, value) };
}

/// Tunes mimalloc for this workload; call at the start of `main`, before heavy allocation.
/// Harmless (only an option is set) in a process whose global allocator is not mimalloc.
/// An explicit `MIMALLOC_PURGE_DELAY` in the environment wins.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        set_purge_delay(None);
    }
}
