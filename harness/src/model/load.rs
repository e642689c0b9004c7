//! Loading base weights: GGUF (llama architecture, dequantized), Hugging Face folders
//! (config.json + safetensors, one file or shards listed by `model.safetensors.index.json`, +
//! tokenizer.json), the hub (via hf-hub, the same files), or a seeded random model.
//!
//! Safetensors are memory-mapped and each tensor goes from the mapping straight to the device,
//! then to the training dtype there, so no second full copy of the weights is held in host
//! memory; [`LoadStats`] reports the time, the bytes placed and the process's peak host memory.
//!
//! GGUF files written by llama.cpp's converter store the q/k projection rows permuted for its
//! interleaved RoPE; [`unpermute_qk`] restores the Hugging Face order that [`super::llama`] uses.

use super::llama::LlamaConfig;
use super::tokenizer::{MaskToken, Tok};
use crate::rng::{rng_for, Purpose};
use crate::{Error, Result};
use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use rand_distr::{Distribution, Normal};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Where the base model comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum ModelSource {
    /// A `.gguf` file.
    Gguf(PathBuf),
    /// A folder with config.json, *.safetensors and tokenizer.json.
    HfFolder(PathBuf),
    /// A Hugging Face hub repo id, fetched with hf-hub (needs network).
    Hub {
        /// e.g. `HuggingFaceTB/SmolLM2-135M-Instruct`.
        repo: String,
        /// Git revision; `main` when unset.
        revision: Option<String>,
    },
    /// A randomly initialised model of the given shape (tests, smoke runs, benchmarks).
    Random(LlamaConfig),
}

impl ModelSource {
    /// Interpret a `model.source` string: `random`, a path to a `.gguf`, a folder, or `org/name`.
    pub fn parse(source: &str, arch: Option<&LlamaConfig>, revision: Option<&str>) -> Result<Self> {
        if source == "random" {
            let arch = arch.ok_or_else(|| Error::config("model.arch", "`source = \"random\"` needs a [model.arch] table"))?;
            return Ok(ModelSource::Random(arch.clone()));
        }
        let p = PathBuf::from(source);
        if p.extension().is_some_and(|e| e == "gguf") {
            if !p.is_file() {
                return Err(Error::config("model.source", format!("GGUF file `{source}` not found (run `make setup` for the default model)")));
            }
            return Ok(ModelSource::Gguf(p));
        }
        if p.is_dir() {
            return Ok(ModelSource::HfFolder(p));
        }
        let looks_like_repo = source.split('/').count() == 2 && !source.starts_with('.') && !source.starts_with('/');
        if looks_like_repo {
            return Ok(ModelSource::Hub { repo: source.to_string(), revision: revision.map(str::to_string) });
        }
        Err(Error::config("model.source", format!("`{source}` is not a .gguf file, a model folder, a hub repo id (org/name) or `random`")))
    }
}

/// Base weights with HF names, the model shape, the tokenizer and the files they came from.
pub struct Loaded {
    /// Model shape.
    pub cfg: LlamaConfig,
    /// HF-named tensors in the requested dtype and device.
    pub tensors: HashMap<String, Tensor>,
    /// The tokenizer, when the source provides one (random models take one from `model.tokenizer`).
    pub tok: Option<Tok>,
    /// Files read (for hashing into manifests).
    pub files: Vec<PathBuf>,
    /// How long the load took and what it held ([`load`] fills it).
    pub stats: LoadStats,
}

/// What a load cost: the loader reports it (`harness train` prints it).
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LoadStats {
    /// Wall seconds of the load (weights and tokenizer).
    pub seconds: f64,
    /// Bytes of the weights as placed on the device, in the training dtype.
    pub bytes: u64,
    /// The process's peak resident host memory so far (Linux `VmHWM`), bytes; None elsewhere.
    pub peak_host_bytes: Option<u64>,
}

