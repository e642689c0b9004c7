//! Block-diffusion SFT (`objective.block_size`): the two-copy training mask, the reduction to
//! plain ddm-sft with one block, the independence of a block from later ones, and the block
//! sampler with and without its KV cache.

use candle_core::Device;
use harness::config::{EvalConfig, RawConfig};
use harness::model::load::{random_weights, tiny_config};
use harness::model::mask::{picture, two_copy_visibility, visibility, AttentionMode};
use harness::model::{AdapterConfig, BuildOpts, Fwd, Llama};
use harness::objective::{scored_loss, Batch, Diffusion, DiffusionConfig, Objective};
use harness::sample::CacheKind;

const VOCAB: usize = 64;
const MASK: u32 = 63;
const EOS: u32 = 2;

/// The tiny shape with weights N(0, 0.5²): context-dependent predictions, so a changed key shows.
fn sharp(seed: u64) -> Llama {
    let cfg = tiny_config(VOCAB);
    let w = random_weights(&cfg, 0.5, seed, candle_core::DType::F32, &Device::Cpu).unwrap();
    let vb = candle_nn::VarBuilder::from_tensors(w, candle_core::DType::F32, &Device::Cpu);
    Llama::load(vb, &cfg, &BuildOpts { adapter: &AdapterConfig::default(), seed, layer_path: harness::model::LayerPath::Fused, time_embedding: false }).unwrap().0
}

fn ddm(block_size: usize, shift: bool) -> Diffusion {
    Diffusion::new(MASK, DiffusionConfig { block_size, shift, ..DiffusionConfig::default() })
}

#[test]
fn the_two_copy_mask_for_blocks_of_two_on_a_six_token_response() {
    // prompt 2 + response 6 (L = 8): groups [0 0 0 0 | 1 1 | 2 2] (the prompt joins block 0).
    // Rows 0–7 are the noised queries, 8–15 the clean ones; columns likewise.
    let v = two_copy_visibility(8, 2, 2, 8);
    let want = "\
####............
####............
####............
####............
....##..####....
....##..####....
......########..
......########..
........####....
........####....
........####....
........####....
........######..
........######..
........########
........########
";
    assert_eq!(picture(&v, 16), want);
    // right padding after 7 real columns hides the last column of both copies as a key
    let p = two_copy_visibility(8, 2, 2, 7);
    assert!((0..16).all(|q| !p[q * 16 + 7] && !p[q * 16 + 15]));
    // the reading: a canvas of 4 after 3 prompt columns, blocks of 2: [0 0 0 0 0 | 1 1]
    let r = visibility(AttentionMode::Blocks { size: 2, canvas: 4 }, 7, 0, 0);
    assert_eq!(picture(&r, 7), "#####..\n#####..\n#####..\n#####..\n#####..\n#######\n#######\n");
}

/// Two rows, the second right-padded, every response token masked at t = 0.5.
fn batch() -> (Batch, Vec<f64>, Vec<bool>) {
    let b = Batch { ids: vec![5, 9, 13, 20, 21, 22, 23, 2, 7, 8, 30, 31, 32, 2, 0, 0], b: 2, l: 8, prompt_len: vec![3, 2], len: vec![8, 6] };
    let mut masked = vec![false; 16];
    for (i, m) in masked.iter_mut().enumerate() {
        let (r, c) = (i / 8, i % 8);
        *m = c >= b.prompt_len[r] && c < b.len[r] && (c + r) % 3 != 0;
    }
    (b, vec![0.5, 0.25], masked)
}

#[test]
fn one_block_as_long_as_the_response_is_plain_ddm_sft() {
    let model = sharp(1);
    let (batch, t, masked) = batch();
    for shift in [true, false] {
        let plain = ddm(0, shift).prepare_with(&batch, &t, &masked, 0).unwrap();
        let block = ddm(8, shift).prepare_with(&batch, &t, &masked, 0).unwrap();
        assert_eq!((block.l, plain.l), (16, 8), "two copies side by side");
        assert_eq!((&block.targets, &block.weights, block.denom), (&plain.targets, &plain.weights, plain.denom));
        for ctx in [Fwd::default(), Fwd { train: true, ..Fwd::default() }] {
            let a = scored_loss(&model, &plain, plain.denom, 0, &ctx).unwrap().read().unwrap();
            let b = scored_loss(&model, &block, block.denom, 0, &ctx).unwrap().read().unwrap();
            assert!((a.loss - b.loss).abs() < 1e-5, "shift {shift}, train {}: {} vs {}", ctx.train, a.loss, b.loss);
            assert_eq!(a.n_scored, b.n_scored);
        }
    }
}

