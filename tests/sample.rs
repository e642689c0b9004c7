//! Tests of `harness::sample`: diffusion iterative denoising on hand-set logit functions (commit
//! order per strategy, blocks, shift, eos, batching, seeding) and AR decoding on a tiny random model
//! (batched KV-cache decoding vs one prompt at a time vs full recompute), and the decode bench rows.

use candle_core::{Device, Tensor};
use harness::model::load::{random_model, tiny_config};
use harness::model::mask::ReadAttention;
use harness::model::{AdapterConfig, AttentionMode, Llama};
use harness::rng::{rng_for, Purpose};
use harness::sample::diffusion::{plan, BlockPlan};
use harness::sample::{greedy_rows, pick_token, ArSampler, CacheKind, Denoiser, DiffusionOutput, DiffusionSampler, ModelDenoiser, PrefixCache, Strategy, StrategyKind};
use std::cell::RefCell;

const V: usize = 200;
const MASK: u32 = 199;
const EOS: u32 = 198;

/// A denoiser whose logits come from a function of (current row, output position): that function
/// returns (token, logit); the token gets the logit, every other token 0. Records every batch.
struct FnDen<F> {
    f: F,
    seen: RefCell<Vec<Vec<Vec<u32>>>>,
}

impl<F: Fn(&[u32], usize) -> (u32, f32)> FnDen<F> {
    fn new(f: F) -> Self {
        Self { f, seen: RefCell::new(Vec::new()) }
    }
    fn calls(&self) -> usize {
        self.seen.borrow().len()
    }
}

impl<F: Fn(&[u32], usize) -> (u32, f32)> Denoiser for FnDen<F> {
    fn logits(&self, ids: &Tensor) -> harness::Result<Tensor> {
        let rows = ids.to_vec2::<u32>()?;
        let (b, l) = ids.dims2()?;
        let mut data = vec![0f32; b * l * V];
        for (bi, row) in rows.iter().enumerate() {
            for p in 0..l {
                let (t, c) = (self.f)(row, p);
                data[(bi * l + p) * V + t as usize] = c;
            }
        }
        self.seen.borrow_mut().push(rows);
        Ok(Tensor::from_vec(data, (b, l, V), &Device::Cpu)?) // (B, L, V)
    }
    fn vocab_size(&self) -> usize {
        V
    }
}

/// Canvas offset c of output position p is `p - plen` (unshifted); the table gives (token, logit)
/// per canvas offset; prompt positions predict token 1 weakly.
fn table(plen: usize, cells: Vec<(u32, f32)>) -> impl Fn(&[u32], usize) -> (u32, f32) {
    move |_row: &[u32], p: usize| if p >= plen { cells[p - plen] } else { (1, 0.5) }
}

/// Model probability of a token with logit c against V-1 zeros.
fn conf(c: f32) -> f64 {
    let e = (c as f64).exp();
    e / (e + (V - 1) as f64)
}

fn sampler(n: usize, steps: usize) -> DiffusionSampler {
    DiffusionSampler::new(n, steps, MASK, EOS)
}

/// Every forward pass saw the prompt unchanged, and a committed canvas token never changed.
fn assert_prompt_kept_and_monotone(seen: &[Vec<Vec<u32>>], prompt: &[u32]) {
    let mut prev: Option<Vec<u32>> = None;
    for batch in seen {
        assert_eq!(batch.len(), 1, "one item per forward pass expected here");
        let row = &batch[0];
        assert_eq!(&row[..prompt.len()], prompt, "prompt changed during decoding");
        if let Some(p) = &prev {
            for (j, (&a, &b)) in p.iter().zip(row).enumerate() {
                if a != MASK {
                    assert_eq!(a, b, "committed position {j} changed");
                }
            }
        }
        prev = Some(row.clone());
    }
}

#[test]
fn schedule_follows_llada() {
    // One block: N/T each, remainder to the first steps.
    assert_eq!(plan(10, 4, None).unwrap(), vec![BlockPlan { start: 0, len: 10, commits: vec![3, 3, 2, 2] }]);
    // More steps than tokens: one per step, no empty steps.
    assert_eq!(plan(3, 8, None).unwrap()[0].commits, vec![1, 1, 1]);
    // Blocks 4, 4, 2 with 7 steps: 3, 2, 2 steps per block.
    let p = plan(10, 7, Some(4)).unwrap();
    assert_eq!(p.iter().map(|b| (b.start, b.len)).collect::<Vec<_>>(), vec![(0, 4), (4, 4), (8, 2)]);
    assert_eq!(p.iter().map(|b| b.commits.clone()).collect::<Vec<_>>(), vec![vec![2, 1, 1], vec![2, 2], vec![1, 1]]);
    assert!(plan(10, 0, None).is_err());
    assert!(plan(10, 2, Some(4)).is_err(), "fewer steps than blocks must fail");
    assert!(plan(10, 4, Some(0)).is_err());
    assert!(plan(0, 4, None).unwrap().is_empty());
}

#[test]
fn low_confidence_commits_most_confident_first() {
    let prompt = vec![5u32, 6, 7];
    let logits = [1.0, 5.0, 3.0, 8.0, 2.0, 7.0, 4.0, 6.0];
    let cells: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &c)| (10 + i as u32, c)).collect();
    let d = FnDen::new(table(3, cells.clone()));
    let out = sampler(8, 8).generate_one(&d, &prompt, 0).unwrap();
    let expect: Vec<Vec<usize>> = [3, 5, 7, 1, 6, 2, 4, 0].iter().map(|&c| vec![3 + c]).collect();
    assert_eq!(out.order, expect);
    assert_eq!(out.tokens, (10..18).collect::<Vec<u32>>());
    assert_eq!(out.nfe, 8);
    assert!(!out.hit_eos);
    assert_eq!(&out.sequence[..3], &prompt[..]);
    assert_prompt_kept_and_monotone(&d.seen.borrow(), &prompt);

    // Four steps: two per step, in confidence order.
    let d = FnDen::new(table(3, cells));
    let out = sampler(8, 4).generate_one(&d, &prompt, 0).unwrap();
    assert_eq!(out.order, vec![vec![6, 8], vec![10, 4], vec![9, 5], vec![7, 3]]);
    assert_eq!(out.nfe, 4);
    assert_eq!(d.calls(), 4);
}