impl LoadStats {
    /// One line for the log.
    pub fn line(&self, tensors: usize, device: &Device) -> String {
        let gib = |b: u64| b as f64 / (1u64 << 30) as f64;
        let host = self.peak_host_bytes.map_or("unknown".to_string(), |b| format!("{:.2} GiB", gib(b)));
        format!("model: {tensors} tensors, {:.2} GiB on {:?} in {:.1} s; peak host memory {host}", gib(self.bytes), device.location(), self.seconds)
    }
}

/// The process's peak resident set size (`VmHWM` in /proc/self/status), bytes; None when not on
/// Linux or unreadable.
pub fn peak_host_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The safetensors files of the folder `dir`: the shards `model.safetensors.index.json` maps the
/// weights to (each must be present), else every `*.safetensors` file, sorted.
pub fn safetensors_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join(SHARD_INDEX);
    if index.is_file() {
        return shards_of_index(&index)?.into_iter().map(|f| {
            let p = dir.join(&f);
            if p.is_file() { Ok(p) } else { Err(Error::model(&index, format!("lists shard `{f}`, which is not in {}", dir.display()))) }
        }).collect();
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(Error::model(dir, "no *.safetensors file"));
    }
    Ok(files)
}

/// The index file of sharded safetensors checkpoints.
pub const SHARD_INDEX: &str = "model.safetensors.index.json";

/// The shard file names an index's `weight_map` lists, sorted, each once.
fn shards_of_index(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::model(index, e.to_string()))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| Error::model(index, "no `weight_map` object"))?;
    let mut files: Vec<String> = map.values().map(|f| f.as_str().map(str::to_string).ok_or_else(|| Error::model(index, "a `weight_map` entry is not a file name"))).collect::<Result<_>>()?;
    files.sort();
    files.dedup();
    if files.is_empty() {
        return Err(Error::model(index, "an empty `weight_map`"));
    }
    Ok(files)
}

/// Every tensor of the safetensors `files`, memory-mapped, each moved from the mapping straight
/// to `device` and converted to `dtype` there (no host copy of the whole checkpoint).
pub fn load_safetensors(files: &[PathBuf], dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    let mut tensors = HashMap::new();
    for f in files {
        // SAFETY: the file is mapped read-only for the duration of this loop; a checkpoint changed
        // under a running load is outside what the harness supports (as for any mmap loader).
        let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(f) }.map_err(|e| Error::model(f, e.to_string()))?;
        for (name, _) in st.tensors() {
            let t = st.load(&name, device).map_err(|e| Error::model(f, format!("tensor `{name}`: {e}")))?;
            tensors.insert(name, t.to_dtype(dtype)?);
        }
    }
    Ok(tensors)
}

/// Map a GGUF llama tensor name to its Hugging Face name.
pub fn gguf_to_hf_name(name: &str) -> Option<String> {
    let fixed = match name {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, part) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let hf = match part {
        "attn_norm.weight" => "input_layernorm.weight",
        "attn_q.weight" => "self_attn.q_proj.weight",
        "attn_k.weight" => "self_attn.k_proj.weight",
        "attn_v.weight" => "self_attn.v_proj.weight",
        "attn_output.weight" => "self_attn.o_proj.weight",
        "ffn_norm.weight" => "post_attention_layernorm.weight",
        "ffn_gate.weight" => "mlp.gate_proj.weight",
        "ffn_up.weight" => "mlp.up_proj.weight",
        "ffn_down.weight" => "mlp.down_proj.weight",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}"))
}

/// Undo llama.cpp's q/k row permutation: (out, in) with `n_head` heads, GGUF order → HF order.
pub fn unpermute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    // GGUF row (h, j, s) = HF row (h, s, j) for s in {0, 1}, j < hd/2.
    w.reshape((n_head, hd / 2, 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))
}

/// Apply llama.cpp's q/k row permutation (HF order → GGUF order); the inverse of [`unpermute_qk`].
pub fn permute_qk(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    let hd = out / n_head;
    w.reshape((n_head, 2, hd / 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))
}

fn md_usize(c: &gguf_file::Content, path: &Path, key: &str) -> Result<usize> {
    let v = c.metadata.get(key).ok_or_else(|| Error::model(path, format!("GGUF metadata lacks `{key}`")))?;
    v.to_u32()
        .map(|x| x as usize)
        .or_else(|_| v.to_u64().map(|x| x as usize))
        .map_err(|e| Error::model(path, format!("`{key}`: {e}")))
}

