//! Tests of `harness::eval::likelihood`: the Monte Carlo diffusion ELBO against exact enumeration,
//! the stratified mask counts, and the AR log-probability against a hand computation (and the
//! shared-prompt scorer against one full forward per choice).

use candle_core::{Device, Tensor};
use harness::eval::likelihood::{
    ar_choice_scores, ar_logprob, best_choice, diffusion_choice_scores, diffusion_elbo, diffusion_elbo_samples,
    draw_masks, exact_elbo, stratified_mask_counts, DiffusionLikelihood, ElboSample,
};
use harness::model::load::{random_model, random_weights, tiny_config};
use harness::model::{AdapterConfig, BuildOpts, Fwd, Llama};

const VOCAB: usize = 50;
const MASK_ID: u32 = 49;
const PROMPT: [u32; 4] = [5, 17, 3, 42];
const ANSWER: [u32; 3] = [7, 11, 23];

/// The seeded tiny random model (weights N(0, 0.02²)).
fn tiny_model(seed: u64) -> Llama {
    random_model(&tiny_config(VOCAB), &AdapterConfig::default(), seed, &Device::Cpu).expect("tiny model").0
}

/// The same shape with weights N(0, 0.5²): far-from-uniform predictions, so the estimates vary
/// across masks and the comparisons below have something to detect.
fn sharp_model(seed: u64) -> Llama {
    let cfg = tiny_config(VOCAB);
    let w = random_weights(&cfg, 0.5, seed, candle_core::DType::F32, &Device::Cpu).expect("weights");
    let vb = candle_nn::VarBuilder::from_tensors(w, candle_core::DType::F32, &Device::Cpu);
    let adapter = AdapterConfig::default();
    Llama::load(vb, &cfg, &BuildOpts { adapter: &adapter, seed, layer_path: harness::model::LayerPath::Fused, time_embedding: false }).expect("sharp model").0
}

fn cfg(shift: bool, n: usize, batch: usize, seed: u64) -> DiffusionLikelihood {
    DiffusionLikelihood { mask_id: MASK_ID, shift, n_samples: n, batch, seed }
}

/// log p(target) from one row of logits, in f64 by hand.
fn log_softmax_at(row: &[f32], target: u32) -> f64 {
    let m = row.iter().fold(f64::NEG_INFINITY, |m, &x| m.max(x as f64));
    let lse = m + row.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln();
    row[target as usize] as f64 - lse
}

/// Logits (L, V) of one sequence: `bias` None = full attention.
fn logits_of(model: &Llama, ids: &[u32], bias: Option<&Tensor>) -> Vec<Vec<f32>> {
    let x = Tensor::from_vec(ids.to_vec(), (1, ids.len()), &Device::Cpu).unwrap(); // (1, L)
    let y = model.forward(&x, bias, &Fwd::default()).unwrap(); // (1, L, V)
    y.squeeze(0).unwrap().to_vec2::<f32>().unwrap()
}

/// Exact ELBO computed independently: enumerate subsets, full-attention forward per subset,
/// log-softmax by hand, weight (1/A)(A/k)/C(A,k).
fn hand_exact_elbo(model: &Llama, prompt: &[u32], answer: &[u32], shift: bool) -> f64 {
    let a = answer.len();
    let p0 = prompt.len();
    let mut total = 0.0;
    for bits in 1u32..(1 << a) {
        let subset: Vec<usize> = (0..a).filter(|j| bits & (1 << j) != 0).collect();
        let k = subset.len();
        let mut ids: Vec<u32> = prompt.iter().chain(answer).copied().collect();
        for &j in &subset {
            ids[p0 + j] = MASK_ID;
        }
        let lg = logits_of(model, &ids, None);
        let s: f64 = subset
            .iter()
            .map(|&j| {
                let pos = p0 + j;
                let row = if shift { pos - 1 } else { pos };
                log_softmax_at(&lg[row], answer[j])
            })
            .sum();
        let c_ak = (0..k).fold(1.0, |acc, i| acc * (a - i) as f64 / (i + 1) as f64);
        total += (1.0 / a as f64) * (a as f64 / k as f64) * s / c_ak;
    }
    total
}