#[test]
fn low_confidence_follows_logits_that_depend_on_current_ids() {
    // Confidence is high only where the left neighbour is already decoded (prompt or committed),
    // otherwise it rises to the right: the sampler must decode left to right.
    let plen = 4;
    let f = move |row: &[u32], p: usize| {
        if p < plen {
            return (1, 0.5);
        }
        let ready = row[p - 1] != MASK;
        (20 + p as u32, if ready { 9.0 } else { 1.0 + 0.1 * p as f32 })
    };
    let d = FnDen::new(f);
    let prompt = vec![2u32, 3, 4, 5];
    let out = sampler(6, 6).generate_one(&d, &prompt, 0).unwrap();
    assert_eq!(out.order, (4..10).map(|p| vec![p]).collect::<Vec<_>>());
    assert_eq!(out.tokens, (24..30).collect::<Vec<u32>>());
    assert_prompt_kept_and_monotone(&d.seen.borrow(), &prompt);
}

#[test]
fn threshold_commits_all_above_tau_then_at_least_one() {
    let prompt = vec![5u32, 6];
    let logits = [10.0, 2.0, 9.0, 3.0, 10.0, 1.0, 4.0, 8.0];
    assert!(conf(8.0) > 0.9 && conf(4.0) < 0.9, "table premise");
    let cells: Vec<(u32, f32)> = logits.iter().enumerate().map(|(i, &c)| (10 + i as u32, c)).collect();
    let d = FnDen::new(table(2, cells.clone()));
    let mut s = sampler(8, 2); // steps are ignored by the threshold strategy
    s.strategy = Strategy::Threshold(0.9);
    let out = s.generate_one(&d, &prompt, 0).unwrap();
    let mut first = out.order[0].clone();
    first.sort_unstable();
    assert_eq!(first, vec![2, 4, 6, 9], "every position above τ in the first step");
    assert_eq!(&out.order[1..], &[vec![8], vec![5], vec![3], vec![7]], "then one per step, most confident first");
    assert_eq!(out.nfe, 5);
    assert_eq!(out.tokens, (10..18).collect::<Vec<u32>>());
    assert_prompt_kept_and_monotone(&d.seen.borrow(), &prompt);

    // Nothing above τ: exactly one (the most confident, leftmost on ties) per step.
    let d = FnDen::new(table(2, cells));
    s.strategy = Strategy::Threshold(0.999);
    let out = s.generate_one(&d, &prompt, 0).unwrap();
    assert_eq!(out.order, [0, 4, 2, 7, 6, 3, 1, 5].iter().map(|&c| vec![2 + c]).collect::<Vec<_>>());
    assert_eq!(out.nfe, 8);
}

#[test]
fn random_strategy_is_seeded_and_commits_each_position_once() {
    let prompt = vec![5u32, 6, 7];
    let cells: Vec<(u32, f32)> = (0..16).map(|i| (10 + i as u32, 5.0 + i as f32)).collect();
    let run = |seed: u64, steps: usize| {
        let d = FnDen::new(table(3, cells.clone()));
        let mut s = sampler(16, steps);
        s.strategy = Strategy::Random;
        s.seed = seed;
        let out = s.generate_one(&d, &prompt, 0).unwrap();
        assert_prompt_kept_and_monotone(&d.seen.borrow(), &prompt);
        out
    };
    let a = run(1, 16);
    let b = run(1, 16);
    let c = run(2, 16);
    assert_eq!(a.order, b.order, "same seed, same order");
    assert_ne!(a.order, c.order, "different seeds, different orders");
    for out in [&a, &c] {
        assert!(out.order.iter().all(|s| s.len() == 1));
        let mut all: Vec<usize> = out.order.concat();
        all.sort_unstable();
        assert_eq!(all, (3..19).collect::<Vec<_>>(), "each canvas position exactly once");
        assert_eq!(out.tokens, (10..26).collect::<Vec<u32>>());
    }
    // Not simply the confidence order (which would be right to left).
    let conf_order: Vec<Vec<usize>> = (3..19).rev().map(|p| vec![p]).collect();
    assert_ne!(a.order, conf_order);
    // Two per step.
    let d2 = run(1, 8);
    assert_eq!(d2.order.len(), 8);
    assert!(d2.order.iter().all(|s| s.len() == 2));
    let mut all = d2.order.concat();
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 16);
}

#[test]
fn semi_ar_blocks_are_finished_in_order() {
    let prompt = vec![5u32, 6, 7];
    let plen = prompt.len();
    // Confidence rises to the right, so without blocks the right end goes first.
    let cells: Vec<(u32, f32)> = (0..12).map(|i| (10 + i as u32, 2.0 + 0.5 * i as f32)).collect();
    for strategy in [Strategy::LowConfidence, Strategy::Random, Strategy::Threshold(0.01), Strategy::Threshold(0.999)] {
        let d = FnDen::new(table(plen, cells.clone()));
        let mut s = sampler(12, 6);
        s.strategy = strategy;
        s.block_len = Some(4);
        s.seed = 7;
        let out = s.generate_one(&d, &prompt, 0).unwrap();
        // Which block each step's commits fall in; blocks must never go back, and a step never
        // spans two blocks.
        let mut current = 0usize;
        let mut committed = [false; 12];
        for step in &out.order {
            assert!(!step.is_empty());
            let blocks: Vec<usize> = step.iter().map(|&p| (p - plen) / 4).collect();
            assert!(blocks.iter().all(|&b| b == blocks[0]), "{strategy:?}: step {step:?} spans blocks");
            assert!(blocks[0] >= current, "{strategy:?}: went back to block {}", blocks[0]);
            if blocks[0] > current {
                let prev = current * 4..current * 4 + 4;
                assert!(prev.clone().all(|c| committed[c]), "{strategy:?}: left block {current} unfinished");
                current = blocks[0];
            }
            for &p in step {
                assert!(!committed[p - plen], "{strategy:?}: position {p} committed twice");
                committed[p - plen] = true;
            }
        }
        assert!(committed.iter().all(|&c| c));
        assert_eq!(out.tokens, (10..22).collect::<Vec<u32>>());
        assert_prompt_kept_and_monotone(&d.seen.borrow(), &prompt);
        if strategy == Strategy::LowConfidence {
            assert_eq!(out.order, vec![vec![6, 5], vec![4, 3], vec![10, 9], vec![8, 7], vec![14, 13], vec![12, 11]]);
        }
        if strategy == Strategy::Threshold(0.01) {
            assert_eq!(out.nfe, 3, "one pass per block when everything clears τ");
        }
    }
}

