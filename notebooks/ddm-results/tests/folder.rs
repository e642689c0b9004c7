//! A small fixture study folder written by the test (two objectives, a swept key, one seed, a
//! zero-shot run, a decoding-step sweep), and, when present, the smoke study's real output.

use ddm_results::sweep::{Axis, Metric};
use ddm_results::{figures, tables, Study};
use serde_json::json;
use std::path::{Path, PathBuf};

fn report(acc: f64) -> serde_json::Value {
    json!({"n": 4, "correct": 2, "accuracy": {"estimate": acc, "lo": 0.1, "hi": 0.9}, "invalid": 0, "invalid_rate": 0.0,
           "macro_f1": {"estimate": acc / 2.0, "lo": 0.0, "hi": 0.8}, "balanced_accuracy": {"estimate": acc, "lo": 0.0, "hi": 1.0},
           "per_class": [], "predicted": [], "majority_baseline": {"label": "yes", "accuracy": 0.5}, "collapse": null,
           "confusion": {"labels": ["yes", "no"], "counts": [[1, 1], [1, 1]], "invalid": [0, 0]}, "bootstrap_resamples": 10, "seed": 0})
}

fn point(id: &str, cfg: &str, kind: &str, anneal: Option<u64>, zero_shot: bool) -> serde_json::Value {
    let axes: Vec<(String, String)> = match anneal {
        Some(a) => vec![("objective.kind".into(), format!("\"{kind}\"")), ("objective.anneal_steps".into(), a.to_string())],
        None => vec![],
    };
    json!({"id": id, "config_id": cfg, "variant": null, "overrides": axes, "axes": axes, "seed": 0, "zero_shot": zero_shot,
           "primary_metric": "accuracy", "config": {"objective": {"kind": kind}, "eval": {"steps": 8}}})
}

fn stats(cfg: &str, kind: &str, acc: f64, zero_shot: bool) -> serde_json::Value {
    json!({"config_id": cfg, "dataset": "toy", "method": "generate", "zero_shot": zero_shot, "objective": kind, "primary_metric": "accuracy",
           "runs": 1, "done": 1, "failed": 0, "primary": {"n": 1, "mean": acc, "std_dev": null, "interval": null},
           "accuracy": {"n": 1, "mean": acc, "std_dev": null, "interval": null}, "macro_f1": {"n": 1, "mean": acc / 2.0, "std_dev": null, "interval": null},
           "single_accuracy": {"estimate": acc, "lo": 0.1, "hi": 0.9}, "single_macro_f1": {"estimate": acc / 2.0, "lo": 0.0, "hi": 0.8},
           "majority": {"label": "yes", "accuracy": 0.5}, "invalid_rate": 0.0, "collapsed": [], "final_loss": 1.5})
}

