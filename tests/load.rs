//! Loading at scale: sharded safetensors (`model.safetensors.index.json`) from a folder and from
//! the hub (hf-hub on a cache the test writes, no network), memory-mapped straight to the device,
//! with the loader's statistics.

use candle_core::quantized::gguf_file;
use candle_core::{DType, Device, Tensor};
use harness::model::load::{load, load_hf_folder, random_weights, safetensors_files, tiny_config, ModelSource, SHARD_INDEX};
use harness::model::tokenizer::{MaskToken, Tok};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A tiny random checkpoint (the SmolLM2 vocabulary, so the fixture tokenizer fits) written to
/// `dir` as two shards and their index, with config.json and tokenizer.json; returns its weights.
fn write_sharded(dir: &Path) -> HashMap<String, Tensor> {
    let cfg = tiny_config(49152);
    let w = random_weights(&cfg, 0.02, 3, DType::F32, &Device::Cpu).unwrap();
    let (mut a, mut b) = (HashMap::new(), HashMap::new());
    let mut map = serde_json::Map::new();
    for (name, t) in &w {
        let shard = if name.contains("layers.1.") || name.contains("norm.weight") && !name.contains("layers") { "model-00002-of-00002.safetensors" } else { "model-00001-of-00002.safetensors" };
        if shard.starts_with("model-00001") { a.insert(name.clone(), t.clone()) } else { b.insert(name.clone(), t.clone()) };
        map.insert(name.clone(), serde_json::Value::String(shard.into()));
    }
    assert!(!a.is_empty() && !b.is_empty());
    candle_core::safetensors::save(&a, dir.join("model-00001-of-00002.safetensors")).unwrap();
    candle_core::safetensors::save(&b, dir.join("model-00002-of-00002.safetensors")).unwrap();
    let index = serde_json::json!({"metadata": {"total_size": 0}, "weight_map": map});
    std::fs::write(dir.join(SHARD_INDEX), serde_json::to_string_pretty(&index).unwrap()).unwrap();
    std::fs::write(dir.join("config.json"), serde_json::to_string(&cfg).unwrap()).unwrap();
    let p = root().join("tests/fixtures/smollm2-tokenizer.gguf");
    let mut f = std::fs::File::open(&p).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    Tok::from_gguf(&c, &p, &MaskToken::Auto).unwrap().save(dir).unwrap();
    w
}

fn same(a: &HashMap<String, Tensor>, b: &HashMap<String, Tensor>) {
    assert_eq!(a.len(), b.len());
    for (name, t) in a {
        let u = b.get(name).unwrap_or_else(|| panic!("{name} missing"));
        let d = (t - u).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert_eq!(d, 0.0, "{name}");
    }
}

#[test]
fn a_sharded_folder_loads_every_shard_its_index_lists() {
    let dir = tempfile::tempdir().unwrap();
    let w = write_sharded(dir.path());
    // a stray safetensors file the index does not list is not read
    candle_core::safetensors::save(&HashMap::from([("junk".to_string(), Tensor::zeros(2, DType::F32, &Device::Cpu).unwrap())]), dir.path().join("stray.safetensors")).unwrap();
    let files = safetensors_files(dir.path()).unwrap();
    assert_eq!(files.iter().map(|f| f.file_name().unwrap().to_string_lossy().to_string()).collect::<Vec<_>>(), ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
    let l = load_hf_folder(dir.path(), DType::F32, &Device::Cpu, &MaskToken::Auto).unwrap();
    same(&w, &l.tensors);
    // through `load`: the statistics of the load
    let l = load(&ModelSource::HfFolder(dir.path().to_path_buf()), None, 0.02, 0, DType::F32, &Device::Cpu, &MaskToken::Auto).unwrap();
    let bytes: u64 = w.values().map(|t| (t.elem_count() * 4) as u64).sum();
    assert_eq!(l.stats.bytes, bytes);
    assert!(l.stats.seconds > 0.0);
    if cfg!(target_os = "linux") {
        assert!(l.stats.peak_host_bytes.is_some_and(|b| b > 0));
    }
    assert!(l.stats.line(l.tensors.len(), &Device::Cpu).contains(&format!("{} tensors", w.len())));
    // in bf16: converted on the device
    let h = load_hf_folder(dir.path(), DType::BF16, &Device::Cpu, &MaskToken::Auto).unwrap();
    assert!(h.tensors.values().all(|t| t.dtype() == DType::BF16));
    // a missing shard is an error naming the index and the shard
    std::fs::remove_file(dir.path().join("model-00002-of-00002.safetensors")).unwrap();
    let e = load_hf_folder(dir.path(), DType::F32, &Device::Cpu, &MaskToken::Auto).err().unwrap().to_string();
    assert!(e.contains(SHARD_INDEX) && e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn a_sharded_hub_repo_loads_from_the_hf_hub_cache() {
    // The layout hf-hub keeps: <HF_HOME>/hub/models--org--name/{refs/main, snapshots/<commit>/…}.
    let home = tempfile::tempdir().unwrap();
    let repo = home.path().join("hub").join("models--ddm-sft--tiny-sharded");
    let snap = repo.join("snapshots").join("0123456789abcdef");
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123456789abcdef").unwrap();
    let w = write_sharded(&snap);
    std::env::set_var("HF_HOME", home.path());
    let src = ModelSource::parse("ddm-sft/tiny-sharded", None, None).unwrap();
    let l = load(&src, None, 0.02, 0, DType::F32, &Device::Cpu, &MaskToken::Auto).unwrap();
    same(&w, &l.tensors);
    assert!(l.tok.is_some());
    assert!(l.files.iter().any(|f| f.ends_with("model-00002-of-00002.safetensors")));
}
