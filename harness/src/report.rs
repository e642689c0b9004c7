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
    let Some(r) = ddm_schema::RunDir::new(dir).read_eval()? else {
        return Ok(None);
    };
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


type Row = serde_json::Value;

fn num(v: &Row, k: &str) -> Option<f64> {
    v.get(k).and_then(|x| x.as_f64())
}

fn fixed(x: Option<f64>, d: usize) -> String {
    x.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into())
}

fn times(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}x", a / b),
        _ => "-".into(),
    }
}

/// A row's error, short enough for a table cell ("OOM", or the first words of the message).
fn error_cell(v: &Row) -> Option<String> {
    let e = v.get("error")?.as_str().unwrap_or("error");
    if e.to_ascii_lowercase().replace('_', " ").contains("out of memory") {
        return Some("OOM".into());
    }
    let first = e.lines().next().unwrap_or("");
    Some(format!("error: {}", first.chars().take(60).collect::<String>()))
}

/// A row's value, its error, or "-" when there is no row.
fn cell(v: Option<&Row>, k: &str, d: usize) -> String {
    match v {
        None => "-".into(),
        Some(v) => error_cell(v).unwrap_or_else(|| fixed(num(v, k), d)),
    }
}

fn mfu_cell(v: Option<&Row>) -> String {
    match v {
        Some(v) if v.get("error").is_none() => fixed(num(v, "mfu").map(|x| 100.0 * x), 1),
        _ => "-".into(),
    }
}

/// (objective, LoRA rank, batch, seq) of a training row; seq 512 when absent (files from before the
/// bench measured more than one sequence length).
type TrainKey = (String, u64, u64, u64);

fn train_key(v: &Row) -> TrainKey {
    (v["objective"].as_str().unwrap_or("").to_string(), v["lora_rank"].as_u64().unwrap_or(0), v["batch"].as_u64().unwrap_or(0), v["seq"].as_u64().unwrap_or(512))
}

/// The last row of `impl_name` at `k` (files are appended to: a later measurement wins).
fn last_at<'a>(rows: &'a [Row], impl_name: &str, k: &TrainKey) -> Option<&'a Row> {
    rows.iter().rev().find(|x| x["impl"].as_str() == Some(impl_name) && &train_key(x) == k)
}

/// Training throughput: each candle row beside the torch references at the same (objective, rank,
/// batch, seq): eager HF + peft (`torch`) and the compiled hand-written model (`torch-compile`),
/// with candle / torch ratios of tokens/s. Torch rows with no candle row follow, candle cells blank.
fn train_table(candle: &[Row], torch: &[Row]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "objective",
        "LoRA r",
        "batch",
        "seq",
        "candle launch",
        "candle tok/s",
        "candle ms/step",
        "candle GiB",
        "candle MFU %",
        "torch eager tok/s",
        "torch eager GiB",
        "torch.compile tok/s",
        "torch.compile GiB",
        "torch.compile MFU %",
        "candle / eager",
        "candle / compile",
    ]);
    let mut keys: Vec<(TrainKey, Option<&Row>)> = candle.iter().map(|c| (train_key(c), Some(c))).collect();
    for x in torch.iter().filter(|x| matches!(x["impl"].as_str(), Some("torch" | "torch-compile"))) {
        let k = train_key(x);
        if !keys.iter().any(|(kk, _)| kk == &k) {
            keys.push((k, None));
        }
    }
    for (k, c) in keys {
        let eager = last_at(torch, "torch", &k);
        let comp = last_at(torch, "torch-compile", &k);
        let ok = |v: Option<&Row>| v.filter(|v| v.get("error").is_none()).and_then(|v| num(v, "tokens_per_s"));
        t.add_row(vec![
            k.0.clone(),
            if k.1 == 0 { "full".into() } else { k.1.to_string() },
            k.2.to_string(),
            k.3.to_string(),
            c.map(|c| c.get("launch").and_then(|l| l.as_str()).unwrap_or("eager").to_string()).unwrap_or_else(|| "-".into()),
            cell(c, "tokens_per_s", 0),
            c.filter(|c| c.get("error").is_none()).map(|c| fixed(num(c, "ms_per_step"), 1)).unwrap_or_else(|| "-".into()),
            c.filter(|c| c.get("error").is_none()).map(|c| fixed(num(c, "peak_mem_gib"), 1)).unwrap_or_else(|| "-".into()),
            mfu_cell(c),
            cell(eager, "tokens_per_s", 0),
            eager.filter(|c| c.get("error").is_none()).map(|c| fixed(num(c, "peak_mem_gib"), 1)).unwrap_or_else(|| "-".into()),
            cell(comp, "tokens_per_s", 0),
            comp.filter(|c| c.get("error").is_none()).map(|c| fixed(num(c, "peak_mem_gib"), 1)).unwrap_or_else(|| "-".into()),
            mfu_cell(comp),
            times(ok(c), ok(eager)),
            times(ok(c), ok(comp)),
        ]);
    }
    t
}

