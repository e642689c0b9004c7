//! The `[objective]` table: a tagged enum, `kind = "diffusion"` with the diffusion fields or
//! `kind = "autoregressive"` with none. Read through a table of optional fields so
//! that a diffusion field given to the autoregressive objective is an error naming it.

use super::diffusion::ReadAttention;
use super::diffusion::LossWeight;
use super::{Autoregressive, Diffusion, DiffusionConfig, LossNorm, Objective, TSampling, TimeConditioning};
use crate::model::mask::AnnealSchedule;
use crate::config::{EvalAttention, ObjectiveKind};
use serde::{Deserialize, Serialize};

/// Which objective trains, with its settings: the `[objective]` table, tagged by `kind`.
///
/// `kind = "diffusion"` (the default when `kind` is absent) takes the fields of
/// [`DiffusionConfig`]; `kind = "autoregressive"` takes none, and a diffusion field beside it is an
/// error naming the field. `config.json` holds the same tagged form.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ObjectiveConfig {
    /// Masked-diffusion SFT and its knobs.
    Diffusion(DiffusionConfig),
    /// Autoregressive (next-token) SFT, the baseline: no knobs.
    Autoregressive,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig::Diffusion(DiffusionConfig::default())
    }
}

impl ObjectiveConfig {
    /// Which objective this is.
    pub fn kind(&self) -> ObjectiveKind {
        match self {
            ObjectiveConfig::Diffusion(_) => ObjectiveKind::Diffusion,
            ObjectiveConfig::Autoregressive => ObjectiveKind::Autoregressive,
        }
    }

    /// The default settings of objective `kind`.
    pub fn default_for(kind: ObjectiveKind) -> Self {
        match kind {
            ObjectiveKind::Diffusion => ObjectiveConfig::default(),
            ObjectiveKind::Autoregressive => ObjectiveConfig::Autoregressive,
        }
    }

    /// The objective that reads a model trained with these settings at evaluation time:
    /// `attention` is `eval.attention` (unset = `trained`), `trained_steps` the optimizer steps the
    /// model was trained for (`None`: an untrained base model), `seed` the run seed (the annealed
    /// mask's draws). Diffusion reads under [`super::diffusion::ReadAttention::resolve`]; the
    /// autoregressive objective is always read causally. [`super::build`] is this with full
    /// attention (the training objective; the trainer measures its dev figures with this reader,
    /// `TrainInputs::reader`).
    pub fn build_for_eval(&self, mask_id: u32, attention: EvalAttention, trained_steps: Option<u64>, seed: u64) -> Box<dyn Objective> {
        match self {
            ObjectiveConfig::Diffusion(d) => {
                let read = ReadAttention::resolve(attention, d.train_attention(), trained_steps, seed);
                Box::new(Diffusion::new(mask_id, d.clone()).reading(read))
            }
            ObjectiveConfig::Autoregressive => Box::new(Autoregressive),
        }
    }

    /// The decoding settings a generate method with `eval` reports ([`crate::eval::metrics::decode_stats`]):
    /// steps (not for the threshold strategy, which ignores them), strategy, τ and the cache for
    /// diffusion, none of them for AR.
    pub fn decode_settings(&self, eval: &crate::config::EvalConfig) -> crate::eval::metrics::DecodeSettings {
        let diffusion = matches!(self, ObjectiveConfig::Diffusion(_));
        let threshold = eval.strategy == crate::sample::StrategyKind::Threshold;
        crate::eval::metrics::DecodeSettings {
            batch_size: eval.batch_size,
            max_new_tokens: eval.max_new_tokens,
            // The threshold strategy ignores the step schedule (it runs until the block is done).
            steps: (diffusion && !threshold).then_some(eval.steps),
            strategy: diffusion.then(|| serde_json::to_value(eval.strategy).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()),
            threshold: (diffusion && threshold).then_some(eval.threshold),
            cache: diffusion.then(|| eval.cache.as_str().to_string()),
        }
    }

    /// Probability that a future key is visible when a model trained with these settings for
    /// `trained_steps` is read under `attention` (1 full, 0 causal), as recorded in `config.json`.
    pub fn eval_future_visibility(&self, attention: EvalAttention, trained_steps: Option<u64>, seed: u64) -> f64 {
        match self {
            ObjectiveConfig::Diffusion(d) => ReadAttention::resolve(attention, d.train_attention(), trained_steps, seed).future_visibility(),
            ObjectiveConfig::Autoregressive => 0.0,
        }
    }

    /// The diffusion settings, when this is the diffusion objective.
    pub fn diffusion(&self) -> Option<&DiffusionConfig> {
        match self {
            ObjectiveConfig::Diffusion(d) => Some(d),
            ObjectiveConfig::Autoregressive => None,
        }
    }
}

/// The `[objective]` table as written: `kind` and every diffusion field, each optional, so that
/// a diffusion field given to the autoregressive objective can be named.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ObjectiveTable {
    #[serde(default)]
    kind: ObjectiveKind,
    t_sampling: Option<TSampling>,
    t_logit_mean: Option<f64>,
    t_logit_std: Option<f64>,
    eps: Option<f64>,
    shift: Option<bool>,
    loss_norm: Option<LossNorm>,
    score_padding: Option<bool>,
    anneal_steps: Option<u64>,
    t_min: Option<f64>,
    t_max: Option<f64>,
    weight: Option<LossWeight>,
    eos_weight: Option<f64>,
    anneal: Option<AnnealSchedule>,
    complementary: Option<bool>,
    block_size: Option<usize>,
    time_conditioning: Option<TimeConditioning>,
}

