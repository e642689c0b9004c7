//! LoRA: the low-rank adapter a [`crate::model::linear::Linear`] may carry, adding
//! `(alpha/rank) · B A x` to its output.
//!
//! A is Kaiming-uniform initialised (bound 1/sqrt(in), as peft does with `a = sqrt(5)`), B is zero,
//! so at step 0 the wrapped layer equals the base layer exactly. The base weight is frozen; only A
//! and B (and any module trained fully) reach the optimizer. Adapter tensors are named as peft
//! saves them (`base_model.model.<module>.lora_A.weight`), so adapters load in peft unchanged.

use crate::rng::{rng_for, Purpose};
use super::params::{Fwd, Trainable};
use candle_core::{DType, Device, Tensor, Var};
use rand::Rng;
use serde::{Deserialize, Serialize};

/// Which parameters train.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdapterConfig {
    /// `lora` (low-rank adapters on frozen base weights) or `full` (every weight trains).
    pub kind: AdapterKind,
    /// LoRA rank r (≥ 1).
    pub rank: usize,
    /// LoRA alpha; the adapter output is scaled by alpha / rank.
    pub alpha: f64,
    /// Dropout probability on the adapter input, in [0, 1). 0 disables it.
    pub dropout: f64,
    /// Module names (the last part of the HF name) that get adapters.
    pub targets: Vec<String>,
    /// Also train the token embeddings fully (DiffuLLaMA does); saved with the adapter.
    pub train_embeddings: bool,
}

/// Fine-tuning style.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterKind {
    /// Low-rank adapters.
    Lora,
    /// Full fine-tuning of every weight.
    Full,
}

/// Every attention and MLP linear of a LLaMA block.
pub const DEFAULT_TARGETS: [&str; 7] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"];

impl Default for AdapterConfig {
    fn default() -> Self {
        Self {
            kind: AdapterKind::Lora,
            rank: 16,
            alpha: 32.0,
            dropout: 0.0,
            targets: DEFAULT_TARGETS.iter().map(|s| s.to_string()).collect(),
            train_embeddings: false,
        }
    }
}

/// The low-rank adapter of one Linear.
#[derive(Debug, Clone)]
pub struct LoraAdapter {
    /// (r, in), Kaiming-uniform.
    pub a: Var,
    /// (out, r), zeros.
    pub b: Var,
    /// alpha / rank.
    pub scale: f64,
    /// Dropout probability on the adapter input.
    pub dropout: f64,
    /// This forward pass's compute-dtype copies (A, s·B), made for every adapter of the model in
    /// one launch by [`crate::model::Llama`] before a fused training forward
    /// ([`LoraAdapter::set_copies`]); shared by the clones of the adapter.
    copies: std::sync::Arc<std::sync::Mutex<Option<(Tensor, Tensor)>>>,
}

impl LoraAdapter {
    /// A fresh adapter for the module `prefix` (its HF name, e.g. `model.layers.0.self_attn.q_proj`)
    /// of shape (out, in): A Kaiming-uniform from the generator of (`seed`, init, `index`), B zero.
    /// Registers A and B in `tr` under their peft names.
    pub fn init(prefix: &str, (out_dim, in_dim): (usize, usize), cfg: &AdapterConfig, index: u64, seed: u64, dev: &Device, tr: &mut Trainable) -> crate::Result<Self> {
        let bound = 1.0 / (in_dim as f64).sqrt();
        let mut rng = rng_for(seed, Purpose::Init, index, 0);
        let a: Vec<f32> = (0..cfg.rank * in_dim).map(|_| rng.random_range(-bound..bound) as f32).collect();
        let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.rank, in_dim), dev)?)?;
        let b = Var::zeros((out_dim, cfg.rank), DType::F32, dev)?;
        tr.push(format!("base_model.model.{prefix}.lora_A.weight"), a.clone());
        tr.push(format!("base_model.model.{prefix}.lora_B.weight"), b.clone());
        Ok(Self { a, b, scale: cfg.alpha / cfg.rank as f64, dropout: cfg.dropout, copies: Default::default() })
    }

    /// Store this pass's compute-dtype copies of A and s·B (or clear them with None).
    pub fn set_copies(&self, c: Option<(Tensor, Tensor)>) {
        if let Ok(mut g) = self.copies.lock() {
            *g = c;
        }
    }

    /// A (r, in) and s·B (out, r) in `dtype`: the stored copies when they are in `dtype`, else
    /// cast now.
    pub fn compute_copies(&self, dtype: DType) -> candle_core::Result<(Tensor, Tensor)> {
        if let Some((a, b)) = self.copies.lock().ok().and_then(|g| g.clone()) {
            if a.dtype() == dtype {
                return Ok((a, b));
            }
        }
        Ok((self.a.as_tensor().detach().to_dtype(dtype)?, (self.b.as_tensor().detach() * self.scale)?.to_dtype(dtype)?))
    }

    /// The dropout multiplier of the adapter input `x` (N, in) of the linear with dropout seed
    /// `index`: 0 or 1/(1−p) per element, from the generator of (run seed, dropout, step,
    /// micro·4096 + index), in x's dtype; None outside training or when p = 0. Both ways of
    /// running a layer draw it here, so they drop the same elements.
    pub fn dropout_mask(&self, x: &Tensor, index: u64, ctx: &Fwd) -> candle_core::Result<Option<Tensor>> {
        let p = self.dropout;
        if !ctx.train || p <= 0.0 {
            return Ok(None);
        }
        let mut rng = rng_for(ctx.seed, Purpose::Dropout, ctx.step, ctx.micro * 4096 + index);
        let keep = 1.0 / (1.0 - p);
        let m: Vec<f32> = (0..x.elem_count()).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep as f32 }).collect();
        Ok(Some(Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(x.dtype())?))
    }
}
