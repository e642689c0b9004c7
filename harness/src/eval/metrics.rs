//! Classification metrics for multiple-choice and yes/no/maybe answers.
//!
//! Each test item gives a pair `(gold, pred)`: `gold` indexes the label list, `pred` is the
//! parsed prediction, or `None` when the model's output could not be parsed into a label
//! ("invalid"). Invalid predictions count as wrong.
//!
//! # Macro-F1 convention
//!
//! Macro-F1 is the unweighted mean of per-class F1 over the classes that occur in the gold
//! labels **or** in the (valid) predictions. A class that is never predicted has precision
//! `0/0 := 0` and F1 0; a class that never occurs in gold but is predicted has recall
//! `0/0 := 0` and F1 0; F1 is 0 when precision + recall = 0. Invalid predictions are not a
//! class: they lower the recall of the gold class and enter no class's precision. This equals
//! scikit-learn's `f1_score(y_true, y_pred, average="macro", zero_division=0, labels=L)` with
//! invalid predictions mapped to a sentinel label and `L` the real labels present in gold or
//! predictions. Balanced accuracy is the mean per-class recall over the classes present in gold.
//!
//! [`classification_report`] gathers everything a report needs for one run on one split;
//! [`paired_comparison`] compares two systems on the same items. [`decode_stats`] and
//! [`calibration`] describe how a generate method decoded (lengths, eos, forward passes,
//! tokens/s, commit confidence against correctness).

use crate::error::{Error, Result};
use crate::stats;
pub use ddm_schema::eval::{Calibration, CalibrationBin, DecodeStats, ValueCount};
pub use ddm_schema::{ClassMetrics, ClassificationReport, Confusion, LabelCount, MajorityBaseline, PairedComparison};
use crate::objective::Generated;

/// Confidence level of every interval in these reports.
pub const REPORT_CONFIDENCE: f64 = 0.95;

/// Share of predictions on a single label at or above which a run is flagged as collapsed.
pub const COLLAPSE_SHARE: f64 = 0.9;

/// Per-class counts sufficient for accuracy, macro-F1 and balanced accuracy.
struct Tally {
    /// Correct predictions per class.
    tp: Vec<u64>,
    /// Gold occurrences per class (including items with invalid predictions).
    gold: Vec<u64>,
    /// Valid predictions per class.
    pred: Vec<u64>,
}

impl Tally {
    fn new(k: usize) -> Self {
        Tally { tp: vec![0; k], gold: vec![0; k], pred: vec![0; k] }
    }

    /// Tally the items `idx` of `pairs` (indices must be valid: checked by the callers).
    fn of(k: usize, pairs: &[(usize, Option<usize>)], idx: &[usize]) -> Self {
        let mut t = Tally::new(k);
        for &i in idx {
            let (g, p) = pairs[i];
            t.gold[g] += 1;
            if let Some(p) = p {
                t.pred[p] += 1;
                if p == g {
                    t.tp[g] += 1;
                }
            }
        }
        t
    }

    fn macro_f1(&self) -> f64 {
        let mut sum = 0.0;
        let mut classes = 0usize;
        for k in 0..self.tp.len() {
            if self.gold[k] == 0 && self.pred[k] == 0 {
                continue;
            }
            classes += 1;
            sum += f1(ratio(self.tp[k], self.pred[k]), ratio(self.tp[k], self.gold[k]));
        }
        if classes == 0 {
            0.0
        } else {
            sum / classes as f64
        }
    }

    fn balanced_accuracy(&self) -> f64 {
        let mut sum = 0.0;
        let mut classes = 0usize;
        for k in 0..self.tp.len() {
            if self.gold[k] > 0 {
                classes += 1;
                sum += ratio(self.tp[k], self.gold[k]);
            }
        }
        if classes == 0 {
            0.0
        } else {
            sum / classes as f64
        }
    }
}

/// `num / den`, with `0 / 0 := 0`.
fn ratio(num: u64, den: u64) -> f64 {
    if den == 0 {
        0.0
    } else {
        num as f64 / den as f64
    }
}

/// Harmonic mean of precision and recall, 0 when both are 0.
fn f1(precision: f64, recall: f64) -> f64 {
    if precision + recall == 0.0 {
        0.0
    } else {
        2.0 * precision * recall / (precision + recall)
    }
}

