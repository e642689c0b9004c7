//! Spreads across seeds of `summary.csv` columns (read as text rows, [`ddm_schema::SummaryCsv`]:
//! the columns depend on the study).

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
