//! Studies: a TOML file in `studies/` that answers one question by running a set of runs
//! (a grid, zipped axes and named variants of a base run config, each once per seed), and the
//! evidence they leave in `results/<study>/<UTC stamp>-<sha>[-dirty]/`.
//!
//! - [`spec`]: the study file schema, its expansion into validated points, run ids.
//! - [`manifest`]: `manifest.json` (study, points, git, versions, device, host, times, command,
//!   model and dataset hashes).
//! - [`runner`]: runs the points resumably; writes data only.
//! - [`summary`]: per-run rows read back from the run folders, `summary.csv` and `results/index.csv`.
//! - [`analysis`]: statistics across seeds and ddm-vs-AR paired comparisons.
//! - [`report`]: terminal and Markdown tables (`report.md`), and `compare`.
//!
//! The file names and the records in these files belong to the `ddm-schema` crate
//! (`ddm_schema::StudyDir`, `ddm_schema::RunDir`), shared with the notebooks.
//!
//! ## Folder layout
//! ```text
//! results/
//!   index.csv                          one row per study folder
//!   <study>/
//!     LOCK                             held while an invocation picks or creates its folder
//!     latest                           name of the newest complete folder
//!     <yyyymmdd-hhmmss>-<sha>[-dirty]/
//!       LOCK                           held by the invocation running it (pid, host, heartbeat)
//!       runs/<run-id>/LOCK             held by the process (the study's, or one of its
//!                                      `--devices` workers) running that point
//!       manifest.json                  end time written when every run is done or failed
//!       summary.csv                    one row per run, rewritten after every run
//!       report.md, analysis.json       written by `harness report` (and at the end of `harness study`)
//!       runs/<run-id>/                 config.json, metrics.csv, eval_metrics.csv, summary.json,
//!                                      eval.json, predictions.jsonl, DONE (or FAILED)
//! .cache/checkpoints/<study>/<folder>/<run-id>/   adapters and checkpoints (git-ignored)
//! ```

pub mod analysis;
pub mod manifest;
pub mod report;
pub mod runner;
pub mod spec;
pub mod summary;

pub use runner::{merge_study, parse_devices, run_study, work_folder, Shard, StudyOpts, StudyOutcome, WorkerDevice, Worked};
pub use spec::{load, PrimaryMetric, Study};
