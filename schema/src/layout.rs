//! Where things are in a result folder: a run folder ([`RunDir`]) and a study result folder
//! ([`StudyDir`]), the only place that spells their file names, and the JSON helpers that read
//! and write them.
//!
//! ```text
//! results/
//!   index.csv                          one row per study folder
//!   <study>/
//!     LOCK                             held while a folder is chosen or created
//!     latest                           names the newest finished folder
//!     <yyyymmdd-hhmmss>-<sha>[-dirty]/ a StudyDir
//!       LOCK (while running)  manifest.json  summary.csv  analysis.json  report.md
//!       runs/<run-id>/                 a RunDir:
//!         config.json  metrics.csv  t_buckets.csv (diffusion)  eval_metrics.csv
//!         summary.json  eval.json  predictions.jsonl  checkpoints/  dev_evals/step-N/  DONE (last) or FAILED
//! ```

use crate::error::{Error, Result};
use crate::eval::{EvalResult, Prediction};
use crate::run::{Failure, RunStatus, RunSummary, StepMetrics, TBucketRow};
use crate::study::Manifest;
use crate::analysis::Analysis;
use crate::summary::SummaryCsv;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

/// Read a JSON file; `None` when it does not exist.
pub fn read_json<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map(Some).map_err(|e| Error::parse(path, e))
}

/// Read a JSON file that must exist.
pub fn read_json_required<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::parse(path, e))
}

fn pretty<T: Serialize>(path: &Path, value: &T) -> Result<String> {
    serde_json::to_string_pretty(value).map(|t| t + "\n").map_err(|e| Error::parse(path, e))
}

/// Write a JSON file (pretty, with a final newline) atomically (see [`write_atomic`]).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    write_atomic(path, pretty(path, value)?.as_bytes())
}