#[test]
fn shift_reads_the_previous_output() {
    // Output position p strongly predicts token p + 100.
    let f = |_row: &[u32], p: usize| ((p + 100) as u32, 12.0 - 0.01 * p as f32);
    let prompt = vec![3u32, 4, 5, 6];
    for shift in [true, false] {
        for strategy in [Strategy::LowConfidence, Strategy::Random, Strategy::Threshold(0.5)] {
            let d = FnDen::new(f);
            let mut s = sampler(6, 3);
            s.shift = shift;
            s.strategy = strategy;
            let out = s.generate_one(&d, &prompt, 0).unwrap();
            for p in 4..10 {
                let expect = if shift { p - 1 + 100 } else { p + 100 } as u32;
                assert_eq!(out.sequence[p], expect, "shift={shift} {strategy:?} position {p}");
            }
            assert_eq!(&out.sequence[..4], &prompt[..]);
        }
    }
    // A shifted sampler cannot predict the first token of an empty prompt.
    let mut s = sampler(4, 4);
    s.shift = true;
    assert!(s.generate_one(&FnDen::new(f), &[], 0).is_err());
}

#[test]
fn stops_at_eos() {
    let prompt = vec![5u32, 6];
    // Left-to-right chain (see above) with an eos at canvas offset 3 and tokens after it.
    let plen = prompt.len();
    let f = move |row: &[u32], p: usize| {
        if p < plen {
            return (1, 0.5);
        }
        let tok = if p - plen == 3 { EOS } else { 30 + p as u32 };
        (tok, if row[p - 1] != MASK { 9.0 } else { 1.0 })
    };
    let d = FnDen::new(f);
    let out = sampler(8, 8).generate_one(&d, &prompt, 0).unwrap();
    assert_eq!(out.tokens, vec![32, 33, 34], "tokens after the first eos are dropped");
    assert!(out.hit_eos);
    assert_eq!(out.nfe, 4, "early stop once eos and everything before it are committed");
    assert_eq!(d.calls(), 4);

    let mut s = sampler(8, 8);
    s.early_stop = false;
    let full = s.generate_one(&FnDen::new(f), &prompt, 0).unwrap();
    assert_eq!(full.tokens, out.tokens, "early stop never changes the output");
    assert!(full.hit_eos);
    assert_eq!(full.nfe, 8);
    assert_eq!(full.sequence[plen + 4..], [36, 37, 38, 39], "the canvas after eos was decoded but dropped");

    // An eos committed first does not stop decoding until everything before it is committed.
    let cells = vec![(40, 3.0), (41, 2.0), (EOS, 9.0), (43, 8.0), (44, 7.0), (45, 1.0), (46, 1.0), (47, 1.0)];
    let out = sampler(8, 8).generate_one(&FnDen::new(table(2, cells)), &prompt, 0).unwrap();
    assert_eq!(out.order, vec![vec![4], vec![5], vec![6], vec![2], vec![3]]);
    assert_eq!(out.tokens, vec![40, 41]);
    assert!(out.hit_eos);
    assert_eq!(out.nfe, 5);
}

#[test]
fn batching_by_length_matches_one_by_one() {
    // Logits depend on the current row, so batching mistakes would show.
    let f = |row: &[u32], p: usize| {
        let s: u32 = row.iter().filter(|&&t| t != MASK).sum();
        ((s as usize * 7 + p * 13) as u32 % 150, 1.0 + ((s as usize + p * 5) % 11) as f32)
    };
    let prompts = vec![vec![1u32, 2, 3], vec![4u32, 5, 6, 7, 8], vec![9u32, 10, 11], vec![12u32]];
    for (strategy, temperature) in [(Strategy::LowConfidence, 0.0), (Strategy::Random, 0.8), (Strategy::Threshold(0.3), 1.0)] {
        let mut s = sampler(6, 3);
        s.strategy = strategy;
        s.temperature = temperature;
        s.seed = 11;
        s.batch_size = 4;
        let d = FnDen::new(f);
        let batched = s.generate(&d, &prompts, 100).unwrap();
        // Equal-length prompts only: the two of length 3 together, the others alone.
        for batch in d.seen.borrow().iter() {
            let l0 = batch[0].len();
            assert!(batch.iter().all(|r| r.len() == l0));
        }
        assert!(d.seen.borrow().iter().any(|b| b.len() == 2), "same-length prompts were not batched");
        for (i, p) in prompts.iter().enumerate() {
            let one = s.generate_one(&FnDen::new(f), p, 100 + i as u64).unwrap();
            assert_eq!(batched[i], one, "{strategy:?}: item {i} differs when batched");
        }
    }
}

#[test]
fn temperature_sampling_is_seeded() {
    // Nearly flat logits: sampled tokens vary with the seed.
    let f = |_row: &[u32], p: usize| ((p * 3 % 50) as u32, 0.2);
    let prompt = vec![1u32, 2];
    let run = |seed: u64, top_k: Option<usize>, top_p: Option<f64>| {
        let mut s = sampler(12, 12);
        s.temperature = 1.0;
        s.seed = seed;
        s.top_k = top_k;
        s.top_p = top_p;
        s.generate_one(&FnDen::new(f), &prompt, 0).unwrap()
    };
    let a = run(1, None, None);
    assert_eq!(a, run(1, None, None));
    assert_ne!(a.tokens, run(2, None, None).tokens);
    // top-k 1 and a tiny top-p both reduce to the argmax.
    let greedy = sampler(12, 12).generate_one(&FnDen::new(f), &prompt, 0).unwrap();
    assert_eq!(run(3, Some(1), None).tokens, greedy.tokens);
    assert_eq!(run(4, None, Some(1e-6)).tokens, greedy.tokens);
    // Bad settings are errors, not panics.
    let mut s = sampler(4, 4);
    s.top_k = Some(0);
    assert!(s.generate_one(&FnDen::new(f), &prompt, 0).is_err());
    s.top_k = None;
    s.temperature = -1.0;
    assert!(s.generate_one(&FnDen::new(f), &prompt, 0).is_err());
    let mut s = sampler(4, 4);
    s.mask_id = V as u32;
    assert!(s.generate_one(&FnDen::new(f), &prompt, 0).is_err());
    assert!(sampler(4, 4).generate_one(&FnDen::new(f), &[V as u32], 0).is_err());
}

