//! Choosing the compute device (the `--device` option): `auto`, `cpu`, `cuda`, `cuda:N`,
//! `metal`, `metal:N`.
//!
//! `auto` takes CUDA device 0 when this build has CUDA and a GPU can be opened, else Metal
//! device 0 when this build has Metal and it can be opened, else the CPU. An explicit request
//! for a backend this build lacks, or a GPU that cannot be opened, is an
//! [`Error::DeviceUnavailable`] saying what this build offers and how to get the rest.
//!
//! CUDA runs in full f32: before the first CUDA device opens, `NVIDIA_TF32_OVERRIDE=0` is
//! set for the process (see [`full_f32_on_cuda`]); `LESION_TF32=1` allows TF32.

use std::fmt;
use std::str::FromStr;

use candle_core::{Device, DeviceLocation};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A parsed `--device` value. Serialised as its display string (`auto`, `cpu`, `cuda:0`,
/// `metal:0`), so configs round-trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum DeviceSpec {
    /// The best device this build and machine offer.
    #[default]
    Auto,
    /// The CPU.
    Cpu,
    /// The CUDA GPU with this ordinal.
    Cuda(usize),
    /// The Metal GPU with this ordinal.
    Metal(usize),
}

impl FromStr for DeviceSpec {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let spec = s.trim().to_ascii_lowercase();
        let bad = || {
            Error::InvalidOption(format!(
                "unknown device `{s}`; expected one of auto, cpu, cuda, cuda:N, metal, metal:N"
            ))
        };
        let (kind, ordinal) = match spec.split_once(':') {
            Some((kind, n)) => (kind, Some(n.parse::<usize>().map_err(|_| bad())?)),
            None => (spec.as_str(), None),
        };
        match (kind, ordinal) {
            ("auto", None) => Ok(DeviceSpec::Auto),
            ("cpu", None) => Ok(DeviceSpec::Cpu),
            ("cuda", n) => Ok(DeviceSpec::Cuda(n.unwrap_or(0))),
            ("metal", n) => Ok(DeviceSpec::Metal(n.unwrap_or(0))),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Auto => f.write_str("auto"),
            DeviceSpec::Cpu => f.write_str("cpu"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Metal(n) => write!(f, "metal:{n}"),
        }
    }
}

impl TryFrom<String> for DeviceSpec {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<DeviceSpec> for String {
    fn from(d: DeviceSpec) -> String {
        d.to_string()
    }
}

impl DeviceSpec {
    /// Opens the device this spec names (see the module docs for `auto`).
    pub fn open(self) -> Result<Device> {
        match self {
            DeviceSpec::Cpu => Ok(Device::Cpu),
            DeviceSpec::Auto => {
                if candle_core::utils::cuda_is_available() {
                    full_f32_on_cuda();
                    if let Ok(device) = open_gpu(self, || Device::new_cuda(0)) {
                        return Ok(device);
                    }
                }
                if candle_core::utils::metal_is_available() {
                    if let Ok(device) = open_gpu(self, || Device::new_metal(0)) {
                        return Ok(device);
                    }
                }
                Ok(Device::Cpu)
            }
            DeviceSpec::Cuda(n) => {
                if !candle_core::utils::cuda_is_available() {
                    return Err(not_built(self, "CUDA", "cuda"));
                }
                full_f32_on_cuda();
                open_gpu(self, || Device::new_cuda(n))
            }
            DeviceSpec::Metal(n) => {
                if !candle_core::utils::metal_is_available() {
                    return Err(not_built(self, "Metal", "metal"));
                }
                open_gpu(self, || Device::new_metal(n))
            }
        }
    }
}

/// Parses and opens a `--device` value: `auto|cpu|cuda|cuda:N|metal|metal:N`.
pub fn parse_device(spec: &str) -> Result<Device> {
    spec.parse::<DeviceSpec>()?.open()
}

/// The backends compiled into this build, e.g. `["cpu", "cuda"]`. Whether a GPU is actually
/// present is only known by opening it.
pub fn compiled_backends() -> Vec<&'static str> {
    let mut backends = vec!["cpu"];
    if candle_core::utils::cuda_is_available() {
        backends.push("cuda");
    }
    if candle_core::utils::metal_is_available() {
        backends.push("metal");
    }
    backends
}

