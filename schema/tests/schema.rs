//! Every record survives serialize → parse unchanged, the layout spells the files `harness`
//! has always written, and the committed study folders under `results/` parse through the types.

use ddm_schema::*;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::json;
use std::fmt::Debug;
use std::path::{Path, PathBuf};

fn round_trip<T: Serialize + DeserializeOwned + PartialEq + Debug>(x: &T) {
    let text = serde_json::to_string_pretty(x).unwrap();
    let back: T = serde_json::from_str(&text).unwrap();
    assert_eq!(&back, x, "{text}");
    // And the text is stable: a second trip gives the same bytes.
    assert_eq!(serde_json::to_string_pretty(&back).unwrap(), text);
}

fn iv(e: f64) -> Interval {
    Interval { estimate: e, lo: e - 0.125, hi: e + 0.25 }
}

fn report() -> ClassificationReport {
    ClassificationReport {
        n: 4,
        correct: 2,
        accuracy: iv(0.5),
        invalid: 1,
        invalid_rate: 0.25,
        macro_f1: iv(0.375),
        balanced_accuracy: iv(0.5),
        per_class: vec![ClassMetrics { label: "yes".into(), precision: 0.5, recall: 1.0, f1: 2.0 / 3.0, support: 1, predicted: 2 }],
        predicted: vec![LabelCount { label: "yes".into(), count: 2, share: 0.5 }],
        collapse: Some("yes".into()),
        majority_baseline: MajorityBaseline { label: "no".into(), accuracy: 0.75 },
        confusion: Confusion { labels: vec!["yes".into(), "no".into()], counts: vec![vec![1, 0], vec![1, 1]], invalid: vec![0, 1] },
        bootstrap_resamples: 100,
        seed: 7,
    }
}

fn eval_result() -> EvalResult {
    EvalResult {
        dataset: "toy".into(),
        split: "test".into(),
        n_items: 4,
        n_truncated: 1,
        n_overlong: 2,
        objective: ObjectiveKind::Diffusion,
        methods: vec![MethodResult {
            method: "generate@steps=4".into(),
            report: report(),
            wall_s: 1.5,
            generated_tokens: 12,
            throughput: 8.0,
            throughput_unit: "tokens/s".into(),
            mean_nfe: 4.0,
            decode: None,
            mean_score_se: None,
        }],
    }
}

fn train_outcome() -> TrainOutcome {
    TrainOutcome { steps: 3, final_loss: 1.25, first_loss: 3.5, tokens_per_s: 1000.0, wall_s: 2.0, trainable_params: 4096, dev_loss: Some(1.5), dev_nll: Some(1.75) }
}

fn point() -> Point {
    Point {
        id: "ddm-anneal_steps=50-seed1".into(),
        config_id: "ddm-anneal_steps=50".into(),
        variant: Some("ddm".into()),
        overrides: vec![("objective.anneal_steps".into(), "50".into())],
        axes: vec![("objective.kind".into(), "\"diffusion\"".into())],
        seed: 1,
        zero_shot: false,
        primary_metric: PrimaryMetric::MacroF1,
        config: json!({"objective": {"kind": "diffusion"}, "eval": {"steps": 8}}),
    }
}

fn manifest() -> Manifest {
    Manifest {
        study: "toy".into(),
        folder: "20260101-000000-abc1234".into(),
        study_path: PathBuf::from("studies/toy.toml"),
        study_toml: "question = \"?\"\n".into(),
        sets: vec!["train.lr=0.001".into()],
        base_toml: "seed = 0\n".into(),
        question: Some("Does it load?".into()),
        axis_keys: vec!["objective.kind".into()],
        points: vec![point()],
        fingerprint: "ab".into(),
        git: GitInfo { commit: Some("abc1234def".into()), short: Some("abc1234".into()), dirty: true, note: None },
        harness_version: "0.1.0".into(),
        candle_version: "0.11.1".into(),
        device: DeviceInfo { device: "cpu".into(), name: "Test CPU".into(), driver_version: None, cuda_version: Some("12.4".into()), host: "h".into() },
        start: "2026-01-01T00:00:00Z".into(),
        end: None,
        command: vec!["harness".into(), "study".into()],
        resumed: vec![Resumption { time: "2026-01-01T00:00:10Z".into(), command: vec!["harness".into()] }],
        hashes: vec![FileHash { role: "model".into(), what: "random".into(), sha256: "00".into() }],
    }
}

