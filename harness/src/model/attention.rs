//! Scaled dot-product attention with a hand-written backward, in two implementations:
//!
//! - **flash** (CUDA, bf16, head width 64; [`crate::kernels::flash`]): FlashAttention-2 kernels
//!   that never materialise the (B, H, L, T) score matrix, neither in the forward nor in the
//!   backward. The forward keeps the output O and the per-row softmax statistics ([`AttnSaved`]);
//!   the backward recomputes the probabilities tile by tile from them.
//! - **composite** (everything else: CPU, f32, other head widths, or `DDM_ATTENTION=composite`):
//!   the forward computes P = softmax(q kᵀ/√d + bias) and O = P v with candle's matmuls and the
//!   fused softmax kernel and keeps nothing but q, k and v — no (B, H, L, T) matrix survives the
//!   forward pass. The backward recomputes P and applies, with δ = rowsum(dP ⊙ P)
//!   (= rowsum(dO ⊙ O)): dv = Pᵀ dO, dP = dO vᵀ, dS = P ⊙ (dP − δ), dq = dS k/√d, dk = dSᵀ q/√d
//!   — the same trade FlashAttention makes (one extra q kᵀ product for O(L²) less memory), here
//!   with the (B, H, L, T) matrices materialised one at a time.
//!
//! [`attention_fwd`] picks the implementation ([`crate::kernels::flash::flash_ok`]) and returns
//! what [`attention_bwd`] needs; both give the same numbers up to bf16 rounding (`harness
//! selfcheck` compares them on the GPU). Grouped-query attention: k and v have Hkv heads, each
//! serving `H / Hkv` query heads; they are never repeated. The composite stacks the query heads
//! of a group along the rows so that one batched matmul serves the group and k, v's gradients
//! come summed over it from the matmuls themselves; the flash kernels read kv head h / (H/Hkv)
//! for query head h and sum dk, dv over the group in registers. The output is already merged to
//! (B, L, H·Dh).

use crate::kernels::flash;
use crate::kernels::fused as kernels;
use candle_core::{Result, Tensor, D};

/// (B, Hkv, T, Dh) → (B, Hkv·rep, T, Dh): head h of the result is head h / rep of the input.
pub fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, l, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, h, rep, l, d))?.reshape((b, h * rep, l, d))
}

/// Shapes of one call: batch, query heads, kv heads, query length, key length, head width.
#[derive(Clone, Copy)]
struct Dims {
    b: usize,
    h: usize,
    hkv: usize,
    l: usize,
    t: usize,
    dh: usize,
}

impl Dims {
    fn rep(&self) -> usize {
        self.h / self.hkv
    }
    fn scale(&self) -> f64 {
        1.0 / (self.dh as f64).sqrt()
    }
}

/// P = softmax(q kᵀ · scale + bias): (B, H, L, T). The query heads sharing a kv head are
/// stacked along the rows — q (B, H, L, Dh) viewed as (B, Hkv, rep·L, Dh) — so one batched
/// matmul serves the whole group and k is never repeated.
fn probs(q: &Tensor, k: &Tensor, bias: Option<&Tensor>, scale: f64, d: Dims) -> Result<Tensor> {
    let qg = q.reshape((d.b, d.hkv, d.rep() * d.l, d.dh))?;
    let s = qg.matmul(&k.t()?)?.reshape((d.b, d.h, d.l, d.t))?; // (B, H, L, T)
    kernels::softmax_bias(&s, bias, scale) // one fused pass on CUDA
}

/// What [`attention_bwd`] needs from [`attention_fwd`] besides q, k, v and the bias.
#[derive(Debug, Clone, Default)]
pub struct AttnSaved {
    /// With the flash kernels: the output O (B, L, H·Dh) and the row statistics (B, H, L, 2)
    /// of [`flash::flash_fwd`]; None after the composite forward (its backward recomputes P).
    flash: Option<(Tensor, Tensor)>,
}

impl AttnSaved {
    /// Whether the forward ran the flash kernels (and the backward will).
    pub fn is_flash(&self) -> bool {
        self.flash.is_some()
    }
}

