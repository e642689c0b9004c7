//! Engine tests: masks, objectives, LoRA, training, GGUF and a pinned PyTorch cross-check.
//! Tiny random models are built in the tests; every test asserts numbers.

use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use harness::config::TrainConfig;
use harness::model::load::{self, permute_qk, random_model, tiny_config};
use harness::model::{AdapterConfig, AdapterKind, Fwd, LayerPath};
use harness::model::mask::{self, attention_bias, AttentionMode};
use harness::model::tokenizer::MaskToken;
use harness::model::{BuildOpts, Llama};
use harness::objective::{self, Autoregressive, Batch, Diffusion, DiffusionConfig, Example, LossNorm, Objective, TSampling};
use harness::train::{self, TrainInputs};
use std::collections::HashMap;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn diffusion(shift: bool, norm: LossNorm) -> Diffusion {
    Diffusion::new(
        31,
        DiffusionConfig {
            t_sampling: TSampling::Uniform,
            t_logit_mean: 0.0,
            t_logit_std: 1.0,
            eps: 1e-3,
            shift,
            loss_norm: norm,
            score_padding: false,
            anneal_steps: 1,
            ..Default::default()
        },
    )
}

// ---------------------------------------------------------------- masks

#[test]
fn causal_and_full_mask_pictures() {
    let causal = mask::picture(&mask::visibility(AttentionMode::Causal, 4, 0, 0), 4);
    assert_eq!(causal, "#...\n##..\n###.\n####\n");
    let full = mask::picture(&mask::visibility(AttentionMode::Full, 3, 0, 0), 3);
    assert_eq!(full, "###\n###\n###\n");
}

#[test]
fn annealed_mask_is_reproducible_dense_as_promised_and_keeps_causal_part() {
    let mode = AttentionMode::Annealed { anneal_steps: 100 };
    let l = 64;
    for step in [0u64, 9, 49, 98] {
        let a = mask::visibility(mode, l, step, 7);
        let b = mask::visibility(mode, l, step, 7);
        assert_eq!(a, b, "same (seed, step) must give the same mask");
        // causal part always visible
        for i in 0..l {
            for j in 0..=i {
                assert!(a[i * l + j]);
            }
        }
        let p = (step as f64 + 1.0) / 100.0;
        let future = l * (l - 1) / 2;
        let seen = (0..l).flat_map(|i| ((i + 1)..l).map(move |j| (i, j))).filter(|&(i, j)| a[i * l + j]).count();
        let density = seen as f64 / future as f64;
        let sd = (p * (1.0 - p) / future as f64).sqrt();
        assert!((density - p).abs() < 5.0 * sd + 1e-9, "step {step}: density {density} vs p {p}");
    }
    // another seed or step draws another mask
    assert_ne!(mask::visibility(mode, l, 10, 7), mask::visibility(mode, l, 10, 8));
    assert_ne!(mask::visibility(mode, l, 10, 7), mask::visibility(mode, l, 11, 7));
    // anneal_steps = 1 is full attention from the first step; the mask of the last annealed step too
    let one = AttentionMode::Annealed { anneal_steps: 1 };
    assert_eq!(mask::visibility(one, 5, 0, 3), mask::visibility(AttentionMode::Full, 5, 0, 3));
    assert_eq!(mode.at_step(99), AttentionMode::Full);
    assert!(attention_bias(one, 0, 3, 5, None, DType::F32, &Device::Cpu).unwrap().is_none());
}

#[test]
fn window_and_switch_schedules_draw_the_promised_pictures() {
    // window over 4 steps, L = 4: p = (s+1)/4, future key j visible when j − i ≤ p·L = s + 1
    let w = AttentionMode::Window { anneal_steps: 4 };
    let pic = |m: AttentionMode, step: u64| mask::picture(&mask::visibility(m, 4, step, 9), 4);
    assert_eq!(pic(w, 0), "##..\n###.\n####\n####\n", "step 0: one future key");
    assert_eq!(pic(w, 1), "###.\n####\n####\n####\n", "step 1: two future keys");
    assert_eq!(pic(w, 3), "####\n####\n####\n####\n");
    assert_eq!(w.at_step(3), AttentionMode::Full);
    assert_eq!(mask::visibility(w, 6, 2, 1), mask::visibility(w, 6, 2, 2), "deterministic: the seed plays no part");
    // switch at step 3 (1-based): causal for steps 0 and 1, full from step 2
    let s = AttentionMode::Switch { anneal_steps: 3 };
    assert_eq!(pic(s, 0), "#...\n##..\n###.\n####\n");
    assert_eq!(pic(s, 1), "#...\n##..\n###.\n####\n");
    assert_eq!(pic(s, 2), "####\n####\n####\n####\n");
    assert_eq!((s.at_step(1), s.at_step(2)), (AttentionMode::Causal, AttentionMode::Full));
    assert_eq!((s.future_visibility(1), s.future_visibility(2)), (0.0, 1.0));
    // the schedules as the objective names them
    use harness::model::mask::AnnealSchedule;
    assert_eq!(AnnealSchedule::Window.mode(4), w);
    assert_eq!(AnnealSchedule::Bernoulli.mode(4), AttentionMode::Annealed { anneal_steps: 4 });
    for m in [w, s, AttentionMode::Annealed { anneal_steps: 4 }] {
        assert!(m.depends_on_step());
    }
    assert!(!AttentionMode::Full.depends_on_step());
}

