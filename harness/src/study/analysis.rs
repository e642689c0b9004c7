//! Statistics of a study folder: per configuration (runs that differ only in seed) the mean and
//! 95% t-interval across seeds of the primary metric, accuracy and macro-F1; per ddm-vs-AR pair
//! (same overrides apart from `objective.*`, same seed) an exact McNemar test and paired
//! bootstrap intervals of the accuracy and macro-F1 differences on the same test items, with
//! Holm-adjusted p-values across the study. Data only; `report` renders it.

use super::manifest::Manifest;
use super::spec::PrimaryMetric;
use super::summary::{self, RunRow, RunStatus};
use crate::config::ObjectiveKind;
use crate::eval::metrics::{paired_comparison, MajorityBaseline, PairedComparison, REPORT_CONFIDENCE};
use crate::eval::Prediction;
use crate::stats::{self, Interval, SeedSummary};
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One configuration × evaluation method, across seeds.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ConfigStats {
    /// Configuration id (run id without the seed).
    pub config_id: String,
    /// Dataset name.
    pub dataset: String,
    /// Evaluation method.
    pub method: String,
    /// An evaluation of the untrained base model.
    pub zero_shot: bool,
    /// `diffusion` or `autoregressive`.
    pub objective: ObjectiveKind,
    /// The metric rows are sorted by.
    pub primary_metric: PrimaryMetric,
    /// Runs of this configuration.
    pub runs: usize,
    /// Of which done.
    pub done: usize,
    /// Of which failed.
    pub failed: usize,
    /// Primary metric across seeds.
    pub primary: Option<SeedSummary>,
    /// Accuracy across seeds.
    pub accuracy: Option<SeedSummary>,
    /// Macro-F1 across seeds.
    pub macro_f1: Option<SeedSummary>,
    /// With a single done run: its Wilson accuracy interval.
    pub single_accuracy: Option<Interval>,
    /// With a single done run: its bootstrap macro-F1 interval.
    pub single_macro_f1: Option<Interval>,
    /// Majority-class baseline of the test items (first done run).
    pub majority: Option<MajorityBaseline>,
    /// Mean invalid-prediction rate.
    pub invalid_rate: Option<f64>,
    /// Labels the runs collapsed onto (one entry per collapsed run).
    pub collapsed: Vec<String>,
    /// Mean final training loss.
    pub final_loss: Option<f64>,
    /// Mean training throughput, real tokens per second.
    #[serde(default)]
    pub train_tokens_per_s: Option<f64>,
    /// Mean evaluation throughput of this method (generated tokens/s or items/s) and its unit.
    #[serde(default)]
    pub eval_throughput: Option<(f64, String)>,
}

impl ConfigStats {
    /// The mean of the primary metric, for sorting.
    pub fn primary_mean(&self) -> Option<f64> {
        self.primary.as_ref().map(|s| s.mean)
    }
}

/// ddm (A) against AR (B) on the same items.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PairRow {
    /// The diffusion run.
    pub ddm: String,
    /// The AR run.
    pub ar: String,
    /// Their shared settings (overrides apart from `objective.*`).
    pub label: String,
    /// Seed of both runs.
    pub seed: u64,
    /// Dataset name.
    pub dataset: String,
    /// Evaluation method.
    pub method: String,
    /// McNemar and paired bootstrap differences (ddm − AR).
    pub comparison: PairedComparison,
    /// Holm-adjusted McNemar p-value across every comparison of the study.
    pub holm_p: f64,
}

/// Everything a study report shows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Analysis {
    /// Per configuration and method.
    pub configs: Vec<ConfigStats>,
    /// ddm-vs-AR comparisons.
    pub pairs: Vec<PairRow>,
    /// Multiple-comparisons note, when there is more than one comparison.
    pub note: Option<String>,
    /// Runs done, failed, total.
    pub counts: (usize, usize, usize),
}

fn mean(xs: &[f64]) -> Option<f64> {
    stats::mean(xs).ok()
}

/// Read `predictions.jsonl` of a run folder.
pub fn read_predictions(dir: &Path) -> Result<Vec<Prediction>> {
    let p = dir.join("predictions.jsonl");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::data(&p, format!("line {}: {e}", i + 1))))
        .collect()
}

/// Compare two runs' predictions of `method`, matched by item id.
fn compare_runs(a: &RunRow, b: &RunRow, method: &str) -> Result<Option<PairedComparison>> {
    let pa: Vec<Prediction> = read_predictions(&a.dir)?.into_iter().filter(|p| p.method == method).collect();
    let pb: Vec<Prediction> = read_predictions(&b.dir)?.into_iter().filter(|p| p.method == method).collect();
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
        let key = a.point.pair_key();
        for b in trained.iter().filter(|r| r.point.config.objective.kind() == ObjectiveKind::Autoregressive && r.point.pair_key() == key) {
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
