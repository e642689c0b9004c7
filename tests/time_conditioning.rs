//! Timestep conditioning (`objective.time_conditioning = "embedding"`): an untrained time
//! embedding leaves the base model unchanged at every t, one step trains it so that the logits
//! depend on t, packing keeps each pair's time, the sampler reads t from the mask count, the
//! config runs eagerly, and a run saves the embedding and evaluates with it.

use candle_core::{DType, Device, Tensor};
use harness::config::{EvalConfig, RawConfig};
use harness::model::load::{random_weights, tiny_config};
use harness::model::llama::TIME_FEATURES;
use harness::model::mask::ReadAttention;
use harness::model::{AdapterConfig, AdapterKind, BuildOpts, Fwd, LayerPath, Llama, Trainable};
use harness::objective::pack::pack;
use harness::objective::{scored_loss, Batch, Diffusion, DiffusionConfig, Example, Objective, Prepared, TimeConditioning};
use harness::sample::{CacheKind, Denoiser, ModelDenoiser};
use harness::train::optim::{AdamW, AdamWParams, GradAccum};
use std::path::PathBuf;
use std::process::Command;

const VOCAB: usize = 64;
const MASK: u32 = 63;
const EOS: u32 = 2;
const TIME_EMBED: &str = "base_model.model.model.time_embed.weight";

/// The tiny shape with weights N(0, 0.5²) from `seed`, with or without a time embedding.
fn model(seed: u64, adapter: &AdapterConfig, time_embedding: bool) -> (Llama, Trainable) {
    let cfg = tiny_config(VOCAB);
    let w = random_weights(&cfg, 0.5, seed, DType::F32, &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(w, DType::F32, &Device::Cpu);
    Llama::load(vb, &cfg, &BuildOpts { adapter, seed, layer_path: LayerPath::Fused, time_embedding }).unwrap()
}

fn time_embed<'a>(tr: &'a Trainable, name: &str) -> &'a candle_core::Var {
    &tr.entries.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("no trainable `{name}`")).1
}

fn timed(cfg: DiffusionConfig) -> Diffusion {
    Diffusion::new(MASK, DiffusionConfig { time_conditioning: TimeConditioning::Embedding, ..cfg })
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap()
}

/// Pairs of different lengths (prompt 2–4, response 2–5, eos last).
fn pairs() -> Vec<Example> {
    (0..6u32)
        .map(|i| Example { prompt: (0..2 + i % 3).map(|k| 3 + i + k).collect(), response: (0..1 + (i * 5) % 4).map(|k| 20 + (i + k) % 9).chain([EOS]).collect() })
        .collect()
}

fn ids(rows: &[&[u32]]) -> Tensor {
    let l = rows[0].len();
    Tensor::from_vec(rows.concat(), (rows.len(), l), &Device::Cpu).unwrap()
}

fn const_time(t: f32, b: usize, l: usize) -> Tensor {
    Tensor::full(t, (b, l), &Device::Cpu).unwrap()
}

#[test]
fn an_untrained_time_embedding_gives_the_base_models_outputs_at_any_t() {
    let lora = AdapterConfig::default();
    let (base, base_tr) = model(1, &lora, false);
    let (tm, tr) = model(1, &lora, true);
    assert!(tm.time_conditioned() && !base.time_conditioned());
    // one more trainable, (D, F), zero, named unambiguously (LoRA names: peft's prefix)
    assert_eq!(tr.entries.len(), base_tr.entries.len() + 1);
    let w = time_embed(&tr, TIME_EMBED);
    assert_eq!(w.dims(), &[32, TIME_FEATURES]);
    assert_eq!(w.as_tensor().abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap(), 0.0);
    let full = AdapterConfig { kind: AdapterKind::Full, ..AdapterConfig::default() };
    let (_, full_tr) = model(1, &full, true);
    time_embed(&full_tr, "model.time_embed.weight");
    // the same hidden states, exactly, whatever t
    let x = ids(&[&[5, 9, MASK, 20, MASK, 2], &[7, 8, 30, MASK, MASK, MASK]]);
    let want = base.hidden_at(&x, None, None, None, &Fwd::default()).unwrap();
    for t in [0.001f32, 0.3, 1.0] {
        let got = tm.hidden_at(&x, None, None, Some(&const_time(t, 2, 6)), &Fwd::default()).unwrap();
        assert_eq!(max_diff(&got, &want), 0.0, "t = {t}");
    }
    // the training loss too: the time-conditioned step equals the plain one on the base model
    let refs: Vec<&Example> = pairs().leak().iter().collect();
    let batch = Batch::collate(&refs, 0);
    let (p, q) = (timed(DiffusionConfig::default()).prepare(&batch, 0, 0, 3).unwrap(), Diffusion::new(MASK, DiffusionConfig::default()).prepare(&batch, 0, 0, 3).unwrap());
    assert!(p.time.is_some() && q.time.is_none());
    assert_eq!((&p.input, &p.rows, &p.weights), (&q.input, &q.rows, &q.weights), "the same draws");
    let ctx = Fwd { train: true, seed: 3, step: 0, micro: 0 };
    let (a, b) = (scored_loss(&tm, &p, p.denom, 3, &ctx).unwrap().read().unwrap(), scored_loss(&base, &q, q.denom, 3, &ctx).unwrap().read().unwrap());
    assert_eq!(a.loss, b.loss);
    // a time for a model without the embedding is an error, not ignored
    let e = base.hidden_at(&x, None, None, Some(&const_time(0.5, 2, 6)), &Fwd::default()).unwrap_err().to_string();
    assert!(e.contains("time embedding"), "{e}");
    assert!(scored_loss(&base, &p, p.denom, 3, &ctx).is_err());
    // a time of the wrong shape is an error
    assert!(tm.hidden_at(&x, None, None, Some(&const_time(0.5, 2, 5)), &Fwd::default()).is_err());
}