fn check_labels(labels: &[String]) -> Result<()> {
    if labels.is_empty() {
        return Err(Error::msg("classification metrics need at least one label"));
    }
    for (i, l) in labels.iter().enumerate() {
        if labels[..i].contains(l) {
            return Err(Error::msg(format!("label {l:?} appears twice in the label list")));
        }
    }
    Ok(())
}

fn check_pairs(labels: &[String], pairs: &[(usize, Option<usize>)]) -> Result<()> {
    let k = labels.len();
    for (i, &(g, p)) in pairs.iter().enumerate() {
        if g >= k {
            return Err(Error::msg(format!(
                "item {i}: gold class {g} out of range for {k} labels"
            )));
        }
        if let Some(p) = p {
            if p >= k {
                return Err(Error::msg(format!(
                    "item {i}: predicted class {p} out of range for {k} labels"
                )));
            }
        }
    }
    Ok(())
}

/// The statistics of a [`Confusion`] table (the record lives in `ddm_schema`; its arithmetic
/// lives here, beside the metrics it feeds).
pub trait ConfusionStats: Sized {
    /// Build the table from `(gold, pred)` pairs (`pred = None`: invalid prediction).
    ///
    /// Errors when `labels` is empty or has duplicates, or an index is out of range. An empty
    /// `pairs` gives an all-zero table.
    fn from_pairs(labels: &[String], pairs: &[(usize, Option<usize>)]) -> Result<Self>;
    /// Check that `counts` is `k × k` and `invalid` has `k` entries for `k` labels (a table
    /// read back from JSON may not be). The other methods do not panic on a malformed table:
    /// they ignore cells outside the `k × k` shape.
    fn validate(&self) -> Result<()>;
    /// Number of items.
    fn n(&self) -> u64;
    /// Number of correct predictions (the diagonal).
    fn correct(&self) -> u64;
    /// Number of invalid (unparseable) predictions.
    fn total_invalid(&self) -> u64;
    /// Items per gold class (including those with invalid predictions).
    fn gold_counts(&self) -> Vec<u64>;
    /// Valid predictions per class.
    fn predicted_counts(&self) -> Vec<u64>;
    /// Accuracy `correct / n`; 0 for an empty table.
    fn accuracy(&self) -> f64;
    /// Macro-F1 under the module's convention (see the module docs); 0 for an empty table.
    fn macro_f1(&self) -> f64;
    /// Balanced accuracy: mean recall over the classes present in gold; 0 for an empty table.
    fn balanced_accuracy(&self) -> f64;
    /// Precision, recall, F1 and support of every label, in label order.
    fn per_class(&self) -> Vec<ClassMetrics>;
}

/// Cell `[gold][pred]` of `c`, 0 outside the table.
fn cell(c: &Confusion, g: usize, p: usize) -> u64 {
    c.counts.get(g).and_then(|row| row.get(p)).copied().unwrap_or(0)
}

/// Per-class counts of `c`.
fn tally(c: &Confusion) -> Tally {
    let k = c.labels.len();
    let mut t = Tally::new(k);
    for g in 0..k {
        t.tp[g] = cell(c, g, g);
        t.gold[g] = c.invalid.get(g).copied().unwrap_or(0);
        for p in 0..k {
            let n = cell(c, g, p);
            t.gold[g] += n;
            t.pred[p] += n;
        }
    }
    t
}

impl ConfusionStats for Confusion {
    fn from_pairs(labels: &[String], pairs: &[(usize, Option<usize>)]) -> Result<Self> {
        check_labels(labels)?;
        check_pairs(labels, pairs)?;
        let k = labels.len();
        let mut counts = vec![vec![0u64; k]; k];
        let mut invalid = vec![0u64; k];
        for &(g, p) in pairs {
            match p {
                Some(p) => counts[g][p] += 1,
                None => invalid[g] += 1,
            }
        }
        Ok(Confusion { labels: labels.to_vec(), counts, invalid })
    }

