//! Masked (absorbing-state) diffusion SFT.
//!
//! Per sequence: draw t in the band [max(eps, t_min), t_max] ([0.001, 1] by default; `uniform`,
//! `stratified` per micro-batch, `antithetic` across the accumulated batch, or `logit_normal`);
//! mask each maskable (response-side) token with probability t; score the masked tokens with
//! weight w(t) = 1/t (the ELBO weight of the linear schedule; `weight = "uniform"`: 1), eos
//! targets times `eos_weight`, and divide by the chosen normaliser. With `complementary`, each
//! sequence is also scored under the complement of its mask (at time 1 − t) in the same step. With `shift`, the output at
//! position i predicts token i+1 (an AR model's next-token head is reused unchanged); without it,
//! the output at i predicts token i. The attention goes from causal to full over `anneal_steps`
//! optimizer steps by the `anneal` schedule ([`AnnealSchedule`]: a Bernoulli mask per step, a
//! growing window, or a switch). The dev NLL bound is read with the ELBO's own draws and weights
//! whatever these settings are.
//!
//! At evaluation time the model is read under the attention it ended training with
//! ([`ReadAttention`], from `eval.attention` and the run's optimizer steps: full attention once
//! annealing finished, else the annealed mask of the last step): it generates by iterative
//! denoising ([`DiffusionSampler`], reporting each token's commit confidence) and scores choices
//! by the Monte Carlo ELBO with its standard error ([`diffusion_choice_scores_se`]; block
//! diffusion and time conditioning through the objective's own bound instead), both with the
//! training `shift`.
//!
//! With `time_conditioning = "embedding"` (an ablation: the references train without it) the
//! model also sees t ([`TimeConditioning::Embedding`]): every column of a training sequence (and
//! of the dev NLL bound's) carries its t in [`Prepared::time`], and decoding gives each row the
//! masked fraction of its canvas ([`ModelDenoiser::timed`]).

use super::{key_valid, Batch, ChoiceScores, Generated, Objective, Prepared};
use crate::config::{EvalAttention, EvalConfig};
use crate::eval::likelihood::{diffusion_choice_scores_se, DiffusionLikelihood};
use crate::model::mask::{block_group, AnnealSchedule, AttentionMode, RowMask, TwoCopy};
pub use crate::model::mask::ReadAttention;
use crate::model::Llama;
use crate::sample::{DiffusionSampler, ModelDenoiser};
use crate::rng::{rng_for, Purpose};
use crate::{Error, Result};
use rand::Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::{Deserialize, Serialize};

/// How the diffusion times t of a batch are drawn: a draw s in [0, 1) mapped onto the band,
/// t = lo + (hi − lo)·s with lo = max(eps, t_min), hi = t_max ([0.001, 1] by default).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TSampling {
    /// iid: s = u.
    Uniform,
    /// Low-discrepancy across the micro-batch: s_i = (u + i/B) mod 1, one shared u per micro-batch.
    Stratified,
    /// Low-discrepancy across the whole accumulated batch of the optimizer step (MDLM's antithetic
    /// sampling): sequence i of micro-batch m has s = (u + (m·B + i)/(B·M)) mod 1, one u per step,
    /// M micro-batches per step.
    Antithetic,
    /// s = sigmoid(mean + std·z): spends samples on mid-range t. Not importance-corrected: it
    /// changes the effective weighting of the ELBO terms.
    LogitNormal,
}

/// The loss weight of a masked token of a sequence with time t (`objective.weight`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LossWeight {
    /// 1/t, the ELBO weight of the linear schedule.
    #[default]
    InvT,
    /// 1 (dllm offers both): masked-token cross-entropy, not a bound.
    Uniform,
}

/// Whether the model sees the diffusion time t (`objective.time_conditioning`). Absorbing-state
/// references (MDLM, LLaDA, SMDM) train without it: the fraction of mask tokens already tells
/// the model t, so this is an ablation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeConditioning {
    /// No time input: the model infers t from the mask tokens.
    #[default]
    None,
    /// A trainable embedding of t added to the input embeddings
    /// ([`crate::model::llama::time_features`]: 32 fixed sinusoidal features of t times a
    /// zero-initialised (D, 32) matrix, so an untrained embedding leaves the base model's outputs
    /// unchanged). Training gives every column its sequence's t; decoding gives each row
    /// t = (mask tokens in its canvas) / canvas, recomputed at every forward pass.
    Embedding,
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