fn comparison() -> PairedComparison {
    PairedComparison {
        n: 4,
        a_accuracy: 0.5,
        b_accuracy: 0.25,
        both_correct: 1,
        both_wrong: 2,
        mcnemar: McNemar { b: 1, c: 0, p_value: 1.0 },
        accuracy_diff: iv(0.25),
        macro_f1_diff: iv(0.125),
        bootstrap_resamples: 100,
        seed: 3,
    }
}

fn config_stats() -> ConfigStats {
    let s = SeedSummary { n: 2, mean: 0.5, std_dev: Some(0.125), interval: Some(iv(0.5)) };
    ConfigStats {
        config_id: "ddm".into(),
        dataset: "toy".into(),
        method: "generate".into(),
        zero_shot: false,
        objective: ObjectiveKind::Autoregressive,
        primary_metric: PrimaryMetric::Accuracy,
        runs: 2,
        done: 2,
        failed: 0,
        primary: Some(s.clone()),
        accuracy: Some(s.clone()),
        macro_f1: Some(SeedSummary { n: 1, mean: 0.25, std_dev: None, interval: None }),
        single_accuracy: None,
        single_macro_f1: Some(iv(0.25)),
        majority: Some(MajorityBaseline { label: "no".into(), accuracy: 0.75 }),
        invalid_rate: Some(0.0),
        collapsed: vec!["yes".into()],
        accuracy_pooled: None,
        macro_f1_pooled: None,
        items: Some(200),
        mde: Some(0.099),
        final_loss: Some(1.25),
        dev_nll: Some(1.5),
        train_tokens_per_s: Some(1000.0),
        eval_throughput: Some((8.0, "tokens/s".into())),
    }
}

#[test]
fn every_record_round_trips() {
    round_trip(&iv(0.5));
    round_trip(&report());
    round_trip(&eval_result());
    round_trip(&Prediction { id: "q1".into(), method: "likelihood".into(), gold: "yes".into(), predicted: None, raw: String::new(), scores: Some(vec![-1.5, -2.0]), score_se: None, correct: false });
    round_trip(&StepMetrics { step: 1, epoch: 0.5, lr: 1e-3, loss: 3.0, ce: 2.5, token_acc: 0.25, grad_norm: 1.0, scored_tokens: 10, tokens: 100, tokens_per_s: 500.0, elapsed_s: 0.2 });
    round_trip(&train_outcome());
    round_trip(&TBucketRow { step: 4, bucket: 1, t_lo: 0.2, t_hi: 0.4, tokens: 12, ce: Some(2.5) });
    round_trip(&RunSummary { name: "r".into(), train: train_outcome(), dataset: "toy".into(), sizes: (8, 2, 4) });
    round_trip(&Failure { step: Some(3), message: "loss became NaN at step 3".into(), time: "t".into() });
    round_trip(&RunStatus::Failed);
    round_trip(&manifest());
    round_trip(&comparison());
    round_trip(&config_stats());
    let pair = PairRow { ddm: "a".into(), ar: "b".into(), label: "l".into(), seed: 0, dataset: "toy".into(), method: "generate".into(), comparison: comparison(), holm_p: 0.5, mde: Some(0.05) };
    let method_pair = MethodPairRow { run: "r".into(), dataset: "d".into(), method: "generate@cache=prefix".into(), base: "generate".into(), comparison: pair.comparison.clone(), holm_p: 0.5, mde: Some(0.03) };
    round_trip(&Analysis { configs: vec![config_stats()], pairs: vec![pair], method_pairs: vec![method_pair], note: Some("n".into()), counts: (3, 1, 4) });
}

