//! Model families: which Hugging Face checkpoints the one LLaMA-shaped model type reads, told
//! apart by `config.json`'s `model_type` (and `architectures`), as a table ([`FAMILIES`]).
//!
//! | family | `model_type` | difference from LLaMA |
//! |---|---|---|
//! | LLaMA (SmolLM2, LLaMA 2/3) | `llama` | — |
//! | Qwen2 / Qwen2.5 | `qwen2` | biases on the q, k and v projections |
//! | Qwen3 | `qwen3` | per-head RMSNorm of q and k before RoPE; `head_dim` stated (heads × head_dim may differ from hidden_size) |
//!
//! An unknown `model_type` (or a LLaMA config asking for `attention_bias`, which would put a
//! bias on o as well) is an error that names it and lists the supported ones. LLaDA and Dream
//! are not supported yet.

use super::llama::LlamaConfig;
use crate::{Error, Result};
use std::path::Path;

/// One family of checkpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Family {
    /// `config.json`'s `model_type`.
    pub model_type: &'static str,
    /// The transformers class an exported folder names in `architectures`.
    pub architecture: &'static str,
    /// Biases on q, k, v.
    pub qkv_bias: bool,
    /// Per-head RMSNorm of q and k.
    pub qk_norm: bool,
}

/// The supported families.
pub const FAMILIES: [Family; 3] = [
    Family { model_type: "llama", architecture: "LlamaForCausalLM", qkv_bias: false, qk_norm: false },
    Family { model_type: "qwen2", architecture: "Qwen2ForCausalLM", qkv_bias: true, qk_norm: false },
    Family { model_type: "qwen3", architecture: "Qwen3ForCausalLM", qkv_bias: false, qk_norm: true },
];

impl Family {
    /// The family of a parsed `config.json` (`path` names it in errors). A config without
    /// `model_type` is read as LLaMA (the harness's own configs and older exports).
    pub fn of_config(v: &serde_json::Value, path: &Path) -> Result<&'static Family> {
        let mt = v.get("model_type").and_then(|m| m.as_str()).unwrap_or("llama");
        let fam = FAMILIES.iter().find(|f| f.model_type == mt).ok_or_else(|| {
            let arch = v.get("architectures").map(|a| a.to_string()).unwrap_or_else(|| "none".into());
            let known: Vec<&str> = FAMILIES.iter().map(|f| f.model_type).collect();
            Error::model(path, format!("model_type `{mt}` (architectures {arch}) is not supported; supported: {}", known.join(", ")))
        })?;
        if fam.model_type == "llama" && v.get("attention_bias").and_then(|b| b.as_bool()) == Some(true) {
            return Err(Error::model(path, "a LLaMA config with `attention_bias = true` (a bias on o as well) is not supported"));
        }
        Ok(fam)
    }

    /// The family a model shape belongs to (by its biases and norms).
    pub fn of(cfg: &LlamaConfig) -> &'static Family {
        FAMILIES.iter().find(|f| f.qkv_bias == cfg.qkv_bias && f.qk_norm == cfg.qk_norm).unwrap_or(&FAMILIES[0])
    }
}
