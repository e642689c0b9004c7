//! Run configuration, in two stages.
//!
//! 1. [`RawConfig`]: serde structs mirroring the TOML a user writes, every field documented, unknown
//!    keys rejected. `--set key=value` overrides are applied to the TOML tree before deserializing.
//! 2. [`RunConfig`]: the validated, resolved configuration the run uses (device and dtype resolved,
//!    ranges checked), saved as `config.json` into the run folder before training starts.
//!
//! Errors name the key (`train.lr`) and, where the parser knows it, the line.

use crate::data::DataConfig;
use crate::model::lora::{AdapterConfig, AdapterKind};
use crate::model::LayerPath;
use crate::model::tokenizer::MaskToken;
use crate::model::LlamaConfig;
pub use crate::objective::config::ObjectiveConfig;
use crate::sample::{CacheKind, StrategyKind};
use crate::train::graph::StepLaunch;
use crate::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The whole run configuration as written in TOML.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    /// Run name: the prefix of the run folder.
    pub name: String,
    /// Seed of every random draw in the run.
    pub seed: u64,
    /// Folder that receives run folders (`<out_dir>/<name>-<utc stamp>/`) when `--out` is not given.
    pub out_dir: PathBuf,
    /// Base model.
    pub model: ModelConfig,
    /// What trains: LoRA adapters or every weight.
    pub adapter: AdapterConfig,
    /// Training objective.
    pub objective: ObjectiveConfig,
    /// Optimizer and loop.
    pub train: TrainConfig,
    /// Dataset, template and splits.
    pub data: DataConfig,
    /// Evaluation after (and during) training.
    pub eval: EvalConfig,
}

impl Default for RawConfig {
    fn default() -> Self {
        Self {
            name: "run".into(),
            seed: 0,
            out_dir: PathBuf::from("runs"),
            model: ModelConfig::default(),
            adapter: AdapterConfig::default(),
            objective: ObjectiveConfig::default(),
            train: TrainConfig::default(),
            data: DataConfig::default(),
            eval: EvalConfig::default(),
        }
    }
}

/// Where the base model comes from and how it is held in memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// A `.gguf` file, a Hugging Face folder (config.json + safetensors + tokenizer.json), a hub
    /// repo id (`org/name`, needs network), or `random` (a seeded random model of shape `arch`).
    pub source: String,
    /// Hub revision when `source` is a repo id.
    pub revision: Option<String>,
    /// Tokenizer file (`tokenizer.json` or a `.gguf` whose metadata holds one); by default the
    /// source's own.
    pub tokenizer: Option<PathBuf>,
    /// The mask token of diffusion: an id, a token string, or `"auto"` (a spare control token of
    /// the vocabulary that ordinary text never produces; see `model::tokenizer`).
    pub mask_token: MaskToken,
    /// Activation / frozen-weight dtype: `auto` (bf16 on CUDA, f32 on CPU), `f32`, `bf16`, `f16`.
    pub dtype: String,
    /// `auto` (CUDA when built with it and a GPU is present, else CPU), `cpu`, or `cuda:N`.
    pub device: String,
    /// Standard deviation of random weights (`source = "random"`).
    pub init_std: f64,
    /// Shape of a random model (`source = "random"`), HF config.json field names.
    pub arch: Option<LlamaConfig>,
    /// How training runs each decoder layer: `fused` (one graph node per layer with a
    /// hand-written backward, the default) or `reference` (autograd through every op; slow, for
    /// checking).
    pub layer_path: LayerPath,
}

/// The default base model, as `make setup` places it.
pub const DEFAULT_MODEL: &str = "models/SmolLM2-135M-Instruct.Q4_1.gguf";

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            source: DEFAULT_MODEL.into(),
            revision: None,
            tokenizer: None,
            mask_token: MaskToken::Auto,
            dtype: "auto".into(),
            device: "auto".into(),
            init_std: 0.02,
            arch: None,
            layer_path: LayerPath::Fused,
        }
    }
}

/// Objective kind (the schema crate's enum: run records carry it too).
pub use ddm_schema::ObjectiveKind;

/// An evaluation method (`eval.methods`, `harness eval --method`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalMethod {
    /// Decode an answer and parse its label strictly.
    Generate,
    /// Argmax over the choices of the objective's score (AR log p, diffusion ELBO).
    Likelihood,
}