/// Prompts per forward pass of a candle decode row; files from before `batch_size` existed decoded
/// diffusion with every item in one batch and AR one prompt at a time.
fn decode_batch(d: &Row) -> u64 {
    d["batch_size"].as_u64().unwrap_or_else(|| if d["sampler"].as_str().unwrap_or("").starts_with("ar") { 1 } else { d["items"].as_u64().unwrap_or(0) })
}

/// Decoding throughput: each candle sampler row beside the torch reference at the same batch size:
/// AR rows against HF `generate` with a static cache, diffusion rows against the plain PyTorch
/// diffusion loop with the same number of forward passes. The torch rows that no candle row was
/// matched with follow.
fn decode_section(decode: &[Row], torch: &[Row]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["sampler", "batch", "NFE", "candle tok/s", "torch reference", "torch NFE", "torch tok/s", "candle / torch"]);
    let torch: Vec<&Row> = torch.iter().filter(|x| x.get("batch").is_some()).collect();
    let mut used = vec![false; torch.len()];
    for d in decode {
        let sampler = d["sampler"].as_str().unwrap_or("");
        let b = decode_batch(d);
        let nfe = num(d, "mean_nfe");
        let want = if sampler.starts_with("ar") { "hf-generate-static" } else { "torch-diffusion-loop" };
        let m = torch.iter().enumerate().rev().find(|(_, x)| {
            x["impl"].as_str() == Some(want)
                && x["batch"].as_u64() == Some(b)
                && (want != "torch-diffusion-loop" || matches!((num(x, "nfe"), nfe), (Some(a), Some(n)) if (a - n).abs() < 0.5))
        });
        if let Some((i, _)) = m {
            used[i] = true;
        }
        let r = m.map(|(_, x)| *x);
        let ok = r.filter(|x| x.get("error").is_none()).and_then(|x| num(x, "tokens_per_s"));
        t.add_row(vec![
            sampler.to_string(),
            b.to_string(),
            fixed(nfe, 1),
            fixed(num(d, "tokens_per_s"), 0),
            r.map(|_| want.to_string()).unwrap_or_else(|| "-".into()),
            fixed(r.and_then(|x| num(x, "nfe")), 0),
            cell(r, "tokens_per_s", 0),
            times(num(d, "tokens_per_s"), ok),
        ]);
    }
    for (x, _) in torch.iter().zip(&used).filter(|(_, u)| !**u) {
        t.add_row(vec![
            "-".into(),
            x["batch"].as_u64().map(|b| b.to_string()).unwrap_or_else(|| "-".into()),
            "-".into(),
            "-".into(),
            x["impl"].as_str().unwrap_or("").to_string(),
            fixed(num(x, "nfe"), 0),
            cell(Some(x), "tokens_per_s", 0),
            "-".into(),
        ]);
    }
    t
}

/// Packed vs padded training rows (packing.jsonl), each with its real-token throughput as a
/// multiple of the first padded eager row's.
fn packing_table(rows: &[Row]) -> Table {
    let mut t = Table::new();
    t.set_header(["layout", "pack_to", "launch", "pairs", "rows × width", "ms/step", "real tokens/s", "vs padded eager", "columns/s", "peak GiB"]);
    let base = rows.iter().find(|r| r["layout"] == "padded" && r["launch"] == "eager").and_then(|r| num(r, "real_tokens_per_s"));
    for r in rows {
        t.add_row(vec![
            r["layout"].as_str().unwrap_or("").to_string(),
            fixed(num(r, "pack_to"), 0),
            r["launch"].as_str().unwrap_or("").to_string(),
            fixed(num(r, "pairs"), 0),
            format!("{} × {}", fixed(num(r, "rows"), 0), fixed(num(r, "width"), 0)),
            fixed(num(r, "ms_per_step"), 1),
            fixed(num(r, "real_tokens_per_s"), 0),
            times(num(r, "real_tokens_per_s"), base),
            fixed(num(r, "columns_per_s"), 0),
            fixed(num(r, "peak_mem_gib"), 2),
        ]);
    }
    t
}

