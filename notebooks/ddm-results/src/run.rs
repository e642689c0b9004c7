//! The files of one run folder (`runs/<id>/`): `metrics.csv` (one row per optimizer step) and
//! `eval.json` (one report per evaluation method, `generate@steps=N` included).

use crate::analysis::{Interval, MajorityBaseline};
use crate::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct StepRow {
    /// Optimizer step (1-based).
    pub step: u64,
    /// Weighted loss (what is differentiated).
    pub loss: f64,
    /// Unweighted cross-entropy over the scored tokens.
    pub ce: f64,
    /// Learning rate.
    #[serde(default)]
    pub lr: f64,
    /// Real tokens per second over the step.
    #[serde(default)]
    pub tokens_per_s: f64,
    /// Seconds since training started.
    #[serde(default)]
    pub elapsed_s: f64,
}

/// Read `metrics.csv` of `dir`; an empty list when the run did not train (zero-shot).
pub fn read_metrics(dir: &Path) -> Result<Vec<StepRow>> {
    let p = dir.join("metrics.csv");
    if !p.is_file() {
        return Ok(Vec::new());
    }
    let mut r = csv::Reader::from_path(&p).map_err(|e| Error::file(&p, e))?;
    r.deserialize().map(|row| row.map_err(|e| Error::file(&p, e))).collect()
}

/// The part of a classification report the notebooks show.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Report {
    /// Items.
    pub n: u64,
    /// Accuracy (Wilson interval).
    pub accuracy: Interval,
    /// Macro-F1 (bootstrap interval).
    pub macro_f1: Interval,
    /// Unparseable predictions / n.
    #[serde(default)]
    pub invalid_rate: f64,
    /// Majority baseline.
    pub majority_baseline: MajorityBaseline,
    /// Collapse label.
    #[serde(default)]
    pub collapse: Option<String>,
}

/// One method of `eval.json`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct MethodResult {
    /// `generate`, `generate@steps=N` or `likelihood`.
    pub method: String,
    /// Metrics.
    pub report: Report,
    /// Seconds.
    #[serde(default)]
    pub wall_s: f64,
    /// Tokens per second (generate) or items per second (likelihood).
    #[serde(default)]
    pub throughput: f64,
    /// Unit of `throughput`.
    #[serde(default)]
    pub throughput_unit: String,
    /// Mean forward passes per item.
    #[serde(default)]
    pub mean_nfe: f64,
}

impl MethodResult {
    /// The step count of `generate@steps=N`.
    pub fn sweep_steps(&self) -> Option<u64> {
        self.method.strip_prefix("generate@steps=")?.parse().ok()
    }
}

/// What `eval.json` holds.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct EvalResult {
    /// Dataset.
    pub dataset: String,
    /// Items.
    pub n_items: usize,
    /// `diffusion` or `autoregressive`.
    pub objective: String,
    /// Methods.
    pub methods: Vec<MethodResult>,
}

/// Read `eval.json` of `dir`, `None` when absent (a failed run).
pub fn read_eval(dir: &Path) -> Result<Option<EvalResult>> {
    let p = dir.join("eval.json");
    if !p.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).map_err(|e| Error::file(&p, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::file(&p, e))
}
