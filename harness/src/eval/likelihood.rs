//! Likelihood scoring of multiple-choice answers.
//!
//! A choice is scored by a number that is larger when the model finds the answer more likely given
//! the prompt; the prediction is the argmax over choices ([`best_choice`]).
//!
//! - **AR** ([`ar_logprob`], [`ar_choice_scores`]): the exact log-probability
//!   `Σ_j log p(answer_j | prompt, answer_<j)` under causal attention; the output at position `i`
//!   predicts token `i + 1`. The prompt runs once for all choices: its last output scores every
//!   first answer token, and longer answers continue from its KV cache, batched.
//! - **Diffusion** ([`diffusion_elbo`], [`diffusion_choice_scores`]): a Monte Carlo estimate of the
//!   masked-diffusion ELBO of the answer given the prompt, as LLaDA computes it. Each of `n` samples
//!   draws a number `k` of masked answer tokens in `1..=A` (`A` = answer length), stratified over
//!   the samples ([`stratified_mask_counts`]), masks `k` answer positions chosen uniformly without
//!   replacement, runs the model under the attention it ended training with ([`ReadAttention`];
//!   full attention once annealing finished) and scores
//!   `(A / k) · Σ_{masked p} log p(answer_p | corrupted sequence)`. The estimate is the mean of the
//!   samples, its standard error the samples' standard deviation over √n ([`standard_error`];
//!   conservative, since `k` is stratified). An answer of one token (no eos) would be masked in
//!   every sample, with error 0; evaluation scores each choice followed by its eos, so every
//!   scored answer has at least two tokens. A partly annealed reading draws one future-key mask
//!   for the padded batch (from the run seed and the last step), not the mask of each training
//!   micro-batch. Its expectation, [`exact_elbo`], is
//!   `E_{k ~ U{1..A}} [ (A/k) · E_{S ⊂ answer, |S| = k} Σ_{p ∈ S} log p(x_p | x with S masked) ]`.
//!   With `shift` (DiffuLLaMA, Dream) the prediction for position `p` is read from output `p − 1`.
//!
//! ## Random draws
//! Every draw comes from [`rng_for`]`(seed, Purpose::Likelihood, counter, sub)`:
//! counter 0, sub 0 draws the stratification offset; counter 1, sub `i` draws the masked positions
//! of sample `i`. The draws depend only on (`seed`, `n_samples`, answer length), never on the
//! batch size or the tokens, so every choice of an item scored with the same seed (and of the same
//! length) sees the same mask pattern: the comparison across choices is paired. Give each item
//! its own seed with [`DiffusionLikelihood::for_item`].

use crate::error::{Error, Result};
use crate::model::params::Fwd;
use crate::model::mask::attention_bias;
use crate::model::{KvCache, Llama};
use crate::objective::diffusion::ReadAttention;
use crate::objective::{token_ce, ChoiceScores};
use crate::rng::{derive_seed, rng_for, Purpose};
use candle_core::{DType, Tensor};
use rand::seq::SliceRandom;
use rand::Rng;

/// Longest answer [`exact_elbo`] accepts: it runs `2^A − 1` corrupted sequences.
pub const EXACT_ELBO_MAX_LEN: usize = 16;

/// Sequences per forward pass in [`exact_elbo`].
const EXACT_BATCH: usize = 64;

/// RNG counter of the stratification offset.
const COUNTER_STRATA: u64 = 0;
/// RNG counter of the masked positions (sub = sample index).
const COUNTER_POSITIONS: u64 = 1;
/// RNG sub-stream used by [`DiffusionLikelihood::for_item`].
const SUB_ITEM: u64 = 2;