#[test]
fn pick_token_filters() {
    let row = [3.0f32, 2.9, 2.8, -5.0, 0.0];
    let mut rng = rng_for(5, Purpose::Sampler, 0, 0);
    let mut seen = [0usize; 5];
    for _ in 0..2000 {
        let (t, _) = pick_token(&row, 1.0, Some(2), None, &mut rng).unwrap();
        seen[t as usize] += 1;
    }
    assert!(seen[0] > 0 && seen[1] > 0);
    assert_eq!(seen[2] + seen[3] + seen[4], 0, "top-k 2 drew outside the top 2");
    // top-p: p(0) ≈ 0.35, p(0)+p(1) ≈ 0.67 → top_p 0.5 keeps tokens 0 and 1.
    let mut seen = [0usize; 5];
    for _ in 0..2000 {
        let (t, _) = pick_token(&row, 1.0, None, Some(0.5), &mut rng).unwrap();
        seen[t as usize] += 1;
    }
    assert!(seen[0] > 0 && seen[1] > 0);
    assert_eq!(seen[2] + seen[3] + seen[4], 0, "top-p 0.5 drew outside the nucleus");
    // Greedy: the argmax, with its plain softmax probability as confidence.
    let (t, c) = pick_token(&row, 0.0, None, None, &mut rng).unwrap();
    let z: f64 = row.iter().map(|&x| (x as f64).exp()).sum();
    assert_eq!(t, 0);
    assert!((c as f64 - 3f64.exp() / z).abs() < 1e-6);
    assert!(pick_token(&[f32::NAN, 1.0], 0.0, None, None, &mut rng).is_err());
    assert!(pick_token(&[], 0.0, None, None, &mut rng).is_err());
    assert!(pick_token(&row, 1.0, Some(0), None, &mut rng).is_err());
}

#[test]
fn greedy_rows_on_the_device_equals_pick_token() {
    use rand::Rng;
    let mut rng = rng_for(3, Purpose::Init, 0, 0);
    let v = 4096;
    let mut rows: Vec<Vec<f32>> = (0..6).map(|_| (0..v).map(|_| rng.random_range(-8.0f32..8.0)).collect()).collect();
    // Ties at the maximum: the first index wins, as in pick_token.
    rows[1][10] = 20.0;
    rows[1][3000] = 20.0;
    rows[1][7] = 20.0;
    rows[2] = vec![0.5; v]; // all equal
    rows[3][v - 1] = 30.0; // the last column
    rows[4].iter_mut().for_each(|x| *x *= 0.01); // nearly flat: a small confidence
    let flat: Vec<f32> = rows.concat();
    let t = Tensor::from_vec(flat, (rows.len(), v), &Device::Cpu).unwrap();
    for dtype in [candle_core::DType::F32, candle_core::DType::BF16] {
        let t = t.to_dtype(dtype).unwrap();
        let got = greedy_rows(&t).unwrap();
        // pick_token on the same values as the host sees them (bf16 rounded, then f32)
        let host = t.to_dtype(candle_core::DType::F32).unwrap().to_vec2::<f32>().unwrap();
        for (i, (row, &(tok, c))) in host.iter().zip(&got).enumerate() {
            let (want, wc) = pick_token(row, 0.0, None, None, &mut rng).unwrap();
            assert_eq!(tok, want, "{dtype:?} row {i}");
            assert!((c - wc).abs() < 1e-5, "{dtype:?} row {i}: confidence {c} vs {wc}");
        }
    }
    assert_eq!(greedy_rows(&t).unwrap()[1].0, 7);
    assert_eq!(greedy_rows(&t).unwrap()[2], (0, 1.0 / v as f32));
    let mut bad = rows[0].clone();
    bad[5] = f32::NAN;
    assert!(greedy_rows(&Tensor::from_vec(bad, (1, v), &Device::Cpu).unwrap()).is_err());
    assert!(greedy_rows(&Tensor::zeros((0, v), candle_core::DType::F32, &Device::Cpu).unwrap()).unwrap().is_empty());
}

fn tiny(seed: u64) -> Llama {
    random_model(&tiny_config(64), &AdapterConfig::default(), seed, &Device::Cpu).unwrap().0
}

/// The tiny shape with weights N(0, 0.5²): far-from-uniform, context-dependent predictions (at
/// the default 0.02 the tied head mostly repeats the last token), so greedy outputs vary.
fn sharp(seed: u64) -> Llama {
    let cfg = tiny_config(64);
    let w = harness::model::load::random_weights(&cfg, 0.5, seed, candle_core::DType::F32, &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(w, candle_core::DType::F32, &Device::Cpu);
    let adapter = AdapterConfig::default();
    Llama::load(vb, &cfg, &harness::model::BuildOpts { adapter: &adapter, seed, layer_path: harness::model::LayerPath::Fused, time_embedding: false }).unwrap().0
}

#[test]
fn left_padding_does_not_change_model_logits() {
    let model = tiny(3);
    let d = ModelDenoiser::new(&model, AttentionMode::Full);
    let row = vec![5u32, 9, 13, 2, 40, 41];
    let plain = d.logits(&Tensor::from_slice(&row, (1, 6), &Device::Cpu).unwrap()).unwrap(); // (1, 6, V)
    let mut padded = vec![0u32, 7];
    padded.extend(&row);
    let ids = Tensor::from_slice(&padded, (1, 8), &Device::Cpu).unwrap();
    let kv = vec![vec![false, false, true, true, true, true, true, true]];
    let out = d.logits_padded(&ids, Some(&kv)).unwrap().narrow(1, 2, 6).unwrap(); // (1, 6, V)
    let diff = (plain - out).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-4, "left padding changed logits by {diff}");
}

#[test]
fn diffusion_on_tiny_model_batched_matches_one_by_one() {
    let model = tiny(4);
    let d = ModelDenoiser::new(&model, AttentionMode::Full);
    let prompts = vec![vec![1u32, 2, 3], vec![4u32, 5, 6, 7, 8], vec![9u32]];
    let mut s = DiffusionSampler::new(8, 4, 63, 62);
    s.shift = true;
    s.block_len = Some(4);
    s.batch_size = 3;
    let batched = s.generate(&d, &prompts, 0).unwrap();
    for (i, p) in prompts.iter().enumerate() {
        let one = s.generate_one(&d, p, i as u64).unwrap();
        assert_eq!(batched[i].sequence, one.sequence, "item {i}");
        assert_eq!(batched[i].order, one.order, "item {i}");
        assert_eq!(&one.sequence[..p.len()], &p[..]);
        assert!(one.sequence.iter().all(|&t| t != 63) || one.hit_eos);
    }
}