#[test]
fn one_step_trains_the_time_embedding_and_the_logits_then_depend_on_t() {
    let lora = AdapterConfig::default();
    let refs: Vec<&Example> = pairs().leak().iter().collect();
    let batch = Batch::collate(&refs, 0);
    let obj = timed(DiffusionConfig::default());
    let p = obj.prepare(&batch, 0, 0, 5).unwrap();
    let mut per_path = Vec::new();
    for path in [LayerPath::Fused, LayerPath::Reference] {
        let (mut m, tr) = model(2, &lora, true);
        m.set_layer_path(path);
        let ctx = Fwd { train: true, seed: 5, step: 0, micro: 0 };
        let parts = scored_loss(&m, &p, p.denom, 5, &ctx).unwrap();
        let mut acc = GradAccum::new(&tr);
        acc.add(&parts.loss.backward().unwrap()).unwrap();
        let (grads, _) = acc.take_clipped(0.0).unwrap();
        let k = tr.entries.iter().position(|(n, _)| n == TIME_EMBED).unwrap();
        let g = grads.tensors[k].clone();
        let norm = g.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
        assert!(norm > 0.0 && norm.is_finite(), "{path:?}: time-embedding gradient norm {norm}");
        let mut opt = AdamW::new(&tr, AdamWParams::default()).unwrap();
        opt.step(&grads, 1e-2).unwrap();
        let x = ids(&[&[5, 9, MASK, 20, MASK, 2]]);
        let at = |t: f32| m.logits(&m.hidden_at(&x, None, None, Some(&const_time(t, 1, 6)), &Fwd::default()).unwrap(), &Fwd::default()).unwrap();
        let d = max_diff(&at(0.2), &at(0.8));
        assert!(d > 1e-4, "{path:?}: logits at t = 0.2 and 0.8 differ by only {d}");
        per_path.push(g);
    }
    let (d, top) = (max_diff(&per_path[0], &per_path[1]), per_path[0].abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap());
    assert!(d < 1e-3 * top, "the fused and reference paths give the same time-embedding gradient (differ by {d} of {top})");
}

/// A model whose time embedding is N(0, 0.3²): its outputs depend on t.
fn trained_time(seed: u64, adapter: &AdapterConfig) -> (Llama, Trainable) {
    let (m, tr) = model(seed, adapter, true);
    let w = time_embed(&tr, if adapter.kind == AdapterKind::Full { "model.time_embed.weight" } else { TIME_EMBED });
    w.set(&Tensor::randn(0f32, 0.3, w.dims(), &Device::Cpu).unwrap()).unwrap();
    (m, tr)
}