/// Settings of the diffusion Monte Carlo ELBO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DiffusionLikelihood {
    /// Token id that replaces masked answer tokens.
    pub mask_id: u32,
    /// Read the prediction for position `p` from output `p − 1` (DiffuLLaMA / Dream convention).
    pub shift: bool,
    /// Monte Carlo samples per answer (LLaDA uses 128). A multiple of the answer length gives
    /// every masked-token count the same number of samples.
    pub n_samples: usize,
    /// Sequences per forward pass (does not change the result beyond float rounding).
    pub batch: usize,
    /// Seed of the mask draws; use the same seed for every choice of one item.
    pub seed: u64,
}

impl DiffusionLikelihood {
    /// A copy whose seed is derived from this seed and `item` (e.g. the test item's index), so
    /// items get independent draws while the choices of one item stay paired.
    pub fn for_item(&self, item: u64) -> Self {
        Self { seed: derive_seed(self.seed, Purpose::Likelihood, item, SUB_ITEM), ..*self }
    }

    fn validate(&self, model: &Llama) -> Result<()> {
        if self.n_samples == 0 {
            return Err(Error::config("eval.mc_samples", "must be at least 1"));
        }
        if self.batch == 0 {
            return Err(Error::config("eval.batch_size", "must be at least 1"));
        }
        check_mask_id(model, self.mask_id)
    }
}

/// One Monte Carlo sample of the diffusion ELBO.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ElboSample {
    /// Number of masked answer tokens, in `1..=A`.
    pub k: usize,
    /// `(A / k) · Σ over the masked positions of log p(true token)`; always ≤ 0.
    pub estimate: f64,
}

/// Index of the largest score (the first one on ties); `None` when `scores` is empty or holds NaN.
pub fn best_choice(scores: &[f64]) -> Option<usize> {
    if scores.iter().any(|s| s.is_nan()) {
        return None;
    }
    let mut best: Option<usize> = None;
    for (i, &s) in scores.iter().enumerate() {
        match best {
            Some(b) if scores[b] >= s => {}
            _ => best = Some(i),
        }
    }
    best
}

// ---------------------------------------------------------------------------------------------
// Input checks
// ---------------------------------------------------------------------------------------------

fn check_mask_id(model: &Llama, mask_id: u32) -> Result<()> {
    if mask_id as usize >= model.cfg.vocab_size {
        return Err(Error::config(
            "model.mask_token",
            format!("mask id {mask_id} is outside the vocabulary of {} tokens", model.cfg.vocab_size),
        ));
    }
    Ok(())
}

