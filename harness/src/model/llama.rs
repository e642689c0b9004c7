//! LLaMA-family decoder (SmolLM2, LLaMA 2/3 shapes) returning logits for every position.
//!
//! RMSNorm, rotary position embeddings (HF "rotate half" convention, configurable theta),
//! grouped-query attention with an explicit additive mask (causal, full or annealed — see
//! [`crate::model::mask`]), SwiGLU MLP, tied or untied embeddings. Weights are created with their
//! Hugging Face names, so safetensors checkpoints and peft adapters load without renaming.
//! Reference: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models".

use super::lora::{AdapterConfig, Fwd, Linear, Trainable, Weight};
use candle_core::{DType, Device, Tensor, Var};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

/// Model shape, mirroring the fields of a Hugging Face LLaMA `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// Vocabulary size.
    pub vocab_size: usize,
    /// Model width.
    pub hidden_size: usize,
    /// MLP inner width.
    pub intermediate_size: usize,
    /// Number of transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// RMSNorm epsilon.
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    /// RoPE base frequency.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// Longest sequence the RoPE table covers.
    #[serde(default = "default_max_pos")]
    pub max_position_embeddings: usize,
    /// The LM head reuses the token embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
}

fn default_rms_eps() -> f64 {
    1e-5
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_max_pos() -> usize {
    2048
}

impl LlamaConfig {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }
    /// Per-head width.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }
    /// Check the shape is consistent.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |k: &str, m: &str| Err(crate::Error::config(format!("model.arch.{k}"), m.to_string()));
        if self.num_attention_heads == 0 || !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad("num_attention_heads", "must divide hidden_size");
        }
        if self.kv_heads() == 0 || !self.num_attention_heads.is_multiple_of(self.kv_heads()) {
            return bad("num_key_value_heads", "must divide num_attention_heads");
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad("hidden_size", "head dimension must be even for RoPE");
        }
        if self.vocab_size == 0 || self.num_hidden_layers == 0 || self.intermediate_size == 0 {
            return bad("vocab_size", "sizes must be positive");
        }
        Ok(())
    }
    /// Multiply-accumulate FLOPs of one forward pass per token (matmuls only, excluding attention
    /// scores), times 2 for FLOPs. Used for MFU.
    pub fn forward_flops_per_token(&self, seq: usize) -> f64 {
        let d = self.hidden_size as f64;
        let kv = (self.kv_heads() * self.head_dim()) as f64;
        let f = self.intermediate_size as f64;
        let per_layer = d * d * 2.0 + d * kv * 2.0 + 3.0 * d * f + 2.0 * seq as f64 * d;
        2.0 * (self.num_hidden_layers as f64 * per_layer + d * self.vocab_size as f64)
    }
}

/// RMSNorm: x / sqrt(mean(x²) + eps) · w, computed in f32.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub(crate) weight: Weight,
    pub(crate) eps: f64,
}

impl RmsNorm {
    fn load(vb: &VarBuilder, size: usize, eps: f64, name: &str, full: bool, tr: &mut Trainable, prefix: &str) -> crate::Result<Self> {
        let w = vb.get(size, "weight")?;
        let weight = if full {
            let v = Var::from_tensor(&w.to_dtype(DType::F32)?)?;
            tr.push(format!("{prefix}{name}.weight"), v.clone());
            Weight::Trainable(v)
        } else {
            Weight::Frozen(w)
        };
        Ok(Self { weight, eps })
    }

    /// (..., D) → (..., D).
    pub fn forward(&self, x: &Tensor, ctx: &Fwd) -> candle_core::Result<Tensor> {
        let w = self.weight.get(x.dtype())?;
        if !ctx.train {
            return candle_nn::ops::rms_norm(&x.contiguous()?, &w, self.eps as f32);
        }
        super::ops::rms_norm(x, &w, self.eps)
    }
}

/// Precomputed RoPE tables.
#[derive(Debug, Clone)]
struct Rotary {
    cos: Tensor, // (max_pos, head_dim/2), f32
    sin: Tensor,
}

