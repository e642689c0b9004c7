//! Fused token cross-entropy over the vocabulary.
//!
//! Forward: ce_i = lse_i − x_{i,t_i} with lse = log Σ exp(x) per row, computed in f32 outside the
//! graph. Backward: dx = (softmax(x) − onehot(t)) · g, recomputed from the logits and the saved
//! lse. Only the logits (in the compute dtype) and lse (N, 1) stay alive between the passes —
//! the composite (to f32, shift, exp, sum, log, gather) would keep several (N, V) f32 copies,
//! which at 49k vocabulary entries dominate the memory of a step.

use crate::kernels::fused as kernels;
use crate::model::ops::Attach1;
use candle_core::{DType, Result, Tensor, D};

/// Per-row cross-entropy (N,) f32 of `logits` (N, V) against `targets` (N,) u32, plus the
/// argmax hits (N,) f32 (1 where the target is the unique argmax: a tie is a miss).
/// Differentiable in `logits`.
pub fn cross_entropy(logits: &Tensor, targets: &Tensor) -> Result<(Tensor, Tensor)> {
    let t = targets.flatten_all()?; // (N,)
    let (lse, ce, hits) = kernels::ce_fwd(&logits.detach(), &t)?; // (N, 1), (N,), (N,)
    let ce = Attach1::apply("cross-entropy", logits, ce, Box::new(move |x, _ce, g| kernels::ce_bwd(x, &t, &lse, g)))?;
    Ok((ce, hits))
}

/// The composite reference (autograd through every op), for tests.
pub fn cross_entropy_reference(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let t = targets.reshape(((), 1))?;
    let x = logits.to_dtype(DType::F32)?;
    let max = x.max_keepdim(D::Minus1)?.detach();
    let shifted = x.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?;
    (lse - shifted.gather(&t, D::Minus1)?)?.squeeze(1)
}