/// Checks shared by every scorer: non-empty answer, ids in the vocabulary, a first answer token
/// that has an output to be predicted from, a length within the model's positions.
fn check_inputs(model: &Llama, prompt: &[u32], answer: &[u32], needs_prompt: bool) -> Result<()> {
    if answer.is_empty() {
        return Err(Error::msg("likelihood: the answer is empty"));
    }
    if needs_prompt && prompt.is_empty() {
        return Err(Error::msg(
            "likelihood: the prompt is empty, so no output precedes the first answer token \
             (AR and shifted diffusion scoring need at least one prompt token)",
        ));
    }
    let v = model.cfg.vocab_size;
    if let Some(&bad) = prompt.iter().chain(answer).find(|&&t| t as usize >= v) {
        return Err(Error::msg(format!("likelihood: token id {bad} is outside the vocabulary of {v} tokens")));
    }
    let l = prompt.len() + answer.len();
    if l > model.cfg.max_position_embeddings {
        return Err(Error::msg(format!(
            "likelihood: prompt + answer is {l} tokens, more than the model's {} positions",
            model.cfg.max_position_embeddings
        )));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Forward + gather
// ---------------------------------------------------------------------------------------------

/// Run `(B, L)` ids through `model` with `bias` and return, per row `b`, the sum of
/// `log p(target)` over the `(output position, target)` pairs in `picks[b]`.
///
/// Only the picked outputs go through the LM head: hidden (B·L, D) → rows (N, D) → logits (N, V).
fn sum_logprobs(
    model: &Llama,
    ids: Vec<u32>,
    b: usize,
    l: usize,
    bias: Option<&Tensor>,
    picks: &[Vec<(usize, u32)>],
) -> Result<Vec<f64>> {
    let x = Tensor::from_vec(ids, (b, l), &model.device)?; // (B, L) u32
    let h = model.hidden(&x, bias, &Fwd::default())?.detach(); // (B, L, D)
    let mut rows = Vec::new();
    let mut targets = Vec::new();
    for (i, pk) in picks.iter().enumerate() {
        for &(pos, tok) in pk {
            rows.push((i * l + pos) as u32);
            targets.push(tok);
        }
    }
    let mut lp = picked_logprobs(model, &h, rows, &targets)?.into_iter();
    let mut out = vec![0f64; b];
    for (i, pk) in picks.iter().enumerate() {
        for _ in pk {
            // `lp` has exactly one entry per pick, in the same order.
            out[i] += lp.next().ok_or_else(|| Error::msg("likelihood: fewer scores than picks"))?;
        }
    }
    Ok(out)
}

/// `log p(targets[n])` read from row `rows[n]` of the hidden states `h` (B, L, D) flattened to
/// (B·L, D): only those rows go through the LM head, (N, D) → logits (N, V).
fn picked_logprobs(model: &Llama, h: &Tensor, rows: Vec<u32>, targets: &[u32]) -> Result<Vec<f64>> {
    if rows.is_empty() {
        return Ok(Vec::new());
    }
    let (b, l, d) = h.dims3()?;
    let n = rows.len();
    let idx = Tensor::from_vec(rows, n, &model.device)?; // (N,)
    let hs = h.reshape((b * l, d))?.index_select(&idx, 0)?; // (N, D)
    let logits = model.logits(&hs, &Fwd::default())?.to_dtype(DType::F32)?; // (N, V)
    let (ce, _) = token_ce(&logits, targets)?; // (N,) = −log p(target)
    Ok(ce.to_vec1::<f32>()?.into_iter().map(|c| -(c as f64)).collect())
}

/// Output position holding the prediction for sequence position `pos`.
fn output_row(pos: usize, shift: bool) -> usize {
    if shift {
        pos - 1 // callers guarantee pos ≥ 1 (non-empty prompt)
    } else {
        pos
    }
}

// ---------------------------------------------------------------------------------------------
// Autoregressive
// ---------------------------------------------------------------------------------------------

/// `Σ_j log p(answer_j | prompt, answer_<j)` under a causal mask ([`ar_choice_scores`] of one
/// choice). Needs a non-empty prompt and answer.
pub fn ar_logprob(model: &Llama, prompt: &[u32], answer: &[u32]) -> Result<f64> {
    let s = ar_choice_scores(model, prompt, &[answer.to_vec()])?;
    s.scores.first().copied().ok_or_else(|| Error::msg("likelihood: no score for the answer"))
}

/// [`ar_logprob`] of every choice, sharing the prompt: one causal pass over `prompt` alone, whose
/// last output gives `log p` of every choice's first token (a one-token choice needs nothing
/// more), then one pass of every longer choice's other tokens, batched through copies of the
/// prompt's KV cache and right-padded (causal attention keeps the padding out of real positions).
/// `nfe` counts the passes run: 1 when every choice is one token, else 2 (0 for no choices).
pub fn ar_choice_scores(model: &Llama, prompt: &[u32], choices: &[Vec<u32>]) -> Result<ChoiceScores> {
    if choices.is_empty() {
        return Ok(ChoiceScores { scores: Vec::new(), nfe: 0, se: None });
    }
    for c in choices {
        check_inputs(model, prompt, c, true)?;
    }
    let dev = &model.device;
    let p0 = prompt.len();
    let mut cache = KvCache::default();
    let x = Tensor::from_slice(prompt, (1, p0), dev)?; // (1, P)
    let h = model.hidden_cached(&x, &mut cache)?.detach(); // (1, P, D)
    // Output p0 − 1 predicts every choice's first token.
    let firsts: Vec<u32> = choices.iter().map(|c| c[0]).collect();
    let mut scores = picked_logprobs(model, &h, vec![(p0 - 1) as u32; choices.len()], &firsts)?;
    let long: Vec<usize> = (0..choices.len()).filter(|&i| choices[i].len() > 1).collect();
    let Some(m) = long.iter().map(|&i| choices[i].len() - 1).max() else {
        return Ok(ChoiceScores { scores, nfe: 1, se: None });
    };
    // Row r feeds choice long[r]'s tokens 0..n−1 after the prompt; its output j predicts token j + 1.
    let nb = long.len();
    let pad = 0u32;
    let mut ids = Vec::with_capacity(nb * m); // (nb, m) row-major
    let (mut rows, mut targets) = (Vec::new(), Vec::new());
    for (r, &i) in long.iter().enumerate() {
        let c = &choices[i];
        ids.extend_from_slice(&c[..c.len() - 1]);
        ids.extend(std::iter::repeat_n(pad, m + 1 - c.len()));
        for (j, &t) in c.iter().enumerate().skip(1) {
            rows.push((r * m + j - 1) as u32);
            targets.push(t);
        }
    }
    let mut batch = cache.repeat_batch(nb)?;
    let x = Tensor::from_vec(ids, (nb, m), dev)?; // (nb, m)
    let h = model.hidden_cached(&x, &mut batch)?.detach(); // (nb, m, D)
    let mut lp = picked_logprobs(model, &h, rows, &targets)?.into_iter();
    for &i in &long {
        for _ in 1..choices[i].len() {
            // `lp` has exactly one entry per target, in the same order.
            scores[i] += lp.next().ok_or_else(|| Error::msg("likelihood: fewer scores than answer tokens"))?;
        }
    }
    Ok(ChoiceScores { scores, nfe: 2, se: None })
}

// ---------------------------------------------------------------------------------------------
// Diffusion: draws
// ---------------------------------------------------------------------------------------------

/// Stratified masked-token counts `k_0..k_{n−1}` in `1..=a` for `n` samples.
///
/// Rule: one shared offset `r ~ U{0, …, a−1}` (from `rng_for(seed, Likelihood, 0, 0)`), then
/// `k_i = 1 + ⌊(i·a + r) / n⌋`. As `(i, r)` runs over all `n·a` pairs, `i·a + r` takes every
/// integer in `0..n·a` once, so the mixture over samples is exactly uniform on `1..=a` for any
/// `n` (the mean of the samples is unbiased). When `n` is a multiple of `a` every `k` appears
/// exactly `n / a` times whatever `r` is; otherwise each appears ⌊n/a⌋ or ⌈n/a⌉ times.
/// The counts are non-decreasing in `i`.
pub fn stratified_mask_counts(n: usize, a: usize, seed: u64) -> Result<Vec<usize>> {
    if a == 0 {
        return Err(Error::msg("likelihood: the answer is empty"));
    }
    let mut rng = rng_for(seed, Purpose::Likelihood, COUNTER_STRATA, 0);
    let r = rng.random_range(0..a);
    let ks = (0..n)
        .map(|i| {
            // u128: i·a cannot overflow.
            let x = (i as u128) * (a as u128) + r as u128;
            1 + (x / n as u128) as usize
        })
        .collect();
    Ok(ks)
}

/// The masked answer positions (indices into the answer, sorted) of each of `n` samples:
/// sample `i` masks `k_i` ([`stratified_mask_counts`]) positions chosen uniformly without
/// replacement by shuffling `0..a` with `rng_for(seed, Likelihood, 1, i)` and keeping the first `k_i`.
pub fn draw_masks(n: usize, a: usize, seed: u64) -> Result<Vec<Vec<usize>>> {
    let ks = stratified_mask_counts(n, a, seed)?;
    let masks = ks
        .into_iter()
        .enumerate()
        .map(|(i, k)| {
            let mut rng = rng_for(seed, Purpose::Likelihood, COUNTER_POSITIONS, i as u64);
            let mut pos: Vec<usize> = (0..a).collect();
            pos.shuffle(&mut rng);
            pos.truncate(k);
            pos.sort_unstable();
            pos
        })
        .collect();
    Ok(masks)
}

// ---------------------------------------------------------------------------------------------
// Diffusion: scoring
// ---------------------------------------------------------------------------------------------

/// `Σ_{p ∈ mask} log p(answer_p | prompt ++ answer with `mask` replaced by `mask_id`)` for each
/// mask, under attention `read` (full for a fully annealed model), in forward passes of at most
/// `batch` sequences.
#[allow(clippy::too_many_arguments)]
fn masked_sums(
    model: &Llama,
    prompt: &[u32],
    answer: &[u32],
    masks: &[Vec<usize>],
    mask_id: u32,
    shift: bool,
    batch: usize,
    read: ReadAttention,
) -> Result<Vec<f64>> {
    let p0 = prompt.len();
    let l = p0 + answer.len();
    // (1, 1, L, L), or None when nothing is hidden (full attention)
    let full = attention_bias(read.mode, read.step, read.seed, l, None, model.dtype, &model.device)?;
    let mut out = Vec::with_capacity(masks.len());
    for chunk in masks.chunks(batch.max(1)) {
        let b = chunk.len();
        let mut ids = Vec::with_capacity(b * l); // (B, L) row-major
        let mut picks = Vec::with_capacity(b);
        for m in chunk {
            let start = ids.len();
            ids.extend_from_slice(prompt);
            ids.extend_from_slice(answer);
            let mut pk = Vec::with_capacity(m.len());
            for &j in m {
                let pos = p0 + j;
                ids[start + pos] = mask_id;
                pk.push((output_row(pos, shift), answer[j]));
            }
            picks.push(pk);
        }
        out.extend(sum_logprobs(model, ids, b, l, full.as_ref(), &picks)?);
    }
    Ok(out)
}

/// The per-sample Monte Carlo estimates behind [`diffusion_elbo`], in sample order (use them for
/// a standard error), with full attention. Needs a non-empty answer, and a non-empty prompt when
/// `cfg.shift`.
pub fn diffusion_elbo_samples(
    model: &Llama,
    prompt: &[u32],
    answer: &[u32],
    cfg: &DiffusionLikelihood,
) -> Result<Vec<ElboSample>> {
    diffusion_elbo_samples_under(model, prompt, answer, cfg, ReadAttention::FULL)
}

/// [`diffusion_elbo_samples`] under attention `read` (the attention the model ended training
/// with; see [`ReadAttention`]).
pub fn diffusion_elbo_samples_under(
    model: &Llama,
    prompt: &[u32],
    answer: &[u32],
    cfg: &DiffusionLikelihood,
    read: ReadAttention,
) -> Result<Vec<ElboSample>> {
    cfg.validate(model)?;
    check_inputs(model, prompt, answer, cfg.shift)?;
    let a = answer.len();
    let masks = draw_masks(cfg.n_samples, a, cfg.seed)?;
    let sums = masked_sums(model, prompt, answer, &masks, cfg.mask_id, cfg.shift, cfg.batch, read)?;
    Ok(masks
        .iter()
        .zip(sums)
        .map(|(m, s)| {
            let k = m.len();
            ElboSample { k, estimate: a as f64 / k as f64 * s }
        })
        .collect())
}

/// Monte Carlo ELBO of `answer` given `prompt`: the mean of [`diffusion_elbo_samples`]. A lower
/// bound (in expectation) on `log p(answer | prompt)` for a model that is a consistent denoiser.
pub fn diffusion_elbo(model: &Llama, prompt: &[u32], answer: &[u32], cfg: &DiffusionLikelihood) -> Result<f64> {
    let s = diffusion_elbo_samples(model, prompt, answer, cfg)?;
    Ok(s.iter().map(|x| x.estimate).sum::<f64>() / s.len() as f64)
}

/// [`diffusion_elbo`] of every choice with the same `cfg` (same seed, so choices of equal length
/// see identical mask patterns: a paired comparison).
pub fn diffusion_choice_scores(
    model: &Llama,
    prompt: &[u32],
    choices: &[Vec<u32>],
    cfg: &DiffusionLikelihood,
) -> Result<Vec<f64>> {
    Ok(diffusion_choice_scores_se(model, prompt, choices, cfg, ReadAttention::FULL)?.0)
}

/// [`diffusion_choice_scores`] under attention `read`, with each score's standard error over its
/// Monte Carlo samples ([`standard_error`]): (scores, standard errors), in choice order.
pub fn diffusion_choice_scores_se(
    model: &Llama,
    prompt: &[u32],
    choices: &[Vec<u32>],
    cfg: &DiffusionLikelihood,
    read: ReadAttention,
) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut scores = Vec::with_capacity(choices.len());
    let mut se = Vec::with_capacity(choices.len());
    for c in choices {
        let xs: Vec<f64> = diffusion_elbo_samples_under(model, prompt, c, cfg, read)?.iter().map(|x| x.estimate).collect();
        scores.push(xs.iter().sum::<f64>() / xs.len() as f64);
        se.push(standard_error(&xs));
    }
    Ok((scores, se))
}

/// Standard error of the mean of `xs`: the sample standard deviation ([`crate::stats::std_dev`])
/// over √n; 0 for fewer than two values (nothing to estimate the spread from) and for identical
/// values. For the ELBO samples this treats them as independent draws; their `k` is stratified,
/// which lowers the estimator's variance, so the reported error is conservative (an upper
/// estimate of the stratified estimator's error).
pub fn standard_error(xs: &[f64]) -> f64 {
    match crate::stats::std_dev(xs) {
        Ok(sd) => sd / (xs.len() as f64).sqrt(),
        Err(_) => 0.0,
    }
}

/// Binomial coefficient as f64 (exact for the sizes [`exact_elbo`] accepts).
fn choose(n: usize, k: usize) -> f64 {
    (0..k).fold(1.0, |acc, i| acc * (n - i) as f64 / (i + 1) as f64)
}

/// The exact expectation of the Monte Carlo ELBO, by enumerating every masked subset:
/// `Σ_{k=1}^{A} (1/A) · (A/k) · (1/C(A,k)) Σ_{|S| = k} Σ_{p ∈ S} log p(x_p | x with S masked)`.
/// Runs `2^A − 1` sequences; `A` is limited to [`EXACT_ELBO_MAX_LEN`].
pub fn exact_elbo(model: &Llama, prompt: &[u32], answer: &[u32], mask_id: u32, shift: bool) -> Result<f64> {
    check_mask_id(model, mask_id)?;
    check_inputs(model, prompt, answer, shift)?;
    let a = answer.len();
    if a > EXACT_ELBO_MAX_LEN {
        return Err(Error::msg(format!(
            "exact_elbo: answer of {a} tokens needs 2^{a} − 1 forward rows; the limit is {EXACT_ELBO_MAX_LEN} tokens"
        )));
    }
    let masks: Vec<Vec<usize>> =
        (1u32..(1u32 << a)).map(|bits| (0..a).filter(|&j| bits >> j & 1 == 1).collect()).collect();
    let sums = masked_sums(model, prompt, answer, &masks, mask_id, shift, EXACT_BATCH, ReadAttention::FULL)?;
    let total = masks
        .iter()
        .zip(sums)
        .map(|(m, s)| {
            let k = m.len();
            // (1/A) · (A/k) · 1/C(A,k)
            s / (k as f64 * choose(a, k))
        })
        .sum();
    Ok(total)
}
