//! The decoding diagnostics of a study's runs: the speed–accuracy frontier (`frontier.csv`:
//! accuracy against forward passes per answer and tokens/s, diffusion sweep points beside the AR
//! point), generated-length and eos-position histograms, and the calibration of the sampler's
//! commit confidence (`eval.json`'s `decode` of each generate method).
//!
//! Folders written before these records existed have none: the tables are empty and the figures
//! say "no data in this folder".

use crate::plots::{lines, Figure, XySeries};
use crate::schema::eval::{read_frontier, DecodeStats, FrontierRow};
use crate::tables::Table;
use crate::{Result, Study};

/// Every trained run's frontier rows, `(run id, row)`, in manifest order: `frontier.csv`, or
/// the rows `eval.json` implies when the CSV is missing.
pub fn rows(study: &Study) -> Result<Vec<(String, FrontierRow)>> {
    let mut out = Vec::new();
    for p in study.trained() {
        let dir = study.run_dir(&p.id);
        let rows = match read_frontier(dir.path())? {
            Some(r) => r,
            None => study.eval(&p.id)?.map(|e| e.frontier()).unwrap_or_default(),
        };
        out.extend(rows.into_iter().map(|r| (p.id.clone(), r)));
    }
    Ok(out)
}

/// The frontier as a table: one row per run and generate method.
pub fn table(study: &Study) -> Result<Table> {
    let mut header = vec!["run"];
    header.extend(FrontierRow::HEADER);
    let mut t = Table::new(
        "Speed–accuracy frontier (accuracy % with Wilson 95% interval; tokens/s of the decode call, both decoders batched at `batch`)",
        &header,
    );
    for (run, r) in rows(study)? {
        let mut row = vec![run];
        row.extend(r.cells());
        t.rows.push(row);
    }
    t.note = Some("tokens/s = generated tokens (eos excluded) / wall seconds of the decode call (all prompts, batched).".into());
    Ok(t)
}

/// Accuracy against mean NFE and against tokens/s: per run, the diffusion points (steps and
/// threshold sweeps) joined in NFE order, the AR point alone; Wilson intervals as bars.
pub fn figure(study: &Study) -> Result<Figure> {
    let all = rows(study)?;
    let mut runs: Vec<String> = all.iter().map(|(r, _)| r.clone()).collect();
    runs.dedup();
    let series = |x: fn(&FrontierRow) -> f64| -> Vec<XySeries> {
        runs.iter()
            .enumerate()
            .map(|(i, run)| {
                let mut pts: Vec<&FrontierRow> = all.iter().filter(|(r, _)| r == run).map(|(_, r)| r).collect();
                pts.sort_by(|a, b| x(a).total_cmp(&x(b)));
                XySeries {
                    faint: false,
                    name: run.clone(),
                    points: pts.iter().map(|r| (x(r), r.accuracy)).collect(),
                    bars: pts.iter().map(|r| (x(r), r.accuracy_lo, r.accuracy_hi)).collect(),
                    markers: true,
                    color: i,
                }
            })
            .collect()
    };
    Ok(Figure::row([
        lines("Accuracy against forward passes", "mean NFE per answer", "accuracy", &series(|r| r.mean_nfe), None)?,
        lines("Accuracy against decoding speed", "tokens/s (decode call)", "accuracy", &series(|r| r.tokens_per_s), None)?,
    ]))
}

/// The `decode` record of each trained run's plain `generate` method, `(run id, stats)`.
pub fn decode_stats(study: &Study) -> Result<Vec<(String, DecodeStats)>> {
    let mut out = Vec::new();
    for p in study.trained() {
        if let Some(e) = study.eval(&p.id)? {
            if let Some(d) = e.methods.iter().find(|m| m.method == "generate").and_then(|m| m.decode.clone()) {
                out.push((p.id.clone(), d));
            }
        }
    }
    Ok(out)
}

/// Generated-length and eos-position histograms of each run's `generate` (share of answers per
/// length; the eos panel counts only answers that ended with an eos).
pub fn length_figure(study: &Study) -> Result<Figure> {
    let stats = decode_stats(study)?;
    let hist = |counts: fn(&DecodeStats) -> &[u64]| -> Vec<XySeries> {
        stats
            .iter()
            .enumerate()
            .map(|(i, (run, d))| {
                let n = d.answers.max(1) as f64;
                XySeries { faint: false, name: run.clone(), points: counts(d).iter().enumerate().map(|(k, &c)| (k as f64, c as f64 / n)).collect(), bars: vec![], markers: true, color: i }
            })
            .collect()
    };
    Ok(Figure::row([
        lines("Generated length", "tokens (eos excluded)", "share of answers", &hist(|d| &d.length_counts), None)?,
        lines("Eos position", "tokens before the eos", "share of answers", &hist(|d| &d.eos_position_counts), None)?,
    ]))
}

/// Reliability diagram of each run's `generate`: accuracy against mean answer confidence per
/// non-empty bin (the diagonal is perfect calibration), ECE in the legend.
pub fn calibration_figure(study: &Study) -> Result<Figure> {
    let stats = decode_stats(study)?;
    let mut series = vec![XySeries { faint: false, name: "perfect calibration".into(), points: vec![(0.0, 0.0), (1.0, 1.0)], bars: vec![], markers: false, color: 7 }];
    for (i, (run, d)) in stats.iter().enumerate() {
        let Some(c) = &d.calibration else { continue };
        series.push(XySeries {
            faint: false,
            name: format!("{run} (ECE {:.3})", c.ece),
            points: c.bins.iter().filter(|b| b.count > 0).map(|b| (b.mean_confidence, b.accuracy)).collect(),
            bars: vec![],
            markers: true,
            color: i,
        });
    }
    if series.len() == 1 {
        return Figure::note("Calibration of the commit confidence", "no data in this folder");
    }
    lines("Calibration of the commit confidence (answer confidence: mean over its tokens)", "mean answer confidence", "accuracy", &series, None)
}
