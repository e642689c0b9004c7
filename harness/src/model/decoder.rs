//! One LLaMA decoder layer — RMSNorm, grouped-query attention with RoPE, residual, RMSNorm,
//! SwiGLU MLP, residual — and the two ways to run it:
//! - [`DecoderLayer::forward`]: plain candle ops. Inference (with the KV cache) uses candle's
//!   fused kernels; in training ([`Fwd::train`]) every op is a differentiable composite
//!   (`rms_norm_slow`, `rope_slow`, attention with an explicit softmax), so autograd gives the
//!   reference gradients. This is `model.layer_path = "reference"`.
//! - [`DecoderLayer::forward_fused`]: the layer as one autograd node whose backward is written out
//!   by hand (`model.layer_path = "fused"`, the default). candle's backward pays, for every input of
//!   every node, a zero-filled buffer plus an addition; the per-op layer has about twenty nodes.
//!   Here the layer runs outside the graph and re-enters it as a single node: its input gradient
//!   goes back through candle, its parameters' gradients go to the model's [`GradSink`], which
//!   the gradient accumulator drains after each backward pass. The node hangs on the layer input
//!   and one trainable tensor of the layer (the "anchor"), so that it is recorded even when the
//!   input needs no gradient (layer 0 of a LoRA model). Attention recomputes its probabilities in
//!   backward ([`crate::model::attention`]: on CUDA in bf16 with the FlashAttention kernels of
//!   [`crate::kernels::flash`], which keep only the output and per-row softmax statistics); the
//!   row-wise pieces run as bf16 CUDA kernels ([`crate::kernels::fused`]).
//!
//! Tests compare the two paths: loss, every parameter gradient and the input gradient.

use super::attention;
use super::linear::{Linear, Saved};
use super::llama::LlamaConfig;
use super::lora::{AdapterConfig, AdapterKind};
use super::ops::{self, Attach1, Attach2};
use super::params::{Fwd, GradSink, Trainable, Weight};
use crate::kernels::fused as kernels;
use crate::kernels::layout::swap_axes;
use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// How training runs each decoder layer (`model.layer_path`), decided once when the model is
/// built and recorded in the run's `config.json`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LayerPath {
    /// One graph node per layer with a hand-written backward ([`DecoderLayer::forward_fused`]).
    #[default]
    Fused,
    /// Autograd through every op ([`DecoderLayer::forward`]): slow, for checking.
    Reference,
}

/// What loading a block needs besides its VarBuilder.
pub struct LoadCtx<'a> {
    /// Model shape.
    pub cfg: &'a LlamaConfig,
    /// What trains.
    pub adapter: &'a AdapterConfig,
    /// Seed of adapter initialisation.
    pub seed: u64,
    /// Index of the last linear created (seeds each adapter's init and dropout).
    pub index: u64,
    /// Where trainable parameters are registered, in creation order.
    pub tr: &'a mut Trainable,
}

impl LoadCtx<'_> {
    fn linear(&mut self, vb: VarBuilder, out: usize, inp: usize) -> crate::Result<Linear> {
        self.index += 1;
        Linear::load(&vb, (out, inp), self.adapter, self.index, self.seed, self.tr)
    }

    /// [`LoadCtx::linear`] with a bias when `bias` (Qwen2's q, k, v).
    fn linear_maybe_biased(&mut self, vb: VarBuilder, out: usize, inp: usize, bias: bool) -> crate::Result<Linear> {
        if !bias {
            return self.linear(vb, out, inp);
        }
        self.index += 1;
        Linear::load_with_bias(&vb, (out, inp), self.adapter, self.index, self.seed, self.tr)
    }
}

/// RMSNorm: x / sqrt(mean(x²) + eps) · w.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Weight,
    eps: f64,
}

impl RmsNorm {
    /// The weight (D) as the model uses it, f32.
    pub fn weight_f32(&self) -> Result<Tensor> {
        self.weight.stored().to_dtype(DType::F32)
    }

    /// The weight (D) at `vb`, trainable under full fine-tuning.
    pub fn load(vb: VarBuilder, size: usize, ctx: &mut LoadCtx) -> crate::Result<Self> {
        let weight = Weight::new(vb.get(size, "weight")?, format!("{}.weight", vb.prefix()), ctx.adapter.kind == AdapterKind::Full, ctx.tr)?;
        Ok(Self { weight, eps: ctx.cfg.rms_norm_eps })
    }