fn mean(x: &[f64]) -> f64 {
    x.iter().sum::<f64>() / x.len() as f64
}

fn var(x: &[f64]) -> f64 {
    let m = mean(x);
    x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() as f64 - 1.0)
}

/// Naive SE (samples treated as iid) and the stratified SE (strata = k, each stratum's share
/// fixed by the design): sqrt(Σ_k (n_k/n)² s_k² / n_k).
fn standard_errors(samples: &[ElboSample], a: usize) -> (f64, f64) {
    let all: Vec<f64> = samples.iter().map(|s| s.estimate).collect();
    let n = all.len() as f64;
    let naive = (var(&all) / n).sqrt();
    let mut v = 0.0;
    for k in 1..=a {
        let xs: Vec<f64> = samples.iter().filter(|s| s.k == k).map(|s| s.estimate).collect();
        if xs.len() > 1 {
            let nk = xs.len() as f64;
            v += (nk / n).powi(2) * var(&xs) / nk;
        }
    }
    (naive, v.sqrt())
}

fn check_mc_vs_exact(name: &str, model: &Llama, shift: bool) {
    let c = cfg(shift, 300, 64, 1234);
    let samples = diffusion_elbo_samples(model, &PROMPT, &ANSWER, &c).unwrap();
    assert_eq!(samples.len(), 300);
    let mc = mean(&samples.iter().map(|s| s.estimate).collect::<Vec<_>>());
    assert_eq!(mc, diffusion_elbo(model, &PROMPT, &ANSWER, &c).unwrap());
    let exact = exact_elbo(model, &PROMPT, &ANSWER, MASK_ID, shift).unwrap();
    let (se_naive, se_strat) = standard_errors(&samples, ANSWER.len());
    let diff = (mc - exact).abs();
    println!(
        "{name} shift={shift}: mc={mc:.6} exact={exact:.6} |diff|={diff:.3e} se_naive={se_naive:.3e} \
         se_strat={se_strat:.3e} diff/se_strat={:.2}",
        diff / se_strat
    );
    assert!(se_strat > 0.0, "no Monte Carlo variation at all: the test would prove nothing");
    assert!(diff < 4.0 * se_strat, "{name} shift={shift}: mc {mc} vs exact {exact}: |diff| {diff} ≥ 4·SE {se_strat}");
    assert!(diff < 4.0 * se_naive);
}

#[test]
fn mc_elbo_matches_exact_enumeration() {
    for shift in [false, true] {
        check_mc_vs_exact("tiny", &tiny_model(7), shift);
        check_mc_vs_exact("sharp", &sharp_model(7), shift);
    }
}

#[test]
fn exact_elbo_matches_hand_enumeration() {
    for model in [tiny_model(3), sharp_model(3)] {
        for shift in [false, true] {
            let lib = exact_elbo(&model, &PROMPT, &ANSWER, MASK_ID, shift).unwrap();
            let hand = hand_exact_elbo(&model, &PROMPT, &ANSWER, shift);
            println!("exact shift={shift}: lib={lib:.6} hand={hand:.6}");
            assert!((lib - hand).abs() < 1e-4 * hand.abs().max(1.0), "exact {lib} vs hand {hand}");
        }
    }
    // Shift must change what is scored (different output rows) on a non-degenerate model.
    let m = sharp_model(3);
    let a = exact_elbo(&m, &PROMPT, &ANSWER, MASK_ID, false).unwrap();
    let b = exact_elbo(&m, &PROMPT, &ANSWER, MASK_ID, true).unwrap();
    assert!((a - b).abs() > 1e-3, "shift on/off gave {a} and {b}");
}