impl Rotary {
    fn new(cfg: &LlamaConfig, device: &Device) -> candle_core::Result<Self> {
        let half = cfg.head_dim() / 2;
        let inv: Vec<f32> =
            (0..half).map(|i| 1.0 / cfg.rope_theta.powf(2.0 * i as f64 / cfg.head_dim() as f64) as f32).collect();
        let inv = Tensor::from_vec(inv, (1, half), device)?;
        let pos = Tensor::arange(0u32, cfg.max_position_embeddings as u32, device)?
            .to_dtype(DType::F32)?
            .reshape((cfg.max_position_embeddings, 1))?;
        let freqs = pos.broadcast_mul(&inv)?; // (max_pos, half)
        Ok(Self { cos: freqs.cos()?, sin: freqs.sin()? })
    }

    /// cos and sin of positions offset..offset+L: (L, Dh/2) each, in `dtype`.
    fn tables(&self, offset: usize, l: usize, dtype: DType) -> candle_core::Result<(Tensor, Tensor)> {
        Ok((self.cos.narrow(0, offset, l)?.to_dtype(dtype)?, self.sin.narrow(0, offset, l)?.to_dtype(dtype)?))
    }

    /// x: (B, H, L, Dh) for positions offset..offset+L.
    fn apply(&self, x: &Tensor, offset: usize, ctx: &Fwd) -> candle_core::Result<Tensor> {
        let (cos, sin) = self.tables(offset, x.dim(2)?, x.dtype())?; // (L, Dh/2)
        if !ctx.train {
            return candle_nn::rotary_emb::rope(&x.contiguous()?, &cos, &sin);
        }
        super::ops::rope(x, &cos, &sin)
    }
}

/// Cached keys and values of one layer: (B, Hkv, T, Dh).
#[derive(Debug, Clone, Default)]
pub struct LayerCache {
    k: Option<Tensor>,
    v: Option<Tensor>,
}

/// KV cache for incremental AR decoding.
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Positions already in the cache.
    pub len: usize,
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
}

impl Attention {
    fn forward(
        &self,
        x: &Tensor,
        bias: Option<&Tensor>,
        rot: &Rotary,
        ctx: &Fwd,
        cache: Option<&mut LayerCache>,
        offset: usize,
    ) -> candle_core::Result<Tensor> {
        let (b, l, _) = x.dims3()?;
        let (q, mut k, mut v) = if ctx.train && cache.is_none() {
            // one graph node each for the head split (and rotation)
            let (cos, sin) = rot.tables(offset, l, x.dtype())?;
            let q = super::ops::rope_heads(&self.q_proj.forward(x, ctx)?, self.n_heads, &cos, &sin)?; // (B, H, L, Dh)
            let k = super::ops::rope_heads(&self.k_proj.forward(x, ctx)?, self.n_kv, &cos, &sin)?; // (B, Hkv, L, Dh)
            let v = super::ops::split_heads(&self.v_proj.forward(x, ctx)?, self.n_kv)?;
            (q, k, v)
        } else {
            let q = self.q_proj.forward(x, ctx)?.reshape((b, l, self.n_heads, self.head_dim))?.transpose(1, 2)?; // (B, H, L, Dh)
            let k = self.k_proj.forward(x, ctx)?.reshape((b, l, self.n_kv, self.head_dim))?.transpose(1, 2)?; // (B, Hkv, L, Dh)
            let v = self.v_proj.forward(x, ctx)?.reshape((b, l, self.n_kv, self.head_dim))?.transpose(1, 2)?;
            (rot.apply(&q.contiguous()?, offset, ctx)?, rot.apply(&k.contiguous()?, offset, ctx)?, v.contiguous()?)
        };
        if let Some(c) = cache {
            if let (Some(pk), Some(pv)) = (&c.k, &c.v) {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            c.k = Some(k.clone());
            c.v = Some(v.clone());
        }
        let y = super::attention::attention(&q, &k, &v, bias)?; // (B, L, D)
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
    fn forward(&self, x: &Tensor, ctx: &Fwd) -> candle_core::Result<Tensor> {
        let g = self.gate_proj.forward(x, ctx)?; // (B, L, F)
        let u = self.up_proj.forward(x, ctx)?;
        self.down_proj.forward(&super::ops::swiglu(&g, &u)?, ctx)
    }
}

#[derive(Debug, Clone)]
struct Block {
    input_layernorm: RmsNorm,
    self_attn: Attention,
    post_attention_layernorm: RmsNorm,
    mlp: Mlp,
}

impl Block {
    fn parts(&self) -> super::block::Parts<'_> {
        let (a, m) = (&self.self_attn, &self.mlp);
        super::block::Parts {
            norm1: (&self.input_layernorm.weight, self.input_layernorm.eps),
            attn: [&a.q_proj, &a.k_proj, &a.v_proj, &a.o_proj],
            norm2: (&self.post_attention_layernorm.weight, self.post_attention_layernorm.eps),
            mlp: [&m.gate_proj, &m.up_proj, &m.down_proj],
            heads: (a.n_heads, a.n_kv),
        }
    }
}

/// Everything needed to build the model's parameters.
pub struct BuildOpts<'a> {
    /// What trains.
    pub adapter: &'a AdapterConfig,
    /// Seed for adapter initialisation.
    pub seed: u64,
}

