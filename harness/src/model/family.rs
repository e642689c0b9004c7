//! Model families: which Hugging Face checkpoints the one LLaMA-shaped model type reads, told
//! apart by `config.json`'s `model_type`, as a table ([`FAMILIES`]), and the settings a run on
//! each inherits ([`Preset`], [`apply_presets`]).
//!
//! | family | `model_type` | difference from LLaMA | preset |
//! |---|---|---|---|
//! | LLaMA (SmolLM2, LLaMA 2/3) | `llama` | — | AR base: annealed attention |
//! | Qwen2 / Qwen2.5 | `qwen2` | biases on the q, k and v projections | AR base: annealed attention |
//! | Qwen3 | `qwen3` | per-head RMSNorm of q and k before RoPE; `head_dim` stated (heads × head_dim may differ from hidden_size) | AR base: annealed attention |
//! | LLaDA | `llada` | its own config keys (`d_model`, `n_heads`, `mlp_hidden_size`, …) and weight names (`model.transformer.blocks.N.attn_out`, …); non-causal | mask 126336, `shift = false`, full attention, `plain` template |
//! | Dream | `Dream` | Qwen2-shaped (q/k/v biases); non-causal | mask 151666, `shift = true`, full attention, `chat` template |
//!
//! The weights always carry the Hugging Face LLaMA names inside the harness: LLaDA's are renamed
//! on load and back on export ([`to_hf_name`], [`from_hf_name`]).
//!
//! An unknown `model_type` (or a LLaMA config asking for `attention_bias`, which would put a
//! bias on o as well; or a LLaDA config with a feature the one decoder layer does not have) is an
//! error that names it and lists the supported ones.
//!
//! **Presets** come from a checkpoint's `config.json` (a Hugging Face folder, or a hub repo
//! already in the hf-hub cache); a GGUF file inherits none (the harness's defaults). A run
//! inherits each preset value it does not set, and the harness prints it; a value set against the
//! family's training convention (Dream with `shift = false`, LLaDA with `shift = true`) is kept,
//! with a warning. eos and pad come from the checkpoint's `tokenizer_config.json` (see
//! [`super::tokenizer`]).

use super::llama::LlamaConfig;
use crate::data::template::TemplateKind;
use crate::{Error, Result};
use std::path::{Path, PathBuf};

/// How a family's `config.json` and weights are spelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Hugging Face transformers' LLaMA / Qwen keys and weight names.
    Hf,
    /// LLaDA's (OLMo-derived) keys and `model.transformer.*` weight names.
    Llada,
}

/// What a run on a family inherits unless it sets it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Preset {
    /// The mask id the checkpoint was trained with (`config.json`'s `mask_token_id` overrides it).
    pub mask_id: Option<u32>,
    /// `objective.shift` the checkpoint was trained with (None: an AR base, the harness default).
    pub shift: Option<bool>,
    /// An already-adapted diffusion checkpoint (full attention from the start); otherwise an AR
    /// base (attention annealed from causal to full over [`ANNEAL_FRACTION`] of the run).
    pub diffusion: bool,
    /// The prompt template (None: the harness default, `chat`).
    pub template: Option<TemplateKind>,
}

/// One family of checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// `config.json`'s `model_type`.
    pub model_type: &'static str,
    /// The class an exported folder names in `architectures`.
    pub architecture: &'static str,
    /// Biases on q, k, v.
    pub qkv_bias: bool,
    /// Per-head RMSNorm of q and k.
    pub qk_norm: bool,
    /// Config keys and weight names.
    pub layout: Layout,
    /// What a run inherits.
    pub preset: Preset,
}

const AR_BASE: Preset = Preset { mask_id: None, shift: None, diffusion: false, template: None };

/// The supported families.
pub const FAMILIES: [Family; 5] = [
    Family { model_type: "llama", architecture: "LlamaForCausalLM", qkv_bias: false, qk_norm: false, layout: Layout::Hf, preset: AR_BASE },
    Family { model_type: "qwen2", architecture: "Qwen2ForCausalLM", qkv_bias: true, qk_norm: false, layout: Layout::Hf, preset: AR_BASE },
    Family { model_type: "qwen3", architecture: "Qwen3ForCausalLM", qkv_bias: false, qk_norm: true, layout: Layout::Hf, preset: AR_BASE },
    Family {
        model_type: "llada",
        architecture: "LLaDAModelLM",
        qkv_bias: false,
        qk_norm: false,
        layout: Layout::Llada,
        preset: Preset { mask_id: Some(126_336), shift: Some(false), diffusion: true, template: Some(TemplateKind::Plain) },
    },
    Family {
        model_type: "Dream",
        architecture: "DreamModel",
        qkv_bias: true,
        qk_norm: false,
        layout: Layout::Hf,
        preset: Preset { mask_id: Some(151_666), shift: Some(true), diffusion: true, template: Some(TemplateKind::Chat) },
    },
];

