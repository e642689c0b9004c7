//! Rendering of result data as tables (comfy-table for terminals, Markdown for files).
//! Result folders hold data; this module only reads and renders it.

use crate::eval::EvalResult;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Table};

fn pct(x: f64) -> String {
    format!("{:.1}", 100.0 * x)
}

/// One row per method: accuracy with its Wilson interval, macro-F1 and balanced accuracy with
/// bootstrap intervals, invalid rate, majority baseline, collapse flag, throughput.
pub fn eval_table(r: &EvalResult) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["method", "n", "accuracy % [95% CI]", "macro-F1 % [95% CI]", "bal. acc %", "invalid %", "majority %", "collapse", "throughput"]);
    for m in &r.methods {
        let rep = &m.report;
        t.add_row(vec![
            Cell::new(&m.method),
            Cell::new(rep.n),
            Cell::new(format!("{} [{}, {}]", pct(rep.accuracy.estimate), pct(rep.accuracy.lo), pct(rep.accuracy.hi))),
            Cell::new(format!("{} [{}, {}]", pct(rep.macro_f1.estimate), pct(rep.macro_f1.lo), pct(rep.macro_f1.hi))),
            Cell::new(pct(rep.balanced_accuracy.estimate)),
            Cell::new(pct(rep.invalid_rate)),
            Cell::new(format!("{} ({})", pct(rep.majority_baseline.accuracy), rep.majority_baseline.label)),
            Cell::new(rep.collapse.clone().unwrap_or_else(|| "-".into())),
            Cell::new(format!("{:.1} {}", m.throughput, m.throughput_unit)),
        ]);
    }
    t
}
