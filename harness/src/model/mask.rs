//! Attention masks: causal, full, and annealed from causal to full.
//!
//! A mask is a visibility matrix `visible[i][j]` (query `i` may attend to key `j`). The annealed
//! mask at optimizer step `s` keeps the causal part (j ≤ i) and makes each future key j > i visible
//! with probability `p = min(1, (s+1)/anneal_steps)`, one Bernoulli draw per (i, j) per step, shared
//! across the batch and heads, from a generator seeded by (run seed, step). `anneal_steps = 1` is full
//! attention from step 0. Padding is handled by a separate key mask.

use crate::rng::{rng_for, Purpose};
use candle_core::{DType, Device, Tensor};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Additive bias for a hidden key: large and finite so a row never becomes NaN.
pub const MASKED_BIAS: f32 = -1e9;

/// How queries may attend to keys.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode")]
pub enum AttentionMode {
    /// Each query sees itself and earlier positions.
    Causal,
    /// Each query sees every position.
    Full,
    /// Causal plus each future position with probability min(1, (step+1)/anneal_steps).
    Annealed {
        /// Optimizer steps over which visibility of future positions rises to 1.
        anneal_steps: u64,
    },
}

impl AttentionMode {
    /// Probability that a future key is visible at optimizer step `step`.
    pub fn future_visibility(&self, step: u64) -> f64 {
        match *self {
            AttentionMode::Causal => 0.0,
            AttentionMode::Full => 1.0,
            AttentionMode::Annealed { anneal_steps } => {
                ((step as f64 + 1.0) / anneal_steps.max(1) as f64).min(1.0)
            }
        }
    }

    /// The mode in effect at `step`: an annealed mask whose probability reached 1 is `Full`.
    pub fn at_step(&self, step: u64) -> AttentionMode {
        match self {
            AttentionMode::Annealed { .. } if self.future_visibility(step) >= 1.0 => AttentionMode::Full,
            m => *m,
        }
    }
}

/// Visibility matrix, row-major `(L, L)`: `v[i * l + j]` is true when query i sees key j.
pub fn visibility(mode: AttentionMode, l: usize, step: u64, seed: u64) -> Vec<bool> {
    let mut v = vec![false; l * l];
    match mode.at_step(step) {
        AttentionMode::Full => v.iter_mut().for_each(|x| *x = true),
        AttentionMode::Causal => {
            for i in 0..l {
                for j in 0..=i {
                    v[i * l + j] = true;
                }
            }
        }
        AttentionMode::Annealed { .. } => {
            let p = mode.future_visibility(step);
            let mut rng = rng_for(seed, Purpose::AnnealMask, step, 0);
            for i in 0..l {
                for j in 0..l {
                    // Draw for every future pair in row-major order, so the mask of a shorter
                    // sequence is not a prefix of a longer one but is reproducible for (seed, step, L).
                    v[i * l + j] = j <= i || rng.random::<f64>() < p;
                }
            }
        }
    }
    v
}

/// Render a visibility matrix as text: `#` visible, `.` hidden, one row per query.
pub fn picture(v: &[bool], l: usize) -> String {
    let mut s = String::with_capacity(l * (l + 1));
    for i in 0..l {
        for j in 0..l {
            s.push(if v[i * l + j] { '#' } else { '.' });
        }
        s.push('\n');
    }
    s
}

/// Additive attention bias for a batch, or `None` when nothing is hidden (full attention, no padding).
///
/// `key_valid`: per sequence, which key positions hold real tokens (false = padding).
/// Returns `(B, 1, L, L)` when there is padding, else `(1, 1, L, L)`, in `dtype`.
pub fn attention_bias(
    mode: AttentionMode,
    step: u64,
    seed: u64,
    l: usize,
    key_valid: Option<&[Vec<bool>]>,
    dtype: DType,
    device: &Device,
) -> candle_core::Result<Option<Tensor>> {
    let mode = mode.at_step(step);
    let has_pad = key_valid.is_some_and(|kv| kv.iter().any(|row| row.iter().take(l).any(|&x| !x)));
    if mode == AttentionMode::Full && !has_pad {
        return Ok(None);
    }
    let vis = visibility(mode, l, step, seed);
    let bias = match key_valid {
        Some(kv) if has_pad => {
            let b = kv.len();
            let mut out = vec![0f32; b * l * l];
            for (bi, row) in kv.iter().enumerate() {
                for i in 0..l {
                    for j in 0..l {
                        let ok = vis[i * l + j] && row.get(j).copied().unwrap_or(false);
                        if !ok {
                            out[(bi * l + i) * l + j] = MASKED_BIAS;
                        }
                    }
                    // A query that sees no key at all (a padded row with every visible key
                    // padded) keeps its own position, so its softmax stays finite; such a row
                    // is never scored.
                    let r = &mut out[(bi * l + i) * l..(bi * l + i + 1) * l];
                    if r.iter().all(|&x| x == MASKED_BIAS) {
                        r[i] = 0.0;
                    }
                }
            }
            Tensor::from_vec(out, (b, 1, l, l), device)?
        }
        _ => {
            let out: Vec<f32> = vis.iter().map(|&x| if x { 0.0 } else { MASKED_BIAS }).collect();
            Tensor::from_vec(out, (1, 1, l, l), device)?
        }
    };
    Ok(Some(bias.to_dtype(dtype)?))
}
