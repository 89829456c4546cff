//! ResNet's composite units: the [`Stem`], the [`BasicBlock`] with its [`Downsample`]
//! shortcut, and a [`ResLayer`] (`layerN`) of two blocks.

use candle_core::Tensor;
use candle_nn::{ModuleT, VarBuilder};

use super::layers::{BatchNorm2d, ConvBn};
use super::{to_candle, Mode};
use crate::kernels;
use crate::Result;

/// The 1x1 strided projection shortcut (`downsample.0` conv, `downsample.1` BatchNorm).
#[derive(Debug, Clone)]
pub struct Downsample {
    inner: ConvBn,
}

impl Downsample {
    pub fn new(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            inner: ConvBn::new(in_c, out_c, 1, stride, 0, vb.pp("0"), vb.pp("1"))?,
        })
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        self.inner.forward_mode(x, mode)
    }
}

/// torchvision's `BasicBlock`: two 3x3 conv-BN pairs and a residual connection.
#[derive(Debug, Clone)]
pub struct BasicBlock {
    first: ConvBn,
    second: ConvBn,
    downsample: Option<Downsample>,
}

impl BasicBlock {
    pub fn new(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        let downsample = if stride != 1 || in_c != out_c {
            Some(Downsample::new(in_c, out_c, stride, vb.pp("downsample"))?)
        } else {
            None
        };
        Ok(Self {
            first: ConvBn::new(in_c, out_c, 3, stride, 1, vb.pp("conv1"), vb.pp("bn1"))?,
            second: ConvBn::new(out_c, out_c, 3, 1, 1, vb.pp("conv2"), vb.pp("bn2"))?,
            downsample,
        })
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = self.first.forward_act(x, mode, true)?;
        let y = self.second.forward_mode(&y, mode)?;
        let shortcut = match &self.downsample {
            Some(d) => d.forward_mode(x, mode)?,
            None => x.clone(),
        };
        Ok(kernels::add_relu(&y, &shortcut)?)
    }

    pub fn bn1(&self) -> &BatchNorm2d {
        self.first.bn()
    }

    pub fn bn2(&self) -> &BatchNorm2d {
        self.second.bn()
    }
}

impl ModuleT for BasicBlock {
    fn forward_t(&self, x: &Tensor, train: bool) -> candle_core::Result<Tensor> {
        to_candle(self.forward_mode(x, Mode { train, grad: true }))
    }
}

/// `layerN`: two basic blocks, the first of which may downsample.
#[derive(Debug, Clone)]
pub struct ResLayer {
    blocks: Vec<BasicBlock>,
}

impl ResLayer {
    pub fn new(in_c: usize, out_c: usize, stride: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            blocks: vec![
                BasicBlock::new(in_c, out_c, stride, vb.pp("0"))?,
                BasicBlock::new(out_c, out_c, 1, vb.pp("1"))?,
            ],
        })
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let mut x = x.clone();
        for block in &self.blocks {
            x = block.forward_mode(&x, mode)?;
        }
        Ok(x)
    }

    pub fn block(&self, i: usize) -> &BasicBlock {
        &self.blocks[i]
    }
}

/// The stem: `conv1` 7x7/2, `bn1`, ReLU, max-pool 3x3/2.
#[derive(Debug, Clone)]
pub struct Stem {
    conv_bn: ConvBn,
}

impl Stem {
    pub fn new(vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            conv_bn: ConvBn::new(3, 64, 7, 2, 3, vb.pp("conv1"), vb.pp("bn1"))?,
        })
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let y = self.conv_bn.forward_act(x, mode, true)?;
        Ok(kernels::max_pool2d_3x3s2p1(&y)?)
    }

    pub fn bn1(&self) -> &BatchNorm2d {
        self.conv_bn.bn()
    }
}