    /// (..., D) → (..., D); differentiable composite when `ctx.train`.
    pub fn forward(&self, x: &Tensor, ctx: &Fwd) -> Result<Tensor> {
        let w = self.weight.get(x.dtype())?;
        if ctx.train {
            return candle_nn::ops::rms_norm_slow(x, &w, self.eps as f32);
        }
        candle_nn::ops::rms_norm(&x.contiguous()?, &w, self.eps as f32)
    }

    /// The compute-dtype weight and, when it trains, its Var tensor.
    fn fused(&self, dtype: DType) -> Result<(Tensor, Option<Tensor>)> {
        Ok(match &self.weight {
            Weight::Frozen(t) => (t.to_dtype(dtype)?, None),
            Weight::Trainable(v) => (v.as_tensor().detach().to_dtype(dtype)?, Some(v.as_tensor().clone())),
        })
    }
}

/// Precomputed RoPE tables (HF "rotate half" convention).
#[derive(Debug, Clone)]
pub struct Rotary {
    cos: Tensor, // (max_pos, head_dim/2), f32
    sin: Tensor,
}

impl Rotary {
    /// Tables for every position of `cfg`.
    pub fn new(cfg: &LlamaConfig, device: &Device) -> Result<Self> {
        let half = cfg.head_dim() / 2;
        let inv: Vec<f32> = (0..half).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim() as f64) as f32).collect();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let pos = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?.to_dtype(DType::F32)?.reshape((cfg.max_position_embeddings, 1))?;
        let freqs = pos.broadcast_mul(&inv)?; // (max_pos, half)
        Ok(Self { cos: freqs.cos()?, sin: freqs.sin()? })
    }

    /// cos and sin of positions offset..offset+L: (L, Dh/2) each, in `dtype`.
    pub fn tables(&self, offset: usize, l: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, offset, l)?.to_dtype(dtype)?, self.sin.narrow(0, offset, l)?.to_dtype(dtype)?))
    }

    /// cos and sin of the `l` columns at `pos`: (L, Dh/2) for [`Positions::From`], (B, L, Dh/2)
    /// for [`Positions::At`], in `dtype`.
    pub fn tables_for(&self, pos: Positions, l: usize, dtype: DType) -> Result<(Tensor, Tensor)> {
        match pos {
            Positions::From(offset) => self.tables(offset, l, dtype),
            Positions::At(p) => {
                let (b, lp) = p.dims2()?;
                if lp != l {
                    candle_core::bail!("RoPE positions of {lp} columns for a chunk of {l}")
                }
                let flat = p.flatten_all()?;
                let half = self.cos.dim(1)?;
                let pick = |t: &Tensor| t.index_select(&flat, 0)?.reshape((b, l, half))?.to_dtype(dtype); // (B, L, Dh/2)
                Ok((pick(&self.cos)?, pick(&self.sin)?))
            }
        }
    }

    /// x: (B, H, L, Dh) at positions `pos`; differentiable composite when `ctx.train`.
    fn apply(&self, x: &Tensor, pos: Positions, ctx: &Fwd) -> Result<Tensor> {
        let (cos, sin) = self.tables_for(pos, x.dim(2)?, x.dtype())?; // (L | B·L, Dh/2)
        if ctx.train {
            // the rotate-half composite (candle's `rope_slow`), differentiable: tables (L, Dh) or,
            // per row, (B, 1, L, Dh), broadcast over the heads
            let full = |t: &Tensor| {
                let t = Tensor::cat(&[t, t], D::Minus1)?; // (L | B·L, Dh)
                if t.rank() == 3 { t.unsqueeze(1) } else { Ok(t) }
            };
            let half = x.dim(D::Minus1)? / 2;
            let rot = Tensor::cat(&[&x.narrow(D::Minus1, half, half)?.neg()?, &x.narrow(D::Minus1, 0, half)?], D::Minus1)?;
            return x.broadcast_mul(&full(&cos)?)? + rot.broadcast_mul(&full(&sin)?)?;
        }
        candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin)
    }
}

/// The RoPE positions of a chunk's columns.
#[derive(Debug, Clone, Copy)]
pub enum Positions<'a> {
    /// `offset..offset + L` in every row.
    From(usize),
    /// Explicit, (B, L) u32: packed rows restart them per pair, block diffusion's clean copy
    /// repeats the noised copy's.
    At(&'a Tensor),
}