#[test]
fn json_spellings_are_the_files_of_today() {
    // Enum spellings and the tuple / pair layouts the committed files use.
    assert_eq!(serde_json::to_value(ObjectiveKind::Autoregressive).unwrap(), json!("autoregressive"));
    assert_eq!(serde_json::to_value(PrimaryMetric::MacroF1).unwrap(), json!("macro_f1"));
    assert_eq!(RunStatus::Pending.as_str(), "pending");
    let p = serde_json::to_value(point()).unwrap();
    assert_eq!(p["axes"], json!([["objective.kind", "\"diffusion\""]]));
    assert_eq!(point().objective(), "diffusion");
    assert_eq!(point().eval_steps(), Some(8));
    assert_eq!(point().axis("objective.kind").as_deref(), Some("diffusion"));
    let s = serde_json::to_value(RunSummary { name: "r".into(), train: train_outcome(), dataset: "toy".into(), sizes: (8, 2, 4) }).unwrap();
    assert_eq!(s["sizes"], json!([8, 2, 4]));
    assert_eq!(eval_result().methods[0].sweep_steps(), Some(4));
    // Estimates: the pooled-item bootstrap wins; an older folder's t-interval across seeds is
    // shown clipped to [0, 1]; else the single run's interval.
    let mut c = config_stats();
    assert_eq!(c.accuracy_estimate().unwrap().source, "t over seeds, clipped to [0, 1]");
    assert_eq!(c.macro_f1_estimate().unwrap().source, "bootstrap");
    assert_eq!(c.primary_estimate(), c.accuracy_estimate());
    assert_eq!(c.macro_f1_estimate().unwrap().text(), "0.250 [0.125, 0.500]");
    c.accuracy = Some(SeedSummary { n: 2, mean: 0.5, std_dev: Some(0.7), interval: Some(Interval { estimate: 0.5, lo: -1.5, hi: 2.5 }) });
    assert_eq!(c.accuracy_estimate().unwrap().interval, Some((0.0, 1.0)));
    c.accuracy_pooled = Some(Interval { estimate: 0.5, lo: 0.4, hi: 0.6 });
    assert_eq!(c.accuracy_estimate().unwrap().source, ddm_schema::analysis::POOLED_SOURCE);
    assert_eq!(c.accuracy_estimate().unwrap().interval, Some((0.4, 0.6)));
    // A record of an older folder (no pooled interval, MDE or dev NLL) still reads.
    let mut old = serde_json::to_value(config_stats()).unwrap();
    for k in ["accuracy_pooled", "macro_f1_pooled", "items", "mde", "dev_nll"] {
        old.as_object_mut().unwrap().remove(k);
    }
    let back: ConfigStats = serde_json::from_value(old).unwrap();
    assert_eq!((back.mde, back.dev_nll), (None, None));
}

