//! `eval.json` (one [`MethodResult`] per evaluation method) and `predictions.jsonl` (one
//! [`Prediction`] per item and method), with the interval, test and confusion records they hold.
//! The numbers are computed in `harness` (`eval::metrics`, `stats`); here are only their shapes.

use serde::{Deserialize, Serialize};

/// How a model was trained and is read: the objective's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ObjectiveKind {
    /// Masked-diffusion SFT.
    #[default]
    Diffusion,
    /// Autoregressive SFT.
    Autoregressive,
}

impl ObjectiveKind {
    /// The config / JSON spelling: `diffusion` or `autoregressive`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ObjectiveKind::Diffusion => "diffusion",
            ObjectiveKind::Autoregressive => "autoregressive",
        }
    }
}

/// A point estimate with a two-sided interval `lo ..= hi`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct Interval {
    /// The point estimate.
    pub estimate: f64,
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
}

impl Interval {
    /// Half of the interval's width, `(hi - lo) / 2`.
    pub fn half_width(&self) -> f64 {
        (self.hi - self.lo) / 2.0
    }

    /// Whether `x` lies in `lo ..= hi`.
    pub fn contains(&self, x: f64) -> bool {
        self.lo <= x && x <= self.hi
    }

    /// Whether the interval excludes zero (for intervals of a difference).
    pub fn excludes_zero(&self) -> bool {
        !self.contains(0.0)
    }
}

/// Result of an exact McNemar test.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq)]
pub struct McNemar {
    /// Discordant items that system A got right and system B got wrong.
    pub b: u64,
    /// Discordant items that system A got wrong and system B got right.
    pub c: u64,
    /// Two-sided exact p-value.
    pub p_value: f64,
}

/// Confusion table of gold labels against predictions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct Confusion {
    /// Class labels; indices into this list are the class ids.
    pub labels: Vec<String>,
    /// `counts[gold][pred]`: items of gold class `gold` predicted as class `pred`.
    pub counts: Vec<Vec<u64>>,
    /// `invalid[gold]`: items of gold class `gold` whose prediction could not be parsed.
    pub invalid: Vec<u64>,
}

/// Metrics of one class.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClassMetrics {
    /// The class label.
    pub label: String,
    /// Correct predictions of this class / valid predictions of this class (`0/0 := 0`).
    pub precision: f64,
    /// Correct predictions of this class / gold items of this class (`0/0 := 0`).
    pub recall: f64,
    /// Harmonic mean of precision and recall (0 when both are 0).
    pub f1: f64,
    /// Gold items of this class.
    pub support: u64,
    /// Valid predictions of this class.
    pub predicted: u64,
}

/// How often one label was predicted.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct LabelCount {
    /// The label.
    pub label: String,
    /// Number of predictions of this label.
    pub count: u64,
    /// `count / n`, n counting all items (invalid ones included).
    pub share: f64,
}

/// The majority-class baseline of a split: always predict the most frequent gold label.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct MajorityBaseline {
    /// The most frequent gold label (the first in label order on ties).
    pub label: String,
    /// Its share of the gold labels: the accuracy of always predicting it.
    pub accuracy: f64,
}

/// Everything a report shows for one run on one split.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct ClassificationReport {
    /// Number of items.
    pub n: u64,
    /// Number of correct predictions.
    pub correct: u64,
    /// Accuracy with its Wilson 95% interval.
    pub accuracy: Interval,
    /// Number of invalid (unparseable) predictions; they count as wrong.
    pub invalid: u64,
    /// `invalid / n`.
    pub invalid_rate: f64,
    /// Macro-F1 with a bootstrap 95% interval over items.
    pub macro_f1: Interval,
    /// Balanced accuracy with a bootstrap 95% interval over items.
    pub balanced_accuracy: Interval,
    /// Precision, recall, F1 and support per label, in label order.
    pub per_class: Vec<ClassMetrics>,
    /// Distribution of the valid predictions over the labels, in label order (invalid ones are
    /// in `invalid`).
    pub predicted: Vec<LabelCount>,
    /// The label that received at least the collapse share of all predictions, if any: the
    /// model may have collapsed onto one answer.
    pub collapse: Option<String>,
    /// The majority-class baseline of this split.
    pub majority_baseline: MajorityBaseline,
    /// The confusion table.
    pub confusion: Confusion,
    /// Bootstrap resamples behind the intervals.
    pub bootstrap_resamples: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
}

/// Results of one method on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodResult {
    /// `generate`, `generate@steps=N` or `likelihood`.
    pub method: String,
    /// Accuracy (Wilson), macro-F1 and balanced accuracy (bootstrap), confusion, invalid rate,
    /// predicted-label distribution, collapse flag, majority baseline.
    pub report: ClassificationReport,
    /// Seconds spent.
    pub wall_s: f64,
    /// Tokens generated (generate) — 0 for likelihood.
    pub generated_tokens: usize,
    /// Generated tokens per second (generate) or items per second (likelihood).
    pub throughput: f64,
    /// Unit of `throughput`: `tokens/s` or `items/s`.
    pub throughput_unit: String,
    /// Mean forward passes per item.
    pub mean_nfe: f64,
}

impl MethodResult {
    /// The step count of a `generate@steps=N` method.
    pub fn sweep_steps(&self) -> Option<u64> {
        self.method.strip_prefix("generate@steps=")?.parse().ok()
    }
}

/// `skip_serializing_if` of counts written only when not 0.
fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// What `eval.json` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalResult {
    /// Dataset name.
    pub dataset: String,
    /// Split evaluated.
    pub split: String,
    /// Items evaluated.
    pub n_items: usize,
    /// Prompts whose contexts were shortened to fit `max_len`.
    pub n_truncated: usize,
    /// Items left out because they exceed `max_len` even with their contexts dropped
    /// (`data.on_overlong = "skip"`); not in `n_items`. Written only when not 0, so that files
    /// without it (all older ones) read as 0 and write back unchanged.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub n_overlong: usize,
    /// How the model was read (`autoregressive` / `diffusion`).
    pub objective: ObjectiveKind,
    /// One entry per method.
    pub methods: Vec<MethodResult>,
}

/// One row of `predictions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Prediction {
    /// Item id.
    pub id: String,
    /// `generate` or `likelihood`.
    pub method: String,
    /// Gold label.
    pub gold: String,
    /// Predicted label; `None` when the output could not be parsed (counted wrong).
    pub predicted: Option<String>,
    /// Decoded text (generate) or empty (likelihood).
    pub raw: String,
    /// Per-choice scores (likelihood), in the item's choice order.
    pub scores: Option<Vec<f64>>,
    /// Whether `predicted == gold`.
    pub correct: bool,
}
