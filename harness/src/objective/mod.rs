//! Training objectives behind one trait.
//!
//! An objective turns a padded batch into a [`Prepared`] step: the (possibly corrupted) input, the
//! attention mode, and which output rows are scored against which targets with which weights,
//! plus this micro-batch's share of the loss normaliser. The loop sums the normaliser over every
//! micro-batch of an optimizer step first, then computes each micro-batch's loss with
//! [`scored_loss`] divided by that total — so gradient accumulation normalises over the whole
//! accumulated batch. The loop never knows which objective it runs.
//!
//! The same trait owns what a model trained with the objective means at evaluation time: the
//! attention it is read under ([`Objective::eval_attention`]), how it generates
//! ([`Objective::generate`]) and how it scores answer choices ([`Objective::score_choices`]).
//! [`build`] makes the objective a config asks for; nothing else matches on the kind.

pub mod autoregressive;
pub mod config;
pub mod diffusion;

use crate::config::{EvalConfig, ObjectiveConfig};
use crate::model::params::Fwd;
use crate::model::mask::{attention_bias, AttentionMode};
use crate::model::Llama;
use crate::Result;
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};

pub use autoregressive::Autoregressive;
pub use diffusion::{Diffusion, DiffusionConfig, LossNorm, TSampling};

/// A tokenized training pair. `response` ends with the end-of-sequence token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Example {
    /// Prompt tokens: never masked, never scored.
    pub prompt: Vec<u32>,
    /// Response tokens, eos included.
    pub response: Vec<u32>,
}

/// A right-padded micro-batch, `(B, L)` row-major.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Token ids, `b * l`.
    pub ids: Vec<u32>,
    /// Batch size.
    pub b: usize,
    /// Padded length.
    pub l: usize,
    /// Prompt length of each row.
    pub prompt_len: Vec<usize>,
    /// Real (unpadded) length of each row.
    pub len: Vec<usize>,
}

impl Batch {
    /// Pad `examples` on the right with `pad_id` to the longest one.
    pub fn collate(examples: &[&Example], pad_id: u32) -> Self {
        let l = examples.iter().map(|e| e.prompt.len() + e.response.len()).max().unwrap_or(0);
        let b = examples.len();
        let mut ids = vec![pad_id; b * l];
        let mut prompt_len = Vec::with_capacity(b);
        let mut len = Vec::with_capacity(b);
        for (i, e) in examples.iter().enumerate() {
            let row = &mut ids[i * l..(i + 1) * l];
            row[..e.prompt.len()].copy_from_slice(&e.prompt);
            row[e.prompt.len()..e.prompt.len() + e.response.len()].copy_from_slice(&e.response);
            prompt_len.push(e.prompt.len());
            len.push(e.prompt.len() + e.response.len());
        }
        Self { ids, b, l, prompt_len, len }
    }

    /// Response-side tokens (eos included) of the whole batch.
    pub fn response_tokens(&self) -> usize {
        self.len.iter().zip(&self.prompt_len).map(|(l, p)| l - p).sum()
    }
}

/// One micro-batch made ready for the forward pass.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// Model input, `b * l` (diffusion: with mask tokens).
    pub input: Vec<u32>,
    /// Batch size.
    pub b: usize,
    /// Padded length.
    pub l: usize,
    /// Attention of this step.
    pub attention: AttentionMode,
    /// Optimizer step (seeds the annealed mask).
    pub step: u64,
    /// Which keys are real tokens, per row; `None` when every key is.
    pub key_valid: Option<Vec<Vec<bool>>>,
    /// Flat output rows (`i * l + pos`) that are scored.
    pub rows: Vec<u32>,
    /// Target token of each scored row.
    pub targets: Vec<u32>,
    /// Loss weight of each scored row (diffusion: 1/t, possibly / response length).
    pub weights: Vec<f32>,
    /// This micro-batch's share of the loss normaliser.
    pub denom: f64,
}

