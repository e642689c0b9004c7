//! `harness export RUN_DIR --out DIR [--merge]`: a trained run as a Hugging Face folder that
//! transformers (and vLLM, lm-eval) load.
//!
//! The folder holds `config.json` (`LlamaForCausalLM`), the weights in f32 safetensors, the
//! tokenizer (`tokenizer.json`, `tokenizer_config.json`), a model card (`README.md`: mask id,
//! shift, attention, how it was trained), `ddm_sft.json` (the same facts for programs) and
//! `export_check.safetensors`: fixed probe ids and the harness's logits for them under causal
//! and full attention, which `tests/scripts/check_export.py` compares with transformers'.
//! - `--merge` (or full fine-tuning): `model.safetensors` with the adapters folded into the
//!   weights ([`crate::model::Llama::hf_tensors`]).
//! - otherwise, for a LoRA run: `model.safetensors` with the base weights, and the peft adapter
//!   in `adapter/` (`adapter_model.safetensors` with peft's names, `adapter_config.json`):
//!   `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DIR), DIR + "/adapter")`.
//!
//! A diffusion model is not an AR model: transformers' `generate` decodes left to right; read it
//! with the attention and the denoising loop the card states. A time-conditioned model's
//! `model.time_embed.weight` is kept in the safetensors but transformers' LLaMA does not read it.

use crate::config::{ObjectiveConfig, RunConfig};
use crate::model::mask::AttentionMode;
use crate::model::{AdapterKind, Fwd};
use crate::run;
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use ddm_schema::RunDir;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Probe ids of `export_check.safetensors` (inside every vocabulary of 64 tokens or more).
pub const PROBE: [u32; 16] = [1, 5, 9, 13, 17, 21, 25, 29, 33, 37, 41, 45, 49, 53, 57, 61];

/// What [`export`] wrote.
#[derive(Debug, Clone)]
pub struct Exported {
    /// The files, in the order written.
    pub files: Vec<PathBuf>,
    /// Whether the adapters were merged into the weights.
    pub merged: bool,
}

/// The Hugging Face `config.json` of a model of shape `c`, in its family's terms
/// ([`crate::model::family`]): LLaDA's own keys for LLaDA, transformers' for the others (Dream's
/// with `model_type = "Dream"` and its mask id). `base` is the base checkpoint's `config.json`, when
/// it had one: its `auto_map` (the modeling code of LLaDA and Dream, loaded with
/// `trust_remote_code`) is kept.
fn hf_config(c: &crate::model::LlamaConfig, tok: &crate::model::tokenizer::Tok, base: Option<&serde_json::Value>) -> serde_json::Value {
    use crate::model::family::{Family, Layout};
    let family = Family::of(c);
    let mut v = match family.layout {
        Layout::Llada => serde_json::json!({
            "architectures": [family.architecture],
            "model_type": family.model_type,
            "d_model": c.hidden_size,
            "n_heads": c.num_attention_heads,
            "n_kv_heads": c.kv_heads(),
            "n_layers": c.num_hidden_layers,
            "mlp_hidden_size": c.intermediate_size,
            "mlp_ratio": c.intermediate_size / c.hidden_size.max(1),
            "vocab_size": c.vocab_size,
            "embedding_size": c.vocab_size,
            "max_sequence_length": c.max_position_embeddings,
            "rope_theta": c.rope_theta,
            "rms_norm_eps": c.rms_norm_eps,
            "weight_tying": c.tie_word_embeddings,
            "include_qkv_bias": c.qkv_bias,
            "block_type": "llama", "activation_type": "silu", "layer_norm_type": "rms", "rope": true, "alibi": false,
            "include_bias": false, "scale_logits": false, "input_emb_norm": false, "attention_layer_norm": false,
            "flash_attention": false, "rope_full_precision": true, "block_group_size": 1,
            "attention_dropout": 0.0, "residual_dropout": 0.0, "embedding_dropout": 0.0,
            "eos_token_id": tok.eos_id,
            "pad_token_id": tok.pad_id,
            "mask_token_id": tok.mask_id,
            "torch_dtype": "float32",
        }),
        Layout::Hf => serde_json::json!({
            "architectures": [family.architecture],
            "model_type": family.model_type,
            "hidden_act": "silu",
            "hidden_size": c.hidden_size,
            "intermediate_size": c.intermediate_size,
            "num_hidden_layers": c.num_hidden_layers,
            "num_attention_heads": c.num_attention_heads,
            "num_key_value_heads": c.kv_heads(),
            "head_dim": c.head_dim(),
            "rms_norm_eps": c.rms_norm_eps,
            "rope_theta": c.rope_theta,
            "max_position_embeddings": c.max_position_embeddings,
            "tie_word_embeddings": c.tie_word_embeddings,
            "vocab_size": c.vocab_size,
            "attention_bias": false,
            "mlp_bias": false,
            "use_sliding_window": false,
            "bos_token_id": tok.bos_id,
            "eos_token_id": tok.eos_id,
            "pad_token_id": tok.pad_id,
            "torch_dtype": "float32",
        }),
    };
    if family.preset.mask_id.is_some() {
        v["mask_token_id"] = serde_json::json!(tok.mask_id);
    }
    if let Some(auto_map) = base.and_then(|b| b.get("auto_map")) {
        v["auto_map"] = auto_map.clone();
    }
    v
}

