//! `summary.csv` of a study folder (one row per run: the point, its training and, per evaluation
//! method, its report) and `results/index.csv` (one row per study folder). The columns depend
//! on the study (its swept keys and methods), so rows are text under a header: [`SummaryCsv`].
//! The column names are here, in one place.

use crate::error::{Error, Result};
use crate::layout::write_atomic;
use std::path::Path;

/// Columns of `summary.csv` after the run id, configuration, zero-shot flag, variant (when the
/// study has variants) and the swept keys.
/// `first_loss`, `final_loss` and `dev_loss` are each objective's own weighted loss (not
/// comparable across objectives); `dev_nll` is the dev negative log-likelihood per response
/// token (AR exact, diffusion the ELBO bound), the comparable one.
pub const RUN_COLUMNS: [&str; 15] = [
    "seed", "objective", "dataset", "primary_metric", "status", "failed_step", "failed_message", "steps", "first_loss", "final_loss", "dev_loss",
    "dev_nll", "train_tokens_per_s", "train_wall_s", "wall_s",
];

/// Columns of `summary.csv` per evaluation method `m`, each written `<m>_<column>`.
pub const METHOD_COLUMNS: [&str; 14] = [
    "n", "accuracy", "accuracy_lo", "accuracy_hi", "macro_f1", "macro_f1_lo", "macro_f1_hi", "balanced_accuracy", "invalid_rate", "majority_baseline",
    "majority_label", "collapse", "throughput", "throughput_unit",
];

/// Columns of `results/index.csv`.
pub const INDEX_COLUMNS: [&str; 10] = ["study", "folder", "commit", "dirty", "device", "start", "end", "runs_done", "runs_failed", "runs_total"];

/// The header of `summary.csv`: `run_id`, `configuration`, `zero_shot`, `variant` (when
/// `has_variants`), the swept keys, [`RUN_COLUMNS`], then [`METHOD_COLUMNS`] per method.
pub fn summary_header(has_variants: bool, axis_keys: &[String], methods: &[String]) -> Vec<String> {
    let mut header: Vec<String> = vec!["run_id".into(), "configuration".into(), "zero_shot".into()];
    if has_variants {
        header.push("variant".into());
    }
    header.extend(axis_keys.iter().cloned());
    header.extend(RUN_COLUMNS.iter().map(|h| h.to_string()));
    for m in methods {
        header.extend(METHOD_COLUMNS.iter().map(|f| format!("{m}_{f}")));
    }
    header
}

/// A CSV file as text rows under a header (`summary.csv`, `index.csv`); empty cells are
/// missing values.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SummaryCsv {
    /// Column names.
    pub header: Vec<String>,
    /// Rows, as text (empty cells for missing values).
    pub rows: Vec<Vec<String>>,
}

impl SummaryCsv {
    /// Read `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let mut r = csv::Reader::from_path(path).map_err(|e| Error::parse(path, e))?;
        let header = r.headers().map_err(|e| Error::parse(path, e))?.iter().map(String::from).collect();
        let mut rows = Vec::new();
        for rec in r.records() {
            rows.push(rec.map_err(|e| Error::parse(path, e))?.iter().map(String::from).collect());
        }
        Ok(SummaryCsv { header, rows })
    }

    /// Write to `path` atomically (through a temporary sibling and a rename).
    pub fn write(&self, path: &Path) -> Result<()> {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.write_record(&self.header).map_err(|e| Error::parse(path, e))?;
        for r in &self.rows {
            w.write_record(r).map_err(|e| Error::parse(path, e))?;
        }
        let bytes = w.into_inner().map_err(|e| Error::parse(path, e))?;
        write_atomic(path, &bytes)
    }

    /// Index of column `name`.
    pub fn column(&self, name: &str) -> Option<usize> {
        self.header.iter().position(|h| h == name)
    }

    /// Cell `name` of row `row` (`None` when the column is absent or the cell empty).
    pub fn get(&self, row: usize, name: &str) -> Option<&str> {
        let c = self.column(name)?;
        self.rows.get(row)?.get(c).map(String::as_str).filter(|s| !s.is_empty())
    }

    /// Cell `name` of row `row` as a finite number.
    pub fn f64(&self, row: usize, name: &str) -> Option<f64> {
        self.get(row, name)?.parse().ok().filter(|x: &f64| x.is_finite())
    }

    /// Rows of configuration `config_id` (column `configuration`).
    pub fn rows_of(&self, config_id: &str) -> Vec<usize> {
        (0..self.rows.len()).filter(|&i| self.get(i, "configuration") == Some(config_id)).collect()
    }

    /// Values of column `name` over the rows of configuration `config_id` (missing ones skipped).
    pub fn values(&self, config_id: &str, name: &str) -> Vec<f64> {
        self.rows_of(config_id).into_iter().filter_map(|i| self.f64(i, name)).collect()
    }
}