/// The share of a run's optimizer steps over which an AR base's attention is annealed from
/// causal to full (`objective.anneal_steps = ceil(ANNEAL_FRACTION × train.max_steps)`).
pub const ANNEAL_FRACTION: f64 = 0.1;

impl Family {
    /// The family of a parsed `config.json` (`path` names it in errors). A config without
    /// `model_type` is read as LLaMA (the harness's own configs and older exports).
    pub fn of_config(v: &serde_json::Value, path: &Path) -> Result<&'static Family> {
        let mt = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("llama");
        let fam = Self::named(mt).ok_or_else(|| {
            let arch = v.get("architectures").map(|a| a.to_string()).unwrap_or_else(|| "none".into());
            let known: Vec<&str> = FAMILIES.iter().map(|f| f.model_type).collect();
            Error::model(path, format!("model_type `{mt}` (architectures {arch}) is not supported; supported: {}", known.join(", ")))
        })?;
        if fam.model_type == "llama" && v.get("attention_bias").and_then(|b| b.as_bool()) == Some(true) {
            return Err(Error::model(path, "a LLaMA config with `attention_bias = true` (a bias on o as well) is not supported"));
        }
        Ok(fam)
    }

    /// The family whose `model_type` is `mt`.
    pub fn named(mt: &str) -> Option<&'static Family> {
        FAMILIES.iter().find(|f| f.model_type == mt)
    }

    /// The family a model shape belongs to: the one it was read as (`model_type`), else the one
    /// its biases and norms name.
    pub fn of(cfg: &LlamaConfig) -> &'static Family {
        if let Some(f) = cfg.model_type.as_deref().and_then(Self::named) {
            return f;
        }
        FAMILIES.iter().find(|f| f.layout == Layout::Hf && f.qkv_bias == cfg.qkv_bias && f.qk_norm == cfg.qk_norm).unwrap_or(&FAMILIES[0])
    }

    /// The model shape of the parsed `config.json` `v` of this family (`path` names it in errors).
    pub fn read_config(&'static self, v: &serde_json::Value, path: &Path) -> Result<LlamaConfig> {
        let mut cfg = match self.layout {
            Layout::Hf => {
                let mut c: LlamaConfig = serde_json::from_value(v.clone()).map_err(|e| Error::model(path, e.to_string()))?;
                // transformers ≥ 5 nests the RoPE base under `rope_parameters`.
                if let Some(theta) = v.pointer("/rope_parameters/rope_theta").and_then(|x| x.as_f64()) {
                    c.rope_theta = theta;
                }
                let scaled = v.get("rope_scaling").is_some_and(|s| !s.is_null())
                    || v.pointer("/rope_parameters/rope_type").and_then(|t| t.as_str()).is_some_and(|t| t != "default");
                if scaled {
                    return Err(Error::model(path, "scaled RoPE (`rope_scaling`, or a `rope_parameters.rope_type` other than \"default\") is not supported"));
                }
                c
            }
            Layout::Llada => llada_config(v, path)?,
        };
        cfg.qkv_bias = self.qkv_bias || cfg.qkv_bias;
        cfg.qk_norm = self.qk_norm;
        cfg.model_type = Some(self.model_type.to_string());
        cfg.validate().map_err(|e| Error::model(path, e.to_string()))?;
        Ok(cfg)
    }

    /// The mask id of a checkpoint of this family: `config.json`'s `mask_token_id`, else the
    /// family's.
    pub fn mask_id(&self, v: &serde_json::Value) -> Option<u32> {
        v.get("mask_token_id").and_then(|m| m.as_u64()).map(|m| m as u32).or(self.preset.mask_id)
    }
}

