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
    /// Decoding diagnostics of a generate method, measured the same way for both objectives;
    /// absent for likelihood and in files written before they existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode: Option<DecodeStats>,
    /// Likelihood of a diffusion model: the mean over items and choices of each score's Monte
    /// Carlo standard error (per-choice errors are in `predictions.jsonl`); absent for exact
    /// scores (AR) and generate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mean_score_se: Option<f64>,
}

impl MethodResult {
    /// The step count of a `generate@steps=N` method.
    pub fn sweep_steps(&self) -> Option<u64> {
        self.method.strip_prefix("generate@steps=")?.parse().ok()
    }

    /// The τ of a `generate@threshold=τ` method.
    pub fn sweep_threshold(&self) -> Option<f64> {
        self.method.strip_prefix("generate@threshold=")?.parse().ok()
    }
}

/// How many times one value occurred.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ValueCount {
    /// The value.
    pub value: u64,
    /// How many answers had it.
    pub count: u64,
}

/// One confidence bin of a [`Calibration`]: answers whose confidence lies in `[lo, hi)` (the last
/// bin includes 1).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CalibrationBin {
    /// Lower edge.
    pub lo: f64,
    /// Upper edge.
    pub hi: f64,
    /// Answers in the bin.
    pub count: u64,
    /// Correct answers in the bin.
    pub correct: u64,
    /// Mean answer confidence in the bin (0 when empty).
    pub mean_confidence: f64,
    /// `correct / count` (0 when empty).
    pub accuracy: f64,
}

/// Calibration of the sampler's commit confidence against correctness.
///
/// An answer's confidence is the **mean** over its generated tokens (eos excluded) of each
/// token's commit confidence (the chosen token's probability under the plain softmax when it was
/// committed: diffusion at its unmasking step, AR at its decoding step); an empty answer has
/// confidence 0. Answers fall into equal-width bins on [0, 1]; the bins' counts sum to the
/// number of answers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Calibration {
    /// How an answer's confidence is made from its tokens' (`mean`).
    pub answer_confidence: String,
    /// Equal-width bins on [0, 1], in order.
    pub bins: Vec<CalibrationBin>,
    /// Expected calibration error: Σ_bins (count / n) · |accuracy − mean confidence|.
    pub ece: f64,
}

/// Decoding diagnostics of one generate method.
///
/// `tokens_per_s` = generated tokens (eos excluded, summed over answers) / wall seconds of the
/// decode call alone (the objective's `generate` over every prompt, batched at `batch_size`;
/// tokenizing, text decoding and parsing excluded). Diffusion and AR are timed the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecodeStats {
    /// Answers decoded.
    pub answers: u64,
    /// Prompts per decoding batch (`eval.batch_size`).
    pub batch_size: usize,
    /// Length budget (`eval.max_new_tokens`; the diffusion canvas).
    pub max_new_tokens: usize,
    /// Diffusion: denoising steps of this method; absent for AR and for the threshold strategy
    /// (which ignores the step schedule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<usize>,
    /// Diffusion: the unmasking strategy (`low_confidence`, `random`, `threshold`); absent for AR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<String>,
    /// Diffusion `threshold` strategy: τ; absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Diffusion: the KV cache of decoding (`eval.cache`: `none` or `prefix`); absent for AR and
    /// in files written before it existed (which decoded without a cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<String>,
    /// Wall seconds of the decode call.
    pub decode_s: f64,
    /// Generated tokens (eos excluded) per second of the decode call.
    pub tokens_per_s: f64,
    /// Forward passes per answer: how many answers took each count, by increasing count.
    pub nfe_counts: Vec<ValueCount>,
    /// Mean generated length (tokens, eos excluded).
    pub mean_length: f64,
    /// `length_counts[k]`: answers of exactly k generated tokens, k = 0..=max_new_tokens.
    pub length_counts: Vec<u64>,
    /// Share of answers ended by an eos (the rest ran out of budget).
    pub hit_eos_rate: f64,
    /// `eos_position_counts[k]`: answers whose eos came right after k tokens, k =
    /// 0..max_new_tokens (answers without eos are not counted).
    pub eos_position_counts: Vec<u64>,
    /// Commit confidence against correctness; absent when the decoder reported no per-token
    /// confidences.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

/// The file of the speed–accuracy frontier in a run folder (one [`FrontierRow`] per generate
/// method), beside `eval.json`.
pub const FRONTIER_CSV: &str = "frontier.csv";

