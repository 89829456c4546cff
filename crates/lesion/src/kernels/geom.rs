//! The shapes of one convolution ([`Geom`]) and how the im2col path plans a pass over the
//! batch ([`Plan`]).
//!
//! Input `x` `[n, c, h, w]`, weight `[o, c, kh, kw]`, output `[n, o, ho, wo]` with
//! `ho = (h + 2 * pad - kh) / stride + 1` (likewise `wo`), all NCHW; no groups or dilation.

use std::ops::Range;
use std::sync::OnceLock;

use super::parallel::{outer_parallel, split_even};
use super::switch::knob;

/// Number of sample groups the weight gradient is split into (at most one per sample): enough
/// to keep a few threads busy, few enough that the per-group partial gradients stay small.
/// Each group sums its samples in order, then the groups are added in order, so the result
/// does not depend on the thread count.
pub(super) const WGRAD_GROUPS: usize = 8;

/// Shapes of one convolution (also what `cudnn.rs` keys its algorithm choices on).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct Geom {
    pub(super) n: usize,
    pub(super) c: usize,
    pub(super) h: usize,
    pub(super) w: usize,
    pub(super) o: usize,
    pub(super) kh: usize,
    pub(super) kw: usize,
    pub(super) stride: usize,
    pub(super) pad: usize,
    pub(super) ho: usize,
    pub(super) wo: usize,
}

impl Geom {
    /// The geometry of `x` `(n, c, h, w)` convolved with `w` `(o, c, kh, kw)`, or an error
    /// naming what does not fit.
    pub(super) fn new(
        (n, c, h, w): (usize, usize, usize, usize),
        (o, ci, kh, kw): (usize, usize, usize, usize),
        stride: usize,
        pad: usize,
    ) -> candle_core::Result<Self> {
        if c != ci {
            candle_core::bail!("conv2d: input has {c} channels, weight expects {ci}");
        }
        if stride == 0 {
            candle_core::bail!("conv2d: stride must be positive");
        }
        if h + 2 * pad < kh || w + 2 * pad < kw {
            candle_core::bail!(
                "conv2d: kernel {kh}x{kw} larger than padded input {}x{}",
                h + 2 * pad,
                w + 2 * pad
            );
        }
        Ok(Self {
            n,
            c,
            h,
            w,
            o,
            kh,
            kw,
            stride,
            pad,
            ho: (h + 2 * pad - kh) / stride + 1,
            wo: (w + 2 * pad - kw) / stride + 1,
        })
    }

    /// `[n, c, h, w]`: the input (and its gradient).
    pub(super) fn x_dims(&self) -> [usize; 4] {
        [self.n, self.c, self.h, self.w]
    }

    /// `[o, c, kh, kw]`: the weight (and its gradient).
    pub(super) fn w_dims(&self) -> [usize; 4] {
        [self.o, self.c, self.kh, self.kw]
    }

    /// `[n, o, ho, wo]`: the output (and its gradient).
    pub(super) fn y_dims(&self) -> [usize; 4] {
        [self.n, self.o, self.ho, self.wo]
    }

    /// Rows of the im2col matrix (the gemm's reduction length).
    pub(super) fn k(&self) -> usize {
        self.c * self.kh * self.kw
    }

    /// Columns of the im2col matrix (output positions per channel).
    pub(super) fn cols(&self) -> usize {
        self.ho * self.wo
    }

    /// Elements of one input sample.
    pub(super) fn x_len(&self) -> usize {
        self.c * self.h * self.w
    }

    /// Elements of one output sample.
    pub(super) fn y_len(&self) -> usize {
        self.o * self.cols()
    }

    /// A 1x1 stride-1 unpadded convolution, whose im2col matrix is the sample itself.
    pub(super) fn pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }

    /// Output rows of one sample in blocks whose im2col matrix stays in a core's L2 cache
    /// (`LESION_CONV_BLOCK_KB`, 256 KB) while gemm packs it, so that it is written and read
    /// back once each in cache rather than through memory.
    pub(super) fn row_blocks(&self) -> impl Iterator<Item = Range<usize>> {
        static BLOCK_KB: OnceLock<usize> = OnceLock::new();
        let bytes = knob(&BLOCK_KB, "LESION_CONV_BLOCK_KB", 256) << 10;
        let rows = (bytes / (4 * self.k() * self.wo)).clamp(1, self.ho.max(1));
        let ho = self.ho;
        (0..ho).step_by(rows).map(move |a| a..(a + rows).min(ho))
    }

    /// How the im2col path splits a pass over the batch: chunks of about
    /// `LESION_CONV_TARGET_COLS` (1024) output positions, at least one sample each.
    pub(super) fn plan(&self) -> Plan {
        static TARGET_COLS: OnceLock<usize> = OnceLock::new();
        let target = knob(&TARGET_COLS, "LESION_CONV_TARGET_COLS", 1024);
        let per = target.div_ceil(self.cols()).clamp(1, self.n.max(1));
        let chunks = split_even(self.n, self.n.div_ceil(per));
        let outer = outer_parallel(chunks.len());
        Plan { chunks, outer }
    }
}

/// How a pass over the batch is split: chunks of consecutive samples, each handled by one
/// gemm over their im2col matrices side by side (so that small feature maps still give gemm
/// wide matrices), and whether chunks run in parallel (gemm single-threaded inside) or one
/// after another (gemm, im2col and copies parallel inside). Depends on the shapes and the
/// thread count; results depend on the shapes only.
pub(super) struct Plan {
    pub(super) chunks: Vec<Range<usize>>,
    pub(super) outer: bool,
}
