//! Statistics of a study folder: per configuration (runs that differ only in seed) the mean and
//! 95% t-interval across seeds of the primary metric, accuracy and macro-F1; per ddm-vs-AR pair
//! (same overrides apart from `objective.*`, same seed) an exact McNemar test and paired
//! bootstrap intervals of the accuracy and macro-F1 differences on the same test items, with
//! Holm-adjusted p-values across the study. Data only; `report` renders it.

use super::manifest::Manifest;
use super::spec::{self, PrimaryMetric};
use super::summary::{self, RunRow, RunStatus};
use crate::config::ObjectiveKind;
use crate::eval::metrics::{paired_comparison, PairedComparison, REPORT_CONFIDENCE};
use crate::eval::Prediction;
use crate::stats;
use crate::Result;
use ddm_schema::RunDir;
use std::path::Path;

pub use ddm_schema::{Analysis, ConfigStats, PairRow};

fn mean(xs: &[f64]) -> Option<f64> {
    stats::mean(xs).ok()
}

/// Compare two runs' predictions of `method`, matched by item id.
fn compare_runs(a: &RunRow, b: &RunRow, method: &str) -> Result<Option<PairedComparison>> {
    let pa: Vec<Prediction> = RunDir::new(&a.dir).read_predictions()?.into_iter().filter(|p| p.method == method).collect();
    let pb: Vec<Prediction> = RunDir::new(&b.dir).read_predictions()?.into_iter().filter(|p| p.method == method).collect();
    let mut labels: Vec<String> = Vec::new();
    let mut add = |l: &str| {
        if !labels.iter().any(|x| x == l) {
            labels.push(l.to_string());
        }
    };
    let mut matched = Vec::new();
    for x in &pa {
        if let Some(y) = pb.iter().find(|y| y.id == x.id && y.gold == x.gold) {
            add(&x.gold);
            for l in x.predicted.iter().chain(&y.predicted) {
                add(l);
            }
            matched.push((x, y));
        }
    }
    if matched.is_empty() {
        return Ok(None);
    }
    let idx = |l: &Option<String>| l.as_ref().and_then(|l| labels.iter().position(|x| x == l));
    let mut va = Vec::with_capacity(matched.len());
    let mut vb = Vec::with_capacity(matched.len());
    for (x, y) in &matched {
        let g = labels.iter().position(|l| *l == x.gold).unwrap_or(0);
        va.push((g, idx(&x.predicted)));
        vb.push((g, idx(&y.predicted)));
    }
    let resamples = a.point.config.eval.bootstrap.max(1);
    paired_comparison(&labels, &va, &vb, resamples, a.point.seed).map(Some)
}

