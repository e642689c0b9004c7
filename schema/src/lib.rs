//! The result folders of ddm-sft, in one place: their layout and the records written into them.
//!
//! `harness` writes these folders and `notebooks/ddm-results` reads them; both use this crate,
//! so a field renamed here is renamed for both, and the committed folders under `results/`
//! (read by the notebooks in CI) are checked by this crate's tests. serde only: no candle,
//! no statistics (the numbers are computed in `harness`).
//!
//! - [`layout`]: [`RunDir`] and [`StudyDir`]: every file name, `DONE` / `FAILED`, JSON helpers.
//! - [`lock`]: the `LOCK` files of studies, study folders and runs ([`Lock`]).
//! - [`run`]: `metrics.csv` and `t_buckets.csv` rows, `summary.json`, `FAILED`, run status.
//! - [`eval`]: `eval.json`, `predictions.jsonl`, and the interval / confusion records.
//! - [`study`]: `manifest.json`, generic over the run-config type of its points.
//! - [`summary`]: `summary.csv` and `results/index.csv` columns, read and written as text rows.
//! - [`analysis`]: `analysis.json`: statistics across seeds and paired comparisons.
#![deny(missing_docs)]

pub mod analysis;
pub mod error;
pub mod eval;
pub mod layout;
pub mod lock;
pub mod run;
pub mod study;
pub mod summary;

pub use analysis::{Analysis, ConfigStats, Estimate, MethodPairRow, PairRow, PairedComparison, SeedSummary};
pub use error::{Error, Result};
pub use eval::{ClassMetrics, ClassificationReport, Confusion, EvalResult, Interval, LabelCount, MajorityBaseline, McNemar, MethodResult, ObjectiveKind, Prediction};
pub use layout::{read_json, write_atomic, write_json, PredictionWriter, RunDir, StudyDir};
pub use lock::{Lock, LockInfo, TryLock};
pub use run::{Failure, RunStatus, RunSummary, StepMetrics, TBucketRow, TrainOutcome};
pub use study::{DeviceInfo, FileHash, GitInfo, Manifest, Point, PrimaryMetric, Resumption};
pub use summary::SummaryCsv;