#[test]
fn the_one_bias_builder_serves_the_kv_cache_and_left_padding() {
    let pic = |t: &Tensor| -> String {
        let (b, _, l, k) = t.dims4().unwrap();
        let v: Vec<f32> = t.flatten_all().unwrap().to_vec1().unwrap();
        (0..b * l).map(|r| (0..k).map(|j| if v[r * k + j] == 0.0 { '#' } else { '.' }).collect::<String>() + "\n").collect()
    };
    // three new queries after two cached positions: query i sees keys 0..=2+i
    let c = mask::cache_bias(3, 2, DType::F32, &Device::Cpu).unwrap().unwrap();
    assert_eq!(c.dims(), &[1, 1, 3, 5]);
    assert_eq!(pic(&c), "###..\n####.\n#####\n");
    assert!(mask::cache_bias(1, 7, DType::F32, &Device::Cpu).unwrap().is_none(), "one query sees every key");
    // a left-padded batch in the cache: row 0 has 2 pad columns, row 1 none; the prompt pass
    // hides the pad keys (a pad query sees nothing), a decode step gets a (B, 1, 1, T) bias
    let p = mask::padded_cache_bias(3, 0, &[2, 0], DType::F32, &Device::Cpu).unwrap().unwrap();
    assert_eq!(p.dims(), &[2, 1, 3, 3]);
    assert_eq!(pic(&p), "...\n...\n..#\n#..\n##.\n###\n");
    let step = mask::padded_cache_bias(1, 3, &[2, 0], DType::F32, &Device::Cpu).unwrap().unwrap();
    assert_eq!(step.dims(), &[2, 1, 1, 4]);
    assert_eq!(pic(&step), "..##\n####\n");
    assert!(mask::padded_cache_bias(1, 3, &[0, 0], DType::F32, &Device::Cpu).unwrap().is_none(), "no padding, one query: nothing hidden");
    // a left-padded causal row: the pad query sees nothing (Hidden) or keeps itself (KeepSelf)
    let vis = mask::visibility(AttentionMode::Causal, 3, 0, 0);
    let kv = vec![vec![false, true, true]];
    let hidden = mask::additive_bias(&vis, (3, 3), Some(&kv), mask::EmptyRow::Hidden, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(pic(&hidden), "...\n.#.\n.##\n");
    let keep = mask::additive_bias(&vis, (3, 3), Some(&kv), mask::EmptyRow::KeepSelf, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(pic(&keep), "#..\n.#.\n.##\n");
}

#[test]
fn padding_key_mask_hides_pad_keys() {
    let kv = vec![vec![true, true, true], vec![true, true, false]];
    let bias = attention_bias(AttentionMode::Full, 0, 0, 3, Some(&kv), DType::F32, &Device::Cpu).unwrap().unwrap();
    let b = bias.squeeze(1).unwrap().to_vec3::<f32>().unwrap(); // (B, L, L)
    assert!(b[0].iter().flatten().all(|&x| x == 0.0));
    for row in &b[1] {
        assert_eq!(row[2], mask::MASKED_BIAS);
        assert_eq!(row[0], 0.0);
    }
}

// ---------------------------------------------------------------- diffusion loss, hand-worked

/// Two rows, V = 3, L = 5.
/// Row 0: tokens [0,1,2,1,0], prompt 2, length 5, t = 0.5, masked {2, 4} (and prompt pos 0 marked,
///        which must be ignored).
/// Row 1: tokens [1,1,0,2,<pad 2>], prompt 2, length 4, t = 0.25, masked {2, 3} (and the pad at 4
///        marked, which must be ignored since score_padding = false).
/// Logits are logs of hand-picked probabilities (softmax recovers them exactly).
fn hand_example() -> (Batch, Vec<f64>, Vec<bool>, Tensor) {
    let batch = Batch { ids: vec![0, 1, 2, 1, 0, 1, 1, 0, 2, 2], b: 2, l: 5, prompt_len: vec![2, 2], len: vec![5, 4] };
    let t = vec![0.5, 0.25];
    let mut masked = vec![false; 10];
    for p in [0, 2, 4] {
        masked[p] = true;
    }
    for p in [2, 3, 4] {
        masked[5 + p] = true;
    }
    let ln = |p: f64| p.ln() as f32;
    let rows: Vec<[f32; 3]> = vec![
        [0.0, 0.0, 0.0],                 // r0 p0: 1/3 each
        [ln(0.25), ln(0.5), ln(0.25)],   // r0 p1
        [ln(0.5), ln(0.25), ln(0.25)],   // r0 p2
        [ln(0.25), ln(0.25), ln(0.5)],   // r0 p3
        [ln(0.1), ln(0.2), ln(0.7)],     // r0 p4
        [ln(0.25), ln(0.5), ln(0.25)],   // r1 p0
        [ln(0.5), ln(0.25), ln(0.25)],   // r1 p1
        [ln(0.25), ln(0.25), ln(0.5)],   // r1 p2
        [0.0, 0.0, 0.0],                 // r1 p3: 1/3 each
        [0.0, 0.0, 0.0],                 // r1 p4
    ];
    let flat: Vec<f32> = rows.into_iter().flatten().collect();
    (batch, t, masked, Tensor::from_vec(flat, (2, 5, 3), &Device::Cpu).unwrap())
}

#[test]
fn diffusion_loss_hand_worked_each_normaliser() {
    let (batch, t, masked, logits) = hand_example();
    let l4 = 4f64.ln();
    let (l3, l10) = (3f64.ln(), 10f64.ln());
    // With shift, target at p is read from row p-1:
    //   r0: p2 (tok 2) from p1: p=0.25 -> ln4; p4 (tok 0) from p3: 0.25 -> ln4; weight 1/t = 2
    //   r1: p2 (tok 0) from p1: 0.5 -> ln2;  p3 (tok 2) from p2: 0.5 -> ln2;   weight 4
    //   Σ w·CE = 2·2ln4 + 4·ln4 = 8 ln4; masked = 4; response tokens = 3 + 2
    //   response norm: r0 2ln4/(0.5·3) + r1 ln4/(0.25·2) = 4ln4/3 + 2ln4, over 2 rows
    // Without shift, target at p from row p:
    //   r0: p2 from p2: 0.25 -> ln4; p4 from p4: 0.1 -> ln10; weight 2
    //   r1: p2 from p2: 0.25 -> ln4; p3 from p3: 1/3 -> ln3;  weight 4
    let cases = [
        (true, LossNorm::Masked, 8.0 * l4 / 4.0, 3.0 * l4 / 4.0),
        (true, LossNorm::BatchResponse, 8.0 * l4 / 5.0, 3.0 * l4 / 4.0),
        (true, LossNorm::Response, (4.0 * l4 / 3.0 + 2.0 * l4) / 2.0, 3.0 * l4 / 4.0),
        (false, LossNorm::Masked, (2.0 * (l4 + l10) + 4.0 * (l4 + l3)) / 4.0, (2.0 * l4 + l10 + l3) / 4.0),
        (false, LossNorm::BatchResponse, (2.0 * (l4 + l10) + 4.0 * (l4 + l3)) / 5.0, (2.0 * l4 + l10 + l3) / 4.0),
        (false, LossNorm::Response, ((l4 + l10) / 1.5 + (l4 + l3) / 0.5) / 2.0, (2.0 * l4 + l10 + l3) / 4.0),
    ];
    for (shift, norm, want, want_ce) in cases {
        let d = diffusion(shift, norm);
        let p = d.prepare_with(&batch, &t, &masked, 0).unwrap();
        // prompt positions are never masked, padding untouched
        assert_eq!(&p.input[0..2], &[0, 1]);
        assert_eq!(&p.input[5..7], &[1, 1]);
        assert_eq!(p.input[9], 2);
        assert_eq!(p.rows.len(), 4);
        let parts = objective::loss_from_logits(&logits, &p, p.denom).unwrap().read().unwrap();
        assert!((parts.loss - want).abs() < 1e-5, "shift {shift} {norm:?}: {} vs {want}", parts.loss);
        assert!((parts.ce_sum / parts.n_scored as f64 - want_ce).abs() < 1e-5);
    }
}

#[test]
fn prompt_tokens_are_never_masked_or_scored() {
    let ex: Vec<Example> = (0..6).map(|i| Example { prompt: vec![3 + i, 4, 5, 6 + i], response: vec![10 + i, 11, 2] }).collect();
    let refs: Vec<&Example> = ex.iter().collect();
    let batch = Batch::collate(&refs[..], 2);
    for shift in [true, false] {
        let d = diffusion(shift, LossNorm::Masked);
        for step in 0..50 {
            let p = d.prepare(&batch, step, 0, 11).unwrap();
            for i in 0..batch.b {
                let pl = batch.prompt_len[i];
                assert_eq!(&p.input[i * batch.l..i * batch.l + pl], &batch.ids[i * batch.l..i * batch.l + pl]);
            }
            for (r, tgt) in p.rows.iter().zip(&p.targets) {
                let (i, pos) = (*r as usize / batch.l, *r as usize % batch.l);
                let target_pos = if shift { pos + 1 } else { pos };
                assert!(target_pos >= batch.prompt_len[i] && target_pos < batch.len[i]);
                assert_eq!(*tgt, batch.ids[i * batch.l + target_pos]);
                assert_eq!(p.input[i * batch.l + target_pos], 31, "scored targets are masked in the input");
            }
        }
    }
}

#[test]
fn t_sampling_strategies() {
    let mut d = diffusion(true, LossNorm::Masked);
    d.cfg.t_sampling = TSampling::Stratified;
    let t = d.sample_t(8, 3, 0, 0).unwrap();
    let mut frac: Vec<f64> = t.iter().map(|x| (x - 1e-3) / (1.0 - 1e-3)).collect();
    frac.sort_by(|a, b| a.partial_cmp(b).unwrap());
    for w in frac.windows(2) {
        assert!((w[1] - w[0] - 0.125).abs() < 1e-9, "stratified t are 1/B apart");
    }
    for s in [TSampling::Uniform, TSampling::LogitNormal] {
        d.cfg.t_sampling = s;
        let t = d.sample_t(1000, 5, 1, 0).unwrap();
        assert!(t.iter().all(|&x| (1e-3..=1.0).contains(&x)));
        assert_eq!(t, d.sample_t(1000, 5, 1, 0).unwrap());
        let mean = t.iter().sum::<f64>() / 1000.0;
        assert!((mean - 0.5).abs() < 0.03, "{s:?} mean {mean}");
        let mid = t.iter().filter(|&&x| (0.25..0.75).contains(&x)).count() as f64 / 1000.0;
        if s == TSampling::LogitNormal {
            assert!(mid > 0.6, "logit-normal concentrates mid-range t: {mid}");
        } else {
            assert!((mid - 0.5).abs() < 0.06);
        }
    }
}

// ---------------------------------------------------------------- AR loss

#[test]
fn ar_loss_equals_independent_next_token_ce() {
    let cfg = tiny_config(40);
    let (model, _) = random_model(&cfg, &AdapterConfig { targets: vec![], ..Default::default() }, 3, &Device::Cpu).unwrap();
    let ex = [Example { prompt: vec![5, 6, 7], response: vec![8, 9, 2] }, Example { prompt: vec![11, 12], response: vec![13, 2] }];
    let refs: Vec<&Example> = ex.iter().collect();
    let batch = Batch::collate(&refs, 0);
    let p = Autoregressive.prepare(&batch, 0, 0, 0).unwrap();
    let parts = objective::scored_loss(&model, &p, p.denom, 0, &Fwd::default()).unwrap().read().unwrap();
    // independent: each sequence alone, causal, no padding, CE by hand in f64
    let mut total = 0.0;
    let mut n = 0;
    for e in &ex {
        let seq: Vec<u32> = e.prompt.iter().chain(&e.response).copied().collect();
        let ids = Tensor::new(seq.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let bias = attention_bias(AttentionMode::Causal, 0, 0, seq.len(), None, DType::F32, &Device::Cpu).unwrap();
        let logits = model.forward(&ids, bias.as_ref(), &Fwd::default()).unwrap().squeeze(0).unwrap().to_vec2::<f32>().unwrap();
        for pos in e.prompt.len()..seq.len() {
            let row: Vec<f64> = logits[pos - 1].iter().map(|&x| x as f64).collect();
            let m = row.iter().cloned().fold(f64::MIN, f64::max);
            let lse = m + row.iter().map(|x| (x - m).exp()).sum::<f64>().ln();
            total += lse - row[seq[pos] as usize];
            n += 1;
        }
    }
    assert_eq!(parts.n_scored, n);
    assert!((parts.loss - total / n as f64).abs() < 1e-5, "{} vs {}", parts.loss, total / n as f64);
}

// ---------------------------------------------------------------- LoRA

fn base_and_lora(seed: u64) -> (Llama, Llama, harness::model::Trainable) {
    let cfg = tiny_config(40);
    let (base, _) = random_model(&cfg, &AdapterConfig { targets: vec![], ..Default::default() }, seed, &Device::Cpu).unwrap();
    let lora_cfg = AdapterConfig { rank: 4, alpha: 8.0, ..Default::default() };
    let (lora, tr) = random_model(&cfg, &lora_cfg, seed, &Device::Cpu).unwrap();
    (base, lora, tr)
}

fn logits_of(m: &Llama, ids: &[u32]) -> Vec<f32> {
    let t = Tensor::new(ids, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.forward(&t, None, &Fwd::default()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

fn pairs() -> Vec<Example> {
    (0..8u32).map(|i| Example { prompt: vec![1, 3 + i, 12 + (i % 3)], response: vec![20 + (i * 3) % 10, 20 + (i * 7) % 10, 2] }).collect()
}

fn tcfg(steps: u64, lr: f64) -> TrainConfig {
    TrainConfig { lr, warmup_steps: 0, max_steps: Some(steps), micro_batch: 8, max_grad_norm: 1.0, progress: false, dev_loss_batches: 0, ..Default::default() }
}

fn run_train(model: &Llama, tr: &harness::model::Trainable, obj: &dyn Objective, cfg: &TrainConfig, seed: u64, data: &[Example]) -> (train::TrainOutcome, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = train::train(
        model,
        tr,
        obj,
        TrainInputs {
            cfg,
            seed,
            total_steps: cfg.max_steps.unwrap(),
            pad_id: 2,
            train: data,
            dev: &[],
            run_dir: dir.path(),
            checkpoint_dir: dir.path().join("ckpt"),
            stop: None,
            reader: None,
            launch: harness::train::graph::StepLaunch::Eager,
            dist: None,
        },
        None,
    )
    .unwrap();
    let csv = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
    (out, csv)
}

#[test]
fn lora_starts_at_base_trains_only_adapters_and_merges() {
    let (base, mut lora, tr) = base_and_lora(5);
    let ids = [1u32, 4, 9, 16, 25, 36];
    assert_eq!(logits_of(&base, &ids), logits_of(&lora, &ids), "B = 0: step 0 equals the base exactly");
    assert!(tr.entries.iter().all(|(n, _)| n.contains("lora_A") || n.contains("lora_B")));
    assert_eq!(tr.entries.len(), 2 * 7 * 2, "A and B on 7 linears x 2 layers");
    assert!(tr.entries[0].0.starts_with("base_model.model.model.layers.0.self_attn.q_proj.lora_A"));
    let before: Vec<Tensor> = tr.entries.iter().map(|(_, v)| v.as_tensor().copy().unwrap()).collect();
    let data = pairs();
    // Two steps: at the first B = 0, so A's gradient is zero and only B moves; then both move.
    run_train(&lora, &tr, &diffusion(true, LossNorm::Masked), &tcfg(2, 1e-2), 0, &data);
    for ((name, v), b) in tr.entries.iter().zip(&before) {
        let diff = (v.as_tensor() - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff > 0.0, "{name} did not change");
    }
    // the base weights did not change: with adapters off the model is the base again
    lora.set_adapters_disabled(true);
    assert_eq!(logits_of(&base, &ids), logits_of(&lora, &ids));
    lora.set_adapters_disabled(false);
    let with_adapter = logits_of(&lora, &ids);
    assert_ne!(with_adapter, logits_of(&base, &ids));
    // merged weight = W + (alpha/r)·B·A
    let merged = lora.merged_weights().unwrap();
    let (qname, qw) = &merged[0];
    assert_eq!(qname, "model.layers.0.self_attn.q_proj.weight");
    let a = tr.entries[0].1.as_tensor();
    let b = tr.entries[1].1.as_tensor();
    let base_q = base.merged_weights().unwrap()[0].1.clone();
    let expect = (base_q + (b.matmul(a).unwrap() * 2.0).unwrap()).unwrap();
    let err = (qw - expect).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(err < 1e-6);
    // the merged model computes what base + adapter computes
    let mut merged_model = lora.clone();
    merged_model.merge_adapters().unwrap();
    let m = logits_of(&merged_model, &ids);
    let maxdiff = m.iter().zip(&with_adapter).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(maxdiff < 1e-4, "merged vs adapter: {maxdiff}");
    // save / load round trip with peft names
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("adapter.safetensors");
    tr.save(&f).unwrap();
    let (fresh, tr2) = random_model(&tiny_config(40), &AdapterConfig { rank: 4, alpha: 8.0, ..Default::default() }, 5, &Device::Cpu).unwrap();
    tr2.load(&f).unwrap();
    assert_eq!(logits_of(&fresh, &ids), with_adapter);
}

// ---------------------------------------------------------------- overfitting and determinism

fn overfit(obj: &dyn Objective, kind: AdapterKind, steps: u64, lr: f64) -> (f64, f64, String) {
    let cfg = tiny_config(40);
    // The frozen random embeddings of a tiny model are too small to separate 40 tokens, so the
    // LoRA runs also train the embeddings (as DiffuLLaMA does).
    let adapter = AdapterConfig { kind, rank: 8, alpha: 16.0, train_embeddings: true, ..Default::default() };
    let (model, tr) = random_model(&cfg, &adapter, 1, &Device::Cpu).unwrap();
    let data = pairs();
    let (l0, _, _) = train::dev_loss(&model, obj, &data, 8, 4, 9, 2, 0).unwrap();
    let (_, csv) = run_train(&model, &tr, obj, &tcfg(steps, lr), 0, &data);
    let (l1, _, _) = train::dev_loss(&model, obj, &data, 8, 4, 9, 2, 0).unwrap();
    (l0, l1, csv)
}

#[test]
fn tiny_model_overfits_eight_pairs_under_both_objectives() {
    let d = diffusion(true, LossNorm::Masked);
    for (name, obj, kind) in [
        ("ar lora", &Autoregressive as &dyn Objective, AdapterKind::Lora),
        ("ddm lora", &d as &dyn Objective, AdapterKind::Lora),
        ("ddm full", &d as &dyn Objective, AdapterKind::Full),
    ] {
        let (l0, l1, _) = overfit(obj, kind, 150, 1e-2);
        println!("{name}: dev loss {l0:.4} -> {l1:.4}");
        assert!(l1 < 0.1 * l0, "{name}: loss fell only from {l0} to {l1}");
    }
}

#[test]
fn same_seed_gives_identical_loss_trace() {
    let mut d = diffusion(true, LossNorm::Masked);
    d.cfg.anneal_steps = 10;
    let (_, _, a) = overfit(&d, AdapterKind::Lora, 12, 5e-3);
    let (_, _, b) = overfit(&d, AdapterKind::Lora, 12, 5e-3);
    let losses = |csv: &str| csv.lines().skip(1).map(|l| l.split(',').nth(3).unwrap().to_string()).collect::<Vec<_>>();
    assert_eq!(losses(&a).len(), 12);
    assert_eq!(losses(&a), losses(&b));
}

#[test]
fn gradient_accumulation_normalises_over_the_whole_batch() {
    // 1 micro-batch of 8 == 2 micro-batches of 4 with accumulation, for AR (deterministic).
    let cfg = tiny_config(40);
    let data = pairs();
    let mk = || random_model(&cfg, &AdapterConfig { rank: 4, alpha: 8.0, ..Default::default() }, 2, &Device::Cpu).unwrap();
    let (m1, t1) = mk();
    let (m2, t2) = mk();
    let c1 = TrainConfig { micro_batch: 8, grad_accum: 1, ..tcfg(1, 1e-2) };
    let c2 = TrainConfig { micro_batch: 4, grad_accum: 2, ..tcfg(1, 1e-2) };
    let (o1, _) = run_train(&m1, &t1, &Autoregressive, &c1, 0, &data);
    let (o2, _) = run_train(&m2, &t2, &Autoregressive, &c2, 0, &data);
    assert!((o1.first_loss - o2.first_loss).abs() < 1e-5, "{} vs {}", o1.first_loss, o2.first_loss);
    let ids = [1u32, 5, 13, 20];
    let (a, b) = (logits_of(&m1, &ids), logits_of(&m2, &ids));
    let maxdiff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(maxdiff < 1e-4, "updates differ by {maxdiff}");
}

// ---------------------------------------------------------------- GGUF

fn tokenizer_metadata() -> Vec<(String, gguf_file::Value)> {
    let p = root().join("tests/fixtures/smollm2-tokenizer.gguf");
    let mut f = std::fs::File::open(&p).unwrap();
    let c = gguf_file::Content::read(&mut f).unwrap();
    c.metadata.into_iter().filter(|(k, _)| k.starts_with("tokenizer.") || k == "general.architecture").collect()
}

/// Write a tiny llama GGUF (vocab of the fixture tokenizer) with the given tensor types; returns
/// the original HF-named f32 weights and the path.
fn write_gguf(dir: &std::path::Path, types: &dyn Fn(&str) -> GgmlDType) -> (HashMap<String, Tensor>, PathBuf) {
    let mut cfg = tiny_config(49152);
    cfg.num_hidden_layers = 1;
    cfg.tie_word_embeddings = false;
    let w = load::random_weights(&cfg, 0.02, 4, DType::F32, &Device::Cpu).unwrap();
    let hf_to_gguf: HashMap<String, String> = w
        .keys()
        .map(|k| {
            let g = (0..1)
                .flat_map(|i| {
                    [
                        ("input_layernorm.weight", "attn_norm.weight"),
                        ("self_attn.q_proj.weight", "attn_q.weight"),
                        ("self_attn.k_proj.weight", "attn_k.weight"),
                        ("self_attn.v_proj.weight", "attn_v.weight"),
                        ("self_attn.o_proj.weight", "attn_output.weight"),
                        ("post_attention_layernorm.weight", "ffn_norm.weight"),
                        ("mlp.gate_proj.weight", "ffn_gate.weight"),
                        ("mlp.up_proj.weight", "ffn_up.weight"),
                        ("mlp.down_proj.weight", "ffn_down.weight"),
                    ]
                    .map(|(h, g)| (format!("model.layers.{i}.{h}"), format!("blk.{i}.{g}")))
                })
                .chain([
                    ("model.embed_tokens.weight".to_string(), "token_embd.weight".to_string()),
                    ("model.norm.weight".to_string(), "output_norm.weight".to_string()),
                    ("lm_head.weight".to_string(), "output.weight".to_string()),
                ])
                .find(|(h, _)| h == k)
                .map(|(_, g)| g)
                .unwrap();
            (k.clone(), g)
        })
        .collect();
    let mut qts = Vec::new();
    for (hf, t) in &w {
        let g = &hf_to_gguf[hf];
        let stored = if hf.ends_with("q_proj.weight") {
            permute_qk(t, 4).unwrap()
        } else if hf.ends_with("k_proj.weight") {
            permute_qk(t, 2).unwrap()
        } else {
            t.clone()
        };
        let ty = if t.rank() == 1 { GgmlDType::F32 } else { types(g) };
        qts.push((g.clone(), QTensor::quantize(&stored, ty).unwrap()));
    }
    let mut md = tokenizer_metadata();
    for (k, v) in [
        ("llama.embedding_length", 32u32),
        ("llama.block_count", 1),
        ("llama.feed_forward_length", 64),
        ("llama.attention.head_count", 4),
        ("llama.attention.head_count_kv", 2),
        ("llama.context_length", 256),
    ] {
        md.push((k.to_string(), gguf_file::Value::U32(v)));
    }
    md.push(("llama.rope.freq_base".into(), gguf_file::Value::F32(10_000.0)));
    md.push(("llama.attention.layer_norm_rms_epsilon".into(), gguf_file::Value::F32(1e-5)));
    let path = dir.join("tiny.gguf");
    let mut f = std::fs::File::create(&path).unwrap();
    let mdr: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let tr: Vec<(&str, &QTensor)> = qts.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut f, &mdr, &tr).unwrap();
    (w, path)
}

#[test]
fn gguf_quantized_weights_dequantize_within_quantization_error() {
    let dir = tempfile::tempdir().unwrap();
    let types = |g: &str| match g {
        "token_embd.weight" => GgmlDType::F16,
        "output.weight" => GgmlDType::Q8_0,
        "blk.0.attn_q.weight" => GgmlDType::Q4_0,
        "blk.0.attn_k.weight" => GgmlDType::Q4_1,
        "blk.0.attn_v.weight" => GgmlDType::Q8_0,
        "blk.0.attn_output.weight" => GgmlDType::F16,
        "blk.0.ffn_gate.weight" => GgmlDType::Q4_1,
        "blk.0.ffn_up.weight" => GgmlDType::Q4_0,
        _ => GgmlDType::F32,
    };
    let (orig, path) = write_gguf(dir.path(), &types);
    let loaded = load::load_gguf(&path, DType::F32, &Device::Cpu, &MaskToken::Auto).unwrap();
    assert_eq!(loaded.cfg.num_hidden_layers, 1);
    assert_eq!(loaded.cfg.vocab_size, 49152);
    assert!(!loaded.cfg.tie_word_embeddings);
    assert_eq!(loaded.tok.as_ref().unwrap().mask_id, 16);
    let gname = |hf: &str| match hf {
        "model.embed_tokens.weight" => GgmlDType::F16,
        "lm_head.weight" => GgmlDType::Q8_0,
        "model.layers.0.self_attn.q_proj.weight" => GgmlDType::Q4_0,
        "model.layers.0.self_attn.k_proj.weight" => GgmlDType::Q4_1,
        "model.layers.0.self_attn.v_proj.weight" => GgmlDType::Q8_0,
        "model.layers.0.self_attn.o_proj.weight" => GgmlDType::F16,
        "model.layers.0.mlp.gate_proj.weight" => GgmlDType::Q4_1,
        "model.layers.0.mlp.up_proj.weight" => GgmlDType::Q4_0,
        _ => GgmlDType::F32,
    };
    for (name, o) in &orig {
        let got = &loaded.tensors[name];
        assert_eq!(got.dims(), o.dims(), "{name}");
        let a: Vec<f32> = o.flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = got.flatten_all().unwrap().to_vec1().unwrap();
        let ty = gname(name);
        // bounds per 32-value block: Q4_0 rounds to d = absmax/8 (error ≤ d/2, ≤ d where the code
        // clamps at 15), Q4_1 to
        // d = (max-min)/15 (≤ d/2), Q8_0 to d = absmax/127 (≤ d/2); F16 relative 2^-11.
        for (ba, bb) in a.chunks(32).zip(b.chunks(32)) {
            let absmax = ba.iter().fold(0f32, |m, x| m.max(x.abs()));
            let (mn, mx) = ba.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &x| (lo.min(x), hi.max(x)));
            let bound = match ty {
                GgmlDType::Q4_0 => absmax / 8.0 * 1.05 + 1e-6, // clamping at the far extreme costs up to d
                GgmlDType::Q4_1 => (mx - mn) / 30.0 * 1.05 + 1e-6,
                GgmlDType::Q8_0 => absmax / 127.0 * 0.6 + 1e-6, // d/2, plus the f16 scale: 127·d·2^-11
                GgmlDType::F16 => absmax / 2048.0 + 1e-7,
                _ => 0.0,
            };
            for (x, y) in ba.iter().zip(bb) {
                assert!((x - y).abs() <= bound, "{name} {ty:?}: {x} vs {y} (bound {bound})");
            }
        }
    }
}

#[test]
fn gguf_f32_model_equals_the_original_model() {
    // An all-F32 GGUF (q/k permuted the llama.cpp way) loads back to exactly the original model:
    // names, the q/k un-permutation and the config all check out through the logits.
    let dir = tempfile::tempdir().unwrap();
    let (orig, path) = write_gguf(dir.path(), &|_| GgmlDType::F32);
    let loaded = load::load_gguf(&path, DType::F32, &Device::Cpu, &MaskToken::Auto).unwrap();
    let none = AdapterConfig { targets: vec![], ..Default::default() };
    let vb = candle_nn::VarBuilder::from_tensors(loaded.tensors, DType::F32, &Device::Cpu);
    let (m1, _) = Llama::load(vb, &loaded.cfg, &BuildOpts { adapter: &none, seed: 0, layer_path: LayerPath::Fused, time_embedding: false }).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(orig, DType::F32, &Device::Cpu);
    let (m2, _) = Llama::load(vb, &loaded.cfg, &BuildOpts { adapter: &none, seed: 0, layer_path: LayerPath::Fused, time_embedding: false }).unwrap();
    let ids = [1u32, 200, 3000, 45000, 7];
    assert_eq!(logits_of(&m1, &ids), logits_of(&m2, &ids));
}

// ---------------------------------------------------------------- PyTorch cross-check

#[test]
fn torch_cross_check() {
    // Pins from tests/scripts/torch_crosscheck.py (torch 2.15.0, transformers 5.24.0), which also
    // wrote the fixture tests/fixtures/tiny-llama/ (config.json + model.safetensors).
    const DDM_SHIFT: f64 = 7.822536499473421;
    const DDM_NOSHIFT: f64 = 8.956690070264225;
    const AR: f64 = 4.233227066904919;
    // `harness selfcheck` runs the same check on a GPU: its pins must be these.
    assert_eq!(harness::selfcheck::TORCH_PINS, [("ddm_shift", DDM_SHIFT), ("ddm_noshift", DDM_NOSHIFT), ("ar", AR)]);
    let dir = root().join("tests/fixtures/tiny-llama");
    let loaded = load::load_hf_folder(&dir, DType::F32, &Device::Cpu, &MaskToken::Id(63)).unwrap();
    assert!(loaded.tok.is_none());
    let none = AdapterConfig { targets: vec![], ..Default::default() };
    let vb = candle_nn::VarBuilder::from_tensors(loaded.tensors, DType::F32, &Device::Cpu);
    let (model, _) = Llama::load(vb, &loaded.cfg, &BuildOpts { adapter: &none, seed: 0, layer_path: LayerPath::Fused, time_embedding: false }).unwrap();
    let (batch, masked) = harness::selfcheck::fixture_batch();
    for (shift, want) in [(true, DDM_SHIFT), (false, DDM_NOSHIFT)] {
        let mut d = diffusion(shift, LossNorm::Masked);
        d.mask_id = 63;
        let p = d.prepare_with(&batch, &[0.4, 0.75], &masked, 0).unwrap();
        let got = objective::scored_loss(&model, &p, p.denom, 0, &Fwd::default()).unwrap().read().unwrap().loss;
        assert!((got - want).abs() < 1e-4, "ddm shift={shift}: {got} vs torch {want}");
        // the training path (differentiable kernels) gives the same number
        let got_t = objective::scored_loss(&model, &p, p.denom, 0, &Fwd { train: true, ..Default::default() }).unwrap().read().unwrap().loss;
        assert!((got_t - want).abs() < 1e-4, "train path, shift={shift}: {got_t} vs {want}");
    }
    let p = Autoregressive.prepare(&batch, 0, 0, 0).unwrap();
    let got = objective::scored_loss(&model, &p, p.denom, 0, &Fwd::default()).unwrap().read().unwrap().loss;
    assert!((got - AR).abs() < 1e-4, "ar: {got} vs torch {AR}");
}

// ---------------------------------------------------------------- fused kernels' backward

#[test]
fn hand_written_backward_pieces_match_autograd_of_the_composites() {
    use candle_core::Var;
    use harness::kernels::fused as kernels;
    use harness::model::ops;
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1.0, (2, 3, 5, 8), &dev).unwrap();
    let grad = |y: Tensor| -> Vec<f32> {
        let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
        g.get(x.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap()
    };
    let flat = |t: Tensor| -> Vec<f32> { t.flatten_all().unwrap().to_vec1().unwrap() };
    let close = |a: &[f32], b: &[f32], what: &str| {
        assert_eq!(a.len(), b.len(), "{what}");
        let m = a.iter().zip(b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
        assert!(m < 1e-4, "{what}: max gradient difference {m}");
    };
    // softmax: dS = P ⊙ (g − Σ g⊙P)
    let p = candle_nn::ops::softmax_last_dim(x.as_tensor()).unwrap();
    let a = flat(kernels::softmax_bwd(&p, &r).unwrap());
    let b = grad(candle_nn::ops::softmax(x.as_tensor(), candle_core::D::Minus1).unwrap());
    close(&a, &b, "softmax");
    // rope over the head split: the inverse rotation, moved to (B, L, H·Dh)
    let cos = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
    let sin = Tensor::randn(0f32, 1.0, (5, 4), &dev).unwrap();
    let a = flat(ops::rope_heads_bwd(&r, &cos, &sin.neg().unwrap()).unwrap());
    let g = (candle_nn::rotary_emb::rope_slow(x.as_tensor(), &cos, &sin).unwrap() * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let b = flat(g.get(x.as_tensor()).unwrap().transpose(1, 2).unwrap().contiguous().unwrap());
    close(&a, &b, "rope");
    // rms norm, frozen weight: the input gradient
    let w = Tensor::randn(1f32, 0.5, 8, &dev).unwrap();
    let a = flat(kernels::rms_norm_bwd(x.as_tensor(), &w, &r, 1e-5).unwrap());
    let b = grad(candle_nn::ops::rms_norm_slow(x.as_tensor(), &w, 1e-5).unwrap());
    close(&a, &b, "rms_norm");
    // rms norm, trainable weight: both gradients
    let wv = Var::from_tensor(&w).unwrap();
    let y2 = candle_nn::ops::rms_norm_slow(x.as_tensor(), wv.as_tensor(), 1e-5).unwrap();
    let g2 = (y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx: Vec<f32> = flat(g2.get(x.as_tensor()).unwrap().clone());
    close(&flat(kernels::rms_norm_bwd(x.as_tensor(), &w, &r, 1e-5).unwrap()), &dx, "rms_norm trainable: dx");
    let dw: Vec<f32> = flat(g2.get(wv.as_tensor()).unwrap().clone());
    close(&flat(ops::rms_norm_weight_grad(x.as_tensor(), &r, 1e-5).unwrap()), &dw, "rms_norm trainable: dw");
}

/// Max |a − b| over two tensors' elements.
fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_dtype(DType::F32).unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter().zip(&b).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max)
}

#[test]
fn recomputing_attention_matches_autograd_attention_values_and_gradients() {
    use candle_core::Var;
    use harness::model::attention::{attention_bwd, attention_fwd, attention_reference};
    let dev = Device::Cpu;
    // GQA: 6 query heads share 2 key/value heads; L = 5 queries over T = 7 keys; a padding bias
    let q = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 6, 5, 8), &dev).unwrap()).unwrap();
    let k = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 2, 7, 8), &dev).unwrap()).unwrap();
    let v = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 2, 7, 8), &dev).unwrap()).unwrap();
    let mut bias = vec![0f32; 2 * 5 * 7];
    for i in 0..5 {
        bias[35 + i * 7 + 6] = mask::MASKED_BIAS; // row 1 cannot see key 6
        bias[35 + i * 7 + 5] = mask::MASKED_BIAS;
    }
    let bias = Tensor::from_vec(bias, (2, 1, 5, 7), &dev).unwrap();
    let r = Tensor::randn(0f32, 1.0, (2, 5, 48), &dev).unwrap();
    for b in [None, Some(&bias)] {
        let (y1, saved) = attention_fwd(q.as_tensor(), k.as_tensor(), v.as_tensor(), b).unwrap();
        assert!(!saved.is_flash(), "the CPU runs the composite attention");
        let y2 = attention_reference(q.as_tensor(), k.as_tensor(), v.as_tensor(), b).unwrap();
        assert!(max_diff(&y1, &y2) < 1e-5, "values differ by {}", max_diff(&y1, &y2));
        let (dq, dk1, dv) = attention_bwd(q.as_tensor(), k.as_tensor(), v.as_tensor(), b, &saved, &r).unwrap();
        let g2 = (y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, t, d1) in [("q", &q, &dq), ("k", &k, &dk1), ("v", &v, &dv)] {
            let d = max_diff(d1, g2.get(t.as_tensor()).unwrap());
            assert!(d < 1e-4, "d{name} differs by {d} (bias {})", b.is_some());
        }
        // the masked keys get no gradient from the padded row
        if b.is_some() {
            let dk: Vec<f32> = dk1.get(1).unwrap().narrow(1, 5, 2).unwrap().flatten_all().unwrap().to_vec1().unwrap();
            assert!(dk.iter().all(|x| x.abs() < 1e-12), "masked keys got a gradient: {dk:?}");
        }
    }
}

