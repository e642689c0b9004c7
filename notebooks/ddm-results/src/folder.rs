//! Which result folder a notebook shows, and opening it.
//!
//! A notebook names a folder through `DDM_STUDY_DIR` (a study result folder, or a study's
//! folder `results/<study>` whose `latest` file names the newest complete one), else
//! `DDM_STUDY` (a study name: `results/<name>`), else its default. Relative paths are looked up
//! from the working directory and then from its parents, so `results/...` works from the
//! repository root and from `notebooks/` (where the kernel runs) alike.

use crate::{Error, Result};
use ddm_schema::{Analysis, EvalResult, Manifest, Point, RunDir, RunStatus, StepMetrics, StudyDir, SummaryCsv, TBucketRow};
use std::path::{Path, PathBuf};

/// Default folder of `diffusion_vs_ar.ipynb`.
pub const DEFAULT_DDM_VS_AR: &str = "results/baseline/latest";

/// The folder named by `DDM_STUDY_DIR`, else `results/$DDM_STUDY`, else `default`; not yet
/// checked.
pub fn from_env(default: &str) -> String {
    let var = |k: &str| std::env::var(k).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty());
    if let Some(d) = var("DDM_STUDY_DIR") {
        d
    } else if let Some(s) = var("DDM_STUDY") {
        format!("results/{s}")
    } else {
        default.to_string()
    }
}

/// Find `p`: as given, else (when relative) under the nearest ancestor of the working
/// directory that has it.
fn locate(p: &Path) -> Option<PathBuf> {
    if p.exists() {
        return Some(p.to_path_buf());
    }
    if p.is_absolute() {
        return None;
    }
    let cwd = std::env::current_dir().ok()?;
    cwd.ancestors().map(|a| a.join(p)).find(|c| c.exists())
}

/// The study result folder that `spec` names: a folder with `manifest.json`, a study folder
/// with a `latest` file, or such a `latest` file itself.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let p = Path::new(spec);
    let hint = "run `make study NAME=<study>` first, or set DDM_STUDY_DIR to a study result folder (or DDM_STUDY to a study name)";
    let Some(found) = locate(p) else {
        let cwd = std::env::current_dir().map(|c| c.display().to_string()).unwrap_or_default();
        return Err(Error(format!("no study results at `{spec}` (looked from {cwd} and its parents): {hint}")));
    };
    let latest = if found.is_file() { Some(found.clone()) } else { Some(StudyDir::latest_file(&found)).filter(|l| l.is_file()) };
    if found.is_dir() && StudyDir::is_study_folder(&found) {
        return Ok(found);
    }
    if let Some(l) = latest {
        let name = std::fs::read_to_string(&l).map_err(|e| Error::file(&l, e))?.trim().to_string();
        let dir = l.parent().unwrap_or(Path::new(".")).join(&name);
        if name.is_empty() || !StudyDir::is_study_folder(&dir) {
            return Err(Error(format!("{} names `{name}`, which is not a study result folder (no manifest.json)", l.display())));
        }
        return Ok(dir);
    }
    Err(Error(format!(
        "`{}` is not a study result folder (no manifest.json) and has no `latest` file (no study has finished there yet): {hint}",
        found.display()
    )))
}

/// An opened, finished study result folder.
#[derive(Debug, Clone)]
pub struct Study {
    /// The folder as the notebook named it (`results/smoke/latest`).
    pub spec: String,
    /// The folder, resolved.
    pub dir: PathBuf,
    /// `manifest.json`.
    pub manifest: Manifest,
    /// `summary.csv`.
    pub summary: SummaryCsv,
    /// `analysis.json`.
    pub analysis: Analysis,
}

