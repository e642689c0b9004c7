//! LLaMA-family decoder (SmolLM2, LLaMA 2/3 shapes) returning logits for every position.
//!
//! RMSNorm, rotary position embeddings (HF "rotate half" convention, configurable theta),
//! grouped-query attention with an explicit additive mask (causal, full or annealed — see
//! [`crate::model::mask`]), SwiGLU MLP, tied or untied embeddings. Weights are created with their
//! Hugging Face names, so safetensors checkpoints and peft adapters load without renaming.
//! The decoder layer and its two ways to run in training live in [`crate::model::decoder`];
//! which one runs is [`LayerPath`], chosen once in [`BuildOpts`].
//! With [`BuildOpts::time_embedding`] (`objective.time_conditioning = "embedding"`) the model
//! also takes a per-column diffusion time t: x = embed(ids) + φ(t)·Wᵀ ([`time_features`]) before the
//! first layer, W (D, [`TIME_FEATURES`]) trainable and zero-initialised (`model.time_embed.weight`).
//! Reference: Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models".

use super::decoder::{DecoderLayer, LayerCache, LayerPath, LoadCtx, Positions, RmsNorm, Rotary};
use super::linear::Linear;
use super::lora::{AdapterConfig, AdapterKind};
use super::params::{Fwd, GradSink, Trainable, Weight};
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
    /// The q, k and v projections have biases (Qwen2; HF LLaMA's `attention_bias`, which also
    /// gives o one, is not supported).
    #[serde(default)]
    pub qkv_bias: bool,
    /// Per-head width, when the checkpoint states one (Qwen3: heads × head_dim need not equal
    /// hidden_size); `None`: hidden_size / num_attention_heads.
    #[serde(default)]
    pub head_dim: Option<usize>,
    /// Per-head RMSNorm of q and k before RoPE (Qwen3's `q_norm`, `k_norm`).
    #[serde(default)]
    pub qk_norm: bool,
    /// The checkpoint family it was read as ([`crate::model::family`]: `llama`, `qwen2`, `qwen3`,
    /// `llada`, `Dream`); unset for GGUF and random models (read as LLaMA, or by their biases).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_type: Option<String>,
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
        self.head_dim.unwrap_or(self.hidden_size / self.num_attention_heads.max(1))
    }
    /// Width of the attention's q (and o's input): heads × head width.
    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim()
    }
    /// Check the shape is consistent.
    pub fn validate(&self) -> crate::Result<()> {
        let bad = |k: &str, m: &str| Err(crate::Error::config(format!("model.arch.{k}"), m.to_string()));
        if self.num_attention_heads == 0 || (self.head_dim.is_none() && !self.hidden_size.is_multiple_of(self.num_attention_heads)) {
            return bad("num_attention_heads", "must divide hidden_size (or the config states head_dim)");
        }
        if self.head_dim == Some(0) {
            return bad("head_dim", "must be ≥ 2");
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
        let q = self.q_width() as f64;
        let kv = (self.kv_heads() * self.head_dim()) as f64;
        let f = self.intermediate_size as f64;
        let per_layer = d * q * 2.0 + d * kv * 2.0 + 3.0 * d * f + 2.0 * seq as f64 * q;
        2.0 * (self.num_hidden_layers as f64 * per_layer + d * self.vocab_size as f64)
    }
}

/// KV cache for incremental AR decoding, of a batch of sequences that advance together.
///
/// A batch of prompts of different lengths is **left-padded** ([`KvCache::left_padded`]): row b
/// holds `pad[b]` padding columns, then its prompt, then its generated tokens. Every row shares
/// the same column positions (one RoPE offset, [`KvCache::len`]); the padding keys are hidden from
/// every query by the attention bias ([`crate::model::mask::padded_cache_bias`]). RoPE scores
/// depend only on relative positions, so a padded row computes the logits of the same row
/// unpadded, up to floating-point rounding.
///
/// It is also the prefix cache of diffusion decoding ([`crate::sample::PrefixCache`]): filled by
/// [`Llama::hidden_capture`], cut to the prefix ([`KvCache::narrow_columns`]) and read, never
/// extended, by [`Llama::hidden_over_prefix`].
#[derive(Debug, Clone, Default)]
pub struct KvCache {
    layers: Vec<LayerCache>,
    /// Positions already in the cache (columns, padding included).
    pub len: usize,
    /// Left-padding columns of each row; empty when no row is padded.
    pad: Vec<usize>,
}

