//! Autoregressive SFT: causal attention, next-token cross-entropy on response tokens only,
//! normalised by the number of response tokens.
//!
//! At evaluation time the model is read causally: it decodes left to right with the KV cache,
//! `eval.batch_size` left-padded prompts per forward pass ([`ArSampler::generate_batched`], the
//! same batch size as the diffusion sampler), reporting per item its NFE, whether it hit eos and
//! each token's plain-softmax confidence; and it scores a choice by its exact log-probability
//! ([`ar_choice_scores`]: one pass over the prompt, plus one batched pass through its KV cache
//! when a choice is longer than one token).

use super::{key_valid, Batch, ChoiceScores, Generated, Objective, Prepared};
use crate::config::EvalConfig;
use crate::eval::likelihood::ar_choice_scores;
use crate::model::mask::AttentionMode;
use crate::model::Llama;
use crate::sample::ArSampler;
use crate::Result;

/// The AR baseline objective.
#[derive(Debug, Clone, Default)]
pub struct Autoregressive;

impl Objective for Autoregressive {
    fn name(&self) -> &'static str {
        "autoregressive"
    }

    fn prepare(&self, batch: &Batch, step: u64, _micro: u64, _seed: u64) -> Result<Prepared> {
        let (b, l) = (batch.b, batch.l);
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for i in 0..b {
            // Output at pos-1 predicts the response token at pos (eos included).
            for pos in batch.prompt_len[i].max(1)..batch.len[i] {
                rows.push((i * l + pos - 1) as u32);
                targets.push(batch.ids[i * l + pos]);
            }
        }
        let n = rows.len();
        Ok(Prepared {
            input: batch.ids.clone(),
            b,
            l,
            attention: AttentionMode::Causal,
            step,
            key_valid: key_valid(batch),
            mask: None,
            positions: None,
            time: None,
            rows,
            targets,
            weights: vec![1.0; n],
            denom: n as f64,
            buckets: None,
        })
    }

    /// Exact: the training step itself is the mean CE per response token under causal
    /// attention.
    fn nll_is_exact(&self) -> bool {
        true
    }

    fn prepare_nll(&self, batch: &Batch, step: u64, micro: u64, seed: u64) -> Result<Prepared> {
        let mut p = self.prepare(batch, step, micro, seed)?;
        p.attention = self.eval_attention();
        Ok(p)
    }

    fn eval_attention(&self) -> AttentionMode {
        AttentionMode::Causal
    }
    fn generate(&self, model: &Llama, prompts: &[Vec<u32>], eos_id: u32, eval: &EvalConfig, seed: u64) -> Result<Vec<Generated>> {
        let sampler = ArSampler::from_eval(eval, eos_id, seed);
        let outs = sampler.generate_batched(model, prompts, 0)?;
        Ok(outs.into_iter().map(|o| Generated { tokens: o.tokens, nfe: o.nfe, hit_eos: o.hit_eos, confidence: o.confidence }).collect())
    }

    fn score_choices(&self, model: &Llama, prompt: &[u32], choices: &[Vec<u32>], _item: u64, _eval: &EvalConfig, _seed: u64) -> Result<ChoiceScores> {
        ar_choice_scores(model, prompt, choices)
    }
}