/// Cached keys and values of one layer: (B, Hkv, T, Dh).
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

impl LayerCache {
    /// `b` copies of a one-sequence cache, as a batch: (1, Hkv, T, Dh) → (b, Hkv, T, Dh).
    pub(crate) fn repeat_batch(&self, b: usize) -> Result<Self> {
        let rep = |t: &Option<Tensor>| t.as_ref().map(|t| t.repeat((b, 1, 1, 1))).transpose();
        Ok(Self { k: rep(&self.k)?, v: rep(&self.v)? })
    }

    /// The batch rows `rows`, in that order: (B, Hkv, T, Dh) → (n, Hkv, T, Dh).
    pub(crate) fn select_rows(&self, rows: &[u32]) -> Result<Self> {
        let sel = |t: &Option<Tensor>| t.as_ref().map(|t| t.index_select(&Tensor::new(rows, t.device())?, 0)).transpose();
        Ok(Self { k: sel(&self.k)?, v: sel(&self.v)? })
    }

    /// The cached keys and values, (B, Hkv, T, Dh) each; None while empty.
    pub(crate) fn kv(&self) -> (Option<&Tensor>, Option<&Tensor>) {
        (self.k.as_ref(), self.v.as_ref())
    }

    /// A cache holding these keys and values, (B, Hkv, T, Dh) each.
    pub(crate) fn from_kv(k: Option<Tensor>, v: Option<Tensor>) -> Self {
        Self { k, v }
    }
}

#[derive(Debug, Clone)]
struct Attention {
    q_proj: Linear,
    k_proj: Linear,
    v_proj: Linear,
    o_proj: Linear,
    n_heads: usize,
    n_kv: usize,
    head_dim: usize,
    /// Qwen3's per-head RMSNorm of q and of k (Dh), applied before RoPE.
    q_norm: Option<RmsNorm>,
    k_norm: Option<RmsNorm>,
}

impl Attention {
    fn load(vb: VarBuilder, ctx: &mut LoadCtx) -> crate::Result<Self> {
        let (d, hd, qw, kvd) = (ctx.cfg.hidden_size, ctx.cfg.head_dim(), ctx.cfg.q_width(), ctx.cfg.kv_heads() * ctx.cfg.head_dim());
        let q_proj = ctx.linear_maybe_biased(vb.pp("q_proj"), qw, d, ctx.cfg.qkv_bias)?;
        let k_proj = ctx.linear_maybe_biased(vb.pp("k_proj"), kvd, d, ctx.cfg.qkv_bias)?;
        let v_proj = ctx.linear_maybe_biased(vb.pp("v_proj"), kvd, d, ctx.cfg.qkv_bias)?;
        let o_proj = ctx.linear(vb.pp("o_proj"), d, qw)?;
        let (q_norm, k_norm) = if ctx.cfg.qk_norm {
            (Some(RmsNorm::load(vb.pp("q_norm"), hd, ctx)?), Some(RmsNorm::load(vb.pp("k_norm"), hd, ctx)?))
        } else {
            (None, None)
        };
        Ok(Self { q_proj, k_proj, v_proj, o_proj, n_heads: ctx.cfg.num_attention_heads, n_kv: ctx.cfg.kv_heads(), head_dim: hd, q_norm, k_norm })
    }

    /// (B, L, D) → (B, L, D), appending this chunk's keys and values to `cache`.
    fn forward(&self, x: &Tensor, bias: Option<&Tensor>, rot: &Rotary, ctx: &Fwd, cache: Option<&mut LayerCache>, pos: Positions) -> Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        // (B, n, L, Dh); the reference training path keeps autograd's transpose
        let heads = |y: Tensor, n: usize| {
            let y = y.reshape((b, l, n, self.head_dim))?;
            if ctx.train { y.transpose(1, 2)?.contiguous() } else { swap_axes(&y) }
        };
        // Qwen3: each head's q and k RMS-normed over Dh before RoPE
        let norm = |t: Tensor, n: &Option<RmsNorm>| match n {
            Some(n) => n.forward(&t, ctx),
            None => Ok(t),
        };
        let q = rot.apply(&norm(heads(self.q_proj.forward(x, ctx)?, self.n_heads)?, &self.q_norm)?, pos, ctx)?; // (B, H, L, Dh)
        let mut k = rot.apply(&norm(heads(self.k_proj.forward(x, ctx)?, self.n_kv)?, &self.k_norm)?, pos, ctx)?; // (B, Hkv, L, Dh)
        let mut v = heads(self.v_proj.forward(x, ctx)?, self.n_kv)?;
        if let Some(c) = cache {
            if let (Some(pk), Some(pv)) = (&c.k, &c.v) {
                k = Tensor::cat(&[pk, &k], 2)?; // (B, Hkv, T, Dh)
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            c.k = Some(k.clone());
            c.v = Some(v.clone());
        }
        let y = if ctx.train {
            attention::attention_reference(&q, &k, &v, bias)?
        } else {
            attention::attention_fwd(&q, &k, &v, bias)?.0 // what a backward would need is dropped
        }; // (B, L, D)
        self.o_proj.forward(&y, ctx)
    }
}

