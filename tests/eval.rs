//! Evaluation runner: strict label parsing, and an end-to-end evaluation of a tiny model that
//! writes eval.json and predictions.jsonl whose numbers agree with each other.

use harness::data::{parse_leading_label, Item, PromptParts, ResponseFormat};
use std::path::PathBuf;

fn labels(xs: &[&str]) -> Vec<String> {
    xs.iter().map(|s| s.to_string()).collect()
}

#[test]
fn label_parsing_is_strict() {
    let yn = labels(&["yes", "no", "maybe"]);
    for (text, want) in [
        ("yes", Some(0)),
        ("Yes.", Some(0)),
        (" no\nbecause ...", Some(1)),
        ("MAYBE", Some(2)),
        ("yes, the data show", Some(0)),
        ("The answer is yes", None),
        ("yess", None),
        ("", None),
        ("y", None),
    ] {
        assert_eq!(parse_leading_label(text, &yn), want, "{text:?}");
    }
    let abcd = labels(&["A", "B", "C", "D"]);
    for (text, want) in [
        ("B", Some(1)),
        ("(C)", Some(2)),
        ("D. Stage 2", Some(3)),
        ("a)", Some(0)),
        ("E", None),
        ("Answer: B", None),
        ("BC", None),
        // an article followed by more words is not option A
        ("A 54-year-old man presents with", None),
        ("A", Some(0)),
        ("A.", Some(0)),
    ] {
        assert_eq!(parse_leading_label(text, &abcd), want, "{text:?}");
    }
}

#[test]
fn response_formats_parse_what_they_ask_for() {
    let opts = ["Normal blood pressure", "Elevated blood pressure", "Stage 1 hypertension", "Stage 2 hypertension"];
    let item = Item {
        id: "bp".into(),
        parts: PromptParts {
            question: "Which category?".into(),
            options: ["A", "B", "C", "D"].iter().zip(opts).map(|(l, t)| (l.to_string(), t.to_string())).collect(),
            ..Default::default()
        },
        choices: labels(&["A", "B", "C", "D"]),
        gold: Some(0),
        response: None,
        rationale: Some("SBP 112 < 120, DBP 70 < 80: Normal blood pressure.".into()),
    };
    use ResponseFormat::*;
    for (f, text, want) in [
        (Answer, "A 54-year-old man with a blood pressure of 112/70", None),
        (Answer, "A", Some(0)),
        (Rationale, "Answer: A", Some(0)),
        (Rationale, "SBP 112 < 120, DBP 70 < 80: Normal blood pressure. Answer: A", Some(0)),
        (Rationale, "A 54-year-old man", None),
        (Rationale, "Answer: A because", None),
        (Category, "Normal blood pressure", Some(0)),
        (Category, "Stage 2 hypertension.", Some(3)),
        (Category, "A", None),
        (Category, "A. Normal blood pressure", None),
        (AnswerWithRationale, "B\nbecause", Some(1)),
        (AnswerWithRationale, "A 54-year-old", None),
    ] {
        assert_eq!(f.parse(text, &item), want, "{f:?} {text:?}");
    }
    for f in ResponseFormat::ALL {
        assert_eq!(f.parse(&item.target_text(f).unwrap(), &item), Some(0), "{f:?}");
    }
}

