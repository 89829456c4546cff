//! Convolution forward and both backward passes on CUDA through cuDNN directly (the `cudnn`
//! feature), for f32 and f64.
//!
//! candle 0.11 runs only the forward on cuDNN, and for each call creates the descriptors,
//! asks cuDNN's heuristics for an algorithm and allocates and zeroes a fresh workspace. Its
//! backward is not cuDNN's: the weight gradient is a forward convolution whose kernel is the
//! whole output-gradient map (batch and channel axes swapped), which leaves cuDNN a few
//! thousand outputs to parallelise over a reduction of `n * ho * wo` terms. Here:
//! - forward: `cudnnConvolutionForward`;
//! - input gradient (only when the input tracks gradients): `cudnnConvolutionBackwardData`;
//! - weight gradient (only when the weight tracks): `cudnnConvolutionBackwardFilter`;
//! - each algorithm is chosen once per shape (cuDNN's heuristics, as PyTorch without
//!   `cudnn.benchmark`) and cached per thread; workspaces come uninitialised from the
//!   stream's memory pool.
//!
//! Shapes as in `gpu_conv.rs`: `x` `[n, c, h, w]`, `w` `[o, c, kh, kw]`, output
//! `[n, o, ho, wo]`, all NCHW and contiguous (the callers copy views first). Every call runs on
//! candle's stream for the device, so ordering against candle's own kernels is the stream's.
//! Results are not bitwise repeatable across runs: like PyTorch's defaults, the heuristics may
//! pick backward algorithms that accumulate with atomics.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::thread::LocalKey;

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::cudnn::{
    sys, ConvBackwardData, ConvBackwardFilter, ConvDescriptor, ConvForward, Cudnn, CudnnDataType,
    CudnnError, FilterDescriptor, TensorDescriptor,
};
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr};
use candle_core::cuda_backend::{CudaDType, CudaDevice, DeviceId};
use candle_core::{CpuStorage, CudaStorage, CustomOp2, DType, Layout, Shape, Tensor, WithDType};

use super::geom::Geom;
use super::storage::tracked_grads;

/// Which of the three cuDNN calls, with its two inputs and its output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Pass {
    /// `(x, w)` -> `y`.
    Forward,
    /// `(dy, w)` -> `dx`.
    Data,
    /// `(x, dy)` -> `dw`.
    Filter,
}

/// What an algorithm choice depends on.
type AlgoKey = (DeviceId, DType, Geom);
/// Per-pass caches of the algorithms cuDNN's heuristics chose.
type AlgoCache<A> = RefCell<HashMap<AlgoKey, A>>;

// cuDNN handles are neither Send nor Sync, so they live per thread (as candle keeps its own);
// each is bound to candle's stream of its device.
thread_local! {
    static HANDLES: RefCell<HashMap<DeviceId, Arc<Cudnn>>> = RefCell::new(HashMap::new());
    static FORWARD_ALGOS: AlgoCache<sys::cudnnConvolutionFwdAlgo_t> = RefCell::new(HashMap::new());
    static DATA_ALGOS: AlgoCache<sys::cudnnConvolutionBwdDataAlgo_t> = RefCell::new(HashMap::new());
    static FILTER_ALGOS: AlgoCache<sys::cudnnConvolutionBwdFilterAlgo_t> =
        RefCell::new(HashMap::new());
}

fn handle(dev: &CudaDevice) -> candle_core::Result<Arc<Cudnn>> {
    HANDLES.with(|h| {
        if let Some(c) = h.borrow().get(&dev.id()) {
            return Ok(c.clone());
        }
        let c = Cudnn::new(dev.cuda_stream()).map_err(candle_core::Error::wrap)?;
        h.borrow_mut().insert(dev.id(), c.clone());
        Ok(c)
    })
}

/// The algorithm `cache` holds for `key`, or `pick()`'s, remembered.
fn algorithm<A: Copy + 'static>(
    cache: &'static LocalKey<AlgoCache<A>>,
    key: AlgoKey,
    pick: impl FnOnce() -> Result<A, CudnnError>,
) -> candle_core::Result<A> {
    if let Some(a) = cache.with(|m| m.borrow().get(&key).copied()) {
        return Ok(a);
    }
    let a = pick().map_err(candle_core::Error::wrap)?;
    cache.with(|m| m.borrow_mut().insert(key, a));
    Ok(a)
}