#[test]
fn stratified_counts_are_balanced() {
    for (n, a) in [(300, 3), (12, 4), (5, 5), (128, 8), (128, 1), (6, 2), (64, 16)] {
        for seed in 0..20u64 {
            let ks = stratified_mask_counts(n, a, seed).unwrap();
            assert_eq!(ks.len(), n);
            for k in 1..=a {
                let c = ks.iter().filter(|&&x| x == k).count();
                assert_eq!(c, n / a, "n={n} a={a} seed={seed}: k={k} appears {c} times");
            }
        }
    }
    // Not a multiple: every k in 1..=a, each ⌊n/a⌋ or ⌈n/a⌉ times.
    for (n, a) in [(7, 3), (128, 5), (2, 3), (1, 4), (10, 7)] {
        for seed in 0..20u64 {
            let ks = stratified_mask_counts(n, a, seed).unwrap();
            assert!(ks.iter().all(|&k| (1..=a).contains(&k)));
            for k in 1..=a {
                let c = ks.iter().filter(|&&x| x == k).count();
                assert!(c == n / a || c == n.div_ceil(a), "n={n} a={a} seed={seed}: k={k} appears {c} times");
            }
        }
    }
    // n < a: the marginal over seeds is uniform on 1..=a (loose check).
    let mut hist = [0usize; 4];
    for seed in 0..4000u64 {
        for k in stratified_mask_counts(1, 4, seed).unwrap() {
            hist[k - 1] += 1;
        }
    }
    assert!(hist.iter().all(|&h| (850..1150).contains(&h)), "k histogram {hist:?}");
    assert!(stratified_mask_counts(4, 0, 0).is_err());
}

#[test]
fn mask_positions_are_valid_and_uniform() {
    let (n, a) = (3000, 3);
    let masks = draw_masks(n, a, 99).unwrap();
    let ks = stratified_mask_counts(n, a, 99).unwrap();
    let mut single = [0usize; 3];
    for (m, k) in masks.iter().zip(&ks) {
        assert_eq!(m.len(), *k);
        assert!(m.windows(2).all(|w| w[0] < w[1]), "not sorted / repeated: {m:?}");
        assert!(m.iter().all(|&p| p < a));
        if m.len() == 1 {
            single[m[0]] += 1;
        }
    }
    // 1000 single-mask samples, expected 333 per position (sd ≈ 15).
    assert!(single.iter().all(|&c| (250..420).contains(&c)), "positions {single:?}");
}

#[test]
fn ar_logprob_matches_hand_computation() {
    for model in [tiny_model(11), sharp_model(11)] {
        let ids: Vec<u32> = PROMPT.iter().chain(&ANSWER).copied().collect();
        let l = ids.len();
        // Causal bias built by hand: key j hidden from query i when j > i.
        let mut bias = vec![0f32; l * l];
        for i in 0..l {
            for j in (i + 1)..l {
                bias[i * l + j] = -1e9;
            }
        }
        let bias = Tensor::from_vec(bias, (1, 1, l, l), &Device::Cpu).unwrap(); // (1, 1, L, L)
        let lg = logits_of(&model, &ids, Some(&bias));
        let p0 = PROMPT.len();
        let hand: f64 = (0..ANSWER.len()).map(|j| log_softmax_at(&lg[p0 + j - 1], ANSWER[j])).sum();
        let lib = ar_logprob(&model, &PROMPT, &ANSWER).unwrap();
        println!("ar: lib={lib:.6} hand={hand:.6}");
        assert!((lib - hand).abs() < 1e-4 * hand.abs().max(1.0), "ar {lib} vs hand {hand}");
        assert!(lib <= 0.0);

        // Batched over choices of different lengths (padding) = one at a time.
        let choices = vec![vec![7u32], vec![7, 11, 23], vec![30, 2], vec![1, 2, 3, 4, 5]];
        let batched = ar_choice_scores(&model, &PROMPT, &choices).unwrap().scores;
        for (c, s) in choices.iter().zip(&batched) {
            let one = ar_logprob(&model, &PROMPT, c).unwrap();
            assert!((one - s).abs() < 1e-4 * one.abs().max(1.0), "choice {c:?}: batched {s} vs alone {one}");
        }
        assert!(ar_choice_scores(&model, &PROMPT, &[]).unwrap().scores.is_empty());
    }
}