#[test]
fn tiny_model_evaluation_writes_consistent_files() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    // Both objectives read the same random model; diffusion also sweeps its decoding steps.
    for (objective, extra, labels) in [
        ("autoregressive", vec![], vec!["likelihood", "generate"]),
        ("diffusion", vec!["--set", "eval.steps_sweep=[2]", "--set", "eval.mc_samples=4"], vec!["likelihood", "generate", "generate@steps=2"]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("ev");
        let status = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
            .current_dir(&root)
            .args(["eval", "--base", "random", "--dataset", "clinical-rules:n_test=12", "--method", "likelihood", "--method", "generate", "--objective", objective, "--out"])
            .arg(&out)
            .args(["--set", "model.tokenizer=tests/fixtures/smollm2-tokenizer.gguf", "--set", "model.arch={vocab_size=49152,hidden_size=32,intermediate_size=64,num_hidden_layers=1,num_attention_heads=4,num_key_value_heads=2,max_position_embeddings=512,tie_word_embeddings=true}"])
            .args(&extra)
            .output()
            .unwrap();
        assert!(status.status.success(), "{objective}: {}", String::from_utf8_lossy(&status.stderr));
        let ev: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
        let preds: Vec<serde_json::Value> = std::fs::read_to_string(out.join("predictions.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(ev["n_items"], 12);
        // The same files read through the schema types (what the notebooks use).
        let typed_dir = harness::schema::RunDir::new(&out);
        let typed = typed_dir.read_eval().unwrap().expect("eval.json");
        assert_eq!(typed.n_items, 12);
        assert_eq!(typed.methods.len(), labels.len());
        assert_eq!(typed_dir.read_predictions().unwrap().len(), 12 * labels.len());
        assert_eq!(ev["objective"], objective);
        assert_eq!(preds.len(), 12 * labels.len(), "one row per item and method");
        let names: Vec<&str> = ev["methods"].as_array().unwrap().iter().map(|m| m["method"].as_str().unwrap()).collect();
        assert_eq!(names, labels, "{objective}: method labels");
        for m in ev["methods"].as_array().unwrap() {
            let name = m["method"].as_str().unwrap();
            let rows: Vec<&serde_json::Value> = preds.iter().filter(|p| p["method"] == name).collect();
            assert_eq!(rows.len(), 12, "{objective} {name}");
            let correct = rows.iter().filter(|p| p["correct"] == true).count() as u64;
            let invalid = rows.iter().filter(|p| p["predicted"].is_null()).count() as u64;
            assert_eq!(m["report"]["correct"].as_u64().unwrap(), correct, "{name}");
            assert_eq!(m["report"]["invalid"].as_u64().unwrap(), invalid, "{name}");
            let acc = m["report"]["accuracy"]["estimate"].as_f64().unwrap();
            assert!((acc - correct as f64 / 12.0).abs() < 1e-12);
            let (lo, hi) = (m["report"]["accuracy"]["lo"].as_f64().unwrap(), m["report"]["accuracy"]["hi"].as_f64().unwrap());
            assert!(lo <= acc && acc <= hi);
            assert!(m["mean_nfe"].as_f64().unwrap() >= 1.0, "{objective} {name}: every item takes a forward pass");
            if name == "likelihood" {
                assert_eq!(invalid, 0, "likelihood always picks a choice");
                assert!(rows.iter().all(|p| p["scores"].as_array().map(|s| s.len()) == Some(4)));
            }
        }
    }
    // A diffusion-only knob on an AR evaluation is an error naming it.
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_harness"))
        .current_dir(&root)
        .args(["eval", "--base", "random", "--dataset", "clinical-rules:n_test=12", "--objective", "ar", "--set", "eval.steps_sweep=[2]", "--out"])
        .arg(dir.path().join("ev"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("eval.steps_sweep") && err.contains("autoregressive"), "{err}");
}

/// `harness eval` of the tiny random model with `extra` settings into a fresh folder; the folder.
fn eval_tiny(objective: &str, methods: &[&str], extra: &[&str]) -> (tempfile::TempDir, PathBuf) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ev");
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_harness"));
    cmd.current_dir(&root).args(["eval", "--base", "random", "--dataset", "clinical-rules:n_test=8", "--objective", objective, "--out"]).arg(&out);
    for m in methods {
        cmd.args(["--method", m]);
    }
    cmd.args(["--set", "model.tokenizer=tests/fixtures/smollm2-tokenizer.gguf", "--set", "model.arch={vocab_size=49152,hidden_size=32,intermediate_size=64,num_hidden_layers=1,num_attention_heads=4,num_key_value_heads=2,max_position_embeddings=512,tie_word_embeddings=true}"]);
    cmd.args(["--set", "eval.max_new_tokens=6", "--set", "eval.steps=3", "--set", "eval.batch_size=4"]);
    for e in extra {
        cmd.args(["--set", e]);
    }
    let status = cmd.output().unwrap();
    assert!(status.status.success(), "{objective}: {}", String::from_utf8_lossy(&status.stderr));
    (dir, out)
}

#[test]
fn both_decoders_report_the_same_decoding_diagnostics_and_the_frontier() {
    for (objective, extra, methods) in [
        ("autoregressive", vec![], vec!["generate"]),
        ("diffusion", vec!["eval.steps_sweep=[1, 6]", "eval.threshold_sweep=[0.5]"], vec!["generate", "generate@steps=1", "generate@steps=6", "generate@threshold=0.5"]),
    ] {
        let (_keep, out) = eval_tiny(objective, &["generate"], &extra);
        let ev = harness::schema::RunDir::new(&out).read_eval().unwrap().expect("eval.json");
        let names: Vec<&str> = ev.methods.iter().map(|m| m.method.as_str()).collect();
        assert_eq!(names, methods, "{objective}");
        for m in &ev.methods {
            let d = m.decode.as_ref().unwrap_or_else(|| panic!("{objective} {}: decode stats", m.method));
            assert_eq!(d.answers, 8);
            assert_eq!(d.batch_size, 4, "both decoders at eval.batch_size");
            assert_eq!(d.length_counts.len(), 7, "lengths 0..=max_new_tokens");
            assert_eq!(d.length_counts.iter().sum::<u64>(), 8);
            assert_eq!(d.eos_position_counts.len(), 6);
            let eos: u64 = d.eos_position_counts.iter().sum();
            assert!((d.hit_eos_rate - eos as f64 / 8.0).abs() < 1e-12, "{objective} {}", m.method);
            let mean_len: f64 = d.length_counts.iter().enumerate().map(|(k, &c)| k as f64 * c as f64).sum::<f64>() / 8.0;
            assert!((d.mean_length - mean_len).abs() < 1e-12);
            assert_eq!(m.generated_tokens as f64, mean_len * 8.0);
            assert_eq!(d.nfe_counts.iter().map(|v| v.count).sum::<u64>(), 8);
            let mean_nfe = d.nfe_counts.iter().map(|v| v.value as f64 * v.count as f64).sum::<f64>() / 8.0;
            assert!((m.mean_nfe - mean_nfe).abs() < 1e-12, "the NFE histogram agrees with mean_nfe");
            assert!(d.decode_s > 0.0 && d.decode_s <= m.wall_s);
            assert!((d.tokens_per_s - m.generated_tokens as f64 / d.decode_s).abs() <= 1e-9 * d.tokens_per_s.max(1.0));
            assert_eq!(m.throughput, d.tokens_per_s);
            if objective == "diffusion" {
                let steps = match m.method.as_str() {
                    "generate@steps=1" => Some(1),
                    "generate@steps=6" => Some(6),
                    "generate@threshold=0.5" => None, // the threshold strategy ignores the schedule
                    _ => Some(3),
                };
                assert_eq!(d.steps, steps, "{}", m.method);
                assert_eq!(d.cache.as_deref(), Some("none"), "{}: decoded without a cache by default", m.method);
                let cal = d.calibration.as_ref().expect("diffusion reports commit confidences");
                assert_eq!(cal.bins.len(), 10);
                assert_eq!(cal.bins.iter().map(|b| b.count).sum::<u64>(), 8, "calibration bins sum to n");
                assert_eq!(cal.bins.iter().map(|b| b.correct).sum::<u64>(), m.report.correct);
                assert!((0.0..=1.0).contains(&cal.ece));
            } else {
                assert_eq!(d.steps, None);
                assert_eq!(d.strategy, None);
                assert_eq!(d.cache, None);
            }
        }
        if objective == "diffusion" {
            let t = ev.methods.iter().find(|m| m.method == "generate@threshold=0.5").unwrap().decode.clone().unwrap();
            assert_eq!((t.strategy.as_deref(), t.threshold), (Some("threshold"), Some(0.5)));
        }
        // frontier.csv: one row per generate method (the base method and each sweep point).
        let rows = harness::schema::eval::read_frontier(&out).unwrap().expect("frontier.csv");
        assert_eq!(rows.iter().map(|r| r.method.as_str()).collect::<Vec<_>>(), methods, "{objective}");
        // The CSV holds the rows eval.json implies (floats through text: equal to ~1e-12).
        let near = |a: f64, b: f64| (a - b).abs() <= 1e-12 * a.abs().max(1.0);
        for (r, e) in rows.iter().zip(ev.frontier()) {
            assert_eq!((&r.method, r.objective, &r.strategy, r.steps, r.threshold, r.n, r.batch_size), (&e.method, e.objective, &e.strategy, e.steps, e.threshold, e.n, e.batch_size));
            for (a, b) in [(r.accuracy, e.accuracy), (r.accuracy_lo, e.accuracy_lo), (r.accuracy_hi, e.accuracy_hi), (r.mean_nfe, e.mean_nfe), (r.tokens_per_s, e.tokens_per_s), (r.mean_length, e.mean_length)] {
                assert!(near(a, b), "{}: {a} vs {b}", r.method);
            }
        }
        for (r, m) in rows.iter().zip(&ev.methods) {
            assert!(near(r.accuracy, m.report.accuracy.estimate));
            assert!(r.accuracy_lo <= r.accuracy && r.accuracy <= r.accuracy_hi);
            assert!(near(r.mean_nfe, m.mean_nfe));
        }
        // `harness report` on the folder renders the frontier.
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let rep = std::process::Command::new(env!("CARGO_BIN_EXE_harness")).current_dir(&root).arg("report").arg(&out).output().unwrap();
        assert!(rep.status.success(), "{}", String::from_utf8_lossy(&rep.stderr));
        let text = String::from_utf8_lossy(&rep.stdout);
        assert!(text.contains("speed–accuracy frontier") && text.contains("tokens/s"), "{text}");
    }
}

#[test]
fn the_prefix_cache_is_an_eval_setting_recorded_in_the_decoding_diagnostics() {
    // `--set eval.cache="prefix"` decodes with the prefix KV cache (blocks of 3 here: a refresh
    // per block) and eval.json says so, per generate method, sweeps included.
    let (_keep, out) = eval_tiny("diffusion", &["generate"], &["eval.cache=\"prefix\"", "eval.block_len=3", "eval.threshold_sweep=[0.5]"]);
    let ev = harness::schema::RunDir::new(&out).read_eval().unwrap().expect("eval.json");
    assert_eq!(ev.methods.len(), 2);
    for m in &ev.methods {
        let d = m.decode.as_ref().expect("decode stats");
        assert_eq!(d.cache.as_deref(), Some("prefix"), "{}", m.method);
        assert_eq!(d.answers, 8);
    }
}

#[test]
fn the_cache_sweep_decodes_one_model_with_and_without_the_prefix_cache() {
    // eval.cache_sweep adds `generate@cache=prefix` beside the plain (uncached) `generate`: the
    // same trained model, its accuracy and speed with and without the cache, in frontier.csv.
    let (_keep, out) = eval_tiny("diffusion", &["generate"], &["eval.block_len=3", "eval.cache_sweep=[\"prefix\"]"]);
    let ev = harness::schema::RunDir::new(&out).read_eval().unwrap().expect("eval.json");
    let names: Vec<&str> = ev.methods.iter().map(|m| m.method.as_str()).collect();
    assert_eq!(names, ["generate", "generate@cache=prefix"]);
    let caches: Vec<Option<&str>> = ev.methods.iter().map(|m| m.decode.as_ref().and_then(|d| d.cache.as_deref())).collect();
    assert_eq!(caches, [Some("none"), Some("prefix")]);
    let rows = harness::schema::eval::read_frontier(&out).unwrap().expect("frontier.csv");
    let cached: Vec<Option<&str>> = rows.iter().map(|r| r.cache.as_deref()).collect();
    assert_eq!(cached, [Some("none"), Some("prefix")], "frontier.csv has the cache column");
    let header = std::fs::read_to_string(out.join("frontier.csv")).unwrap();
    assert!(header.lines().next().unwrap().split(',').any(|c| c == "cache"), "{header}");
}

#[test]
fn eval_json_without_the_decoding_fields_still_reads() {
    // An eval.json written before the decoding diagnostics: a method without `decode`.
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let (_keep, out) = eval_tiny("autoregressive", &["generate"], &[]);
    let mut v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.join("eval.json")).unwrap()).unwrap();
    for m in v["methods"].as_array_mut().unwrap() {
        m.as_object_mut().unwrap().remove("decode");
    }
    let old: harness::schema::EvalResult = serde_json::from_value(v).unwrap();
    assert!(old.methods.iter().all(|m| m.decode.is_none()));
    assert!(old.frontier().is_empty());
    let _ = root;
}