/// The descriptors of one convolution.
struct Descriptors<T: CudnnDataType> {
    conv: ConvDescriptor<T>,
    x: TensorDescriptor<T>,
    w: FilterDescriptor<T>,
    y: TensorDescriptor<T>,
}

fn i32s<const N: usize>(v: [usize; N]) -> [i32; N] {
    v.map(|d| d as i32)
}

fn descriptors<T: CudnnDataType>(
    cudnn: &Arc<Cudnn>,
    g: &Geom,
) -> candle_core::Result<Descriptors<T>> {
    let nchw = sys::cudnnTensorFormat_t::CUDNN_TENSOR_NCHW;
    let wrap = candle_core::Error::wrap;
    let (s, p) = (g.stride as i32, g.pad as i32);
    Ok(Descriptors {
        conv: cudnn
            .create_conv2d::<T>(
                [p, p],
                [s, s],
                [1, 1],
                sys::cudnnConvolutionMode_t::CUDNN_CROSS_CORRELATION,
            )
            .map_err(wrap)?,
        x: cudnn
            .create_4d_tensor::<T>(nchw, i32s(g.x_dims()))
            .map_err(wrap)?,
        w: cudnn
            .create_4d_filter::<T>(nchw, i32s(g.w_dims()))
            .map_err(wrap)?,
        y: cudnn
            .create_4d_tensor::<T>(nchw, i32s(g.y_dims()))
            .map_err(wrap)?,
    })
}

/// An uninitialised workspace of `bytes` from the stream's pool (none for 0 bytes).
fn workspace(dev: &CudaDevice, bytes: usize) -> candle_core::Result<Option<CudaSlice<u8>>> {
    if bytes == 0 {
        return Ok(None);
    }
    // SAFETY: cuDNN only uses the workspace as scratch; it never reads what it did not write.
    Ok(Some(unsafe { dev.alloc::<u8>(bytes)? }))
}

/// The contiguous data of a storage from its layout's offset.
fn view<'a, T: CudaDType>(
    s: &'a CudaStorage,
    l: &Layout,
    op: &str,
) -> candle_core::Result<candle_core::cuda_backend::cudarc::driver::CudaView<'a, T>> {
    if !l.is_contiguous() {
        candle_core::bail!("{op}: inputs must be contiguous");
    }
    let len = l.shape().elem_count();
    Ok(s.as_cuda_slice::<T>()?
        .slice(l.start_offset()..l.start_offset() + len))
}

/// One of the three convolution passes (see [`Pass`] for its inputs).
struct CudnnConv {
    pass: Pass,
    geometry: Geom,
}