impl EvalMethod {
    /// The config spelling, also the method label in `eval.json` and `predictions.jsonl`.
    pub fn as_str(&self) -> &'static str {
        match self {
            EvalMethod::Generate => "generate",
            EvalMethod::Likelihood => "likelihood",
        }
    }
}

impl std::str::FromStr for EvalMethod {
    type Err = String;

    /// Parse the config spelling, through serde (so the CLI accepts what the config does).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        use serde::de::IntoDeserializer;
        Self::deserialize(s.into_deserializer()).map_err(|e: serde::de::value::Error| e.to_string())
    }
}

/// Which attention a diffusion model is evaluated under (`eval.attention`).
///
/// The autoregressive objective is always read causally: it accepts `trained` and `causal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalAttention {
    /// What the last optimizer step used: full attention once annealing finished
    /// (`objective.anneal_steps` ≤ the run's steps); for a partly annealed model, the annealed
    /// mask of the last step (future keys visible with probability `steps / anneal_steps`, drawn
    /// from the run seed and that step, as training drew it). An untrained (base) model is read
    /// with full attention.
    #[default]
    Trained,
    /// Full attention, whatever training ended with.
    Full,
    /// Causal attention.
    Causal,
}

impl EvalAttention {
    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            EvalAttention::Trained => "trained",
            EvalAttention::Full => "full",
            EvalAttention::Causal => "causal",
        }
    }
}

/// How the generation budget is set (`eval.canvas`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Canvas {
    /// `eval.max_new_tokens`.
    #[default]
    Fixed,
    /// The longest training response (eos included), at most `eval.max_new_tokens`.
    TrainMax,
}

/// Optimizer, schedule and loop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Peak learning rate (> 0).
    pub lr: f64,
    /// AdamW decoupled weight decay (≥ 0).
    pub weight_decay: f64,
    /// AdamW beta1, in [0, 1).
    pub beta1: f64,
    /// AdamW beta2, in [0, 1).
    pub beta2: f64,
    /// AdamW epsilon (> 0).
    pub adam_eps: f64,
    /// Linear warmup steps from 0 to `lr`.
    pub warmup_steps: u64,
    /// Cosine decay ends at `lr · min_lr_ratio`, in [0, 1].
    pub min_lr_ratio: f64,
    /// Optimizer steps. When unset, `epochs` over the training split decide.
    pub max_steps: Option<u64>,
    /// Passes over the training split when `max_steps` is unset (> 0).
    pub epochs: f64,
    /// Sequences per forward pass (≥ 1).
    pub micro_batch: usize,
    /// Micro-batches per optimizer step (≥ 1); the loss is normalised over all of them.
    pub grad_accum: usize,
    /// Clip the global gradient norm to this (0 disables).
    pub max_grad_norm: f64,
    /// Write a metrics row every N steps (≥ 1).
    pub log_every: u64,
    /// Evaluate (dev loss, and accuracy when `eval.during_training`) every N steps; 0 = only at the end.
    pub eval_every: u64,
    /// Dev micro-batches for the periodic dev loss (0 disables it).
    pub dev_loss_batches: usize,
    /// Save the trainable parameters every N steps; 0 = only at the end.
    pub save_every: u64,
    /// Where checkpoints go; default `<run folder>/checkpoints`. Studies point this at a
    /// git-ignored cache.
    pub checkpoint_dir: Option<PathBuf>,
    /// Show a progress bar (on a terminal).
    pub progress: bool,
    /// Stop a dead run: after this many consecutive steps whose gradient norm is exactly 0, or
    /// whose mean CE is within `dead_ce_tol` of the uniform value ln V, the run is FAILED with
    /// the step and the reason; 0 disables the check.
    pub dead_steps: u64,
    /// How close (nats, ≥ 0) the mean CE of a step must be to ln V to count as uniform.
    pub dead_ce_tol: f64,
    /// How each training step is launched: `auto` (a CUDA graph on a CUDA device when the run
    /// allows it, else eager), `eager`, or `cuda_graph` ([`crate::train::graph`]). Resolved
    /// before the run and recorded in `config.json` (`resolved.launch`).
    pub launch: StepLaunch,
    /// Packing with document masks ([`crate::objective::pack`]): 0 = off (each sequence its own
    /// right-padded row); C ≥ 1 lays each prepared micro-batch's sequences end to end in rows
    /// of at most C columns, each pair seeing only itself, positions restarting per pair, its
    /// masks, weights and normaliser those of the unpacked batch. Runs eagerly.
    pub pack_to: usize,
}

impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            lr: 2e-4,
            weight_decay: 0.0,
            beta1: 0.9,
            beta2: 0.999,
            adam_eps: 1e-8,
            warmup_steps: 10,
            min_lr_ratio: 0.1,
            max_steps: None,
            epochs: 1.0,
            micro_batch: 8,
            grad_accum: 1,
            max_grad_norm: 1.0,
            log_every: 1,
            eval_every: 0,
            dev_loss_batches: 4,
            save_every: 0,
            checkpoint_dir: None,
            progress: true,
            dead_steps: 5,
            dead_ce_tol: 1e-3,
            launch: StepLaunch::Auto,
            pack_to: 0,
        }
    }
}

/// Evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EvalConfig {
    /// Evaluate on the test split at the end of training.
    pub at_end: bool,
    /// Also evaluate accuracy at every `train.eval_every` step (costly), not only the dev loss.
    pub during_training: bool,
    /// Methods to run: `generate` and/or `likelihood`.
    pub methods: Vec<EvalMethod>,
    /// Evaluate at most this many test items: the labelled items are shuffled with a generator
    /// seeded from the run `seed` (`Purpose::EvalSample`), then the first `limit` are kept, in
    /// their shuffled order. Deterministic for a seed; unset = all items, in file order.
    pub limit: Option<usize>,
    /// Items per forward pass.
    pub batch_size: usize,
    /// Generation: tokens to generate (diffusion: the masked canvas length).
    pub max_new_tokens: usize,
    /// Generation budget: `fixed` (`max_new_tokens`) or `train_max` (the longest training
    /// response, eos included, at most `max_new_tokens`): a model trained without scored padding
    /// is then never decoded on a canvas longer than any response it saw. Resolved from the
    /// training split and recorded as `resolved.canvas_tokens`; the same budget for both
    /// objectives.
    pub canvas: Canvas,
    /// Diffusion generation: denoising steps.
    pub steps: usize,
    /// Diffusion generation: also evaluate `generate` at each of these step counts (reported as
    /// methods `generate@steps=N`), for accuracy against decoding steps. Empty = off; must be
    /// empty for the autoregressive objective.
    pub steps_sweep: Vec<usize>,
    /// Diffusion generation: also evaluate `generate` with the `threshold` strategy at each of
    /// these τ (methods `generate@threshold=τ`; steps, blocks and the rest as configured), for the
    /// speed–accuracy frontier. Each τ in [0, 1]. Empty = off; must be empty for the
    /// autoregressive objective.
    pub threshold_sweep: Vec<f64>,
    /// Diffusion generation: `low_confidence`, `random` or `threshold`.
    pub strategy: StrategyKind,
    /// Diffusion `threshold` strategy: commit every position whose confidence exceeds this.
    pub threshold: f64,
    /// Diffusion generation: semi-autoregressive block length (0 = one block).
    pub block_len: usize,
    /// Diffusion generation: `none` or `prefix` — Fast-dLLM's prefix KV cache: the first step of
    /// each block runs the whole sequence and keeps the keys and values of the columns before the
    /// block, the block's other steps run only the columns from it on. Exact for a causal reading,
    /// approximate under full attention (its accuracy cost is what evaluating with and without it
    /// measures). Must be `none` for the autoregressive objective, whose decoder always uses its
    /// KV cache.
    pub cache: CacheKind,
    /// Diffusion generation: also evaluate `generate` with each of these caches (methods
    /// `generate@cache=K`, everything else as configured), so one trained model is decoded with and
    /// without the prefix cache: its accuracy cost and speed-up side by side in `frontier.csv`.
    /// Must not repeat `eval.cache` or itself; empty = off; must be empty for the autoregressive
    /// objective.
    pub cache_sweep: Vec<CacheKind>,
    /// Sampling temperature (0 = greedy / argmax).
    pub temperature: f64,
    /// Top-k filter (0 = off).
    pub top_k: usize,
    /// Top-p filter (1 = off).
    pub top_p: f64,
    /// Diffusion likelihood: Monte Carlo samples per choice.
    pub mc_samples: usize,
    /// Bootstrap resamples for metric intervals.
    pub bootstrap: usize,
    /// Attention the model is evaluated under: `trained` (what the last optimizer step used),
    /// `full` or `causal`. Unset means `trained`, except that a diffusion run whose
    /// `objective.anneal_steps` exceeds its optimizer steps must say which (a config error
    /// otherwise). The resolved choice is recorded in `config.json` (`resolved.eval_attention`).
    pub attention: Option<EvalAttention>,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            at_end: true,
            during_training: false,
            methods: vec![EvalMethod::Generate],
            limit: None,
            batch_size: 16,
            max_new_tokens: 8,
            canvas: Canvas::Fixed,
            steps: 8,
            steps_sweep: vec![],
            threshold_sweep: vec![],
            strategy: StrategyKind::LowConfidence,
            threshold: 0.9,
            block_len: 0,
            cache: CacheKind::None,
            cache_sweep: vec![],
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            mc_samples: 32,
            bootstrap: 1000,
            attention: None,
        }
    }
}