#[test]
fn eval_limit_takes_a_seeded_sample() {
    use harness::eval::runner::sample_limit;
    let ids: Vec<usize> = (0..100).collect();
    let a = sample_limit(ids.clone(), Some(10), 7);
    assert_eq!(a.len(), 10);
    assert_eq!(a, sample_limit(ids.clone(), Some(10), 7), "same seed, same sample");
    assert_ne!(a, sample_limit(ids.clone(), Some(10), 8), "another seed, another sample");
    assert_ne!(a, (0..10).collect::<Vec<_>>(), "not the first n");
    let mut sorted = a.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), 10, "without repeats");
    assert_eq!(sample_limit(ids.clone(), None, 7), ids, "no limit: every item, in order");
    assert_eq!(sample_limit(ids.clone(), Some(500), 7).len(), 100);
    // Through the evaluation: the predicted ids are that sample of the split's items.
    let (_k1, out1) = eval_tiny("autoregressive", &["generate"], &["eval.limit=3"]);
    let (_k2, out2) = eval_tiny("autoregressive", &["generate"], &["eval.limit=3"]);
    let (_k3, out3) = eval_tiny("autoregressive", &["generate"], &["eval.limit=3", "seed=5"]);
    let ids_of = |d: &PathBuf| harness::schema::RunDir::new(d).read_predictions().unwrap().into_iter().map(|p| p.id).collect::<Vec<_>>();
    assert_eq!(ids_of(&out1).len(), 3);
    assert_eq!(ids_of(&out1), ids_of(&out2));
    assert_ne!(ids_of(&out1), ids_of(&out3));
}