impl ObjectiveTable {
    fn into_config(self) -> std::result::Result<ObjectiveConfig, String> {
        match self.kind {
            ObjectiveKind::Diffusion => {
                let d = DiffusionConfig::default();
                Ok(ObjectiveConfig::Diffusion(DiffusionConfig {
                    t_sampling: self.t_sampling.unwrap_or(d.t_sampling),
                    t_logit_mean: self.t_logit_mean.unwrap_or(d.t_logit_mean),
                    t_logit_std: self.t_logit_std.unwrap_or(d.t_logit_std),
                    eps: self.eps.unwrap_or(d.eps),
                    shift: self.shift.unwrap_or(d.shift),
                    loss_norm: self.loss_norm.unwrap_or(d.loss_norm),
                    score_padding: self.score_padding.unwrap_or(d.score_padding),
                    anneal_steps: self.anneal_steps.unwrap_or(d.anneal_steps),
                    t_min: self.t_min.unwrap_or(d.t_min),
                    t_max: self.t_max.unwrap_or(d.t_max),
                    weight: self.weight.unwrap_or(d.weight),
                    eos_weight: self.eos_weight.unwrap_or(d.eos_weight),
                    anneal: self.anneal.unwrap_or(d.anneal),
                    complementary: self.complementary.unwrap_or(d.complementary),
                    block_size: self.block_size.unwrap_or(d.block_size),
                    time_conditioning: self.time_conditioning.unwrap_or(d.time_conditioning),
                }))
            }
            ObjectiveKind::Autoregressive => {
                let given = [
                    self.t_sampling.is_some(),
                    self.t_logit_mean.is_some(),
                    self.t_logit_std.is_some(),
                    self.eps.is_some(),
                    self.shift.is_some(),
                    self.loss_norm.is_some(),
                    self.score_padding.is_some(),
                    self.anneal_steps.is_some(),
                    self.t_min.is_some(),
                    self.t_max.is_some(),
                    self.weight.is_some(),
                    self.eos_weight.is_some(),
                    self.anneal.is_some(),
                    self.complementary.is_some(),
                    self.block_size.is_some(),
                    self.time_conditioning.is_some(),
                ];
                // Every field of the time is the flat form `config.json` had before the objective
                // was a tagged enum (it wrote the first eight, unused): result folders stay readable.
                if given[..8].iter().all(|&g| g) && !given[8..].iter().any(|&g| g) {
                    return Ok(ObjectiveConfig::Autoregressive);
                }
                match DiffusionConfig::KEYS.iter().zip(given).find(|(_, g)| *g) {
                    Some((key, _)) => Err(format!(
                        "objective.{key}: not a field of the autoregressive objective (it takes only `kind`; \
                         to switch a diffusion config to AR, replace the table: --set 'objective={{kind=\"autoregressive\"}}')"
                    )),
                    None => Ok(ObjectiveConfig::Autoregressive),
                }
            }
        }
    }
}

impl<'de> Deserialize<'de> for ObjectiveConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        ObjectiveTable::deserialize(d)?.into_config().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> crate::Result<ObjectiveConfig> {
        crate::config::from_toml_str(text, "test")
    }

    #[test]
    fn kind_defaults_to_diffusion_and_round_trips_tagged() {
        assert_eq!(parse("").unwrap(), ObjectiveConfig::default());
        let d = parse("anneal_steps = 7\nshift = false").unwrap();
        assert_eq!(d, ObjectiveConfig::Diffusion(DiffusionConfig { anneal_steps: 7, shift: false, ..Default::default() }));
        let json = serde_json::to_value(&d).unwrap();
        assert_eq!(json["kind"], "diffusion");
        assert_eq!(json["anneal_steps"], 7);
        assert_eq!(serde_json::from_value::<ObjectiveConfig>(json).unwrap(), d);
        let ar = parse("kind = \"autoregressive\"").unwrap();
        assert_eq!(ar.kind(), ObjectiveKind::Autoregressive);
        assert_eq!(serde_json::to_value(&ar).unwrap(), serde_json::json!({"kind": "autoregressive"}));
    }

    #[test]
    fn autoregressive_rejects_each_diffusion_field_by_name() {
        let values = ["\"stratified\"", "0.5", "2.0", "0.01", "false", "\"response\"", "true", "3", "0.3", "0.8", "\"uniform\"", "0.5", "\"window\"", "true", "4", "\"embedding\""];
        for (key, v) in DiffusionConfig::KEYS.iter().zip(values) {
            let e = parse(&format!("kind = \"autoregressive\"\n{key} = {v}")).unwrap_err().to_string();
            assert!(e.contains(&format!("objective.{key}: not a field of the autoregressive objective")), "{e}");
            // The same value is fine on the diffusion objective.
            parse(&format!("kind = \"diffusion\"\n{key} = {v}")).unwrap();
        }
    }

    #[test]
    fn flat_config_json_of_earlier_runs_still_reads() {
        // What config.json held before the objective was tagged: every field, kind beside them.
        let old = serde_json::json!({"kind": "autoregressive", "t_sampling": "uniform", "t_logit_mean": 0.0, "t_logit_std": 1.0,
            "eps": 0.001, "shift": true, "loss_norm": "masked", "score_padding": false, "anneal_steps": 50});
        assert_eq!(serde_json::from_value::<ObjectiveConfig>(old).unwrap(), ObjectiveConfig::Autoregressive);
    }
}