#[test]
fn fused_cross_entropy_matches_composite_values_hits_and_gradients() {
    use candle_core::Var;
    use harness::kernels::ce::{cross_entropy, cross_entropy_reference};
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 2.0, (6, 11), &dev).unwrap()).unwrap();
    let t = Tensor::new(&[0u32, 10, 3, 3, 7, 1], &dev).unwrap();
    let w = Tensor::new(&[1f32, 0.5, 2.0, 1.0, 3.0, 0.25], &dev).unwrap();
    let (ce, hits) = cross_entropy(x.as_tensor(), &t).unwrap();
    let ce_ref = cross_entropy_reference(x.as_tensor(), &t).unwrap();
    assert!(max_diff(&ce, &ce_ref) < 1e-5);
    // hits: the target's logit is strictly larger than every other logit of the row
    let xv: Vec<Vec<f32>> = x.as_tensor().to_vec2().unwrap();
    let tv: Vec<u32> = t.to_vec1().unwrap();
    let want: Vec<f32> = xv
        .iter()
        .zip(&tv)
        .map(|(row, &ti)| if row.iter().enumerate().all(|(j, &v)| j == ti as usize || v < row[ti as usize]) { 1.0 } else { 0.0 })
        .collect();
    assert_eq!(hits.to_vec1::<f32>().unwrap(), want);
    let g1 = (ce * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let g2 = (ce_ref * &w).unwrap().sum_all().unwrap().backward().unwrap();
    let d = max_diff(g1.get(x.as_tensor()).unwrap(), g2.get(x.as_tensor()).unwrap());
    assert!(d < 1e-5, "gradients differ by {d}");
    // each row's gradient sums to zero (softmax minus one-hot)
    let rows: Vec<f32> = g1.get(x.as_tensor()).unwrap().sum(1).unwrap().to_vec1().unwrap();
    assert!(rows.iter().all(|s| s.abs() < 1e-5), "{rows:?}");
}

