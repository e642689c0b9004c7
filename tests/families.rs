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

#[test]
fn the_tiny_qwen2_fixture_gives_transformers_logits() {
    let dir = fixture("tiny-qwen2");
    let l = load_hf_folder(&dir, DType::F32, &Device::Cpu, &MaskToken::Auto).unwrap();
    assert!(l.cfg.qkv_bias, "model_type qwen2 has q, k, v biases");
    assert!(l.tensors.contains_key("model.layers.0.self_attn.q_proj.bias"));
    let vb = candle_nn::VarBuilder::from_tensors(l.tensors, DType::F32, &Device::Cpu);
    let none = AdapterConfig { targets: vec![], ..Default::default() };
    let (model, _) = Llama::load(vb, &l.cfg, &BuildOpts { adapter: &none, seed: 0, layer_path: LayerPath::Fused, time_embedding: false }).unwrap();
    let want = candle_core::safetensors::load(dir.join("expected.safetensors"), &Device::Cpu).unwrap();
    let ids = want["ids"].to_dtype(DType::U32).unwrap();
    let n = ids.dim(1).unwrap();
    let causal = harness::model::mask::attention_bias(AttentionMode::Causal, 0, 0, n, None, DType::F32, &Device::Cpu).unwrap();
    let lc = model.forward(&ids, causal.as_ref(), &Fwd::default()).unwrap();
    let lf = model.forward(&ids, None, &Fwd::default()).unwrap();
    assert!(max_diff(&lc, &want["logits_causal"]) < 1e-4, "causal {}", max_diff(&lc, &want["logits_causal"]));
    assert!(max_diff(&lf, &want["logits_full"]) < 1e-4, "full {}", max_diff(&lf, &want["logits_full"]));
    // without the biases the logits move: the fixture's biases are not zero
    let mut no_bias = load_hf_folder(&dir, DType::F32, &Device::Cpu, &MaskToken::Auto).unwrap();
    no_bias.tensors.retain(|k, _| !k.ends_with(".bias"));
    let mut cfg = no_bias.cfg.clone();
    cfg.qkv_bias = false;
    let vb = candle_nn::VarBuilder::from_tensors(no_bias.tensors, DType::F32, &Device::Cpu);
    let (plain, _) = Llama::load(vb, &cfg, &BuildOpts { adapter: &none, seed: 0, layer_path: LayerPath::Fused, time_embedding: false }).unwrap();
    assert!(max_diff(&plain.forward(&ids, None, &Fwd::default()).unwrap(), &lf) > 1e-3);
}

#[test]
fn qkv_biases_train_alike_on_both_layer_paths() {
    let cfg = harness::model::LlamaConfig { qkv_bias: true, ..tiny_config(40) };
    let data: Vec<Example> = (0..4u32).map(|i| Example { prompt: vec![1, 3 + i, 12], response: vec![20 + i, 21, 2] }).collect();
    let batch = Batch::collate(&data.iter().collect::<Vec<_>>(), 0);
    let obj = Diffusion::new(31, DiffusionConfig::default());
    for adapter in [AdapterConfig { kind: AdapterKind::Full, ..Default::default() }, AdapterConfig { rank: 4, alpha: 8.0, ..Default::default() }] {
        let (mut model, tr) = random_model(&cfg, &adapter, 5, &Device::Cpu).unwrap();
        let biases: Vec<&str> = tr.entries.iter().map(|(n, _)| n.as_str()).filter(|n| n.ends_with(".bias")).collect();
        assert_eq!(biases.len(), if adapter.kind == AdapterKind::Full { 2 * 3 } else { 0 }, "{:?}: trained biases", adapter.kind);
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
            if name.ends_with(".bias") {
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
    let text = std::fs::read_to_string(dir.path().join("config.json")).unwrap().replace("\"qwen2\"", "\"qwen3\"");
    std::fs::write(dir.path().join("config.json"), text).unwrap();
    let e = load_hf_folder(dir.path(), DType::F32, &Device::Cpu, &MaskToken::Auto).err().unwrap().to_string();
    assert!(e.contains("qwen3") && e.contains("llama, qwen2") && e.contains("config.json"), "{e}");
}