/// The diffusion objective's settings: the `[objective]` table when `kind = "diffusion"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DiffusionConfig {
    /// How t is drawn: `uniform`, `stratified` or `logit_normal`.
    pub t_sampling: TSampling,
    /// `logit_normal`: mean of the normal before the sigmoid.
    pub t_logit_mean: f64,
    /// `logit_normal`: std of the normal before the sigmoid (> 0).
    pub t_logit_std: f64,
    /// Smallest t, in (0, 1). The references use 1e-3.
    pub eps: f64,
    /// Output i predicts token i+1 (reuses an AR model's head).
    pub shift: bool,
    /// Normaliser of the weighted loss: `masked`, `response` or `batch_response`.
    pub loss_norm: LossNorm,
    /// Padding after the eos is maskable and scored (the references do; makes models
    /// over-generate eos). Default: score the one eos, not padding.
    pub score_padding: bool,
    /// Optimizer steps over which attention goes from causal to full (≥ 1; 1 = full from the
    /// first step).
    pub anneal_steps: u64,
    /// Lower end of the mask-ratio band (t ≥ max(eps, t_min)), in [0, 1).
    pub t_min: f64,
    /// Upper end of the mask-ratio band (t ≤ t_max), in (0, 1]; dFactory's `noise_range` 0.3–0.8
    /// is `t_min = 0.3, t_max = 0.8`.
    pub t_max: f64,
    /// Weight of a masked token: `inv_t` (1/t) or `uniform` (1).
    pub weight: LossWeight,
    /// Multiplier of the weight of eos targets (and of scored padding, which is eos): < 1
    /// down-weights them (DreamOn-style), 1 = off. Not counted differently by the normaliser.
    pub eos_weight: f64,
    /// How attention goes from causal to full over `anneal_steps`: `bernoulli` (a random mask of
    /// the future keys each step), `window` (the future keys within p·L) or `switch` (causal,
    /// then full).
    pub anneal: AnnealSchedule,
    /// Complementary masking (LLaDA 2.0, Fast-dLLM v2): each sequence appears twice in the
    /// micro-batch, with its mask at time t and with the complement of that mask over the
    /// maskable positions at time 1 − t (at least eps), so every maskable token is scored once
    /// per step; the normaliser counts both copies.
    pub complementary: bool,
    /// Block diffusion (BD3-LM, SDAR, Fast-dLLM v2): 0 = off; B ≥ 1 cuts the response into
    /// blocks of B tokens trained in one pass with the two-copy layout (noised and clean sequence
    /// side by side, [`crate::model::mask::two_copy_visibility`]): a noised block sees the clean
    /// prompt, the clean earlier blocks and itself, never a later block. Generation then decodes
    /// block by block (`eval.block_len` = B) under the block-causal reading
    /// ([`AttentionMode::Blocks`]), where the prefix cache (`eval.cache = "prefix"`) is exact.
    /// Needs `anneal_steps = 1`.
    pub block_size: usize,
    /// Timestep conditioning: `none` (the references) or `embedding` (a trainable embedding of t
    /// added to the input embeddings, [`TimeConditioning::Embedding`]); runs eagerly.
    pub time_conditioning: TimeConditioning,
}

impl Default for DiffusionConfig {
    fn default() -> Self {
        Self {
            t_sampling: TSampling::Uniform,
            t_logit_mean: 0.0,
            t_logit_std: 1.0,
            eps: 1e-3,
            shift: true,
            loss_norm: LossNorm::Masked,
            score_padding: false,
            anneal_steps: 1,
            t_min: 0.0,
            t_max: 1.0,
            weight: LossWeight::InvT,
            eos_weight: 1.0,
            anneal: AnnealSchedule::Bernoulli,
            complementary: false,
            block_size: 0,
            time_conditioning: TimeConditioning::None,
        }
    }
}

impl DiffusionConfig {
    /// The config keys (`objective.<name>`) of these settings, in declaration order.
    pub const KEYS: [&'static str; 16] = [
        "t_sampling",
        "t_logit_mean",
        "t_logit_std",
        "eps",
        "shift",
        "loss_norm",
        "score_padding",
        "anneal_steps",
        "t_min",
        "t_max",
        "weight",
        "eos_weight",
        "anneal",
        "complementary",
        "block_size",
        "time_conditioning",
    ];

    /// Whether the model is given the diffusion time ([`TimeConditioning::Embedding`]).
    pub fn time_conditioned(&self) -> bool {
        self.time_conditioning == TimeConditioning::Embedding
    }

    /// The mask-ratio band `[lo, hi]` that t is drawn in.
    pub fn band(&self) -> (f64, f64) {
        (self.eps.max(self.t_min), self.t_max)
    }