impl CudnnConv {
    fn run<T>(
        &self,
        a: &CudaStorage,
        la: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)>
    where
        T: CudaDType + CudnnDataType + DeviceRepr + WithDType,
    {
        let dev = a.device.clone();
        let g = self.geometry;
        let cudnn = handle(&dev)?;
        let d = descriptors::<T>(&cudnn, &g)?;
        let name = self.name();
        let (a, b) = (view::<T>(a, la, name)?, view::<T>(b, lb, name)?);
        let wrap = candle_core::Error::wrap;
        let key = (dev.id(), T::DTYPE, g);
        let scale = (T::from_f64(1.0), T::from_f64(0.0));
        let out_dims = match self.pass {
            Pass::Forward => g.y_dims(),
            Pass::Data => g.x_dims(),
            Pass::Filter => g.w_dims(),
        };
        // SAFETY: cuDNN writes every element of the output (beta = 0: it is not read).
        let mut out = unsafe { dev.alloc::<T>(out_dims.iter().product())? };
        match self.pass {
            Pass::Forward => {
                let op = ConvForward {
                    conv: &d.conv,
                    x: &d.x,
                    w: &d.w,
                    y: &d.y,
                };
                let algo = algorithm(&FORWARD_ALGOS, key, || op.pick_algorithm())?;
                let mut ws = workspace(&dev, op.get_workspace_size(algo).map_err(wrap)?)?;
                // SAFETY: the views and `out` hold exactly the descriptors' shapes in T.
                unsafe { op.launch(algo, ws.as_mut(), scale, &a, &b, &mut out) }.map_err(wrap)?;
            }
            Pass::Data => {
                let op = ConvBackwardData {
                    conv: &d.conv,
                    dx: &d.x,
                    w: &d.w,
                    dy: &d.y,
                };
                let algo = algorithm(&DATA_ALGOS, key, || op.pick_algorithm())?;
                let mut ws = workspace(&dev, op.get_workspace_size(algo).map_err(wrap)?)?;
                // SAFETY: as above.
                unsafe { op.launch(algo, ws.as_mut(), scale, &mut out, &b, &a) }.map_err(wrap)?;
            }
            Pass::Filter => {
                let op = ConvBackwardFilter {
                    conv: &d.conv,
                    x: &d.x,
                    dw: &d.w,
                    dy: &d.y,
                };
                let algo = algorithm(&FILTER_ALGOS, key, || op.pick_algorithm())?;
                let mut ws = workspace(&dev, op.get_workspace_size(algo).map_err(wrap)?)?;
                // SAFETY: as above.
                unsafe { op.launch(algo, ws.as_mut(), scale, &a, &mut out, &b) }.map_err(wrap)?;
            }
        }
        Ok((
            CudaStorage::wrap_cuda_slice(out, dev),
            Shape::from(out_dims.to_vec()),
        ))
    }
}

impl CustomOp2 for CudnnConv {
    fn name(&self) -> &'static str {
        match self.pass {
            Pass::Forward => "lesion_cudnn_conv2d",
            Pass::Data => "lesion_cudnn_conv2d_grad_input",
            Pass::Filter => "lesion_cudnn_conv2d_grad_weight",
        }
    }

    fn cpu_fwd(
        &self,
        _: &CpuStorage,
        _: &Layout,
        _: &CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        candle_core::bail!("{}: CUDA only", self.name())
    }

    fn cuda_fwd(
        &self,
        a: &CudaStorage,
        la: &Layout,
        b: &CudaStorage,
        lb: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        match a.dtype() {
            DType::F32 => self.run::<f32>(a, la, b, lb),
            DType::F64 => self.run::<f64>(a, la, b, lb),
            dt => candle_core::bail!("{}: unsupported dtype {dt:?}", self.name()),
        }
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        if self.pass != Pass::Forward {
            candle_core::bail!("{}: no second derivative", self.name());
        }
        let grad = grad.contiguous()?;
        let pass = |pass| CudnnConv {
            pass,
            geometry: self.geometry,
        };
        tracked_grads(
            (x, w),
            || grad.apply_op2_no_bwd(w, &pass(Pass::Data)),
            || x.apply_op2_no_bwd(&grad, &pass(Pass::Filter)),
        )
    }
}

/// Whether [`conv2d`] takes `x` and `w`: CUDA tensors of f32 or f64, the same dtype.
pub(super) fn applies(x: &Tensor, w: &Tensor) -> bool {
    x.device().is_cuda() && matches!(x.dtype(), DType::F32 | DType::F64) && w.dtype() == x.dtype()
}

/// `conv2d(x, w)` (no bias, zero padding `padding`, no dilation or groups) on cuDNN, with
/// cuDNN's backward passes for whichever argument tracks gradients.
pub(super) fn conv2d(
    x: &Tensor,
    w: &Tensor,
    stride: usize,
    padding: usize,
) -> candle_core::Result<Tensor> {
    let op = CudnnConv {
        pass: Pass::Forward,
        geometry: Geom::new(x.dims4()?, w.dims4()?, stride, padding)?,
    };
    let (x, w) = (x.contiguous()?, w.contiguous()?);
    if x.track_op() || w.track_op() {
        x.apply_op2(&w, op)
    } else {
        x.apply_op2_no_bwd(&w, &op)
    }
}