#[test]
fn a_partly_annealed_model_is_read_under_its_last_mask() {
    use harness::config::EvalAttention;
    use harness::model::mask::AttentionMode;
    use harness::objective::diffusion::ReadAttention;
    // 120 of 300 annealing steps: the mask of step 119, 40% of future keys visible.
    let r = ReadAttention::resolve(EvalAttention::Trained, AttentionMode::Annealed { anneal_steps: 300 }, Some(120), 9);
    assert_eq!(r.mode, AttentionMode::Annealed { anneal_steps: 300 });
    assert_eq!((r.step, r.seed), (119, 9));
    assert!((r.future_visibility() - 0.4).abs() < 1e-12);
    // Annealing finished, an untrained model, or an explicit choice: full / causal.
    assert_eq!(ReadAttention::resolve(EvalAttention::Trained, AttentionMode::Annealed { anneal_steps: 100 }, Some(120), 9), ReadAttention::FULL);
    assert_eq!(ReadAttention::resolve(EvalAttention::Trained, AttentionMode::Annealed { anneal_steps: 120 }, Some(120), 9), ReadAttention::FULL);
    assert_eq!(ReadAttention::resolve(EvalAttention::Trained, AttentionMode::Annealed { anneal_steps: 300 }, None, 9), ReadAttention::FULL);
    assert_eq!(ReadAttention::resolve(EvalAttention::Full, AttentionMode::Annealed { anneal_steps: 300 }, Some(120), 9), ReadAttention::FULL);
    assert_eq!(ReadAttention::resolve(EvalAttention::Causal, AttentionMode::Annealed { anneal_steps: 1 }, Some(120), 9).future_visibility(), 0.0);
    // The objective built for evaluation says so.
    let cfg = harness::config::ObjectiveConfig::Diffusion(harness::objective::DiffusionConfig { anneal_steps: 300, ..Default::default() });
    assert_eq!(cfg.build_for_eval(0, EvalAttention::Trained, Some(120), 9).eval_attention(), AttentionMode::Annealed { anneal_steps: 300 });
    assert_eq!(cfg.build_for_eval(0, EvalAttention::Full, Some(120), 9).eval_attention(), AttentionMode::Full);
    assert!((cfg.eval_future_visibility(EvalAttention::Trained, Some(120), 9) - 0.4).abs() < 1e-12);
}

