//! `analysis.json` of a study folder ([`Analysis`]): per configuration × method the statistics
//! across seeds ([`ConfigStats`]), and the ddm-vs-AR paired comparisons ([`PairRow`] holding a
//! [`PairedComparison`]), and each run's decoding variants against its plain `generate`
//! ([`MethodPairRow`]). Computed by `harness report`; read by the notebooks.
//!
//! A configuration's interval is the pooled-item bootstrap across seeds
//! ([`ConfigStats::accuracy_pooled`]: items resampled, seeds kept; inside `[0, 1]`), with the
//! seed standard deviation beside it ([`SeedSummary::std_dev`]). Folders written before it
//! existed hold a Student-t interval across seeds instead ([`SeedSummary::interval`]), which the
//! estimates below show clipped to `[0, 1]` and labelled as such. Every field added later is
//! optional (`serde(default)`), so old folders read.

use crate::eval::{Interval, MajorityBaseline, McNemar, ObjectiveKind};
use crate::study::PrimaryMetric;
use serde::{Deserialize, Serialize};

/// Summary of one configuration across seeds: always defined for one or more values, with the
/// spread and the interval left out (`None`) when there is a single value.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct SeedSummary {
    /// Number of values (seeds).
    pub n: usize,
    /// Mean of the values.
    pub mean: f64,
    /// Sample standard deviation (the seed s.d.); `None` with a single value.
    pub std_dev: Option<f64>,
    /// Student-t interval of the mean, in folders written before the pooled-item bootstrap
    /// ([`ConfigStats::accuracy_pooled`]) replaced it; `None` now (and with a single value).
    pub interval: Option<Interval>,
}

/// Two systems (A and B, e.g. ddm and AR) compared on the same items.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
pub struct PairedComparison {
    /// Number of items.
    pub n: u64,
    /// Accuracy of A.
    pub a_accuracy: f64,
    /// Accuracy of B.
    pub b_accuracy: f64,
    /// Items both got right.
    pub both_correct: u64,
    /// Items both got wrong.
    pub both_wrong: u64,
    /// Exact McNemar test on correctness (`b`: only A right, `c`: only B right).
    pub mcnemar: McNemar,
    /// Accuracy of A minus accuracy of B, with a paired bootstrap 95% interval.
    pub accuracy_diff: Interval,
    /// Macro-F1 of A minus macro-F1 of B, with a paired bootstrap 95% interval.
    pub macro_f1_diff: Interval,
    /// Bootstrap resamples behind the intervals.
    pub bootstrap_resamples: usize,
    /// Seed of the bootstrap.
    pub seed: u64,
}

/// One configuration × evaluation method, across seeds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigStats {
    /// Configuration id (run id without the seed).
    pub config_id: String,
    /// Dataset name.
    pub dataset: String,
    /// Evaluation method.
    pub method: String,
    /// An evaluation of the untrained base model.
    #[serde(default)]
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
    #[serde(default)]
    pub collapsed: Vec<String>,
    /// Accuracy across seeds with its pooled-item bootstrap 95% interval (items resampled, the
    /// seeds kept: see `harness::stats::seed_item_bootstrap`); `None` in older folders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accuracy_pooled: Option<Interval>,
    /// Macro-F1 across seeds with its pooled-item bootstrap 95% interval; `None` in older
    /// folders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macro_f1_pooled: Option<Interval>,
    /// Test items per seed (of the first done run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<u64>,
    /// Minimum detectable accuracy difference between this configuration and another of the
    /// same items and seeds, at 80% power and two-sided α = 0.05: the two-proportion formula
    /// `(z_0.975 + z_0.8)·sqrt(2p(1-p)/N)` with `N = items × seeds` and `p` this
    /// configuration's accuracy (see `harness::stats::mde_two_proportions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mde: Option<f64>,
    /// Mean final training loss: the objective's own weighted loss, not comparable across
    /// objectives.
    pub final_loss: Option<f64>,
    /// Mean final dev negative log-likelihood per response token (AR exact, diffusion the ELBO
    /// bound): comparable across objectives. `None` in older folders.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_nll: Option<f64>,
    /// Mean training throughput, real tokens per second.
    #[serde(default)]
    pub train_tokens_per_s: Option<f64>,
    /// Mean evaluation throughput of this method (generated tokens/s or items/s) and its unit.
    #[serde(default)]
    pub eval_throughput: Option<(f64, String)>,
}

