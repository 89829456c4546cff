//! The process-wide switch between lesion's CPU kernels and candle's own ops, the test
//! every kernel entry point makes before taking its own path, and the planning's tuning
//! knobs from the environment.

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::OnceLock;

use candle_core::{DType, Tensor};

/// 0: not decided yet (read `LESION_CPU_KERNELS`), 1: on, 2: off.
static ENABLED: AtomicU8 = AtomicU8::new(0);

/// Turns the CPU kernels on or off process-wide; off, every function here composes candle's
/// ops, as on other devices. For benchmarks and tests that compare the two in one process.
pub fn set_enabled(enabled: bool) {
    ENABLED.store(if enabled { 1 } else { 2 }, Ordering::Relaxed);
}

/// Whether the CPU kernels are on: as [`set_enabled`] last set, else on unless the
/// environment variable `LESION_CPU_KERNELS` is `0` or `off` (an escape hatch and a way to
/// compare whole runs against candle's own ops).
pub fn enabled() -> bool {
    match ENABLED.load(Ordering::Relaxed) {
        1 => true,
        2 => false,
        _ => {
            let on = !matches!(
                std::env::var("LESION_CPU_KERNELS").as_deref(),
                Ok("0" | "off")
            );
            // A concurrent `set_enabled` wins over the environment.
            let _ = ENABLED.compare_exchange(
                0,
                if on { 1 } else { 2 },
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            ENABLED.load(Ordering::Relaxed) == 1
        }
    }
}

/// True where the CPU kernels apply to `t`: enabled, on the CPU, f32.
pub(super) fn applies(t: &Tensor) -> bool {
    enabled() && t.device().is_cpu() && t.dtype() == DType::F32
}

/// A tuning knob of the planning (development only): the environment variable `name` parsed
/// as a number, else `default`, read once into `cell`.
pub(super) fn knob(cell: &'static OnceLock<usize>, name: &str, default: usize) -> usize {
    *cell.get_or_init(|| {
        std::env::var(name)
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(default)
    })
}
