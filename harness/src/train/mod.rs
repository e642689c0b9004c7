//! The training loop: AdamW, schedule, accumulation, clipping, metrics, checkpoints.
pub mod dist;
pub mod graph;
pub mod optim;
pub mod schedule;
pub mod step;
pub mod trainer;

pub use trainer::{
    dev_loss, dev_nll, steps_for, train, EvalHook, StepMetrics, TBucketRow, TrainInputs,
    TrainOutcome,
};
