//! `analysis.json`: per-configuration statistics across seeds and the ddm-vs-AR paired
//! comparisons, as `harness report` writes them.

use serde::Deserialize;

/// A point estimate with a two-sided interval.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct Interval {
    /// Point estimate.
    pub estimate: f64,
    /// Lower bound.
    pub lo: f64,
    /// Upper bound.
    pub hi: f64,
}

/// A metric across seeds: mean, and the 95% t-interval when there are two seeds or more.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct SeedSummary {
    /// Seeds.
    pub n: usize,
    /// Mean.
    pub mean: f64,
    /// Sample standard deviation.
    #[serde(default)]
    pub std_dev: Option<f64>,
    /// t-interval of the mean.
    #[serde(default)]
    pub interval: Option<Interval>,
}

/// Always predicting the most frequent gold label.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MajorityBaseline {
    /// The label.
    pub label: String,
    /// Its accuracy.
    pub accuracy: f64,
}

/// A value with its interval and where the interval comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Mean across seeds, or the single run's value.
    pub value: f64,
    /// Interval, when there is one.
    pub interval: Option<(f64, f64)>,
    /// `t over seeds`, `Wilson`, `bootstrap` or `none`.
    pub source: &'static str,
}

impl Estimate {
    /// `0.523 [0.41, 0.63]`, or `0.523` without an interval.
    pub fn text(&self) -> String {
        match self.interval {
            Some((lo, hi)) => format!("{:.3} [{lo:.3}, {hi:.3}]", self.value),
            None => format!("{:.3}", self.value),
        }
    }
}

/// One configuration × evaluation method, across seeds.
#[derive(Debug, Clone, Deserialize)]
pub struct ConfigStats {
    /// Configuration id.
    pub config_id: String,
    /// Dataset.
    pub dataset: String,
    /// Evaluation method (`generate`, `likelihood`).
    pub method: String,
    /// The untrained base model.
    #[serde(default)]
    pub zero_shot: bool,
    /// `diffusion` or `autoregressive`.
    pub objective: String,
    /// `accuracy` or `macro_f1`.
    pub primary_metric: String,
    /// Runs of the configuration.
    pub runs: usize,
    /// Done.
    pub done: usize,
    /// Failed.
    pub failed: usize,
    /// Primary metric across seeds.
    #[serde(default)]
    pub primary: Option<SeedSummary>,
    /// Accuracy across seeds.
    #[serde(default)]
    pub accuracy: Option<SeedSummary>,
    /// Macro-F1 across seeds.
    #[serde(default)]
    pub macro_f1: Option<SeedSummary>,
    /// Single run: Wilson accuracy interval.
    #[serde(default)]
    pub single_accuracy: Option<Interval>,
    /// Single run: bootstrap macro-F1 interval.
    #[serde(default)]
    pub single_macro_f1: Option<Interval>,
    /// Majority-class baseline of the test items.
    #[serde(default)]
    pub majority: Option<MajorityBaseline>,
    /// Mean invalid-prediction rate.
    #[serde(default)]
    pub invalid_rate: Option<f64>,
    /// Labels that runs collapsed onto.
    #[serde(default)]
    pub collapsed: Vec<String>,
    /// Mean final training loss.
    #[serde(default)]
    pub final_loss: Option<f64>,
}

fn estimate(s: &Option<SeedSummary>, single: &Option<Interval>, single_source: &'static str) -> Option<Estimate> {
    let s = s.as_ref()?;
    if let Some(i) = s.interval {
        return Some(Estimate { value: s.mean, interval: Some((i.lo, i.hi)), source: "t over seeds" });
    }
    match single {
        Some(i) => Some(Estimate { value: i.estimate, interval: Some((i.lo, i.hi)), source: single_source }),
        None => Some(Estimate { value: s.mean, interval: None, source: "none" }),
    }
}

impl ConfigStats {
    /// Accuracy: t-interval across seeds, or the single run's Wilson interval.
    pub fn accuracy(&self) -> Option<Estimate> {
        estimate(&self.accuracy, &self.single_accuracy, "Wilson")
    }

    /// Macro-F1: t-interval across seeds, or the single run's bootstrap interval.
    pub fn macro_f1(&self) -> Option<Estimate> {
        estimate(&self.macro_f1, &self.single_macro_f1, "bootstrap")
    }

    /// The primary metric.
    pub fn primary(&self) -> Option<Estimate> {
        if self.primary_metric == "macro_f1" {
            self.macro_f1()
        } else {
            self.accuracy()
        }
    }
}

/// Exact McNemar test (`b`: only ddm right, `c`: only AR right).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
pub struct McNemar {
    /// Only A (ddm) right.
    pub b: u64,
    /// Only B (AR) right.
    pub c: u64,
    /// Two-sided exact p-value.
    pub p_value: f64,
}

/// ddm (A) against AR (B) on the same items.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct PairedComparison {
    /// Items.
    pub n: u64,
    /// Accuracy of ddm.
    pub a_accuracy: f64,
    /// Accuracy of AR.
    pub b_accuracy: f64,
    /// McNemar test.
    pub mcnemar: McNemar,
    /// ddm − AR accuracy, paired bootstrap interval.
    pub accuracy_diff: Interval,
    /// ddm − AR macro-F1, paired bootstrap interval.
    pub macro_f1_diff: Interval,
    /// Bootstrap resamples.
    #[serde(default)]
    pub bootstrap_resamples: usize,
}

/// One ddm-vs-AR comparison.
#[derive(Debug, Clone, Deserialize)]
pub struct PairRow {
    /// ddm run id.
    pub ddm: String,
    /// AR run id.
    pub ar: String,
    /// Shared settings.
    pub label: String,
    /// Seed of both.
    pub seed: u64,
    /// Dataset.
    pub dataset: String,
    /// Evaluation method.
    pub method: String,
    /// The comparison.
    pub comparison: PairedComparison,
    /// Holm-adjusted p-value across the study.
    pub holm_p: f64,
}

/// What `analysis.json` holds.
#[derive(Debug, Clone, Deserialize)]
pub struct Analysis {
    /// Per configuration and method.
    pub configs: Vec<ConfigStats>,
    /// ddm-vs-AR comparisons.
    #[serde(default)]
    pub pairs: Vec<PairRow>,
    /// Multiple-comparisons note.
    #[serde(default)]
    pub note: Option<String>,
    /// Runs done, failed, total.
    pub counts: (usize, usize, usize),
}