#[test]
fn the_model_runs_its_head_on_the_asked_positions_only_and_agrees_with_the_full_logits() {
    let model = tiny(4);
    let d = ModelDenoiser::new(&model, AttentionMode::Full);
    // Two left-padded rows; positions in any order, repeated, across rows.
    let ids = Tensor::from_slice(&[0u32, 0, 5, 9, 13, 63, 63, 7, 8, 9, 10, 63, 63, 63], (2, 7), &Device::Cpu).unwrap();
    let kv = vec![vec![false, false, true, true, true, true, true], vec![true; 7]];
    let full = d.logits_padded(&ids, Some(&kv)).unwrap().to_vec3::<f32>().unwrap(); // (2, 7, V)
    let positions = [(1usize, 6usize), (0, 4), (0, 5), (1, 3), (0, 4)];
    for (name, got) in [
        ("model", d.logits_at(&ids, Some(&kv), &positions).unwrap()),
        // the trait's default (what a hand-set denoiser gets): the full logits, picked out
        ("default", Denoiser::logits_at(&FullOnly(d), &ids, Some(&kv), &positions).unwrap()),
    ] {
        assert_eq!(got.dims2().unwrap(), (positions.len(), 64), "{name}");
        for (row, &(b, j)) in got.to_vec2::<f32>().unwrap().iter().zip(&positions) {
            let diff = row.iter().zip(&full[b][j]).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
            assert!(diff < 1e-5, "{name} ({b}, {j}): {diff}");
        }
    }
    assert!(d.logits_at(&ids, None, &[(2, 0)]).is_err(), "a row outside the batch is an error");
    assert!(d.logits_at(&ids, None, &[(0, 7)]).is_err(), "a column outside the batch is an error");
    assert_eq!(d.logits_at(&ids, None, &[]).unwrap().dims2().unwrap(), (0, 64));
}

/// A model denoiser seen only through `logits_padded`: every other method is the trait's default.
struct FullOnly<'a>(ModelDenoiser<'a>);

impl Denoiser for FullOnly<'_> {
    fn logits(&self, ids: &Tensor) -> harness::Result<Tensor> {
        self.0.logits(ids)
    }
    fn vocab_size(&self) -> usize {
        self.0.vocab_size()
    }
    fn supports_padding(&self) -> bool {
        true
    }
    fn logits_padded(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>) -> harness::Result<Tensor> {
        self.0.logits_padded(ids, key_valid)
    }
}

/// One call of the prefix-cached path: the rows' prefixes, what the cache held before the call,
/// and the query columns the call ran.
#[derive(Debug, Clone)]
struct CacheCall {
    prefix: Vec<usize>,
    cached_before: Vec<Option<usize>>,
    columns: usize,
    len: usize,
    /// The least prefix start or asked column of the rows read from the cache (the chunk's start).
    first: Option<usize>,
}

/// A model denoiser that records every prefix-cached call.
struct Spy<'a> {
    d: ModelDenoiser<'a>,
    calls: RefCell<Vec<CacheCall>>,
    plain: RefCell<usize>,
}

impl<'a> Spy<'a> {
    fn new(d: ModelDenoiser<'a>) -> Self {
        Self { d, calls: RefCell::new(Vec::new()), plain: RefCell::new(0) }
    }
}

impl Denoiser for Spy<'_> {
    fn logits(&self, ids: &Tensor) -> harness::Result<Tensor> {
        self.d.logits(ids)
    }
    fn vocab_size(&self) -> usize {
        self.d.vocab_size()
    }
    fn supports_padding(&self) -> bool {
        true
    }
    fn logits_padded(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>) -> harness::Result<Tensor> {
        self.d.logits_padded(ids, key_valid)
    }
    fn logits_at(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>, positions: &[(usize, usize)]) -> harness::Result<Tensor> {
        *self.plain.borrow_mut() += 1;
        self.d.logits_at(ids, key_valid, positions)
    }
    fn logits_at_prefix(&self, ids: &Tensor, key_valid: Option<&[Vec<bool>]>, positions: &[(usize, usize)], prefix: &[usize], cache: &mut PrefixCache) -> harness::Result<Tensor> {
        let cached_before = if cache.cached().is_empty() { vec![None; prefix.len()] } else { cache.cached().to_vec() };
        let kept = |r: usize| cached_before[r] == Some(prefix[r]);
        let first = (0..prefix.len()).filter(|&r| kept(r)).map(|r| prefix[r]).chain(positions.iter().filter(|p| kept(p.0)).map(|p| p.1)).min();
        let before = cache.query_columns();
        let out = self.d.logits_at_prefix(ids, key_valid, positions, prefix, cache)?;
        assert_eq!(cache.cached(), prefix.iter().map(|&p| Some(p)).collect::<Vec<_>>(), "every row holds its prefix after a call");
        let len = ids.dims2()?.1;
        self.calls.borrow_mut().push(CacheCall { prefix: prefix.to_vec(), cached_before, columns: cache.query_columns() - before, len, first });
        Ok(out)
    }
}

/// Same tokens, commit order and NFE; confidences within `tol`.
fn assert_same_diffusion(a: &DiffusionOutput, b: &DiffusionOutput, tol: f32, what: &str) {
    assert_eq!((&a.sequence, &a.order, a.nfe, a.hit_eos, &a.tokens), (&b.sequence, &b.order, b.nfe, b.hit_eos, &b.tokens), "{what}");
    for (x, y) in a.confidence.iter().zip(&b.confidence) {
        assert!((x - y).abs() < tol, "{what}: confidence {x} vs {y}");
    }
}

