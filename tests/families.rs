//! Model families (`harness::model::family`): each tiny fixture written by
//! `tests/scripts/make_family_fixtures.py` with transformers loads and gives transformers' pinned
//! logits; the families' extra parameters train through both layer paths alike; an unknown
//! `model_type` is an error listing the supported ones.

use candle_core::{DType, Device, Tensor};
use harness::model::load::{load_hf_folder, random_model, tiny_config};
use harness::model::tokenizer::MaskToken;
use harness::model::{AdapterConfig, AdapterKind, AttentionMode, BuildOpts, Fwd, LayerPath, Llama};
use harness::objective::{scored_loss, Batch, Diffusion, DiffusionConfig, Example, Objective};
use harness::train::optim::GradAccum;
use std::path::PathBuf;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

/// The model of fixture folder `dir` and transformers' pinned ids and logits for it.
fn model_and_pins(dir: &std::path::Path) -> (Llama, harness::model::LlamaConfig, std::collections::HashMap<String, Tensor>) {
    let l = load_hf_folder(dir, DType::F32, &Device::Cpu, &MaskToken::Auto).unwrap();
    let cfg = l.cfg.clone();
    let vb = candle_nn::VarBuilder::from_tensors(l.tensors, DType::F32, &Device::Cpu);
    let none = AdapterConfig { targets: vec![], ..Default::default() };
    let (model, _) = Llama::load(vb, &cfg, &BuildOpts { adapter: &none, seed: 0, layer_path: LayerPath::Fused, time_embedding: false }).unwrap();
    (model, cfg, candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap())
}

/// The model's logits for the pinned ids under causal and full attention.
fn readings(model: &Llama, ids: &Tensor) -> (Tensor, Tensor) {
    let n = ids.dim(1).unwrap();
    let causal = harness::model::mask::attention_bias(AttentionMode::Causal, 0, 0, n, None, DType::F32, &Device::Cpu).unwrap();
    (model.forward(ids, causal.as_ref(), &Fwd::default()).unwrap(), model.forward(ids, None, &Fwd::default()).unwrap())
}

#[test]
fn each_tiny_family_fixture_gives_transformers_logits() {
    type Check = fn(&harness::model::LlamaConfig) -> bool;
    let cases: [(&str, Check); 4] = [
        ("tiny-qwen2", |c| c.qkv_bias && !c.qk_norm),
        // q/k norms, and head_dim 16 × 4 heads ≠ hidden 32
        ("tiny-qwen3", |c| c.qk_norm && !c.qkv_bias && c.head_dim() == 16 && c.q_width() == 64 && c.hidden_size == 32),
        // LLaDA's own config keys and weight names (pinned from its published modeling code)
        ("tiny-llada", |c| !c.qkv_bias && c.intermediate_size == 64 && c.kv_heads() == 2 && !c.tie_word_embeddings && c.rope_theta == 500_000.0),
        // Dream: Qwen2-shaped, untied head
        ("tiny-dream", |c| c.qkv_bias && !c.qk_norm && !c.tie_word_embeddings),
    ];
    for (name, check) in cases {
        let (model, cfg, want) = model_and_pins(&fixture(name));
        assert!(check(&cfg), "{name}: {cfg:?}");
        let ids = want["ids"].to_dtype(DType::U32).unwrap();
        let (lc, lf) = readings(&model, &ids);
        assert!(max_diff(&lc, &want["logits_causal"]) < 1e-4, "{name} causal {}", max_diff(&lc, &want["logits_causal"]));
        assert!(max_diff(&lf, &want["logits_full"]) < 1e-4, "{name} full {}", max_diff(&lf, &want["logits_full"]));
    }
    // without its biases the Qwen2 fixture's logits move: they are not zero
    let dir = fixture("tiny-qwen2");
    let mut no_bias = load_hf_folder(&dir, DType::F32, &Device::Cpu, &MaskToken::Auto).unwrap();
    assert!(no_bias.tensors.contains_key("model.layers.0.self_attn.q_proj.bias"));
    no_bias.tensors.retain(|k, _| !k.ends_with(".bias"));
    let mut cfg = no_bias.cfg.clone();
    cfg.qkv_bias = false;
    let vb = candle_nn::VarBuilder::from_tensors(no_bias.tensors, DType::F32, &Device::Cpu);
    let none = AdapterConfig { targets: vec![], ..Default::default() };
    let (plain, _) = Llama::load(vb, &cfg, &BuildOpts { adapter: &none, seed: 0, layer_path: LayerPath::Fused, time_embedding: false }).unwrap();
    let want = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = want["ids"].to_dtype(DType::U32).unwrap();
    assert!(max_diff(&readings(&plain, &ids).1, &want["logits_full"]) > 1e-3);
}