#[test]
fn with_shift_the_first_token_of_a_later_block_is_read_from_the_clean_copy() {
    let (batch, t, masked) = batch();
    let p = ddm(2, true).prepare_with(&batch, &t, &masked, 0).unwrap();
    // row 0: prompt 3, blocks of 2 start at 3 (with the prompt), 5 and 7.
    // masked (c + 0) % 3 != 0 over 3..8: positions 4, 5, 7.
    //   4 (block 0): noised column 3; 5 (block 1's first): clean column 8 + 4 = 12;
    //   7 (block 2's first): clean column 8 + 6 = 14.
    // row 1 (offset 16): prompt 2, real length 6, masked (c + 1) % 3 != 0 over 2..6: 3, 4.
    //   3 (block 0): noised column 2; 4 (block 1's first): clean column 8 + 3 = 11.
    assert_eq!(p.rows, vec![3, 12, 14, 16 + 2, 16 + 11]);
    assert_eq!(p.targets, vec![21, 22, 2, 31, 32]);
    assert_eq!(p.positions.as_ref().unwrap()[..16], (0..8).chain(0..8).collect::<Vec<u32>>()[..]);
    // the noised copy carries the masks, the clean copy the tokens
    assert_eq!(&p.input[..16], &[5, 9, 13, 20, MASK, MASK, 23, MASK, 5, 9, 13, 20, 21, 22, 23, 2]);
}

#[test]
fn a_block_never_depends_on_a_later_block() {
    // Row 0 (prompt 3, response 3..8) has blocks [3 4] (with the prompt), [5 6], [7]. Change the
    // unmasked token at 6 (block 1): the rows that predict block 0 and block 1's first token
    // (read from the clean column 4, group 0) keep their cross-entropy; the row that predicts
    // block 2's first token (the clean column 6) changes; row 1 is another sequence.
    let model = sharp(2);
    let (batch, t, masked) = batch();
    assert!(!masked[6]);
    let d = ddm(2, true);
    let base = d.prepare_with(&batch, &t, &masked, 0).unwrap();
    let mut other = batch.clone();
    other.ids[6] = 40;
    let changed = d.prepare_with(&other, &t, &masked, 0).unwrap();
    assert_eq!(base.rows, changed.rows);
    let ce = |p| harness::objective::scored::row_ce(&model, p, 0).unwrap();
    let (a, b) = (ce(&base), ce(&changed));
    for (k, &r) in base.rows.iter().enumerate() {
        let moved = (a[k] - b[k]).abs() > 1e-4;
        assert_eq!(moved, r == 14, "row {r}: {} vs {}", a[k], b[k]);
        if r != 14 {
            assert!((a[k] - b[k]).abs() < 1e-6, "row {r} of an earlier block moved: {} vs {}", a[k], b[k]);
        }
    }
    // without blocks (full attention) the row predicting position 4 does see position 6
    let plain = ddm(0, true);
    let (pa, pb) = (ce(&plain.prepare_with(&batch, &t, &masked, 0).unwrap()), ce(&plain.prepare_with(&other, &t, &masked, 0).unwrap()));
    assert!((pa[0] - pb[0]).abs() > 1e-4, "full attention lets position 4 see position 6");
}

