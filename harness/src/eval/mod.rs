//! Evaluation: metrics, generation and likelihood scoring.
pub mod metrics;
pub mod likelihood;