/// A one-line description for logs: `cpu (2 threads, avx512)`, `cuda:0 (f32)`, `metal:0`.
/// On CUDA it says whether cuDNN/cuBLAS may use TF32 (see [`full_f32_on_cuda`]).
pub fn describe(device: &Device) -> String {
    match device.location() {
        DeviceLocation::Cpu => {
            let mut extras = vec![format!("{} threads", candle_core::utils::get_num_threads())];
            // The widest SIMD found at run time: gemm (our convolutions) dispatches on it,
            // whatever the compile-time target features.
            #[cfg(target_arch = "x86_64")]
            if std::arch::is_x86_feature_detected!("avx512f") {
                extras.push("avx512".into());
            } else if std::arch::is_x86_feature_detected!("avx2") {
                extras.push("avx2".into());
            }
            if candle_core::utils::with_neon() {
                extras.push("neon".into());
            }
            if candle_core::utils::has_mkl() {
                extras.push("mkl".into());
            }
            if candle_core::utils::has_accelerate() {
                extras.push("accelerate".into());
            }
            format!("cpu ({})", extras.join(", "))
        }
        DeviceLocation::Cuda { gpu_id } => {
            let tf32_off = std::env::var("NVIDIA_TF32_OVERRIDE").as_deref() == Ok("0");
            let math = if tf32_off { "f32" } else { "TF32 allowed" };
            format!("cuda:{gpu_id} ({math})")
        }
        DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

fn not_built(spec: DeviceSpec, name: &str, feature: &str) -> Error {
    Error::DeviceUnavailable {
        requested: spec.to_string(),
        reason: format!(
            "{name} requested but this binary was built without the `{feature}` feature; \
             available: {}. Rebuild with `--features {feature}`, or pass `--device cpu`",
            compiled_backends().join(", ")
        ),
    }
}

/// Keeps CUDA's f32 arithmetic f32. cuDNN's default math mode runs f32 convolutions on
/// TF32 tensor cores (10-bit mantissa) on Ampere and later GPUs; on an H200 that put the
/// parity test's eval logits 1e-3 (relative) from PyTorch's f32 values, 1000x the CPU's
/// error, and made training's results depend on the GPU model. cuDNN and cuBLAS read
/// `NVIDIA_TF32_OVERRIDE` when they create their handles, which candle does on first use,
/// after this. A value the user set is left alone; `LESION_TF32=1` (or `on`) skips this and
/// lets the libraries choose, for speed (PyTorch's default for convolutions).
///
/// It writes the process environment, so it runs where a device is opened: at start-up,
/// before any other thread of ours reads the environment.
pub fn full_f32_on_cuda() {
    let tf32_allowed = matches!(std::env::var("LESION_TF32").as_deref(), Ok("1" | "on"));
    if !tf32_allowed && std::env::var_os("NVIDIA_TF32_OVERRIDE").is_none() {
        std::env::set_var("NVIDIA_TF32_OVERRIDE", "0");
    }
}

/// Opens a GPU, turning both errors and panics into [`Error::DeviceUnavailable`]: GPU
/// runtimes are loaded dynamically, and a missing driver library can panic inside the
/// bindings rather than return an error.
fn open_gpu(
    spec: DeviceSpec,
    open: impl FnOnce() -> candle_core::Result<Device>,
) -> Result<Device> {
    let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(open));
    let reason = match outcome {
        Ok(Ok(device)) => return Ok(device),
        Ok(Err(e)) => e.to_string(),
        Err(panic) => panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "the GPU runtime panicked".into()),
    };
    Err(Error::DeviceUnavailable {
        requested: spec.to_string(),
        reason: format!(
            "could not open it ({}); this build offers: {}. Is the GPU present and its driver \
             installed? Pass `--device cpu` to run on the CPU",
            reason.trim(),
            compiled_backends().join(", ")
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_specs() {
        assert_eq!("auto".parse::<DeviceSpec>().unwrap(), DeviceSpec::Auto);
        assert_eq!(" CPU ".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cpu);
        assert_eq!("cuda".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(0));
        assert_eq!("cuda:3".parse::<DeviceSpec>().unwrap(), DeviceSpec::Cuda(3));
        assert_eq!("metal".parse::<DeviceSpec>().unwrap(), DeviceSpec::Metal(0));
        for s in ["auto", "cpu", "cuda:1", "metal:0"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
        let json = serde_json::to_string(&DeviceSpec::Cuda(1)).unwrap();
        assert_eq!(json, "\"cuda:1\"");
        let back: DeviceSpec = serde_json::from_str("\"cpu\"").unwrap();
        assert_eq!(back, DeviceSpec::Cpu);
        assert!(serde_json::from_str::<DeviceSpec>("\"tpu\"").is_err());
    }

    #[test]
    fn cpu_device() {
        let device = parse_device("cpu").unwrap();
        assert!(device.is_cpu());
        assert!(
            describe(&device).starts_with("cpu ("),
            "{}",
            describe(&device)
        );
    }

    #[test]
    fn auto_falls_back_to_cpu_without_gpu_backends() {
        let device = parse_device("auto").unwrap();
        if !candle_core::utils::cuda_is_available() && !candle_core::utils::metal_is_available() {
            assert!(device.is_cpu());
        }
    }

    #[test]
    fn backend_missing_from_build_is_explained() {
        if candle_core::utils::cuda_is_available() {
            return;
        }
        let err = parse_device("cuda").unwrap_err();
        assert!(matches!(err, Error::DeviceUnavailable { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(
            msg.contains("built without the `cuda` feature"),
            "unexpected message: {msg}"
        );
        assert!(msg.contains("available: cpu"), "unexpected message: {msg}");
        assert!(msg.contains("--features cuda"), "unexpected message: {msg}");
        assert_eq!(err.exit_code(), 2);
        assert!(parse_device("cuda:1").is_err());
        if !candle_core::utils::metal_is_available() {
            let msg = parse_device("metal").unwrap_err().to_string();
            assert!(msg.contains("`metal` feature"), "unexpected message: {msg}");
        }
    }

    #[test]
    fn garbage_is_rejected() {
        for s in ["", "gpu", "cuda:", "cuda:x", "cpu:0", "cuda:-1", "auto:1"] {
            let err = parse_device(s).unwrap_err();
            assert!(matches!(err, Error::InvalidOption(_)), "{s}: {err:?}");
            assert!(
                err.to_string().contains("expected one of auto, cpu, cuda"),
                "{s}: {err}"
            );
        }
    }
}