#[test]
fn a_tie_for_the_largest_logit_is_a_miss_on_every_cpu_path() {
    use harness::kernels::ce::cross_entropy;
    use harness::kernels::fused::{ce_fwd, ce_fwd_composite};
    let dev = Device::Cpu;
    // rows: all equal (a dead model) | target tied with another at the max | target the unique
    // max | target below the max | all equal in bf16
    let x = Tensor::new(
        &[[0.5f32, 0.5, 0.5, 0.5], [1.0, 3.0, 3.0, 0.0], [1.0, 3.0, 2.0, 0.0], [1.0, 3.0, 2.0, 0.0], [-2.0, -2.0, -2.0, -2.0]],
        &dev,
    )
    .unwrap();
    let t = Tensor::new(&[2u32, 1, 1, 0, 3], &dev).unwrap();
    let want = vec![0f32, 0.0, 1.0, 0.0, 0.0];
    let ln4 = 4f32.ln();
    for dtype in [DType::F32, DType::BF16] {
        let xd = x.to_dtype(dtype).unwrap();
        let (_, ce_c, hits_c) = ce_fwd_composite(&xd, &t).unwrap();
        assert_eq!(hits_c.to_vec1::<f32>().unwrap(), want, "composite, {dtype:?}");
        let (_, ce_d, hits_d) = ce_fwd(&xd, &t).unwrap();
        assert_eq!(hits_d.to_vec1::<f32>().unwrap(), want, "dispatching ce_fwd, {dtype:?}");
        assert_eq!(ce_c.to_vec1::<f32>().unwrap(), ce_d.to_vec1::<f32>().unwrap());
        let (ce, hits) = cross_entropy(&xd, &t).unwrap();
        assert_eq!(hits.to_vec1::<f32>().unwrap(), want, "training cross-entropy, {dtype:?}");
        let ce: Vec<f32> = ce.to_vec1().unwrap();
        // a uniform row reads CE = ln V and accuracy 0, not 1
        assert!((ce[0] - ln4).abs() < 1e-6 && (ce[4] - ln4).abs() < 1e-6, "{ce:?}");
    }
    // a NaN target logit is never a hit
    let xn = Tensor::new(&[[f32::NAN, 0.0, 0.0]], &dev).unwrap();
    let (_, _, hits) = ce_fwd_composite(&xn, &Tensor::new(&[0u32], &dev).unwrap()).unwrap();
    assert_eq!(hits.to_vec1::<f32>().unwrap(), vec![0f32]);
}