#[test]
fn prefix_cache_is_exact_when_the_prefix_never_sees_later_columns() {
    // Under a causal reading no column attends to a later one, so the prefix's keys and values
    // are the same at every step: cached decoding must equal uncached decoding, token for token
    // (confidences up to rounding), with padding, shift, blocks, and items of one batch at
    // different blocks (threshold).
    let model = sharp(7);
    let d = ModelDenoiser::reading(&model, ReadAttention::CAUSAL);
    let prompts = mixed_prompts();
    let mut rows_left = false;
    for (strategy, block_len, shift) in [
        (Strategy::LowConfidence, Some(4), true),
        (Strategy::LowConfidence, None, false),
        (Strategy::Threshold(0.3), Some(3), true),
        (Strategy::Random, Some(5), false),
    ] {
        let mut s = DiffusionSampler::new(12, 8, 63, 62);
        (s.strategy, s.block_len, s.shift, s.batch_size, s.seed) = (strategy, block_len, shift, 4, 3);
        let plain = s.generate(&d, &prompts, 0).unwrap();
        s.cache = CacheKind::Prefix;
        let spy = Spy::new(d);
        let cached = s.generate(&spy, &prompts, 0).unwrap();
        let what = format!("{strategy:?} blocks {block_len:?} shift {shift}");
        for (i, (x, y)) in cached.iter().zip(&plain).enumerate() {
            assert_same_diffusion(x, y, 1e-5, &format!("{what} item {i}"));
        }
        let calls = spy.calls.borrow();
        assert_eq!(*spy.plain.borrow(), 0, "{what}: every step went through the cache");
        rows_left |= calls.windows(2).any(|w| w[1].prefix.len() < w[0].prefix.len());
        assert_eq!(calls.len(), plain.iter().map(|o| o.nfe).max().unwrap(), "{what}: one call per step of the batch");
        // Some steps ran from the cache, and those ran fewer columns than the whole batch.
        let cached_steps = calls.iter().filter(|c| c.cached_before.iter().zip(&c.prefix).all(|(b, p)| *b == Some(*p))).count();
        assert!(cached_steps > 0, "{what}: {calls:?}");
        let whole: usize = calls.iter().map(|c| c.prefix.len() * c.len).sum();
        let ran: usize = calls.iter().map(|c| c.columns).sum();
        assert!(ran < whole, "{what}: {ran} columns ran, {whole} without the cache");
        if let Strategy::Threshold(_) = strategy {
            // Items at different blocks in one batch: a step that refreshes some rows and reads
            // others from the cache, and rows with different prefixes.
            assert!(
                calls.iter().any(|c| c.cached_before.iter().zip(&c.prefix).any(|(b, p)| *b == Some(*p)) && c.cached_before.iter().zip(&c.prefix).any(|(b, p)| *b != Some(*p))),
                "{what}: no step mixed refreshed and cached rows: {calls:?}"
            );
        }
        // The cache changes nothing about batching: one item at a time gives the same.
        for (i, p) in prompts.iter().enumerate() {
            let one = s.generate_one(&d, p, i as u64).unwrap();
            assert_same_diffusion(&one, &cached[i], 1e-4, &format!("{what} item {i} alone"));
        }
    }
    assert!(rows_left, "some items finished early and left the cached batch");
}

#[test]
fn prefix_cache_under_full_attention_refreshes_at_each_block_and_runs_only_the_tail() {
    let model = sharp(8);
    let d = ModelDenoiser::new(&model, AttentionMode::Full);
    let prompts = vec![vec![3u32, 17, 42, 8, 1, 9], vec![5u32, 6, 7, 8, 9, 10]];
    let (n, plen) = (8usize, 6usize);
    // One block (the whole canvas): the first step runs whole, exactly as without the cache; the
    // others run only the canvas and the column before it (shift).
    let mut s = DiffusionSampler::new(n, n, 63, 62);
    (s.shift, s.batch_size, s.early_stop) = (true, 2, false);
    let plain = s.generate(&d, &prompts, 0).unwrap();
    s.cache = CacheKind::Prefix;
    let spy = Spy::new(d);
    let cached = s.generate(&spy, &prompts, 0).unwrap();
    for (x, y) in cached.iter().zip(&plain) {
        assert_eq!(x.order[0], y.order[0], "the first step is the uncached step");
        assert!(x.order[0].iter().all(|&p| x.sequence[p] == y.sequence[p]), "the first step commits the same tokens");
        assert_eq!(x.nfe, n);
    }
    let calls = spy.calls.borrow();
    assert_eq!(calls.len(), n);
    assert_eq!(calls[0].columns, 2 * (plen + n), "the first step runs the whole batch");
    for c in &calls[1..] {
        assert_eq!(c.prefix, vec![plen, plen]);
        let first = c.first.unwrap();
        assert!(first >= plen - 1, "{c:?}");
        assert_eq!(c.columns, 2 * (plen + n - first), "a cached step runs the canvas from its first masked column (the one before it with shift) only");
    }
    // Blocks of 3: a refresh at the first step of each block, per item.
    let mut s = DiffusionSampler::new(n, n, 63, 62);
    (s.shift, s.batch_size, s.early_stop, s.block_len, s.cache) = (false, 2, false, Some(3), CacheKind::Prefix);
    let spy = Spy::new(d);
    let outs = s.generate(&spy, &prompts, 0).unwrap();
    let calls = spy.calls.borrow();
    let refreshes: Vec<usize> = calls.iter().map(|c| c.cached_before.iter().zip(&c.prefix).filter(|(b, p)| **b != Some(**p)).count()).collect();
    assert_eq!(refreshes.iter().sum::<usize>(), 2 * 3, "two items × three blocks: {refreshes:?}");
    let prefixes: Vec<usize> = calls.iter().map(|c| c.prefix[0]).collect();
    assert_eq!(prefixes, vec![6, 6, 6, 9, 9, 9, 12, 12], "the prefix moves to each block's start");
    for c in calls.iter().filter(|c| c.cached_before[0] == Some(c.prefix[0])) {
        assert_eq!(c.first, Some(c.prefix[0]), "unshifted, every asked column is in the block");
        assert_eq!(c.columns, 2 * (plen + n - c.prefix[0]), "a cached step runs the block and what follows it");
    }
    for (o, p) in outs.iter().zip(&prompts) {
        assert_eq!(&o.sequence[..plen], &p[..]);
        assert!(o.sequence[plen..].iter().all(|&t| t != 63), "every canvas position committed");
    }
    // An empty prompt (unshifted): the first block's prefix is empty, nothing to cache.
    let empty = s.generate(&d, &[vec![], vec![]], 0).unwrap();
    s.cache = CacheKind::None;
    let empty_plain = s.generate(&d, &[vec![], vec![]], 0).unwrap();
    assert_eq!(empty[0].order[0], empty_plain[0].order[0]);
    assert!(empty.iter().all(|o| o.sequence.len() == n && o.sequence.iter().all(|&t| t != 63)));
    s.cache = CacheKind::Prefix;
    // A partly annealed reading keeps its mask between absolute columns under the cache too.
    let annealed = ReadAttention { mode: AttentionMode::Annealed { anneal_steps: 100 }, step: 30, seed: 4 };
    let outs = s.generate(&ModelDenoiser::reading(&model, annealed), &prompts, 0).unwrap();
    assert!(outs.iter().all(|o| o.sequence[plen..].iter().all(|&t| t != 63)));
}