#[test]
fn the_cached_block_sampler_gives_the_uncached_tokens() {
    let model = sharp(3);
    let prompts: Vec<Vec<u32>> = vec![vec![5, 9, 13], vec![7, 8], vec![11, 12, 14, 15, 16]];
    let d = ddm(3, true).reading(harness::model::mask::ReadAttention::end_of(AttentionMode::Blocks { size: 3, canvas: 0 }));
    let eval = EvalConfig { steps: 9, max_new_tokens: 9, batch_size: 2, temperature: 0.0, ..EvalConfig::default() };
    let none = d.generate(&model, &prompts, EOS, &eval, 4).unwrap();
    let prefix = d.generate(&model, &prompts, EOS, &EvalConfig { cache: CacheKind::Prefix, ..eval.clone() }, 4).unwrap();
    for (a, b) in none.iter().zip(&prefix) {
        assert_eq!(a.tokens, b.tokens);
        assert_eq!(a.nfe, b.nfe);
    }
    assert!(none.iter().any(|g| !g.tokens.is_empty()));
    // the block reading matters: the full-attention reading decodes something else
    let full = ddm(3, true).generate(&model, &prompts, EOS, &eval, 4).unwrap();
    assert_ne!(full.iter().map(|g| g.tokens.clone()).collect::<Vec<_>>(), none.iter().map(|g| g.tokens.clone()).collect::<Vec<_>>());
}

#[test]
fn block_choice_scores_are_finite_paired_and_seeded() {
    let model = sharp(4);
    let d = ddm(2, true);
    let eval = EvalConfig { mc_samples: 8, batch_size: 2, ..EvalConfig::default() };
    let choices = vec![vec![20u32, 21, 2], vec![30, 31, 32, 2]];
    let a = d.score_choices(&model, &[5, 9, 13], &choices, 3, &eval, 1).unwrap();
    let b = d.score_choices(&model, &[5, 9, 13], &choices, 3, &eval, 1).unwrap();
    assert_eq!(a, b, "same seed and item → same scores");
    assert!(a.scores.iter().all(|s| s.is_finite() && *s < 0.0), "{:?}", a.scores);
    assert!(a.se.as_ref().unwrap().iter().all(|s| s.is_finite() && *s > 0.0));
    assert_ne!(a.scores, d.score_choices(&model, &[5, 9, 13], &choices, 4, &eval, 1).unwrap().scores, "another item draws anew");
}

fn validate(sets: &[&str]) -> Result<(), String> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let raw = RawConfig::from_str_with("[objective]\nkind = \"diffusion\"\n", "test.toml", &sets).map_err(|e| e.to_string())?;
    raw.clone().resolve().map(|_| ()).map_err(|e| e.to_string())
}

#[test]
fn block_settings_are_checked_with_the_key_named() {
    assert!(validate(&["objective.block_size=4", "eval.max_new_tokens=16", "eval.steps=16"]).is_ok());
    let e = validate(&["objective.block_size=4", "objective.anneal_steps=10"]).unwrap_err();
    assert!(e.contains("objective.block_size") && e.contains("anneal_steps"), "{e}");
    let e = validate(&["objective.block_size=4", "eval.block_len=8"]).unwrap_err();
    assert!(e.contains("eval.block_len"), "{e}");
    let e = validate(&["objective.block_size=4", "eval.max_new_tokens=32", "eval.steps=4"]).unwrap_err();
    assert!(e.contains("eval.steps") && e.contains("8 blocks"), "{e}");
    let e = validate(&["objective.block_size=4", "eval.max_new_tokens=16", "eval.steps=16", "train.launch=cuda_graph", "model.device=cpu"]).unwrap_err();
    assert!(e.contains("train.launch") && e.contains("two-copy"), "{e}");
    let raw = RawConfig::from_str_with("[objective]\nkind = \"diffusion\"\nblock_size = 4\n", "t.toml", &["eval.max_new_tokens=16".into(), "eval.steps=16".into()]).unwrap();
    assert_eq!(raw.resolve().unwrap().resolved.launch, harness::train::graph::StepLaunch::Eager);
}