    fn validate(&self) -> Result<()> {
        check_labels(&self.labels)?;
        let k = self.labels.len();
        if self.counts.len() != k || self.counts.iter().any(|row| row.len() != k) {
            return Err(Error::msg(format!("confusion table is not {k} × {k}")));
        }
        if self.invalid.len() != k {
            return Err(Error::msg(format!(
                "confusion table has {} invalid counts for {k} labels",
                self.invalid.len()
            )));
        }
        Ok(())
    }

    fn n(&self) -> u64 {
        tally(self).gold.iter().sum()
    }

    fn correct(&self) -> u64 {
        tally(self).tp.iter().sum()
    }

    fn total_invalid(&self) -> u64 {
        self.invalid.iter().take(self.labels.len()).sum()
    }

    fn gold_counts(&self) -> Vec<u64> {
        tally(self).gold
    }

    fn predicted_counts(&self) -> Vec<u64> {
        tally(self).pred
    }

    fn accuracy(&self) -> f64 {
        ratio(self.correct(), self.n())
    }

    fn macro_f1(&self) -> f64 {
        tally(self).macro_f1()
    }

    fn balanced_accuracy(&self) -> f64 {
        tally(self).balanced_accuracy()
    }

    fn per_class(&self) -> Vec<ClassMetrics> {
        let t = tally(self);
        self.labels
            .iter()
            .enumerate()
            .map(|(k, label)| {
                let precision = ratio(t.tp[k], t.pred[k]);
                let recall = ratio(t.tp[k], t.gold[k]);
                ClassMetrics {
                    label: label.clone(),
                    precision,
                    recall,
                    f1: f1(precision, recall),
                    support: t.gold[k],
                    predicted: t.pred[k],
                }
            })
            .collect()
    }
}

/// Build the [`ClassificationReport`] of `(gold, pred)` pairs over `labels`.
///
/// The bootstrap intervals of macro-F1 and balanced accuracy use `bootstrap_resamples`
/// resamples of the items drawn with `seed` (see [`stats::bootstrap_interval`]). Errors on an
/// empty `pairs`, zero resamples, empty or duplicated labels, or out-of-range indices.
pub fn classification_report(
    labels: &[String],
    pairs: &[(usize, Option<usize>)],
    bootstrap_resamples: usize,
    seed: u64,
) -> Result<ClassificationReport> {
    if pairs.is_empty() {
        return Err(Error::msg("classification report of zero items"));
    }
    let confusion = Confusion::from_pairs(labels, pairs)?;
    let k = labels.len();
    let n = confusion.n();
    let correct = confusion.correct();
    let invalid = confusion.total_invalid();
    let accuracy = stats::wilson(correct, n, REPORT_CONFIDENCE)?;
    let macro_f1 = stats::bootstrap_interval(
        pairs.len(),
        bootstrap_resamples,
        seed,
        REPORT_CONFIDENCE,
        |idx| Tally::of(k, pairs, idx).macro_f1(),
    )?;
    let balanced_accuracy = stats::bootstrap_interval(
        pairs.len(),
        bootstrap_resamples,
        seed,
        REPORT_CONFIDENCE,
        |idx| Tally::of(k, pairs, idx).balanced_accuracy(),
    )?;
    let t = tally(&confusion);
    let predicted: Vec<LabelCount> = labels
        .iter()
        .zip(&t.pred)
        .map(|(label, &count)| LabelCount { label: label.clone(), count, share: ratio(count, n) })
        .collect();
    let collapse =
        predicted.iter().find(|lc| lc.share >= COLLAPSE_SHARE).map(|lc| lc.label.clone());
    // First maximum in label order.
    let mut best = 0;
    for g in 1..k {
        if t.gold[g] > t.gold[best] {
            best = g;
        }
    }
    let majority_baseline =
        MajorityBaseline { label: labels[best].clone(), accuracy: ratio(t.gold[best], n) };
    Ok(ClassificationReport {
        n,
        correct,
        accuracy,
        invalid,
        invalid_rate: ratio(invalid, n),
        macro_f1,
        balanced_accuracy,
        per_class: confusion.per_class(),
        predicted,
        collapse,
        majority_baseline,
        confusion,
        bootstrap_resamples,
        seed,
    })
}

