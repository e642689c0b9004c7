//! Per-run rows of a study folder, read back from the run folders (`summary.json`, `eval.json`,
//! `FAILED`, `DONE`), and the CSV files written from them: `summary.csv` (one row per point)
//! and `results/index.csv` (one row per study folder).

use super::manifest::{self, Manifest};
use super::spec::Point;
use crate::{Error, Result};
use ddm_schema::summary::{summary_header, INDEX_COLUMNS, METHOD_COLUMNS};
use ddm_schema::{EvalResult, RunSummary, StudyDir, SummaryCsv};
pub use ddm_schema::{Failure, RunStatus};
use std::path::{Path, PathBuf};

/// One run of a study folder as read from disk.
#[derive(Debug, Clone)]
pub struct RunRow {
    /// The point.
    pub point: Point,
    /// Its folder.
    pub dir: PathBuf,
    /// Status.
    pub status: RunStatus,
    /// Why it failed.
    pub failure: Option<Failure>,
    /// `summary.json` (trained runs).
    pub summary: Option<RunSummary>,
    /// `eval.json`.
    pub eval: Option<EvalResult>,
}

impl RunRow {
    /// Training plus evaluation seconds.
    pub fn wall_s(&self) -> Option<f64> {
        let t = self.summary.as_ref().map(|s| s.train.wall_s);
        let e = self.eval.as_ref().map(|e| e.methods.iter().map(|m| m.wall_s).sum::<f64>());
        match (t, e) {
            (None, None) => None,
            (a, b) => Some(a.unwrap_or(0.0) + b.unwrap_or(0.0)),
        }
    }

    /// Dataset name.
    pub fn dataset(&self) -> String {
        self.eval.as_ref().map(|e| e.dataset.clone()).unwrap_or_else(|| self.point.config.data.dataset.as_str().to_string())
    }
}

/// Read every point's run folder.
pub fn collect(folder: &Path, points: &[Point]) -> Result<Vec<RunRow>> {
    let study = StudyDir::new(folder);
    points
        .iter()
        .map(|p| {
            let run = study.run(&p.id);
            let status = run.status();
            let (summary, eval, failure) = match status {
                RunStatus::Done => (run.read_summary()?, run.read_eval()?, None),
                RunStatus::Failed => (None, None, run.read_failure().ok().flatten()),
                RunStatus::Pending => (None, None, None),
            };
            Ok(RunRow { point: p.clone(), dir: run.path().to_path_buf(), status, failure, summary, eval })
        })
        .collect()
}

/// Evaluation methods of the points, in first-seen order.
pub fn methods(points: &[Point]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for p in points {
        for m in &p.config.eval.methods {
            if !out.iter().any(|o| o == m.as_str()) {
                out.push(m.as_str().to_string());
            }
        }
    }
    out
}

fn num(x: Option<f64>) -> String {
    x.map(|v| format!("{v}")).unwrap_or_default()
}

