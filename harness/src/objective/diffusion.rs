//! Masked (absorbing-state) diffusion SFT.
//!
//! Per sequence: draw t in [eps, 1]; mask each maskable (response-side) token with probability t;
//! score the masked tokens with weight w(t) = 1/t (the ELBO weight of the linear schedule) and
//! divide by the chosen normaliser. With `shift`, the output at position i predicts token i+1
//! (an AR model's next-token head is reused unchanged); without it, the output at i predicts token i.
//! The attention is annealed from causal to full over `anneal_steps` optimizer steps.

use super::{key_valid, Batch, Objective, Prepared};
use crate::model::mask::AttentionMode;
use crate::rng::{rng_for, Purpose};
use crate::{Error, Result};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// How the diffusion times t of a batch are drawn.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TSampling {
    /// iid: t = eps + (1-eps)·u.
    Uniform,
    /// Low-discrepancy across the micro-batch: t_i = eps + (1-eps)·((u + i/B) mod 1), one shared u
    /// (MDLM's antithetic sampling).
    Stratified,
    /// t = eps + (1-eps)·sigmoid(mean + std·z): spends samples on mid-range t. Not
    /// importance-corrected: it changes the effective weighting of the ELBO terms.
    LogitNormal,
}

/// What the weighted loss sum is divided by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossNorm {
    /// Masked tokens in the (accumulated) batch (DiffuLLaMA).
    Masked,
    /// Each sequence's sum by its response length, then the mean over sequences (LLaDA).
    Response,
    /// Response tokens in the (accumulated) batch (SMDM, d1).
    BatchResponse,
}

/// The diffusion objective.
#[derive(Debug, Clone)]
pub struct Diffusion {
    /// Mask token id.
    pub mask_id: u32,
    /// t-sampling strategy.
    pub t_sampling: TSampling,
    /// Mean of the logit-normal density.
    pub logit_mean: f64,
    /// Std of the logit-normal density.
    pub logit_std: f64,
    /// Smallest t.
    pub eps: f64,
    /// Output i predicts token i+1.
    pub shift: bool,
    /// Normaliser.
    pub loss_norm: LossNorm,
    /// Padding after the eos is maskable and scored (and attended to).
    pub score_padding: bool,
    /// Optimizer steps from causal to full attention (1 = full from the start).
    pub anneal_steps: u64,
}

impl Diffusion {
    /// Draw the times of a micro-batch of `b` sequences.
    pub fn sample_t(&self, b: usize, seed: u64, step: u64, micro: u64) -> Result<Vec<f64>> {
        let mut rng = rng_for(seed, Purpose::Time, step, micro);
        let eps = self.eps;
        let t: Vec<f64> = match self.t_sampling {
            TSampling::Uniform => (0..b).map(|_| eps + (1.0 - eps) * rng.random::<f64>()).collect(),
            TSampling::Stratified => {
                let u: f64 = rng.random();
                (0..b).map(|i| eps + (1.0 - eps) * ((u + i as f64 / b as f64) % 1.0)).collect()
            }
            TSampling::LogitNormal => (0..b)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    let s = 1.0 / (1.0 + (-(self.logit_mean + self.logit_std * z)).exp());
                    eps + (1.0 - eps) * s
                })
                .collect(),
        };
        if t.iter().any(|x| !x.is_finite()) {
            return Err(Error::msg("non-finite diffusion time"));
        }
        Ok(t)
    }

    /// Positions of row `i` that may be masked: the response (eos included), plus padding when
    /// `score_padding`.
    pub fn maskable(&self, batch: &Batch, i: usize) -> std::ops::Range<usize> {
        let end = if self.score_padding { batch.l } else { batch.len[i] };
        batch.prompt_len[i]..end
    }

    /// Build the step from explicit times and masks (`masked[i * l + pos]`); used by `prepare` and
    /// by tests that pin a hand-worked example.
    pub fn prepare_with(&self, batch: &Batch, t: &[f64], masked: &[bool], step: u64) -> Result<Prepared> {
        let (b, l) = (batch.b, batch.l);
        let mut input = batch.ids.clone();
        let (mut rows, mut targets, mut weights) = (Vec::new(), Vec::new(), Vec::new());
        let mut denom = 0.0;
        for i in 0..b {
            let range = self.maskable(batch, i);
            let n_maskable = range.len();
            let mut n_masked = 0usize;
            let w_seq = match self.loss_norm {
                LossNorm::Response => 1.0 / (t[i] * n_maskable.max(1) as f64),
                _ => 1.0 / t[i],
            };
            for pos in range {
                if !masked[i * l + pos] {
                    continue;
                }
                input[i * l + pos] = self.mask_id;
                let row = if self.shift {
                    if pos == 0 {
                        continue; // nothing precedes position 0 to predict it
                    }
                    pos - 1
                } else {
                    pos
                };
                n_masked += 1;
                rows.push((i * l + row) as u32);
                targets.push(batch.ids[i * l + pos]);
                weights.push(w_seq as f32);
            }
            denom += match self.loss_norm {
                LossNorm::Masked => n_masked as f64,
                LossNorm::Response => 1.0,
                LossNorm::BatchResponse => n_maskable as f64,
            };
        }
        let key_valid = if self.score_padding { None } else { key_valid(batch) };
        Ok(Prepared {
            input,
            b,
            l,
            attention: AttentionMode::Annealed { anneal_steps: self.anneal_steps },
            step,
            key_valid,
            rows,
            targets,
            weights,
            denom,
        })
    }
}

impl Objective for Diffusion {
    fn name(&self) -> &'static str {
        "diffusion"
    }

    fn prepare(&self, batch: &Batch, step: u64, micro: u64, seed: u64) -> Result<Prepared> {
        let t = self.sample_t(batch.b, seed, step, micro)?;
        let mut rng = rng_for(seed, Purpose::NoiseMask, step, micro);
        let mut masked = vec![false; batch.b * batch.l];
        for (i, &ti) in t.iter().enumerate() {
            for pos in self.maskable(batch, i) {
                masked[i * batch.l + pos] = rng.random::<f64>() < ti;
            }
        }
        self.prepare_with(batch, &t, &masked, step)
    }

    fn eval_attention(&self) -> AttentionMode {
        AttentionMode::Full
    }
}