/// A value with its interval and where the interval comes from, for tables and plots.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Mean across seeds, or the single run's value.
    pub value: f64,
    /// Interval, when there is one.
    pub interval: Option<(f64, f64)>,
    /// [`POOLED_SOURCE`], `t over seeds, clipped to [0, 1]` (older folders), `Wilson`,
    /// `bootstrap` or `none`.
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

/// The source of a configuration interval from [`ConfigStats::accuracy_pooled`] /
/// [`ConfigStats::macro_f1_pooled`].
pub const POOLED_SOURCE: &str = "bootstrap over items, seeds kept";

fn estimate(s: &Option<SeedSummary>, pooled: &Option<Interval>, single: &Option<Interval>, single_source: &'static str) -> Option<Estimate> {
    let s = s.as_ref()?;
    if let Some(i) = pooled {
        return Some(Estimate { value: i.estimate, interval: Some((i.lo, i.hi)), source: POOLED_SOURCE });
    }
    if let Some(i) = s.interval {
        return Some(Estimate { value: s.mean, interval: Some((i.lo.max(0.0), i.hi.min(1.0))), source: "t over seeds, clipped to [0, 1]" });
    }
    match single {
        Some(i) => Some(Estimate { value: i.estimate, interval: Some((i.lo, i.hi)), source: single_source }),
        None => Some(Estimate { value: s.mean, interval: None, source: "none" }),
    }
}

impl ConfigStats {
    /// The mean of the primary metric, for sorting.
    pub fn primary_mean(&self) -> Option<f64> {
        self.primary.as_ref().map(|s| s.mean)
    }

    /// Accuracy: the pooled-item bootstrap across seeds (older folders: the t-interval across
    /// seeds, clipped to `[0, 1]`), or the single run's Wilson interval.
    pub fn accuracy_estimate(&self) -> Option<Estimate> {
        estimate(&self.accuracy, &self.accuracy_pooled, &self.single_accuracy, "Wilson")
    }

    /// Macro-F1: as [`Self::accuracy_estimate`], or the single run's bootstrap interval.
    pub fn macro_f1_estimate(&self) -> Option<Estimate> {
        estimate(&self.macro_f1, &self.macro_f1_pooled, &self.single_macro_f1, "bootstrap")
    }

    /// The primary metric, as [`Self::accuracy_estimate`] or [`Self::macro_f1_estimate`].
    pub fn primary_estimate(&self) -> Option<Estimate> {
        match self.primary_metric {
            PrimaryMetric::MacroF1 => self.macro_f1_estimate(),
            PrimaryMetric::Accuracy => self.accuracy_estimate(),
        }
    }
}

/// ddm (A) against AR (B) on the same items.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    /// Minimum detectable accuracy difference of this pair at 80% power and two-sided α = 0.05,
    /// paired (McNemar): `(z_0.975 + z_0.8)·sqrt(ψ/n)` with `ψ = (b + c)/n` the observed
    /// discordant share (see `harness::stats::mde_paired`); `None` in older folders and
    /// when no item is discordant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mde: Option<f64>,
}

/// A decoding variant of one run (a sweep method: `generate@steps=N`, `generate@threshold=τ`,
/// `generate@cache=K`) against the run's plain `generate`, on the same items of the same
/// trained model: what the variant costs or buys in accuracy, nothing else differing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodPairRow {
    /// The run.
    pub run: String,
    /// Dataset name.
    pub dataset: String,
    /// The variant (A).
    pub method: String,
    /// The method it is compared with (B): `generate`.
    pub base: String,
    /// McNemar and paired bootstrap differences (variant − base).
    pub comparison: PairedComparison,
    /// Holm-adjusted McNemar p-value across the study's method pairs.
    pub holm_p: f64,
    /// Minimum detectable accuracy difference at 80% power, paired (as [`PairRow::mde`]).
    pub mde: Option<f64>,
}

/// What `analysis.json` holds: everything a study report shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// Per configuration and method.
    pub configs: Vec<ConfigStats>,
    /// ddm-vs-AR comparisons.
    #[serde(default)]
    pub pairs: Vec<PairRow>,
    /// Each run's decoding variants against its plain `generate` (absent in older folders and
    /// when no run has variants).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub method_pairs: Vec<MethodPairRow>,
    /// Multiple-comparisons note, when there is more than one comparison.
    pub note: Option<String>,
    /// Runs done, failed, total.
    pub counts: (usize, usize, usize),
}