    /// The attention mode of training: `anneal` over `anneal_steps`; with blocks, the
    /// block-causal mode (its canvas set when a reading is made for a generation budget).
    pub fn train_attention(&self) -> AttentionMode {
        if self.block_size > 0 {
            return AttentionMode::Blocks { size: self.block_size, canvas: 0 };
        }
        self.anneal.mode(self.anneal_steps)
    }

    /// Range checks; the first problem is returned, naming its key.
    // The negated comparisons are deliberate: `!(x > 0.0)` also rejects NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord)]
    pub fn validate(&self) -> Result<()> {
        if !(self.eps > 0.0 && self.eps < 1.0) {
            return Err(Error::config("objective.eps", "must be in (0, 1)"));
        }
        if self.anneal_steps == 0 {
            return Err(Error::config("objective.anneal_steps", "must be ≥ 1 (1 = full attention from the start)"));
        }
        if !(self.t_logit_std > 0.0) {
            return Err(Error::config("objective.t_logit_std", "must be > 0"));
        }
        if !(self.t_min >= 0.0 && self.t_min < 1.0) {
            return Err(Error::config("objective.t_min", "must be in [0, 1)"));
        }
        if !(self.t_max > 0.0 && self.t_max <= 1.0) {
            return Err(Error::config("objective.t_max", "must be in (0, 1]"));
        }
        let (lo, hi) = self.band();
        if !(lo < hi) {
            return Err(Error::config("objective.t_max", format!("must exceed the band's lower end max(eps, t_min) = {lo}")));
        }
        if !(self.eos_weight >= 0.0 && self.eos_weight.is_finite()) {
            return Err(Error::config("objective.eos_weight", "must be ≥ 0"));
        }
        if self.block_size > 0 && self.anneal_steps != 1 {
            return Err(Error::config(
                "objective.block_size",
                format!("block diffusion trains under its own block-causal mask, not an annealed one: set objective.anneal_steps = 1 (it is {})", self.anneal_steps),
            ));
        }
        Ok(())
    }
}

impl ReadAttention {
    /// The reading `choice` means for a model trained with `anneal_steps` for `trained_steps`
    /// optimizer steps (`None`: an untrained base model, read with full attention) by a run
    /// seeded `seed`. `trained`: the mode of the last step, `trained_steps − 1`; once annealing
    /// finished that is full attention.
    pub fn resolve(choice: EvalAttention, train: AttentionMode, trained_steps: Option<u64>, seed: u64) -> Self {
        match (choice, trained_steps) {
            (EvalAttention::Full, _) | (EvalAttention::Trained, None) => Self::FULL,
            (EvalAttention::Causal, _) => Self::CAUSAL,
            (EvalAttention::Trained, Some(n)) => {
                let step = n.saturating_sub(1);
                match train.at_step(step) {
                    AttentionMode::Full => Self::FULL,
                    AttentionMode::Causal => Self::CAUSAL,
                    _ => Self { mode: train, step, seed },
                }
            }
        }
    }
}

/// The diffusion objective: its settings, the mask token and how the model is read at
/// evaluation time.
#[derive(Debug, Clone)]
pub struct Diffusion {
    /// Mask token id.
    pub mask_id: u32,
    /// The settings, as configured (the one place `shift` and the rest live).
    pub cfg: DiffusionConfig,
    /// The attention of evaluation and decoding ([`ReadAttention::FULL`] from [`Diffusion::new`]).
    pub read: ReadAttention,
    /// Micro-batches per optimizer step (the `antithetic` draw spans them); 1 from [`Diffusion::new`].
    pub accum: usize,
}

impl Diffusion {
    /// The objective for `cfg` with mask token `mask_id`, read with full attention at evaluation.
    pub fn new(mask_id: u32, cfg: DiffusionConfig) -> Self {
        Self { mask_id, cfg, read: ReadAttention::FULL, accum: 1 }
    }

    /// The same objective for optimizer steps of `micro_batches` micro-batches.
    pub fn accumulating(self, micro_batches: usize) -> Self {
        Self { accum: micro_batches.max(1), ..self }
    }

    /// The same objective read under `read` at evaluation time.
    pub fn reading(self, read: ReadAttention) -> Self {
        Self { read, ..self }
    }

