//! LoRA: a Linear wrapper computing `W x + (alpha/rank) · B A x`.
//!
//! A is Kaiming-uniform initialised (bound 1/sqrt(in), as peft does with `a = sqrt(5)`), B is zero,
//! so at step 0 the wrapped layer equals the base layer exactly. The base weight is frozen; only A
//! and B (and any module trained fully) reach the optimizer. Adapter tensors are named as peft
//! saves them (`base_model.model.<module>.lora_A.weight`), so adapters load in peft unchanged.

use crate::rng::{rng_for, Purpose};
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

/// A weight that is either frozen (a plain tensor in the compute dtype) or trainable (an f32 `Var`).
#[derive(Debug, Clone)]
pub enum Weight {
    /// Not trained; stored in the compute dtype.
    Frozen(Tensor),
    /// Trained; the f32 master copy. Cast to the compute dtype in the forward pass.
    Trainable(Var),
}

impl Weight {
    /// The weight as used in the forward pass, in `dtype`.
    pub fn get(&self, dtype: DType) -> candle_core::Result<Tensor> {
        match self {
            Weight::Frozen(t) => t.to_dtype(dtype),
            Weight::Trainable(v) => v.as_tensor().to_dtype(dtype),
        }
    }
    /// The stored tensor (f32 master for trainable weights), detached.
    pub fn stored(&self) -> Tensor {
        match self {
            Weight::Frozen(t) => t.clone(),
            Weight::Trainable(v) => v.as_tensor().detach(),
        }
    }
}

/// Named trainable parameters, in creation order. Names are the ones saved to safetensors.
#[derive(Debug, Default, Clone)]
pub struct Trainable {
    /// (name, parameter) pairs.
    pub entries: Vec<(String, Var)>,
    /// Gradients that fused layers deliver beside candle's `GradStore` (see [`GradSink`]).
    pub sink: GradSink,
}

/// Parameter gradients delivered outside candle's `GradStore`, keyed by the parameter's tensor
/// id. A fused decoder layer ([`crate::model::block`]) is one graph node with one tensor input;
/// its hand-written backward adds the gradients of the layer's parameters here, and
/// [`crate::train::optim::GradAccum`] collects them after each backward pass. Shared (cloning
/// shares the store).
#[derive(Debug, Default, Clone)]
pub struct GradSink(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<candle_core::TensorId, Tensor>>>);

impl GradSink {
    /// Add `g` to the gradient of `param`.
    pub fn add(&self, param: &Tensor, g: Tensor) -> candle_core::Result<()> {
        let mut m = self.0.lock().map_err(|_| candle_core::Error::Msg("gradient sink: poisoned lock".into()))?;
        let g = match m.remove(&param.id()) {
            Some(prev) => (prev + g)?,
            None => g,
        };
        m.insert(param.id(), g);
        Ok(())
    }
    /// Remove and return the gradient of `param`.
    pub fn take(&self, param: &Tensor) -> Option<Tensor> {
        self.0.lock().ok().and_then(|mut m| m.remove(&param.id()))
    }
    /// Drop every stored gradient.
    pub fn clear(&self) {
        if let Ok(mut m) = self.0.lock() {
            m.clear();
        }
    }
}

impl Trainable {
    /// Register a parameter.
    pub fn push(&mut self, name: String, var: Var) {
        self.entries.push((name, var));
    }
    /// Number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }
    /// Save every parameter to a safetensors file.
    pub fn save(&self, path: &std::path::Path) -> crate::Result<()> {
        let map: std::collections::HashMap<String, Tensor> =
            self.entries.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
        candle_core::safetensors::save(&map, path).map_err(|e| crate::Error::model(path, e.to_string()))
    }
    /// Load values saved by [`Trainable::save`] into these parameters (names and shapes must match).
    pub fn load(&self, path: &std::path::Path) -> crate::Result<()> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| crate::Error::model(path, e.to_string()))?;
        for (name, var) in &self.entries {
            let t = map.get(name).ok_or_else(|| crate::Error::model(path, format!("missing tensor `{name}`")))?;
            if t.dims() != var.dims() {
                return Err(crate::Error::model(
                    path,
                    format!("tensor `{name}` has shape {:?}, the model expects {:?}", t.dims(), var.dims()),
                ));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
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
}

/// Per-forward context: training flag and the counters that seed dropout.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fwd {
    /// Training (dropout on, differentiable kernels) or inference.
    pub train: bool,
    /// Run seed.
    pub seed: u64,
    /// Optimizer step.
    pub step: u64,
    /// Micro-batch index within the step.
    pub micro: u64,
}

/// A linear layer without bias (LLaMA has none), optionally with a LoRA adapter.
#[derive(Debug, Clone)]
pub struct Linear {
    /// (out, in).
    pub weight: Weight,
    /// The adapter, when this module is a LoRA target.
    pub lora: Option<LoraAdapter>,
    /// Index used to seed this layer's dropout.
    pub index: u64,
    /// When true the adapter is skipped (base model output).
    pub disabled: bool,
}