fn md_f64(c: &gguf_file::Content, key: &str) -> Option<f64> {
    c.metadata.get(key).and_then(|v| v.to_f32().ok().map(|x| x as f64).or_else(|| v.to_f64().ok()))
}

/// Read the model shape from GGUF metadata (architecture `llama`).
pub fn gguf_config(c: &gguf_file::Content, path: &Path) -> Result<LlamaConfig> {
    let arch = c.metadata.get("general.architecture").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if arch != "llama" {
        return Err(Error::model(path, format!("architecture `{arch}` is not supported (only `llama`)")));
    }
    let vocab = match c.metadata.get("llama.vocab_size") {
        Some(_) => md_usize(c, path, "llama.vocab_size")?,
        None => c
            .tensor_infos
            .get("token_embd.weight")
            .map(|t| t.shape.dims()[0])
            .ok_or_else(|| Error::model(path, "no `token_embd.weight` tensor"))?,
    };
    let heads = md_usize(c, path, "llama.attention.head_count")?;
    Ok(LlamaConfig {
        vocab_size: vocab,
        hidden_size: md_usize(c, path, "llama.embedding_length")?,
        intermediate_size: md_usize(c, path, "llama.feed_forward_length")?,
        num_hidden_layers: md_usize(c, path, "llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(md_usize(c, path, "llama.attention.head_count_kv").unwrap_or(heads)),
        rms_norm_eps: md_f64(c, "llama.attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
        rope_theta: md_f64(c, "llama.rope.freq_base").unwrap_or(10_000.0),
        max_position_embeddings: md_usize(c, path, "llama.context_length").unwrap_or(2048),
        tie_word_embeddings: !c.tensor_infos.contains_key("output.weight"),
        qkv_bias: false,
        head_dim: None,
        qk_norm: false,
        model_type: None,
    })
}

/// Load a llama GGUF: dequantize every tensor into `dtype` with HF names and order.
pub fn load_gguf(path: &Path, dtype: DType, device: &Device, mask: &MaskToken) -> Result<Loaded> {
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let content = gguf_file::Content::read(&mut f).map_err(|e| Error::model(path, format!("not a readable GGUF: {e}")))?;
    let cfg = gguf_config(&content, path)?;
    let mut tensors = HashMap::new();
    let mut names: Vec<&String> = content.tensor_infos.keys().collect();
    names.sort();
    for name in names {
        let Some(hf) = gguf_to_hf_name(name) else { continue };
        let q = content.tensor(&mut f, name, &Device::Cpu).map_err(|e| Error::model(path, format!("tensor `{name}`: {e}")))?;
        let mut t = q.dequantize(&Device::Cpu)?; // f32
        if hf.ends_with("q_proj.weight") {
            t = unpermute_qk(&t, cfg.num_attention_heads)?;
        } else if hf.ends_with("k_proj.weight") {
            t = unpermute_qk(&t, cfg.kv_heads())?;
        }
        tensors.insert(hf, t.to_dtype(dtype)?.to_device(device)?);
    }
    let tok = Some(Tok::from_gguf(&content, path, mask)?);
    Ok(Loaded { cfg, tensors, tok, files: vec![path.to_path_buf()], stats: LoadStats::default() })
}

/// Load a Hugging Face folder: config.json, every *.safetensors, tokenizer.json.
pub fn load_hf_folder(dir: &Path, dtype: DType, device: &Device, mask: &MaskToken) -> Result<Loaded> {
    let cfg_path = dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::model(&cfg_path, e.to_string()))?;
    // the family's config keys and differences from LLaMA (an unknown model_type is an error naming it)
    let family = super::family::Family::of_config(&v, &cfg_path)?;
    let cfg = family.read_config(&v, &cfg_path)?;
    let mut files = safetensors_files(dir)?;
    let tensors: HashMap<String, Tensor> =
        load_safetensors(&files, dtype, device)?.into_iter().map(|(n, t)| (super::family::to_hf_name(family.layout, &n), t)).collect();
    let tok_path = dir.join("tokenizer.json");
    let tok = if tok_path.is_file() { Some(Tok::from_file(&tok_path, mask)?) } else { None };
    files.push(cfg_path);
    Ok(Loaded { cfg, tensors, tok, files, stats: LoadStats::default() })
}

/// Fetch a model from the Hugging Face hub with hf-hub, then load it as a folder: config.json,
/// tokenizer.json and `model.safetensors`, or the shards `model.safetensors.index.json` lists.
/// The cache is hf-hub's under `HF_HOME` (default `~/.cache/huggingface`), and `HF_ENDPOINT`
/// names a mirror; files already in the cache are not fetched again (no network needed).
pub fn load_hub(repo: &str, revision: Option<&str>, dtype: DType, device: &Device, mask: &MaskToken) -> Result<Loaded> {
    let api = hf_hub::api::sync::ApiBuilder::from_env().build().map_err(|e| Error::model(repo, format!("hf-hub: {e}")))?;
    let rev = revision.unwrap_or("main").to_string();
    let r = api.repo(hf_hub::Repo::with_revision(repo.to_string(), hf_hub::RepoType::Model, rev));
    let get = |f: &str| r.get(f).map_err(|e| Error::model(repo, format!("could not fetch `{f}` from the hub ({e}); without network, pass a local path")));
    let cfg = get("config.json")?;
    get("tokenizer.json")?;
    // one file, or the shards a sharded checkpoint's index lists
    match r.get(SHARD_INDEX) {
        Ok(index) => {
            for shard in shards_of_index(&index)? {
                get(&shard)?;
            }
        }
        Err(_) => {
            get("model.safetensors")?;
        }
    }
    let dir = cfg.parent().ok_or_else(|| Error::model(repo, "hub cache path has no parent"))?.to_path_buf();
    load_hf_folder(&dir, dtype, device, mask)
}

/// A random model: weights N(0, std²), norms 1, drawn from the seeded generator.
pub fn random_weights(cfg: &LlamaConfig, std: f64, seed: u64, dtype: DType, device: &Device) -> Result<HashMap<String, Tensor>> {
    cfg.validate()?;
    let normal = Normal::new(0.0f64, std).map_err(|e| Error::config("model.init_std", e.to_string()))?;
    let mut shapes: Vec<(String, Vec<usize>)> = Vec::new();
    let (d, f, kv, qw, hd) = (cfg.hidden_size, cfg.intermediate_size, cfg.kv_heads() * cfg.head_dim(), cfg.q_width(), cfg.head_dim());
    shapes.push(("model.embed_tokens.weight".into(), vec![cfg.vocab_size, d]));
    for i in 0..cfg.num_hidden_layers {
        let p = format!("model.layers.{i}");
        shapes.push((format!("{p}.input_layernorm.weight"), vec![d]));
        shapes.push((format!("{p}.post_attention_layernorm.weight"), vec![d]));
        if cfg.qk_norm {
            shapes.push((format!("{p}.self_attn.q_norm.weight"), vec![hd]));
            shapes.push((format!("{p}.self_attn.k_norm.weight"), vec![hd]));
        }
        for (n, s) in [("q_proj", vec![qw, d]), ("k_proj", vec![kv, d]), ("v_proj", vec![kv, d]), ("o_proj", vec![d, qw])] {
            if cfg.qkv_bias && n != "o_proj" {
                shapes.push((format!("{p}.self_attn.{n}.bias"), vec![s[0]]));
            }
            shapes.push((format!("{p}.self_attn.{n}.weight"), s));
        }
        for (n, s) in [("gate_proj", vec![f, d]), ("up_proj", vec![f, d]), ("down_proj", vec![d, f])] {
            shapes.push((format!("{p}.mlp.{n}.weight"), s));
        }
    }
    shapes.push(("model.norm.weight".into(), vec![d]));
    if !cfg.tie_word_embeddings {
        shapes.push(("lm_head.weight".into(), vec![cfg.vocab_size, d]));
    }
    let mut out = HashMap::new();
    for (k, (name, shape)) in shapes.into_iter().enumerate() {
        let n: usize = shape.iter().product();
        let t = if name.ends_with("norm.weight") {
            Tensor::ones(shape, DType::F32, &Device::Cpu)?
        } else {
            let mut rng = rng_for(seed, Purpose::Init, 1_000_000 + k as u64, 0);
            let v: Vec<f32> = (0..n).map(|_| normal.sample(&mut rng) as f32).collect();
            Tensor::from_vec(v, shape, &Device::Cpu)?
        };
        out.insert(name, t.to_dtype(dtype)?.to_device(device)?);
    }
    Ok(out)
}

/// Load whatever `source` names. Random models take their tokenizer from `tokenizer` (or have none).
pub fn load(source: &ModelSource, tokenizer: Option<&Path>, init_std: f64, seed: u64, dtype: DType, device: &Device, mask: &MaskToken) -> Result<Loaded> {
    let t0 = std::time::Instant::now();
    let mut loaded = match source {
        ModelSource::Gguf(p) => load_gguf(p, dtype, device, mask)?,
        ModelSource::HfFolder(d) => load_hf_folder(d, dtype, device, mask)?,
        ModelSource::Hub { repo, revision } => load_hub(repo, revision.as_deref(), dtype, device, mask)?,
        ModelSource::Random(cfg) => Loaded {
            cfg: cfg.clone(),
            tensors: random_weights(cfg, init_std, seed, dtype, device)?,
            tok: None,
            files: vec![],
            stats: LoadStats::default(),
        },
    };
    if let Some(tp) = tokenizer {
        let tok = if tp.extension().is_some_and(|e| e == "gguf") {
            let mut f = std::fs::File::open(tp).map_err(|e| Error::io(tp, e))?;
            let c = gguf_file::Content::read(&mut f).map_err(|e| Error::model(tp, e.to_string()))?;
            Tok::from_gguf(&c, tp, mask)?
        } else {
            Tok::from_file(tp, mask)?
        };
        loaded.files.push(tp.to_path_buf());
        loaded.tok = Some(tok);
    }
    if let Some(t) = &loaded.tok {
        if t.vocab_size() > loaded.cfg.vocab_size {
            return Err(Error::config("model.tokenizer", format!("tokenizer has {} tokens but the model only {}", t.vocab_size(), loaded.cfg.vocab_size)));
        }
    }
    device.synchronize()?;
    let bytes = loaded.tensors.values().map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64).sum();
    loaded.stats = LoadStats { seconds: t0.elapsed().as_secs_f64(), bytes, peak_host_bytes: peak_host_bytes() };
    Ok(loaded)
}

