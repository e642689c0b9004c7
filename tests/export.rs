//! `harness export`: a tiny trained run as a Hugging Face folder, merged and as base + peft
//! adapter; read back, both give the trained model's logits, and the probe logits the folder
//! carries for the transformers check (`tests/scripts/check_export.py`) are the harness's.

use candle_core::{DType, Device, Tensor};
use harness::export::PROBE;
use harness::model::load::load_hf_folder;
use harness::model::tokenizer::MaskToken;
use harness::model::{AdapterConfig, BuildOpts, Fwd, LayerPath, Llama};
use std::path::{Path, PathBuf};
use std::process::Command;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn harness(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_harness")).args(args).current_dir(root()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// The logits of `folder`'s weights (with `adapter` attached and the peft file loaded when given)
/// for the probe, under causal and full attention.
fn logits(folder: &Path, adapter: Option<(&AdapterConfig, &Path)>) -> (Tensor, Tensor) {
    let l = load_hf_folder(folder, DType::F32, &Device::Cpu, &MaskToken::Auto).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(l.tensors, DType::F32, &Device::Cpu);
    let none = AdapterConfig { targets: vec![], ..Default::default() };
    let (model, tr) = Llama::load(vb, &l.cfg, &BuildOpts { adapter: adapter.map_or(&none, |a| a.0), seed: 0, layer_path: LayerPath::Fused, time_embedding: false }).unwrap();
    if let Some((_, file)) = adapter {
        tr.load(file).unwrap();
    }
    let ids = Tensor::from_vec(PROBE.to_vec(), (1, PROBE.len()), &Device::Cpu).unwrap();
    let causal = harness::model::mask::attention_bias(harness::model::AttentionMode::Causal, 0, 0, PROBE.len(), None, DType::F32, &Device::Cpu).unwrap();
    (model.forward(&ids, causal.as_ref(), &Fwd::default()).unwrap(), model.forward(&ids, None, &Fwd::default()).unwrap())
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn a_trained_run_exports_merged_and_as_a_peft_adapter() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let tok = root().join("tests/fixtures/smollm2-tokenizer.gguf");
    let (code, _, err) = harness(&[
        "train", "--config", "configs/tiny-random.toml", "--set", &format!("model.tokenizer={}", tok.display()), "--set", "eval.at_end=false",
        "--set", "train.max_steps=4", "--out", &run.display().to_string(),
    ]);
    assert_eq!(code, 0, "{err}");
    // not a finished run: one error naming DONE
    let (code, _, err) = harness(&["export", &dir.path().display().to_string(), "--out", &dir.path().join("x").display().to_string()]);
    assert_ne!(code, 0);
    assert!(err.contains("DONE") && !err.contains("panicked"), "{err}");

    let merged = dir.path().join("merged");
    let (code, out, err) = harness(&["export", &run.display().to_string(), "--out", &merged.display().to_string(), "--merge"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("merged"), "{out}");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md", "ddm_sft.json", "export_check.safetensors"] {
        assert!(merged.join(f).is_file(), "{f} missing");
    }
    let config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(merged.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["architectures"][0], "LlamaForCausalLM");
    assert_eq!(config["model_type"], "llama");
    let facts: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(merged.join("ddm_sft.json")).unwrap()).unwrap();
    assert_eq!((facts["objective"].as_str(), facts["shift"].as_bool(), facts["merged"].as_bool()), (Some("diffusion"), Some(true), Some(true)));
    assert!(facts["mask_token_id"].as_u64().is_some());
    let card = std::fs::read_to_string(merged.join("README.md")).unwrap();
    assert!(card.contains("mask token id") && card.contains("attention") && card.contains("shift"), "{card}");
    // the probe logits the folder carries are the trained model's, and the merged weights give them
    let check = candle_core::safetensors::load(merged.join("export_check.safetensors"), &Device::Cpu).unwrap();
    let (lc, lf) = logits(&merged, None);
    assert!(max_diff(&lc, &check["logits_causal"]) < 1e-4, "causal: {}", max_diff(&lc, &check["logits_causal"]));
    assert!(max_diff(&lf, &check["logits_full"]) < 1e-4, "full: {}", max_diff(&lf, &check["logits_full"]));
    assert!(max_diff(&lc, &lf) > 1e-3, "the two readings differ");

    // base + peft adapter: the same logits once the adapter is loaded onto the base weights
    let peft = dir.path().join("peft");
    let (code, out, err) = harness(&["export", &run.display().to_string(), "--out", &peft.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("peft"), "{out}");
    let ac: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(peft.join("adapter/adapter_config.json")).unwrap()).unwrap();
    assert_eq!((ac["peft_type"].as_str(), ac["r"].as_u64()), (Some("LORA"), Some(8)));
    let adapter = AdapterConfig { rank: 8, alpha: 16.0, train_embeddings: true, ..Default::default() };
    let (bc, bf) = logits(&peft, Some((&adapter, &peft.join("adapter/adapter_model.safetensors"))));
    assert!(max_diff(&bc, &lc) < 1e-4 && max_diff(&bf, &lf) < 1e-4, "{} {}", max_diff(&bc, &lc), max_diff(&bf, &lf));
    // the base weights alone are not the trained model
    let (base_c, _) = logits(&peft, None);
    assert!(max_diff(&base_c, &lc) > 1e-4);
}