#[test]
fn the_block_reading_caches_the_committed_blocks_exactly() {
    use candle_core::Tensor;
    use harness::model::mask::ReadAttention;
    use harness::sample::{Denoiser, ModelDenoiser, PrefixCache};
    // prompt 3 + canvas 6 in blocks of 2: block 0 (with the prompt) committed, block 1 current
    let model = sharp(5);
    let d = ModelDenoiser::reading(&model, ReadAttention::end_of(AttentionMode::Blocks { size: 2, canvas: 6 }));
    let row = |c5: u32| Tensor::from_vec(vec![5u32, 9, 13, 20, 21, c5, MASK, MASK, MASK], (1, 9), &Device::Cpu).unwrap();
    let asked = [(0usize, 4usize), (0, 5)]; // with shift: block 1's two positions read columns 4 and 5
    let mut cache = PrefixCache::default();
    for c5 in [MASK, 33] {
        let cached = d.logits_at_prefix(&row(c5), None, &asked, &[5], &mut cache).unwrap();
        let whole = d.logits_at(&row(c5), None, &asked).unwrap();
        let diff = (cached - whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "cached logits differ by {diff}");
    }
    // the second pass ran only the chunk from column 4: 9 + 5 query columns, one refresh
    assert_eq!((cache.query_columns(), cache.refreshes()), (9 + 5, 1));
    // block 1 committed: block 2 (columns 7, 8) starts by appending columns 5, 6 to the cache,
    // not by rerunning the row, and its logits are still the whole row's
    let row2 = Tensor::from_vec(vec![5u32, 9, 13, 20, 21, 33, 34, MASK, MASK], (1, 9), &Device::Cpu).unwrap();
    let asked2 = [(0usize, 6usize), (0, 7)];
    let cached = d.logits_at_prefix(&row2, None, &asked2, &[7], &mut cache).unwrap();
    let whole = d.logits_at(&row2, None, &asked2).unwrap();
    let diff = (cached - whole).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "extended-cache logits differ by {diff}");
    assert_eq!((cache.refreshes(), cache.extensions()), (1, 1));
    assert_eq!(cache.query_columns(), 9 + 5 + 2 + 3, "+ the 2 appended columns + the chunk from column 6");
    // during block 0 nothing is cached: the prompt attends to the block being decoded
    let mut c0 = PrefixCache::default();
    for _ in 0..2 {
        d.logits_at_prefix(&row(MASK), None, &[(0, 2)], &[3], &mut c0).unwrap();
    }
    assert_eq!(c0.query_columns(), 2 * 9, "block 0 runs every column at every step");
}

#[test]
fn the_split_bias_is_the_additive_bias_of_hidden_rows() {
    use harness::model::mask::{additive_bias, split_bias, EmptyRow};
    let vis = visibility(AttentionMode::Blocks { size: 2, canvas: 4 }, 7, 0, 0);
    let kv = vec![vec![true; 7], vec![false, false, true, true, true, true, true], vec![false; 7]];
    let a = additive_bias(&vis, (7, 7), Some(&kv), EmptyRow::Hidden, candle_core::DType::F32, &Device::Cpu).unwrap();
    let b = split_bias(&vis, (7, 7), &kv, candle_core::DType::F32, &Device::Cpu).unwrap();
    assert_eq!(a.dims(), b.dims());
    assert_eq!(a.flatten_all().unwrap().to_vec1::<f32>().unwrap(), b.flatten_all().unwrap().to_vec1::<f32>().unwrap());
}

#[test]
fn the_two_copy_bias_built_on_the_device_is_the_host_one() {
    use harness::model::mask::{additive_bias_values, EmptyRow, RowMask};
    let (batch, t, masked) = batch();
    for score_padding in [false, true] {
        let d = Diffusion::new(MASK, DiffusionConfig { block_size: 2, score_padding, ..DiffusionConfig::default() });
        let p = d.prepare_with(&batch, &t, &masked, 0).unwrap();
        let Some(mask @ RowMask::TwoCopy(_)) = &p.mask else { panic!("two copies") };
        let dev = mask.bias(p.b, p.l, candle_core::DType::F32, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let (host, rows) = additive_bias_values(&mask.visibility(p.b, p.l), (p.l, p.l), None, EmptyRow::KeepSelf);
        assert_eq!(rows, 2);
        assert_eq!(dev, host, "score_padding {score_padding}");
    }
}