/// Export the finished run in `run_dir` into `out` (see the module documentation).
pub fn export(run_dir: &Path, out: &Path, merge: bool) -> Result<Exported> {
    let run = RunDir::new(run_dir);
    if !run.is_done() {
        return Err(Error::msg(format!("{}: not a finished run folder (no {})", run_dir.display(), RunDir::DONE)));
    }
    let mut cfg: RunConfig = run.read_config()?;
    // on the CPU in f32, whatever the run trained on
    cfg.resolved.device = "cpu".into();
    cfg.resolved.dtype = "f32".into();
    let adapter = cfg.raw.train.checkpoint_dir.clone().unwrap_or_else(|| run.checkpoints()).join(RunDir::ADAPTER);
    if !adapter.is_file() {
        return Err(Error::model(&adapter, "the run's trained parameters are not there (a study keeps them under .cache/checkpoints/)"));
    }
    let loaded = run::load_model(&cfg)?;
    let layout = crate::model::family::Family::of(&loaded.model.cfg).layout;
    // the base checkpoint's own config.json and modeling code (LLaDA, Dream), when it had them
    let base_config = crate::model::family::checkpoint_config(&cfg.raw.model.source, cfg.raw.model.revision.as_deref())?;
    let lora = cfg.raw.adapter.kind == AdapterKind::Lora;
    let merged = merge || !lora;
    // the base weights, before the trained parameters are loaded (LoRA's B = 0: no change yet)
    let base: Option<HashMap<String, Tensor>> =
        if merged { None } else { Some(loaded.model.hf_tensors()?.into_iter().filter(|(n, _)| n != "model.time_embed.weight").collect()) };
    loaded.trainable.load(&adapter)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let mut files = Vec::new();
    // transformers reads safetensors only with the metadata {"format": "pt"}
    let save = |name: &str, map: &HashMap<String, Tensor>| -> Result<PathBuf> {
        let p = out.join(name);
        let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
        // the family's own weight names (LLaDA's differ from the harness's)
        let mut items: Vec<(String, &Tensor)> = map.iter().map(|(n, t)| (crate::model::family::from_hf_name(layout, n), t)).collect();
        items.sort_by(|a, b| a.0.cmp(&b.0));
        safetensors::serialize_to_file(items, Some(meta), &p).map_err(|e| Error::model(&p, e.to_string()))?;
        Ok(p)
    };
    // the probe logits of the trained model, before anything is merged
    let check = probe_logits(&loaded.model)?;
    if merged {
        files.push(save("model.safetensors", &loaded.model.hf_tensors()?.into_iter().collect())?);
    } else if let Some(base) = &base {
        // the base weights, then the trained parameters with peft's names
        files.push(save("model.safetensors", base)?);
        let adapter_tensors: HashMap<String, Tensor> = loaded.trainable.entries.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
        let adir = out.join("adapter");
        std::fs::create_dir_all(&adir).map_err(|e| Error::io(&adir, e))?;
        files.push(save("adapter/adapter_model.safetensors", &adapter_tensors)?);
        let a = &cfg.raw.adapter;
        let peft = serde_json::json!({
            "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": a.rank, "lora_alpha": a.alpha, "lora_dropout": a.dropout,
            "target_modules": crate::model::family::peft_targets(layout, &a.targets), "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
            "base_model_name_or_path": null, "modules_to_save": if a.train_embeddings { serde_json::json!(["embed_tokens"]) } else { serde_json::Value::Null },
        });
        files.push(write_json(&adir, "adapter_config.json", &peft)?);
    }
    files.push(save("export_check.safetensors", &check)?);
    files.push(write_json(out, "config.json", &hf_config(&loaded.model.cfg, &loaded.tok, base_config.as_ref().map(|(_, v)| v)))?);
    if let Some(dir) = base_config.as_ref().and_then(|(p, _)| p.parent()) {
        for f in modeling_files(dir)? {
            let to = out.join(f.file_name().unwrap_or_default());
            std::fs::copy(&f, &to).map_err(|e| Error::io(&f, e))?;
            files.push(to);
        }
    }
    let tok_json = loaded.tok.save(out)?;
    files.push(tok_json);
    files.push(out.join("tokenizer_config.json"));
    let facts = facts(&cfg, loaded.tok.mask_id, merged);
    files.push(write_json(out, "ddm_sft.json", &facts)?);
    let card = out.join("README.md");
    std::fs::write(&card, model_card(&cfg, &facts, run_dir)).map_err(|e| Error::io(&card, e))?;
    files.push(card);
    Ok(Exported { files, merged })
}