#[test]
fn frozen_linear_gives_the_matmul_and_only_an_input_gradient() {
    use candle_core::Var;
    use harness::model::ops::frozen_linear;
    let dev = Device::Cpu;
    let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (4, 6), &dev).unwrap()).unwrap();
    let w = Tensor::randn(0f32, 1.0, (3, 6), &dev).unwrap();
    let y = frozen_linear(x.as_tensor(), &w).unwrap();
    let want = x.as_tensor().matmul(&w.t().unwrap()).unwrap();
    assert!(max_diff(&y, &want) < 1e-6);
    let r = Tensor::randn(0f32, 1.0, (4, 3), &dev).unwrap();
    let g = (y * &r).unwrap().sum_all().unwrap().backward().unwrap();
    let dx = g.get(x.as_tensor()).unwrap();
    assert!(max_diff(dx, &r.matmul(&w).unwrap()) < 1e-5);
    assert!(g.get(&w).is_none(), "the frozen weight got a gradient");
}

#[test]
fn adamw_step_matches_the_update_rule_by_hand_with_clipping() {
    use harness::train::optim::{AdamW, AdamWParams, GradAccum};
    let dev = Device::Cpu;
    let p = candle_core::Var::from_tensor(&Tensor::new(&[1.0f32, -2.0, 0.5], &dev).unwrap()).unwrap();
    let mut tr = harness::model::Trainable::default();
    tr.push("p".into(), p.clone());
    let hp = AdamWParams { beta1: 0.9, beta2: 0.99, eps: 1e-8, weight_decay: 0.1 };
    let mut opt = AdamW::new(&tr, hp).unwrap();
    let mut acc = GradAccum::new(&tr);
    // loss = Σ c·p, gradient c = (3, 4, 0): norm 5, clipped to 1
    let c = Tensor::new(&[3.0f32, 4.0, 0.0], &dev).unwrap();
    let g = (p.as_tensor() * &c).unwrap().sum_all().unwrap().backward().unwrap();
    acc.add(&g).unwrap();
    let (grads, norm) = acc.take_clipped(1.0).unwrap();
    assert!((norm - 5.0).abs() < 1e-6);
    let lr = 0.1;
    opt.step(&grads, lr).unwrap();
    let got: Vec<f32> = p.as_tensor().to_vec1().unwrap();
    // by hand: g = c/5·(1/(1+2e-7)); m̂ = g, v̂ = g², update = g/(|g| + eps) ≈ sign(g)
    let theta = [1.0f64, -2.0, 0.5];
    let gc = [0.6f64, 0.8, 0.0].map(|x| x * 5.0 / (5.0 + 1e-6));
    for i in 0..3 {
        let upd = if gc[i] == 0.0 { 0.0 } else { gc[i] / (gc[i].abs() + 1e-8) };
        let want = theta[i] * (1.0 - lr * 0.1) - lr * upd;
        assert!((got[i] as f64 - want).abs() < 1e-6, "p[{i}] = {} want {want}", got[i]);
    }
}