/// The first entry of `xs` equal to an earlier one, with its index.
fn first_repeat<T: PartialEq>(xs: &[T]) -> Option<(usize, &T)> {
    xs.iter().enumerate().find(|(i, x)| xs[..*i].contains(x))
}

/// What `auto` resolved to, and numbers derived from the config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Resolved {
    /// `cpu` or `cuda:N`.
    pub device: String,
    /// `f32`, `bf16` or `f16`.
    pub dtype: String,
    /// The mask token id (diffusion), once the tokenizer is loaded.
    pub mask_id: Option<u32>,
    /// Optimizer steps of the run, once the training split is known.
    pub total_steps: Option<u64>,
    /// Training examples after templating.
    pub n_train: Option<usize>,
    /// Examples truncated to fit `data.max_len`.
    pub n_truncated: Option<usize>,
    /// How training runs each decoder layer (`model.layer_path`), as the model was built.
    #[serde(default)]
    pub layer_path: LayerPath,
    /// The generation budget `eval.canvas = "train_max"` resolved to (the longest training
    /// response, eos included); absent for `fixed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canvas_tokens: Option<usize>,
    /// `CUDA_VISIBLE_DEVICES` of a CUDA run, when set: which GPU of the host `cuda:N` counts
    /// within (a study worker's GPU, `harness study --devices`); absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub visible_devices: Option<String>,
    /// Processes of a data-parallel run (`WORLD_SIZE`, [`crate::train::dist`]); unset for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub world_size: Option<usize>,
    /// How training steps were launched (`train.launch` resolved: `eager` or `cuda_graph`);
    /// `eager` in configs written before graphs existed.
    #[serde(default = "eager_launch")]
    pub launch: StepLaunch,
    /// The attention the model is evaluated under (`eval.attention`, `trained` when unset);
    /// absent in configs written before it existed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_attention: Option<EvalAttention>,
    /// Probability that a future key is visible under that attention for the trained model (1 =
    /// full, 0 = causal; in between for a partly annealed model read as trained), once the
    /// run's steps are known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_future_visibility: Option<f64>,
}

fn eager_launch() -> StepLaunch {
    StepLaunch::Eager
}

/// The validated configuration a run uses.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunConfig {
    /// What the user wrote, with overrides applied and validated.
    #[serde(flatten)]
    pub raw: RawConfig,
    /// What was resolved from it.
    pub resolved: Resolved,
}

/// Apply `key=value` overrides to a TOML table. Values are TOML (`1e-4`, `true`, `"x"`, `[1, 2]`);
/// anything that does not parse as TOML is taken as a string.
pub fn apply_overrides(table: &mut toml::Table, sets: &[String]) -> Result<()> {
    for s in sets {
        let (key, value) = s
            .split_once('=')
            .ok_or_else(|| Error::config(s.clone(), "an override must look like key=value"))?;
        let key = key.trim();
        let value = value.trim();
        let parsed: toml::Value = match format!("v = {value}").parse::<toml::Table>() {
            Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(value.to_string())),
            Err(_) => toml::Value::String(value.to_string()),
        };
        let parts: Vec<&str> = key.split('.').collect();
        if parts.iter().any(|p| p.is_empty()) {
            return Err(Error::config(key, "empty key segment"));
        }
        let mut cur = &mut *table;
        for p in &parts[..parts.len() - 1] {
            let entry = cur.entry(p.to_string()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
            cur = match entry {
                toml::Value::Table(t) => t,
                _ => return Err(Error::config(key, format!("`{p}` is not a table"))),
            };
        }
        cur.insert(parts[parts.len() - 1].to_string(), parsed);
    }
    Ok(())
}

