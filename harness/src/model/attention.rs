//! Scaled dot-product attention, with the attention matrix recomputed in backward.
//!
//! The forward computes P = softmax(q kᵀ/√d + bias) and O = P v outside the graph and keeps
//! only q, k and v for backward — no (B, H, L, T) matrix survives the forward pass. The
//! backward recomputes P and applies, with δ = rowsum(dP ⊙ P) (= rowsum(dO ⊙ O)):
//! dv = Pᵀ dO, dP = dO vᵀ, dS = P ⊙ (dP − δ), dq = dS k/√d, dk = dSᵀ q/√d —
//! the same trade FlashAttention makes (one extra q kᵀ product for O(L²) less memory), here
//! with candle's matmul and fused softmax kernels. Grouped-query attention: k and v have Hkv
//! heads, each serving `H / Hkv` query heads; the query heads of a group are stacked along the
//! rows, so k and v are never repeated and their gradients come summed over the group from the
//! matmuls themselves. The output is already merged to (B, L, H·Dh).

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

/// Attention outside the graph: q (B, H, L, Dh) over k, v (B, Hkv, T, Dh) with an additive
/// `bias` broadcastable to (B, H, L, T) → the heads concatenated per position, (B, L, H·Dh).
pub fn attention_fwd(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let d = dims(q, k)?;
    let p = probs(q, k, bias, d.scale(), d)?;
    p.reshape((d.b, d.hkv, d.rep() * d.l, d.t))?.matmul(v)?.reshape((d.b, d.h, d.l, d.dh))?.transpose(1, 2)?.contiguous()?.reshape((d.b, d.l, d.h * d.dh))
}

/// Gradients (dq, dk, dv) of [`attention_fwd`] for the output gradient `g` (B, L, H·Dh), with
/// P recomputed.
pub fn attention_bwd(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>, g: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let d = dims(q, k)?;
    let (b, h, hkv, l, t, dh, rep, scale) = (d.b, d.h, d.hkv, d.l, d.t, d.dh, d.rep(), d.scale());
    // (B, L, H·Dh) → (B, H, L, Dh) → (B, Hkv, rep·L, Dh)
    let gg = g.reshape((b, l, h, dh))?.transpose(1, 2)?.contiguous()?.reshape((b, hkv, rep * l, dh))?;
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