/// Write a file through a temporary sibling (`.<name>.<pid>.tmp`, so two processes never share
/// one) and a rename, so readers never see half of it.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    if let Err(e) = std::fs::write(&tmp, bytes) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(&tmp, e));
    }
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A run folder (`runs/<id>/`, a `harness train` folder, or the output folder of `harness eval`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// The resolved run config, written first.
    pub const CONFIG: &'static str = "config.json";
    /// One row per optimizer step.
    pub const METRICS: &'static str = "metrics.csv";
    /// Long format `step,metric,value` of the evaluations during training.
    pub const EVAL_METRICS: &'static str = "eval_metrics.csv";
    /// The diffusion loss by noise level ([`TBucketRow`]s); diffusion runs only.
    pub const T_BUCKETS: &'static str = "t_buckets.csv";
    /// The training summary.
    pub const SUMMARY: &'static str = "summary.json";
    /// The evaluation report.
    pub const EVAL: &'static str = "eval.json";
    /// One prediction per item and method.
    pub const PREDICTIONS: &'static str = "predictions.jsonl";
    /// Written last: the run is complete.
    pub const DONE: &'static str = "DONE";
    /// Written instead of `DONE` when the loss diverged.
    pub const FAILED: &'static str = "FAILED";
    /// Held while a process works on the run (see [`crate::lock`]).
    pub const LOCK: &'static str = "LOCK";
    /// Default checkpoint folder.
    pub const CHECKPOINTS: &'static str = "checkpoints";
    /// Evaluations on the dev split during training, one `step-NNNNNN/` each.
    pub const DEV_EVALS: &'static str = "dev_evals";
    /// The saved adapter, inside the checkpoint folder (`checkpoints/` or `train.checkpoint_dir`).
    pub const ADAPTER: &'static str = "adapter.safetensors";

    /// The run folder at `path` (nothing is created).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunDir { path: path.into() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Create the folder (and its parents).
    pub fn create(&self) -> Result<()> {
        std::fs::create_dir_all(&self.path).map_err(|e| Error::io(&self.path, e))
    }

    /// `config.json`.
    pub fn config_json(&self) -> PathBuf {
        self.path.join(Self::CONFIG)
    }
    /// `metrics.csv`.
    pub fn metrics_csv(&self) -> PathBuf {
        self.path.join(Self::METRICS)
    }
    /// `t_buckets.csv`.
    pub fn t_buckets_csv(&self) -> PathBuf {
        self.path.join(Self::T_BUCKETS)
    }
    /// `eval_metrics.csv`.
    pub fn eval_metrics_csv(&self) -> PathBuf {
        self.path.join(Self::EVAL_METRICS)
    }
    /// `summary.json`.
    pub fn summary_json(&self) -> PathBuf {
        self.path.join(Self::SUMMARY)
    }
    /// `eval.json`.
    pub fn eval_json(&self) -> PathBuf {
        self.path.join(Self::EVAL)
    }
    /// `predictions.jsonl`.
    pub fn predictions_jsonl(&self) -> PathBuf {
        self.path.join(Self::PREDICTIONS)
    }
    /// `DONE`.
    pub fn done_file(&self) -> PathBuf {
        self.path.join(Self::DONE)
    }
    /// `FAILED`.
    pub fn failed_file(&self) -> PathBuf {
        self.path.join(Self::FAILED)
    }
    /// `checkpoints/` (the default when `train.checkpoint_dir` is not set).
    pub fn checkpoints(&self) -> PathBuf {
        self.path.join(Self::CHECKPOINTS)
    }
    /// `dev_evals/`.
    pub fn dev_evals(&self) -> PathBuf {
        self.path.join(Self::DEV_EVALS)
    }
    /// `dev_evals/step-NNNNNN/`: the evaluation folder of the dev evaluation at `step`.
    pub fn dev_eval(&self, step: u64) -> RunDir {
        RunDir::new(self.dev_evals().join(format!("step-{step:06}")))
    }

    /// `LOCK`: the run's lock file, for workers that share a study folder
    /// ([`crate::Lock::try_acquire`]).
    pub fn lock_file(&self) -> PathBuf {
        self.path.join(Self::LOCK)
    }

    /// `DONE` exists.
    pub fn is_done(&self) -> bool {
        self.done_file().is_file()
    }

    /// `DONE` → done, `FAILED` → failed, else pending.
    pub fn status(&self) -> RunStatus {
        if self.is_done() {
            RunStatus::Done
        } else if self.failed_file().is_file() {
            RunStatus::Failed
        } else {
            RunStatus::Pending
        }
    }

    /// Write `DONE` (holding `utc_time`, RFC 3339) atomically: the last file of a complete run.
    /// The only writer of `DONE`.
    pub fn mark_done(&self, utc_time: &str) -> Result<()> {
        write_atomic(&self.done_file(), format!("{utc_time}\n").as_bytes())
    }

    /// Write `FAILED` atomically: the run stopped at `step` (when known) for `reason`, at
    /// `utc_time`. Returns what was written.
    pub fn mark_failed(&self, step: Option<u64>, reason: &str, utc_time: &str) -> Result<Failure> {
        let f = Failure { step, message: reason.to_string(), time: utc_time.to_string() };
        let p = self.failed_file();
        write_atomic(&p, pretty(&p, &f)?.as_bytes())?;
        Ok(f)
    }

    /// Write `config.json`, creating the folder first.
    pub fn write_config<C: Serialize>(&self, cfg: &C) -> Result<()> {
        self.create()?;
        write_json(&self.config_json(), cfg)
    }
    /// Read `config.json`.
    pub fn read_config<C: DeserializeOwned>(&self) -> Result<C> {
        read_json_required(&self.config_json())
    }
    /// Write `summary.json`.
    pub fn write_summary(&self, s: &RunSummary) -> Result<()> {
        write_json(&self.summary_json(), s)
    }
    /// `summary.json`, `None` when absent (zero-shot and unfinished runs).
    pub fn read_summary(&self) -> Result<Option<RunSummary>> {
        read_json(&self.summary_json())
    }
    /// Write `eval.json`.
    pub fn write_eval(&self, e: &EvalResult) -> Result<()> {
        write_json(&self.eval_json(), e)
    }
    /// `eval.json`, `None` when absent (failed runs).
    pub fn read_eval(&self) -> Result<Option<EvalResult>> {
        read_json(&self.eval_json())
    }
    /// `FAILED`, `None` when absent.
    pub fn read_failure(&self) -> Result<Option<Failure>> {
        read_json(&self.failed_file())
    }

    /// Start `predictions.jsonl` (truncating it), creating the folder first.
    pub fn predictions_writer(&self) -> Result<PredictionWriter> {
        self.create()?;
        let path = self.predictions_jsonl();
        let file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        Ok(PredictionWriter { out: std::io::BufWriter::new(file), path })
    }

    /// Every row of `predictions.jsonl` (blank lines skipped).
    pub fn read_predictions(&self) -> Result<Vec<Prediction>> {
        let p = self.predictions_jsonl();
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        text.lines()
            .enumerate()
            .filter(|(_, l)| !l.trim().is_empty())
            .map(|(i, l)| serde_json::from_str(l).map_err(|e| Error::parse(&p, format!("line {}: {e}", i + 1))))
            .collect()
    }

    /// Every row of `metrics.csv`; empty when the run did not train (zero-shot).
    pub fn read_metrics(&self) -> Result<Vec<StepMetrics>> {
        let p = self.metrics_csv();
        if !p.is_file() {
            return Ok(Vec::new());
        }
        let mut r = csv::Reader::from_path(&p).map_err(|e| Error::parse(&p, e))?;
        r.deserialize().map(|row| row.map_err(|e| Error::parse(&p, e))).collect()
    }

    /// Every row of `t_buckets.csv`; empty when the run has none (AR, zero-shot, or written
    /// before the file existed).
    pub fn read_t_buckets(&self) -> Result<Vec<TBucketRow>> {
        let p = self.t_buckets_csv();
        if !p.is_file() {
            return Ok(Vec::new());
        }
        let mut r = csv::Reader::from_path(&p).map_err(|e| Error::parse(&p, e))?;
        r.deserialize().map(|row| row.map_err(|e| Error::parse(&p, e))).collect()
    }
}

/// Writes `predictions.jsonl` one [`Prediction`] per line.
pub struct PredictionWriter {
    out: std::io::BufWriter<std::fs::File>,
    path: PathBuf,
}