#[test]
fn ar_cached_equals_full_recompute() {
    let model = sharp(5);
    let d = ModelDenoiser::new(&model, AttentionMode::Causal);
    let prompt = vec![3u32, 17, 42, 8, 1];
    let greedy = ArSampler::greedy(16, 63);
    let cached = greedy.generate_cached(&model, &prompt, 0).unwrap();
    let full = greedy.generate(&d, &prompt, 0).unwrap();
    assert_same(&cached, &full, "greedy");
    assert!(cached.tokens.len() >= 4, "too short to compare: {:?}", cached);
    assert_eq!(cached.nfe, cached.tokens.len() + usize::from(cached.hit_eos));

    let mut s = ArSampler::greedy(16, 63);
    s.temperature = 1.0;
    s.top_k = Some(20);
    s.top_p = Some(0.95);
    s.seed = 9;
    let a = s.generate_cached(&model, &prompt, 0).unwrap();
    assert_eq!(a, s.generate_cached(&model, &prompt, 0).unwrap(), "sampling is reproducible per seed");
    assert_same(&a, &s.generate(&d, &prompt, 0).unwrap(), "cached and uncached sampling agree");
    s.seed = 10;
    assert_ne!(a.tokens, s.generate_cached(&model, &prompt, 0).unwrap().tokens, "different seeds differ");
    // Bad input is an error, not a panic.
    assert!(greedy.generate_cached(&model, &[], 0).is_err());
    assert!(greedy.generate_cached(&model, &[64], 0).is_err());
}

#[test]
fn samplers_are_built_from_the_eval_config() {
    use harness::config::EvalConfig;
    let e = EvalConfig { steps: 5, max_new_tokens: 6, block_len: 3, temperature: 0.7, top_k: 4, top_p: 0.8, threshold: 0.6, batch_size: 2, cache: CacheKind::Prefix, ..EvalConfig::default() };
    for (kind, want) in [(StrategyKind::LowConfidence, Strategy::LowConfidence), (StrategyKind::Random, Strategy::Random), (StrategyKind::Threshold, Strategy::Threshold(0.6))] {
        let s = DiffusionSampler::from_eval(&EvalConfig { strategy: kind, ..e.clone() }, true, MASK, EOS, 9);
        assert_eq!(s.strategy, want);
        assert_eq!((s.steps, s.max_new_tokens, s.block_len, s.batch_size), (5, 6, Some(3), 2));
        assert_eq!((s.temperature, s.top_k, s.top_p), (0.7, Some(4), Some(0.8)));
        assert_eq!((s.shift, s.mask_id, s.eos_id, s.seed, s.early_stop, s.cache), (true, MASK, EOS, 9, true, CacheKind::Prefix));
    }
    // 0 / 1 mean off.
    let off = EvalConfig::default();
    let d = DiffusionSampler::from_eval(&off, false, MASK, EOS, 0);
    assert_eq!((d.block_len, d.top_k, d.top_p, d.strategy, d.cache), (None, None, None, Strategy::LowConfidence, CacheKind::None));
    let a = ArSampler::from_eval(&e, EOS, 9);
    assert_eq!(a, ArSampler { max_new_tokens: 6, temperature: 0.7, top_k: Some(4), top_p: Some(0.8), eos_id: EOS, seed: 9, batch_size: 2 });
    assert_eq!(ArSampler::from_eval(&off, EOS, 0), ArSampler { batch_size: off.batch_size, ..ArSampler::greedy(off.max_new_tokens, EOS) });
    // The config spelling is serde's, and a bad one names the allowed values.
    let k: StrategyKind = serde_json::from_str("\"threshold\"").unwrap();
    assert_eq!(k, StrategyKind::Threshold);
    let err = serde_json::from_str::<StrategyKind>("\"greedy\"").unwrap_err().to_string();
    assert!(err.contains("low_confidence") && err.contains("random"), "{err}");
    assert_eq!(serde_json::from_str::<CacheKind>("\"prefix\"").unwrap(), CacheKind::Prefix);
    assert_eq!(serde_json::to_string(&CacheKind::None).unwrap(), "\"none\"");
    let err = serde_json::from_str::<CacheKind>("\"dual\"").unwrap_err().to_string();
    assert!(err.contains("none") && err.contains("prefix"), "{err}");
    // `eval.cache` in a run config: a diffusion setting, an error on an AR run.
    let raw = |sets: &[&str]| harness::config::RawConfig::from_str_with("name = \"t\"", "test", &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    let ok = raw(&["eval.cache=\"prefix\""]).unwrap();
    assert_eq!(ok.eval.cache, CacheKind::Prefix);
    ok.validate().unwrap();
    let bad = raw(&["eval.cache=\"prefix\"", "objective={kind=\"autoregressive\"}"]).unwrap().validate().unwrap_err().to_string();
    assert!(bad.contains("eval.cache") && bad.contains("autoregressive"), "{bad}");
    assert!(raw(&["eval.cache=\"dual\""]).unwrap_err().to_string().contains("eval.cache"));
}

/// Prompts of lengths 3, 7, 12 and 5 with tokens in 0..62 (62 and 63 left for eos choices).
fn mixed_prompts() -> Vec<Vec<u32>> {
    use rand::Rng;
    let mut rng = rng_for(4, Purpose::Init, 0, 0);
    [3usize, 7, 12, 5].iter().map(|&n| (0..n).map(|_| rng.random_range(0..62u32)).collect()).collect()
}

/// Same tokens, NFE and eos flag; confidences equal up to rounding (a padded row's RoPE angles
/// differ, so its logits agree only to rounding).
fn assert_same(a: &harness::sample::ArOutput, b: &harness::sample::ArOutput, what: &str) {
    assert_eq!((&a.tokens, a.nfe, a.hit_eos), (&b.tokens, b.nfe, b.hit_eos), "{what}");
    assert_eq!(a.confidence.len(), b.confidence.len(), "{what}");
    for (x, y) in a.confidence.iter().zip(&b.confidence) {
        assert!((x - y).abs() < 1e-4, "{what}: confidence {x} vs {y}");
    }
}

#[test]
fn ar_batched_decoding_equals_one_at_a_time_and_the_uncached_reference() {
    let model = sharp(5);
    let d = ModelDenoiser::new(&model, AttentionMode::Causal);
    let prompts = mixed_prompts();
    // The eos is a token greedy decoding of prompt 0 produces, so some items stop at it and leave
    // the batch early while others run to the budget.
    let probe = ArSampler::greedy(16, 63).generate_cached(&model, &prompts[0], 0).unwrap();
    assert!(probe.tokens.len() >= 4, "{probe:?}");
    let eos = probe.tokens[3];
    let mut sampled = ArSampler::greedy(16, eos);
    sampled.temperature = 1.0;
    sampled.top_k = Some(20);
    sampled.seed = 9;
    for (name, base) in [("greedy", ArSampler::greedy(16, eos)), ("sampled", sampled)] {
        let one: Vec<_> = prompts.iter().enumerate().map(|(i, p)| base.generate_cached(&model, p, 10 + i as u64).unwrap()).collect();
        for (i, p) in prompts.iter().enumerate() {
            assert_same(&one[i], &base.generate(&d, p, 10 + i as u64).unwrap(), &format!("{name} item {i}: cached vs uncached"));
            assert_eq!(one[i].nfe, one[i].tokens.len() + usize::from(one[i].hit_eos), "{name} item {i}");
        }
        let stops = one.iter().filter(|o| o.hit_eos).count();
        assert!(stops >= 1 && stops < prompts.len(), "{name}: want a mix of eos and budget stops, got {one:?}");
        let lens: std::collections::BTreeSet<usize> = one.iter().map(|o| o.tokens.len()).collect();
        assert!(lens.len() >= 2, "{name}: rows should finish at different steps: {one:?}");
        for b in [1usize, 2, 4] {
            let s = ArSampler { batch_size: b, ..base.clone() };
            let batched = s.generate_batched(&model, &prompts, 10).unwrap();
            assert_eq!(batched.len(), prompts.len());
            for (i, (x, y)) in batched.iter().zip(&one).enumerate() {
                assert_same(x, y, &format!("{name} batch {b} item {i}"));
            }
        }
    }
}

#[test]
fn ar_confidence_and_bad_prompts() {
    let model = tiny(6);
    let prompts = mixed_prompts();
    let mut s = ArSampler::greedy(12, 63);
    s.batch_size = 4;
    s.temperature = 0.7;
    let outs = s.generate_batched(&model, &prompts, 0).unwrap();
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.confidence.len(), o.tokens.len(), "item {i}");
        assert!(!o.tokens.is_empty(), "item {i}: {o:?}");
        assert!(o.confidence.iter().all(|&c| c > 0.0 && c <= 1.0), "item {i}: {:?}", o.confidence);
    }
    // greedy picks the argmax: its probability is at least 1/V
    let g = ArSampler { batch_size: 4, ..ArSampler::greedy(12, 63) }.generate_batched(&model, &prompts, 0).unwrap();
    assert!(g.iter().flat_map(|o| &o.confidence).all(|&c| (1.0 / 64.0..=1.0).contains(&c)));
    // the objective's generate is the batched path, confidences included
    let eval = harness::config::EvalConfig { max_new_tokens: 12, temperature: 0.0, batch_size: 3, ..Default::default() };
    let obj = harness::objective::build(&harness::config::ObjectiveConfig::Autoregressive, 0);
    let gen = obj.generate(&model, &prompts, 63, &eval, 0).unwrap();
    for (x, y) in gen.iter().zip(&g) {
        assert_eq!((&x.tokens, x.nfe, x.hit_eos), (&y.tokens, y.nfe, y.hit_eos));
        assert_eq!(x.confidence.len(), x.tokens.len());
    }

    // A token outside the vocabulary in one prompt of a batch is an error naming the prompt.
    let mut bad = prompts.clone();
    bad[2][4] = 64;
    let err = s.generate_batched(&model, &bad, 0).unwrap_err().to_string();
    assert!(err.contains("prompt 2") && err.contains("vocabulary"), "{err}");
    // So is a prompt that with the token budget needs more positions than the model has (256).
    let mut long = prompts.clone();
    long[1] = vec![5; 250];
    let err = s.generate_batched(&model, &long, 0).unwrap_err().to_string();
    assert!(err.contains("prompt 1") && err.contains("256 positions"), "{err}");
    assert!(s.generate_batched(&model, &[vec![]], 0).unwrap_err().to_string().contains("empty"));
    let zero = ArSampler { batch_size: 0, ..s.clone() };
    assert!(zero.generate_batched(&model, &prompts, 0).unwrap_err().to_string().contains("eval.batch_size"));
    // A prompt that exactly fits (len + budget − 1 = 256) decodes.
    assert!(ArSampler::greedy(12, 63).generate_cached(&model, &vec![5; 245], 0).is_ok());
}