/// The Python files of a checkpoint folder (LLaDA's and Dream's modeling code, which
/// transformers loads with `trust_remote_code`), sorted.
fn modeling_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let p = e.map_err(|e| Error::io(dir, e))?.path();
        if p.is_file() && p.extension().is_some_and(|x| x == "py") {
            out.push(p);
        }
    }
    out.sort();
    Ok(out)
}

/// The harness's logits for [`PROBE`] (cut to the vocabulary) under causal and full attention:
/// `ids` (1, 16) u32, `logits_causal`, `logits_full` (1, 16, V) f32.
fn probe_logits(model: &crate::model::Llama) -> Result<HashMap<String, Tensor>> {
    let v = model.cfg.vocab_size as u32;
    let ids: Vec<u32> = PROBE.iter().map(|&i| i % v).collect();
    let t = Tensor::from_vec(ids, (1, PROBE.len()), &Device::Cpu)?;
    let causal = crate::model::mask::attention_bias(AttentionMode::Causal, 0, 0, PROBE.len(), None, DType::F32, &Device::Cpu)?;
    let ctx = Fwd::default();
    let lc = model.forward(&t, causal.as_ref(), &ctx)?.to_dtype(DType::F32)?;
    let lf = model.forward(&t, None, &ctx)?.to_dtype(DType::F32)?;
    Ok(HashMap::from([("ids".to_string(), t), ("logits_causal".to_string(), lc), ("logits_full".to_string(), lf)]))
}

/// `v` written to `dir/name` (the project's one JSON writer, [`run::write_json`]); the path.
fn write_json(dir: &Path, name: &str, v: &serde_json::Value) -> Result<PathBuf> {
    let p = dir.join(name);
    run::write_json(&p, v)?;
    Ok(p)
}

