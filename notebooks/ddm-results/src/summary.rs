//! `summary.csv`: one row per run, columns named as `harness` writes them (`run_id`,
//! `configuration`, the swept keys, `seed`, `objective`, `final_loss`, `train_tokens_per_s`,
//! `<method>_accuracy`, `<method>_throughput`, ...). Kept as text: the columns depend on the study.

use crate::{Error, Result};
use std::path::Path;

/// The rows of `summary.csv`.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Column names.
    pub header: Vec<String>,
    /// Rows, as text (empty cells for missing values).
    pub rows: Vec<Vec<String>>,
}

impl Summary {
    /// Read `path`.
    pub fn read(path: &Path) -> Result<Self> {
        let mut r = csv::Reader::from_path(path).map_err(|e| Error::file(path, e))?;
        let header = r.headers().map_err(|e| Error::file(path, e))?.iter().map(String::from).collect();
        let mut rows = Vec::new();
        for rec in r.records() {
            rows.push(rec.map_err(|e| Error::file(path, e))?.iter().map(String::from).collect());
        }
        Ok(Summary { header, rows })
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

    /// Cell `name` of row `row` as a number.
    pub fn f64(&self, row: usize, name: &str) -> Option<f64> {
        self.get(row, name)?.parse().ok().filter(|x: &f64| x.is_finite())
    }

    /// Rows of configuration `config_id`.
    pub fn rows_of(&self, config_id: &str) -> Vec<usize> {
        (0..self.rows.len()).filter(|&i| self.get(i, "configuration") == Some(config_id)).collect()
    }

    /// Values of column `name` over the rows of configuration `config_id` (missing ones skipped).
    pub fn values(&self, config_id: &str, name: &str) -> Vec<f64> {
        self.rows_of(config_id).into_iter().filter_map(|i| self.f64(i, name)).collect()
    }
}

/// Mean and range of values across seeds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Mean.
    pub mean: f64,
    /// Smallest.
    pub min: f64,
    /// Largest.
    pub max: f64,
    /// How many.
    pub n: usize,
}

impl Spread {
    /// `None` for no values.
    pub fn of(xs: &[f64]) -> Option<Spread> {
        if xs.is_empty() {
            return None;
        }
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        let min = xs.iter().copied().fold(f64::INFINITY, f64::min);
        let max = xs.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        Some(Spread { mean, min, max, n: xs.len() })
    }

    /// `1234` or `1234 (1100–1300, 3 seeds)`, with `digits` decimals.
    pub fn text(&self, digits: usize) -> String {
        if self.n < 2 {
            format!("{:.*}", digits, self.mean)
        } else {
            format!("{:.*} ({:.*}–{:.*}, {} seeds)", digits, self.mean, digits, self.min, digits, self.max, self.n)
        }
    }
}