impl KvCache {
    /// An empty cache for a batch whose row b starts with `pad[b]` padding columns: the first
    /// chunk through [`Llama::hidden_cached`] must have `pad.len()` rows and more than
    /// `max(pad)` columns.
    pub fn left_padded(pad: Vec<usize>) -> Self {
        Self { layers: Vec::new(), len: 0, pad }
    }

    /// Left-padding columns of each row (empty: none).
    pub fn pad(&self) -> &[usize] {
        &self.pad
    }

    /// A batch of `b` copies of this cache of one sequence, so `b` continuations of the same
    /// prefix run through [`Llama::hidden_cached`] together.
    pub fn repeat_batch(&self, b: usize) -> candle_core::Result<Self> {
        let layers = self.layers.iter().map(|l| l.repeat_batch(b)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers, len: self.len, pad: self.pad.repeat(b) })
    }

    /// Keep only the batch rows `rows` (in that order), e.g. to drop sequences that finished.
    pub fn select_rows(&self, rows: &[usize]) -> candle_core::Result<Self> {
        if let Some(&r) = rows.iter().find(|&&r| !self.pad.is_empty() && r >= self.pad.len()) {
            candle_core::bail!("KV cache: row {r} of a batch of {}", self.pad.len())
        }
        let pad = if self.pad.is_empty() { Vec::new() } else { rows.iter().map(|&r| self.pad[r]).collect() };
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let layers = self.layers.iter().map(|l| l.select_rows(&idx)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers, len: self.len, pad })
    }

    /// Each layer's keys and values mapped by `f` (the same for both), the other fields kept.
    fn map_layers(&self, len: usize, f: impl Fn(&Tensor) -> candle_core::Result<Tensor>) -> candle_core::Result<Self> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                let (k, v) = l.kv();
                Ok(LayerCache::from_kv(k.map(&f).transpose()?, v.map(&f).transpose()?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers, len, pad: self.pad.clone() })
    }

    /// The first `n` columns only (`n` ≤ [`KvCache::len`]), copied out contiguous.
    pub fn narrow_columns(&self, n: usize) -> candle_core::Result<Self> {
        if n > self.len {
            candle_core::bail!("KV cache: {n} columns of {}", self.len)
        }
        self.map_layers(n, |t| t.narrow(2, 0, n)?.contiguous())
    }

    /// Widened to `n` ≥ [`KvCache::len`] columns by zero keys and values after the cached ones
    /// (for a caller whose bias hides them).
    pub fn pad_columns(&self, n: usize) -> candle_core::Result<Self> {
        if n < self.len {
            candle_core::bail!("KV cache: padding {} columns to {n}", self.len)
        }
        if n == self.len {
            return Ok(self.clone());
        }
        let extra = n - self.len;
        self.map_layers(n, |t| {
            let (b, h, _, d) = t.dims4()?;
            Tensor::cat(&[t, &Tensor::zeros((b, h, extra, d), t.dtype(), t.device())?], 2)
        })
    }

    /// The rows of `a` then those of `b` as one batch; both hold the same columns and layers, and
    /// neither is left-padded.
    pub fn cat_rows(a: &Self, b: &Self) -> candle_core::Result<Self> {
        if a.len != b.len || a.layers.len() != b.layers.len() || !a.pad.is_empty() || !b.pad.is_empty() {
            candle_core::bail!("KV cache: cannot stack caches of {} and {} columns", a.len, b.len)
        }
        let layers = a
            .layers
            .iter()
            .zip(&b.layers)
            .map(|(x, y)| {
                let cat = |p: Option<&Tensor>, q: Option<&Tensor>| match (p, q) {
                    (Some(p), Some(q)) => Tensor::cat(&[p, q], 0).map(Some),
                    _ => Ok(None),
                };
                let ((xk, xv), (yk, yv)) = (x.kv(), y.kv());
                Ok(LayerCache::from_kv(cat(xk, yk)?, cat(xv, yv)?))
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { layers, len: a.len, pad: Vec::new() })
    }
}