/// Loss of one micro-batch and the numbers logged beside it.
///
/// The logged numbers stay on the device until [`LossParts::read`]: reading them forces a
/// device synchronisation, which the training loop does only after the backward pass.
#[derive(Debug)]
pub struct LossParts {
    /// Σ w·CE / total normaliser: the tensor to differentiate (scalar f32).
    pub loss: Tensor,
    /// (3,) f32, detached: loss, Σ CE over scored tokens (unweighted), argmax hits.
    stats: Tensor,
    /// Scored tokens.
    pub n_scored: usize,
}

/// The numbers of [`LossParts`], on the host.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LossValues {
    /// Value of the loss.
    pub loss: f64,
    /// Σ CE over scored tokens (unweighted).
    pub ce_sum: f64,
    /// Scored tokens.
    pub n_scored: usize,
    /// Scored tokens whose target has the highest logit.
    pub n_correct: usize,
}

impl LossParts {
    /// Copy the logged numbers to the host (synchronises the device).
    pub fn read(&self) -> Result<LossValues> {
        let v: Vec<f32> = self.stats.to_vec1()?;
        Ok(LossValues { loss: v[0] as f64, ce_sum: v[1] as f64, n_scored: self.n_scored, n_correct: v[2].round() as usize })
    }
}

/// What generation returns for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated {
    /// Generated ids, excluding the eos.
    pub tokens: Vec<u32>,
    /// Forward passes spent on this prompt (NFE).
    pub nfe: usize,
    /// Whether an eos ended the output (false: the length budget ran out).
    pub hit_eos: bool,
    /// The sampler's commit confidence of each generated token, in output order (the chosen
    /// token's probability under the plain softmax when it was committed); same length as
    /// `tokens`.
    pub confidence: Vec<f32>,
}

/// The scores of one item's answer choices.
#[derive(Debug, Clone, PartialEq)]
pub struct ChoiceScores {
    /// One score per choice, in the item's order: larger = more likely given the prompt.
    pub scores: Vec<f64>,
    /// Forward passes spent on the item.
    pub nfe: usize,
    /// Standard error of each score over its Monte Carlo samples (diffusion ELBO); `None` for an
    /// exact score (AR log-probability).
    pub se: Option<Vec<f64>>,
}

/// A training objective, and how a model trained with it is read at evaluation time.
pub trait Objective: Send + Sync {
    /// Short name for logs.
    fn name(&self) -> &'static str;
    /// Corrupt / select targets for micro-batch `micro` of optimizer step `step`.
    fn prepare(&self, batch: &Batch, step: u64, micro: u64, seed: u64) -> Result<Prepared>;
    /// The attention used at evaluation and decoding time.
    fn eval_attention(&self) -> AttentionMode;
    /// Generate an answer for every prompt with the decoding settings of `eval`; the draws are
    /// seeded from `seed` and the prompt's index. Outputs are in prompt order.
    fn generate(&self, model: &Llama, prompts: &[Vec<u32>], eos_id: u32, eval: &EvalConfig, seed: u64) -> Result<Vec<Generated>>;
    /// Score each of `choices` as the answer to `prompt` (item number `item` keys the draws).
    fn score_choices(&self, model: &Llama, prompt: &[u32], choices: &[Vec<u32>], item: u64, eval: &EvalConfig, seed: u64) -> Result<ChoiceScores>;
}

/// The objective `cfg` asks for; `mask_id` is the mask token (used by diffusion only).
pub fn build(cfg: &ObjectiveConfig, mask_id: u32) -> Box<dyn Objective> {
    match cfg {
        ObjectiveConfig::Diffusion(d) => Box::new(Diffusion::new(mask_id, d.clone())),
        ObjectiveConfig::Autoregressive => Box::new(Autoregressive),
    }
}

