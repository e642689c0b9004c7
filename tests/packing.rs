//! Packing with document masks (`train.pack_to`, `harness::objective::pack`): a packed
//! micro-batch gives the per-pair losses and gradients of the pairs run unpacked, for every
//! objective and attention, on both layer paths.

use candle_core::{Device, Tensor};
use harness::model::load::{random_model, tiny_config};
use harness::model::mask::{picture, RowMask};
use harness::model::{AdapterConfig, Fwd, LayerPath};
use harness::objective::pack::{pack, place, Placement};
use harness::objective::{scored_loss, Autoregressive, Batch, Diffusion, DiffusionConfig, Example, Objective};
use harness::train::optim::GradAccum;

/// Pairs of different lengths (prompt 2–4, response 2–5, eos 2 last).
fn pairs() -> Vec<Example> {
    (0..6u32)
        .map(|i| Example { prompt: (0..2 + i % 3).map(|k| 3 + i + k).collect(), response: (0..1 + (i * 5) % 4).map(|k| 20 + (i + k) % 9).chain([2]).collect() })
        .collect()
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap()
}

#[test]
fn first_fit_placement_and_the_block_diagonal_mask() {
    assert_eq!(
        place(&[5, 3, 4, 2], 8),
        vec![
            Placement { row: 0, offset: 0, len: 5 },
            Placement { row: 0, offset: 5, len: 3 },
            Placement { row: 1, offset: 0, len: 4 },
            Placement { row: 1, offset: 4, len: 2 },
        ]
    );
    assert_eq!(place(&[9, 2], 8)[0], Placement { row: 0, offset: 0, len: 9 }, "a pair longer than the row gets one of its own");
    // two AR pairs of 3 and 2 tokens in one row of 6: causal inside each, nothing across, the
    // spare column sees itself; positions restart
    let ex = [Example { prompt: vec![5], response: vec![6, 2] }, Example { prompt: vec![7], response: vec![2] }];
    let batch = Batch::collate(&ex.iter().collect::<Vec<_>>(), 0);
    let p = Autoregressive.prepare(&batch, 0, 0, 0).unwrap();
    let (q, _) = pack(&p, 6, 0).unwrap();
    assert_eq!((q.b, q.l), (1, 5));
    let Some(RowMask::Packed(seg)) = q.mask.as_ref() else { panic!("a shared visibility travels as segments") };
    assert_eq!(picture(&seg.visibility(5), 5), "#....\n##...\n###..\n...#.\n...##\n");
    // the device-built bias is the additive bias of that visibility
    let dev = seg.bias(5, candle_core::DType::F32, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let (host, _) = harness::model::mask::additive_bias_values(&seg.visibility(5), (5, 5), None, harness::model::mask::EmptyRow::KeepSelf);
    assert_eq!(dev, host);
    // a spare column: pack into a row of 7 with a third pair that does not fit
    let ex3 = [ex[0].clone(), ex[1].clone(), Example { prompt: vec![9, 9], response: vec![8, 2] }];
    let (q3, _) = pack(&Autoregressive.prepare(&Batch::collate(&ex3.iter().collect::<Vec<_>>(), 0), 0, 0, 0).unwrap(), 6, 0).unwrap();
    assert_eq!((q3.b, q3.l), (2, 5));
    let Some(RowMask::Packed(s3)) = q3.mask else { panic!("packed") };
    assert_eq!(&s3.pair[5..], &[2, 2, 2, 2, u32::MAX], "row 1: the third pair, then a spare column");
    let d3 = s3.bias(5, candle_core::DType::F32, &Device::Cpu).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(d3, harness::model::mask::additive_bias_values(&s3.visibility(5), (5, 5), None, harness::model::mask::EmptyRow::KeepSelf).0);
    assert_eq!(q.positions.as_deref(), Some(&[0, 1, 2, 0, 1][..]));
    assert_eq!(q.input, vec![5, 6, 2, 7, 2]);
    // AR scores rows 0, 1 (targets 6, 2) and 3 (target 2) → packed columns 0, 1, 3
    assert_eq!((q.rows.clone(), q.targets.clone()), (vec![0, 1, 3], vec![6, 2, 2]));
    assert!(pack(&p, 0, 0).unwrap_err().to_string().contains("train.pack_to"));
}

#[test]
fn a_packed_micro_batch_gives_the_unpacked_losses_and_gradients() {
    let data = pairs();
    let refs: Vec<&Example> = data.iter().collect();
    let batch = Batch::collate(&refs, 0);
    let annealed = Diffusion::new(31, DiffusionConfig { anneal_steps: 10, ..DiffusionConfig::default() }); // step 4: p = 0.5
    let complementary = Diffusion::new(31, DiffusionConfig { complementary: true, shift: false, ..DiffusionConfig::default() });
    let response = Diffusion::new(31, DiffusionConfig { loss_norm: harness::objective::LossNorm::Response, ..DiffusionConfig::default() });
    let blocks = Diffusion::new(31, DiffusionConfig { block_size: 2, ..DiffusionConfig::default() });
    let lora = AdapterConfig { rank: 4, alpha: 8.0, ..Default::default() };
    let (mut model, tr) = random_model(&tiny_config(40), &lora, 5, &Device::Cpu).unwrap();
    for (name, v) in &tr.entries {
        if name.ends_with("lora_B.weight") {
            v.set(&Tensor::randn(0f32, 0.3, v.dims(), &Device::Cpu).unwrap()).unwrap();
        }
    }
    // (the two-copy rows of block diffusion carry no right padding to drop: 2L columns each)
    for (obj, shrinks) in [(&Autoregressive as &dyn Objective, true), (&annealed, true), (&complementary, true), (&response, true), (&blocks, false)] {
        let p = obj.prepare(&batch, 4, 0, 9).unwrap();
        let (q, places) = pack(&p, 16, 9).unwrap();
        assert_eq!(q.b < p.b, shrinks, "{}: {} rows packed into {}", obj.name(), p.b, q.b);
        assert_eq!((q.denom, &q.targets, &q.weights), (p.denom, &p.targets, &p.weights), "normaliser and weights per pair, as unpacked");
        assert_eq!(places.len(), p.b);
        for path in [LayerPath::Fused, LayerPath::Reference] {
            model.set_layer_path(path);
            let ctx = Fwd { train: true, seed: 9, step: 4, micro: 0 };
            let mut runs = Vec::new();
            for prepared in [&p, &q] {
                let parts = scored_loss(&model, prepared, p.denom, 9, &ctx).unwrap();
                let g = parts.loss.backward().unwrap();
                let mut acc = GradAccum::new(&tr);
                acc.add(&g).unwrap();
                let (grads, norm) = acc.take_clipped(0.0).unwrap();
                runs.push((parts.read().unwrap(), grads.tensors, norm));
            }
            let ((a, ga, na), (b, gb, nb)) = (&runs[0], &runs[1]);
            let what = format!("{} {path:?}", obj.name());
            assert!((a.loss - b.loss).abs() < 1e-5, "{what}: loss {} vs {}", a.loss, b.loss);
            assert!((a.ce_sum - b.ce_sum).abs() < 1e-4 && a.n_scored == b.n_scored && a.n_correct == b.n_correct, "{what}: {a:?} vs {b:?}");
            assert!(*na > 0.0 && (na - nb).abs() < 1e-4 * na, "{what}: grad norm {na} vs {nb}");
            for ((name, _), (x, y)) in tr.entries.iter().zip(ga.iter().zip(gb)) {
                let d = max_diff(x, y);
                assert!(d < 1e-5, "{what}: {name} gradient differs by {d}");
            }
        }
    }
}

#[test]
fn packing_is_a_train_setting_that_runs_eagerly() {
    let raw = harness::config::RawConfig::from_str_with("[train]\npack_to = 1024\n", "t.toml", &[]).unwrap();
    assert_eq!(raw.clone().resolve().unwrap().resolved.launch, harness::train::graph::StepLaunch::Eager);
    let e = harness::config::RawConfig::from_str_with("[train]\npack_to = 1024\nlaunch = \"cuda_graph\"\n", "t.toml", &[]).unwrap().resolve().unwrap_err().to_string();
    assert!(e.contains("train.launch") && e.contains("train.pack_to"), "{e}");
}