/// Attention outside the graph: q (B, H, L, Dh) over k, v (B, Hkv, T, Dh) with an additive
/// `bias` broadcastable to (B, H, L, T) → the heads concatenated per position, (B, L, H·Dh), and
/// what [`attention_bwd`] needs. The flash kernels serve when [`flash::flash_ok`] says so (bias
/// then None or (B | 1, 1, L, T)), the composite otherwise. Inference drops the second value.
pub fn attention_fwd(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<(Tensor, AttnSaved)> {
    if flash::flash_ok(q, k, bias) {
        let d = dims(q, k)?;
        let (o, lse) = flash::flash_fwd(q, k, v, bias, d.scale())?; // (B, L, H·Dh), (B, H, L, 2)
        return Ok((o.clone(), AttnSaved { flash: Some((o, lse)) }));
    }
    Ok((attention_fwd_composite(q, k, v, bias)?, AttnSaved::default()))
}

/// The composite forward of [`attention_fwd`] (candle matmuls and the fused softmax), whatever
/// the device and dtype.
pub fn attention_fwd_composite(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let d = dims(q, k)?;
    let p = probs(q, k, bias, d.scale(), d)?;
    let o = p.reshape((d.b, d.hkv, d.rep() * d.l, d.t))?.matmul(v)?.reshape((d.b, d.h, d.l, d.dh))?; // (B, H, L, Dh)
    crate::kernels::layout::swap_axes(&o)?.reshape((d.b, d.l, d.h * d.dh))
}

/// Gradients (dq (B, H, L, Dh), dk, dv (B, Hkv, T, Dh)) of [`attention_fwd`] for the output
/// gradient `g` (B, L, H·Dh), `saved` being what that forward returned: the flash backward after
/// a flash forward, else the composite with P recomputed. The flash gradients may be
/// non-contiguous views (see [`crate::kernels::flash`]).
pub fn attention_bwd(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, saved: &AttnSaved, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    match &saved.flash {
        Some((o, lse)) => {
            let d = dims(q, k)?;
            flash::flash_bwd(q, k, v, o, lse, &g.to_dtype(o.dtype())?, bias, d.scale())
        }
        None => attention_bwd_composite(q, k, v, bias, g),
    }
}

/// The composite backward of [`attention_fwd`], P recomputed: gradients (dq, dk, dv) for the
/// output gradient `g` (B, L, H·Dh).
pub fn attention_bwd_composite(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let d = dims(q, k)?;
    let (b, h, hkv, l, t, dh, rep, scale) = (d.b, d.h, d.hkv, d.l, d.t, d.dh, d.rep(), d.scale());
    // (B, L, H·Dh) → (B, H, L, Dh) → (B, Hkv, rep·L, Dh)
    let gg = crate::kernels::layout::swap_axes(&g.reshape((b, l, h, dh))?)?.reshape((b, hkv, rep * l, dh))?;
    let p = probs(q, k, bias, scale, d)?; // (B, H, L, T)
    let pg = p.reshape((b, hkv, rep * l, t))?;
    let dv = pg.t()?.matmul(&gg)?; // (B, Hkv, T, Dh), summed over the group
    let dp = gg.matmul(&v.t()?)?.reshape((b, h, l, t))?; // (B, H, L, T)
    // dS = P ⊙ (dP − δ) with δ = rowsum(dP ⊙ P) = rowsum(dO ⊙ O); one fused pass on CUDA
    let ds = kernels::softmax_bwd(&p, &dp)?;
    let dsg = ds.reshape((b, hkv, rep * l, t))?;
    let dq = (dsg.matmul(k)? * scale)?.reshape((b, h, l, dh))?; // (B, H, L, Dh)
    let qg = q.reshape((b, hkv, rep * l, dh))?;
    let dk = (dsg.t()?.matmul(&qg)? * scale)?; // (B, Hkv, T, Dh)
    Ok((dq, dk, dv))
}

fn dims(q: &Tensor, k: &Tensor) -> Result<Dims> {
    let (b, h, l, dh) = q.dims4()?;
    let (_, hkv, t, _) = k.dims4()?;
    if hkv == 0 || h % hkv != 0 {
        candle_core::bail!("attention: {h} query heads cannot share {hkv} key/value heads")
    }
    Ok(Dims { b, h, hkv, l, t, dh })
}

/// The reference composite (autograd through every op, k and v repeated): the reference layer
/// path trains through it. Returns (B, L, H·Dh) like [`attention_fwd`].
pub fn attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (_, h, _, dh) = q.dims4()?;
    let rep = h / k.dim(1)?;
    let kr = repeat_kv(k, rep)?.contiguous()?;
    let vr = repeat_kv(v, rep)?.contiguous()?;
    let mut s = (q.matmul(&kr.t()?)? * (1.0 / (dh as f64).sqrt()))?;
    if let Some(b) = bias {
        s = s.broadcast_add(b)?;
    }
    let m = s.max_keepdim(D::Minus1)?.detach();
    let e = s.broadcast_sub(&m)?.exp()?;
    let p = e.broadcast_div(&e.sum_keepdim(D::Minus1)?)?;
    let (b, _, l, _) = q.dims4()?;
    p.matmul(&vr)?.transpose(1, 2)?.reshape((b, l, h * dh))
}