#[test]
fn a_packed_time_conditioned_micro_batch_gives_the_unpacked_losses_and_gradients() {
    let data = pairs();
    let refs: Vec<&Example> = data.iter().collect();
    let batch = Batch::collate(&refs, 0);
    let lora = AdapterConfig { rank: 4, alpha: 8.0, ..Default::default() };
    let (mut m, tr) = trained_time(5, &lora);
    let plain = timed(DiffusionConfig::default());
    let complementary = timed(DiffusionConfig { complementary: true, ..DiffusionConfig::default() });
    let blocks = timed(DiffusionConfig { block_size: 2, ..DiffusionConfig::default() });
    for obj in [&plain, &complementary, &blocks] {
        let p = obj.prepare(&batch, 4, 0, 9).unwrap();
        let what = format!("complementary {} blocks {}", obj.cfg.complementary, obj.cfg.block_size);
        let time = p.time.as_ref().unwrap();
        assert_eq!(time.len(), p.b * p.l, "{what}");
        let (q, places) = pack(&p, 16, 9).unwrap();
        let qt = q.time.as_ref().expect("packing keeps the time");
        for (i, pl) in places.iter().enumerate() {
            assert_eq!(&qt[pl.row * q.l + pl.offset..pl.row * q.l + pl.offset + pl.len], &time[i * p.l..i * p.l + pl.len], "{what}: pair {i}");
        }
        for path in [LayerPath::Fused, LayerPath::Reference] {
            m.set_layer_path(path);
            let ctx = Fwd { train: true, seed: 9, step: 4, micro: 0 };
            let run = |prepared: &Prepared| {
                let parts = scored_loss(&m, prepared, p.denom, 9, &ctx).unwrap();
                let mut acc = GradAccum::new(&tr);
                acc.add(&parts.loss.backward().unwrap()).unwrap();
                let (grads, norm) = acc.take_clipped(0.0).unwrap();
                (parts.read().unwrap(), grads.tensors, norm)
            };
            let ((a, ga, na), (b, gb, nb)) = (run(&p), run(&q));
            assert!((a.loss - b.loss).abs() < 1e-5, "{what} {path:?}: loss {} vs {}", a.loss, b.loss);
            assert!(na > 0.0 && (na - nb).abs() < 1e-4 * na, "{what} {path:?}: grad norm {na} vs {nb}");
            for ((name, _), (x, y)) in tr.entries.iter().zip(ga.iter().zip(&gb)) {
                let d = max_diff(x, y);
                assert!(d < 1e-5, "{what} {path:?}: {name} gradient differs by {d}");
            }
            // the time matters: the same step without it is another loss
            let untimed = Prepared { time: None, ..p.clone() };
            let c = scored_loss(&m, &untimed, p.denom, 9, &ctx).unwrap().read().unwrap();
            assert!((a.loss - c.loss).abs() > 1e-5, "{what} {path:?}: the time input changes the loss");
        }
    }
    // each copy of the two-copy layout carries its row's t; the complementary copy its 1 − t
    let (b2, t2) = (Batch::collate(&refs[..2], 0), [0.25, 0.5]);
    let masked = vec![true; b2.b * b2.l];
    let two = blocks.prepare_with(&b2, &t2, &masked, 0).unwrap();
    assert_eq!(two.time.as_ref().unwrap(), &[vec![0.25f32; 2 * b2.l], vec![0.5; 2 * b2.l]].concat());
    let comp = complementary.prepare_complementary_with(&b2, &t2, &masked, 0).unwrap();
    assert_eq!(comp.time.as_ref().unwrap(), &[vec![0.25f32; b2.l], vec![0.5; b2.l], vec![0.75; b2.l], vec![0.5; b2.l]].concat());
    // the dev NLL bound carries t as well
    assert!(plain.prepare_nll(&batch, 0, 0, 9).unwrap().time.is_some());
    // the CUDA-graph layout refuses a time input
    let e = harness::objective::HostBatch::padded(&plain.prepare(&batch, 0, 0, 9).unwrap(), 1.0, 9, VOCAB, harness::objective::FixedShape { b: 6, l: 9, n: 54 }, 0).unwrap_err().to_string();
    assert!(e.contains("objective.time_conditioning"), "{e}");
}

#[test]
fn the_denoiser_gives_each_row_the_masked_fraction_of_its_canvas() {
    // canvas of 4 after a prompt of 2: 4, 1 and 0 masks
    let x = ids(&[&[5, 9, MASK, MASK, MASK, MASK], &[5, 9, 20, MASK, 21, 22], &[MASK, 9, 20, 21, 22, 23]]);
    assert_eq!(ModelDenoiser::row_times(&x, MASK, 4).unwrap(), vec![1.0, 0.25, 0.0], "a prompt-side mask does not count");
    assert_eq!(ModelDenoiser::row_times(&x, MASK, 10).unwrap(), vec![4.0 / 6.0, 1.0 / 6.0, 1.0 / 6.0], "a canvas past the row: all of it");
    assert_eq!(ModelDenoiser::row_times(&x, MASK, 0).unwrap(), vec![0.0; 3]);
    // the timed denoiser's logits are the model's at those times, every entry point alike
    let (m, _) = trained_time(6, &AdapterConfig::default());
    let d = ModelDenoiser::reading(&m, ReadAttention::FULL).timed(MASK, 4);
    let t = Tensor::from_vec(vec![1.0f32, 0.25, 0.0], (3, 1), &Device::Cpu).unwrap().broadcast_as((3, 6)).unwrap().contiguous().unwrap();
    let want = m.logits(&m.hidden_at(&x, None, None, Some(&t), &Fwd::default()).unwrap(), &Fwd::default()).unwrap(); // (3, 6, V)
    let got = d.logits(&x).unwrap();
    assert!(max_diff(&got, &want) < 1e-5);
    let at = d.logits_at(&x, None, &[(0, 3), (1, 2)]).unwrap();
    let want_at = Tensor::stack(&[want.get(0).unwrap().get(3).unwrap(), want.get(1).unwrap().get(2).unwrap()], 0).unwrap();
    assert!(max_diff(&at, &want_at) < 1e-5);
    // untimed, the same model reads t = 0 nowhere: other logits
    let plain = ModelDenoiser::reading(&m, ReadAttention::FULL).logits(&x).unwrap();
    assert!(max_diff(&plain, &want) > 1e-4, "the time input matters");
}

