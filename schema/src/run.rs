//! The records of one run folder besides the evaluation: `metrics.csv` rows ([`StepMetrics`]),
//! `t_buckets.csv` rows ([`TBucketRow`]: the diffusion loss by noise level), `summary.json`
//! ([`RunSummary`] with its [`TrainOutcome`]), `FAILED` ([`Failure`]), and where a run stands
//! ([`RunStatus`]).

use serde::{Deserialize, Serialize};

/// One row of `metrics.csv`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    /// Optimizer step (1-based, after the update).
    pub step: u64,
    /// Fractional epoch reached.
    pub epoch: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Weighted loss (what is differentiated).
    pub loss: f64,
    /// Unweighted CE over scored tokens.
    pub ce: f64,
    /// Argmax accuracy over scored tokens.
    pub token_acc: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Scored tokens in the step.
    pub scored_tokens: usize,
    /// Real (unpadded) tokens through the model in the step.
    pub tokens: usize,
    /// Real tokens per second over the step.
    pub tokens_per_s: f64,
    /// Seconds since training started.
    pub elapsed_s: f64,
}

/// One row of `t_buckets.csv` (diffusion runs only): the unweighted cross-entropy per masked
/// token of the sequences whose diffusion time t fell in one bucket, over the optimizer steps
/// since the previous row (one row per bucket at every `metrics.csv` row: with
/// `train.log_every = 1`, per optimizer step). The buckets split `[0, 1]` into equal widths.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TBucketRow {
    /// Optimizer step of the row (1-based, as in `metrics.csv`): the last step it covers.
    pub step: u64,
    /// Bucket index (0 = the smallest t).
    pub bucket: usize,
    /// Lower edge of the bucket's t range.
    pub t_lo: f64,
    /// Upper edge of the bucket's t range.
    pub t_hi: f64,
    /// Masked (scored) tokens in the bucket over the covered steps.
    pub tokens: usize,
    /// Mean unweighted CE per masked token in the bucket; `None` (empty cell) when `tokens = 0`.
    pub ce: Option<f64>,
}

/// What the training loop reports at the end.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainOutcome {
    /// Steps run.
    pub steps: u64,
    /// Mean weighted loss over the last 10% of steps (at least one).
    pub final_loss: f64,
    /// Loss of the first step.
    pub first_loss: f64,
    /// Mean real tokens per second over the run.
    pub tokens_per_s: f64,
    /// Seconds of training.
    pub wall_s: f64,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Final dev loss (the objective's own weighted loss: not comparable across objectives),
    /// when a dev split was given.
    pub dev_loss: Option<f64>,
    /// Final dev negative log-likelihood per response token (eos included): exact for AR, the
    /// Monte Carlo ELBO bound for diffusion; the figure comparable across objectives. Absent in
    /// summaries written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_nll: Option<f64>,
}

/// What `summary.json` of a run holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunSummary {
    /// Run name.
    pub name: String,
    /// Training outcome.
    pub train: TrainOutcome,
    /// Dataset name.
    pub dataset: String,
    /// Train / dev / test sizes.
    pub sizes: (usize, usize, usize),
}

/// What `FAILED` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    /// Optimizer step at which the run failed, when known.
    pub step: Option<u64>,
    /// The error.
    pub message: String,
    /// UTC time (RFC 3339).
    pub time: String,
}

/// Where a run stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// `DONE` written.
    Done,
    /// `FAILED` written (the loss diverged).
    Failed,
    /// Not run yet (or half-written: it will be redone).
    Pending,
}

impl RunStatus {
    /// Lower-case name, as in `summary.csv`'s `status` column.
    pub fn as_str(&self) -> &'static str {
        match self {
            RunStatus::Done => "done",
            RunStatus::Failed => "failed",
            RunStatus::Pending => "pending",
        }
    }
}
