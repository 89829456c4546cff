//! The notebook's classification head (`fc.0`, `fc.3`, `fc.6` with ReLU and dropout between)
//! and the seeded dropout RNG that makes training reproducible and resumable.

use std::sync::Mutex;

use candle_core::Tensor;
use candle_nn::VarBuilder;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::layers::Linear;
use super::Mode;
use crate::kernels;
use crate::{Error, Result};

/// Seed and position of the dropout RNG (ChaCha8), enough to resume the exact mask sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DropoutRngState {
    pub seed: u64,
    pub word_pos: u128,
}

/// The notebook's head: `fc.0` Linear(512, 256), ReLU, Dropout(p), `fc.3` Linear(256, 32),
/// ReLU, Dropout(p), `fc.6` Linear(32, K). Input `[b, 512]`, output `[b, K]`: K = 1 for two
/// classes (the notebook), the number of classes otherwise.
///
/// Dropout masks come from a seeded ChaCha8 RNG on the CPU (candle's CPU RNG cannot be
/// seeded), so training is reproducible and resumable.
#[derive(Debug)]
pub struct Head {
    fc0: Linear,
    fc3: Linear,
    fc6: Linear,
    dropout: f32,
    rng: Mutex<(u64, ChaCha8Rng)>,
}

impl Head {
    pub fn new(dropout: f32, outputs: usize, vb: VarBuilder) -> Result<Self> {
        if !(0.0..1.0).contains(&dropout) {
            return Err(Error::InvalidOption(format!(
                "head dropout must be in [0, 1), got {dropout}"
            )));
        }
        Ok(Self {
            fc0: Linear::new(512, 256, vb.pp("0"))?,
            fc3: Linear::new(256, 32, vb.pp("3"))?,
            fc6: Linear::new(32, outputs, vb.pp("6"))?,
            dropout,
            rng: Mutex::new((0, ChaCha8Rng::seed_from_u64(0))),
        })
    }

    fn drop(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        if !mode.train || self.dropout == 0.0 {
            return Ok(x.clone());
        }
        let keep = 1.0 / (1.0 - self.dropout);
        let mask: Vec<f32> = {
            let mut rng = self.rng.lock().unwrap();
            (0..x.elem_count())
                .map(|_| {
                    if rng.1.random::<f32>() < self.dropout {
                        0.0
                    } else {
                        keep
                    }
                })
                .collect()
        };
        let mask = Tensor::from_vec(mask, x.shape(), x.device())?.to_dtype(x.dtype())?;
        Ok((x * mask)?)
    }

    pub fn forward_mode(&self, x: &Tensor, mode: Mode) -> Result<Tensor> {
        let x = self.drop(&kernels::relu(&self.fc0.forward_mode(x, mode)?)?, mode)?;
        let x = self.drop(&kernels::relu(&self.fc3.forward_mode(&x, mode)?)?, mode)?;
        self.fc6.forward_mode(&x, mode)
    }

    pub fn dropout(&self) -> f32 {
        self.dropout
    }

    pub fn set_dropout_seed(&self, seed: u64) {
        *self.rng.lock().unwrap() = (seed, ChaCha8Rng::seed_from_u64(seed));
    }

    pub fn dropout_rng_state(&self) -> DropoutRngState {
        let rng = self.rng.lock().unwrap();
        DropoutRngState {
            seed: rng.0,
            word_pos: rng.1.get_word_pos(),
        }
    }

    pub fn set_dropout_rng_state(&self, state: DropoutRngState) {
        let mut rng = ChaCha8Rng::seed_from_u64(state.seed);
        rng.set_word_pos(state.word_pos);
        *self.rng.lock().unwrap() = (state.seed, rng);
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::{input, tiny_model};

    #[test]
    fn dropout_is_seeded_and_resumable() {
        let (_varmap, model) = tiny_model();
        let x = input(2, 32);
        model.set_dropout_seed(3);
        let a = model.forward_with(&x, true, None).unwrap();
        let state = model.dropout_rng_state();
        let b = model.forward_with(&x, true, None).unwrap();
        model.set_dropout_rng_state(state);
        let b2 = model.forward_with(&x, true, None).unwrap();
        assert_eq!(b.to_vec2::<f32>().unwrap(), b2.to_vec2::<f32>().unwrap());
        assert_ne!(a.to_vec2::<f32>().unwrap(), b.to_vec2::<f32>().unwrap());
    }
}