#[test]
fn a_chunk_pass_carries_the_rows_time_and_a_time_conditioned_model_decodes_and_scores() {
    use harness::model::AttentionMode;
    use harness::sample::PrefixCache;
    let (m, _) = trained_time(3, &AdapterConfig::default());
    // prompt 3 + canvas 6 in blocks of 2 under the block reading: block 0 committed, block 1
    // current. Two passes with three masks each (the same t): the second runs only the chunk from
    // column 4 over the cached prefix, given the row's t, and equals the whole-row pass. (When t
    // moves between passes the cached prefix was computed at the older t: with time conditioning
    // the prefix cache is approximate even under the block reading.)
    let d = ModelDenoiser::reading(&m, ReadAttention::end_of(AttentionMode::Blocks { size: 2, canvas: 6 })).timed(MASK, 6);
    let row = |c5: u32, c6: u32| Tensor::from_vec(vec![5u32, 9, 13, 20, 21, c5, c6, MASK, MASK], (1, 9), &Device::Cpu).unwrap();
    let asked = [(0usize, 4usize), (0, 5)];
    let mut cache = PrefixCache::default();
    for (c5, c6) in [(MASK, 34), (33, MASK)] {
        let cached = d.logits_at_prefix(&row(c5, c6), None, &asked, &[5], &mut cache).unwrap();
        let whole = d.logits_at(&row(c5, c6), None, &asked).unwrap();
        let diff = max_diff(&cached, &whole);
        assert!(diff < 1e-5, "cached logits differ by {diff}");
    }
    assert_eq!((cache.query_columns(), cache.refreshes()), (9 + 5, 1), "the second pass ran the chunk only");
    // block decoding runs with and without the cache
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 13], vec![7, 8], vec![11, 12, 14, 15, 16]];
    let read = ReadAttention::end_of(AttentionMode::Blocks { size: 3, canvas: 0 });
    let blocks = timed(DiffusionConfig { block_size: 3, anneal_steps: 1, ..DiffusionConfig::default() }).reading(read);
    let eval = EvalConfig { steps: 9, max_new_tokens: 9, batch_size: 2, temperature: 0.0, ..EvalConfig::default() };
    for cache in [CacheKind::None, CacheKind::Prefix] {
        let out = blocks.generate(&m, &prompts, EOS, &EvalConfig { cache, ..eval.clone() }, 4).unwrap();
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|g| g.tokens.len() == g.confidence.len() && g.tokens.iter().all(|&t| (t as usize) < VOCAB && t != MASK)));
    }
    // the choice scores go through the objective's bound, with the time: finite and seeded
    let choices = vec![vec![20u32, 21, 2], vec![30, 31, 32, 2]];
    let ev = EvalConfig { mc_samples: 8, batch_size: 2, ..EvalConfig::default() };
    let plain = timed(DiffusionConfig::default());
    let a = plain.score_choices(&m, &[5, 9, 13], &choices, 3, &ev, 1).unwrap();
    assert_eq!(a, plain.score_choices(&m, &[5, 9, 13], &choices, 3, &ev, 1).unwrap());
    assert!(a.scores.iter().all(|s| s.is_finite() && *s < 0.0), "{:?}", a.scores);
    // a model without the embedding cannot be read as a time-conditioned one
    let (base, _) = model(3, &AdapterConfig::default(), false);
    assert!(plain.score_choices(&base, &[5, 9, 13], &choices, 3, &ev, 1).is_err());
    assert!(plain.generate(&base, &prompts, EOS, &eval, 4).is_err());
}

