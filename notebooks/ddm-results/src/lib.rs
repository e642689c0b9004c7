//! Read a `harness study` result folder and render it for the evcxr notebooks.
//!
//! The notebooks in `notebooks/` `:dep` this crate instead of `harness`, so the kernel never
//! compiles candle: a notebook run costs the few seconds of serde, csv, comfy-table and plotters.
//! The price is that the schemas of `manifest.json`, `summary.csv`, `analysis.json` and the run
//! folders are mirrored here (the subset the notebooks show; unknown fields are ignored), not
//! shared with `harness`: the tests on the smoke study's output catch a drift.
//!
//! - [`folder`]: which folder a notebook shows (env vars, `latest`), and [`Study::open`], which
//!   refuses a missing or unfinished folder with one readable message.
//! - [`manifest`], [`summary`], [`analysis`], [`run`]: the files, as written by `harness`.
//! - [`tables`]: [`Table`]s (printed with comfy-table, shown as HTML in a notebook).
//! - [`plots`]: [`Figure`]s (SVG from plotters, no system fonts; HTML in a notebook).
//! - [`figures`]: the figures of a study (accuracy, loss curves, decoding steps, throughput, sweep).
//! - [`page`]: a table and a figure as one cell output.
//! - [`sweep`]: the swept value of a study, for `study.ipynb`.
//!
//! Everything is data in, table or figure out; nothing here writes into the result folder.
#![deny(missing_docs)]

pub mod analysis;
pub mod error;
pub mod figures;
pub mod folder;
pub mod manifest;
pub mod page;
pub mod plots;
pub mod run;
pub mod summary;
pub mod sweep;
pub mod tables;

pub use error::{Error, Result};
pub use folder::Study;
pub use page::{page, Page};
pub use plots::Figure;
pub use tables::Table;