#[test]
fn fused_linear_rows_match_the_autograd_linear() {
    use candle_core::Var;
    use harness::model::linear::Linear;
    use harness::model::params::GradSink;
    let dev = Device::Cpu;
    let w = Tensor::randn(0f32, 1.0, (5, 6), &dev).unwrap();
    let r = Tensor::randn(0f32, 1.0, (2, 3, 5), &dev).unwrap();
    for (kind, dropout) in [(AdapterKind::Lora, 0.0), (AdapterKind::Lora, 0.3), (AdapterKind::Full, 0.0)] {
        let cfg = AdapterConfig { kind, rank: 2, alpha: 4.0, dropout, targets: vec!["q_proj".into()], ..Default::default() };
        let mut tr = harness::model::Trainable::default();
        let lin = Linear::new(w.clone(), "model.layers.0.self_attn.q_proj", &cfg, 1, 3, &mut tr).unwrap();
        if let Some(l) = &lin.lora {
            l.b.set(&Tensor::randn(0f32, 1.0, (5, 2), &dev).unwrap()).unwrap(); // B ≠ 0
        }
        let x = Var::from_tensor(&Tensor::randn(0f32, 1.0, (2, 3, 6), &dev).unwrap()).unwrap();
        let ctx = Fwd { train: true, seed: 4, step: 2, micro: 1 };
        // the fused rows, outside the graph, with the backward called by hand
        let sink = GradSink::default();
        let (y1, saved) = lin.fwd_rows(&x.as_tensor().reshape((6, 6)).unwrap(), &ctx).unwrap();
        let dx1 = lin.bwd_rows(&saved, &r.reshape((6, 5)).unwrap(), &sink).unwrap();
        // the plain forward through autograd
        let y2 = lin.forward(x.as_tensor(), &ctx).unwrap();
        assert_eq!(y2.dims(), &[2, 3, 5]);
        let y1 = y1.reshape((2, 3, 5)).unwrap();
        assert!(max_diff(&y1, &y2) < 1e-5, "{kind:?} p={dropout}: values differ by {}", max_diff(&y1, &y2));
        if dropout > 0.0 {
            let plain = lin.forward(x.as_tensor(), &Fwd::default()).unwrap();
            assert!(max_diff(&plain, &y2) > 1e-3, "dropout changed nothing");
        }
        let g2 = (y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
        let d = max_diff(&dx1.reshape((2, 3, 6)).unwrap(), g2.get(x.as_tensor()).unwrap());
        assert!(d < 1e-4, "{kind:?} p={dropout}: gradient of x differs by {d}");
        assert_eq!(tr.entries.len(), if kind == AdapterKind::Lora { 2 } else { 1 });
        for (name, v) in &tr.entries {
            let d = max_diff(&sink.take(v.as_tensor()).unwrap(), g2.get(v.as_tensor()).unwrap());
            assert!(d < 1e-4, "{kind:?} p={dropout}: gradient of {name} differs by {d}");
        }
    }
}

#[test]
fn head_split_rope_matches_reshape_transpose_and_rope() {
    use harness::model::ops::rope_heads_fwd;
    let dev = Device::Cpu;
    let (b, l, h, dh) = (2, 5, 3, 8);
    let x = Tensor::randn(0f32, 1.0, (b, l, h * dh), &dev).unwrap();
    let cos = Tensor::randn(0f32, 1.0, (l, dh / 2), &dev).unwrap();
    let sin = Tensor::randn(0f32, 1.0, (l, dh / 2), &dev).unwrap();
    let split = x.reshape((b, l, h, dh)).unwrap().transpose(1, 2).unwrap().contiguous().unwrap();
    let y1 = rope_heads_fwd(&x, h, &cos, &sin).unwrap();
    let y2 = candle_nn::rotary_emb::rope_slow(&split, &cos, &sin).unwrap();
    assert_eq!(y1.dims(), &[b, h, l, dh]);
    assert!(max_diff(&y1, &y2) < 1e-5, "values differ by {}", max_diff(&y1, &y2));
}

#[test]
fn swiglu_kernels_match_silu_times_up_with_gradients() {
    use candle_core::Var;
    use harness::kernels::fused::{swiglu, swiglu_bwd};
    let dev = Device::Cpu;
    let g = Var::from_tensor(&Tensor::randn(0f32, 2.0, (3, 7), &dev).unwrap()).unwrap();
    let u = Var::from_tensor(&Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap()).unwrap();
    let r = Tensor::randn(0f32, 1.0, (3, 7), &dev).unwrap();
    let y1 = swiglu(g.as_tensor(), u.as_tensor()).unwrap();
    let y2 = (g.as_tensor().silu().unwrap() * u.as_tensor()).unwrap();
    assert!(max_diff(&y1, &y2) < 1e-6);
    let (dg, du) = swiglu_bwd(g.as_tensor(), u.as_tensor(), &r).unwrap();
    let g2 = (y2 * &r).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, t, d1) in [("g", &g, &dg), ("u", &u, &du)] {
        let d = max_diff(d1, g2.get(t.as_tensor()).unwrap());
        assert!(d < 1e-5, "d{name} differs by {d}");
    }
}