impl PredictionWriter {
    /// Append one row.
    pub fn write(&mut self, row: &Prediction) -> Result<()> {
        let line = serde_json::to_string(row).map_err(|e| Error::parse(&self.path, e))?;
        writeln!(self.out, "{line}").map_err(|e| Error::io(&self.path, e))
    }

    /// Flush to disk.
    pub fn finish(mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::io(&self.path, e))
    }
}

/// A study result folder `<results>/<study>/<stamp>-<sha>[-dirty]/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudyDir {
    path: PathBuf,
}

impl StudyDir {
    /// What ran, from which code, on which machine.
    pub const MANIFEST: &'static str = "manifest.json";
    /// One row per run.
    pub const SUMMARY: &'static str = "summary.csv";
    /// Statistics across seeds and paired comparisons.
    pub const ANALYSIS: &'static str = "analysis.json";
    /// The rendered tables.
    pub const REPORT: &'static str = "report.md";
    /// The run folders.
    pub const RUNS: &'static str = "runs";
    /// In a study folder and in `<results>/<study>/`: the lock file (see [`crate::lock`]).
    pub const LOCK: &'static str = "LOCK";
    /// In `<results>/<study>/`: names the newest finished folder.
    pub const LATEST: &'static str = "latest";
    /// In `<results>/`: one row per study folder.
    pub const INDEX: &'static str = "index.csv";

    /// The study result folder at `path` (nothing is created).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        StudyDir { path: path.into() }
    }

    /// The folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `path` is a study result folder (it has `manifest.json`).
    pub fn is_study_folder(path: &Path) -> bool {
        path.join(Self::MANIFEST).is_file()
    }

    /// `LOCK` of this folder: held while a `harness study` process runs it.
    pub fn lock_file(&self) -> PathBuf {
        self.path.join(Self::LOCK)
    }

    /// `<study_dir>/LOCK` of a study's folder `results/<study>`: held while a process chooses
    /// or creates the study folder it will run (and takes that folder's lock).
    pub fn study_lock_file(study_dir: &Path) -> PathBuf {
        study_dir.join(Self::LOCK)
    }

    /// `<study_dir>/latest` of a study's folder `results/<study>`.
    pub fn latest_file(study_dir: &Path) -> PathBuf {
        study_dir.join(Self::LATEST)
    }

    /// `<results>/index.csv`.
    pub fn index_csv(results: &Path) -> PathBuf {
        results.join(Self::INDEX)
    }

    /// `manifest.json`.
    pub fn manifest_json(&self) -> PathBuf {
        self.path.join(Self::MANIFEST)
    }
    /// `summary.csv`.
    pub fn summary_csv(&self) -> PathBuf {
        self.path.join(Self::SUMMARY)
    }
    /// `analysis.json`.
    pub fn analysis_json(&self) -> PathBuf {
        self.path.join(Self::ANALYSIS)
    }
    /// `report.md`.
    pub fn report_md(&self) -> PathBuf {
        self.path.join(Self::REPORT)
    }
    /// `runs/`.
    pub fn runs(&self) -> PathBuf {
        self.path.join(Self::RUNS)
    }
    /// `runs/<id>/`.
    pub fn run(&self, id: &str) -> RunDir {
        RunDir::new(self.runs().join(id))
    }

    /// How many of the runs `ids` are finished (`DONE`) and failed (`FAILED`).
    pub fn finished_counts<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> (usize, usize) {
        let (mut done, mut failed) = (0, 0);
        for id in ids {
            match self.run(id).status() {
                RunStatus::Done => done += 1,
                RunStatus::Failed => failed += 1,
                RunStatus::Pending => {}
            }
        }
        (done, failed)
    }

    /// Read `manifest.json`.
    pub fn read_manifest<C: DeserializeOwned>(&self) -> Result<Manifest<C>> {
        read_json_required(&self.manifest_json())
    }
    /// Write `manifest.json` atomically.
    pub fn write_manifest<C: Serialize>(&self, m: &Manifest<C>) -> Result<()> {
        let p = self.manifest_json();
        write_atomic(&p, pretty(&p, m)?.as_bytes())
    }
    /// Read `analysis.json`.
    pub fn read_analysis(&self) -> Result<Analysis> {
        read_json_required(&self.analysis_json())
    }
    /// Write `analysis.json`.
    pub fn write_analysis(&self, a: &Analysis) -> Result<()> {
        write_json(&self.analysis_json(), a)
    }
    /// Read `summary.csv`.
    pub fn read_summary(&self) -> Result<SummaryCsv> {
        SummaryCsv::read(&self.summary_csv())
    }
    /// Write `summary.csv` atomically.
    pub fn write_summary(&self, s: &SummaryCsv) -> Result<()> {
        s.write(&self.summary_csv())
    }

    /// Make `<results>/<study>/latest` name this folder (atomically).
    pub fn mark_latest(&self) -> Result<()> {
        let name = self.path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let parent = self.path.parent().unwrap_or(Path::new("."));
        write_atomic(&Self::latest_file(parent), format!("{name}\n").as_bytes())
    }
}
