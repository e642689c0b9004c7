//! Rendering of result data as tables (comfy-table for terminals, Markdown for files).
//! Result folders hold data; this module only reads and renders it.

use crate::eval::EvalResult;
use comfy_table::{presets::UTF8_FULL_CONDENSED, Cell, Table};
use ddm_schema::eval::FrontierRow;

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

/// The speed–accuracy frontier (`frontier.csv`): one row per generate method, accuracy with its
/// Wilson interval against mean forward passes per answer and tokens/s of the decode call, with
/// the decoding batch size (the same for every row of one evaluation).
pub fn frontier_table(rows: &[FrontierRow]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(FrontierRow::HEADER.to_vec());
    for r in rows {
        t.add_row(r.cells());
    }
    t
}

/// Decoding diagnostics per generate method: hit-eos rate, the length range, the NFE range,
/// and calibration (ECE, with the answer confidence's definition).
pub fn decode_table(r: &EvalResult) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["method", "hit eos %", "length min–max (mean)", "NFE min–max", "ECE (answer conf.)"]);
    for m in &r.methods {
        let Some(d) = &m.decode else { continue };
        let nonzero: Vec<usize> = d.length_counts.iter().enumerate().filter(|(_, &c)| c > 0).map(|(k, _)| k).collect();
        let len = match (nonzero.first(), nonzero.last()) {
            (Some(a), Some(b)) => format!("{a}–{b} ({:.2})", d.mean_length),
            _ => "-".into(),
        };
        let nfe = match (d.nfe_counts.first(), d.nfe_counts.last()) {
            (Some(a), Some(b)) => format!("{}–{}", a.value, b.value),
            _ => "-".into(),
        };
        let ece = d.calibration.as_ref().map(|c| format!("{:.3} ({})", c.ece, c.answer_confidence)).unwrap_or_else(|| "-".into());
        t.add_row(vec![Cell::new(&m.method), Cell::new(pct(d.hit_eos_rate)), Cell::new(len), Cell::new(nfe), Cell::new(ece)]);
    }
    t
}

/// The tables of one evaluation folder (`eval.json`, and `frontier.csv` when present): the
/// method table, the decoding diagnostics, the frontier. `None` when the folder holds no
/// `eval.json`.
pub fn eval_folder_tables(dir: &std::path::Path) -> crate::Result<Option<Vec<(&'static str, Table)>>> {
    let Some(r) = ddm_schema::RunDir::new(dir).read_eval()? else { return Ok(None) };
    let mut out = vec![("evaluation", eval_table(&r))];
    if r.methods.iter().any(|m| m.decode.is_some()) {
        out.push(("decoding", decode_table(&r)));
    }
    if let Some(rows) = ddm_schema::eval::read_frontier(dir)? {
        out.push(("speed–accuracy frontier", frontier_table(&rows)));
    }
    Ok(Some(out))
}

/// Markdown for a comfy table (GitHub pipe table).
pub fn to_markdown(t: &Table) -> String {
    let mut s = String::new();
    let header: Vec<String> = t.header().map(|h| h.cell_iter().map(|c| c.content()).collect()).unwrap_or_default();
    s.push_str(&format!("| {} |\n", header.join(" | ")));
    s.push_str(&format!("|{}\n", "---|".repeat(header.len())));
    for row in t.row_iter() {
        let cells: Vec<String> = row.cell_iter().map(|c| c.content().replace('|', "\\|")).collect();
        s.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    s
}

/// The selfcheck as a table.
pub fn selfcheck_table(checks: &[crate::selfcheck::Check]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["check", "on", "value", "reference", "tolerance", "ok"]);
    for c in checks {
        t.add_row(vec![c.name.clone(), c.on.clone(), format!("{:.6}", c.value), format!("{:.6}", c.reference), format!("{:.1e}", c.tolerance), if c.ok { "ok".into() } else { "FAIL".into() }]);
    }
    t
}

fn read_jsonl(path: &std::path::Path) -> crate::Result<Vec<serde_json::Value>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.trim().starts_with('{'))
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| crate::Error::data(path, format!("line {}: {e}", i + 1))))
        .collect()
}

/// Training throughput of candle and torch side by side with the candle / torch ratio, and the
/// decoding throughput, from a bench folder.
pub fn bench_table(dir: &std::path::Path) -> crate::Result<Table> {
    let candle = read_jsonl(&dir.join("candle.jsonl"))?;
    let torch = read_jsonl(&dir.join("torch.jsonl"))?;
    let decode = read_jsonl(&dir.join("decode.jsonl"))?;
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["objective", "LoRA r", "batch", "candle tok/s", "candle ms/step", "candle GiB", "candle MFU %", "torch tok/s", "torch ms/step", "torch GiB", "candle / torch"]);
    let key = |v: &serde_json::Value| (v["objective"].as_str().unwrap_or("").to_string(), v["lora_rank"].as_u64().unwrap_or(0), v["batch"].as_u64().unwrap_or(0));
    let f = |v: &serde_json::Value, k: &str, d: usize| v.get(k).and_then(|x| x.as_f64()).map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into());
    for c in &candle {
        let k = key(c);
        let tr = torch.iter().find(|x| key(x) == k && x["impl"].as_str() == Some("torch"));
        let ratio = match (c.get("tokens_per_s").and_then(|x| x.as_f64()), tr.and_then(|x| x.get("tokens_per_s")).and_then(|x| x.as_f64())) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
            _ => "-".into(),
        };
        let mfu = c.get("mfu").and_then(|x| x.as_f64()).map(|x| format!("{:.1}", 100.0 * x)).unwrap_or_else(|| "-".into());
        let err = c.get("error").and_then(|e| e.as_str()).map(|e| format!("error: {}", e.lines().next().unwrap_or("")));
        t.add_row(vec![
            k.0.clone(),
            if k.1 == 0 { "full".into() } else { k.1.to_string() },
            k.2.to_string(),
            err.unwrap_or_else(|| f(c, "tokens_per_s", 0)),
            f(c, "ms_per_step", 1),
            f(c, "peak_mem_gib", 1),
            mfu,
            tr.map(|x| f(x, "tokens_per_s", 0)).unwrap_or_else(|| "-".into()),
            tr.map(|x| f(x, "ms_per_step", 1)).unwrap_or_else(|| "-".into()),
            tr.map(|x| f(x, "peak_mem_gib", 1)).unwrap_or_else(|| "-".into()),
            ratio,
        ]);
    }
    for d in &decode {
        t.add_row(vec![
            d["sampler"].as_str().unwrap_or("").to_string(),
            "-".into(),
            d["items"].to_string(),
            f(d, "tokens_per_s", 0),
            format!("nfe {}", f(d, "mean_nfe", 1)),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "decode".into(),
        ]);
    }
    Ok(t)
}
