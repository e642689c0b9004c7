//! A decoder layer as one graph node, for training.
//!
//! The per-op path ([`crate::model::llama`]) makes about twenty autograd nodes per layer, and
//! candle's backward pass pays, for every input of every node, a zero-filled buffer plus an
//! addition before the gradient is usable. Here the whole layer — RMSNorm, q/k/v projections
//! (LoRA or full), RoPE, attention with recomputation, o projection, residual, RMSNorm,
//! SwiGLU MLP, residual — runs outside the graph and re-enters it as a single node whose
//! backward is written out by hand from the same pieces ([`crate::model::ops`],
//! [`crate::model::attention`], [`crate::model::kernels`]). The layer's input gradient goes back
//! through candle; the gradients of its parameters go to the model's [`GradSink`], which the
//! training loop's gradient accumulator drains after each backward pass.
//!
//! The node hangs on the layer input and one of the layer's trainable tensors (the "anchor",
//! so that the node is recorded even when the input needs no gradient, as in layer 0 of a LoRA
//! model). Tests compare every gradient with the per-op path.

use super::lora::{GradSink, Linear, Weight};
use super::ops::{self, Attach2};
use super::{attention, kernels};
use candle_core::{DType, Result, Tensor};

/// What a linear layer is, for the fused path.
#[derive(Clone)]
enum Lin {
    /// y = x Wᵀ, nothing trains.
    Frozen(Tensor),
    /// y = x Wᵀ + (x Aᵀ)(s·B)ᵀ: A and B train (f32 tensors of their Vars); `ad`, `bd` are A and
    /// s·B in the compute dtype, cast once per step.
    Lora { w: Tensor, a: Tensor, b: Tensor, ad: Tensor, bd: Tensor, scale: f64 },
    /// y = x W_cᵀ, W (f32 Var tensor) trains; `wc` is its compute-dtype copy.
    Full { w: Tensor, wc: Tensor },
}

impl Lin {
    /// The fused form of `l` for inputs of `dtype`, or None when only the per-op path applies
    /// (dropout on the adapter, mixed dtypes).
    fn of(l: &Linear, dtype: DType) -> Result<Option<Self>> {
        let lora = l.lora.as_ref().filter(|_| !l.disabled);
        Ok(match (&l.weight, lora) {
            (Weight::Frozen(w), None) if w.dtype() == dtype => Some(Lin::Frozen(w.clone())),
            (Weight::Frozen(w), Some(a)) if w.dtype() == dtype && a.dropout == 0.0 => {
                let (ad, bd) = ops::lora_cast(a.a.as_tensor(), a.b.as_tensor(), a.scale, dtype)?;
                Some(Lin::Lora { w: w.clone(), a: a.a.as_tensor().clone(), b: a.b.as_tensor().clone(), ad, bd, scale: a.scale })
            }
            (Weight::Trainable(v), None) => Some(Lin::Full { w: v.as_tensor().clone(), wc: v.as_tensor().detach().to_dtype(dtype)? }),
            _ => None,
        })
    }

    /// A trainable tensor of this layer, if any.
    fn param(&self) -> Option<&Tensor> {
        match self {
            Lin::Frozen(_) => None,
            Lin::Lora { a, .. } => Some(a),
            Lin::Full { w, .. } => Some(w),
        }
    }

    /// Rows (N, in) → (N, out), outside the graph.
    fn fwd(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Lin::Frozen(w) => ops::frozen_linear(x, w),
            Lin::Lora { w, ad, bd, .. } => ops::lora_fwd(x, w, ad, bd),
            Lin::Full { wc, .. } => x.matmul(&wc.t()?),
        }
    }

    /// Input gradient for output gradient `g` (N, out); parameter gradients go to `sink`.
    fn bwd(&self, x: &Tensor, g: &Tensor, sink: &GradSink) -> Result<Tensor> {
        match self {
            Lin::Frozen(w) => g.contiguous()?.matmul(w),
            Lin::Lora { w, a, b, ad, bd, scale } => {
                let (dx, da, db) = ops::lora_bwd(x, g, w, ad, bd, *scale)?;
                sink.add(a, da)?;
                sink.add(b, db)?;
                Ok(dx)
            }
            Lin::Full { w, wc } => {
                let (dx, dw) = ops::trainable_bwd(x, g, wc)?;
                sink.add(w, dw)?;
                Ok(dx)
            }
        }
    }
}

/// An RMSNorm weight for the fused path: the compute-dtype weight and, when it trains, its Var
/// tensor.
#[derive(Clone)]
struct Norm {
    wc: Tensor,
    param: Option<Tensor>,
    eps: f64,
}

impl Norm {
    fn of(w: &Weight, eps: f64, dtype: DType) -> Result<Self> {
        Ok(match w {
            Weight::Frozen(t) => Norm { wc: t.to_dtype(dtype)?, param: None, eps },
            Weight::Trainable(v) => Norm { wc: v.as_tensor().detach().to_dtype(dtype)?, param: Some(v.as_tensor().clone()), eps },
        })
    }
    fn fwd(&self, x: &Tensor) -> Result<Tensor> {
        candle_nn::ops::rms_norm(&x.contiguous()?, &self.wc, self.eps as f32)
    }
    fn bwd(&self, x: &Tensor, g: &Tensor, sink: &GradSink) -> Result<Tensor> {
        if let Some(p) = &self.param {
            sink.add(p, ops::rms_norm_weight_grad(x, g, self.eps)?.to_dtype(p.dtype())?)?;
        }
        kernels::rms_norm_bwd(x, &self.wc, g, self.eps)
    }
}