fn resolve(text: &str) -> Result<harness::config::RunConfig, String> {
    RawConfig::from_str_with(text, "t.toml", &[]).and_then(|r| r.resolve()).map_err(|e| e.to_string())
}

#[test]
fn time_conditioning_is_a_diffusion_setting_that_runs_eagerly() {
    let cfg = resolve("[objective]\ntime_conditioning = \"embedding\"\n").unwrap();
    assert_eq!(cfg.raw.objective.diffusion().unwrap().time_conditioning, TimeConditioning::Embedding);
    assert_eq!(cfg.resolved.launch, harness::train::graph::StepLaunch::Eager);
    assert_eq!(resolve("").unwrap().raw.objective.diffusion().unwrap().time_conditioning, TimeConditioning::None, "default none");
    let e = resolve("[objective]\ntime_conditioning = \"embedding\"\n[train]\nlaunch = \"cuda_graph\"\n").unwrap_err();
    assert!(e.contains("train.launch") && e.contains("objective.time_conditioning"), "{e}");
    let e = resolve("[objective]\nkind = \"autoregressive\"\ntime_conditioning = \"none\"\n").unwrap_err();
    assert!(e.contains("objective.time_conditioning: not a field of the autoregressive objective"), "{e}");
    let e = resolve("[objective]\ntime_conditioning = \"film\"\n").unwrap_err();
    assert!(e.contains("objective") && e.contains("embedding"), "{e}");
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn harness_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_harness")).args(args).current_dir(root()).output().unwrap();
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

#[test]
fn a_tiny_time_conditioned_run_trains_saves_the_embedding_and_evaluates_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let sets = ["objective.time_conditioning=\"embedding\"", "train.max_steps=4", "eval.methods=[\"generate\", \"likelihood\"]", "eval.limit=4", "eval.mc_samples=2"];
    let mut args = vec!["train", "--config", "configs/tiny-random.toml", "--out"];
    let out_s = out.display().to_string();
    args.push(&out_s);
    for s in &sets {
        args.extend(["--set", s]);
    }
    let (code, stdout, err) = harness_cli(&args);
    assert_eq!(code, 0, "{err}");
    assert!(stdout.contains("final loss"), "{stdout}");
    let cfg: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("config.json")).unwrap()).unwrap();
    assert_eq!(cfg["objective"]["time_conditioning"], "embedding");
    assert_eq!(cfg["resolved"]["launch"], "eager");
    // the checkpoint holds the trained (non-zero) time embedding, (D, F)
    let saved = candle_core::safetensors::load(out.join("checkpoints/adapter.safetensors"), &Device::Cpu).unwrap();
    let w = saved.get(TIME_EMBED).expect("the time embedding is saved");
    assert_eq!(w.dims(), &[64, TIME_FEATURES]);
    assert!(w.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap() > 0.0, "trained");
    let dir_run = harness::schema::RunDir::new(&out);
    let at_end = dir_run.read_eval().unwrap().expect("eval.json");
    assert_eq!(at_end.methods.iter().map(|m| m.method.as_str()).collect::<Vec<_>>(), ["generate", "likelihood"]);
    // `eval --run` loads the base model with a (zero) time embedding and the saved one into it:
    // the same predictions as the evaluation of the model in memory
    let again = dir.path().join("again");
    let (code, _, err) = harness_cli(&["eval", "--run", &out_s, "--out", &again.display().to_string()]);
    assert_eq!(code, 0, "{err}");
    let re = harness::schema::RunDir::new(&again);
    let e = re.read_eval().unwrap().expect("eval.json of eval --run");
    assert_eq!(e.methods.iter().map(|m| (&m.method, m.report.correct)).collect::<Vec<_>>(), at_end.methods.iter().map(|m| (&m.method, m.report.correct)).collect::<Vec<_>>());
    let key = |p: &harness::schema::Prediction| (p.method.clone(), p.raw.clone(), p.scores.clone());
    assert_eq!(re.read_predictions().unwrap().iter().map(key).collect::<Vec<_>>(), dir_run.read_predictions().unwrap().iter().map(key).collect::<Vec<_>>());
    // and the library's loader reads the saved embedding back into a time-conditioned model
    let mut run_cfg: harness::config::RunConfig = dir_run.read_config().unwrap();
    run_cfg.raw.model.tokenizer = Some(root().join("tests/fixtures/smollm2-tokenizer.gguf"));
    let loaded = harness::run::load_model(&run_cfg).unwrap();
    loaded.trainable.load(&out.join("checkpoints/adapter.safetensors")).unwrap();
    let back = time_embed(&loaded.trainable, TIME_EMBED).as_tensor().clone();
    assert_eq!(max_diff(&back, w), 0.0);
}