/// The model shape of a training row (`smollm2-135m` in files from before rows recorded it).
fn row_arch(v: &Row) -> &str {
    v.get("arch").and_then(|a| a.as_str()).unwrap_or(crate::bench::ARCHS[0].name)
}

/// The big shape ([`crate::bench::Arch::big`]) a training row was measured at, if any.
fn big_arch(v: &Row) -> Option<&'static crate::bench::Arch> {
    crate::bench::ARCHS.iter().find(|a| a.big && a.name == row_arch(v))
}

/// A largest-batch search's outcome per implementation (candle per launch, `torch`,
/// `torch-compile`) and (objective, rank, seq): the largest batch that ran with its tokens/s and
/// peak GiB, the best tokens/s over the batches that ran (at which batch), and the first batch
/// that failed (its error, usually OOM). A later row at the same batch wins.
fn fit_table(candle: &[Row], torch: &[Row]) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec!["objective", "LoRA r", "seq", "impl", "largest batch", "tok/s", "GiB", "best tok/s (batch)", "failed at"]);
    let variant = |v: &Row, is_candle: bool| -> String {
        if is_candle {
            format!("candle {}", v.get("launch").and_then(|l| l.as_str()).unwrap_or("eager"))
        } else {
            v["impl"].as_str().unwrap_or("").to_string()
        }
    };
    let rows: Vec<(String, &Row)> = candle
        .iter()
        .map(|v| (variant(v, true), v))
        .chain(torch.iter().filter(|x| matches!(x["impl"].as_str(), Some("torch" | "torch-compile"))).map(|v| (variant(v, false), v)))
        .collect();
    let mut groups: Vec<(String, u64, u64, String)> = Vec::new();
    for (name, v) in &rows {
        let k = train_key(v);
        let g = (k.0, k.1, k.3, name.clone());
        if !groups.contains(&g) {
            groups.push(g);
        }
    }
    for (objective, rank, seq, name) in groups {
        // the last row at each batch
        let mut by_batch: Vec<(u64, &Row)> = Vec::new();
        for (n, v) in &rows {
            let k = train_key(v);
            if n == &name && k.0 == objective && k.1 == rank && k.3 == seq {
                by_batch.retain(|(b, _)| *b != k.2);
                by_batch.push((k.2, v));
            }
        }
        by_batch.sort_by_key(|(b, _)| *b);
        let ok: Vec<&(u64, &Row)> = by_batch.iter().filter(|(_, v)| v.get("error").is_none()).collect();
        let largest = ok.last();
        let best = ok.iter().filter_map(|(b, v)| num(v, "tokens_per_s").map(|x| (x, *b))).max_by(|a, b| a.0.total_cmp(&b.0));
        let failed = by_batch.iter().find(|(_, v)| v.get("error").is_some());
        t.add_row(vec![
            objective.clone(),
            if rank == 0 { "full".into() } else { rank.to_string() },
            seq.to_string(),
            name.clone(),
            largest.map(|(b, _)| b.to_string()).unwrap_or_else(|| "none".into()),
            fixed(largest.and_then(|(_, v)| num(v, "tokens_per_s")), 0),
            fixed(largest.and_then(|(_, v)| num(v, "peak_mem_gib")), 1),
            best.map(|(x, b)| format!("{x:.0} ({b})")).unwrap_or_else(|| "-".into()),
            failed.map(|(b, v)| format!("{b}: {}", error_cell(v).unwrap_or_default())).unwrap_or_else(|| "-".into()),
        ]);
    }
    t
}

