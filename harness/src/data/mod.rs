//! Datasets and prompt templates.
//!
//! Every dataset yields [`Item`]s (prompt parts, choices, gold, free-form response, rationale):
//! the synthetic [`clinical_rules`] benchmark (default, offline), [`pubmedqa`] PQA-L,
//! multiple-choice JSONL ([`mcq`]) and alpaca instruction pairs ([`alpaca`]). [`load`] turns a
//! [`DataConfig`] (the `[data]` config section, or a CLI spec string via
//! [`DataConfig::from_spec`]) into [`Splits`]; a [`Template`] renders and tokenizes an item
//! within a length budget.

pub mod alpaca;
pub mod clinical_rules;
pub mod item;
pub mod mcq;
pub mod pubmedqa;
mod rows;
pub mod spec;
pub mod template;

pub use item::{parse_leading_label, Item, PromptParts, ResponseFormat, ANSWER_MARKER};
pub use rows::MAX_ROW_BYTES;
pub use spec::{load, validate, DataConfig, DatasetKind, FileSplit, OnOverlong, Splits};
pub use template::{Fit, Rendered, Template, TemplateKind, TextEncoder, CHATML_END_OF_TURN};
