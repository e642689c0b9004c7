//! The one linear layer of the model (no bias: LLaMA has none): frozen, frozen with a LoRA
//! adapter, or trained fully. Two ways to run it, the same arithmetic:
//! - [`Linear::forward`]: plain candle ops, differentiable by autograd (inference, and the
//!   reference the fused path is tested against);
//! - [`Linear::fwd_rows`] / [`Linear::bwd_rows`]: outside the graph, for the fused decoder layer
//!   ([`crate::model::decoder`]), which calls the backward itself and hands the parameter
//!   gradients to a [`GradSink`].
//!
//! With W (out, in), the adapter's A (r, in), B (out, r), s = alpha/r and the dropout multiplier
//! m on the adapter input (1 without dropout), y = x Wᵀ + ((x⊙m) Aᵀ)(s·B)ᵀ. Backward, with
//! gb = g·sB: dx = g W + (gb A)⊙m, dA = gbᵀ (x⊙m), dB = s·gᵀ ((x⊙m) Aᵀ); no gradient for a frozen
//! W. A fully trained W: dx = g W_c, dW = gᵀ x (in f32), W_c its compute-dtype copy.

use super::lora::{AdapterConfig, AdapterKind, LoraAdapter};
use super::ops::frozen_linear;
use crate::kernels::gemm::{matmul_acc, matmul_tn_f32};
use super::params::{Fwd, GradSink, Trainable, Weight};
use candle_core::{DType, Tensor};
use candle_nn::VarBuilder;

type Res<T> = candle_core::Result<T>;

/// A linear layer, optionally with a LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    /// (out, in).
    pub weight: Weight,
    /// The adapter, when this module is a LoRA target.
    pub lora: Option<LoraAdapter>,
    /// Index used to seed this layer's adapter initialisation and dropout.
    pub index: u64,
    /// When true the adapter is skipped (base model output).
    pub disabled: bool,
    /// The bias (out), when the module has one (Qwen2's q, k, v): trained under full
    /// fine-tuning, frozen otherwise.
    pub bias: Option<Weight>,
}

/// What [`Linear::fwd_rows`] keeps for [`Linear::bwd_rows`].
pub struct Saved {
    /// The input rows (N, in).
    x: Tensor,
    /// The compute-dtype copies of this step: A and s·B (LoRA) or W (full).
    cast: Cast,
}

enum Cast {
    Frozen,
    /// A (r, in), s·B (out, r), the adapter input x⊙m, its projection z = (x⊙m) Aᵀ (N, r) and
    /// the dropout multiplier m.
    Lora { ad: Tensor, bd: Tensor, xin: Tensor, z: Tensor, mask: Option<Tensor> },
    /// W_c (out, in).
    Full { wc: Tensor },
}

impl Linear {
    /// Load the weight (out, in) at `vb`, whose prefix is the module's HF name (e.g.
    /// `model.layers.0.self_attn.q_proj`); what trains follows `cfg` (parameters registered in
    /// `tr` under that name).
    pub fn load(vb: &VarBuilder, (out_dim, in_dim): (usize, usize), cfg: &AdapterConfig, index: u64, seed: u64, tr: &mut Trainable) -> crate::Result<Self> {
        let w = vb.get((out_dim, in_dim), "weight")?;
        Self::new(w, &vb.prefix(), cfg, index, seed, tr)
    }

    /// Wrap `weight` (out, in) of the module named `prefix`.
    pub fn new(weight: Tensor, prefix: &str, cfg: &AdapterConfig, index: u64, seed: u64, tr: &mut Trainable) -> crate::Result<Self> {
        let module = prefix.rsplit('.').next().unwrap_or(prefix);
        let shape = weight.dims2()?;
        let full = cfg.kind == AdapterKind::Full;
        let dev = weight.device().clone();
        let weight = Weight::new(weight, format!("{prefix}.weight"), full, tr)?;
        let lora = if !full && cfg.targets.iter().any(|t| t == module) {
            Some(LoraAdapter::init(prefix, shape, cfg, index, seed, &dev, tr)?)
        } else {
            None
        };
        Ok(Self { weight, lora, index, disabled: false, bias: None })
    }