/// LLaDA's `config.json` (its keys) as a model shape; a feature the one decoder layer does not
/// have is an error naming its key.
fn llada_config(v: &serde_json::Value, path: &Path) -> Result<LlamaConfig> {
    let num = |k: &str| v.get(k).and_then(|x| x.as_u64()).map(|x| x as usize);
    let need = |k: &str| num(k).ok_or_else(|| Error::model(path, format!("LLaDA config: `{k}` missing or not a number")));
    let flag = |k: &str| v.get(k).and_then(|x| x.as_bool());
    let text = |k: &str| v.get(k).and_then(|x| x.as_str());
    // (key, what the one decoder layer supports)
    let unsupported: [(&str, bool); 9] = [
        ("block_type", text("block_type").is_some_and(|b| b != "llama")),
        ("activation_type", text("activation_type").is_some_and(|a| a != "silu")),
        ("layer_norm_type", text("layer_norm_type").is_some_and(|l| l != "rms")),
        ("alibi", flag("alibi") == Some(true)),
        ("rope", flag("rope") == Some(false)),
        ("scale_logits", flag("scale_logits") == Some(true)),
        ("input_emb_norm", flag("input_emb_norm") == Some(true)),
        ("attention_layer_norm", flag("attention_layer_norm") == Some(true)),
        ("include_bias", flag("include_bias") == Some(true) || flag("bias_for_layer_norm") == Some(true)),
    ];
    if let Some((k, _)) = unsupported.iter().find(|(_, bad)| *bad) {
        return Err(Error::model(path, format!("LLaDA config: `{k}` = {} is not supported (supported: block_type \"llama\", activation_type \"silu\", layer_norm_type \"rms\", RoPE, no biases but q/k/v's)", v[k])));
    }
    let d = need("d_model")?;
    let heads = need("n_heads")?;
    let kv = if flag("multi_query_attention") == Some(true) { Some(1) } else { num("n_kv_heads") };
    let inter = match num("mlp_hidden_size") {
        Some(h) => h,
        None => need("mlp_ratio")? * d,
    };
    Ok(LlamaConfig {
        vocab_size: num("embedding_size").unwrap_or(need("vocab_size")?),
        hidden_size: d,
        intermediate_size: inter,
        num_hidden_layers: need("n_layers")?,
        num_attention_heads: heads,
        num_key_value_heads: kv,
        rms_norm_eps: v.get("rms_norm_eps").and_then(|x| x.as_f64()).unwrap_or(1e-5),
        rope_theta: v.get("rope_theta").and_then(|x| x.as_f64()).unwrap_or(10_000.0),
        max_position_embeddings: num("max_sequence_length").unwrap_or(1024),
        tie_word_embeddings: flag("weight_tying").unwrap_or(true),
        qkv_bias: flag("include_qkv_bias") == Some(true),
        head_dim: None,
        qk_norm: false,
        model_type: None,
    })
}

/// LLaDA's per-layer module names against the Hugging Face LLaMA ones.
const LLADA_LAYER: [(&str, &str); 9] = [
    ("self_attn.q_proj", "q_proj"),
    ("self_attn.k_proj", "k_proj"),
    ("self_attn.v_proj", "v_proj"),
    ("self_attn.o_proj", "attn_out"),
    ("mlp.gate_proj", "ff_proj"),
    ("mlp.up_proj", "up_proj"),
    ("mlp.down_proj", "ff_out"),
    ("input_layernorm", "attn_norm"),
    ("post_attention_layernorm", "ff_norm"),
];
/// LLaDA's whole-model module names against the Hugging Face LLaMA ones.
const LLADA_TOP: [(&str, &str); 3] = [("model.embed_tokens", "model.transformer.wte"), ("model.norm", "model.transformer.ln_f"), ("lm_head", "model.transformer.ff_out")];

/// A weight (or adapter) name of `layout` as the Hugging Face LLaMA name the harness uses.
/// Names it does not know pass through.
pub fn to_hf_name(layout: Layout, name: &str) -> String {
    rename(layout, name, false)
}

/// A Hugging Face LLaMA weight (or adapter) name as `layout` spells it.
pub fn from_hf_name(layout: Layout, name: &str) -> String {
    rename(layout, name, true)
}

/// peft's `target_modules` for LoRA on `targets` (`q_proj`, `o_proj`, …) in `layout`'s names: the
/// list itself for the Hugging Face layout; for LLaDA a regular expression over the blocks' modules
/// (LLaDA's LM head is also named `ff_out`, which a plain list would match too).
pub fn peft_targets(layout: Layout, targets: &[String]) -> serde_json::Value {
    match layout {
        Layout::Hf => serde_json::json!(targets),
        Layout::Llada => {
            let names: Vec<&str> = targets
                .iter()
                .map(|t| LLADA_LAYER.iter().find(|(hf, _)| hf.rsplit('.').next() == Some(t.as_str())).map_or(t.as_str(), |(_, l)| *l))
                .collect();
            serde_json::json!(format!(r".*\.blocks\.\d+\.({})", names.join("|")))
        }
    }
}

fn rename(layout: Layout, name: &str, out: bool) -> String {
    if layout == Layout::Hf {
        return name.to_string();
    }
    // an adapter name carries peft's prefix before the module path
    const PEFT: &str = "base_model.model.";
    let (prefix, body) = match name.strip_prefix(PEFT) {
        Some(body) => (PEFT, body),
        None => ("", name),
    };
    let pick = |(hf, l): &(&'static str, &'static str)| if out { (*hf, *l) } else { (*l, *hf) };
    let (from_layers, to_layers) = if out { ("model.layers.", "model.transformer.blocks.") } else { ("model.transformer.blocks.", "model.layers.") };
    if let Some(rest) = body.strip_prefix(from_layers) {
        if let Some((idx, module)) = rest.split_once('.') {
            for pair in &LLADA_LAYER {
                let (from, to) = pick(pair);
                if let Some(tail) = module.strip_prefix(from).filter(|t| t.is_empty() || t.starts_with('.')) {
                    return format!("{prefix}{to_layers}{idx}.{to}{tail}");
                }
            }
        }
    }
    for pair in &LLADA_TOP {
        let (from, to) = pick(pair);
        if let Some(tail) = body.strip_prefix(from).filter(|t| t.is_empty() || t.starts_with('.')) {
            return format!("{prefix}{to}{tail}");
        }
    }
    name.to_string()
}