/// Forward `p` through `model` and return Σ w·CE / `total_denom`, with unweighted CE and accuracy.
///
/// Only scored rows go through the LM head: hidden (B·L, D) → rows (N, D) → logits (N, V).
pub fn scored_loss(model: &Llama, p: &Prepared, total_denom: f64, seed: u64, ctx: &Fwd) -> Result<LossParts> {
    let dev = &model.device;
    let ids = Tensor::from_vec(p.input.clone(), (p.b, p.l), dev)?; // (B, L)
    let bias = attention_bias(p.attention, p.step, seed, p.l, p.key_valid.as_deref(), model.dtype, dev)?;
    let h = model.hidden(&ids, bias.as_ref(), ctx)?; // (B, L, D)
    if p.rows.is_empty() || total_denom <= 0.0 {
        // Nothing scored: a zero loss that still depends on the graph (no gradient flows).
        let zero = (h.sum_all()?.to_dtype(DType::F32)? * 0.0)?;
        let stats = Tensor::zeros(3, DType::F32, dev)?;
        return Ok(LossParts { loss: zero, stats, n_scored: 0 });
    }
    let d = h.dim(2)?;
    let rows = Tensor::from_vec(p.rows.clone(), p.rows.len(), dev)?;
    let hs = h.reshape((p.b * p.l, d))?.index_select(&rows, 0)?; // (N, D)
    let logits = model.logits(&hs, ctx)?; // (N, V)
    weighted_ce(&logits, p, total_denom)
}

/// [`scored_loss`] from full logits (B, L, V) already computed: picks the scored rows, then
/// Σ w·CE / `total_denom`. Used by tests with hand-set logits.
pub fn loss_from_logits(logits: &Tensor, p: &Prepared, total_denom: f64) -> Result<LossParts> {
    let (b, l, v) = logits.dims3()?;
    let dev = logits.device();
    let rows = Tensor::from_vec(p.rows.clone(), p.rows.len(), dev)?;
    let picked = logits.reshape((b * l, v))?.index_select(&rows, 0)?; // (N, V)
    weighted_ce(&picked, p, total_denom)
}

/// Σ w·CE / `total_denom` over the scored rows' logits (N, V), in f32, with the unweighted CE
/// sum and the argmax hits beside it.
fn weighted_ce(logits: &Tensor, p: &Prepared, total_denom: f64) -> Result<LossParts> {
    let dev = logits.device();
    let vocab = logits.dim(1)?;
    if let Some(&bad) = p.targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(crate::Error::msg(format!("target token {bad} is outside the vocabulary of {vocab}")));
    }
    let t = Tensor::from_vec(p.targets.clone(), p.targets.len(), dev)?; // (N,)
    let (ce, hits) = crate::kernels::ce::cross_entropy(logits, &t)?; // (N,), (N,)
    let w = Tensor::from_vec(p.weights.clone(), p.weights.len(), dev)?;
    let loss = ((&ce * w)?.sum_all()? / total_denom)?;
    let stats = Tensor::stack(&[loss.detach(), ce.detach().sum_all()?, hits.sum_all()?], 0)?; // (3,)
    Ok(LossParts { loss, stats, n_scored: p.rows.len() })
}

/// Per-row cross-entropy of `logits` (N, V) against `targets`, and how many argmaxes hit.
pub fn token_ce(logits: &Tensor, targets: &[u32]) -> Result<(Tensor, usize)> {
    let vocab = logits.dim(1)?;
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(crate::Error::msg(format!("target token {bad} is outside the vocabulary of {vocab}")));
    }
    let t = Tensor::from_vec(targets.to_vec(), targets.len(), logits.device())?;
    let (ce, hits) = crate::kernels::ce::cross_entropy(logits, &t)?;
    let correct = hits.sum_all()?.to_scalar::<f32>()?.round() as usize;
    Ok((ce, correct))
}

/// Key validity for right-padded rows (None when no row is padded).
pub(crate) fn key_valid(batch: &Batch) -> Option<Vec<Vec<bool>>> {
    if batch.len.iter().all(|&n| n == batch.l) {
        return None;
    }
    Some(batch.len.iter().map(|&n| (0..batch.l).map(|j| j < n).collect()).collect())
}