#[test]
fn the_families_parameters_train_alike_on_both_layer_paths() {
    for (cfg, extra, per_layer) in [
        (harness::model::LlamaConfig { qkv_bias: true, ..tiny_config(40) }, ".bias", 3),
        (harness::model::LlamaConfig { qk_norm: true, head_dim: Some(16), ..tiny_config(40) }, "_norm.weight", 2),
    ] {
        train_alike(&cfg, extra, per_layer);
    }
}

/// Full fine-tuning and LoRA on `cfg`: the fused and reference paths give the same loss and
/// gradients; the family's `extra` parameters (`per_layer` of them) train under full fine-tuning.
fn train_alike(cfg: &harness::model::LlamaConfig, extra: &str, per_layer: usize) {
    let data: Vec<Example> = (0..4u32).map(|i| Example { prompt: vec![1, 3 + i, 12], response: vec![20 + i, 21, 2] }).collect();
    let batch = Batch::collate(&data.iter().collect::<Vec<_>>(), 0);
    let obj = Diffusion::new(31, DiffusionConfig::default());
    for adapter in [AdapterConfig { kind: AdapterKind::Full, ..Default::default() }, AdapterConfig { rank: 4, alpha: 8.0, ..Default::default() }] {
        let (mut model, tr) = random_model(cfg, &adapter, 5, &Device::Cpu).unwrap();
        let extras: Vec<&str> = tr.entries.iter().map(|(n, _)| n.as_str()).filter(|n| n.ends_with(extra) && (extra == ".bias" || n.contains("self_attn"))).collect();
        assert_eq!(extras.len(), if adapter.kind == AdapterKind::Full { 2 * per_layer } else { 0 }, "{:?}: trained {extra}", adapter.kind);
        for (name, v) in &tr.entries {
            if name.ends_with("lora_B.weight") {
                v.set(&Tensor::randn(0f32, 0.3, v.dims(), &Device::Cpu).unwrap()).unwrap();
            }
        }
        let p = obj.prepare(&batch, 0, 0, 9).unwrap();
        let ctx = Fwd { train: true, seed: 9, step: 0, micro: 0 };
        let mut runs = Vec::new();
        for path in [LayerPath::Fused, LayerPath::Reference] {
            model.set_layer_path(path);
            let parts = scored_loss(&model, &p, p.denom, 9, &ctx).unwrap();
            let g = parts.loss.backward().unwrap();
            let mut acc = GradAccum::new(&tr);
            acc.add(&g).unwrap();
            let (grads, _) = acc.take_clipped(0.0).unwrap();
            runs.push((parts.read().unwrap().loss, grads.tensors));
        }
        let ((l1, g1), (l2, g2)) = (&runs[0], &runs[1]);
        assert!((l1 - l2).abs() < 1e-5, "{l1} vs {l2}");
        for ((name, _), (a, b)) in tr.entries.iter().zip(g1.iter().zip(g2)) {
            let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1.0);
            assert!(max_diff(a, b) <= 1e-4 * scale, "{name}: {}", max_diff(a, b));
            if name.ends_with(extra) {
                assert!(b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "{name}: no gradient");
            }
        }
    }
}

#[test]
fn an_unknown_model_type_is_an_error_listing_the_supported_ones() {
    let dir = tempfile::tempdir().unwrap();
    let src = fixture("tiny-qwen2");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(src.join(f), dir.path().join(f)).unwrap();
    }
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap().replace("\"qwen2\"", "\"gemma3\"");
    std::fs::write(dir.path().join("config.json"), text).unwrap();
    let e = load_hf_folder(dir.path(), DType::F32, &Device::Cpu, &MaskToken::Auto).err().unwrap().to_string();
    assert!(e.contains("gemma3") && e.contains("llama, qwen2, qwen3, llada, Dream") && e.contains("config.json"), "{e}");
}