#[test]
fn the_diffusion_sampler_reports_each_tokens_commit_confidence_and_reads_only_canvas_logits() {
    use candle_core::{Device, Tensor};
    use harness::model::load::{random_model, tiny_config};
    use harness::model::mask::AttentionMode;
    use harness::sample::{Denoiser, DiffusionSampler, ModelDenoiser};
    let model = random_model(&tiny_config(64), &harness::model::AdapterConfig::default(), 2, &Device::Cpu).unwrap().0;
    let d = ModelDenoiser::new(&model, AttentionMode::Full);
    // The head on the tail columns equals the tail of the full logits.
    let ids = Tensor::from_slice(&[5u32, 9, 13, 2, 40, 41], (1, 6), &Device::Cpu).unwrap();
    let full = d.logits(&ids).unwrap().narrow(1, 4, 2).unwrap();
    let tail = d.logits_padded_from(&ids, None, 4).unwrap();
    let diff = (full - tail).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "{diff}");
    let mut s = DiffusionSampler::new(6, 3, 63, 62);
    s.shift = true;
    s.batch_size = 2;
    for o in s.generate(&d, &[vec![1u32, 2, 3], vec![4u32, 5]], 0).unwrap() {
        assert_eq!(o.confidence.len(), o.tokens.len());
        assert!(o.confidence.iter().all(|&c| c > 0.0 && c <= 1.0), "{:?}", o.confidence);
    }
}

