//! Statistics of a study folder. Per configuration (runs that differ only in seed): the mean and
//! seed standard deviation of accuracy and macro-F1, their 95% **pooled-item bootstrap**
//! interval across seeds ([`stats::seed_item_bootstrap`]: the test items are resampled, every
//! seed kept, one shared draw of items when the seeds scored the same items; it stays inside
//! `[0, 1]`, unlike a Student-t interval over 2 seeds), the minimum detectable accuracy
//! difference at 80% power ([`stats::mde_two_proportions`], items pooled across seeds), the
//! mean training loss (the objective's own) and the mean dev NLL per response token (the figure
//! comparable across objectives). Per ddm-vs-AR pair (same overrides apart from `objective.*`,
//! same seed): an exact McNemar test and paired bootstrap intervals of the accuracy and
//! macro-F1 differences on the same test items, with Holm-adjusted p-values across the study,
//! and the paired minimum detectable difference ([`stats::mde_paired`]). Per run with decoding
//! variants (`eval.steps_sweep`, `threshold_sweep`, `cache_sweep`): each variant against the
//! run's plain `generate`, paired on the same items of the same trained model, with the same
//! test, intervals and MDE (Holm-adjusted across the study's method pairs). Data only; `report`
//! renders it.

use super::manifest::Manifest;
use super::spec::{self, PrimaryMetric};
use super::summary::{self, RunRow, RunStatus};
use crate::config::ObjectiveKind;
use crate::eval::metrics::{paired_comparison, ConfusionStats, PairedComparison, REPORT_CONFIDENCE};
use crate::eval::Prediction;
use crate::stats;
use crate::Result;
use ddm_schema::{Confusion, Interval, RunDir};
use std::path::Path;

pub use ddm_schema::{Analysis, ConfigStats, MethodPairRow, PairRow, SeedSummary};

fn mean(xs: &[f64]) -> Option<f64> {
    stats::mean(xs).ok()
}

/// Compare two runs' predictions of `method`, matched by item id.
fn compare_runs(a: &RunRow, b: &RunRow, method: &str) -> Result<Option<PairedComparison>> {
    let pa: Vec<Prediction> = RunDir::new(&a.dir).read_predictions()?.into_iter().filter(|p| p.method == method).collect();
    let pb: Vec<Prediction> = RunDir::new(&b.dir).read_predictions()?.into_iter().filter(|p| p.method == method).collect();
    compare_predictions(&pa, &pb, a.point.config.eval.bootstrap.max(1), a.point.seed)
}