/// Compute the statistics of a study folder.
pub fn analyze(folder: &Path, man: &Manifest) -> Result<Analysis> {
    let rows = summary::collect(folder, &man.points)?;
    let methods = summary::methods(&man.points);
    let mut configs = Vec::new();
    let mut ids: Vec<&str> = Vec::new();
    for r in &rows {
        if !ids.contains(&r.point.config_id.as_str()) {
            ids.push(&r.point.config_id);
        }
    }
    for id in ids {
        let group: Vec<&RunRow> = rows.iter().filter(|r| r.point.config_id == id).collect();
        let first = group[0];
        let done: Vec<&RunRow> = group.iter().copied().filter(|r| r.status == RunStatus::Done).collect();
        let failed = group.iter().filter(|r| r.status == RunStatus::Failed).count();
        for m in &methods {
            if !first.point.config.eval.methods.iter().any(|x| x.as_str() == m) {
                continue;
            }
            let reps: Vec<_> = done.iter().filter_map(|r| r.eval.as_ref()?.methods.iter().find(|x| &x.method == m).map(|x| &x.report)).collect();
            let acc: Vec<f64> = reps.iter().map(|r| r.accuracy.estimate).collect();
            let f1: Vec<f64> = reps.iter().map(|r| r.macro_f1.estimate).collect();
            let summ = |xs: &[f64]| if xs.is_empty() { None } else { stats::summarize(xs, REPORT_CONFIDENCE).ok() };
            let (accuracy, macro_f1) = (summ(&acc), summ(&f1));
            let primary = match first.point.primary_metric {
                PrimaryMetric::Accuracy => accuracy.clone(),
                PrimaryMetric::MacroF1 => macro_f1.clone(),
            };
            let losses: Vec<f64> = done.iter().filter_map(|r| r.summary.as_ref().map(|s| s.train.final_loss)).filter(|x| x.is_finite()).collect();
            let train_tps: Vec<f64> = done.iter().filter_map(|r| r.summary.as_ref().map(|s| s.train.tokens_per_s)).filter(|x| x.is_finite() && *x > 0.0).collect();
            let evals: Vec<(f64, String)> = done
                .iter()
                .filter_map(|r| r.eval.as_ref()?.methods.iter().find(|x| &x.method == m).map(|x| (x.throughput, x.throughput_unit.clone())))
                .collect();
            let eval_throughput = evals.first().map(|(_, u)| u.clone()).and_then(|u| mean(&evals.iter().map(|e| e.0).collect::<Vec<_>>()).map(|v| (v, u)));
            configs.push(ConfigStats {
                config_id: id.to_string(),
                dataset: first.dataset(),
                method: m.clone(),
                zero_shot: first.point.zero_shot,
                objective: first.point.config.objective.kind(),
                primary_metric: first.point.primary_metric,
                runs: group.len(),
                done: done.len(),
                failed,
                primary,
                accuracy,
                macro_f1,
                single_accuracy: (reps.len() == 1).then(|| reps[0].accuracy),
                single_macro_f1: (reps.len() == 1).then(|| reps[0].macro_f1),
                majority: reps.first().map(|r| r.majority_baseline.clone()),
                invalid_rate: mean(&reps.iter().map(|r| r.invalid_rate).collect::<Vec<_>>()),
                collapsed: reps.iter().filter_map(|r| r.collapse.clone()).collect(),
                final_loss: mean(&losses),
                train_tokens_per_s: mean(&train_tps),
                eval_throughput,
            });
        }
    }
    // ddm vs AR pairs.
    let trained: Vec<&RunRow> = rows.iter().filter(|r| r.status == RunStatus::Done && !r.point.zero_shot).collect();
    let mut pairs = Vec::new();
    for a in trained.iter().filter(|r| r.point.config.objective.kind() == ObjectiveKind::Diffusion) {
        let key = spec::pair_key(&a.point);
        for b in trained.iter().filter(|r| r.point.config.objective.kind() == ObjectiveKind::Autoregressive && spec::pair_key(&r.point) == key) {
            for m in &methods {
                if ![a, b].iter().all(|r| r.point.config.eval.methods.iter().any(|x| x.as_str() == m)) {
                    continue;
                }
                if let Some(c) = compare_runs(a, b, m)? {
                    let label = a.point.overrides.iter().filter(|(k, _)| !k.starts_with("objective.")).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" ");
                    pairs.push(PairRow {
                        ddm: a.point.id.clone(),
                        ar: b.point.id.clone(),
                        label,
                        seed: a.point.seed,
                        dataset: a.dataset(),
                        method: m.clone(),
                        comparison: c,
                        holm_p: 1.0,
                    });
                }
            }
        }
    }
    let ps: Vec<f64> = pairs.iter().map(|p| p.comparison.mcnemar.p_value).collect();
    for (p, h) in pairs.iter_mut().zip(stats::holm(&ps)?) {
        p.holm_p = h;
    }
    let done = rows.iter().filter(|r| r.status == RunStatus::Done).count();
    let failed = rows.iter().filter(|r| r.status == RunStatus::Failed).count();
    Ok(Analysis { configs, note: stats::multiple_comparisons_note(pairs.len()), pairs, counts: (done, failed, rows.len()) })
}
