//! Autoregressive SFT: causal attention, next-token cross-entropy on response tokens only,
//! normalised by the number of response tokens.

use super::{key_valid, Batch, Objective, Prepared};
use crate::model::mask::AttentionMode;
use crate::Result;

/// The AR baseline objective.
#[derive(Debug, Clone, Default)]
pub struct Autoregressive;

impl Objective for Autoregressive {
    fn name(&self) -> &'static str {
        "autoregressive"
    }

    fn prepare(&self, batch: &Batch, step: u64, _micro: u64, _seed: u64) -> Result<Prepared> {
        let (b, l) = (batch.b, batch.l);
        let (mut rows, mut targets) = (Vec::new(), Vec::new());
        for i in 0..b {
            // Output at pos-1 predicts the response token at pos (eos included).
            for pos in batch.prompt_len[i].max(1)..batch.len[i] {
                rows.push((i * l + pos - 1) as u32);
                targets.push(batch.ids[i * l + pos]);
            }
        }
        let n = rows.len();
        Ok(Prepared {
            input: batch.ids.clone(),
            b,
            l,
            attention: AttentionMode::Causal,
            step,
            key_valid: key_valid(batch),
            rows,
            targets,
            weights: vec![1.0; n],
            denom: n as f64,
        })
    }

    fn eval_attention(&self) -> AttentionMode {
        AttentionMode::Causal
    }
}