impl Study {
    /// Open the folder of [`from_env`]`(default)`; an empty `default` makes one of the two
    /// env vars required.
    pub fn from_env(default: &str) -> Result<Study> {
        let spec = from_env(default);
        if spec.is_empty() {
            return Err(Error::msg("no study named: set DDM_STUDY to a study name (anneal, shift, lora_rank, t_sampling, ...) or DDM_STUDY_DIR to a result folder"));
        }
        Study::open(&spec)
    }

    /// Open the folder `spec` names (see [`resolve`]). Refuses, with one message saying what
    /// to run, a folder whose study has not finished (no end time, or runs neither done nor
    /// failed) or that has no `summary.csv` / `analysis.json`.
    pub fn open(spec: &str) -> Result<Study> {
        let dir = resolve(spec)?;
        let folder = StudyDir::new(&dir);
        let manifest: Manifest = folder.read_manifest().map_err(|e| Error(format!("not a study manifest: {e}")))?;
        let pending: Vec<&str> = manifest.points.iter().filter(|p| folder.run(&p.id).status() == RunStatus::Pending).map(|p| p.id.as_str()).collect();
        if manifest.end.is_none() || !pending.is_empty() {
            let shown: Vec<&str> = pending.iter().take(5).copied().collect();
            let more = if pending.len() > 5 { format!(" and {} more", pending.len() - 5) } else { String::new() };
            return Err(Error(format!(
                "{} is incomplete: {} of {} runs not finished ({}{more}); resume it with `make study NAME={}` (same commit) or pick a finished folder",
                dir.display(),
                pending.len(),
                manifest.points.len(),
                if shown.is_empty() { "manifest.json has no end time".to_string() } else { shown.join(", ") },
                manifest.study
            )));
        }
        if !folder.summary_csv().is_file() {
            return Err(Error(format!("{}: no summary.csv; rerun `harness report {}`", dir.display(), dir.display())));
        }
        let summary = folder.read_summary()?;
        if !folder.analysis_json().is_file() {
            return Err(Error(format!("{}: no analysis.json; write it with `harness report {}`", dir.display(), dir.display())));
        }
        let analysis: Analysis = folder.read_analysis()?;
        Ok(Study { spec: spec.to_string(), dir, manifest, summary, analysis })
    }

    /// The folder of run `id`.
    pub fn run_dir(&self, id: &str) -> RunDir {
        StudyDir::new(&self.dir).run(id)
    }

    /// `metrics.csv` of run `id` (empty for zero-shot runs).
    pub fn metrics(&self, id: &str) -> Result<Vec<StepMetrics>> {
        Ok(self.run_dir(id).read_metrics()?)
    }

    /// `t_buckets.csv` of run `id`: the diffusion loss by noise level; empty for AR and
    /// zero-shot runs and for runs written before the file existed.
    pub fn t_buckets(&self, id: &str) -> Result<Vec<TBucketRow>> {
        Ok(self.run_dir(id).read_t_buckets()?)
    }

    /// `eval.json` of run `id` (`None` for failed runs).
    pub fn eval(&self, id: &str) -> Result<Option<EvalResult>> {
        Ok(self.run_dir(id).read_eval()?)
    }

    /// Trained (not zero-shot) points.
    pub fn trained(&self) -> impl Iterator<Item = &Point> {
        self.manifest.points.iter().filter(|p| !p.zero_shot)
    }

    /// Whether the study trains both objectives (a ddm-vs-AR study, such as `baseline` or
    /// `smoke`).
    pub fn is_ddm_vs_ar(&self) -> bool {
        let has = |k: &str| self.trained().any(|p| p.objective() == k);
        has("diffusion") && has("autoregressive")
    }

    /// Runs done, failed, total.
    pub fn counts(&self) -> (usize, usize, usize) {
        let (mut done, mut failed) = (0, 0);
        for p in &self.manifest.points {
            match self.run_dir(&p.id).status() {
                RunStatus::Done => done += 1,
                RunStatus::Failed => failed += 1,
                RunStatus::Pending => {}
            }
        }
        (done, failed, self.manifest.points.len())
    }
}