/// The parts of one decoder layer, ready for [`forward`].
pub struct Parts<'a> {
    /// Pre-attention RMSNorm weight and epsilon.
    pub norm1: (&'a Weight, f64),
    /// q, k, v, o projections.
    pub attn: [&'a Linear; 4],
    /// Pre-MLP RMSNorm weight and epsilon.
    pub norm2: (&'a Weight, f64),
    /// gate, up, down projections.
    pub mlp: [&'a Linear; 3],
    /// Query heads and key/value heads.
    pub heads: (usize, usize),
}

/// The layer on `x` (B, L, D) as one graph node, or None when a part needs the per-op path or
/// nothing in the layer trains. `cos`, `sin`: RoPE tables (L, Dh/2) in x's dtype.
pub fn forward(p: &Parts, x: &Tensor, bias: Option<&Tensor>, cos: &Tensor, sin: &Tensor, sink: &GradSink) -> Result<Option<Tensor>> {
    let dt = x.dtype();
    let mut lins = Vec::with_capacity(7);
    for l in p.attn.iter().chain(p.mlp.iter()) {
        match Lin::of(l, dt)? {
            Some(f) => lins.push(f),
            None => return Ok(None),
        }
    }
    let n1 = Norm::of(p.norm1.0, p.norm1.1, dt)?;
    let n2 = Norm::of(p.norm2.0, p.norm2.1, dt)?;
    let Some(anchor) = lins.iter().find_map(|l| l.param()).or(n1.param.as_ref()).or(n2.param.as_ref()).cloned() else {
        return Ok(None);
    };
    let (hq, hkv) = p.heads;
    let (b, l, d) = x.dims3()?;
    let n = b * l;
    let bias = bias.map(|t| t.detach());
    let x = x.contiguous()?;
    let xd = x.detach();
    // attention half
    let h1 = n1.fwd(&xd)?.reshape((n, d))?; // (N, D)
    let (q, k, v) = (lins[0].fwd(&h1)?, lins[1].fwd(&h1)?, lins[2].fwd(&h1)?); // (N, H·Dh), (N, Hkv·Dh) ×2
    let qh = ops::rope_heads_fwd(&q.reshape((b, l, ()))?, hq, cos, sin)?; // (B, H, L, Dh)
    let kh = ops::rope_heads_fwd(&k.reshape((b, l, ()))?, hkv, cos, sin)?; // (B, Hkv, L, Dh)
    let dh = d / hq;
    let vh = v.reshape((b, l, hkv, dh))?.transpose(1, 2)?.contiguous()?; // (B, Hkv, L, Dh)
    let a = attention::attention_fwd(&qh, &kh, &vh, bias.as_ref())?.reshape((n, d))?; // (N, D)
    let x2 = (&xd + lins[3].fwd(&a)?.reshape((b, l, d))?)?; // (B, L, D)
    // MLP half
    let h2 = n2.fwd(&x2)?.reshape((n, d))?; // (N, D)
    let (g, u) = (lins[4].fwd(&h2)?, lins[5].fwd(&h2)?); // (N, F)
    let m = kernels::swiglu(&g, &u)?;
    let x3 = (&x2 + lins[6].fwd(&m)?.reshape((b, l, d))?)?; // (B, L, D)
    let x_tracks = x.track_op();
    let (sink, cos, nsin) = (sink.clone(), cos.clone(), sin.neg()?);
    let y = Attach2::apply(
        "decoder-layer",
        [&x, &anchor],
        x3,
        Box::new(move |[_x, _anchor], _y, dy| {
            let dy = dy.contiguous()?; // (B, L, D)
            // MLP half
            let dm = lins[6].bwd(&m, &dy.reshape((n, d))?, &sink)?; // (N, F)
            let (dg, du) = kernels::swiglu_bwd(&g, &u, &dm)?;
            let dh2 = (lins[4].bwd(&h2, &dg, &sink)? + lins[5].bwd(&h2, &du, &sink)?)?.reshape((b, l, d))?;
            let dx2 = (&dy + n2.bwd(&x2, &dh2, &sink)?)?; // (B, L, D)
            // attention half
            let da = lins[3].bwd(&a, &dx2.reshape((n, d))?, &sink)?.reshape((b, l, d))?;
            let (dq, dk, dv) = attention::attention_bwd(&qh, &kh, &vh, bias.as_ref(), &da)?;
            let dq = ops::rope_heads_bwd(&dq, &cos, &nsin)?.reshape((n, ()))?;
            let dk = ops::rope_heads_bwd(&dk, &cos, &nsin)?.reshape((n, ()))?;
            let dv = dv.transpose(1, 2)?.contiguous()?.reshape((n, ()))?;
            let dh1 = ((lins[0].bwd(&h1, &dq, &sink)? + lins[1].bwd(&h1, &dk, &sink)?)? + lins[2].bwd(&h1, &dv, &sink)?)?;
            let dx1 = n1.bwd(&xd, &dh1.reshape((b, l, d))?, &sink)?;
            Ok([if x_tracks { Some((dx2 + dx1)?) } else { None }, None])
        }),
    )?;
    Ok(Some(y))
}