#[derive(Debug, Clone)]
struct Mlp {
    gate_proj: Linear,
    up_proj: Linear,
    down_proj: Linear,
}

impl Mlp {
    fn load(vb: VarBuilder, ctx: &mut LoadCtx) -> crate::Result<Self> {
        let (d, f) = (ctx.cfg.hidden_size, ctx.cfg.intermediate_size);
        Ok(Self { gate_proj: ctx.linear(vb.pp("gate_proj"), f, d)?, up_proj: ctx.linear(vb.pp("up_proj"), f, d)?, down_proj: ctx.linear(vb.pp("down_proj"), d, f)? })
    }

    fn forward(&self, x: &Tensor, ctx: &Fwd) -> Result<Tensor> {
        let g = self.gate_proj.forward(x, ctx)?; // (B, L, F)
        let u = self.up_proj.forward(x, ctx)?;
        let m = if ctx.train { kernels::swiglu_composite(&g, &u)? } else { kernels::swiglu(&g, &u)? };
        self.down_proj.forward(&m, ctx)
    }
}

/// One decoder layer with Hugging Face parameter names.
#[derive(Debug, Clone)]
pub struct DecoderLayer {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl DecoderLayer {
    /// Load layer `vb` (prefix `model.layers.<i>`): its linears first (q, k, v, o, gate, up,
    /// down), then its norms, which is the order the trainable parameters are registered in.
    pub fn load(vb: VarBuilder, ctx: &mut LoadCtx) -> crate::Result<Self> {
        let self_attn = Attention::load(vb.pp("self_attn"), ctx)?;
        let mlp = Mlp::load(vb.pp("mlp"), ctx)?;
        let d = ctx.cfg.hidden_size;
        let input_layernorm = RmsNorm::load(vb.pp("input_layernorm"), d, ctx)?;
        let post_attention_layernorm = RmsNorm::load(vb.pp("post_attention_layernorm"), d, ctx)?;
        Ok(Self { input_layernorm, self_attn, post_attention_layernorm, mlp })
    }