#[test]
fn an_export_names_every_weight_as_transformers_does() {
    // the weights `harness export` writes (Llama::hf_tensors) carry exactly the names, shapes and
    // values transformers saved for each family's fixture
    for name in ["tiny-qwen2", "tiny-qwen3", "tiny-llada", "tiny-dream"] {
        let dir = fixture(name);
        let saved = candle_core::safetensors::load(dir.join("model.safetensors"), &Device::Cpu).unwrap();
        let (model, cfg, _) = model_and_pins(&dir);
        let layout = harness::model::family::Family::of(&cfg).layout;
        let ours: std::collections::HashMap<String, Tensor> =
            model.hf_tensors().unwrap().into_iter().map(|(n, t)| (harness::model::family::from_hf_name(layout, &n), t)).collect();
        let mut a: Vec<&String> = ours.keys().collect();
        let mut b: Vec<&String> = saved.keys().collect();
        a.sort();
        b.sort();
        assert_eq!(a, b, "{name}: tensor names");
        for (k, t) in &ours {
            assert_eq!(t.dims(), saved[k].dims(), "{name}: {k}");
            assert_eq!(max_diff(t, &saved[k]), 0.0, "{name}: {k}");
        }
        assert_eq!(harness::model::family::Family::of(&cfg).model_type.to_lowercase(), &name[5..], "{name}: the family exported");
    }
}

/// A copy of fixture `name` in `dir` whose RoPE table covers 2,048 positions (the fixtures state
/// 64; the tiny tokenizer spells clinical-rules prompts a character per token), with the tiny
/// tokenizer (tiny-llama's folder has none: tests/scripts/torch_crosscheck.py owns it).
fn long_copy(name: &str, dir: &std::path::Path) -> PathBuf {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, to.join(p.file_name().unwrap())).unwrap();
    }
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        if !to.join(f).is_file() {
            std::fs::copy(fixture("tiny-qwen2").join(f), to.join(f)).unwrap();
        }
    }
    let path = to.join("config.json");
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    for k in ["max_position_embeddings", "max_sequence_length"] {
        if v.get(k).is_some() {
            v[k] = serde_json::json!(2048);
        }
    }
    std::fs::write(&path, v.to_string()).unwrap();
    to
}

