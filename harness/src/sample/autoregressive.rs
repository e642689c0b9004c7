//! Left-to-right decoding for AR models: greedy (temperature 0) or sampled.
//!
//! Two paths that must agree token for token:
//! - [`ArSampler::generate_batched`]: prompts are decoded in groups of at most `batch_size`
//!   (consecutive items, in order) with the model's KV cache. A group is **left-padded** to its
//!   longest prompt ([`KvCache::left_padded`]): the padding keys are hidden from every query by the
//!   attention bias, and since RoPE scores depend only on relative positions a padded row computes
//!   the logits it would compute alone (up to floating-point rounding; see the
//!   [`super`] "Padding" section). The padded prompts go through [`Llama::hidden_cached`] in one
//!   forward pass, then each step feeds one token per unfinished row. A row that finishes (eos or
//!   `max_new_tokens`) **leaves the batch**: its rows of the cache are dropped
//!   ([`KvCache::select_rows`]), so later passes do not compute it. The LM head runs on the last
//!   position only. [`ArSampler::generate_cached`] is the same path for one prompt.
//! - [`ArSampler::generate`]: one prompt through any [`Denoiser`] (use a causal
//!   [`super::ModelDenoiser`] for a model), recomputing the whole sequence at every step; slow, no
//!   cache, the reference the cached path is checked against.
//!
//! Each new token is chosen from the logits at the last position by [`super::pick_token`], whose
//! confidence (the token's plain-softmax probability) is returned per token. The batched path
//! chooses greedy tokens (temperature 0) on the device ([`super::greedy_rows`], the same choice):
//! a step copies only the chosen ids and their confidences to the host, not the (A, V) logits;
//! sampling copies the logits and draws on the host. The t-th token of
//! item `item` draws from `rng_for(seed, Purpose::Sampler, item, t)`, so outputs do not depend on
//! the batching. Decoding stops after an eos (not included in the output) or after
//! `max_new_tokens` tokens. NFE of an item counts the forward passes it took part in, the prompt
//! pass included; both paths report the same NFE.

use super::{greedy_rows, pick_token, validate_sampling, Denoiser};
use crate::config::EvalConfig;
use crate::model::params::Fwd;
use crate::model::{KvCache, Llama};
use crate::rng::{rng_for, Purpose};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};

/// AR decoding settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ArSampler {
    /// Most tokens to generate.
    pub max_new_tokens: usize,
    /// Sampling temperature (0 = greedy).
    pub temperature: f64,
    /// Keep only the k most probable tokens when sampling.
    pub top_k: Option<usize>,
    /// Keep the smallest set of most probable tokens with mass ≥ p when sampling.
    pub top_p: Option<f64>,
    /// The end-of-sequence token id.
    pub eos_id: u32,
    /// Seed of every random draw.
    pub seed: u64,
    /// Prompts per forward pass of [`ArSampler::generate_batched`] (≥ 1).
    pub batch_size: usize,
}

/// What AR decoding returns for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ArOutput {
    /// Generated ids, excluding the eos.
    pub tokens: Vec<u32>,
    /// Whether decoding stopped at an eos.
    pub hit_eos: bool,
    /// Forward passes this item took part in (the prompt pass included).
    pub nfe: usize,
    /// Per generated token, its probability under the plain softmax of the logits it was drawn
    /// from (the second value of [`pick_token`]); same length as `tokens`.
    pub confidence: Vec<f32>,
}

impl ArOutput {
    fn empty() -> Self {
        Self { tokens: Vec::new(), hit_eos: false, nfe: 0, confidence: Vec::new() }
    }
}

impl ArSampler {
    /// The sampler `eval` configures (`max_new_tokens`, `temperature`, `top_k`/`top_p` with 0 / 1
    /// meaning off, `batch_size`).
    pub fn from_eval(eval: &EvalConfig, eos_id: u32, seed: u64) -> Self {
        Self {
            max_new_tokens: eval.max_new_tokens,
            temperature: eval.temperature,
            top_k: (eval.top_k > 0).then_some(eval.top_k),
            top_p: (eval.top_p < 1.0).then_some(eval.top_p),
            eos_id,
            seed,
            batch_size: eval.batch_size,
        }
    }