/// The parsed `config.json` of the checkpoint `source` (a `model.source`) names, when it has one
/// here: a folder's, or a hub repo's already in the hf-hub cache. None for GGUF, random models and
/// uncached repos.
pub fn checkpoint_config(source: &str, revision: Option<&str>) -> Result<Option<(PathBuf, serde_json::Value)>> {
    // what `model.source` names is the loader's reading of it; a source it refuses has no config here
    let path = match super::load::ModelSource::parse(source, None, revision) {
        Ok(super::load::ModelSource::HfFolder(dir)) => dir.join("config.json"),
        Ok(super::load::ModelSource::Hub { repo, revision }) => {
            let repo = hf_hub::Repo::with_revision(repo, hf_hub::RepoType::Model, revision.unwrap_or_else(|| "main".into()));
            match hf_hub::Cache::from_env().repo(repo).get("config.json") {
                Some(p) => p,
                None => return Ok(None),
            }
        }
        _ => return Ok(None),
    };
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let v = serde_json::from_str(&text).map_err(|e| Error::model(&path, e.to_string()))?;
    Ok(Some((path, v)))
}

/// Fill the run-config table `t` with the presets of its checkpoint's family (see the module
/// documentation) where it sets nothing. Returns one line per inherited value and per warning,
/// for the caller to print.
pub fn apply_presets(t: &mut toml::Table) -> Result<Vec<String>> {
    let model = t.get("model").and_then(|m| m.as_table());
    let source = model.and_then(|m| m.get("source")).and_then(|s| s.as_str()).unwrap_or(crate::config::DEFAULT_MODEL).to_string();
    let revision = model.and_then(|m| m.get("revision")).and_then(|s| s.as_str()).map(str::to_string);
    let Some((path, v)) = checkpoint_config(&source, revision.as_deref())? else {
        return Ok(Vec::new());
    };
    let fam = Family::of_config(&v, &path)?;
    let objective = t.get("objective").and_then(|o| o.as_table());
    let diffusion = objective.and_then(|o| o.get("kind")).and_then(|k| k.as_str()).is_none_or(|k| k == "diffusion");
    let given_shift = objective.and_then(|o| o.get("shift")).and_then(|s| s.as_bool());
    let given_anneal = objective.is_some_and(|o| o.contains_key("anneal_steps"));
    let max_steps = t.get("train").and_then(|x| x.get("max_steps")).and_then(|s| s.as_integer());
    let mut notes = Vec::new();
    let mut wanted: Vec<(&str, &str, toml::Value)> = Vec::new();
    if let Some(id) = fam.mask_id(&v) {
        wanted.push(("model", "mask_token", toml::Value::Integer(id as i64)));
    }
    if let Some(tk) = fam.preset.template {
        wanted.push(("data", "template", toml::Value::String(tk.as_str().into())));
    }
    if diffusion {
        match (fam.preset.shift, given_shift) {
            (Some(shift), Some(g)) if g != shift => notes.push(format!(
                "warning: {} checkpoints are trained with objective.shift = {shift}; this run sets shift = {g}, which reads their outputs one position off",
                fam.model_type
            )),
            (Some(shift), _) => wanted.push(("objective", "shift", toml::Value::Boolean(shift))),
            (None, _) => {}
        }
        let steps = if fam.preset.diffusion { Some(1) } else { max_steps.map(|s| ((s as f64 * ANNEAL_FRACTION).ceil() as i64).max(1)) };
        match steps {
            Some(s) => wanted.push(("objective", "anneal_steps", toml::Value::Integer(s))),
            None if !given_anneal => notes.push(format!(
                "preset ({}): an AR base anneals attention over {:.0}% of the run's steps, but train.max_steps is not set: objective.anneal_steps keeps its default (1, full attention)",
                fam.model_type,
                ANNEAL_FRACTION * 100.0
            )),
            None => {}
        }
    }
    for (table, key, value) in wanted {
        let section = t.entry(table.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section) = section.as_table_mut() else { continue };
        if !section.contains_key(key) {
            notes.push(format!("preset ({}): {table}.{key} = {value} (inherited; set it to override)", fam.model_type));
            section.insert(key.to_string(), value);
        }
    }
    Ok(notes)
}