#[test]
fn fused_decoder_layers_give_the_reference_gradients() {
    use harness::train::optim::GradAccum;
    let cfg = tiny_config(40);
    let data = pairs();
    let refs: Vec<&Example> = data.iter().take(5).collect();
    let batch = Batch::collate(&refs, 0); // rows of different lengths: padding bias under AR
    let mut annealed = diffusion(true, LossNorm::Masked);
    annealed.cfg.anneal_steps = 10; // at step 4: each future key visible with p = 0.5
    let lora = AdapterConfig { rank: 4, alpha: 8.0, ..Default::default() };
    // LoRA with dropout on the adapter inputs and trained embeddings (so the first layer's input
    // gradient is checked too), and full fine-tuning (embeddings train: the same)
    let adapters = [lora.clone(), AdapterConfig { dropout: 0.25, train_embeddings: true, ..lora }, AdapterConfig { kind: AdapterKind::Full, ..Default::default() }];
    for adapter in adapters {
        let (mut model, tr) = random_model(&cfg, &adapter, 5, &Device::Cpu).unwrap();
        // B ≠ 0 so that every LoRA tensor gets a non-zero gradient
        for (name, v) in &tr.entries {
            if name.ends_with("lora_B.weight") {
                v.set(&Tensor::randn(0f32, 0.3, v.dims(), &Device::Cpu).unwrap()).unwrap();
            }
        }
        let what = format!("{:?} dropout={} embeddings={}", adapter.kind, adapter.dropout, adapter.train_embeddings);
        let mut partial_seen = false;
        for obj in [&diffusion(true, LossNorm::Masked) as &dyn Objective, &annealed, &Autoregressive] {
            let p = obj.prepare(&batch, 4, 0, 9).unwrap();
            if let AttentionMode::Annealed { .. } = p.attention.at_step(p.step) {
                partial_seen = true;
                // the annealed mask is partial: some future keys hidden, some visible
                let vis = mask::visibility(p.attention, p.l, p.step, 9);
                let future: Vec<bool> = (0..p.l).flat_map(|i| (i + 1..p.l).map(move |j| (i, j))).map(|(i, j)| vis[i * p.l + j]).collect();
                assert!(future.iter().any(|&v| v) && future.iter().any(|&v| !v), "annealed mask is not partial");
            }
            let ctx = Fwd { train: true, seed: 9, step: 4, micro: 0 };
            let mut runs = Vec::new();
            for path in [LayerPath::Fused, LayerPath::Reference] {
                model.set_layer_path(path);
                let parts = objective::scored_loss(&model, &p, p.denom, 9, &ctx).unwrap();
                let g = parts.loss.backward().unwrap();
                // fused: the layers' parameter gradients arrive through the sink, not the GradStore
                let (_, v0) = tr.entries.iter().find(|(n, _)| n.contains("layers.0.")).unwrap();
                assert_eq!(g.get(v0.as_tensor()).is_none(), path == LayerPath::Fused, "{what} {path:?}");
                let mut acc = GradAccum::new(&tr);
                acc.add(&g).unwrap();
                let (grads, norm) = acc.take_clipped(0.0).unwrap();
                runs.push((parts.read().unwrap().loss, grads.tensors, norm));
            }
            let (l1, g1, n1) = &runs[0];
            let (l2, g2, n2) = &runs[1];
            assert!((l1 - l2).abs() < 1e-5, "{what} {}: loss {l1} vs {l2}", obj.name());
            assert!(*n2 > 0.0 && (n1 - n2).abs() < 1e-4 * n2, "{what} {}: grad norm {n1} vs {n2}", obj.name());
            let mut input_checked = false;
            for ((name, _), (a, b)) in tr.entries.iter().zip(g1.iter().zip(g2)) {
                let scale = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap().max(1e-3);
                let d = max_diff(a, b);
                assert!(d <= 1e-4 * scale.max(1.0), "{what} {}: {name} differs by {d} (scale {scale})", obj.name());
                // the embedding's gradient is the first layer's input gradient, gathered per token
                if name.contains("embed_tokens") {
                    assert!(scale > 1e-3, "{what}: no input gradient");
                    input_checked = true;
                }
            }
            assert_eq!(input_checked, adapter.train_embeddings || adapter.kind == AdapterKind::Full, "{what}");
        }
        assert!(partial_seen, "no objective ran with a partial annealed mask");
    }
}