/// Everything needed to build the model's parameters.
pub struct BuildOpts<'a> {
    /// What trains.
    pub adapter: &'a AdapterConfig,
    /// Seed for adapter initialisation.
    pub seed: u64,
    /// How training runs each decoder layer (`model.layer_path`).
    pub layer_path: LayerPath,
    /// Add a trainable, zero-initialised embedding of the diffusion time t to the input
    /// embeddings (`objective.time_conditioning = "embedding"`; see [`time_features`]).
    pub time_embedding: bool,
}

/// Number of fixed sinusoidal features of t the time embedding reads ([`time_features`]).
pub const TIME_FEATURES: usize = 32;

/// The frequencies ω_k = 1000 · 10000^(−k/16), k = 0..16, of [`time_features`]: geometric from
/// 1000 down to about 0.56 rad per unit of t (DiT's timestep frequencies applied to 1000·t).
pub fn time_frequencies() -> [f32; TIME_FEATURES / 2] {
    let half = TIME_FEATURES / 2;
    std::array::from_fn(|k| (1000.0 * 10000f64.powf(-(k as f64) / half as f64)) as f32)
}

/// The fixed features of the diffusion time of each column: `time` (B, L) f32 →
/// (B, L, [`TIME_FEATURES`]) f32, `[cos(t·ω_0), …, cos(t·ω_15), sin(t·ω_0), …, sin(t·ω_15)]` with
/// ω_k from [`time_frequencies`].
pub fn time_features(time: &Tensor) -> candle_core::Result<Tensor> {
    let (b, l) = time.dims2()?;
    let half = TIME_FEATURES / 2;
    let w = Tensor::new(&time_frequencies(), time.device())?.reshape((1, 1, half))?; // (1, 1, F/2)
    let arg = time.to_dtype(DType::F32)?.reshape((b, l, 1))?.broadcast_mul(&w)?; // (B, L, F/2)
    Tensor::cat(&[&arg.cos()?, &arg.sin()?], 2) // (B, L, F)
}