/// Compare systems A and B on the same items: `a[i]` and `b[i]` are their `(gold, pred)` pairs
/// for item `i`, so the gold labels must agree item by item.
///
/// Gives the exact McNemar test on per-item correctness and paired bootstrap intervals (same
/// resamples for both systems) of the accuracy and macro-F1 differences A − B. Errors when the
/// inputs are empty, differ in length or gold labels, or on the errors of
/// [`classification_report`].
pub fn paired_comparison(
    labels: &[String],
    a: &[(usize, Option<usize>)],
    b: &[(usize, Option<usize>)],
    bootstrap_resamples: usize,
    seed: u64,
) -> Result<PairedComparison> {
    check_labels(labels)?;
    if a.len() != b.len() {
        return Err(Error::msg(format!(
            "paired comparison: systems scored on different numbers of items ({} vs {})",
            a.len(),
            b.len()
        )));
    }
    if a.is_empty() {
        return Err(Error::msg("paired comparison of zero items"));
    }
    check_pairs(labels, a)?;
    check_pairs(labels, b)?;
    if let Some(i) = (0..a.len()).find(|&i| a[i].0 != b[i].0) {
        return Err(Error::msg(format!(
            "paired comparison: item {i} has gold {} for A but {} for B (items not aligned?)",
            a[i].0, b[i].0
        )));
    }
    let k = labels.len();
    let is_correct = |pairs: &[(usize, Option<usize>)]| -> Vec<bool> {
        pairs.iter().map(|&(g, p)| p == Some(g)).collect()
    };
    let ca = is_correct(a);
    let cb = is_correct(b);
    let mcnemar = stats::mcnemar_from_correctness(&ca, &cb)?;
    let both_correct = ca.iter().zip(&cb).filter(|(x, y)| **x && **y).count() as u64;
    let both_wrong = ca.iter().zip(&cb).filter(|(x, y)| !**x && !**y).count() as u64;
    let acc = |c: &[bool], idx: &[usize]| -> f64 {
        idx.iter().filter(|&&i| c[i]).count() as f64 / idx.len() as f64
    };
    let n_items = a.len();
    let accuracy_diff = stats::paired_bootstrap_diff(
        n_items,
        bootstrap_resamples,
        seed,
        REPORT_CONFIDENCE,
        |idx| acc(&ca, idx),
        |idx| acc(&cb, idx),
    )?;
    let macro_f1_diff = stats::paired_bootstrap_diff(
        n_items,
        bootstrap_resamples,
        seed,
        REPORT_CONFIDENCE,
        |idx| Tally::of(k, a, idx).macro_f1(),
        |idx| Tally::of(k, b, idx).macro_f1(),
    )?;
    let all: Vec<usize> = (0..n_items).collect();
    Ok(PairedComparison {
        n: n_items as u64,
        a_accuracy: acc(&ca, &all),
        b_accuracy: acc(&cb, &all),
        both_correct,
        both_wrong,
        mcnemar,
        accuracy_diff,
        macro_f1_diff,
        bootstrap_resamples,
        seed,
    })
}

/// Confidence bins of [`calibration`] in every evaluation.
pub const CALIBRATION_BINS: usize = 10;

/// Calibration of answer confidences against correctness: `answers[i]` = (confidence in [0, 1],
/// correct). `bins` equal-width bins on [0, 1] (`[lo, hi)`, the last includes 1; a confidence
/// outside [0, 1] is clamped); the counts sum to `answers.len()`. ECE = Σ (count / n) ·
/// |accuracy − mean confidence| (0 for no answers).
pub fn calibration(answers: &[(f64, bool)], bins: usize) -> Calibration {
    let bins = bins.max(1);
    let mut count = vec![0u64; bins];
    let mut correct = vec![0u64; bins];
    let mut conf_sum = vec![0f64; bins];
    for &(c, ok) in answers {
        let c = if c.is_nan() { 0.0 } else { c.clamp(0.0, 1.0) };
        let b = ((c * bins as f64) as usize).min(bins - 1);
        count[b] += 1;
        correct[b] += ok as u64;
        conf_sum[b] += c;
    }
    let n = answers.len().max(1) as f64;
    let mut ece = 0.0;
    let out: Vec<CalibrationBin> = (0..bins)
        .map(|b| {
            let (mean_confidence, accuracy) =
                if count[b] > 0 { (conf_sum[b] / count[b] as f64, correct[b] as f64 / count[b] as f64) } else { (0.0, 0.0) };
            ece += count[b] as f64 / n * (accuracy - mean_confidence).abs();
            CalibrationBin { lo: b as f64 / bins as f64, hi: (b + 1) as f64 / bins as f64, count: count[b], correct: correct[b], mean_confidence, accuracy }
        })
        .collect();
    Calibration { answer_confidence: "mean".into(), bins: out, ece }
}

