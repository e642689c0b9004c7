//! Read a `harness study` result folder and render it for the evcxr notebooks.
//!
//! The notebooks in `notebooks/` `:dep` this crate instead of `harness`, so the kernel never
//! compiles candle: a notebook run costs the few seconds of serde, csv, comfy-table and plotters.
//! The files (`manifest.json`, `summary.csv`, `analysis.json`, the run folders) are read through
//! `ddm-schema`, the crate `harness` writes them with (re-exported as [`schema`]): no mirror to
//! keep in step.
//!
//! - [`folder`]: which folder a notebook shows (env vars, `latest`), and [`Study::open`], which
//!   refuses a missing or unfinished folder with one readable message.
//! - [`schema`]: the files' layout and records, as written by `harness`; [`summary`]: spreads
//!   across seeds of `summary.csv` columns.
//! - [`tables`]: [`Table`]s (printed with comfy-table, shown as HTML in a notebook).
//! - [`plots`]: [`Figure`]s (SVG from plotters, no system fonts; HTML in a notebook).
//! - [`figures`]: the figures of a study (accuracy, loss curves smoothed and on a log scale,
//!   the diffusion loss by t bucket, dev NLL across objectives, decoding steps, throughput,
//!   sweep).
//! - [`page`]: a table and a figure as one cell output.
//! - [`sweep`]: the swept value of a study, for `study.ipynb`.
//!
//! Everything is data in, table or figure out; nothing here writes into the result folder.
#![deny(missing_docs)]

pub mod error;
pub mod figures;
pub mod folder;
pub mod frontier;
pub mod page;
pub mod plots;
pub mod summary;
pub mod sweep;
pub mod tables;

pub use ddm_schema as schema;
pub use error::{Error, Result};
pub use folder::Study;
pub use page::{page, Page};
pub use plots::Figure;
pub use tables::Table;