/// The per-choice computation the shared-prompt scorer replaced: one full causal forward of
/// `prompt ++ answer` per choice (causal bias built by hand), log-softmax by hand.
fn per_choice_ar_logprob(model: &Llama, prompt: &[u32], answer: &[u32]) -> f64 {
    let ids: Vec<u32> = prompt.iter().chain(answer).copied().collect();
    let l = ids.len();
    let bias: Vec<f32> = (0..l * l).map(|k| if k % l > k / l { -1e9 } else { 0.0 }).collect();
    let bias = Tensor::from_vec(bias, (1, 1, l, l), &Device::Cpu).unwrap(); // (1, 1, L, L)
    let lg = logits_of(model, &ids, Some(&bias));
    let p0 = prompt.len();
    (0..answer.len()).map(|j| log_softmax_at(&lg[p0 + j - 1], answer[j])).sum()
}

#[test]
fn ar_shared_prompt_scores_equal_per_choice_forwards() {
    let single = vec![vec![7u32], vec![11], vec![23], vec![30], vec![0]];
    let multi = vec![vec![7u32, 11], vec![7, 11, 23], vec![30, 2, 2, 9], vec![1, 2, 3, 4, 5]];
    let mixed = vec![vec![7u32], vec![7, 11, 23], vec![30], vec![30, 2]];
    let prompts: [&[u32]; 3] = [&PROMPT, &[5], &[5, 17, 3, 42, 8, 8, 1, 40, 13]];
    for model in [tiny_model(21), sharp_model(21)] {
        for prompt in prompts {
            for (choices, nfe) in [(&single, 1), (&multi, 2), (&mixed, 2)] {
                let got = ar_choice_scores(&model, prompt, choices).unwrap();
                assert_eq!(got.nfe, nfe, "prompt {prompt:?}, choices {choices:?}: forward passes run");
                assert_eq!(got.scores.len(), choices.len());
                for (c, s) in choices.iter().zip(&got.scores) {
                    let want = per_choice_ar_logprob(&model, prompt, c);
                    assert!((s - want).abs() < 1e-4 * want.abs().max(1.0), "prompt {prompt:?}, choice {c:?}: shared {s} vs per-choice {want}");
                }
            }
        }
    }
    // The sharp model tells the choices apart, so equal scores above are not a coincidence.
    let s = ar_choice_scores(&sharp_model(21), &PROMPT, &single).unwrap().scores;
    assert!(s.windows(2).any(|w| (w[0] - w[1]).abs() > 1e-3), "scores {s:?}");
}

#[test]
fn elbo_is_nonpositive_and_deterministic() {
    let model = sharp_model(5);
    for shift in [false, true] {
        let c = cfg(shift, 48, 16, 77);
        let s = diffusion_elbo_samples(&model, &PROMPT, &ANSWER, &c).unwrap();
        assert!(s.iter().all(|x| x.estimate <= 0.0));
        let e1 = diffusion_elbo(&model, &PROMPT, &ANSWER, &c).unwrap();
        let e2 = diffusion_elbo(&model, &PROMPT, &ANSWER, &c).unwrap();
        assert!(e1 <= 0.0);
        assert_eq!(e1.to_bits(), e2.to_bits(), "same seed, different result");
        let other = diffusion_elbo(&model, &PROMPT, &ANSWER, &cfg(shift, 48, 16, 78)).unwrap();
        assert_ne!(e1, other, "different seeds gave identical estimates");
        // The batch size changes only float rounding, never the draws.
        let b1 = diffusion_elbo(&model, &PROMPT, &ANSWER, &cfg(shift, 48, 1, 77)).unwrap();
        let b48 = diffusion_elbo(&model, &PROMPT, &ANSWER, &cfg(shift, 48, 48, 77)).unwrap();
        assert!((b1 - e1).abs() < 1e-4 && (b48 - e1).abs() < 1e-4, "batch 1: {b1}, 16: {e1}, 48: {b48}");
        assert!(exact_elbo(&model, &PROMPT, &ANSWER, MASK_ID, shift).unwrap() <= 0.0);
    }
    // Items get independent seeds; choices of one item share it.
    let base = cfg(false, 48, 16, 77);
    assert_eq!(base.for_item(3), base.for_item(3));
    assert_ne!(base.for_item(3).seed, base.for_item(4).seed);
}

