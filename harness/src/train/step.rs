//! One optimizer step: forward and backward of every prepared micro-batch with the step's shared
//! loss normaliser, then clipping and the AdamW update. The training loop, `harness bench` and
//! `harness selfcheck` all run [`train_step`], so the benchmark times the code that trains; the
//! bench's phase profile calls its phases ([`forward`], [`backward`], [`update`]) one by one.
//! With a [`GraphStep`] (`train.launch = "cuda_graph"`) the forward and backward of each
//! micro-batch are one replay of a captured CUDA graph instead ([`crate::train::graph`]).

use super::dist::Dist;
use super::graph::GraphStep;
use super::optim::{AdamW, GradAccum};
use crate::model::params::Fwd;
use crate::model::Llama;
use crate::objective::{scored_loss, LossParts, Prepared, TBuckets};
use crate::{Error, Result};

/// The numbers of one optimizer step, summed over its micro-batches.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepValues {
    /// Weighted loss (what is differentiated), over the whole accumulated batch.
    pub loss: f64,
    /// Σ CE over scored tokens (unweighted).
    pub ce_sum: f64,
    /// Scored tokens.
    pub n_scored: usize,
    /// Scored tokens whose target has the highest logit.
    pub n_correct: usize,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Unweighted CE per diffusion-time bucket, when the objective tags its rows.
    pub buckets: Option<TBuckets>,
}

/// What a step needs besides the model and the batches.
pub struct StepCtx<'a> {
    /// Run seed (dropout, masks).
    pub seed: u64,
    /// Optimizer step (0-based).
    pub step: u64,
    /// Gradient sums of the step.
    pub accum: &'a mut GradAccum,
    /// The optimizer.
    pub opt: &'a mut AdamW,
    /// Learning rate of this step.
    pub lr: f64,
    /// Clip the global gradient norm to this (0 = no clipping).
    pub max_grad_norm: f64,
    /// The captured step (`train.launch = "cuda_graph"`), or None: eager.
    pub graph: Option<&'a mut GraphStep>,
    /// The data-parallel run this step is one rank of ([`crate::train::dist`]), or None: one
    /// process.
    pub dist: Option<&'a Dist>,
}

/// Phase 1: the loss of micro-batch `micro` of `p` divided by the step's `total_denom`, on the
/// training path.
pub fn forward(model: &Llama, p: &Prepared, total_denom: f64, seed: u64, step: u64, micro: u64) -> Result<LossParts> {
    let ctx = Fwd { train: true, seed, step, micro };
    scored_loss(model, p, total_denom, seed, &ctx)
}

/// Phase 2: backpropagate `parts` and add the gradients to `accum` (nothing when nothing is
/// scored).
pub fn backward(parts: &LossParts, accum: &mut GradAccum) -> Result<()> {
    if parts.n_scored > 0 {
        let grads = parts.loss.backward()?;
        accum.add(&grads)?;
    }
    Ok(())
}

/// Phase 3: clip the summed gradients and update; returns the norm before clipping. A
/// non-finite norm is [`Error::Diverged`] at step `step + 1` and changes nothing.
pub fn update(accum: &mut GradAccum, opt: &mut AdamW, lr: f64, max_grad_norm: f64, step: u64) -> Result<f64> {
    let (grads, grad_norm) = accum.take_clipped(max_grad_norm)?;
    if !grad_norm.is_finite() {
        return Err(Error::Diverged { step: step + 1, reason: format!("gradient norm became {grad_norm}") });
    }
    opt.step(&grads, lr)?;
    Ok(grad_norm)
}

/// One optimizer step over the `prepared` micro-batches of step `c.step`: their normalisers are
/// summed first, so accumulation normalises over the whole batch. A non-finite loss or gradient
/// norm is [`Error::Diverged`].
///
/// In a data-parallel run (`c.dist`) the normaliser is summed over the ranks too, the gradient
/// sums are all-reduced before clipping, and the returned numbers are the global ones.
pub fn train_step(model: &Llama, prepared: &[Prepared], mut c: StepCtx) -> Result<StepValues> {
    let dist = c.dist.filter(|d| d.world > 1);
    let local_denom: f64 = prepared.iter().map(|p| p.denom).sum();
    let dev = c.accum.device();
    let total_denom = match dist {
        Some(d) => d.sum_scalars(&[local_denom], &dev)?[0],
        None => local_denom,
    };
    let mut out = StepValues { loss: 0.0, ce_sum: 0.0, n_scored: 0, n_correct: 0, grad_norm: 0.0, buckets: None };
    for (micro, p) in prepared.iter().enumerate() {
        let v = match c.graph.as_deref_mut() {
            Some(g) => g.run(model, c.accum, p, total_denom, c.seed, c.step, micro as u64)?,
            None => {
                let parts = forward(model, p, total_denom, c.seed, c.step, micro as u64)?;
                // backward before reading the loss: no device synchronisation between the passes
                backward(&parts, c.accum)?;
                parts.read()?
            }
        };
        if !v.loss.is_finite() {
            return Err(Error::Diverged { step: c.step + 1, reason: format!("loss became {}", v.loss) });
        }
        out.loss += v.loss;
        out.ce_sum += v.ce_sum;
        out.n_scored += v.n_scored;
        out.n_correct += v.n_correct;
        out.buckets = TBuckets::merge(out.buckets, v.buckets);
    }
    if let Some(g) = c.graph.as_deref() {
        c.accum.set_sums(g.grads())?;
    }
    if let Some(d) = dist {
        let sums = c.accum.take_sums()?;
        c.accum.set_sums(d.sum_tensors(sums)?)?;
        let g = d.sum_scalars(&[out.loss, out.ce_sum, out.n_scored as f64, out.n_correct as f64], &dev)?;
        (out.loss, out.ce_sum, out.n_scored, out.n_correct) = (g[0], g[1], g[2] as usize, g[3] as usize);
    }
    out.grad_norm = update(c.accum, c.opt, c.lr, c.max_grad_norm, c.step)?;
    Ok(out)
}