#[test]
fn run_dir_writes_done_failed_and_reads_back() {
    let root = std::env::temp_dir().join(format!("ddm-schema-run-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    let d = RunDir::new(root.join("runs/r1"));
    assert_eq!(d.status(), RunStatus::Pending);
    assert_eq!(d.read_eval().unwrap(), None);
    assert!(d.read_metrics().unwrap().is_empty());
    d.write_config(&json!({"seed": 1})).unwrap();
    assert_eq!(d.read_config::<serde_json::Value>().unwrap(), json!({"seed": 1}));
    d.write_eval(&eval_result()).unwrap();
    assert_eq!(d.read_eval().unwrap(), Some(eval_result()));
    let mut w = d.predictions_writer().unwrap();
    let pred = Prediction { id: "q".into(), method: "generate".into(), gold: "yes".into(), predicted: Some("yes".into()), raw: "yes".into(), scores: None, score_se: None, correct: true };
    w.write(&pred).unwrap();
    w.write(&pred).unwrap();
    w.finish().unwrap();
    assert_eq!(d.read_predictions().unwrap(), vec![pred.clone(), pred]);
    std::fs::write(d.metrics_csv(), "step,epoch,lr,loss,ce,token_acc,grad_norm,scored_tokens,tokens,tokens_per_s,elapsed_s\n1,0.5,0.001,3.0,2.5,0,1,10,100,500,0.2\n").unwrap();
    assert_eq!(d.read_metrics().unwrap()[0].loss, 3.0);
    assert!(d.read_t_buckets().unwrap().is_empty(), "no t_buckets.csv: no rows");
    std::fs::write(d.t_buckets_csv(), "step,bucket,t_lo,t_hi,tokens,ce\n1,0,0,0.2,0,\n1,1,0.2,0.4,3,1.5\n").unwrap();
    let tb = d.read_t_buckets().unwrap();
    assert_eq!((tb[0].ce, tb[1].ce, tb[1].tokens), (None, Some(1.5), 3));
    let f = d.mark_failed(Some(2), "loss became NaN at step 2", "2026-01-01T00:00:00Z").unwrap();
    assert_eq!(d.status(), RunStatus::Failed);
    assert_eq!(d.read_failure().unwrap(), Some(f));
    d.mark_done("2026-01-01T00:00:01Z").unwrap();
    assert!(d.is_done() && d.status() == RunStatus::Done);
    assert_eq!(std::fs::read_to_string(d.path().join("DONE")).unwrap(), "2026-01-01T00:00:01Z\n");
    assert_eq!(d.dev_eval(12).path(), d.path().join("dev_evals/step-000012"));
    // The file names are those harness has always written.
    for (p, name) in [(d.config_json(), "config.json"), (d.metrics_csv(), "metrics.csv"), (d.eval_metrics_csv(), "eval_metrics.csv"), (d.t_buckets_csv(), "t_buckets.csv"),
                      (d.summary_json(), "summary.json"), (d.eval_json(), "eval.json"), (d.predictions_jsonl(), "predictions.jsonl"),
                      (d.checkpoints(), "checkpoints")] {
        assert_eq!(p, d.path().join(name));
    }
    let s = StudyDir::new(root.join("toy/20260101-000000-abc1234"));
    std::fs::create_dir_all(s.path()).unwrap();
    s.write_manifest(&manifest()).unwrap();
    assert!(StudyDir::is_study_folder(s.path()));
    assert_eq!(s.read_manifest::<serde_json::Value>().unwrap(), manifest());
    s.mark_latest().unwrap();
    assert_eq!(std::fs::read_to_string(root.join("toy/latest")).unwrap(), "20260101-000000-abc1234\n");
    let csv = SummaryCsv { header: summary::summary_header(false, &["objective.kind".into()], &["generate".into()]), rows: vec![vec!["a,b".into(); 33]] };
    assert_eq!(csv.header.len(), 3 + 1 + 15 + 14);
    assert_eq!(csv.header[19], "generate_n");
    s.write_summary(&csv).unwrap();
    assert_eq!(s.read_summary().unwrap().rows[0].len(), 33);
    assert_eq!(s.read_summary().unwrap(), SummaryCsv { header: csv.header.clone(), rows: csv.rows.clone() });
    assert_eq!(s.run("x"), RunDir::new(s.path().join("runs/x")));
    std::fs::remove_dir_all(&root).unwrap();
}

/// `value` serialises to the JSON of `path` (compared as parsed JSON values).
fn same_json<T: Serialize>(path: &Path, value: &T) {
    let on_disk: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    assert_eq!(serde_json::to_value(value).unwrap(), on_disk, "{}", path.display());
}

/// Every committed study folder named by a `results/<study>/latest`.
fn committed_folders() -> Vec<PathBuf> {
    let results = Path::new(env!("CARGO_MANIFEST_DIR")).join("../results");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&results).unwrap() {
        let study = e.unwrap().path();
        let latest = StudyDir::latest_file(&study);
        if latest.is_file() {
            out.push(study.join(std::fs::read_to_string(latest).unwrap().trim()));
        }
    }
    out.sort();
    out
}

#[test]
fn committed_folders_parse_through_the_schema() {
    let folders = committed_folders();
    assert!(!folders.is_empty(), "no results/<study>/latest committed");
    for f in folders {
        let s = StudyDir::new(&f);
        let m: Manifest = s.read_manifest().unwrap_or_else(|e| panic!("{e}"));
        let a = s.read_analysis().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.counts.2, m.points.len(), "{}", f.display());
        let sum = s.read_summary().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sum.rows.len(), m.points.len(), "{}", f.display());
        assert!(sum.header.iter().all(|h| !h.is_empty()));
        let mut done = 0;
        for p in &m.points {
            let r = s.run(&p.id);
            match r.status() {
                RunStatus::Done => {
                    done += 1;
                    let e = r.read_eval().unwrap().unwrap_or_else(|| panic!("{}: DONE without eval.json", r.path().display()));
                    same_json(&r.eval_json(), &e);
                    assert!(!e.methods.is_empty());
                    let preds = r.read_predictions().unwrap();
                    assert_eq!(preds.len(), e.n_items * e.methods.len(), "{}", r.path().display());
                    if !p.zero_shot {
                        let t = r.read_summary().unwrap().unwrap();
                        same_json(&r.summary_json(), &t);
                        let rows = r.read_metrics().unwrap();
                        assert_eq!(rows.len() as u64, t.train.steps, "{}", r.path().display());
                    }
                }
                RunStatus::Failed => assert!(r.read_failure().unwrap().is_some()),
                RunStatus::Pending => panic!("{}: a committed run is neither done nor failed", r.path().display()),
            }
        }
        assert_eq!(done, a.counts.0, "{}", f.display());
        // Re-serialising gives the committed JSON back: same field names, nothing lost or added.
        same_json(&s.analysis_json(), &a);
        same_json(&s.manifest_json(), &m);
    }
}

#[test]
fn eval_json_without_n_overlong_still_parses() {
    let mut v = serde_json::to_value(eval_result()).unwrap();
    v.as_object_mut().unwrap().remove("n_overlong");
    let back: EvalResult = serde_json::from_value(v).unwrap();
    assert_eq!(back.n_overlong, 0);
    assert_eq!(back.n_truncated, 1);
    // 0 is not written (older files round-trip unchanged); any other count is.
    assert!(serde_json::to_value(&back).unwrap().get("n_overlong").is_none());
    assert_eq!(serde_json::to_value(eval_result()).unwrap()["n_overlong"], 2);
}