#[test]
fn every_sft_variant_trains_a_tiny_model() {
    use harness::model::mask::AnnealSchedule;
    use harness::objective::LossWeight;
    let data = pairs();
    let d = DiffusionConfig::default();
    let variants: Vec<(&str, DiffusionConfig, usize)> = vec![
        ("band 0.3-0.8", DiffusionConfig { t_min: 0.3, t_max: 0.8, ..d.clone() }, 1),
        ("antithetic over 2 micro-batches", DiffusionConfig { t_sampling: TSampling::Antithetic, ..d.clone() }, 2),
        ("uniform weight", DiffusionConfig { weight: LossWeight::Uniform, ..d.clone() }, 1),
        ("eos weight 0.2", DiffusionConfig { eos_weight: 0.2, ..d.clone() }, 1),
        ("window annealing", DiffusionConfig { anneal: AnnealSchedule::Window, anneal_steps: 3, ..d.clone() }, 1),
        ("switch annealing", DiffusionConfig { anneal: AnnealSchedule::Switch, anneal_steps: 2, ..d.clone() }, 1),
        ("complementary", DiffusionConfig { complementary: true, ..d.clone() }, 1),
        ("blocks of 2", DiffusionConfig { block_size: 2, ..d.clone() }, 1),
        ("packed to 16 columns", d.clone(), 1),
    ];
    for (name, cfg, accum) in variants {
        let (_, lora, tr) = base_and_lora(5);
        let obj = harness::objective::build_for_training(&harness::config::ObjectiveConfig::Diffusion(cfg), 31, accum);
        let pack_to = if name.starts_with("packed") { 16 } else { 0 };
        let tc = TrainConfig { grad_accum: accum, pack_to, ..tcfg(3, 1e-2) };
        let (out, csv) = run_train(&lora, &tr, obj.as_ref(), &tc, 0, &data);
        assert!(out.final_loss.is_finite() && out.final_loss > 0.0, "{name}: {out:?}");
        assert_eq!(csv.lines().count(), 4, "{name}: a metrics row per step");
    }
}

// ---------------------------------------------------------------- data parallel (train::dist)

#[test]
fn two_ranks_shares_with_the_global_normaliser_sum_to_the_one_process_gradients() {
    // What a 2-rank step computes (harness::train::dist): each rank's rows of the global
    // micro-batch, its loss divided by the normaliser summed over both ranks, then the gradients
    // summed. That is the gradient of the one-process batch of all the rows.
    use harness::train::dist::Dist;
    use harness::train::optim::GradAccum;
    let cfg = tiny_config(40);
    let (model, tr) = random_model(&cfg, &AdapterConfig { rank: 4, alpha: 8.0, ..Default::default() }, 3, &Device::Cpu).unwrap();
    for (name, v) in &tr.entries {
        if name.ends_with("lora_B.weight") {
            v.set(&Tensor::randn(0f32, 0.3, v.dims(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    // responses of different lengths, so the per-rank normalisers differ
    let data: Vec<Example> = (0..4u32).map(|i| Example { prompt: vec![1, 3 + i, 12], response: (0..(2 + i)).map(|k| 20 + k).chain([2]).collect() }).collect();
    let ctx = Fwd { train: true, seed: 0, step: 0, micro: 0 };
    let grads = |rows: &[&Example], denom: f64| {
        let p = Autoregressive.prepare(&Batch::collate(rows, 0), 0, 0, 0).unwrap();
        let parts = objective::scored_loss(&model, &p, denom, 0, &ctx).unwrap();
        let mut acc = GradAccum::new(&tr);
        acc.add(&parts.loss.backward().unwrap()).unwrap();
        (acc.take_sums().unwrap(), parts.read().unwrap().loss, p.denom)
    };
    let all: Vec<&Example> = data.iter().collect();
    let full_denom = Autoregressive.prepare(&Batch::collate(&all, 0), 0, 0, 0).unwrap().denom;
    let (g_full, l_full, _) = grads(&all, full_denom);
    // each rank's share of the global batch (Dist::share), with micro-batch 2 per rank
    let ranks: Vec<Vec<&Example>> = (0..2).map(|r| all[Dist::rows_of(r, all.len(), 2)].to_vec()).collect();
    assert_eq!(ranks[0].len() + ranks[1].len(), 4);
    let denoms: Vec<f64> = ranks.iter().map(|r| Autoregressive.prepare(&Batch::collate(r, 0), 0, 0, 0).unwrap().denom).collect();
    assert_ne!(denoms[0], denoms[1]);
    assert_eq!(denoms[0] + denoms[1], full_denom);
    let parts: Vec<_> = ranks.iter().map(|r| grads(r, denoms[0] + denoms[1])).collect();
    assert!((parts[0].1 + parts[1].1 - l_full).abs() < 1e-5, "{} + {} vs {l_full}", parts[0].1, parts[1].1);
    for (i, g) in g_full.iter().enumerate() {
        let sum = (&parts[0].0[i] + &parts[1].0[i]).unwrap();
        let d = (g - &sum).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "parameter {i}: {d}");
    }
    // a single process: the whole batch is its share, sums pass through unchanged
    let one = Dist::single();
    assert_eq!(one.share(16, 16), 0..16);
    assert_eq!(one.sum_scalars(&[1.5, 2.0], &Device::Cpu).unwrap(), vec![1.5, 2.0]);
    assert!(one.same_everywhere(3.0, &Device::Cpu).unwrap());
}
