//! Scaled dot-product attention for training, with the attention matrix recomputed in backward.
//!
//! The forward computes P = softmax(q kᵀ/√d + bias) and O = P v outside the graph and keeps
//! only q, k, v (and O) for backward — no (B, H, L, T) matrix survives the forward pass. The
//! backward recomputes P and applies, with δ = rowsum(dO ⊙ O):
//! dv = Pᵀ dO, dP = dO vᵀ, dS = P ⊙ (dP − δ), dq = dS k/√d, dk = dSᵀ q/√d —
//! the same trade FlashAttention makes (one extra q kᵀ product for O(L²) less memory), here
//! with candle's matmul and fused softmax kernels. Grouped-query attention: k and v have Hkv
//! heads, each serving `H / Hkv` query heads; their gradients are summed over the group.

use super::ops::Attach3;
use candle_core::{DType, Result, Tensor, D};

/// (B, Hkv, T, Dh) → (B, Hkv·rep, T, Dh): head h of the result is head h / rep of the input.
pub fn repeat_kv(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, l, d) = x.dims4()?;
    x.unsqueeze(2)?.broadcast_as((b, h, rep, l, d))?.reshape((b, h * rep, l, d))
}

/// Sum the gradient of repeated heads back onto their shared head: (B, Hkv·rep, T, Dh) → (B, Hkv, T, Dh).
fn group_sum(x: &Tensor, rep: usize) -> Result<Tensor> {
    if rep == 1 {
        return Ok(x.clone());
    }
    let (b, h, l, d) = x.dims4()?;
    x.reshape((b, h / rep, rep, l, d))?.sum(2)
}

/// P = softmax(q kᵀ · scale + bias): (B, H, L, T). Inputs detached; `kr` already repeated.
fn probs(q: &Tensor, kr: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let mut s = (q * scale)?.matmul(&kr.t()?)?; // (B, H, L, T)
    if let Some(bias) = bias {
        s = s.broadcast_add(bias)?;
    }
    candle_nn::ops::softmax_last_dim(&s)
}

/// Attention of `q` (B, H, L, Dh) over `k`, `v` (B, Hkv, T, Dh) with an additive `bias`
/// broadcastable to (B, H, L, T). Returns (B, H, L, Dh). Differentiable in q, k and v.
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
    let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
    let (_, h, _, dh) = q.dims4()?;
    let hkv = k.dim(1)?;
    if hkv == 0 || h % hkv != 0 {
        candle_core::bail!("attention: {h} query heads cannot share {hkv} key/value heads")
    }
    let rep = h / hkv;
    let scale = 1.0 / (dh as f64).sqrt();
    let bias = bias.map(|b| b.detach());
    let o = {
        let (qd, kd, vd) = (q.detach(), k.detach(), v.detach());
        let p = probs(&qd, &repeat_kv(&kd, rep)?, bias.as_ref(), scale)?;
        p.matmul(&repeat_kv(&vd, rep)?.contiguous()?)? // (B, H, L, Dh)
    };
    Attach3::apply(
        "attention",
        [&q, &k, &v],
        o,
        Box::new(move |[q, k, v], o, g| {
            let dt = q.dtype();
            let g = g.contiguous()?; // (B, H, L, Dh)
            let kr = repeat_kv(k, rep)?.contiguous()?;
            let vr = repeat_kv(v, rep)?.contiguous()?;
            let p = probs(q, &kr, bias.as_ref(), scale)?; // (B, H, L, T)
            let dv = p.t()?.matmul(&g)?; // (B, H, T, Dh)
            let dp = g.matmul(&vr.t()?)?; // (B, H, L, T)
            // δ = rowsum(dO ⊙ O) = rowsum(dP ⊙ P); dS = P ⊙ (dP − δ)
            let delta = (g.to_dtype(DType::F32)? * o.to_dtype(DType::F32)?)?.sum_keepdim(D::Minus1)?; // (B, H, L, 1)
            let ds = (p.to_dtype(DType::F32)? * dp.to_dtype(DType::F32)?.broadcast_sub(&delta)?)?.to_dtype(dt)?;
            let dq = (ds.matmul(&kr)? * scale)?; // (B, H, L, Dh)
            let dk = (ds.t()?.matmul(q)? * scale)?; // (B, H, T, Dh)
            Ok([Some(dq), Some(group_sum(&dk, rep)?), Some(group_sum(&dv, rep)?)])
        }),
    )
}

/// The reference composite (autograd through every op), for tests.
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
    p.matmul(&vr)
}