#[test]
fn calibration_bins_and_ece_by_hand() {
    use harness::eval::metrics::{answer_confidence, calibration};
    use harness::objective::Generated;
    let cal = calibration(&[(0.05, false), (0.95, true), (0.95, false), (1.0, true)], 10);
    assert_eq!(cal.bins.iter().map(|b| b.count).collect::<Vec<_>>(), vec![1, 0, 0, 0, 0, 0, 0, 0, 0, 3], "1.0 falls in the last bin");
    assert_eq!(cal.bins[9].correct, 2);
    assert!((cal.bins[9].mean_confidence - 2.9 / 3.0).abs() < 1e-12);
    // ECE = 1/4·|0 − 0.05| + 3/4·|2/3 − 2.9/3| = 0.0125 + 0.225
    assert!((cal.ece - 0.2375).abs() < 1e-12, "{}", cal.ece);
    assert_eq!(calibration(&[], 10).ece, 0.0);
    // An answer's confidence is the mean over its tokens; empty = 0; missing confidences = None.
    let g = |tokens: Vec<u32>, confidence: Vec<f32>| Generated { tokens, nfe: 1, hit_eos: true, confidence };
    assert_eq!(answer_confidence(&g(vec![1, 2], vec![0.5, 1.0])), Some(0.75));
    assert_eq!(answer_confidence(&g(vec![], vec![])), Some(0.0));
    assert_eq!(answer_confidence(&g(vec![1, 2], vec![])), None);
}

#[test]
fn a_partly_annealed_reading_is_neither_full_nor_causal_attention() {
    use candle_core::{Device, Tensor};
    use harness::config::EvalAttention;
    use harness::model::load::{random_model, tiny_config};
    use harness::model::mask::AttentionMode;
    use harness::objective::diffusion::ReadAttention;
    use harness::sample::{Denoiser, ModelDenoiser};
    let model = random_model(&tiny_config(64), &harness::model::AdapterConfig::default(), 6, &Device::Cpu).unwrap().0;
    let ids = Tensor::from_slice(&[5u32, 9, 13, 2, 40, 41, 7, 8], (1, 8), &Device::Cpu).unwrap();
    let logits = |r: ReadAttention| ModelDenoiser::reading(&model, r).logits(&ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let max_diff = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let half = ReadAttention::resolve(EvalAttention::Trained, AttentionMode::Annealed { anneal_steps: 200 }, Some(100), 3); // 50% of future keys
    let (p, full, causal) = (logits(half), logits(ReadAttention::FULL), logits(ReadAttention::CAUSAL));
    assert!(max_diff(&p, &full) > 1e-6 && max_diff(&p, &causal) > 1e-6, "the annealed mask is in effect");
    assert_eq!(p, logits(half), "the same draw every time");
    // ModelDenoiser::new with an annealed mode is its end state: full attention.
    let end = ModelDenoiser::new(&model, AttentionMode::Annealed { anneal_steps: 200 }).logits(&ids).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(max_diff(&end, &full) < 1e-6);
}

#[test]
fn a_train_max_canvas_is_the_longest_training_response_for_both_decoders() {
    // clinical-rules letter answers: the letter and the eos, well under the 6-token budget
    for objective in ["diffusion", "autoregressive"] {
        let (_keep, out) = eval_tiny(objective, &["generate"], &["eval.canvas=\"train_max\""]);
        let ev = harness::schema::RunDir::new(&out).read_eval().unwrap().expect("eval.json");
        let d = ev.methods[0].decode.as_ref().unwrap();
        assert!(d.max_new_tokens >= 1 && d.max_new_tokens < 6, "{objective}: budget {}", d.max_new_tokens);
        assert_eq!(d.length_counts.len(), d.max_new_tokens + 1, "{objective}: no output past the budget");
        let (_keep2, fixed) = eval_tiny(objective, &["generate"], &[]);
        let f = harness::schema::RunDir::new(&fixed).read_eval().unwrap().expect("eval.json");
        assert_eq!(f.methods[0].decode.as_ref().unwrap().max_new_tokens, 6, "{objective}: fixed is eval.max_new_tokens");
    }
}