/// The tables of a bench folder: `training` (candle.jsonl beside torch.jsonl), when there are
/// decode rows `decoding` (decode.jsonl beside torch_decode.jsonl), and when there are packing
/// rows `packing` (packing.jsonl). Training rows of a big shape (`arch` smollm2-1.7b or
/// llama2-7b) are left out of `training` and get two tables of their own, `training (ARCH)` (the
/// same columns, one row per tried batch) and `largest batch (ARCH)` ([`fit_table`]).
pub fn bench_tables(dir: &std::path::Path) -> crate::Result<Vec<(&'static str, Table)>> {
    let candle_all = read_jsonl(&dir.join("candle.jsonl"))?;
    let torch_all = read_jsonl(&dir.join("torch.jsonl"))?;
    let decode = read_jsonl(&dir.join("decode.jsonl"))?;
    let torch_decode = read_jsonl(&dir.join("torch_decode.jsonl"))?;
    let packing = read_jsonl(&dir.join("packing.jsonl"))?;
    let of = |rows: &[Row], arch: Option<&str>| -> Vec<Row> { rows.iter().filter(|v| big_arch(v).map(|a| a.name) == arch).cloned().collect() };
    let (candle, torch) = (of(&candle_all, None), of(&torch_all, None));
    let mut out = Vec::new();
    let torch_training = |rows: &[Row]| rows.iter().any(|x| matches!(x["impl"].as_str(), Some("torch" | "torch-compile")));
    if !candle.is_empty() || torch_training(&torch) || (candle_all.is_empty() && !torch_training(&torch_all)) {
        out.push(("training", train_table(&candle, &torch)));
    }
    for a in crate::bench::ARCHS.iter().filter(|a| a.big) {
        let (c, t) = (of(&candle_all, Some(a.name)), of(&torch_all, Some(a.name)));
        if !c.is_empty() || torch_training(&t) {
            out.push((a.training_title, train_table(&c, &t)));
            out.push((a.fit_title, fit_table(&c, &t)));
        }
    }
    if !decode.is_empty() || torch_decode.iter().any(|x| x.get("batch").is_some()) {
        out.push(("decoding", decode_section(&decode, &torch_decode)));
    }
    if !packing.is_empty() {
        out.push(("packing", packing_table(&packing)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cells(t: &Table) -> Vec<Vec<String>> {
        t.row_iter().map(|r| r.cell_iter().map(|c| c.content()).collect()).collect()
    }

    #[test]
    fn bench_tables_match_rows_by_shape_and_show_ratios() {
        let dir = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
        w(
            "candle.jsonl",
            concat!(
                r#"{"impl_name":"candle","objective":"ddm","lora_rank":16,"batch":64,"seq":512,"ms_per_step":100,"tokens_per_s":200000,"peak_mem_gib":20,"mfu":0.2}"#,
                "\n",
                r#"{"impl_name":"candle","objective":"ddm","lora_rank":16,"batch":64,"seq":160,"ms_per_step":50,"tokens_per_s":90000,"peak_mem_gib":6,"mfu":0.05}"#,
                "\n",
                r#"{"impl_name":"candle","objective":"ar","lora_rank":0,"batch":16,"error":"tensor error: CUDA_ERROR_OUT_OF_MEMORY"}"#,
                "\n"
            ),
        );
        w(
            "torch.jsonl",
            concat!(
                r#"{"impl":"torch-env","torch":"2.11"}"#,
                "\n",
                // seq 512 eager and compiled; a seq-160 eager row that must not match the 512 one
                r#"{"impl":"torch","objective":"ddm","lora_rank":16,"batch":64,"seq":512,"tokens_per_s":100000,"peak_mem_gib":40}"#,
                "\n",
                r#"{"impl":"torch-compile","objective":"ddm","lora_rank":16,"batch":64,"seq":512,"tokens_per_s":400000,"peak_mem_gib":30,"mfu":0.3}"#,
                "\n",
                r#"{"impl":"torch","objective":"ddm","lora_rank":16,"batch":64,"seq":160,"tokens_per_s":30000}"#,
                "\n",
                r#"{"impl":"torch-compile","objective":"ddm","lora_rank":16,"batch":64,"seq":160,"error":"out of memory"}"#,
                "\n",
                // no `seq`: 512, the older files' one length
                r#"{"impl":"torch","objective":"ar","lora_rank":0,"batch":16,"tokens_per_s":50000}"#,
                "\n",
                r#"{"impl":"torch-compile","objective":"ar","lora_rank":16,"batch":64,"seq":512,"tokens_per_s":300000}"#,
                "\n"
            ),
        );
        w(
            "decode.jsonl",
            concat!(
                r#"{"sampler":"diffusion-low_confidence","items":16,"batch_size":16,"prompt_len":256,"new_tokens":32,"steps":32,"tokens_per_s":1000,"mean_nfe":32.0,"wall_s":0.5}"#,
                "\n",
                r#"{"sampler":"ar-greedy-kv-cache","items":16,"batch_size":16,"prompt_len":256,"new_tokens":32,"steps":32,"tokens_per_s":800,"mean_nfe":32.0,"wall_s":0.6}"#,
                "\n",
                // an old row without batch_size: AR decoded one prompt at a time
                r#"{"sampler":"ar-greedy-kv-cache","items":16,"prompt_len":256,"new_tokens":32,"steps":32,"tokens_per_s":150,"mean_nfe":32.0,"wall_s":3.0}"#,
                "\n"
            ),
        );
        w(
            "torch_decode.jsonl",
            concat!(
                r#"{"impl":"torch-decode-env","torch":"2.11"}"#,
                "\n",
                r#"{"impl":"hf-generate-static","batch":16,"nfe":32,"tokens_per_s":3200}"#,
                "\n",
                r#"{"impl":"hf-generate-dynamic","batch":16,"nfe":32,"tokens_per_s":400}"#,
                "\n",
                r#"{"impl":"hf-generate-static","batch":1,"nfe":32,"tokens_per_s":300}"#,
                "\n",
                r#"{"impl":"torch-diffusion-loop","batch":16,"nfe":32,"tokens_per_s":500}"#,
                "\n"
            ),
        );
        let tables = bench_tables(dir.path()).unwrap();
        assert_eq!(tables.iter().map(|x| x.0).collect::<Vec<_>>(), ["training", "decoding"]);
        let tr = cells(&tables[0].1);
        let col = |name: &str| tables[0].1.header().unwrap().cell_iter().position(|c| c.content() == name).unwrap();
        let (eager, comp, r_eager, r_comp) = (col("torch eager tok/s"), col("torch.compile tok/s"), col("candle / eager"), col("candle / compile"));
        assert_eq!(tr.len(), 4, "{tr:?}");
        assert_eq!(&tr[0][..4], ["ddm", "16", "64", "512"]);
        assert_eq!((tr[0][eager].as_str(), tr[0][comp].as_str()), ("100000", "400000"));
        assert_eq!((tr[0][r_eager].as_str(), tr[0][r_comp].as_str()), ("2.00x", "0.50x"));
        assert_eq!(tr[0][col("torch.compile MFU %")], "30.0");
        assert_eq!(&tr[1][..4], ["ddm", "16", "64", "160"]);
        assert_eq!((tr[1][r_eager].as_str(), tr[1][comp].as_str(), tr[1][r_comp].as_str()), ("3.00x", "OOM", "-"));
        assert_eq!(&tr[2][..6], ["ar", "full", "16", "512", "eager", "OOM"]);
        assert_eq!(tr[0][col("candle launch")], "eager", "rows without a launch field were eager");
        assert_eq!((tr[2][eager].as_str(), tr[2][r_eager].as_str()), ("50000", "-"));
        // a torch row with no candle row is listed after the candle rows
        assert_eq!((&tr[3][..5], tr[3][comp].as_str()), (&["ar", "16", "64", "512", "-"].map(String::from)[..], "300000"));
        let de = cells(&tables[1].1);
        assert_eq!(de[0], ["diffusion-low_confidence", "16", "32.0", "1000", "torch-diffusion-loop", "32", "500", "2.00x"]);
        assert_eq!(de[1], ["ar-greedy-kv-cache", "16", "32.0", "800", "hf-generate-static", "32", "3200", "0.25x"]);
        assert_eq!(de[2], ["ar-greedy-kv-cache", "1", "32.0", "150", "hf-generate-static", "32", "300", "0.50x"]);
        assert_eq!(de[3], ["-", "16", "-", "-", "hf-generate-dynamic", "32", "400", "-"]);
        assert_eq!(de.len(), 4);
        assert!(to_markdown(&tables[1].1).contains("| ar-greedy-kv-cache | 16 | 32.0 | 800 | hf-generate-static | 32 | 3200 | 0.25x |"));
    }
}