#[test]
fn choice_scores_are_paired_and_match_single_calls() {
    let model = sharp_model(9);
    let c = cfg(true, 30, 8, 2024);
    let choices = vec![vec![7u32, 11, 23], vec![8, 12, 24], vec![30, 2]];
    let scores = diffusion_choice_scores(&model, &PROMPT, &choices, &c).unwrap();
    assert_eq!(scores.len(), 3);
    for (ch, s) in choices.iter().zip(&scores) {
        assert_eq!(*s, diffusion_elbo(&model, &PROMPT, ch, &c).unwrap());
    }
    // Equal-length choices see the same mask pattern.
    assert_eq!(draw_masks(30, 3, c.seed).unwrap(), draw_masks(30, 3, c.seed).unwrap());
    let i = best_choice(&scores).unwrap();
    assert!(scores.iter().all(|&s| s <= scores[i]));
}

#[test]
fn best_choice_rules() {
    assert_eq!(best_choice(&[-3.0, -1.0, -2.0]), Some(1));
    assert_eq!(best_choice(&[-1.0, -1.0]), Some(0));
    assert_eq!(best_choice(&[]), None);
    assert_eq!(best_choice(&[-1.0, f64::NAN]), None);
    assert_eq!(best_choice(&[f64::NEG_INFINITY]), Some(0));
}

#[test]
fn bad_inputs_are_errors() {
    let model = tiny_model(1);
    // Empty answer.
    assert!(ar_logprob(&model, &PROMPT, &[]).is_err());
    assert!(diffusion_elbo(&model, &PROMPT, &[], &cfg(false, 8, 8, 0)).is_err());
    assert!(exact_elbo(&model, &PROMPT, &[], MASK_ID, false).is_err());
    // Empty prompt: nothing predicts the first answer token for AR or with shift.
    assert!(ar_logprob(&model, &[], &ANSWER).is_err());
    assert!(diffusion_elbo(&model, &[], &ANSWER, &cfg(true, 8, 8, 0)).is_err());
    assert!(exact_elbo(&model, &[], &ANSWER, MASK_ID, true).is_err());
    // ...but fine without shift.
    assert!(diffusion_elbo(&model, &[], &ANSWER, &cfg(false, 8, 8, 0)).unwrap() <= 0.0);
    // Ids outside the vocabulary.
    assert!(ar_logprob(&model, &PROMPT, &[50]).is_err());
    assert!(diffusion_elbo(&model, &[99], &ANSWER, &cfg(false, 8, 8, 0)).is_err());
    assert!(diffusion_elbo(&model, &PROMPT, &ANSWER, &DiffusionLikelihood { mask_id: 50, ..cfg(false, 8, 8, 0) }).is_err());
    // Zero samples / zero batch.
    assert!(diffusion_elbo(&model, &PROMPT, &ANSWER, &cfg(false, 0, 8, 0)).is_err());
    assert!(diffusion_elbo(&model, &PROMPT, &ANSWER, &cfg(false, 8, 0, 0)).is_err());
    // Too long for exact enumeration / for the model's positions.
    assert!(exact_elbo(&model, &PROMPT, &[1; 17], MASK_ID, false).is_err());
    assert!(ar_logprob(&model, &PROMPT, &[1; 300]).is_err());
}