/// Paired comparison of predictions `pa` (A) and `pb` (B) matched by item id (and gold).
fn compare_predictions(pa: &[Prediction], pb: &[Prediction], resamples: usize, seed: u64) -> Result<Option<PairedComparison>> {
    let mut labels: Vec<String> = Vec::new();
    let mut add = |l: &str| {
        if !labels.iter().any(|x| x == l) {
            labels.push(l.to_string());
        }
    };
    let mut matched = Vec::new();
    for x in pa {
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
    paired_comparison(&labels, &va, &vb, resamples, seed).map(Some)
}

/// Paired minimum detectable accuracy difference of a comparison (the z²/n floor when no item
/// is discordant).
fn paired_mde(c: &PairedComparison) -> Option<f64> {
    let discordant = c.mcnemar.b + c.mcnemar.c;
    (c.n > 0).then(|| stats::mde_paired(discordant as f64 / c.n as f64, c.n, stats::MDE_ALPHA, stats::MDE_POWER).ok()).flatten()
}

/// Each done run's decoding variants (`generate@…`) against its plain `generate`, paired on the
/// same items, Holm-adjusted across the study.
fn method_pairs(rows: &[RunRow]) -> Result<Vec<MethodPairRow>> {
    let mut out = Vec::new();
    for r in rows.iter().filter(|r| r.status == RunStatus::Done) {
        let preds = RunDir::new(&r.dir).read_predictions()?;
        let base: Vec<Prediction> = preds.iter().filter(|p| p.method == "generate").cloned().collect();
        if base.is_empty() {
            continue;
        }
        let mut variants: Vec<&str> = Vec::new();
        for p in preds.iter().filter(|p| p.method.starts_with("generate@")) {
            if !variants.contains(&p.method.as_str()) {
                variants.push(&p.method);
            }
        }
        for m in variants {
            let v: Vec<Prediction> = preds.iter().filter(|p| p.method == m).cloned().collect();
            if let Some(c) = compare_predictions(&v, &base, r.point.config.eval.bootstrap.max(1), r.point.seed)? {
                out.push(MethodPairRow { run: r.point.id.clone(), dataset: r.dataset(), method: m.to_string(), base: "generate".into(), mde: paired_mde(&c), comparison: c, holm_p: 1.0 });
            }
        }
    }
    let ps: Vec<f64> = out.iter().map(|p| p.comparison.mcnemar.p_value).collect();
    for (p, h) in out.iter_mut().zip(stats::holm(&ps)?) {
        p.holm_p = h;
    }
    Ok(out)
}

/// The done runs' `(gold, pred)` pairs of `method` over one label list (gold and predicted
/// labels of every run, in first-seen order), and whether every run scored the same items
/// (then each run's pairs are in the first run's item order). `None` when a run has no
/// predictions of `method`.
#[allow(clippy::type_complexity)]
fn seed_pairs(runs: &[&RunRow], method: &str) -> Result<Option<(Vec<String>, Vec<Vec<(usize, Option<usize>)>>, bool)>> {
    let mut preds: Vec<Vec<Prediction>> = Vec::with_capacity(runs.len());
    for r in runs {
        let p: Vec<Prediction> = RunDir::new(&r.dir).read_predictions()?.into_iter().filter(|p| p.method == method).collect();
        if p.is_empty() {
            return Ok(None);
        }
        preds.push(p);
    }
    let mut labels: Vec<String> = Vec::new();
    for p in preds.iter().flatten() {
        for l in std::iter::once(&p.gold).chain(&p.predicted) {
            if !labels.contains(l) {
                labels.push(l.clone());
            }
        }
    }
    fn ids(p: &[Prediction]) -> Vec<&str> {
        let mut v: Vec<&str> = p.iter().map(|x| x.id.as_str()).collect();
        v.sort_unstable();
        v
    }
    let first_ids = ids(&preds[0]);
    let unique = first_ids.windows(2).all(|w| w[0] != w[1]);
    let shared = unique && preds.iter().all(|p| ids(p) == first_ids);
    if shared {
        let order: std::collections::HashMap<String, usize> = preds[0].iter().enumerate().map(|(i, x)| (x.id.clone(), i)).collect();
        for p in preds.iter_mut().skip(1) {
            p.sort_by_key(|x| order.get(&x.id).copied());
        }
    }
    let idx = |l: &str| labels.iter().position(|x| x == l).unwrap_or(0);
    let pairs = preds.iter().map(|p| p.iter().map(|x| (idx(&x.gold), x.predicted.as_deref().map(idx))).collect()).collect();
    Ok(Some((labels, pairs, shared)))
}

/// Pooled-item bootstrap intervals of accuracy and macro-F1 across the seeds of `runs`.
fn pooled_intervals(runs: &[&RunRow], method: &str, resamples: usize, seed: u64) -> Result<Option<(Interval, Interval)>> {
    let Some((labels, pairs, shared)) = seed_pairs(runs, method)? else { return Ok(None) };
    let n_items: Vec<usize> = pairs.iter().map(Vec::len).collect();
    let acc = stats::seed_item_bootstrap(&n_items, shared, resamples, seed, REPORT_CONFIDENCE, |s, idx| {
        idx.iter().filter(|&&i| pairs[s][i].1 == Some(pairs[s][i].0)).count() as f64 / idx.len() as f64
    })?;
    let mut sub = Vec::new();
    let mut bad = None;
    let f1 = stats::seed_item_bootstrap(&n_items, shared, resamples, seed, REPORT_CONFIDENCE, |s, idx| {
        sub.clear();
        sub.extend(idx.iter().map(|&i| pairs[s][i]));
        match Confusion::from_pairs(&labels, &sub) {
            Ok(c) => c.macro_f1(),
            Err(e) => {
                bad = Some(e);
                f64::NAN
            }
        }
    });
    if let Some(e) = bad {
        return Err(e);
    }
    Ok(Some((acc, f1?)))
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
            // mean and seed s.d.; the interval is the pooled-item bootstrap below
            let summ = |xs: &[f64]| if xs.is_empty() { None } else { stats::summarize(xs, REPORT_CONFIDENCE).ok().map(|s| SeedSummary { interval: None, ..s }) };
            let (accuracy, macro_f1) = (summ(&acc), summ(&f1));
            let primary = match first.point.primary_metric {
                PrimaryMetric::Accuracy => accuracy.clone(),
                PrimaryMetric::MacroF1 => macro_f1.clone(),
            };
            let with_method: Vec<&RunRow> = done.iter().copied().filter(|r| r.eval.as_ref().is_some_and(|e| e.methods.iter().any(|x| &x.method == m))).collect();
            let pooled = if with_method.len() >= 2 {
                pooled_intervals(&with_method, m, first.point.config.eval.bootstrap.max(1), first.point.seed)?
            } else {
                None
            };
            let pooled_n: u64 = reps.iter().map(|r| r.n).sum();
            let mde = accuracy.as_ref().filter(|_| pooled_n > 0).and_then(|a| stats::mde_two_proportions(a.mean.clamp(0.0, 1.0), pooled_n, stats::MDE_ALPHA, stats::MDE_POWER).ok());
            let losses: Vec<f64> = done.iter().filter_map(|r| r.summary.as_ref().map(|s| s.train.final_loss)).filter(|x| x.is_finite()).collect();
            let nlls: Vec<f64> = done.iter().filter_map(|r| r.summary.as_ref()?.train.dev_nll).filter(|x| x.is_finite()).collect();
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
                accuracy_pooled: pooled.map(|p| p.0),
                macro_f1_pooled: pooled.map(|p| p.1),
                items: reps.first().map(|r| r.n),
                mde,
                dev_nll: mean(&nlls),
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
                        // No discordant item still has an MDE (the z²/n floor), not none.
                        mde: paired_mde(&c),
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
    let method_pairs = method_pairs(&rows)?;
    Ok(Analysis { configs, note: stats::multiple_comparisons_note(pairs.len()), pairs, method_pairs, counts: (done, failed, rows.len()) })
}