/// Deserialize `T` from TOML text; errors name the key path and the line.
pub fn from_toml_str<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T> {
    let de = toml::de::Deserializer::parse(text).map_err(|e| Error::config(origin, e.to_string()))?;
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let inner = inner.trim().replace('\n', "\n    ");
        Error::config(if path == "." || path.is_empty() { origin.to_string() } else { path }, format!("{inner} (in {origin})"))
    })
}

impl RawConfig {
    /// Read a TOML file and apply `--set` overrides.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_str_with(&text, &path.display().to_string(), sets)
    }

    /// Parse TOML text (named `origin` in errors) and apply overrides.
    /// The checkpoint family's presets fill what the text leaves unset
    /// ([`crate::model::family::apply_presets`]); each inherited value is printed to stderr.
    pub fn from_str_with(text: &str, origin: &str, sets: &[String]) -> Result<Self> {
        if sets.is_empty() {
            // parse errors name the line of the text as written
            let _: RawConfig = from_toml_str(text, origin)?;
        }
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| Error::config(origin, e.to_string()))?;
        apply_overrides(&mut table, sets)?;
        let (raw, notes) = Self::from_table(table, &if sets.is_empty() { origin.to_string() } else { format!("{origin} with --set overrides") })?;
        for n in notes {
            eprintln!("{n}");
        }
        Ok(raw)
    }

    /// A run config from a TOML table (named `origin` in errors), with its checkpoint family's
    /// presets applied; also returns the preset lines (inherited values, warnings).
    pub fn from_table(mut table: toml::Table, origin: &str) -> Result<(Self, Vec<String>)> {
        let notes = crate::model::family::apply_presets(&mut table)?;
        let text = toml::to_string(&table).map_err(|e| Error::config(origin, e.to_string()))?;
        Ok((from_toml_str(&text, origin)?, notes))
    }

    /// Range checks; the first problem is returned, naming its key.
    // The negated comparisons are deliberate: `!(x > 0.0)` also rejects NaN.
    #[allow(clippy::neg_cmp_op_on_partial_ord, clippy::nonminimal_bool)]
    pub fn validate(&self) -> Result<()> {
        let bad = |k: &str, m: &str| Err(Error::config(k, m));
        if self.name.is_empty() || self.name.contains(['/', '\\']) {
            return bad("name", "must be non-empty without path separators");
        }
        let t = &self.train;
        if !(t.lr.is_finite() && t.lr > 0.0) {
            return bad("train.lr", "must be > 0");
        }
        if !(t.weight_decay >= 0.0) {
            return bad("train.weight_decay", "must be ≥ 0");
        }
        if !(0.0..1.0).contains(&t.beta1) {
            return bad("train.beta1", "must be in [0, 1)");
        }
        if !(0.0..1.0).contains(&t.beta2) {
            return bad("train.beta2", "must be in [0, 1)");
        }
        if !(t.adam_eps > 0.0) {
            return bad("train.adam_eps", "must be > 0");
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return bad("train.min_lr_ratio", "must be in [0, 1]");
        }
        if t.max_steps == Some(0) {
            return bad("train.max_steps", "must be ≥ 1");
        }
        if !(t.epochs > 0.0 && t.epochs.is_finite()) {
            return bad("train.epochs", "must be > 0");
        }
        if t.micro_batch == 0 {
            return bad("train.micro_batch", "must be ≥ 1");
        }
        if t.grad_accum == 0 {
            return bad("train.grad_accum", "must be ≥ 1");
        }
        if !(t.max_grad_norm >= 0.0) {
            return bad("train.max_grad_norm", "must be ≥ 0 (0 disables clipping)");
        }
        if t.log_every == 0 {
            return bad("train.log_every", "must be ≥ 1");
        }
        if !(t.dead_ce_tol >= 0.0 && t.dead_ce_tol.is_finite()) {
            return bad("train.dead_ce_tol", "must be ≥ 0");
        }
        let a = &self.adapter;
        if a.kind == AdapterKind::Lora {
            if a.rank == 0 {
                return bad("adapter.rank", "must be ≥ 1");
            }
            if !(a.alpha > 0.0) {
                return bad("adapter.alpha", "must be > 0");
            }
            if !(0.0..1.0).contains(&a.dropout) {
                return bad("adapter.dropout", "must be in [0, 1)");
            }
            for tgt in &a.targets {
                if !crate::model::lora::DEFAULT_TARGETS.contains(&tgt.as_str()) {
                    return bad("adapter.targets", &format!("unknown module `{tgt}`; choose from {:?}", crate::model::lora::DEFAULT_TARGETS));
                }
            }
        }
        match &self.objective {
            ObjectiveConfig::Diffusion(d) => {
                d.validate()?;
                if d.block_size > 0 {
                    let e = &self.eval;
                    if e.block_len != 0 && e.block_len != d.block_size {
                        return bad("eval.block_len", &format!("a block-diffusion model (objective.block_size = {}) decodes in its own blocks: set eval.block_len = 0 or {}", d.block_size, d.block_size));
                    }
                    let blocks = e.max_new_tokens.div_ceil(d.block_size);
                    if let Some(s) = std::iter::once(e.steps).chain(e.steps_sweep.iter().copied()).find(|&s| s < blocks) {
                        return bad("eval.steps", &format!("{s} decoding steps cannot cover the {blocks} blocks of {} tokens in eval.max_new_tokens = {} (objective.block_size = {}): at least one step per block", d.block_size, e.max_new_tokens, d.block_size));
                    }
                }
            }
            ObjectiveConfig::Autoregressive => {
                if !self.eval.steps_sweep.is_empty() {
                    return bad("eval.steps_sweep", "a diffusion setting (decoding steps): must be empty for the autoregressive objective");
                }
                if !self.eval.threshold_sweep.is_empty() {
                    return bad("eval.threshold_sweep", "a diffusion setting (threshold strategy): must be empty for the autoregressive objective");
                }
                if !self.eval.cache_sweep.is_empty() {
                    return bad("eval.cache_sweep", "a diffusion setting (the prefix KV cache of diffusion decoding): must be empty for the autoregressive objective");
                }
                if self.eval.cache != CacheKind::None {
                    return bad(
                        "eval.cache",
                        "a diffusion setting (the prefix KV cache of diffusion decoding): must be \"none\" for the autoregressive objective, whose decoder always uses its KV cache",
                    );
                }
                if self.eval.attention == Some(EvalAttention::Full) {
                    return bad("eval.attention", "\"full\" is a diffusion reading: the autoregressive objective is read causally (use \"trained\" or \"causal\")");
                }
            }
        }
        if let Some(steps) = self.train.max_steps {
            self.check_eval_attention(steps)?;
        }
        let m = &self.model;
        if !["auto", "f32", "bf16", "f16"].contains(&m.dtype.as_str()) {
            return bad("model.dtype", "must be auto, f32, bf16 or f16");
        }
        if m.device != "auto" && m.device != "cpu" && !m.device.starts_with("cuda") {
            return bad("model.device", "must be auto, cpu or cuda:N");
        }
        if !(m.init_std > 0.0) {
            return bad("model.init_std", "must be > 0");
        }
        if let Some(arch) = &m.arch {
            arch.validate()?;
        }
        let e = &self.eval;
        if e.steps_sweep.contains(&0) {
            return bad("eval.steps_sweep", "step counts must be ≥ 1");
        }
        if let Some(tau) = e.threshold_sweep.iter().find(|t| !(0.0..=1.0).contains(*t)) {
            return bad("eval.threshold_sweep", &format!("each τ must be in [0, 1], got {tau}"));
        }
        // A repeated value would repeat a method label (and its predictions rows).
        if let Some((i, s)) = first_repeat(&e.steps_sweep) {
            return bad("eval.steps_sweep", &format!("{s} appears twice (entry {})", i + 1));
        }
        if let Some((i, t)) = first_repeat(&e.threshold_sweep) {
            return bad("eval.threshold_sweep", &format!("{t} appears twice (entry {})", i + 1));
        }
        if let Some((i, c)) = first_repeat(&e.cache_sweep) {
            return bad("eval.cache_sweep", &format!("\"{}\" appears twice (entry {})", c.as_str(), i + 1));
        }
        if e.cache_sweep.contains(&e.cache) {
            return bad("eval.cache_sweep", &format!("\"{}\" is eval.cache already (the plain `generate` method decodes with it)", e.cache.as_str()));
        }
        if (!e.steps_sweep.is_empty() || !e.threshold_sweep.is_empty() || !e.cache_sweep.is_empty()) && !e.methods.contains(&EvalMethod::Generate) {
            let key = if !e.steps_sweep.is_empty() {
                "eval.steps_sweep"
            } else if !e.threshold_sweep.is_empty() {
                "eval.threshold_sweep"
            } else {
                "eval.cache_sweep"
            };
            return bad(key, "sweeps re-run `generate`, which eval.methods does not list: add \"generate\" or empty the sweep");
        }
        let format = self.data.response_format;
        if e.methods.contains(&EvalMethod::Likelihood) && !format.scores_choices() {
            return bad(
                "eval.methods",
                &format!(
                    "`likelihood` scores each choice's response, but data.response_format = \"{}\" has no fixed response per choice \
                     (it holds a generated rationale); use `generate`, or a format that scores choices (answer, category)",
                    format.as_str()
                ),
            );
        }
        if e.batch_size == 0 || e.max_new_tokens == 0 || e.steps == 0 || e.mc_samples == 0 {
            return bad("eval", "batch_size, max_new_tokens, steps and mc_samples must be ≥ 1");
        }
        if !(e.temperature >= 0.0) || !(e.top_p > 0.0 && e.top_p <= 1.0) || !(0.0..=1.0).contains(&e.threshold) {
            return bad("eval.temperature", "temperature ≥ 0, top_p in (0, 1], threshold in [0, 1]");
        }
        crate::data::validate(&self.data)?;
        Ok(())
    }

    /// The `eval.attention` check once the run's optimizer steps are known: a diffusion run whose
    /// `objective.anneal_steps` exceeds `steps` ends training partly annealed, so the config must
    /// say which attention to evaluate under. Called by [`RawConfig::validate`] when
    /// `train.max_steps` is set, and by the run once the epochs give the step count.
    pub fn check_eval_attention(&self, steps: u64) -> Result<()> {
        if let ObjectiveConfig::Diffusion(d) = &self.objective {
            if d.anneal_steps > steps && self.eval.attention.is_none() {
                return Err(Error::config(
                    "eval.attention",
                    format!(
                        "objective.anneal_steps = {} exceeds the run's {steps} optimizer steps (train.max_steps or epochs), so training \
                         ends with only {:.0}% of future keys visible; say which attention to evaluate under: \
                         eval.attention = \"trained\" (that annealed mask), \"full\" or \"causal\" — or lower objective.anneal_steps",
                        d.anneal_steps,
                        100.0 * (steps as f64 / d.anneal_steps as f64).min(1.0)
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The setting (key, reason) that a captured CUDA graph cannot replay — micro-batches whose
    /// layout changes from step to step, or an input the captured step does not carry (the
    /// diffusion time) — so `auto` launches the training step eagerly.
    pub fn eager_only(&self) -> Option<(&'static str, &'static str)> {
        match &self.objective {
            ObjectiveConfig::Diffusion(d) if d.block_size > 0 => Some(("objective.block_size", "lays each micro-batch out with its own visibility and positions (the two-copy layout)")),
            ObjectiveConfig::Diffusion(d) if d.time_conditioned() => Some(("objective.time_conditioning", "gives the model a per-column time input that the captured step does not carry")),
            _ if self.train.pack_to > 0 => Some(("train.pack_to", "packs each micro-batch into rows of its own shape")),
            _ => None,
        }
    }

    /// Validate and resolve `auto` choices.
    pub fn resolve(self) -> Result<RunConfig> {
        self.validate()?;
        let device = resolve_device(&self.model.device)?;
        let dtype = match self.model.dtype.as_str() {
            "auto" if device.starts_with("cuda") => "bf16".to_string(),
            "auto" => "f32".to_string(),
            d => d.to_string(),
        };
        let layer_path = self.model.layer_path;
        let launch = match self.eager_only() {
            Some((key, why)) if self.train.launch == StepLaunch::CudaGraph => {
                return Err(Error::config("train.launch", format!("\"cuda_graph\" replays one fixed layout, but {key} {why}: use \"eager\" (or \"auto\")")));
            }
            Some(_) => StepLaunch::Eager,
            None => resolve_launch(self.train.launch, &device, &self.adapter)?,
        };
        let eval_attention = Some(self.eval.attention.unwrap_or_default());
        let visible_devices = visible_devices(&device);
        Ok(RunConfig {
            raw: self,
            resolved: Resolved {
                device,
                dtype,
                mask_id: None,
                total_steps: None,
                n_train: None,
                n_truncated: None,
                layer_path,
                canvas_tokens: None,
                launch,
                eval_attention,
                eval_future_visibility: None,
                visible_devices,
                world_size: None,
            },
        })
    }
}

impl RunConfig {
    /// The generation budget of this run's evaluations: `eval.max_new_tokens`, capped by the
    /// resolved `eval.canvas = "train_max"` length.
    pub fn generation_budget(&self) -> usize {
        match self.resolved.canvas_tokens {
            Some(n) => n.min(self.raw.eval.max_new_tokens),
            None => self.raw.eval.max_new_tokens,
        }
    }
}

/// `CUDA_VISIBLE_DEVICES` when the resolved `device` is CUDA and the variable is set and not empty.
fn visible_devices(device: &str) -> Option<String> {
    if !device.starts_with("cuda") {
        return None;
    }
    std::env::var("CUDA_VISIBLE_DEVICES").ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// `train.launch` on the resolved `device`: `auto` is a CUDA graph on CUDA unless LoRA dropout
/// is on (a graph would replay one dropout mask), else eager; `cuda_graph` where it cannot run
/// is an error naming the key.
pub fn resolve_launch(launch: StepLaunch, device: &str, adapter: &AdapterConfig) -> Result<StepLaunch> {
    let cuda = device.starts_with("cuda");
    let dropout = adapter.kind == AdapterKind::Lora && adapter.dropout > 0.0;
    match launch {
        StepLaunch::Auto if cuda && !dropout => Ok(StepLaunch::CudaGraph),
        StepLaunch::Auto | StepLaunch::Eager => Ok(StepLaunch::Eager),
        StepLaunch::CudaGraph if !cuda => {
            Err(Error::config("train.launch", format!("\"cuda_graph\" needs a CUDA device; this run is on {device} (use \"auto\" or \"eager\")")))
        }
        StepLaunch::CudaGraph if dropout => Err(Error::config(
            "train.launch",
            format!("\"cuda_graph\" would replay one dropout mask every step; adapter.dropout = {} needs \"eager\" (or \"auto\")", adapter.dropout),
        )),
        StepLaunch::CudaGraph => Ok(StepLaunch::CudaGraph),
    }
}

/// `auto` → `cuda:0` when compiled with CUDA and a GPU answers, else `cpu`.
pub fn resolve_device(spec: &str) -> Result<String> {
    match spec {
        // a data-parallel rank (crate::train::dist) uses GPU LOCAL_RANK of the visible ones
        "auto" => {
            let gpu = auto_gpu();
            Ok(if candle_core::utils::cuda_is_available() && candle_core::Device::new_cuda(gpu).is_ok() { format!("cuda:{gpu}") } else { "cpu".into() })
        }
        "cpu" => Ok("cpu".into()),
        s => {
            let n = s.strip_prefix("cuda").map(|r| r.trim_start_matches(':')).unwrap_or("");
            let n: usize = if n.is_empty() { 0 } else { n.parse().map_err(|_| Error::config("model.device", format!("bad device `{s}`")))? };
            if !candle_core::utils::cuda_is_available() {
                return Err(Error::config("model.device", format!("`{s}` asked for, but this binary was built without CUDA (build with `make cuda`)")));
            }
            Ok(format!("cuda:{n}"))
        }
    }
}

/// The GPU `model.device = "auto"` picks: 0, or `LOCAL_RANK` in a data-parallel run.
fn auto_gpu() -> usize {
    match crate::train::dist::Dist::place() {
        Ok((_, world, local)) if world > 1 => local,
        _ => 0,
    }
}

/// The candle device for a resolved device string.
pub fn device(resolved: &str) -> Result<candle_core::Device> {
    if resolved == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    let n: usize = resolved.trim_start_matches("cuda:").parse().map_err(|_| Error::config("model.device", resolved.to_string()))?;
    let dev = candle_core::Device::new_cuda(n)?;
    #[cfg(feature = "cuda")]
    if let candle_core::Device::Cuda(c) = &dev {
        crate::device::tune(c)?;
    }
    Ok(dev)
}

/// The candle dtype for a resolved dtype string.
pub fn dtype(resolved: &str) -> candle_core::DType {
    match resolved {
        "bf16" => candle_core::DType::BF16,
        "f16" => candle_core::DType::F16,
        _ => candle_core::DType::F32,
    }
}