fn harness_cli(args: &[&str]) -> (i32, String, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness")).args(args).current_dir(root).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn each_family_example_config_trains_and_evaluates_on_its_tiny_fixture_with_its_preset() {
    let dir = tempfile::tempdir().unwrap();
    // (example config, fixture, preset lines expected on stderr, then config.json checks)
    type Check = fn(&serde_json::Value) -> bool;
    let cases: [(&str, &str, &[&str], Check); 5] = [
        ("llama", "tiny-llama", &["preset (llama): objective.anneal_steps = 1"], |c| c["objective"]["anneal_steps"] == 1 && c["model"]["mask_token"] == "auto"),
        ("qwen2.5", "tiny-qwen2", &["preset (qwen2): objective.anneal_steps = 1"], |c| c["objective"]["shift"] == true),
        ("qwen3", "tiny-qwen3", &["preset (qwen3): objective.anneal_steps = 1"], |c| c["data"]["template"] == "chat"),
        // LLaDA: its config's mask id (4 in the fixture), no shift, full attention, plain template
        ("llada", "tiny-llada", &["preset (llada): model.mask_token = 4", "objective.shift = false", "data.template = \"plain\""], |c| {
            c["resolved"]["mask_id"] == 4 && c["objective"]["shift"] == false && c["objective"]["anneal_steps"] == 1 && c["data"]["template"] == "plain"
        }),
        ("dream", "tiny-dream", &["preset (Dream): model.mask_token = 4", "objective.shift = true"], |c| c["resolved"]["mask_id"] == 4 && c["objective"]["shift"] == true),
    ];
    for (config, name, lines, check) in cases {
        let src = long_copy(name, dir.path());
        let out = dir.path().join(format!("run-{name}"));
        let cfg = format!("configs/families/{config}.toml");
        let source = format!("model.source=\"{}\"", src.display());
        let mut args = vec!["train", "--config", &cfg, "--out", out.to_str().unwrap(), "--set", &source];
        // max_steps = 2: the AR bases' preset anneals over ceil(0.1 × 2) = 1 step
        let sets = ["model.device=\"cpu\"", "train.max_steps=2", "train.micro_batch=4", "train.grad_accum=1", "train.warmup_steps=1", "data.n_train=16", "data.n_test=4", "data.max_len=1024", "eval.batch_size=4", "eval.max_new_tokens=8"];
        for s in &sets {
            args.extend(["--set", s]);
        }
        let (code, stdout, err) = harness_cli(&args);
        assert_eq!(code, 0, "{name}: {err}");
        for l in lines {
            assert!(err.contains(l), "{name}: no `{l}` in\n{err}");
        }
        assert!(stdout.contains("final loss") && stdout.contains("accuracy"), "{name}: {stdout}");
        let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
        assert!(check(&c), "{name}: {c}");
        assert!(out.join("eval.json").is_file() && out.join("DONE").is_file(), "{name}");
    }
    // a value set against the family's convention is kept, with a warning
    let src = dir.path().join("tiny-dream");
    let out = dir.path().join("run-dream-noshift");
    let source = format!("model.source=\"{}\"", src.display());
    let (code, _, err) = harness_cli(&[
        "train", "--config", "configs/families/dream.toml", "--out", out.to_str().unwrap(), "--set", &source, "--set", "objective.shift=false",
        "--set", "model.device=\"cpu\"", "--set", "train.max_steps=1", "--set", "train.micro_batch=2", "--set", "train.grad_accum=1", "--set", "train.warmup_steps=0",
        "--set", "data.n_train=8", "--set", "data.n_test=2", "--set", "data.max_len=1024", "--set", "eval.at_end=false",
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: Dream checkpoints are trained with objective.shift = true"), "{err}");
    let c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(c["objective"]["shift"], false);
}

#[test]
fn an_ar_base_anneals_over_a_tenth_of_the_run_and_a_gguf_inherits_nothing() {
    let table = |source: &str, extra: &str| -> toml::Table { format!("[model]\nsource = \"{source}\"\n{extra}").parse().unwrap() };
    let qwen = fixture("tiny-qwen2").display().to_string();
    let mut t = table(&qwen, "[train]\nmax_steps = 600\n");
    let notes = harness::model::family::apply_presets(&mut t).unwrap();
    assert_eq!(t["objective"]["anneal_steps"].as_integer(), Some(60), "{notes:?}");
    // set by the run: kept, nothing printed for it
    let mut t = table(&qwen, "[train]\nmax_steps = 600\n[objective]\nanneal_steps = 7\n");
    assert!(harness::model::family::apply_presets(&mut t).unwrap().is_empty());
    assert_eq!(t["objective"]["anneal_steps"].as_integer(), Some(7));
    // the autoregressive objective takes no diffusion field
    let mut t = table(&qwen, "[train]\nmax_steps = 600\n[objective]\nkind = \"autoregressive\"\n");
    harness::model::family::apply_presets(&mut t).unwrap();
    assert!(t["objective"].get("anneal_steps").is_none());
    // the default GGUF model (and a random one) inherit nothing
    for s in ["models/SmolLM2-135M-Instruct.Q4_1.gguf", "random"] {
        let mut t = table(s, "[train]\nmax_steps = 600\n");
        assert!(harness::model::family::apply_presets(&mut t).unwrap().is_empty());
        assert!(t.get("objective").is_none(), "{s}");
    }
}

#[test]
fn a_llada_config_with_a_feature_the_layer_lacks_is_an_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let src = long_copy("tiny-llada", dir.path());
    let path = src.join("config.json");
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, text.replace("\"scale_logits\":false", "\"scale_logits\":true")).unwrap();
    let e = load_hf_folder(&src, DType::F32, &Device::Cpu, &MaskToken::Auto).err().unwrap().to_string();
    assert!(e.contains("scale_logits") && e.contains("config.json"), "{e}");
}