    /// Load the weight and the bias (out) at `vb` ([`Linear::load`] plus `<prefix>.bias`).
    pub fn load_with_bias(vb: &VarBuilder, (out_dim, in_dim): (usize, usize), cfg: &AdapterConfig, index: u64, seed: u64, tr: &mut Trainable) -> crate::Result<Self> {
        let mut l = Self::load(vb, (out_dim, in_dim), cfg, index, seed, tr)?;
        l.bias = Some(Weight::new(vb.get(out_dim, "bias")?, format!("{}.bias", vb.prefix()), cfg.kind == AdapterKind::Full, tr)?);
        Ok(l)
    }

    /// The bias as the module uses it, f32 (None without one).
    pub fn bias_f32(&self) -> Res<Option<Tensor>> {
        self.bias.as_ref().map(|b| b.stored().to_dtype(DType::F32)).transpose()
    }

    /// `y` (N, out) plus the bias, when there is one.
    fn add_bias(&self, y: Tensor) -> Res<Tensor> {
        match &self.bias {
            Some(b) => y.broadcast_add(&b.get(y.dtype())?),
            None => Ok(y),
        }
    }

    fn adapter(&self) -> Option<&LoraAdapter> {
        self.lora.as_ref().filter(|_| !self.disabled)
    }

    /// `x`: (..., in) → (..., out), plain candle ops (differentiable in x and the trained tensors).
    pub fn forward(&self, x: &Tensor, ctx: &Fwd) -> Res<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = *dims.last().ok_or_else(|| candle_core::Error::Msg("linear: scalar input".into()))?;
        let x2 = x.reshape(((), in_dim))?; // (N, in)
        let mut y = match &self.weight {
            Weight::Frozen(w) if w.dtype() == x.dtype() => frozen_linear(&x2, w)?,
            w => x2.matmul(&w.get(x.dtype())?.t()?)?,
        }; // (N, out)
        if let Some(l) = self.adapter() {
            let xin = match l.dropout_mask(&x2, self.index, ctx)? {
                Some(m) => (&x2 * m)?,
                None => x2.clone(),
            };
            let ad = l.a.as_tensor().to_dtype(x.dtype())?; // (r, in)
            let bd = (l.b.as_tensor() * l.scale)?.to_dtype(x.dtype())?; // (out, r)
            y = (y + xin.matmul(&ad.t()?)?.matmul(&bd.t()?)?)?;
        }
        let y = self.add_bias(y)?;
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = y.dim(1)?;
        y.reshape(out_dims)
    }

    /// A trainable tensor of this layer, if any (the fused layer's graph anchor).
    pub fn param(&self) -> Option<&Tensor> {
        match (&self.weight, self.adapter()) {
            (Weight::Trainable(v), _) => Some(v.as_tensor()),
            (Weight::Frozen(_), Some(l)) => Some(l.a.as_tensor()),
            (Weight::Frozen(_), None) => None,
        }
    }

    /// Rows `x` (N, in) → (N, out) outside the graph, and what the backward needs. A frozen
    /// weight must already be in x's dtype (no silent cast): otherwise an error naming
    /// `model.layer_path`.
    pub fn fwd_rows(&self, x: &Tensor, ctx: &Fwd) -> Res<(Tensor, Saved)> {
        self.fwd_rows_acc(x, ctx, None)
    }

    /// [`Linear::fwd_rows`] added to `acc` (N, out) when given (a residual stream the output
    /// lands on: one buffer, no element-wise add; `acc` must be a tensor the caller owns alone).
    pub fn fwd_rows_acc(&self, x: &Tensor, ctx: &Fwd, acc: Option<Tensor>) -> Res<(Tensor, Saved)> {
        let dt = x.dtype();
        // acc + x Wᵀ, or x Wᵀ
        // (a frozen W reaching here is in x's dtype: the first arm below rejects any other)
        let xw = |acc: Option<Tensor>, w: &Tensor| match (acc, &self.weight) {
            (Some(y), _) => matmul_acc(y, x, w, true),
            (None, Weight::Frozen(_)) => frozen_linear(x, w),
            (None, Weight::Trainable(_)) => x.matmul(&w.t()?),
        };
        let (y, cast) = match (&self.weight, self.adapter()) {
            (Weight::Frozen(w), _) if w.dtype() != dt => candle_core::bail!(
                "model.layer_path = \"fused\" needs frozen weights in the activation dtype (weight {:?}, activations {dt:?}); use \"reference\"",
                w.dtype()
            ),
            (Weight::Frozen(w), None) => (xw(acc, w)?, Cast::Frozen),
            (Weight::Frozen(w), Some(l)) => {
                let (ad, bd) = l.compute_copies(dt)?; // A (r, in), s·B (out, r)
                let mask = l.dropout_mask(x, self.index, ctx)?;
                let xin = match &mask {
                    Some(m) => (x * m)?,
                    None => x.clone(),
                };
                let z = xin.matmul(&ad.t()?)?; // (N, r)
                let y = matmul_acc(xw(acc, w)?, &z, &bd, true)?; // (N, out): x Wᵀ + z (sB)ᵀ in one buffer
                (y, Cast::Lora { ad, bd, xin, z, mask })
            }
            (Weight::Trainable(v), _) => {
                let wc = v.as_tensor().detach().to_dtype(dt)?; // (out, in)
                (xw(acc, &wc)?, Cast::Full { wc })
            }
        };
        Ok((self.add_bias(y)?, Saved { x: x.clone(), cast }))
    }

    /// Input gradient (N, in) for the output gradient `g` (N, out) of [`Linear::fwd_rows`];
    /// parameter gradients (f32) go to `sink`.
    pub fn bwd_rows(&self, s: &Saved, g: &Tensor, sink: &GradSink) -> Res<Tensor> {
        self.bwd_rows_acc(s, g, sink, None)
    }

    /// [`Linear::bwd_rows`] added to `acc` (N, in) when given: the input gradients of linears
    /// that read the same input are summed in one buffer ([`matmul_acc`]; `acc` must be a tensor
    /// the caller owns alone, e.g. what an earlier `bwd_rows` returned).
    pub fn bwd_rows_acc(&self, s: &Saved, g: &Tensor, sink: &GradSink, acc: Option<Tensor>) -> Res<Tensor> {
        let g = g.contiguous()?; // (N, out)
        if let Some(Weight::Trainable(b)) = &self.bias {
            sink.add(b.as_tensor(), g.to_dtype(DType::F32)?.sum(0)?)?; // (out,), f32
        }
        // acc + g · m for m (out, in), or g · m
        let gm = |acc: Option<Tensor>, m: &Tensor| match acc {
            Some(y) => matmul_acc(y, &g, m, false),
            None => g.matmul(m),
        };
        match (&s.cast, &self.weight, &self.lora) {
            (Cast::Frozen, Weight::Frozen(w), _) => gm(acc, w),
            (Cast::Lora { ad, bd, xin, z, mask }, Weight::Frozen(w), Some(l)) => {
                let gb = g.matmul(bd)?; // (N, r)
                let dx = gm(acc, w)?; // (N, in)
                let dx = match mask {
                    Some(m) => (dx + (gb.matmul(ad)? * m)?)?,
                    None => matmul_acc(dx, &gb, ad, false)?, // + gb A
                };
                sink.add(l.a.as_tensor(), matmul_tn_f32(&gb, xin, 1.0)?)?; // (r, in), f32
                sink.add(l.b.as_tensor(), matmul_tn_f32(&g, z, l.scale)?)?; // (out, r), f32
                Ok(dx)
            }
            (Cast::Full { wc }, Weight::Trainable(v), _) => {
                sink.add(v.as_tensor(), matmul_tn_f32(&g, &s.x, 1.0)?)?; // (out, in), f32
                gm(acc, wc)
            }
            _ => candle_core::bail!("linear: backward does not match its forward"),
        }
    }

    /// W + (alpha/r)·B A (or W when there is no adapter), in f32.
    pub fn merged_weight(&self) -> Res<Tensor> {
        let w = self.weight.stored().to_dtype(DType::F32)?;
        match &self.lora {
            Some(l) => w + (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?,
            None => Ok(w),
        }
    }

    /// Fold the adapter into the weight (the result is frozen) and drop the adapter.
    pub fn merge(&mut self) -> Res<()> {
        if self.lora.is_some() {
            let dtype = match &self.weight {
                Weight::Frozen(t) => t.dtype(),
                Weight::Trainable(_) => DType::F32,
            };
            self.weight = Weight::Frozen(self.merged_weight()?.to_dtype(dtype)?);
            self.lora = None;
        }
        Ok(())
    }
}
