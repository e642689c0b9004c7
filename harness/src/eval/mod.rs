//! Evaluation: metrics, generation and likelihood scoring, the evaluation runner.
pub mod likelihood;
pub mod metrics;
pub mod runner;

pub use runner::{evaluate, EvalResult, EvalSetup, MethodResult, Prediction};