/// Write the fixture under a fresh temporary folder; returns `<tmp>/results/toy`.
fn fixture(name: &str, finished: bool) -> PathBuf {
    let root = std::env::temp_dir().join(format!("ddm-results-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let study = root.join("results/toy");
    let dir = study.join("20260101-000000-abc1234");
    let runs = [
        ("ddm-anneal_steps=1-seed0", "ddm-anneal_steps=1", "diffusion", Some(1), false, 0.5),
        ("ddm-anneal_steps=50-seed0", "ddm-anneal_steps=50", "diffusion", Some(50), false, 0.75),
        ("ar-anneal_steps=1-seed0", "ar-anneal_steps=1", "autoregressive", Some(1), false, 0.25),
        ("zero_shot-toy-seed0", "zero_shot-toy", "autoregressive", None, true, 0.0),
    ];
    let manifest = json!({
        "study": "toy", "folder": "20260101-000000-abc1234", "question": "Does the fixture load?",
        "axis_keys": ["objective.kind", "objective.anneal_steps"],
        "points": runs.iter().map(|r| point(r.0, r.1, r.2, r.3, r.4)).collect::<Vec<_>>(),
        "git": {"commit": "abc1234def", "short": "abc1234", "dirty": false, "note": null},
        "harness_version": "0.1.0", "candle_version": "0.11.1",
        "device": {"device": "cpu", "name": "Test CPU", "driver_version": null, "cuda_version": null, "host": "testhost"},
        "start": "2026-01-01T00:00:00Z", "end": if finished { json!("2026-01-01T00:01:00Z") } else { json!(null) }, "sets": []
    });
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    let mut csv = String::from("run_id,configuration,zero_shot,objective.kind,objective.anneal_steps,seed,objective,final_loss,train_tokens_per_s,generate_accuracy,generate_throughput\n");
    for (i, r) in runs.iter().enumerate() {
        csv += &format!("{},{},{},{},{},0,{},{},{},{},{}\n", r.0, r.1, r.4, r.2, r.3.map(|a| a.to_string()).unwrap_or_default(), r.2,
            if r.4 { String::new() } else { format!("{}", 2.0 - i as f64 * 0.1) }, if r.4 { String::new() } else { "500".into() }, r.5, 40 + i);
        let rd = dir.join("runs").join(r.0);
        if !finished && i == 3 {
            continue; // an unfinished run
        }
        std::fs::create_dir_all(&rd).unwrap();
        std::fs::write(rd.join("DONE"), "2026-01-01T00:00:30Z\n").unwrap();
        if !r.4 {
            std::fs::write(rd.join("metrics.csv"), "step,epoch,lr,loss,ce,token_acc,grad_norm,scored_tokens,tokens,tokens_per_s,elapsed_s\n1,0.5,0.001,3.0,2.5,0,1,10,100,500,0.2\n2,1.0,0.001,2.0,1.5,0,1,10,100,500,0.4\n").unwrap();
        }
        let mut methods = vec![json!({"method": "generate", "report": report(r.5), "wall_s": 1.0, "generated_tokens": 4, "throughput": 40.0, "throughput_unit": "tokens/s", "mean_nfe": 8.0})];
        if r.2 == "diffusion" {
            methods.push(json!({"method": "generate@steps=2", "report": report(r.5 / 2.0), "wall_s": 0.5, "generated_tokens": 4, "throughput": 80.0, "throughput_unit": "tokens/s", "mean_nfe": 2.0}));
        }
        std::fs::write(rd.join("eval.json"), json!({"dataset": "toy", "split": "test", "n_items": 4, "n_truncated": 0, "objective": r.2, "methods": methods}).to_string()).unwrap();
    }
    std::fs::write(dir.join("summary.csv"), csv).unwrap();
    let analysis = json!({
        "configs": runs.iter().map(|r| stats(r.1, r.2, r.5, r.4)).collect::<Vec<_>>(),
        "pairs": [{"ddm": "ddm-anneal_steps=1-seed0", "ar": "ar-anneal_steps=1-seed0", "label": "objective.anneal_steps=1", "seed": 0, "dataset": "toy", "method": "generate",
                   "comparison": {"n": 4, "a_accuracy": 0.5, "b_accuracy": 0.25, "both_correct": 1, "both_wrong": 2, "mcnemar": {"b": 1, "c": 0, "p_value": 1.0},
                                  "accuracy_diff": {"estimate": 0.25, "lo": -0.25, "hi": 0.75}, "macro_f1_diff": {"estimate": 0.1, "lo": -0.2, "hi": 0.4}, "bootstrap_resamples": 100, "seed": 0},
                   "holm_p": 1.0}],
        "note": null, "counts": [4, 0, 4]
    });
    std::fs::write(dir.join("analysis.json"), analysis.to_string()).unwrap();
    if finished {
        std::fs::write(study.join("latest"), "20260101-000000-abc1234\n").unwrap();
    }
    study
}

fn all_outputs(s: &Study) -> String {
    let mut html = String::new();
    for t in [tables::info(s), tables::accuracy(s), tables::comparisons(s), tables::losses(s), tables::throughput(s), tables::decoding_steps(s).unwrap()] {
        assert!(!t.to_string().is_empty());
        html += &t.html();
    }
    let axis = Axis::of(s);
    html += &ddm_results::sweep::table(s, &axis).html();
    for f in [
        figures::accuracy(s),
        figures::loss_curves(s),
        figures::loss_curves_with(s, figures::CurveStyle::log()),
        figures::t_buckets(s, figures::CurveStyle::default()),
        figures::dev_nll(s),
        figures::decoding_steps(s),
        figures::throughput(s),
    ] {
        html += &f.unwrap().html();
    }
    for m in [Metric::Primary, Metric::Accuracy, Metric::FinalLoss, Metric::DevNll, Metric::TrainTokensPerS, Metric::GenerateTokensPerS] {
        html += &figures::sweep(s, m).unwrap().html();
    }
    let p = ddm_results::page([tables::info(s).into(), figures::throughput(s).unwrap().into()]);
    assert!(p.text().contains("commit"));
    html + &p.html()
}

#[test]
fn fixture_opens_through_latest_and_renders() {
    let study = fixture("ok", true);
    let s = Study::open(study.to_str().unwrap()).unwrap();
    assert_eq!(s.manifest.study, "toy");
    assert!(s.is_ddm_vs_ar());
    assert_eq!(s.counts(), (4, 0, 4));
    let axis = Axis::of(&s);
    assert_eq!(axis.key, "objective.anneal_steps");
    assert_eq!(axis.values, vec!["1", "50"]);
    let steps = ddm_results::sweep::steps_points(&s).unwrap();
    // Two diffusion runs × (generate@steps=2, generate at eval.steps = 8).
    assert_eq!(steps.iter().map(|r| r.1).collect::<Vec<_>>(), vec![2, 8, 2, 8]);
    let html = all_outputs(&s);
    assert!(html.contains("<svg") && html.contains("<table"));
    // Text is drawn as SVG text (no font files needed), including the category labels.
    assert!(html.contains("<text") && html.contains("ddm-anneal_steps=50"));
    assert!(html.contains("abc1234def") && html.contains("Test CPU"));
    // Every configuration is labelled on the y axis of the accuracy figure.
    let fig = figures::accuracy(&s).unwrap().html();
    for id in s.manifest.config_ids() {
        assert!(fig.contains(&id), "{id} not labelled");
    }
    // The manifest file itself works as a folder spec, and so does `latest`.
    let folder = s.dir.clone();
    assert_eq!(Study::open(folder.to_str().unwrap()).unwrap().dir, folder);
    assert_eq!(Study::open(study.join("latest").to_str().unwrap()).unwrap().dir, folder);
}

#[test]
fn an_old_folder_without_the_new_fields_renders_and_says_what_it_lacks() {
    // The fixture is such a folder: no t_buckets.csv, no dev_nll column, no MDE or pooled
    // intervals in analysis.json.
    let s = Study::open(fixture("old", true).to_str().unwrap()).unwrap();
    assert!(figures::t_buckets(&s, figures::CurveStyle::default()).unwrap().html().contains("no t_buckets.csv"));
    assert!(figures::dev_nll(&s).unwrap().html().contains("no dev_nll"));
    let acc = tables::accuracy(&s);
    let mde = acc.header.iter().position(|h| h.starts_with("MDE")).unwrap();
    assert!(acc.rows.iter().all(|r| r[mde] == "–"), "{acc}");
    // Mixed objectives: no training-loss column.
    assert!(!acc.header.iter().any(|h| h.contains("train loss")), "{:?}", acc.header);
}

#[test]
fn new_fields_are_shown_mde_pooled_intervals_dev_nll_and_t_buckets() {
    let study = fixture("new", true);
    let dir = study.join("20260101-000000-abc1234");
    // analysis.json with the new fields on the first configuration and pair
    let mut a: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("analysis.json")).unwrap()).unwrap();
    a["configs"][0]["accuracy_pooled"] = json!({"estimate": 0.5, "lo": 0.3, "hi": 0.7});
    a["configs"][0]["mde"] = json!(0.099);
    a["configs"][0]["items"] = json!(4);
    a["configs"][0]["dev_nll"] = json!(1.25);
    a["pairs"][0]["mde"] = json!(0.42);
    std::fs::write(dir.join("analysis.json"), a.to_string()).unwrap();
    // summary.csv with a dev_nll column
    let text = std::fs::read_to_string(dir.join("summary.csv")).unwrap();
    let mut lines = text.lines();
    let mut out = format!("{},dev_nll\n", lines.next().unwrap());
    for (i, l) in lines.enumerate() {
        out += &format!("{l},{}\n", if i < 3 { format!("{}", 1.0 + i as f64) } else { String::new() });
    }
    std::fs::write(dir.join("summary.csv"), out).unwrap();
    // t_buckets.csv of one diffusion run
    let mut tb = String::from("step,bucket,t_lo,t_hi,tokens,ce\n");
    for step in 1..=3 {
        for k in 0..5 {
            tb += &format!("{step},{k},{},{},{},{}\n", k as f64 / 5.0, (k + 1) as f64 / 5.0, if k == 0 { 0 } else { 4 }, if k == 0 { String::new() } else { format!("{}", 3.0 - step as f64 * 0.1 * k as f64) });
        }
    }
    std::fs::write(dir.join("runs/ddm-anneal_steps=1-seed0/t_buckets.csv"), tb).unwrap();
    let s = Study::open(study.to_str().unwrap()).unwrap();
    let acc = tables::accuracy(&s);
    assert!(acc.rows[0].iter().any(|c| c == "0.099 (n=4×1)"), "{acc}");
    assert!(acc.rows[0].iter().any(|c| c == "1.250"), "{acc}");
    assert!(acc.rows[0].iter().any(|c| c == ddm_results::schema::analysis::POOLED_SOURCE), "{acc}");
    assert!(tables::comparisons(&s).rows[0].iter().any(|c| c == "0.420"));
    let losses = tables::losses(&s);
    assert_eq!(losses.rows.len(), 3, "trained configurations only");
    assert!(losses.rows[0][2].starts_with("1.0000"), "{losses}");
    let fig = figures::t_buckets(&s, figures::CurveStyle::default()).unwrap().html();
    assert!(fig.contains("<svg") && fig.contains("t 0.2–0.4") && fig.contains("ddm-anneal_steps=1"), "no t-bucket plot");
    assert!(!fig.contains("t 0.0–0.2"), "an empty bucket has no line and no legend entry");
    assert!(figures::dev_nll(&s).unwrap().html().contains("ar-anneal_steps=1"));
    assert!(figures::loss_curves_with(&s, figures::CurveStyle::log()).unwrap().html().contains("log scale"));
}