#[test]
fn decode_bench_measures_both_methods_the_same_way() {
    use harness::bench::{decode_bench, BenchOpts};
    let opts = BenchOpts { arch: tiny_config(64), shapes: vec![], ranks: vec![], warmup: 0, steps: 1, peak_flops: None, launches: vec![], device: Device::Cpu, dtype: candle_core::DType::F32 };
    let rows = decode_bench(&opts, &[1, 3], 5, 6, 3).unwrap();
    for b in [1usize, 3] {
        let at: Vec<_> = rows.iter().filter(|r| r.batch_size == Some(b)).collect();
        let names: Vec<&str> = at.iter().map(|r| r.sampler.as_str()).collect();
        for want in ["ar-greedy-kv-cache", "diffusion-low_confidence", "diffusion-low_confidence-prefix-cache", "diffusion-threshold-prefix-cache"] {
            assert!(names.contains(&want), "batch {b}: {names:?} lacks {want}");
        }
        for r in at {
            assert_eq!((r.items, r.prompt_len, r.new_tokens), (b, 5, 6), "{r:?}");
            assert!(r.wall_s > 0.0 && r.tokens_per_s > 0.0, "{r:?}");
            assert!((r.tokens_per_s - r.generated_tokens as f64 / r.wall_s).abs() < 1e-6 * r.tokens_per_s, "{r:?}");
            assert!((r.mean_gen_len - r.generated_tokens as f64 / b as f64).abs() < 1e-9, "{r:?}");
            assert!(r.mean_gen_len <= 6.0 && (0.0..=1.0).contains(&r.eos_rate), "{r:?}");
            if r.sampler.starts_with("ar") {
                // one pass per chosen token (the eos included), the first being the prompt pass
                assert!((r.mean_nfe - (r.mean_gen_len + r.eos_rate)).abs() < 1e-9, "{r:?}");
            } else if r.sampler.starts_with("diffusion-threshold") {
                // commits every position above 0.9, at least one per pass
                assert!(r.mean_nfe >= 1.0 && r.mean_nfe <= 6.0, "{r:?}");
            } else {
                assert!(r.mean_nfe >= 1.0 && r.mean_nfe <= 3.0, "{r:?}");
            }
        }
    }
    let json = serde_json::to_value(&rows[0]).unwrap();
    for k in ["tokens_per_s", "mean_nfe", "mean_gen_len", "generated_tokens", "batch_size", "eos_rate", "wall_s"] {
        assert!(json.get(k).is_some(), "decode row lacks {k}");
    }
}