impl Linear {
    /// Wrap `weight` (out, in). `prefix` is the HF module name (e.g. `model.layers.0.self_attn.q_proj`).
    pub fn new(
        weight: Tensor,
        prefix: &str,
        cfg: &AdapterConfig,
        index: u64,
        seed: u64,
        trainable: &mut Trainable,
    ) -> crate::Result<Self> {
        let module = prefix.rsplit('.').next().unwrap_or(prefix);
        let (out_dim, in_dim) = weight.dims2()?;
        let full = cfg.kind == AdapterKind::Full;
        let weight = if full {
            let v = Var::from_tensor(&weight.to_dtype(DType::F32)?)?;
            trainable.push(format!("{prefix}.weight"), v.clone());
            Weight::Trainable(v)
        } else {
            Weight::Frozen(weight)
        };
        let lora = if !full && cfg.targets.iter().any(|t| t == module) {
            let dev = weight.stored().device().clone();
            let bound = 1.0 / (in_dim as f64).sqrt();
            let mut rng = rng_for(seed, Purpose::Init, index, 0);
            let a: Vec<f32> = (0..cfg.rank * in_dim).map(|_| rng.random_range(-bound..bound) as f32).collect();
            let a = Var::from_tensor(&Tensor::from_vec(a, (cfg.rank, in_dim), &dev)?)?;
            let b = Var::zeros((out_dim, cfg.rank), DType::F32, &dev)?;
            trainable.push(format!("base_model.model.{prefix}.lora_A.weight"), a.clone());
            trainable.push(format!("base_model.model.{prefix}.lora_B.weight"), b.clone());
            Some(LoraAdapter { a, b, scale: cfg.alpha / cfg.rank as f64, dropout: cfg.dropout })
        } else {
            None
        };
        Ok(Self { weight, lora, index, disabled: false })
    }

    /// `x`: (..., in) → (..., out).
    pub fn forward(&self, x: &Tensor, ctx: &Fwd) -> candle_core::Result<Tensor> {
        let lora = self.lora.as_ref().filter(|_| !self.disabled);
        match (&self.weight, lora) {
            // one graph node per layer (no gradient for the frozen W, no cast nodes)
            (Weight::Frozen(w), Some(l)) if w.dtype() == x.dtype() && !(ctx.train && l.dropout > 0.0) => {
                super::ops::lora_linear(x, w, l.a.as_tensor(), l.b.as_tensor(), l.scale)
            }
            (Weight::Frozen(w), None) if w.dtype() == x.dtype() => {
                let dims = x.dims().to_vec();
                let x2 = x.reshape(((), dims[dims.len() - 1]))?; // (N, in)
                let y = super::ops::frozen_linear(&x2, w)?; // (N, out)
                let mut od = dims;
                let last = od.len() - 1;
                od[last] = y.dim(1)?;
                y.reshape(od)
            }
            (Weight::Trainable(w), None) => super::ops::trainable_linear(x, w.as_tensor()),
            _ => self.forward_composite(x, ctx),
        }
    }

    /// The same layer through candle's autograd op by op (LoRA dropout, mixed dtypes); the
    /// reference the fused paths are tested against.
    pub fn forward_composite(&self, x: &Tensor, ctx: &Fwd) -> candle_core::Result<Tensor> {
        let dims = x.dims().to_vec();
        let in_dim = dims[dims.len() - 1];
        let x2 = x.reshape(((), in_dim))?; // (N, in)
        let w = self.weight.get(x.dtype())?; // (out, in)
        let mut y = x2.matmul(&w.t()?)?; // (N, out)
        if let (Some(l), false) = (&self.lora, self.disabled) {
            let xin = if ctx.train && l.dropout > 0.0 { self.dropout(&x2, l.dropout, ctx)? } else { x2.clone() };
            let a = l.a.as_tensor().to_dtype(x.dtype())?; // (r, in)
            let b = l.b.as_tensor().to_dtype(x.dtype())?; // (out, r)
            let low = xin.matmul(&a.t()?)?.matmul(&b.t()?)?; // (N, out)
            y = (y + (low * l.scale)?)?;
        }
        let mut out_dims = dims;
        let last = out_dims.len() - 1;
        out_dims[last] = y.dim(1)?;
        y.reshape(out_dims)
    }

    fn dropout(&self, x: &Tensor, p: f64, ctx: &Fwd) -> candle_core::Result<Tensor> {
        let mut rng = rng_for(ctx.seed, Purpose::Dropout, ctx.step, ctx.micro * 4096 + self.index);
        let keep = 1.0 / (1.0 - p);
        let m: Vec<f32> =
            (0..x.elem_count()).map(|_| if rng.random::<f64>() < p { 0.0 } else { keep as f32 }).collect();
        let m = Tensor::from_vec(m, x.shape(), x.device())?.to_dtype(x.dtype())?;
        x * m
    }

    /// W + (alpha/r)·B A (or W when there is no adapter), in f32.
    pub fn merged_weight(&self) -> candle_core::Result<Tensor> {
        let w = self.weight.stored().to_dtype(DType::F32)?;
        match &self.lora {
            Some(l) => w + (l.b.as_tensor().matmul(l.a.as_tensor())? * l.scale)?,
            None => Ok(w),
        }
    }

    /// Fold the adapter into the weight (the result is frozen) and drop the adapter.
    pub fn merge(&mut self) -> candle_core::Result<()> {
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