/// How the exported model is meant to be read, for programs (`ddm_sft.json`).
fn facts(cfg: &RunConfig, mask_id: u32, merged: bool) -> serde_json::Value {
    let git = crate::study::manifest::git_info(Path::new("."), Path::new("results"));
    let (objective, attention, shift, block, time) = match &cfg.raw.objective {
        ObjectiveConfig::Diffusion(d) => {
            let annealed = cfg.resolved.total_steps.is_some_and(|n| d.anneal_steps <= n);
            let reading = match (d.block_size, cfg.resolved.eval_attention) {
                (b, _) if b > 0 => format!("blocks of {b} (block-causal)"),
                (_, Some(crate::config::EvalAttention::Causal)) => "causal".to_string(),
                (_, Some(crate::config::EvalAttention::Trained)) if !annealed => "the partly annealed mask of its last training step".to_string(),
                _ => "full".to_string(),
            };
            ("diffusion", reading, d.shift, d.block_size, format!("{:?}", d.time_conditioning).to_lowercase())
        }
        ObjectiveConfig::Autoregressive => ("autoregressive", "causal".to_string(), true, 0, "none".to_string()),
    };
    serde_json::json!({
        "objective": objective,
        "mask_token_id": if objective == "diffusion" { Some(mask_id) } else { None },
        "shift": shift,
        "attention": attention,
        "block_size": block,
        "time_conditioning": time,
        "adapter": format!("{:?}", cfg.raw.adapter.kind).to_lowercase(),
        "lora_rank": cfg.raw.adapter.rank,
        "merged": merged,
        "optimizer_steps": cfg.resolved.total_steps,
        "dataset": cfg.raw.data.dataset,
        "response_format": cfg.raw.data.response_format.as_str(),
        "seed": cfg.raw.seed,
        "exported_by": format!("ddm-sft harness {}", env!("CARGO_PKG_VERSION")),
        "exported_at_commit": git.commit,
        "objective_config": cfg.raw.objective,
    })
}

fn model_card(cfg: &RunConfig, facts: &serde_json::Value, run_dir: &Path) -> String {
    let f = |k: &str| facts.get(k).map(|v| v.to_string().trim_matches('"').to_string()).unwrap_or_default();
    let diffusion = f("objective") == "diffusion";
    let how = if diffusion {
        format!(
            "A masked-diffusion LM (ddm-SFT). Read it with **{} attention**, the mask token id **{}**, and \
             `shift = {}` (with shift, the output at position i predicts token i+1). Generate by iterative \
             denoising (a canvas of mask tokens after the prompt, committed over several forward passes), \
             not with `generate()`, which decodes left to right.{}",
            f("attention"),
            f("mask_token_id"),
            f("shift"),
            if f("time_conditioning") == "embedding" { " It was trained with a time embedding (`model.time_embed.weight`), which transformers' LLaMA does not read." } else { "" }
        )
    } else {
        "An autoregressive LM (AR-SFT): `generate()` decodes it as trained.".to_string()
    };
    let weights = if f("merged") == "true" {
        "`model.safetensors`: the trained weights (adapters merged), f32.".to_string()
    } else {
        "`model.safetensors`: the base weights; `adapter/` (`adapter_model.safetensors`, `adapter_config.json`): the LoRA adapter for peft, `PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(DIR), DIR + \"/adapter\")`.".to_string()
    };
    format!(
        "---\nlibrary_name: transformers\ntags: [ddm-sft, {obj}]\n---\n\n# {name}\n\n{how}\n\n## Training\n\n\
         - objective: {obj}; config: `{objcfg}`\n- adapter: {adapter} (rank {rank}); optimizer steps: {steps}\n\
         - data: {data} ({fmt}); seed {seed}\n- run folder: `{run}`\n- exported by {by} at commit {commit}\n\n## Files\n\n\
         - {weights}\n- `ddm_sft.json`: these facts for programs.\n- `export_check.safetensors`: probe ids and the harness's \
         logits (causal and full attention); `python tests/scripts/check_export.py DIR` (in the ddm-sft repository) compares \
         them with transformers'.\n",
        obj = f("objective"),
        name = cfg.raw.name,
        objcfg = facts.get("objective_config").map(|v| v.to_string()).unwrap_or_default(),
        adapter = f("adapter"),
        rank = f("lora_rank"),
        steps = f("optimizer_steps"),
        data = f("dataset"),
        fmt = f("response_format"),
        seed = f("seed"),
        run = run_dir.display(),
        by = f("exported_by"),
        commit = f("exported_at_commit"),
    )
}