    /// Draw the times of a micro-batch of `b` sequences.
    pub fn sample_t(&self, b: usize, seed: u64, step: u64, micro: u64) -> Result<Vec<f64>> {
        let mut rng = rng_for(seed, Purpose::Time, step, micro);
        let (lo, hi) = self.cfg.band();
        let at = |s: f64| lo + (hi - lo) * s;
        let t: Vec<f64> = match self.cfg.t_sampling {
            TSampling::Uniform => (0..b).map(|_| at(rng.random::<f64>())).collect(),
            TSampling::Stratified => {
                let u: f64 = rng.random();
                (0..b).map(|i| at((u + i as f64 / b as f64) % 1.0)).collect()
            }
            TSampling::Antithetic => {
                // one u per optimizer step, shared by its micro-batches
                let u: f64 = rng_for(seed, Purpose::Time, step, u64::MAX).random();
                let n = (b * self.accum) as f64;
                (0..b).map(|i| at((u + (micro as usize * b + i) as f64 / n) % 1.0)).collect()
            }
            TSampling::LogitNormal => (0..b)
                .map(|_| {
                    let z: f64 = StandardNormal.sample(&mut rng);
                    at(1.0 / (1.0 + (-(self.cfg.t_logit_mean + self.cfg.t_logit_std * z)).exp()))
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
        let end = if self.cfg.score_padding { batch.l } else { batch.len[i] };
        batch.prompt_len[i]..end
    }

    /// Build the step from explicit times and masks (`masked[i * l + pos]`); used by `prepare` and
    /// by tests that pin a hand-worked example.
    pub fn prepare_with(&self, batch: &Batch, t: &[f64], masked: &[bool], step: u64) -> Result<Prepared> {
        let (b, l) = (batch.b, batch.l);
        let mut input = batch.ids.clone();
        let (mut rows, mut targets, mut weights, mut buckets) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut denom = 0.0;
        for i in 0..b {
            let range = self.maskable(batch, i);
            let bucket = super::t_bucket(t[i]);
            let n_maskable = range.len();
            let mut n_masked = 0usize;
            let w_t = match self.cfg.weight {
                LossWeight::InvT => 1.0 / t[i],
                LossWeight::Uniform => 1.0,
            };
            let w_seq = match self.cfg.loss_norm {
                LossNorm::Response => w_t / n_maskable.max(1) as f64,
                _ => w_t,
            };
            // the eos (the last response token) and any scored padding after it
            let eos_from = batch.len[i].saturating_sub(1);
            for pos in range {
                if !masked[i * l + pos] {
                    continue;
                }
                input[i * l + pos] = self.mask_id;
                let row = if self.cfg.shift {
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
                let w = if pos >= eos_from { w_seq * self.cfg.eos_weight } else { w_seq };
                weights.push(w as f32);
                buckets.push(bucket);
            }
            denom += match self.cfg.loss_norm {
                LossNorm::Masked => n_masked as f64,
                LossNorm::Response => 1.0,
                LossNorm::BatchResponse => n_maskable as f64,
            };
        }
        let key_valid = if self.cfg.score_padding { None } else { key_valid(batch) };
        // every column of sequence i is given its t (time-conditioned models only)
        let time = self.cfg.time_conditioned().then(|| (0..b).flat_map(|i| std::iter::repeat_n(t[i] as f32, l)).collect());
        let p = Prepared {
            input,
            b,
            l,
            attention: self.cfg.train_attention(),
            step,
            key_valid,
            mask: None,
            positions: None,
            time,
            rows,
            targets,
            weights,
            denom,
            buckets: Some(buckets),
        };
        if self.cfg.block_size > 0 {
            return Ok(self.two_copy(batch, p));
        }
        Ok(p)
    }

    /// The plain step `p` of `batch` in block diffusion's two-copy layout: each row becomes the
    /// noised sequence then the clean one (2L columns, RoPE positions 0..L twice) under
    /// [`crate::model::mask::two_copy_visibility`] ([`RowMask::TwoCopy`]). Scored rows stay in the noised copy, except that with `shift` the
    /// first token of block g ≥ 1 is read from the clean copy's column before it (the clean last
    /// token of block g − 1, which sees no later block: what block decoding reads it from).
    /// Targets, weights, buckets, the normaliser and the per-column time (both copies of a row
    /// carry its t) are the plain step's.
    fn two_copy(&self, batch: &Batch, p: Prepared) -> Prepared {
        let (b, l, size) = (batch.b, batch.l, self.cfg.block_size);
        let l2 = 2 * l;
        let mut input = Vec::with_capacity(b * l2);
        for i in 0..b {
            input.extend_from_slice(&p.input[i * l..(i + 1) * l]); // noised
            input.extend_from_slice(&batch.ids[i * l..(i + 1) * l]); // clean
        }
        let valid = (0..b).map(|i| if self.cfg.score_padding { l } else { batch.len[i] }).collect();
        let mask = RowMask::TwoCopy(TwoCopy { size, prompt_len: batch.prompt_len.clone(), valid });
        let positions: Vec<u32> = (0..b).flat_map(|_| (0..l as u32).chain(0..l as u32)).collect();
        let rows = p
            .rows
            .iter()
            .map(|&r| {
                let (i, c) = (r as usize / l, r as usize % l);
                let pos = if self.cfg.shift { c + 1 } else { c };
                let start = batch.prompt_len[i];
                let g = block_group(pos, start, size);
                let first_of_later_block = self.cfg.shift && g >= 1 && pos == start + g * size;
                (i * l2 + if first_of_later_block { l + c } else { c }) as u32
            })
            .collect();
        // both copies of a row carry its t
        let time = p.time.as_ref().map(|tc| (0..b).flat_map(|i| tc[i * l..(i + 1) * l].iter().chain(&tc[i * l..(i + 1) * l]).copied()).collect());
        Prepared { input, l: l2, key_valid: None, mask: Some(mask), positions: Some(positions), time, rows, ..p }
    }

    /// The complementary step ([`DiffusionConfig::complementary`]) from explicit times and masks
    /// of `batch`'s b sequences: rows 0..b are `prepare_with`'s, rows b..2b the same sequences
    /// with the complement of each mask over the maskable positions, at time 1 − t (≥ eps).
    pub fn prepare_complementary_with(&self, batch: &Batch, t: &[f64], masked: &[bool], step: u64) -> Result<Prepared> {
        let (b, l) = (batch.b, batch.l);
        let twice = |v: &[usize]| [v, v].concat();
        let doubled = Batch { ids: [&batch.ids[..], &batch.ids[..]].concat(), b: 2 * b, l, prompt_len: twice(&batch.prompt_len), len: twice(&batch.len) };
        let mut t2 = t.to_vec();
        t2.extend(t.iter().map(|&x| (1.0 - x).max(self.cfg.eps)));
        let mut m2 = masked.to_vec();
        m2.resize(2 * b * l, false);
        for i in 0..b {
            for pos in self.maskable(batch, i) {
                m2[(b + i) * l + pos] = !masked[i * l + pos];
            }
        }
        self.prepare_with(&doubled, &t2, &m2, step)
    }

    /// Which maskable positions of `batch` are masked (`masked[i * l + pos]`), each with
    /// probability `t[i]`, drawn from (`seed`, step, micro).
    fn draw_noise_masks(&self, batch: &Batch, t: &[f64], seed: u64, step: u64, micro: u64) -> Vec<bool> {
        let mut rng = rng_for(seed, Purpose::NoiseMask, step, micro);
        let mut masked = vec![false; batch.b * batch.l];
        for (i, &ti) in t.iter().enumerate() {
            for pos in self.maskable(batch, i) {
                masked[i * batch.l + pos] = rng.random::<f64>() < ti;
            }
        }
        masked
    }

    /// The ELBO bound's step from explicit times and masks: the masked response tokens (never
    /// padding) with weight 1/t, normalised by the response tokens (eos included), read under
    /// the evaluation attention. So `scored_loss(..)` summed over batches and divided by the
    /// summed `denom` estimates `E_t[(1/t)·Σ_masked CE] / response tokens`, the per-token bound
    /// on the negative log-likelihood, whatever `loss_norm` and `score_padding` training used.
    /// Used by [`Objective::prepare_nll`] and by tests that pin a hand-worked value.
    pub fn prepare_nll_with(&self, batch: &Batch, t: &[f64], masked: &[bool], step: u64) -> Result<Prepared> {
        let mut p = self.bound().prepare_with(batch, t, masked, step)?;
        p.attention = self.eval_attention();
        Ok(p)
    }

    /// These settings with the bound's normaliser, weights and draws: response tokens only,
    /// per-token normalisation, weight 1/t with the eos unweighted, t stratified uniform on
    /// `[eps, 1]` whatever band training used (each sequence's t is marginally uniform, so the
    /// estimate is unbiased up to the `eps` truncation, with less variance than iid draws).
    fn bound(&self) -> Diffusion {
        let cfg = DiffusionConfig {
            loss_norm: LossNorm::BatchResponse,
            score_padding: false,
            t_sampling: TSampling::Stratified,
            t_min: 0.0,
            t_max: 1.0,
            weight: LossWeight::InvT,
            eos_weight: 1.0,
            complementary: false,
            ..self.cfg.clone()
        };
        Diffusion::new(self.mask_id, cfg)
    }
}

impl Objective for Diffusion {
    fn name(&self) -> &'static str {
        "diffusion"
    }

    fn prepare(&self, batch: &Batch, step: u64, micro: u64, seed: u64) -> Result<Prepared> {
        let t = self.sample_t(batch.b, seed, step, micro)?;
        let masked = self.draw_noise_masks(batch, &t, seed, step, micro);
        if self.cfg.complementary {
            return self.prepare_complementary_with(batch, &t, &masked, step);
        }
        self.prepare_with(batch, &t, &masked, step)
    }

    fn rows_per_sequence(&self) -> usize {
        if self.cfg.complementary {
            2
        } else {
            1
        }
    }

    fn prepare_nll(&self, batch: &Batch, step: u64, micro: u64, seed: u64) -> Result<Prepared> {
        let bound = self.bound();
        let t = bound.sample_t(batch.b, seed, step, micro)?;
        let masked = bound.draw_noise_masks(batch, &t, seed, step, micro);
        self.prepare_nll_with(batch, &t, &masked, step)
    }

    /// The mode of [`Diffusion::read`] at its step: `Full` or `Causal`, or `Annealed` for a partly
    /// annealed model (whose mask is then the draw of `read.step`, which `generate` and
    /// `score_choices` use; a caller holding only this mode sees the annealing probability at its
    /// own step).
    fn eval_attention(&self) -> AttentionMode {
        self.read.mode.at_step(self.read.step)
    }

    fn generate(&self, model: &Llama, prompts: &[Vec<u32>], eos_id: u32, eval: &EvalConfig, seed: u64) -> Result<Vec<Generated>> {
        let mut sampler = DiffusionSampler::from_eval(eval, self.cfg.shift, self.mask_id, eos_id, seed);
        let mut read = self.read;
        if self.cfg.block_size > 0 {
            // block by block, each block seeing the committed ones only (the prefix cache is exact)
            sampler.block_len = Some(self.cfg.block_size);
            if let AttentionMode::Blocks { size, .. } = read.mode {
                read.mode = AttentionMode::Blocks { size, canvas: sampler.max_new_tokens };
            }
        }
        let mut denoiser = ModelDenoiser::reading(model, read);
        if self.cfg.time_conditioned() {
            // each row's t: the masked fraction of its canvas, at every forward pass
            denoiser = denoiser.timed(self.mask_id, sampler.max_new_tokens);
        }
        let outs = sampler.generate(&denoiser, prompts, 0)?;
        Ok(outs.into_iter().map(|o| Generated { tokens: o.tokens, nfe: o.nfe, hit_eos: o.hit_eos, confidence: o.confidence }).collect())
    }

    fn score_choices(&self, model: &Llama, prompt: &[u32], choices: &[Vec<u32>], item: u64, eval: &EvalConfig, seed: u64) -> Result<ChoiceScores> {
        let base = DiffusionLikelihood { mask_id: self.mask_id, shift: self.cfg.shift, n_samples: eval.mc_samples, batch: eval.batch_size.max(1) * 4, seed };
        let cfg = base.for_item(item);
        if self.cfg.block_size > 0 || self.cfg.time_conditioned() {
            return self.bound_choice_scores(model, prompt, choices, &cfg);
        }
        let (scores, se) = diffusion_choice_scores_se(model, prompt, choices, &cfg, self.read)?;
        Ok(ChoiceScores { scores, nfe: choices.len() * cfg.n_samples.div_ceil(cfg.batch), se: Some(se) })
    }
}

impl Diffusion {
    /// Choice scores through the objective's own bound, for the layouts the likelihood module's
    /// scorer does not know (block diffusion's two copies, a time-conditioned model's time
    /// input): the Monte Carlo ELBO of each choice — the bound's draws
    /// ([`Objective::prepare_nll`]: t stratified over the samples, weight 1/t, the two-copy layout
    /// and the per-column time when configured) — as −Σ 1/t·CE per sample, averaged over
    /// `cfg.n_samples` samples, with its standard error. The choices of an item share the
    /// draws' seed.
    fn bound_choice_scores(&self, model: &Llama, prompt: &[u32], choices: &[Vec<u32>], cfg: &DiffusionLikelihood) -> Result<ChoiceScores> {
        use crate::eval::likelihood::standard_error;
        let (mut scores, mut se, mut nfe) = (Vec::with_capacity(choices.len()), Vec::with_capacity(choices.len()), 0);
        for c in choices {
            let ex = super::Example { prompt: prompt.to_vec(), response: c.clone() };
            let mut per_sample = Vec::with_capacity(cfg.n_samples);
            let mut done = 0;
            while done < cfg.n_samples {
                let n = cfg.batch.min(cfg.n_samples - done);
                let batch = Batch::collate(&vec![&ex; n], self.mask_id);
                let p = self.prepare_nll(&batch, 0, done as u64, cfg.seed)?;
                let ce = super::scored::row_ce(model, &p, cfg.seed)?;
                let mut sums = vec![0.0f64; n];
                for ((r, w), x) in p.rows.iter().zip(&p.weights).zip(ce) {
                    sums[*r as usize / p.l] += (*w as f64) * x as f64; // Σ 1/t·CE of each sample
                }
                per_sample.extend(sums.into_iter().map(|s| -s));
                done += n;
                nfe += 1;
            }
            scores.push(per_sample.iter().sum::<f64>() / per_sample.len() as f64);
            se.push(standard_error(&per_sample));
        }
        Ok(ChoiceScores { scores, nfe, se: Some(se) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ddm(cfg: DiffusionConfig) -> Diffusion {
        Diffusion::new(9, cfg)
    }

    #[test]
    fn every_scheme_draws_inside_the_band() {
        for t_sampling in [TSampling::Uniform, TSampling::Stratified, TSampling::Antithetic, TSampling::LogitNormal] {
            let d = ddm(DiffusionConfig { t_sampling, t_min: 0.3, t_max: 0.8, ..Default::default() });
            let t: Vec<f64> = (0..50).flat_map(|s| d.sample_t(16, 4, s, 0).unwrap()).collect();
            assert!(t.iter().all(|&x| (0.3..=0.8).contains(&x)), "{t_sampling:?}");
            let (lo, hi) = (t.iter().cloned().fold(1.0, f64::min), t.iter().cloned().fold(0.0, f64::max));
            assert!(lo < 0.4 && hi > 0.7, "{t_sampling:?} spans the band: [{lo}, {hi}]");
        }
        // the default band is [eps, 1]: today's draws, unchanged
        let d = ddm(DiffusionConfig::default());
        assert_eq!(d.cfg.band(), (1e-3, 1.0));
        let e = ddm(DiffusionConfig { t_min: 0.5, t_max: 0.4, ..Default::default() }).cfg.validate().unwrap_err().to_string();
        assert!(e.contains("objective.t_max"), "{e}");
        assert!(DiffusionConfig { t_min: 1.0, ..Default::default() }.validate().unwrap_err().to_string().contains("objective.t_min"));
        assert!(DiffusionConfig { eos_weight: -1.0, ..Default::default() }.validate().unwrap_err().to_string().contains("objective.eos_weight"));
    }

    #[test]
    fn antithetic_times_are_stratified_across_the_accumulated_batch() {
        // 3 micro-batches of 4: the 12 draws of a step, sorted, are spaced exactly 1/12 apart on
        // the band, while one micro-batch alone is not stratified on its own grid of 1/4.
        let d = ddm(DiffusionConfig { t_sampling: TSampling::Antithetic, eps: 1e-3, ..Default::default() }).accumulating(3);
        let (lo, hi) = d.cfg.band();
        for step in [0u64, 7] {
            let mut s: Vec<f64> = (0..3).flat_map(|m| d.sample_t(4, 11, step, m).unwrap()).map(|t| (t - lo) / (hi - lo)).collect();
            s.sort_by(|a, b| a.partial_cmp(b).unwrap());
            for w in s.windows(2) {
                assert!((w[1] - w[0] - 1.0 / 12.0).abs() < 1e-9, "step {step}: {s:?}");
            }
        }
        // another step draws another offset
        assert_ne!(d.sample_t(4, 11, 0, 0).unwrap(), d.sample_t(4, 11, 1, 0).unwrap());
    }

    #[test]
    fn uniform_weight_and_eos_weight_change_only_the_weights() {
        // one row: prompt 2, response of 3 (the last is the eos), every response token masked
        let batch = Batch { ids: vec![1, 2, 3, 4, 5], b: 1, l: 5, prompt_len: vec![2], len: vec![5] };
        let masked = vec![false, false, true, true, true];
        let base = ddm(DiffusionConfig::default()).prepare_with(&batch, &[0.25], &masked, 0).unwrap();
        assert_eq!(base.weights, vec![4.0, 4.0, 4.0], "1/t");
        let uni = ddm(DiffusionConfig { weight: LossWeight::Uniform, ..Default::default() }).prepare_with(&batch, &[0.25], &masked, 0).unwrap();
        assert_eq!(uni.weights, vec![1.0, 1.0, 1.0]);
        let eos = ddm(DiffusionConfig { eos_weight: 0.5, ..Default::default() }).prepare_with(&batch, &[0.25], &masked, 0).unwrap();
        assert_eq!(eos.weights, vec![4.0, 4.0, 2.0], "the eos target (position 4) is halved");
        assert_eq!((eos.rows.clone(), eos.targets.clone(), eos.denom), (base.rows.clone(), base.targets.clone(), base.denom));
        // the NLL bound ignores both
        for cfg in [DiffusionConfig { weight: LossWeight::Uniform, ..Default::default() }, DiffusionConfig { eos_weight: 0.5, t_min: 0.3, ..Default::default() }] {
            let p = ddm(cfg).prepare_nll_with(&batch, &[0.25], &masked, 0).unwrap();
            assert_eq!(p.weights, vec![4.0, 4.0, 4.0]);
        }
    }

    #[test]
    fn complementary_masks_partition_the_response_and_the_loss_is_the_sum_of_both() {
        use crate::objective::loss_from_logits;
        use candle_core::{Device, Tensor};
        // two rows, V = 4, L = 5, shift; row 1 is padded after position 3
        let batch = Batch { ids: vec![0, 1, 2, 3, 1, 2, 0, 3, 1, 0], b: 2, l: 5, prompt_len: vec![2, 1], len: vec![5, 4] };
        let masked = vec![false, false, true, false, true, false, true, false, true, false];
        let d = ddm(DiffusionConfig { complementary: true, ..Default::default() });
        let c = d.prepare_complementary_with(&batch, &[0.4, 0.75], &masked, 0).unwrap();
        assert_eq!((c.b, c.l), (4, 5));
        // the masks of a sequence and its copy partition its maskable positions (the response)
        for i in 0..2 {
            let range = d.maskable(&batch, i);
            for pos in 0..5 {
                let a = c.input[i * 5 + pos] == 9;
                let b = c.input[(2 + i) * 5 + pos] == 9;
                assert_eq!(a || b, range.contains(&pos), "row {i} pos {pos}: covered iff maskable");
                assert!(!(a && b), "row {i} pos {pos}: in one mask only");
            }
        }
        assert_eq!(c.rows.len(), 3 + 3, "every response token scored once: 3 + 3 response tokens");
        // the copy's time is 1 − t: weights 1/0.6 and 1/0.25
        let w_copy: Vec<f32> = c.rows.iter().zip(&c.weights).filter(|(r, _)| **r >= 10).map(|(_, w)| *w).collect();
        assert!(w_copy.iter().all(|&w| (w - 1.0 / 0.6).abs() < 1e-6 || (w - 4.0).abs() < 1e-6), "{w_copy:?}");
        // the loss equals the two single-mask losses under the shared normaliser
        let single = d.prepare_with(&batch, &[0.4, 0.75], &masked, 0).unwrap();
        let comp: Vec<bool> = (0..10).map(|k| d.maskable(&batch, k / 5).contains(&(k % 5)) && !masked[k]).collect();
        let other = d.prepare_with(&batch, &[0.6, 0.25], &comp, 0).unwrap();
        assert_eq!(c.denom, single.denom + other.denom);
        let logits = |b: usize| {
            let v: Vec<f32> = (0..b * 5 * 4).map(|k| ((k * 7 % 11) as f32 - 5.0) / 3.0).collect();
            Tensor::from_vec(v, (b, 5, 4), &Device::Cpu).unwrap()
        };
        let l4 = logits(4);
        let both = loss_from_logits(&l4, &c, c.denom).unwrap().read().unwrap().loss;
        let a = loss_from_logits(&l4.narrow(0, 0, 2).unwrap(), &single, c.denom).unwrap().read().unwrap().loss;
        let b = loss_from_logits(&l4.narrow(0, 2, 2).unwrap(), &other, c.denom).unwrap().read().unwrap().loss;
        assert!((both - (a + b)).abs() < 1e-5, "{both} vs {a} + {b}");
        assert_eq!(d.rows_per_sequence(), 2);
    }

    #[test]
    fn the_anneal_schedule_sets_the_training_attention_and_its_reading() {
        let d = ddm(DiffusionConfig { anneal: AnnealSchedule::Switch, anneal_steps: 10, ..Default::default() });
        let batch = Batch { ids: vec![1, 2, 3], b: 1, l: 3, prompt_len: vec![1], len: vec![3] };
        let p = d.prepare_with(&batch, &[0.5], &[false, true, true], 0).unwrap();
        assert_eq!(p.attention, AttentionMode::Switch { anneal_steps: 10 });
        // read as trained: causal before the switch, full after it
        assert_eq!(ReadAttention::resolve(EvalAttention::Trained, d.cfg.train_attention(), Some(5), 0), ReadAttention::CAUSAL);
        assert_eq!(ReadAttention::resolve(EvalAttention::Trained, d.cfg.train_attention(), Some(10), 0), ReadAttention::FULL);
        let w = AnnealSchedule::Window.mode(10);
        let r = ReadAttention::resolve(EvalAttention::Trained, w, Some(5), 3);
        assert_eq!((r.mode, r.step), (w, 4));
    }
}
