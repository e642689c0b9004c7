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

/// The Hugging Face `config.json` of a model of shape `c`, in its family's terms ([`crate::model::family`]).
fn hf_config(c: &crate::model::LlamaConfig, tok: &crate::model::tokenizer::Tok) -> serde_json::Value {
    let family = crate::model::family::Family::of(c);
    serde_json::json!({
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
    })
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
        let mut items: Vec<(&String, &Tensor)> = map.iter().collect();
        items.sort_by(|a, b| a.0.cmp(b.0));
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
            "target_modules": a.targets, "bias": "none", "fan_in_fan_out": false, "inference_mode": true,
            "base_model_name_or_path": null, "modules_to_save": if a.train_embeddings { serde_json::json!(["embed_tokens"]) } else { serde_json::Value::Null },
        });
        files.push(write_json(&adir, "adapter_config.json", &peft)?);
    }
    files.push(save("export_check.safetensors", &check)?);
    files.push(write_json(out, "config.json", &hf_config(&loaded.model.cfg, &loaded.tok))?);
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