/// The LLaMA model.
#[derive(Debug, Clone)]
pub struct Llama {
    embed_tokens: Weight,
    /// The time embedding W (D, [`TIME_FEATURES`]), f32, when the model takes a time input.
    time_embed: Option<Var>,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Option<Linear>,
    rotary: Rotary,
    /// Where fused layers put their parameters' gradients (shared with the [`Trainable`]).
    sink: GradSink,
    layer_path: LayerPath,
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
        let full = opts.adapter.kind == AdapterKind::Full;
        let (dtype, device) = (vb.dtype(), vb.device().clone());
        let m = vb.pp("model");
        let evb = m.pp("embed_tokens");
        let emb = evb.get((cfg.vocab_size, cfg.hidden_size), "weight")?;
        // peft's name for a module trained beside a LoRA adapter
        let name = |n: String| if full { n } else { format!("base_model.model.{n}") };
        let embed_tokens = Weight::new(emb, name(format!("{}.weight", evb.prefix())), full || opts.adapter.train_embeddings, &mut tr)?;
        // Always trained (it is new), zero-initialised: the base model's outputs at any t.
        let time_embed = if opts.time_embedding {
            let v = Var::zeros((cfg.hidden_size, TIME_FEATURES), DType::F32, &device)?;
            tr.push(name(format!("{}.weight", m.pp("time_embed").prefix())), v.clone());
            Some(v)
        } else {
            None
        };
        let mut ctx = LoadCtx { cfg, adapter: opts.adapter, seed: opts.seed, index: 0, tr: &mut tr };
        let layers = (0..cfg.num_hidden_layers).map(|i| DecoderLayer::load(m.pp("layers").pp(i), &mut ctx)).collect::<crate::Result<Vec<_>>>()?;
        let norm = RmsNorm::load(m.pp("norm"), cfg.hidden_size, &mut ctx)?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            let head_cfg = AdapterConfig { targets: vec![], ..opts.adapter.clone() };
            Some(Linear::load(&vb.pp("lm_head"), (cfg.vocab_size, cfg.hidden_size), &head_cfg, 0, opts.seed, &mut tr)?)
        };
        let rotary = Rotary::new(cfg, &device)?;
        let sink = tr.sink.clone();
        Ok((Self { embed_tokens, time_embed, layers, norm, lm_head, rotary, sink, layer_path: opts.layer_path, cfg: cfg.clone(), dtype, device }, tr))
    }

    /// How training runs each decoder layer.
    pub fn layer_path(&self) -> LayerPath {
        self.layer_path
    }

    /// Run training through the other path from now on (tests compare the two on one model).
    pub fn set_layer_path(&mut self, path: LayerPath) {
        self.layer_path = path;
    }

    /// Whether the model takes a diffusion time input ([`BuildOpts::time_embedding`]).
    pub fn time_conditioned(&self) -> bool {
        self.time_embed.is_some()
    }

    /// Final-normed hidden states. `ids`: (B, L) u32; `bias`: additive attention bias broadcastable
    /// to (B, H, L, L), or None for full attention. Returns (B, L, D). In training
    /// (`ctx.train`) each layer runs on the model's [`LayerPath`].
    pub fn hidden(&self, ids: &Tensor, bias: Option<&Tensor>, ctx: &Fwd) -> candle_core::Result<Tensor> {
        self.hidden_inner(ids, bias, ctx, None, None, None)
    }

    /// [`Llama::hidden`] with explicit RoPE positions `positions` (B, L) u32 (None: 0..L): packed
    /// rows restart them per pair, block diffusion's clean copy repeats the noised copy's. Each
    /// position must be below `max_position_embeddings` (the caller checks: [`crate::objective::HostBatch`]).
    /// `time`: the diffusion time of each column (B, L) f32, for a time-conditioned model
    /// ([`Llama::time_conditioned`]; an error for any other); None runs without it.
    pub fn hidden_at(&self, ids: &Tensor, bias: Option<&Tensor>, positions: Option<&Tensor>, time: Option<&Tensor>, ctx: &Fwd) -> candle_core::Result<Tensor> {
        if let Some(p) = positions {
            if p.dims2()? != ids.dims2()? {
                candle_core::bail!("RoPE positions {:?} for token ids {:?}", p.dims(), ids.dims())
            }
        }
        self.hidden_inner(ids, bias, ctx, None, positions, time)
    }

    fn embed(&self, ids: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let e = self.embed_tokens.get(self.dtype)?; // (V, D)
        crate::kernels::layout::embedding(&e, &ids.flatten_all()?)?.reshape((b, l, self.cfg.hidden_size)) // (B, L, D)
    }

    /// The input embeddings plus, given `time` (B, L), its embedding: (B, L, D).
    fn embed_timed(&self, ids: &Tensor, time: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let x = self.embed(ids)?; // (B, L, D)
        let Some(t) = time else { return Ok(x) };
        let Some(w) = &self.time_embed else {
            candle_core::bail!("a diffusion time was given to a model without a time embedding (objective.time_conditioning = \"none\")")
        };
        let (b, l) = ids.dims2()?;
        if t.dims2()? != (b, l) {
            candle_core::bail!("diffusion times {:?} for token ids {:?}", t.dims(), ids.dims())
        }
        let f = time_features(t)?.reshape((b * l, TIME_FEATURES))?; // (B·L, F) f32
        let e = f.matmul(&w.as_tensor().t()?)?.reshape((b, l, self.cfg.hidden_size))?; // (B, L, D) f32
        let e = e.to_dtype(x.dtype())?;
        x + e
    }

    fn hidden_inner(&self, ids: &Tensor, bias: Option<&Tensor>, ctx: &Fwd, mut cache: Option<&mut KvCache>, positions: Option<&Tensor>, time: Option<&Tensor>) -> candle_core::Result<Tensor> {
        let offset = cache.as_ref().map(|c| c.len).unwrap_or(0);
        let pos = match positions {
            Some(p) => Positions::At(p),
            None => Positions::From(offset),
        };
        let mut x = self.embed_timed(ids, time)?; // (B, L, D)
        if let Some(c) = cache.as_mut() {
            if c.layers.is_empty() {
                c.layers = vec![LayerCache::default(); self.layers.len()];
            }
        }
        let fused = ctx.train && cache.is_none() && self.layer_path == LayerPath::Fused;
        let tables = if fused { Some(self.rotary.tables_for(pos, ids.dim(1)?, self.dtype)?) } else { None };
        if fused {
            self.refresh_adapter_copies()?;
        }
        for (i, layer) in self.layers.iter().enumerate() {
            x = match &tables {
                Some((cos, sin)) => layer.forward_fused(&x, bias, cos, sin, ctx, &self.sink)?,
                None => layer.forward(&x, bias, &self.rotary, ctx, cache.as_mut().map(|c| &mut c.layers[i]), pos)?,
            };
        }
        if let Some(c) = cache {
            c.len += ids.dim(1)?;
        }
        self.norm.forward(&x, ctx)
    }

    /// The compute-dtype copies (A, s·B) of every LoRA adapter, made in one launch on CUDA (bf16)
    /// and stored in the adapters for this forward pass; elsewhere the adapters cast their own.
    fn refresh_adapter_copies(&self) -> candle_core::Result<()> {
        if self.dtype != DType::BF16 {
            return Ok(());
        }
        let ads: Vec<&super::lora::LoraAdapter> = self.layers.iter().flat_map(|b| b.linears()).filter_map(|(_, l)| l.lora.as_ref()).collect();
        let srcs: Vec<Tensor> = ads.iter().flat_map(|a| [a.a.as_tensor().clone(), a.b.as_tensor().clone()]).collect();
        let scales: Vec<f32> = ads.iter().flat_map(|a| [1.0, a.scale as f32]).collect();
        match crate::kernels::optim::cast_scaled_bf16(&srcs, &scales)? {
            Some(c) => {
                for (i, a) in ads.iter().enumerate() {
                    a.set_copies(Some((c[2 * i].clone(), c[2 * i + 1].clone())));
                }
            }
            None => ads.iter().for_each(|a| a.set_copies(None)),
        }
        Ok(())
    }

    /// Drop the adapters' stored compute copies (a later forward casts or refreshes its own):
    /// what a captured training step does at its end, so nothing it allocated outlives it.
    pub fn clear_adapter_copies(&self) {
        self.layers.iter().flat_map(|b| b.linears()).filter_map(|(_, l)| l.lora.as_ref()).for_each(|a| a.set_copies(None));
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
        let h = self.hidden_cached(ids, cache)?;
        self.logits(&h, &Fwd::default())
    }

    /// The final-normed hidden states (B, l, D) of [`Llama::forward_cached`], before the LM head
    /// (to run the head on a few rows only). A left-padded cache ([`KvCache::left_padded`]) hides its padding columns from every query.
    pub fn hidden_cached(&self, ids: &Tensor, cache: &mut KvCache) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        if !cache.pad.is_empty() {
            if cache.pad.len() != b {
                candle_core::bail!("KV cache of {} rows continued by a batch of {b}", cache.pad.len())
            }
            if let Some(&p) = cache.pad.iter().find(|&&p| p >= cache.len + l) {
                candle_core::bail!("KV cache: a row of {p} padding columns has no token among the first {}", cache.len + l)
            }
        }
        let bias = super::mask::padded_cache_bias(l, cache.len, &cache.pad, self.dtype, &self.device)?; // (B|1, 1, l, T) or None
        self.hidden_inner(ids, bias.as_ref(), &Fwd::default(), Some(cache), None, None)
    }

    /// [`Llama::hidden`] at inference under a caller-provided `bias`, also returning every
    /// column's keys and values as a cache (`len` = L, no padding recorded): the first pass of
    /// prefix-cached diffusion decoding, which keeps the prefix columns
    /// ([`KvCache::narrow_columns`]). The hidden states are those of [`Llama::hidden_at`] with
    /// the diffusion times `time` (B, L) (a time-conditioned model's, else None).
    pub fn hidden_capture(&self, ids: &Tensor, bias: Option<&Tensor>, time: Option<&Tensor>) -> candle_core::Result<(Tensor, KvCache)> {
        let mut cache = KvCache::default();
        let h = self.hidden_inner(ids, bias, &Fwd::default(), Some(&mut cache), None, time)?;
        Ok((h, cache))
    }

    /// Final-normed hidden states (B, l, D) of a chunk `ids` (B, l) at positions
    /// `offset..offset + l`, attending to the keys of `prefix` (its C = [`KvCache::len`] cached
    /// columns, at positions 0..C) followed by the chunk's own keys, under a caller-provided
    /// `bias` broadcastable to (B, H, l, C + l) — e.g. hiding the cached columns the chunk
    /// recomputes, when `offset` < C. The cache is not changed (the chunk is not appended), so
    /// several chunks can continue one prefix. Inference only. (The AR path,
    /// [`Llama::hidden_cached`], appends with a causal chunk bias instead.) `time`: the
    /// chunk's diffusion times (B, l), as in [`Llama::hidden_at`].
    pub fn hidden_over_prefix(&self, ids: &Tensor, prefix: &KvCache, offset: usize, bias: Option<&Tensor>, time: Option<&Tensor>) -> candle_core::Result<Tensor> {
        Ok(self.over_prefix(ids, prefix, offset, bias, time)?.0)
    }

    /// [`Llama::hidden_over_prefix`] for a chunk that continues the prefix exactly (at offset =
    /// the prefix's [`KvCache::len`]), also returning the prefix extended by the chunk's keys and
    /// values (`len` = offset + l): how block decoding appends a committed block to its cache.
    pub fn hidden_extending(&self, ids: &Tensor, prefix: &KvCache, bias: Option<&Tensor>, time: Option<&Tensor>) -> candle_core::Result<(Tensor, KvCache)> {
        self.over_prefix(ids, prefix, prefix.len, bias, time)
    }

    fn over_prefix(&self, ids: &Tensor, prefix: &KvCache, offset: usize, bias: Option<&Tensor>, time: Option<&Tensor>) -> candle_core::Result<(Tensor, KvCache)> {
        let (b, l) = ids.dims2()?;
        if offset + l > self.cfg.max_position_embeddings {
            candle_core::bail!("chunk at positions {offset}..{} exceeds the model's {} positions", offset + l, self.cfg.max_position_embeddings)
        }
        if !prefix.layers.is_empty() && prefix.layers.len() != self.layers.len() {
            candle_core::bail!("KV cache of {} layers for a model of {}", prefix.layers.len(), self.layers.len())
        }
        if let Some(k) = prefix.layers.first().and_then(|l| l.kv().0) {
            if k.dim(0)? != b {
                candle_core::bail!("KV cache of {} rows continued by a batch of {b}", k.dim(0)?)
            }
        }
        // A shallow copy (tensors are shared) whose RoPE offset is the chunk's first position.
        let mut c = KvCache { layers: prefix.layers.clone(), len: offset, pad: Vec::new() };
        let h = self.hidden_inner(ids, bias, &Fwd::default(), Some(&mut c), None, time)?;
        Ok((h, c))
    }

    /// Turn every LoRA adapter off (base-model outputs) or back on.
    pub fn set_adapters_disabled(&mut self, disabled: bool) {
        for l in self.layers.iter_mut().flat_map(|b| b.linears_mut()) {
            l.disabled = disabled;
        }
    }

    /// Fold every adapter into its base weight.
    pub fn merge_adapters(&mut self) -> candle_core::Result<()> {
        for l in self.layers.iter_mut().flat_map(|b| b.linears_mut()) {
            l.merge()?;
        }
        Ok(())
    }

    /// Every weight of the model as it computes now (adapters merged in, trained embeddings and
    /// norms as trained), with Hugging Face names, in f32: what an exported merged checkpoint
    /// holds. The time embedding, when there is one, is `model.time_embed.weight`.
    pub fn hf_tensors(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = vec![("model.embed_tokens.weight".to_string(), self.embed_tokens.stored().to_dtype(DType::F32)?)];
        if let Some(w) = &self.time_embed {
            out.push(("model.time_embed.weight".into(), w.as_tensor().detach()));
        }
        out.extend(self.merged_weights()?);
        for (i, b) in self.layers.iter().enumerate() {
            for (n, l) in b.linears() {
                if let Some(bias) = l.bias_f32()? {
                    out.push((format!("model.layers.{i}.{n}.bias"), bias));
                }
            }
            for (n, norm) in b.norms() {
                out.push((format!("model.layers.{i}.{n}.weight"), norm.weight_f32()?));
            }
        }
        out.push(("model.norm.weight".into(), self.norm.weight_f32()?));
        if let Some(head) = &self.lm_head {
            out.push(("lm_head.weight".into(), head.merged_weight()?));
        }
        Ok(out)
    }

    /// Every linear weight as the model uses it now (adapters merged), with HF names, in f32.
    pub fn merged_weights(&self) -> candle_core::Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for (i, b) in self.layers.iter().enumerate() {
            for (n, l) in b.linears() {
                out.push((format!("model.layers.{i}.{n}.weight"), l.merged_weight()?));
            }
        }
        Ok(out)
    }
}