#[test]
fn objectives_score_choices_with_their_own_scorer() {
    use harness::config::{EvalConfig, ObjectiveConfig};
    use harness::objective::{build, DiffusionConfig};
    let model = sharp_model(3);
    let choices = vec![ANSWER.to_vec(), vec![8, 12, 24], vec![9]];
    let eval = EvalConfig { mc_samples: 6, batch_size: 1, ..EvalConfig::default() };
    let seed = 11;
    // AR: the exact log p; one pass over the prompt, one batched pass of the longer choices.
    let ar = build(&ObjectiveConfig::Autoregressive, MASK_ID).score_choices(&model, &PROMPT, &choices, 5, &eval, seed).unwrap();
    assert_eq!(ar.scores, ar_choice_scores(&model, &PROMPT, &choices).unwrap().scores);
    assert_eq!(ar.nfe, 2);
    // Every choice one token: the prompt's pass alone.
    let one_token = vec![vec![9u32], vec![8], vec![7]];
    let ar1 = build(&ObjectiveConfig::Autoregressive, MASK_ID).score_choices(&model, &PROMPT, &one_token, 5, &eval, seed).unwrap();
    assert_eq!(ar1.nfe, 1);
    // Diffusion: the MC ELBO with the configured samples, the trained shift, the item's own seed.
    for shift in [true, false] {
        let obj = build(&ObjectiveConfig::Diffusion(DiffusionConfig { shift, ..Default::default() }), MASK_ID);
        let got = obj.score_choices(&model, &PROMPT, &choices, 5, &eval, seed).unwrap();
        let want_cfg = DiffusionLikelihood { mask_id: MASK_ID, shift, n_samples: 6, batch: 4, seed }.for_item(5);
        assert_eq!(got.scores, diffusion_choice_scores(&model, &PROMPT, &choices, &want_cfg).unwrap(), "shift={shift}");
        assert_eq!(got.nfe, 3 * 2, "3 choices × ceil(6 samples / batch 4)");
        let other_item = obj.score_choices(&model, &PROMPT, &choices, 6, &eval, seed).unwrap();
        assert_ne!(other_item.scores, got.scores, "items draw independently");
    }
}

#[test]
fn the_elbo_of_a_multi_token_choice_varies_across_samples_and_reports_its_error() {
    use harness::config::{EvalConfig, ObjectiveConfig};
    use harness::eval::likelihood::standard_error;
    use harness::objective::{build, DiffusionConfig};
    let model = sharp_model(4);
    let eval = EvalConfig { mc_samples: 8, batch_size: 2, ..EvalConfig::default() };
    // Different samples mask different positions of a multi-token answer.
    let masks = draw_masks(8, ANSWER.len(), 3).unwrap();
    assert!(masks.iter().any(|m| m != &masks[0]), "{masks:?}");
    for shift in [true, false] {
        let obj = build(&ObjectiveConfig::Diffusion(DiffusionConfig { shift, ..Default::default() }), MASK_ID);
        // A three-token choice (e.g. option text + eos) and a one-token choice.
        let s = obj.score_choices(&model, &PROMPT, &[ANSWER.to_vec(), vec![9]], 2, &eval, 1).unwrap();
        let se = s.se.expect("the MC ELBO reports its standard error");
        assert_eq!(se.len(), 2);
        assert!(se[0] > 0.0, "shift={shift}: different masks give different estimates: {se:?}");
        // One token: every sample masks it, so every sample is the same number.
        assert_eq!(se[1], 0.0, "shift={shift}");
        // The error is the samples' standard deviation over √n.
        let cfg = DiffusionLikelihood { mask_id: MASK_ID, shift, n_samples: 8, batch: 8, seed: 1 }.for_item(2);
        let xs: Vec<f64> = diffusion_elbo_samples(&model, &PROMPT, &ANSWER, &cfg).unwrap().iter().map(|x| x.estimate).collect();
        let mean = xs.iter().sum::<f64>() / 8.0;
        let sd = (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / 7.0).sqrt();
        assert!((se[0] - sd / 8f64.sqrt()).abs() < 1e-9, "{} vs {}", se[0], sd / 8f64.sqrt());
        assert!((s.scores[0] - mean).abs() < 1e-9);
    }
    // AR scores are exact: no error.
    let ar = build(&ObjectiveConfig::Autoregressive, MASK_ID).score_choices(&model, &PROMPT, &[ANSWER.to_vec()], 2, &eval, 1).unwrap();
    assert_eq!(ar.se, None);
    assert_eq!(standard_error(&[1.0]), 0.0);
    assert!((standard_error(&[1.0, 3.0]) - 1.0).abs() < 1e-12);
}