/// An answer's confidence for [`calibration`]: the mean of its tokens' commit confidences; 0 for
/// an empty answer. `None` when the decoder reported no confidence for some token (the lengths
/// differ).
pub fn answer_confidence(g: &Generated) -> Option<f64> {
    if g.confidence.len() != g.tokens.len() {
        return None;
    }
    if g.tokens.is_empty() {
        return Some(0.0);
    }
    Some(g.confidence.iter().map(|&c| c as f64).sum::<f64>() / g.confidence.len() as f64)
}

/// What one generate method's settings were, for [`decode_stats`].
#[derive(Debug, Clone, PartialEq)]
pub struct DecodeSettings {
    /// `eval.batch_size`.
    pub batch_size: usize,
    /// `eval.max_new_tokens`.
    pub max_new_tokens: usize,
    /// Diffusion: steps; None for AR.
    pub steps: Option<usize>,
    /// Diffusion: the strategy's config spelling; None for AR.
    pub strategy: Option<String>,
    /// Diffusion threshold strategy: τ.
    pub threshold: Option<f64>,
    /// Diffusion: the KV cache's config spelling (`eval.cache`); None for AR.
    pub cache: Option<String>,
}

/// The decoding diagnostics of one generate method: `outs[i]` decoded answer i (correct when
/// `correct[i]`) in a decode call of `decode_s` wall seconds. See [`DecodeStats`] for the
/// definitions (tokens/s: generated tokens, eos excluded, over the decode call's seconds).
/// Lengths over `max_new_tokens` (a decoder that overran its budget) are an error.
pub fn decode_stats(outs: &[Generated], correct: &[bool], decode_s: f64, s: &DecodeSettings) -> Result<DecodeStats> {
    if outs.len() != correct.len() {
        return Err(Error::msg(format!("decode_stats: {} answers but {} correctness flags", outs.len(), correct.len())));
    }
    let n = outs.len();
    let max = s.max_new_tokens;
    let mut length_counts = vec![0u64; max + 1];
    let mut eos_position_counts = vec![0u64; max];
    let mut nfe: std::collections::BTreeMap<u64, u64> = std::collections::BTreeMap::new();
    let (mut tokens, mut hits) = (0usize, 0usize);
    for g in outs {
        let len = g.tokens.len();
        if len > max {
            return Err(Error::msg(format!("decode_stats: an answer of {len} tokens exceeds eval.max_new_tokens = {max}")));
        }
        length_counts[len] += 1;
        if g.hit_eos {
            hits += 1;
            if let Some(c) = eos_position_counts.get_mut(len) {
                *c += 1;
            }
        }
        tokens += len;
        *nfe.entry(g.nfe as u64).or_default() += 1;
    }
    let confs: Option<Vec<f64>> = outs.iter().map(answer_confidence).collect();
    let calibration = confs.map(|c| {
        let pairs: Vec<(f64, bool)> = c.into_iter().zip(correct.iter().copied()).collect();
        calibration(&pairs, CALIBRATION_BINS)
    });
    let nn = n.max(1) as f64;
    Ok(DecodeStats {
        answers: n as u64,
        batch_size: s.batch_size,
        max_new_tokens: max,
        steps: s.steps,
        strategy: s.strategy.clone(),
        threshold: s.threshold,
        cache: s.cache.clone(),
        decode_s,
        tokens_per_s: tokens as f64 / decode_s.max(1e-9),
        nfe_counts: nfe.into_iter().map(|(value, count)| ValueCount { value, count }).collect(),
        mean_length: tokens as f64 / nn,
        length_counts,
        hit_eos_rate: hits as f64 / nn,
        eos_position_counts,
        calibration,
    })
}