/// The LLaMA model.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Weight,
    layers: Vec<Block>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    rotary: Rotary,
    /// Where fused layers put their parameters' gradients (shared with the [`Trainable`]).
    sink: super::lora::GradSink,
    /// Train each decoder layer as one graph node ([`super::block`]) where it can; false forces
    /// the per-op path (for comparisons).
    pub fused_blocks: bool,
    /// Model shape.
    pub cfg: LlamaConfig,
    /// Dtype of activations.
    pub dtype: DType,
    /// Device of every tensor.
    pub device: Device,
}

impl Llama {
    /// Build from a `VarBuilder` holding HF-named base weights (`model.embed_tokens.weight`, ...).
    /// Returns the model and its trainable parameters.
    pub fn load(vb: VarBuilder, cfg: &LlamaConfig, opts: &BuildOpts) -> crate::Result<(Self, Trainable)> {
        cfg.validate()?;
        let mut tr = Trainable::default();
        let full = opts.adapter.kind == super::lora::AdapterKind::Full;
        let dtype = vb.dtype();
        let device = vb.device().clone();
        let (d, f, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.head_dim());
        let kvd = cfg.kv_heads() * hd;
        let m = vb.pp("model");
        let emb = m.get((cfg.vocab_size, d), "embed_tokens.weight")?;
        let embed_tokens = if full || opts.adapter.train_embeddings {
            let v = Var::from_tensor(&emb.to_dtype(DType::F32)?)?;
            let name = if full { "model.embed_tokens.weight".to_string() } else { "base_model.model.model.embed_tokens.weight".to_string() };
            tr.push(name, v.clone());
            Weight::Trainable(v)
        } else {
            Weight::Frozen(emb)
        };
        let mut index = 0u64;
        let mut lin = |vb: &VarBuilder, out: usize, inp: usize, name: &str, prefix: &str, tr: &mut Trainable| -> crate::Result<Linear> {
            let w = vb.get((out, inp), &format!("{name}.weight"))?;
            index += 1;
            Linear::new(w, &format!("{prefix}.{name}"), opts.adapter, index, opts.seed, tr)
        };
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        for i in 0..cfg.num_hidden_layers {
            let lp = format!("model.layers.{i}");
            let lvb = m.pp("layers").pp(i);
            let avb = lvb.pp("self_attn");
            let ap = format!("{lp}.self_attn");
            let q_proj = lin(&avb, d, d, "q_proj", &ap, &mut tr)?;
            let k_proj = lin(&avb, kvd, d, "k_proj", &ap, &mut tr)?;
            let v_proj = lin(&avb, kvd, d, "v_proj", &ap, &mut tr)?;
            let o_proj = lin(&avb, d, d, "o_proj", &ap, &mut tr)?;
            let mvb = lvb.pp("mlp");
            let mp = format!("{lp}.mlp");
            let gate_proj = lin(&mvb, f, d, "gate_proj", &mp, &mut tr)?;
            let up_proj = lin(&mvb, f, d, "up_proj", &mp, &mut tr)?;
            let down_proj = lin(&mvb, d, f, "down_proj", &mp, &mut tr)?;
            let lpre = format!("{lp}.");
            layers.push(Block {
                input_layernorm: RmsNorm::load(&lvb.pp("input_layernorm"), d, cfg.rms_norm_eps, "input_layernorm", full, &mut tr, &lpre)?,
                self_attn: Attention { q_proj, k_proj, v_proj, o_proj, n_heads: cfg.num_attention_heads, n_kv: cfg.kv_heads(), head_dim: hd },
                post_attention_layernorm: RmsNorm::load(&lvb.pp("post_attention_layernorm"), d, cfg.rms_norm_eps, "post_attention_layernorm", full, &mut tr, &lpre)?,
                mlp: Mlp { gate_proj, up_proj, down_proj },
            });
        }
        let norm = RmsNorm::load(&m.pp("norm"), d, cfg.rms_norm_eps, "norm", full, &mut tr, "model.")?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            let head_cfg = AdapterConfig { targets: vec![], ..opts.adapter.clone() };
            let w = vb.get((cfg.vocab_size, d), "lm_head.weight")?;
            Some(Linear::new(w, "lm_head", &head_cfg, 0, opts.seed, &mut tr)?)
        };
        let rotary = Rotary::new(cfg, &device)?;
        let sink = tr.sink.clone();
        Ok((Self { embed_tokens, layers, norm, lm_head, rotary, sink, fused_blocks: true, cfg: cfg.clone(), dtype, device }, tr))
    }

    /// Final-normed hidden states. `ids`: (B, L) u32; `bias`: additive attention bias broadcastable
    /// to (B, H, L, L), or None for full attention. Returns (B, L, D).
    pub fn hidden(&self, ids: &Tensor, bias: Option<&Tensor>, ctx: &Fwd) -> candle_core::Result<Tensor> {
        self.hidden_inner(ids, bias, ctx, None)
    }

    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let e = self.embed_tokens.get(self.dtype)?; // (V, D)
        e.index_select(&ids.flatten_all()?, 0)?.reshape((b, l, self.cfg.hidden_size)) // (B, L, D)
    }

    fn hidden_inner(&self, ids: &Tensor, bias: Option<&Tensor>, ctx: &Fwd, mut cache: Option<&mut KvCache>) -> candle_core::Result<Tensor> {
        let offset = cache.as_ref().map(|c| c.len).unwrap_or(0);
        let mut x = self.embed(ids)?; // (B, L, D)
        if let Some(c) = cache.as_mut() {
            if c.layers.is_empty() {
                c.layers = vec![LayerCache::default(); self.layers.len()];
            }
        }
        let tables = if ctx.train && cache.is_none() && self.fused_blocks {
            Some(self.rotary.tables(offset, ids.dim(1)?, self.dtype)?)
        } else {
            None
        };
        for (i, layer) in self.layers.iter().enumerate() {
            if let Some((cos, sin)) = &tables {
                if let Some(y) = super::block::forward(&layer.parts(), &x, bias, cos, sin, &self.sink)? {
                    x = y;
                    continue;
                }
            }
            let h = layer.input_layernorm.forward(&x, ctx)?;
            let lc = cache.as_mut().map(|c| &mut c.layers[i]);
            let h = layer.self_attn.forward(&h, bias, &self.rotary, ctx, lc, offset)?;
            x = (x + h)?;
            let h = layer.post_attention_layernorm.forward(&x, ctx)?;
            x = (x + layer.mlp.forward(&h, ctx)?)?;
        }
        if let Some(c) = cache {
            c.len += ids.dim(1)?;
        }
        self.norm.forward(&x, ctx)
    }

    /// LM head on hidden states (..., D) → (..., V).
    pub fn logits(&self, h: &Tensor, ctx: &Fwd) -> candle_core::Result<Tensor> {
        match &self.lm_head {
            Some(head) => head.forward(h, ctx),
            None => {
                let dims = h.dims().to_vec();
                let d = dims[dims.len() - 1];
                let h2 = h.reshape(((), d))?; // (N, D)
                let y = match &self.embed_tokens {
                    Weight::Frozen(e) if e.dtype() == h.dtype() => super::ops::frozen_linear(&h2, e)?,
                    w => h2.matmul(&w.get(h.dtype())?.t()?)?,
                }; // (N, V)
                let mut od = dims;
                let last = od.len() - 1;
                od[last] = self.cfg.vocab_size;
                y.reshape(od)
            }
        }
    }

    /// Logits for every position: (B, L) → (B, L, V).
    pub fn forward(&self, ids: &Tensor, bias: Option<&Tensor>, ctx: &Fwd) -> candle_core::Result<Tensor> {
        let h = self.hidden(ids, bias, ctx)?;
        self.logits(&h, ctx)
    }

    /// Incremental causal forward for AR decoding: `ids` (B, l) continue the cached sequence.
    /// Returns logits (B, l, V).
    pub fn forward_cached(&self, ids: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let l = ids.dim(1)?;
        let t = cache.len + l;
        let ctx = Fwd::default();
        let bias = if l > 1 {
            // New query i (absolute position cache.len + i) sees keys 0..=cache.len + i.
            let mut v = vec![0f32; l * t];
            for i in 0..l {
                for j in (cache.len + i + 1)..t {
                    v[i * t + j] = super::mask::MASKED_BIAS;
                }
            }
            Some(Tensor::from_vec(v, (1, 1, l, t), &self.device)?.to_dtype(self.dtype)?)
        } else {
            None
        };
        let h = self.hidden_inner(ids, bias.as_ref(), &ctx, Some(cache))?;
        self.logits(&h, &ctx)
    }

    /// Turn every LoRA adapter off (base-model outputs) or back on.
    pub fn set_adapters_disabled(&mut self, disabled: bool) {
        for l in self.linears_mut() {
            l.disabled = disabled;
        }
    }

    /// Fold every adapter into its base weight.
    pub fn merge_adapters(&mut self) -> candle_core::Result<()> {
        for l in self.linears_mut() {
            l.merge()?;
        }
        Ok(())
    }

    fn linears_mut(&mut self) -> Vec<&mut Linear> {
        let mut v = Vec::new();
        for b in self.layers.iter_mut() {
            let a = &mut b.self_attn;
            v.extend([&mut a.q_proj, &mut a.k_proj, &mut a.v_proj, &mut a.o_proj]);
            let m = &mut b.mlp;
            v.extend([&mut m.gate_proj, &mut m.up_proj, &mut m.down_proj]);
        }
        v
    }

    /// Every linear weight as the model uses it now (adapters merged), with HF names, in f32.
    pub fn merged_weights(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, b) in self.layers.iter().enumerate() {
            let a = &b.self_attn;
            for (n, l) in [("q_proj", &a.q_proj), ("k_proj", &a.k_proj), ("v_proj", &a.v_proj), ("o_proj", &a.o_proj)] {
                out.push((format!("model.layers.{i}.self_attn.{n}.weight"), l.merged_weight()?));
            }
            let m = &b.mlp;
            for (n, l) in [("gate_proj", &m.gate_proj), ("up_proj", &m.up_proj), ("down_proj", &m.down_proj)] {
                out.push((format!("model.layers.{i}.mlp.{n}.weight"), l.merged_weight()?));
            }
        }
        Ok(out)
    }
}