    /// Greedy decoding of at most `max_new_tokens` tokens, seed 0, one prompt per forward pass.
    pub fn greedy(max_new_tokens: usize, eos_id: u32) -> Self {
        Self { max_new_tokens, temperature: 0.0, top_k: None, top_p: None, eos_id, seed: 0, batch_size: 1 }
    }

    /// Check prompt number `i` against a vocabulary of `vocab`.
    fn check(i: usize, prompt: &[u32], vocab: usize) -> Result<()> {
        if prompt.is_empty() {
            return Err(Error::msg(format!("prompt {i} is empty; AR decoding needs at least one prompt token")));
        }
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::msg(format!("prompt {i}: token {t} is outside the vocabulary of {vocab}")));
        }
        Ok(())
    }

    /// Choose token number `t` of item `item` from its last-position logits `row` (V,), on the host
    /// ([`pick_token`]), and record it in `out`; returns whether decoding goes on.
    fn next(&self, row: &[f32], item: u64, out: &mut ArOutput) -> Result<bool> {
        let mut rng = rng_for(self.seed, Purpose::Sampler, item, out.tokens.len() as u64);
        let (tok, conf) = pick_token(row, self.temperature, self.top_k, self.top_p, &mut rng)?;
        Ok(self.record(tok, conf, out))
    }

    /// Record the chosen `tok` (with its confidence) in `out`; returns whether decoding goes on.
    fn record(&self, tok: u32, conf: f32, out: &mut ArOutput) -> bool {
        if tok == self.eos_id {
            out.hit_eos = true;
            return false;
        }
        out.tokens.push(tok);
        out.confidence.push(conf);
        out.tokens.len() < self.max_new_tokens
    }

    /// Decode `prompt` with the model's KV cache: [`ArSampler::generate_batched`] of one prompt.
    /// `item` keys the random draws.
    pub fn generate_cached(&self, model: &Llama, prompt: &[u32], item: u64) -> Result<ArOutput> {
        let mut out = self.generate_batched(model, std::slice::from_ref(&prompt.to_vec()), item)?;
        out.pop().ok_or_else(|| Error::msg("AR decoding returned no output"))
    }

    /// Decode every prompt with the model's KV cache, `batch_size` consecutive prompts per forward
    /// pass (left-padded, see the module doc); prompt i uses item key `first_item + i` for its
    /// random draws. Outputs are in the order of `prompts`.
    pub fn generate_batched(&self, model: &Llama, prompts: &[Vec<u32>], first_item: u64) -> Result<Vec<ArOutput>> {
        validate_sampling(self.temperature, self.top_k, self.top_p)?;
        if self.batch_size == 0 {
            return Err(Error::config("eval.batch_size", "must be ≥ 1"));
        }
        let max_pos = model.cfg.max_position_embeddings;
        for (i, p) in prompts.iter().enumerate() {
            Self::check(i, p, model.cfg.vocab_size)?;
            // the last token fed is number max_new_tokens - 1, at position len + max_new_tokens - 2
            let need = p.len() + self.max_new_tokens.saturating_sub(1);
            if need > max_pos {
                return Err(Error::msg(format!(
                    "prompt {i}: {} tokens plus {} new tokens exceed the model's {max_pos} positions",
                    p.len(),
                    self.max_new_tokens
                )));
            }
        }
        if self.max_new_tokens == 0 {
            return Ok(vec![ArOutput::empty(); prompts.len()]);
        }
        let mut outs = Vec::with_capacity(prompts.len());
        for (g, group) in prompts.chunks(self.batch_size).enumerate() {
            outs.extend(self.run_group(model, group, first_item + (g * self.batch_size) as u64)?);
        }
        Ok(outs)
    }

    /// Decode one group of prompts together; prompt i of the group is item `first_item + i`.
    fn run_group(&self, model: &Llama, prompts: &[Vec<u32>], first_item: u64) -> Result<Vec<ArOutput>> {
        let n = prompts.len();
        let pmax = prompts.iter().map(Vec::len).max().unwrap_or(0);
        let pad: Vec<usize> = prompts.iter().map(|p| pmax - p.len()).collect();
        // Row i: pad[i] columns of token 0 (hidden from every query, any id would do), then the prompt.
        let mut flat = Vec::with_capacity(n * pmax);
        for (p, &k) in prompts.iter().zip(&pad) {
            flat.extend(std::iter::repeat_n(0u32, k));
            flat.extend_from_slice(p);
        }
        let mut cache = if pad.iter().any(|&k| k > 0) { KvCache::left_padded(pad) } else { KvCache::default() };
        let mut outs = vec![ArOutput::empty(); n];
        // `active[r]`: the group index of cache row r.
        let mut active: Vec<usize> = (0..n).collect();
        let mut ids = Tensor::from_vec(flat, (n, pmax), &model.device)?; // (A, P)
        loop {
            let h = model.hidden_cached(&ids, &mut cache)?; // (A, l, D)
            let l = h.dim(1)?;
            let last = model.logits(&h.narrow(1, l - 1, 1)?.contiguous()?, &Fwd::default())?.squeeze(1)?; // (A, V)
            let mut keep = Vec::with_capacity(active.len());
            let mut next = Vec::with_capacity(active.len());
            if self.temperature == 0.0 {
                // Greedy on the device: only the (A,) ids and confidences come back.
                for (r, (&i, (tok, conf))) in active.iter().zip(greedy_rows(&last)?).enumerate() {
                    let out = &mut outs[i];
                    out.nfe += 1;
                    if self.record(tok, conf, out) {
                        keep.push(r);
                        next.push(tok);
                    }
                }
            } else {
                let rows = last.to_dtype(DType::F32)?.to_vec2::<f32>()?; // A rows of V
                for (r, (&i, row)) in active.iter().zip(&rows).enumerate() {
                    let out = &mut outs[i];
                    out.nfe += 1;
                    if self.next(row, first_item + i as u64, out)? {
                        keep.push(r);
                        next.push(out.tokens[out.tokens.len() - 1]);
                    }
                }
            }
            if keep.is_empty() {
                break;
            }
            if keep.len() < active.len() {
                cache = cache.select_rows(&keep)?;
                active = keep.iter().map(|&r| active[r]).collect();
            }
            ids = Tensor::from_vec(next, (active.len(), 1), &model.device)?; // (A, 1)
        }
        Ok(outs)
    }

    /// Decode `prompt` through a denoiser, recomputing the whole sequence each step (no cache).
    /// For a model, pass a causal [`super::ModelDenoiser`]. `item` keys the random draws.
    pub fn generate<Dn: Denoiser + ?Sized>(&self, d: &Dn, prompt: &[u32], item: u64) -> Result<ArOutput> {
        validate_sampling(self.temperature, self.top_k, self.top_p)?;
        Self::check(0, prompt, d.vocab_size())?;
        let mut out = ArOutput::empty();
        if self.max_new_tokens == 0 {
            return Ok(out);
        }
        let mut seq = prompt.to_vec();
        loop {
            let ids = Tensor::from_slice(&seq, (1, seq.len()), &Device::Cpu)?; // (1, L)
            let logits = d.logits(&ids)?; // (1, L, V)
            out.nfe += 1;
            let row = logits.get(0)?.get(seq.len() - 1)?.to_dtype(DType::F32)?.to_vec1::<f32>()?; // (V,)
            if !self.next(&row, item, &mut out)? {
                break;
            }
            seq.push(out.tokens[out.tokens.len() - 1]);
        }
        Ok(out)
    }
}
