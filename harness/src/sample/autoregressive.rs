//! Left-to-right decoding for AR models: greedy (temperature 0) or sampled.
//!
//! Two paths that must agree token for token:
//! - [`ArSampler::generate_cached`]: the prompt goes through [`Llama::forward_cached`] once, then one
//!   token per forward pass against the KV cache. Batch size 1 (one prompt per call): prompts of
//!   different lengths would need per-row positions in the cache, which the model does not offer.
//! - [`ArSampler::generate`]: through any [`Denoiser`] (use a causal [`super::ModelDenoiser`] for a
//!   model), recomputing the whole sequence at every step; slow, no cache, used to check the cache.
//!
//! Each new token is chosen from the logits at the last position by [`super::pick_token`]; the
//! t-th token of item `item` draws from `rng_for(seed, Purpose::Sampler, item, t)`. Decoding stops
//! after an eos (not included in the output) or after `max_new_tokens` tokens. NFE counts forward
//! passes, the prompt pass included; both paths report the same NFE.

use super::{pick_token, validate_sampling, Denoiser};
use crate::config::EvalConfig;
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
}

/// What AR decoding returns for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct ArOutput {
    /// Generated ids, excluding the eos.
    pub tokens: Vec<u32>,
    /// Whether decoding stopped at an eos.
    pub hit_eos: bool,
    /// Forward passes (the prompt pass included).
    pub nfe: usize,
}

impl ArSampler {
    /// The sampler `eval` configures (`max_new_tokens`, `temperature`, `top_k`/`top_p` with 0 / 1
    /// meaning off).
    pub fn from_eval(eval: &EvalConfig, eos_id: u32, seed: u64) -> Self {
        Self {
            max_new_tokens: eval.max_new_tokens,
            temperature: eval.temperature,
            top_k: (eval.top_k > 0).then_some(eval.top_k),
            top_p: (eval.top_p < 1.0).then_some(eval.top_p),
            eos_id,
            seed,
        }
    }

    /// Greedy decoding of at most `max_new_tokens` tokens, seed 0.
    pub fn greedy(max_new_tokens: usize, eos_id: u32) -> Self {
        Self { max_new_tokens, temperature: 0.0, top_k: None, top_p: None, eos_id, seed: 0 }
    }

    fn check(&self, prompt: &[u32], vocab: usize) -> Result<()> {
        validate_sampling(self.temperature, self.top_k, self.top_p)?;
        if prompt.is_empty() {
            return Err(Error::msg("AR decoding needs at least one prompt token"));
        }
        if let Some(&t) = prompt.iter().find(|&&t| t as usize >= vocab) {
            return Err(Error::msg(format!("prompt token {t} is outside the vocabulary of {vocab}")));
        }
        Ok(())
    }

    /// Choose token number `t` from the last-position logits `last` (V,); returns it and whether
    /// decoding goes on.
    fn next(&self, last: &Tensor, item: u64, t: usize, out: &mut ArOutput) -> Result<bool> {
        let row = last.to_dtype(DType::F32)?.to_vec1::<f32>()?;
        let mut rng = rng_for(self.seed, Purpose::Sampler, item, t as u64);
        let (tok, _) = pick_token(&row, self.temperature, self.top_k, self.top_p, &mut rng)?;
        if tok == self.eos_id {
            out.hit_eos = true;
            return Ok(false);
        }
        out.tokens.push(tok);
        Ok(out.tokens.len() < self.max_new_tokens)
    }

    /// Decode `prompt` with the model's KV cache (batch size 1). `item` keys the random draws.
    pub fn generate_cached(&self, model: &Llama, prompt: &[u32], item: u64) -> Result<ArOutput> {
        self.check(prompt, model.cfg.vocab_size)?;
        let need = prompt.len() + self.max_new_tokens.saturating_sub(1);
        if need > model.cfg.max_position_embeddings {
            return Err(Error::msg(format!(
                "prompt of {} plus {} new tokens exceeds the model's {} positions",
                prompt.len(),
                self.max_new_tokens,
                model.cfg.max_position_embeddings
            )));
        }
        let mut out = ArOutput { tokens: Vec::new(), hit_eos: false, nfe: 0 };
        if self.max_new_tokens == 0 {
            return Ok(out);
        }
        let mut cache = KvCache::default();
        let ids = Tensor::from_slice(prompt, (1, prompt.len()), &model.device)?; // (1, P)
        let mut logits = model.forward_cached(&ids, &mut cache)?; // (1, P, V)
        out.nfe += 1;
        loop {
            let l = logits.dim(1)?;
            let last = logits.get(0)?.get(l - 1)?; // (V,)
            if !self.next(&last, item, out.tokens.len(), &mut out)? {
                break;
            }
            let tok = out.tokens[out.tokens.len() - 1];
            let ids = Tensor::from_slice(&[tok], (1, 1), &model.device)?; // (1, 1)
            logits = model.forward_cached(&ids, &mut cache)?; // (1, 1, V)
            out.nfe += 1;
        }
        Ok(out)
    }

    /// Decode `prompt` through a denoiser, recomputing the whole sequence each step (no cache).
    /// For a model, pass a causal [`super::ModelDenoiser`]. `item` keys the random draws.
    pub fn generate<Dn: Denoiser + ?Sized>(&self, d: &Dn, prompt: &[u32], item: u64) -> Result<ArOutput> {
        self.check(prompt, d.vocab_size())?;
        let mut out = ArOutput { tokens: Vec::new(), hit_eos: false, nfe: 0 };
        if self.max_new_tokens == 0 {
            return Ok(out);
        }
        let mut seq = prompt.to_vec();
        loop {
            let ids = Tensor::from_slice(&seq, (1, seq.len()), &Device::Cpu)?; // (1, L)
            let logits = d.logits(&ids)?; // (1, L, V)
            out.nfe += 1;
            let last = logits.get(0)?.get(seq.len() - 1)?; // (V,)
            if !self.next(&last, item, out.tokens.len(), &mut out)? {
                break;
            }
            seq.push(out.tokens[out.tokens.len() - 1]);
        }
        Ok(out)
    }
}
