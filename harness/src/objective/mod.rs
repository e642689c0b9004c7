//! Training objectives behind one trait.
//!
//! An objective turns a padded batch into a [`Prepared`] step: the (possibly corrupted) input, the
//! attention mode, and which output rows are scored against which targets with which weights,
//! plus this micro-batch's share of the loss normaliser. The loop sums the normaliser over every
//! micro-batch of an optimizer step first, then computes each micro-batch's loss with
//! [`scored_loss`] divided by that total — so gradient accumulation normalises over the whole
//! accumulated batch. The loop never knows which objective it runs.
//!
//! [`Objective::prepare_nll`] prepares the figure comparable across objectives: the dev
//! negative log-likelihood per response token (AR exact; diffusion its ELBO bound), whatever
//! loss normaliser training used. A prepared step may tag each scored row with its diffusion
//! time bucket ([`Prepared::buckets`], [`t_bucket`]); [`scored_loss`] then sums the unweighted
//! CE per bucket on the device, in the same (detached) stats tensor as the rest, so reading them
//! costs no extra synchronisation ([`LossValues::buckets`]).
//!
//! The same trait owns what a model trained with the objective means at evaluation time: the
//! attention it is read under ([`Objective::eval_attention`]), how it generates
//! ([`Objective::generate`]) and how it scores answer choices ([`Objective::score_choices`]).
//! [`build`] makes the objective a config asks for; nothing else matches on the kind.

pub mod autoregressive;
pub mod config;
pub mod diffusion;
pub mod pack;
pub mod scored;

use crate::config::{EvalConfig, ObjectiveConfig};
use crate::model::mask::{AttentionMode, RowMask};
use crate::model::Llama;
use crate::Result;
use candle_core::Tensor;
use serde::{Deserialize, Serialize};

pub use autoregressive::Autoregressive;
pub use diffusion::{Diffusion, DiffusionConfig, LossNorm, LossWeight, TSampling, TimeConditioning};
pub use scored::{
    loss_from_logits, loss_on, scored_loss, DeviceBatch, FixedShape, HostBatch, LossParts,
    LossValues,
};

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
        let l = examples
            .iter()
            .map(|e| e.prompt.len() + e.response.len())
            .max()
            .unwrap_or(0);
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
        Self {
            ids,
            b,
            l,
            prompt_len,
            len,
        }
    }

    /// Response-side tokens (eos included) of the whole batch.
    pub fn response_tokens(&self) -> usize {
        self.len
            .iter()
            .zip(&self.prompt_len)
            .map(|(l, p)| l - p)
            .sum()
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
    /// Each row's own attention ([`RowMask`]: explicit, packed pairs, block diffusion's two
    /// copies): when given, the bias is built from it alone (`attention` and `key_valid` then
    /// only describe it); a query that sees nothing keeps its own position.
    pub mask: Option<RowMask>,
    /// The RoPE position of each column, `b * l`; `None`: 0..l in every row.
    pub positions: Option<Vec<u32>>,
    /// The diffusion time the model is given at each column, `b * l` (every column of a
    /// sequence carries its t); `None` for a model without time conditioning
    /// (`objective.time_conditioning = "none"`, AR).
    pub time: Option<Vec<f32>>,
    /// Flat output rows (`i * l + pos`) that are scored.
    pub rows: Vec<u32>,
    /// Target token of each scored row.
    pub targets: Vec<u32>,
    /// Loss weight of each scored row (diffusion: 1/t, possibly / response length).
    pub weights: Vec<f32>,
    /// This micro-batch's share of the loss normaliser.
    pub denom: f64,
    /// The diffusion-time bucket ([`t_bucket`]) of each scored row's sequence; `None` for an
    /// objective without diffusion time (AR).
    pub buckets: Option<Vec<usize>>,
}

/// Number of diffusion-time buckets: `[0, 1]` in equal widths (0–0.2, …, 0.8–1.0).
pub const T_BUCKETS: usize = 5;

/// The bucket of diffusion time `t` (`t = 1` and anything above fall in the last one).
pub fn t_bucket(t: f64) -> usize {
    ((t.max(0.0) * T_BUCKETS as f64).floor() as usize).min(T_BUCKETS - 1)
}