/// Write `summary.csv` (atomically): one row per point with its swept values, seed, status,
/// failure step, losses (the objective's own, and the dev NLL per response token comparable
/// across objectives), throughput, wall time, and per evaluation method: n, accuracy with its
/// Wilson interval, macro-F1 with its bootstrap interval, balanced accuracy, invalid rate,
/// majority baseline, collapse flag and throughput.
pub fn write_csv(folder: &Path, manifest: &Manifest, rows: &[RunRow]) -> Result<()> {
    let methods = methods(&manifest.points);
    let has_variants = manifest.points.iter().any(|p| p.variant.is_some());
    let mut table = SummaryCsv { header: summary_header(has_variants, &manifest.axis_keys, &methods), rows: Vec::with_capacity(rows.len()) };
    for r in rows {
        let p = &r.point;
        let mut rec: Vec<String> = vec![p.id.clone(), p.config_id.clone(), p.zero_shot.to_string()];
        if has_variants {
            rec.push(p.variant.clone().unwrap_or_default());
        }
        for k in &manifest.axis_keys {
            rec.push(p.axes.iter().find(|(a, _)| a == k).map(|(_, v)| v.trim_matches('"').to_string()).unwrap_or_default());
        }
        let t = r.summary.as_ref().map(|s| &s.train);
        rec.extend([
            p.seed.to_string(),
            p.config.objective.kind().as_str().to_string(),
            r.dataset(),
            p.primary_metric.as_str().to_string(),
            r.status.as_str().to_string(),
            r.failure.as_ref().and_then(|f| f.step).map(|s| s.to_string()).unwrap_or_default(),
            r.failure.as_ref().map(|f| f.message.clone()).unwrap_or_default(),
            t.map(|t| t.steps.to_string()).unwrap_or_default(),
            num(t.map(|t| t.first_loss)),
            num(t.map(|t| t.final_loss)),
            num(t.and_then(|t| t.dev_loss)),
            num(t.and_then(|t| t.dev_nll)),
            num(t.map(|t| t.tokens_per_s)),
            num(t.map(|t| t.wall_s)),
            num(r.wall_s()),
        ]);
        for m in &methods {
            match r.eval.as_ref().and_then(|e| e.methods.iter().find(|x| &x.method == m)) {
                Some(x) => {
                    let rep = &x.report;
                    rec.extend([
                        rep.n.to_string(),
                        num(Some(rep.accuracy.estimate)),
                        num(Some(rep.accuracy.lo)),
                        num(Some(rep.accuracy.hi)),
                        num(Some(rep.macro_f1.estimate)),
                        num(Some(rep.macro_f1.lo)),
                        num(Some(rep.macro_f1.hi)),
                        num(Some(rep.balanced_accuracy.estimate)),
                        num(Some(rep.invalid_rate)),
                        num(Some(rep.majority_baseline.accuracy)),
                        rep.majority_baseline.label.clone(),
                        rep.collapse.clone().unwrap_or_default(),
                        num(Some(x.throughput)),
                        x.throughput_unit.clone(),
                    ]);
                }
                None => rec.extend(std::iter::repeat_n(String::new(), METHOD_COLUMNS.len())),
            }
        }
        table.rows.push(rec);
    }
    Ok(StudyDir::new(folder).write_summary(&table)?)
}

/// Rewrite `<results>/index.csv` from every `<results>/<study>/<folder>/manifest.json`: study,
/// folder, commit, dirty, device, start, end, runs done / failed / total.
pub fn write_index(results: &Path) -> Result<()> {
    let mut rows: Vec<Vec<String>> = Vec::new();
    let mut studies: Vec<PathBuf> = match std::fs::read_dir(results) {
        Ok(rd) => rd.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.is_dir()).collect(),
        Err(e) => return Err(Error::io(results, e)),
    };
    studies.sort();
    for s in studies {
        let mut folders: Vec<PathBuf> = std::fs::read_dir(&s)
            .map_err(|e| Error::io(&s, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| StudyDir::is_study_folder(p))
            .collect();
        folders.sort();
        for f in folders {
            let Ok(m) = manifest::read(&f) else { continue };
            let study = StudyDir::new(&f);
            let (done, failed) = study.finished_counts(m.points.iter().map(|p| p.id.as_str()));
            rows.push(vec![
                m.study.clone(),
                m.folder.clone(),
                m.git.commit.clone().unwrap_or_else(|| "none".into()),
                m.git.dirty.to_string(),
                format!("{} ({})", m.device.device, m.device.name),
                m.start.clone(),
                m.end.clone().unwrap_or_default(),
                done.to_string(),
                failed.to_string(),
                m.points.len().to_string(),
            ]);
        }
    }
    let table = SummaryCsv { header: INDEX_COLUMNS.iter().map(|h| h.to_string()).collect(), rows };
    Ok(table.write(&StudyDir::index_csv(results))?)
}