    /// The layer's linears with their module names: q, k, v, o, gate, up, down.
    pub fn linears(&self) -> [(&'static str, &Linear); 7] {
        let (a, m) = (&self.self_attn, &self.mlp);
        [("self_attn.q_proj", &a.q_proj), ("self_attn.k_proj", &a.k_proj), ("self_attn.v_proj", &a.v_proj), ("self_attn.o_proj", &a.o_proj), ("mlp.gate_proj", &m.gate_proj), ("mlp.up_proj", &m.up_proj), ("mlp.down_proj", &m.down_proj)]
    }

    /// The layer's norms with their module names: the two of every layer, then Qwen3's q and k
    /// norms when it has them.
    pub fn norms(&self) -> Vec<(&'static str, &RmsNorm)> {
        let mut v = vec![("input_layernorm", &self.input_layernorm), ("post_attention_layernorm", &self.post_attention_layernorm)];
        if let (Some(q), Some(k)) = (&self.self_attn.q_norm, &self.self_attn.k_norm) {
            v.push(("self_attn.q_norm", q));
            v.push(("self_attn.k_norm", k));
        }
        v
    }

    /// The layer's linears, mutable, in the order of [`DecoderLayer::linears`].
    pub fn linears_mut(&mut self) -> [&mut Linear; 7] {
        let (a, m) = (&mut self.self_attn, &mut self.mlp);
        [&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj, &mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]
    }

    /// Plain candle forward of `x` (B, L, D) → (B, L, D) at RoPE positions `pos`; `bias`
    /// broadcastable to (B, H, L, T).
    pub fn forward(&self, x: &Tensor, bias: Option<&Tensor>, rot: &Rotary, ctx: &Fwd, cache: Option<&mut LayerCache>, pos: Positions) -> Result<Tensor> {
        let h = self.input_layernorm.forward(x, ctx)?;
        let x = (x + self.self_attn.forward(&h, bias, rot, ctx, cache, pos)?)?;
        let h = self.post_attention_layernorm.forward(&x, ctx)?;
        x.clone() + self.mlp.forward(&h, ctx)?
    }

    /// The layer on `x` (B, L, D) as one graph node with a hand-written backward. `cos`, `sin`:
    /// RoPE tables (L, Dh/2), or (B, L, Dh/2) per row, in x's dtype; `ctx` seeds the adapters' dropout.
    pub fn forward_fused(&self, x: &Tensor, bias: Option<&Tensor>, cos: &Tensor, sin: &Tensor, ctx: &Fwd, sink: &GradSink) -> Result<Tensor> {
        let dt = x.dtype();
        let lins: Vec<Linear> = self.linears().iter().map(|(_, l)| (*l).clone()).collect();
        let (w1, p1) = self.input_layernorm.fused(dt)?;
        let (w2, p2) = self.post_attention_layernorm.fused(dt)?;
        let (eps1, eps2) = (self.input_layernorm.eps, self.post_attention_layernorm.eps);
        let anchor = lins.iter().find_map(|l| l.param().cloned()).or(p1.clone()).or(p2.clone());
        let (hq, hkv) = (self.self_attn.n_heads, self.self_attn.n_kv);
        let (b, l, d) = x.dims3()?;
        let (n, dh) = (b * l, self.self_attn.head_dim);
        // Qwen3's per-head q/k norms: (weight in dt, its parameter when it trains, eps)
        let qk_norms: Option<[(Tensor, Option<Tensor>, f64); 2]> = match (&self.self_attn.q_norm, &self.self_attn.k_norm) {
            (Some(qn), Some(kn)) => {
                let (wq, pq) = qn.fused(dt)?;
                let (wk, pk) = kn.fused(dt)?;
                Some([(wq, pq, qn.eps), (wk, pk, kn.eps)])
            }
            _ => None,
        };
        let bias = bias.map(|t| t.detach());
        let x = x.contiguous()?;
        let xd = x.detach();
        // attention half
        let h1 = candle_nn::ops::rms_norm(&xd, &w1, eps1 as f32)?.reshape((n, d))?; // (N, D)
        let (q, sq) = lins[0].fwd_rows(&h1, ctx)?; // (N, H·Dh)
        let (k, sk) = lins[1].fwd_rows(&h1, ctx)?; // (N, Hkv·Dh)
        let (v, sv) = lins[2].fwd_rows(&h1, ctx)?;
        // the rows of each head (N·heads, Dh) before the norm, and q, k after it
        let (q_rows, k_rows) = (q.reshape((n * hq, dh))?, k.reshape((n * hkv, dh))?);
        let (q, k) = match &qk_norms {
            Some([(wq, _, eq), (wk, _, ek)]) => (
                candle_nn::ops::rms_norm(&q_rows, wq, *eq as f32)?.reshape((n, hq * dh))?,
                candle_nn::ops::rms_norm(&k_rows, wk, *ek as f32)?.reshape((n, hkv * dh))?,
            ),
            None => (q, k),
        };
        let qh = ops::rope_heads_fwd(&q.reshape((b, l, ()))?, hq, cos, sin)?; // (B, H, L, Dh)
        let kh = ops::rope_heads_fwd(&k.reshape((b, l, ()))?, hkv, cos, sin)?; // (B, Hkv, L, Dh)
        let vh = swap_axes(&v.reshape((b, l, hkv, dh))?)?; // (B, Hkv, L, Dh)
        let (a, att) = attention::attention_fwd(&qh, &kh, &vh, bias.as_ref())?; // (B, L, H·Dh), what backward needs
        let a = a.reshape((n, hq * dh))?; // (N, H·Dh)
        // the residual stream: a copy of the input the o projection accumulates into
        let (x2, so) = lins[3].fwd_rows_acc(&a, ctx, Some(xd.reshape((n, d))?.copy()?))?;
        let x2 = x2.reshape((b, l, d))?; // (B, L, D)
        // MLP half
        let h2 = candle_nn::ops::rms_norm(&x2, &w2, eps2 as f32)?.reshape((n, d))?; // (N, D)
        let (g, sg) = lins[4].fwd_rows(&h2, ctx)?; // (N, F)
        let (u, su) = lins[5].fwd_rows(&h2, ctx)?;
        let m = kernels::swiglu(&g, &u)?;
        let (x3, sd) = lins[6].fwd_rows_acc(&m, ctx, Some(x2.reshape((n, d))?.copy()?))?;
        let x3 = x3.reshape((b, l, d))?; // (B, L, D)
        let x_tracks = x.track_op();
        let sink = sink.clone();
        let nsin = sin.neg()?;
        let cos = cos.clone();
        let saved: [Saved; 7] = [sq, sk, sv, so, sg, su, sd];
        let bwd = move |dy: &Tensor| -> Result<Tensor> {
            let dy = dy.contiguous()?; // (B, L, D)
            // MLP half
            let dm = lins[6].bwd_rows(&saved[6], &dy.reshape((n, d))?, &sink)?; // (N, F)
            let (dg, du) = kernels::swiglu_bwd(&g, &u, &dm)?;
            let dh2 = lins[4].bwd_rows(&saved[4], &dg, &sink)?; // (N, D)
            let dh2 = lins[5].bwd_rows_acc(&saved[5], &du, &sink, Some(dh2))?.reshape((b, l, d))?;
            let dx2 = norm_bwd(&x2, &w2, p2.as_ref(), eps2, &dh2, &sink, Some(&dy))?; // (B, L, D): + the residual's dy
            // attention half
            let da = lins[3].bwd_rows(&saved[3], &dx2.reshape((n, d))?, &sink)?.reshape((b, l, hq * dh))?;
            let (dq, dk, dv) = attention::attention_bwd(&qh, &kh, &vh, bias.as_ref(), &att, &da)?;
            let dq = ops::rope_heads_bwd(&dq, &cos, &nsin)?.reshape((n, ()))?;
            let dk = ops::rope_heads_bwd(&dk, &cos, &nsin)?.reshape((n, ()))?;
            // through Qwen3's per-head norms (their weights' gradients into the sink)
            let (dq, dk) = match &qk_norms {
                Some([(wq, pq, eq), (wk, pk, ek)]) => (
                    norm_bwd(&q_rows, wq, pq.as_ref(), *eq, &dq.reshape((n * hq, dh))?, &sink, None)?.reshape((n, hq * dh))?,
                    norm_bwd(&k_rows, wk, pk.as_ref(), *ek, &dk.reshape((n * hkv, dh))?, &sink, None)?.reshape((n, hkv * dh))?,
                ),
                None => (dq, dk),
            };
            let dv = swap_axes(&dv)?.reshape((n, ()))?; // (B, L, Hkv, Dh) → (N, Hkv·Dh)
            let dh1 = lins[0].bwd_rows(&saved[0], &dq, &sink)?; // (N, D), then + the k and v paths in place
            let dh1 = lins[1].bwd_rows_acc(&saved[1], &dk, &sink, Some(dh1))?;
            let dh1 = lins[2].bwd_rows_acc(&saved[2], &dv, &sink, Some(dh1))?;
            norm_bwd(&xd, &w1, p1.as_ref(), eps1, &dh1.reshape((b, l, d))?, &sink, Some(&dx2)) // + the residual's dx2
        };
        match anchor {
            // the backward always runs (it delivers the parameter gradients); dx only when x tracks
            Some(anchor) => Attach2::apply("decoder-layer", [&x, &anchor], x3, Box::new(move |_, _, dy| {
                let dx = bwd(dy)?;
                Ok([x_tracks.then_some(dx), None])
            })),
            // nothing in the layer trains: a node on the input alone, or no node at all
            None if x_tracks => Attach1::apply("decoder-layer", &x, x3, Box::new(move |_, _, dy| bwd(dy))),
            None => Ok(x3),
        }
    }
}

/// RMSNorm's input gradient for `g` plus `res` (the residual stream's gradient) when given, its
/// weight's gradient (when `param` trains) into `sink`.
fn norm_bwd(x: &Tensor, wc: &Tensor, param: Option<&Tensor>, eps: f64, g: &Tensor, sink: &GradSink, res: Option<&Tensor>) -> Result<Tensor> {
    if let Some(p) = param {
        sink.add(p, ops::rms_norm_weight_grad(x, g, eps)?.to_dtype(p.dtype())?)?;
    }
    kernels::rms_norm_bwd_add(x, wc, g, eps, res)
}