/// The t range `[lo, hi)` of bucket `k`.
pub fn t_bucket_range(k: usize) -> (f64, f64) {
    (
        k as f64 / T_BUCKETS as f64,
        (k + 1) as f64 / T_BUCKETS as f64,
    )
}

/// Unweighted CE sums and scored-token counts per diffusion-time bucket.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct TBuckets {
    /// Σ CE of the scored tokens in each bucket.
    pub ce_sum: [f64; T_BUCKETS],
    /// Scored tokens in each bucket.
    pub n: [usize; T_BUCKETS],
}

impl TBuckets {
    /// The bucket-wise sum of `a` and `b` (`None` when both are).
    pub fn merge(a: Option<TBuckets>, b: Option<TBuckets>) -> Option<TBuckets> {
        match (a, b) {
            (None, x) | (x, None) => x,
            (Some(mut a), Some(b)) => {
                for k in 0..T_BUCKETS {
                    a.ce_sum[k] += b.ce_sum[k];
                    a.n[k] += b.n[k];
                }
                Some(a)
            }
        }
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
    /// Prepare `batch` for the negative log-likelihood per response token (eos included), read
    /// under [`Self::eval_attention`]: [`scored_loss`] of the result with `total_denom =
    /// denom` is that figure whatever loss normaliser training used (sum over batches first,
    /// then divide by the summed `denom`). AR: exact (mean CE per response token). Diffusion:
    /// the ELBO bound, one Monte Carlo draw of (t, mask) per sequence seeded from (`seed`,
    /// `step`, `micro`): calls with different `micro` are independent draws, which the trainer
    /// averages ([`crate::train::trainer::DEV_NLL_DRAWS`]); an exact objective ignores `micro`.
    fn prepare_nll(&self, batch: &Batch, step: u64, micro: u64, seed: u64) -> Result<Prepared>;
    /// Whether [`Objective::prepare_nll`] is exact (no Monte Carlo draw): then one draw is the
    /// figure and the trainer does not repeat it.
    fn nll_is_exact(&self) -> bool {
        false
    }
    /// Rows a training micro-batch of B sequences becomes: `rows_per_sequence() × B` (diffusion's
    /// complementary masking scores each sequence twice).
    fn rows_per_sequence(&self) -> usize {
        1
    }
    /// The attention used at evaluation and decoding time.
    fn eval_attention(&self) -> AttentionMode;
    /// Generate an answer for every prompt with the decoding settings of `eval`; the draws are
    /// seeded from `seed` and the prompt's index. Outputs are in prompt order.
    fn generate(
        &self,
        model: &Llama,
        prompts: &[Vec<u32>],
        eos_id: u32,
        eval: &EvalConfig,
        seed: u64,
    ) -> Result<Vec<Generated>>;
    /// Score each of `choices` as the answer to `prompt` (item number `item` keys the draws).
    fn score_choices(
        &self,
        model: &Llama,
        prompt: &[u32],
        choices: &[Vec<u32>],
        item: u64,
        eval: &EvalConfig,
        seed: u64,
    ) -> Result<ChoiceScores>;
}

/// The objective `cfg` asks for; `mask_id` is the mask token (used by diffusion only).
pub fn build(cfg: &ObjectiveConfig, mask_id: u32) -> Box<dyn Objective> {
    build_for_training(cfg, mask_id, 1)
}

/// [`build`] for optimizer steps of `micro_batches` micro-batches (`train.grad_accum`: diffusion's
/// `antithetic` times span them).
pub fn build_for_training(cfg: &ObjectiveConfig, mask_id: u32, micro_batches: usize) -> Box<dyn Objective> {
    match cfg {
        ObjectiveConfig::Diffusion(d) => Box::new(Diffusion::new(mask_id, d.clone()).accumulating(micro_batches)),
        ObjectiveConfig::Autoregressive => Box::new(Autoregressive),
    }
}

/// Per-row cross-entropy of `logits` (N, V) against `targets`, and how many argmaxes hit.
pub fn token_ce(logits: &Tensor, targets: &[u32]) -> Result<(Tensor, usize)> {
    let vocab = logits.dim(1)?;
    if let Some(&bad) = targets.iter().find(|&&t| t as usize >= vocab) {
        return Err(crate::Error::msg(format!(
            "target token {bad} is outside the vocabulary of {vocab}"
        )));
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
    Some(
        batch
            .len
            .iter()
            .map(|&n| (0..batch.l).map(|j| j < n).collect())
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    /// Two rows, V = 3, L = 4, shift (output at p-1 predicts token p):
    /// row 0: tokens [0, 1, 2, 1], prompt 2, length 4, t = 0.5, masked {2};
    /// row 1: tokens [1, 0, 2, <pad 0>], prompt 2, length 3, t = 0.25, masked {2} (and the pad
    /// at 3 marked, which the bound must ignore). Logits are logs of hand-picked probabilities.
    fn example() -> (Batch, Vec<f64>, Vec<bool>, Tensor) {
        let batch = Batch {
            ids: vec![0, 1, 2, 1, 1, 0, 2, 0],
            b: 2,
            l: 4,
            prompt_len: vec![2, 2],
            len: vec![4, 3],
        };
        let t = vec![0.5, 0.25];
        let mut masked = vec![false; 8];
        masked[2] = true;
        masked[4 + 2] = true;
        masked[4 + 3] = true;
        let ln = |p: f64| p.ln() as f32;
        let u = [0.0f32; 3];
        let rows: Vec<[f32; 3]> = vec![
            u,
            [ln(0.25), ln(0.25), ln(0.5)], // r0 p1 predicts tok 2 (pos 2): CE ln 2
            [ln(0.25), ln(0.5), ln(0.25)], // r0 p2 predicts tok 1 (pos 3)
            u,
            u,
            [ln(0.5), ln(0.25), ln(0.25)], // r1 p1 predicts tok 2 (pos 2): CE ln 4
            u,                             // r1 p2 would predict the pad: 1/3 each
            u,
        ];
        let flat: Vec<f32> = rows.into_iter().flatten().collect();
        (
            batch,
            t,
            masked,
            Tensor::from_vec(flat, (2, 4, 3), &Device::Cpu).unwrap(),
        )
    }

    fn ddm(loss_norm: LossNorm, score_padding: bool) -> Diffusion {
        Diffusion::new(
            31,
            DiffusionConfig {
                loss_norm,
                score_padding,
                t_sampling: TSampling::LogitNormal,
                ..DiffusionConfig::default()
            },
        )
    }

    #[test]
    fn ddm_nll_bound_is_hand_computed_whatever_the_training_normaliser() {
        let (batch, t, masked, logits) = example();
        // E_t[(1/t)·Σ_masked CE] / response tokens, with one draw:
        //   row 0: (1/0.5)·ln 2 = 2 ln 2;  row 1: (1/0.25)·ln 4 = 8 ln 2
        //   response tokens (eos included, no padding): 2 + 1 = 3
        //   NLL bound per token = 10 ln 2 / 3 = 2.3105
        let want = 10.0 * 2f64.ln() / 3.0;
        for (norm, pad) in [
            (LossNorm::Masked, false),
            (LossNorm::Response, true),
            (LossNorm::BatchResponse, true),
        ] {
            let d = ddm(norm, pad);
            let p = d.prepare_nll_with(&batch, &t, &masked, 0).unwrap();
            assert_eq!(p.attention, d.eval_attention());
            assert_eq!(p.denom, 3.0, "{norm:?}: response tokens");
            assert_eq!(p.rows.len(), 2, "{norm:?}: the marked pad is not scored");
            let v = loss_from_logits(&logits, &p, p.denom)
                .unwrap()
                .read()
                .unwrap();
            assert!(
                (v.loss - want).abs() < 1e-5,
                "{norm:?}: {} vs {want}",
                v.loss
            );
        }
        // The training loss of the same draw differs with the normaliser (masked: / 2 tokens).
        let train = ddm(LossNorm::Masked, false)
            .prepare_with(&batch, &t, &masked, 0)
            .unwrap();
        let v = loss_from_logits(&logits, &train, train.denom)
            .unwrap()
            .read()
            .unwrap();
        assert!((v.loss - 10.0 * 2f64.ln() / 2.0).abs() < 1e-5, "{}", v.loss);
    }

    #[test]
    fn ddm_nll_bound_is_unbiased_for_a_model_of_constant_ce() {
        // Uniform logits over V = 3: every token's CE is ln 3, so E_t[(1/t)·Σ_masked CE] per
        // response token is exactly ln 3 (E[#masked | t] = t·L). The Monte Carlo average over
        // many draws must come back to it (up to the eps truncation, 0.1%).
        let batch = Batch {
            ids: vec![0, 1, 2, 1, 0, 1, 1, 0, 2, 2],
            b: 2,
            l: 5,
            prompt_len: vec![2, 1],
            len: vec![5, 4],
        };
        let logits = Tensor::zeros((2, 5, 3), DType::F32, &Device::Cpu).unwrap();
        let d = ddm(LossNorm::Masked, false);
        let (mut sum, mut denom) = (0.0, 0.0);
        for k in 0..4000 {
            let p = d.prepare_nll(&batch, k, 0, 5).unwrap();
            denom += p.denom;
            if !p.rows.is_empty() {
                sum += loss_from_logits(&logits, &p, 1.0)
                    .unwrap()
                    .read()
                    .unwrap()
                    .loss;
            }
        }
        let est = sum / denom;
        assert!(
            (est / 3f64.ln() - 1.0).abs() < 0.03,
            "{est} vs ln 3 = {}",
            3f64.ln()
        );
    }

    #[test]
    fn bucket_sums_equal_the_total_scored_ce() {
        let (batch, t, masked, logits) = example();
        let p = ddm(LossNorm::Masked, false)
            .prepare_with(&batch, &t, &masked, 0)
            .unwrap();
        assert_eq!(
            p.buckets.as_deref(),
            Some(&[2usize, 1][..]),
            "t = 0.5 → bucket 2, t = 0.25 → bucket 1"
        );
        let v = loss_from_logits(&logits, &p, p.denom)
            .unwrap()
            .read()
            .unwrap();
        let b = v.buckets.expect("diffusion steps carry buckets");
        assert!((b.ce_sum.iter().sum::<f64>() - v.ce_sum).abs() < 1e-5);
        assert_eq!(b.n.iter().sum::<usize>(), v.n_scored);
        assert!(
            (b.ce_sum[2] - 2f64.ln()).abs() < 1e-5 && (b.ce_sum[1] - 4f64.ln()).abs() < 1e-5,
            "{b:?}"
        );
        assert_eq!(b.n, [0, 1, 1, 0, 0]);
        // Random draws over many steps: the bucket sums still add up, and merge adds bucket-wise.
        let d = ddm(LossNorm::Masked, false);
        let mut total = None;
        let (mut ce, mut n) = (0.0, 0);
        for step in 0..20 {
            let p = d.prepare(&batch, step, 0, 7).unwrap();
            if p.rows.is_empty() {
                continue;
            }
            let v = loss_from_logits(&logits, &p, p.denom.max(1.0))
                .unwrap()
                .read()
                .unwrap();
            total = TBuckets::merge(total, v.buckets);
            ce += v.ce_sum;
            n += v.n_scored;
        }
        let total = total.unwrap();
        assert!((total.ce_sum.iter().sum::<f64>() - ce).abs() < 1e-4);
        assert_eq!(total.n.iter().sum::<usize>(), n);
        // AR rows carry no bucket, and its NLL step is its training step read causally.
        let ar = Autoregressive;
        let (p, q) = (
            ar.prepare(&batch, 0, 0, 0).unwrap(),
            ar.prepare_nll(&batch, 0, 0, 0).unwrap(),
        );
        assert!(p.buckets.is_none());
        assert_eq!(
            (&p.rows, &p.weights, p.denom),
            (&q.rows, &q.weights, q.denom)
        );
        assert_eq!(q.attention, AttentionMode::Causal);
        assert!(loss_from_logits(&logits, &q, q.denom)
            .unwrap()
            .read()
            .unwrap()
            .buckets
            .is_none());
    }

    #[test]
    fn t_buckets_cover_zero_to_one() {
        assert_eq!(
            (
                t_bucket(0.0),
                t_bucket(0.199),
                t_bucket(0.2),
                t_bucket(0.999),
                t_bucket(1.0)
            ),
            (0, 0, 1, 4, 4)
        );
        assert_eq!(t_bucket_range(4), (0.8, 1.0));
    }
}