#[test]
fn ema_is_debiased_and_zero_smoothing_is_the_raw_curve() {
    use ddm_results::plots::ema;
    let pts = [(1.0, 4.0), (2.0, 2.0), (3.0, f64::NAN), (4.0, 1.0)];
    // β = 0.5: s = 2, w = 0.5 → 4; s = 1 + 1 = 2, w = 0.75 → 2.6667; NaN skipped;
    // s = 1 + 0.5 = 1.5, w = 0.875 → 1.7143.
    let e = ema(&pts, 0.5);
    assert_eq!(e.len(), 3);
    assert!((e[0].1 - 4.0).abs() < 1e-12 && (e[1].1 - 8.0 / 3.0).abs() < 1e-12 && (e[2].1 - 1.5 / 0.875).abs() < 1e-12, "{e:?}");
    assert_eq!(e[2].0, 4.0);
    assert_eq!(ema(&pts[..2], 0.0), pts[..2].to_vec());
}

#[test]
fn missing_and_incomplete_folders_say_so() {
    let e = Study::open("/nonexistent/results/baseline/latest").unwrap_err().to_string();
    assert!(e.contains("no study results at") && e.contains("make study"), "{e}");
    let study = fixture("unfinished", false);
    let e = Study::open(study.to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("no `latest` file"), "{e}");
    let e = Study::open(study.join("20260101-000000-abc1234").to_str().unwrap()).unwrap_err().to_string();
    assert!(e.contains("incomplete") && e.contains("1 of 4 runs") && e.contains("zero_shot-toy-seed0"), "{e}");
}

/// The real output of `make study NAME=smoke`, when there is one: checks the mirrored schemas.
#[test]
fn smoke_output_when_present() {
    let latest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../results/smoke/latest");
    if !latest.is_file() {
        eprintln!("skipped: no results/smoke/latest (run `make study NAME=smoke`)");
        return;
    }
    let s = Study::open(latest.to_str().unwrap()).unwrap();
    assert!(s.is_ddm_vs_ar());
    let html = all_outputs(&s);
    assert!(html.contains("<svg") && html.contains("<table"));
    if std::env::var("DDM_RESULTS_DUMP").is_ok() {
        std::fs::write(std::env::temp_dir().join("ddm-smoke.html"), html).unwrap();
    }
}