/// One point of the speed–accuracy frontier: a generate method of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrontierRow {
    /// The method label (`generate`, `generate@steps=N`, `generate@threshold=τ`).
    pub method: String,
    /// How the model was read (`diffusion` / `autoregressive`).
    pub objective: ObjectiveKind,
    /// Diffusion strategy of the point (empty for AR).
    pub strategy: String,
    /// Diffusion steps (empty for AR and the threshold strategy).
    pub steps: Option<usize>,
    /// Threshold τ (empty unless the strategy is `threshold`).
    pub threshold: Option<f64>,
    /// Diffusion decoding cache (`none` / `prefix`; empty for AR and in files written before
    /// this column existed).
    #[serde(default)]
    pub cache: Option<String>,
    /// Items.
    pub n: u64,
    /// Accuracy.
    pub accuracy: f64,
    /// Wilson 95% lower bound of the accuracy.
    pub accuracy_lo: f64,
    /// Wilson 95% upper bound of the accuracy.
    pub accuracy_hi: f64,
    /// Mean forward passes per answer.
    pub mean_nfe: f64,
    /// Generated tokens per second of the decode call ([`DecodeStats`]).
    pub tokens_per_s: f64,
    /// Mean generated length.
    pub mean_length: f64,
    /// Prompts per decoding batch.
    pub batch_size: usize,
}

impl FrontierRow {
    /// The columns of a rendered frontier table, one per [`FrontierRow::cells`] entry: the one
    /// column list `harness report` and the notebooks both render.
    pub const HEADER: [&'static str; 12] =
        ["method", "objective", "strategy", "steps", "τ", "cache", "n", "accuracy % [95% CI]", "mean NFE", "tokens/s", "mean length", "batch"];

    /// This row as text cells under [`FrontierRow::HEADER`] (`-` where a column does not apply;
    /// accuracy in percent with its Wilson interval).
    pub fn cells(&self) -> Vec<String> {
        let opt = |x: Option<String>| x.unwrap_or_else(|| "-".into());
        let pct = |x: f64| format!("{:.1}", 100.0 * x);
        vec![
            self.method.clone(),
            self.objective.as_str().to_string(),
            if self.strategy.is_empty() { "-".into() } else { self.strategy.clone() },
            opt(self.steps.map(|s| s.to_string())),
            opt(self.threshold.map(|x| format!("{x}"))),
            opt(self.cache.clone()),
            self.n.to_string(),
            format!("{} [{}, {}]", pct(self.accuracy), pct(self.accuracy_lo), pct(self.accuracy_hi)),
            format!("{:.2}", self.mean_nfe),
            format!("{:.1}", self.tokens_per_s),
            format!("{:.2}", self.mean_length),
            self.batch_size.to_string(),
        ]
    }
}

impl EvalResult {
    /// The frontier points of this evaluation: one row per generate method that carries
    /// [`DecodeStats`], in method order.
    pub fn frontier(&self) -> Vec<FrontierRow> {
        self.methods
            .iter()
            .filter_map(|m| {
                let d = m.decode.as_ref()?;
                let a = m.report.accuracy;
                Some(FrontierRow {
                    method: m.method.clone(),
                    objective: self.objective,
                    strategy: d.strategy.clone().unwrap_or_default(),
                    steps: d.steps,
                    threshold: d.threshold,
                    cache: d.cache.clone(),
                    n: m.report.n,
                    accuracy: a.estimate,
                    accuracy_lo: a.lo,
                    accuracy_hi: a.hi,
                    mean_nfe: m.mean_nfe,
                    tokens_per_s: d.tokens_per_s,
                    mean_length: d.mean_length,
                    batch_size: d.batch_size,
                })
            })
            .collect()
    }
}

/// Write `rows` as `frontier.csv` into `dir` (header first).
pub fn write_frontier(dir: &std::path::Path, rows: &[FrontierRow]) -> crate::Result<()> {
    let path = dir.join(FRONTIER_CSV);
    let mut w = csv::WriterBuilder::new().has_headers(true).from_writer(Vec::new());
    for r in rows {
        w.serialize(r).map_err(|e| crate::Error::parse(&path, e))?;
    }
    let bytes = w.into_inner().map_err(|e| crate::Error::parse(&path, e))?;
    crate::layout::write_atomic(&path, &bytes)
}

/// Read `frontier.csv` of `dir`; `None` when the folder has none (older runs).
pub fn read_frontier(dir: &std::path::Path) -> crate::Result<Option<Vec<FrontierRow>>> {
    let path = dir.join(FRONTIER_CSV);
    if !path.exists() {
        return Ok(None);
    }
    let mut r = csv::Reader::from_path(&path).map_err(|e| crate::Error::parse(&path, e))?;
    let rows = r.deserialize().collect::<std::result::Result<Vec<FrontierRow>, _>>().map_err(|e| crate::Error::parse(&path, e))?;
    Ok(Some(rows))
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
    /// Per-choice standard errors of `scores` over Monte Carlo samples (diffusion likelihood);
    /// absent for exact scores and in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score_se: Option<Vec<f64>>,
    /// Whether `predicted == gold`.
    pub correct: bool,
}