/// A seeded random f32 model of shape `cfg` with adapters per `adapter` (tests, benchmarks).
pub fn random_model(cfg: &LlamaConfig, adapter: &super::lora::AdapterConfig, seed: u64, device: &Device) -> Result<(super::Llama, super::Trainable)> {
    random_model_dtype(cfg, adapter, seed, DType::F32, device)
}

/// [`random_model`] in a chosen dtype.
pub fn random_model_dtype(cfg: &LlamaConfig, adapter: &super::lora::AdapterConfig, seed: u64, dtype: DType, device: &Device) -> Result<(super::Llama, super::Trainable)> {
    let w = random_weights(cfg, 0.02, seed, dtype, device)?;
    let vb = candle_nn::VarBuilder::from_tensors(w, dtype, device);
    super::Llama::load(vb, cfg, &super::BuildOpts { adapter, seed, layer_path: super::LayerPath::Fused, time_embedding: false })
}

/// A tiny shape for tests: vocab `vocab`, width 32, 2 layers, 4 heads, 2 KV heads.
pub fn tiny_config(vocab: usize) -> LlamaConfig {
    LlamaConfig {
        vocab_size: vocab,
        hidden_size: 32,
        intermediate_size: 64,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 256,
        tie_word_embeddings: true,
        qkv_bias: false,
        head_dim: None,
        qk_norm: false,
        model_type: None,
    }
}
