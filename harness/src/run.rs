//! One training run, end to end: resolve the config, load the model and data, write the resolved
//! config into the run folder first, train, save the adapter, evaluate, write `DONE` last.
//!
//! Every evaluation (after training, of a finished run folder, of a base model, of a study's
//! zero-shot point) goes through [`evaluate`]; the folder layout is `ddm_schema::RunDir`'s.

use crate::config::{self, EvalMethod, ObjectiveConfig, ObjectiveKind, RawConfig, RunConfig};
use crate::data::{self, Splits, Template, TextEncoder};
use crate::model::load::{self, ModelSource};
use crate::model::tokenizer::Tok;
use crate::model::{BuildOpts, Llama, Trainable};
use crate::objective::{Example, Objective};
use crate::train::{self, EvalHook, TrainInputs};
use crate::{Error, Result};
use candle_nn::VarBuilder;
use ddm_schema::{EvalResult, RunDir};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

impl TextEncoder for Tok {
    fn encode(&self, text: &str) -> Result<Vec<u32>> {
        Tok::encode(self, text)
    }
}

/// A loaded model with its tokenizer and provenance.
pub struct Loaded {
    /// The model (adapters attached).
    pub model: Llama,
    /// Its trainable parameters.
    pub trainable: Trainable,
    /// Tokenizer.
    pub tok: Tok,
    /// Files the weights and tokenizer came from.
    pub files: Vec<PathBuf>,
}

/// Load the base model and tokenizer named by `cfg.model`, with adapters per `cfg.adapter`.
pub fn load_model(cfg: &RunConfig) -> Result<Loaded> {
    let raw = &cfg.raw;
    let device = config::device(&cfg.resolved.device)?;
    let dtype = config::dtype(&cfg.resolved.dtype);
    let source = ModelSource::parse(&raw.model.source, raw.model.arch.as_ref(), raw.model.revision.as_deref())?;
    let l = load::load(&source, raw.model.tokenizer.as_deref(), raw.model.init_std, raw.seed, dtype, &device, &raw.model.mask_token)?;
    if !matches!(source, ModelSource::Random(_)) {
        eprintln!("{}", l.stats.line(l.tensors.len(), &device));
    }
    let tok = l.tok.ok_or_else(|| Error::config("model.tokenizer", "this model source has no tokenizer: set model.tokenizer (a tokenizer.json or .gguf)"))?;
    let vb = VarBuilder::from_tensors(l.tensors, dtype, &device);
    let (model, trainable) = Llama::load(vb, &l.cfg, &BuildOpts { adapter: &raw.adapter, seed: raw.seed, layer_path: cfg.resolved.layer_path, time_embedding: raw.objective.diffusion().is_some_and(|d| d.time_conditioned()) })?;
    Ok(Loaded { model, trainable, tok, files: l.files })
}

/// The training objective a config asks for ([`crate::objective::build_for_training`], with
/// `train.grad_accum` micro-batches per step).
pub fn objective(cfg: &RawConfig, mask_id: u32) -> Box<dyn Objective> {
    crate::objective::build_for_training(&cfg.objective, mask_id, cfg.train.grad_accum)
}

/// Template and tokenize the items of `split` into training examples (response + eos). Returns
/// the examples and how many were truncated. Items over `data.max_len` even without their
/// contexts are an error listing them (`data.on_overlong`, default `error` for training) or are
/// left out with a line on stderr (`skip`).
pub fn encode_items(items: &[data::Item], split: &str, cfg: &RawConfig, tok: &Tok) -> Result<(Vec<Example>, usize)> {
    let template = Template::new(cfg.data.template);
    let mut out = Vec::with_capacity(items.len());
    let mut truncated = 0;
    let mut overlong = Vec::new();
    for it in items {
        let r = match template.render_fit(it, cfg.data.response_format, tok, cfg.data.max_len)? {
            data::Fit::Fits(r) => r,
            data::Fit::Overlong { .. } => {
                overlong.push(it.id.clone());
                continue;
            }
        };
        if tok.contains_mask_literal(&r.prompt) || tok.contains_mask_literal(&r.target) {
            return Err(Error::data(
                cfg.data.source(),
                format!("item {}: text contains the mask token literal `{}`", it.id, tok.mask_token()),
            ));
        }
        truncated += r.truncated as usize;
        let mut response = r.target_ids;
        response.push(tok.eos_id);
        out.push(Example { prompt: r.prompt_ids, response });
    }
    if !overlong.is_empty() {
        if cfg.data.on_overlong_or(data::OnOverlong::Error) == data::OnOverlong::Error {
            return Err(cfg.data.overlong_error(split, &overlong));
        }
        eprintln!("{}: {}; skipped (data.on_overlong = \"skip\")", cfg.data.source().display(), cfg.data.overlong_message(split, &overlong));
    }
    Ok((out, truncated))
}

/// The `eval.during_training` hook: every method on the dev split, written to
/// `dev_evals/step-N/` and as `dev_<metric>_<method>` rows of `eval_metrics.csv`.
struct DevAccuracy<'a> {
    tok: &'a Tok,
    items: &'a [data::Item],
    setup: crate::eval::EvalSetup,
    run: RunDir,
    dataset: String,
}

impl EvalHook for DevAccuracy<'_> {
    fn evaluate(&mut self, step: u64, model: &Llama) -> Result<Vec<(String, f64)>> {
        // The model as it stands after `step` optimizer steps (its attention at that step).
        let setup = crate::eval::EvalSetup { trained_steps: Some(step), ..self.setup.clone() };
        let r = crate::eval::evaluate(model, self.tok, self.items, &setup, &self.dataset, "dev", self.run.dev_eval(step).path())?;
        let mut out = Vec::new();
        for m in &r.methods {
            out.push((format!("dev_accuracy_{}", m.method), m.report.accuracy.estimate));
            out.push((format!("dev_macro_f1_{}", m.method), m.report.macro_f1.estimate));
        }
        Ok(out)
    }
}

pub use ddm_schema::RunSummary;

/// Create a fresh run folder `<out_dir>/<name>-<utc stamp>` (never reusing an existing one).
pub fn new_run_dir(out_dir: &Path, name: &str) -> Result<PathBuf> {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let mut dir = out_dir.join(format!("{name}-{stamp}"));
    let mut k = 1;
    while dir.exists() {
        dir = out_dir.join(format!("{name}-{stamp}-{k}"));
        k += 1;
    }
    Ok(dir)
}

pub use ddm_schema::write_json;

/// Options of [`train_run`] beyond the config.
#[derive(Default)]
pub struct RunOpts<'a> {
    /// Stop flag (Ctrl-C).
    pub stop: Option<&'a AtomicBool>,
    /// Extra evaluation at every `eval_every` step.
    pub hook: Option<&'a mut dyn EvalHook>,
}

/// Everything a finished training leaves in memory, for the evaluation that follows.
pub struct Trained {
    /// The trained model.
    pub loaded: Loaded,
    /// The data splits.
    pub splits: Splits,
    /// The resolved config (as written to config.json).
    pub cfg: RunConfig,
    /// Summary (also in summary.json).
    pub summary: RunSummary,
}

/// Train one run into `run_dir` (created; must not hold a finished run).
pub fn train_run(raw: RawConfig, run_dir: &Path, opts: RunOpts) -> Result<Trained> {
    let mut cfg = raw.resolve()?;
    let dir = RunDir::new(run_dir);
    // Model and data are loaded before the folder exists: a run that fails here leaves none.
    let loaded = load_model(&cfg)?;
    let splits = data::load(&cfg.raw.data)?;
    if splits.train.is_empty() {
        let why = match cfg.raw.data.file_split {
            data::FileSplit::Test => "the training split is empty: data.file_split = \"test\" makes a single file all test",
            data::FileSplit::Train => "the training split is empty",
        };
        return Err(Error::data(cfg.raw.data.source(), why));
    }
    let (train_ex, trunc) = encode_items(&splits.train, "train", &cfg.raw, &loaded.tok)?;
    let (dev_ex, _) = encode_items(&splits.dev, "dev", &cfg.raw, &loaded.tok)?;
    // a data-parallel rank (train::dist): the world's batch is world × micro_batch
    let dist = train::dist::Dist::from_env(&config::device(&cfg.resolved.device)?)?;
    let t = &cfg.raw.train;
    let total = t.max_steps.unwrap_or_else(|| train::steps_for(train_ex.len(), t.epochs, t.micro_batch * dist.world, t.grad_accum));
    cfg.resolved.world_size = (dist.world > 1).then_some(dist.world);
    // With epochs the step count is known only now: the same anneal/eval check as validate's.
    cfg.raw.check_eval_attention(total)?;
    cfg.resolved.mask_id = Some(loaded.tok.mask_id);
    cfg.resolved.total_steps = Some(total);
    cfg.resolved.eval_future_visibility =
        Some(cfg.raw.objective.eval_future_visibility(cfg.raw.eval.attention.unwrap_or_default(), Some(total), cfg.raw.seed));
    cfg.resolved.n_train = Some(train_ex.len());
    cfg.resolved.n_truncated = Some(trunc);
    if cfg.raw.eval.canvas == crate::config::Canvas::TrainMax {
        cfg.resolved.canvas_tokens = train_ex.iter().map(|e| e.response.len()).max();
    }
    // The resolved config goes into the run folder (created here) before training starts.
    dir.write_config(&cfg)?;
    let objective = objective(&cfg.raw, loaded.tok.mask_id);
    // How the trained model will be read (eval.attention after the last step): dev loss and NLL too.
    let reader = crate::eval::EvalSetup::for_trained(&cfg).objective_for_eval(loaded.tok.mask_id);
    // Periodic accuracy on the dev split (never the test split) when asked for.
    let mut dev_hook = DevAccuracy {
        tok: &loaded.tok,
        items: &splits.dev,
        setup: crate::eval::EvalSetup::for_run(&cfg),
        run: dir.clone(),
        dataset: splits.name.clone(),
    };
    let hook: Option<&mut dyn EvalHook> = match opts.hook {
        Some(h) => Some(h),
        None if cfg.raw.eval.during_training && !splits.dev.is_empty() => Some(&mut dev_hook),
        None => None,
    };
    let checkpoint_dir = checkpoint_dir(&cfg.raw, &dir);
    let outcome = train::train(
        &loaded.model,
        &loaded.trainable,
        objective.as_ref(),
        TrainInputs {
            cfg: &cfg.raw.train,
            seed: cfg.raw.seed,
            total_steps: total,
            pad_id: loaded.tok.pad_id,
            train: &train_ex,
            dev: &dev_ex,
            run_dir,
            checkpoint_dir,
            stop: opts.stop,
            reader: Some(reader.as_ref()),
            launch: cfg.resolved.launch,
            dist: Some(&dist),
        },
        hook,
    )?;
    let summary = RunSummary {
        name: cfg.raw.name.clone(),
        train: outcome,
        dataset: splits.name.clone(),
        sizes: (splits.train.len(), splits.dev.len(), splits.test.len()),
    };
    dir.write_summary(&summary)?;
    Ok(Trained { loaded, splits, cfg, summary })
}

/// The checkpoint folder of a run: `train.checkpoint_dir`, else `<run>/checkpoints`.
fn checkpoint_dir(cfg: &RawConfig, run: &RunDir) -> PathBuf {
    cfg.train.checkpoint_dir.clone().unwrap_or_else(|| run.checkpoints())
}

/// Which model [`evaluate`] reads.
pub enum EvalSource<'a> {
    /// A model in memory (just trained) with its data.
    Trained {
        /// The model and tokenizer.
        loaded: &'a Loaded,
        /// Its data splits (the test split is evaluated).
        splits: &'a Splits,
    },
    /// The base model of the config with a saved adapter (a finished run's
    /// `checkpoints/adapter.safetensors`) loaded into it.
    Adapter(PathBuf),
    /// The base model of the config, untrained.
    Base,
}

/// Evaluate on the test split of `cfg.raw.data` the model `source` names, read as `cfg` says,
/// writing `eval.json` and `predictions.jsonl` into `out_dir`. The one evaluation path: after
/// training ([`execute`]), of a run folder ([`eval_run_dir`]), of a base model ([`eval_base`])
/// and of a study's zero-shot point ([`execute_zero_shot`]).
pub fn evaluate(cfg: &RunConfig, source: EvalSource, out_dir: &Path) -> Result<EvalResult> {
    // A trained model is read under the attention of its last step; a base model is untrained.
    let source_kind = if matches!(source, EvalSource::Base) { SourceKind::Base } else { SourceKind::Trained };
    let owned;
    let (loaded, splits) = match source {
        EvalSource::Trained { loaded, splits } => (loaded, splits),
        EvalSource::Adapter(_) | EvalSource::Base => {
            let loaded = load_model(cfg)?;
            if let EvalSource::Adapter(adapter) = &source {
                loaded.trainable.load(adapter)?;
            }
            owned = (loaded, data::load(&cfg.raw.data)?);
            (&owned.0, &owned.1)
        }
    };
    let mut setup = match source_kind {
        SourceKind::Trained => crate::eval::EvalSetup::for_trained(cfg),
        SourceKind::Base => crate::eval::EvalSetup::for_run(cfg),
    };
    if cfg.raw.eval.canvas == crate::config::Canvas::TrainMax && cfg.resolved.canvas_tokens.is_none() {
        // a base model, or a run folder from before: the budget from this data's training split
        let (train_ex, _) = encode_items(&splits.train, "train", &cfg.raw, &loaded.tok)?;
        let longest = train_ex.iter().map(|e| e.response.len()).max().ok_or_else(|| {
            Error::config("eval.canvas", "\"train_max\" sizes the canvas from the training split, which is empty here (use \"fixed\")")
        })?;
        setup.eval.max_new_tokens = longest.min(cfg.raw.eval.max_new_tokens);
    }
    crate::eval::evaluate(&loaded.model, &loaded.tok, &splits.test, &setup, &splits.name, "test", out_dir)
}

/// Whether [`evaluate`] reads a trained model (its `resolved.total_steps`) or the base model.
enum SourceKind {
    Trained,
    Base,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339()
}

/// Everything a finished run reports (`summary.json` plus evaluation), returned by [`execute`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Training summary.
    pub summary: RunSummary,
    /// Test-split evaluation, when `eval.at_end`.
    pub eval: Option<EvalResult>,
}

/// Train, evaluate on the test split (when `eval.at_end`), and write `DONE` last. Files in
/// `run_dir`: `config.json` (first), `metrics.csv`, `eval_metrics.csv`, `summary.json`,
/// `eval.json`, `predictions.jsonl`, `DONE` (last: its presence means the run is complete).
pub fn execute(raw: RawConfig, run_dir: &Path, opts: RunOpts) -> Result<RunRecord> {
    let trained = train_run(raw, run_dir, opts)?;
    let eval = if trained.cfg.raw.eval.at_end {
        Some(evaluate(&trained.cfg, EvalSource::Trained { loaded: &trained.loaded, splits: &trained.splits }, run_dir)?)
    } else {
        None
    };
    RunDir::new(run_dir).mark_done(&now())?;
    Ok(RunRecord { summary: trained.summary, eval })
}

/// Resolve `raw`, write it as `config.json` into `dir`, and evaluate its untrained base model.
/// When `dir` did not exist and the evaluation fails before writing anything but
/// `config.json` (bad model, bad data), the folder is removed again.
fn evaluate_base_into(raw: RawConfig, dir: &RunDir) -> Result<EvalResult> {
    let existed = dir.path().exists();
    let result = raw.resolve().and_then(|cfg| {
        dir.write_config(&cfg)?;
        evaluate(&cfg, EvalSource::Base, dir.path())
    });
    if result.is_err() && !existed {
        remove_if_unstarted(dir.path());
    }
    result
}

/// Removes `path` when it holds nothing but `config.json` (best effort: the error that led
/// here is the one reported).
fn remove_if_unstarted(path: &Path) {
    let Ok(entries) = std::fs::read_dir(path) else {
        return;
    };
    let only_config = entries.flatten().all(|e| e.file_name() == RunDir::CONFIG);
    if only_config {
        let _ = std::fs::remove_dir_all(path);
    }
}

/// A study's zero-shot point: evaluate the untrained base model of `raw` into `run_dir`
/// (`config.json` first, `eval.json`, `predictions.jsonl`, `DONE` last).
pub fn execute_zero_shot(raw: RawConfig, run_dir: &Path) -> Result<EvalResult> {
    let dir = RunDir::new(run_dir);
    let eval = evaluate_base_into(raw, &dir)?;
    dir.mark_done(&now())?;
    Ok(eval)
}

/// Evaluate a finished run folder again (its config and saved adapter) into `out_dir`, with
/// `sets` (`key=value`, as `--set`; `eval.*` keys only, anything else is an error) applied to its
/// config first — e.g. `eval.attention = "full"` for a run whose annealing did not finish, which
/// its recorded config alone no longer passes.
pub fn eval_run_dir(run_dir: &Path, methods: Option<Vec<EvalMethod>>, limit: Option<usize>, sets: &[String], out_dir: &Path) -> Result<EvalResult> {
    if let Some(bad) = sets.iter().find(|s| !s.trim_start().starts_with("eval.")) {
        let key = bad.split('=').next().unwrap_or(bad).trim();
        return Err(Error::config(
            key,
            format!("`--set {bad}` with `--run`: only eval.* settings can be changed; the run folder's training and data config is used as written"),
        ));
    }
    let run = RunDir::new(run_dir);
    let mut cfg: RunConfig = run.read_config()?;
    if !sets.is_empty() {
        let origin = run.config_json().display().to_string();
        let text = toml::to_string(&cfg.raw).map_err(|e| Error::config(origin.as_str(), e.to_string()))?;
        cfg.raw = RawConfig::from_str_with(&text, &origin, sets)?;
    }
    if let Some(m) = methods {
        cfg.raw.eval.methods = m;
    }
    if limit.is_some() {
        cfg.raw.eval.limit = limit;
    }
    cfg.raw.validate()?;
    cfg.resolved.device = config::resolve_device(&cfg.raw.model.device)?;
    let adapter = checkpoint_dir(&cfg.raw, &run).join(RunDir::ADAPTER);
    evaluate(&cfg, EvalSource::Adapter(adapter), out_dir)
}

/// Evaluate a base model (no training) on a dataset spec into `out_dir`. `objective` says how the
/// model is read: `autoregressive` (the base AR model) or `diffusion`.
pub fn eval_base(model_source: &str, dataset: &str, objective: ObjectiveKind, methods: Vec<EvalMethod>, limit: Option<usize>, sets: &[String], out_dir: &Path) -> Result<EvalResult> {
    let mut spec = data::DataConfig::from_spec(dataset)?;
    // A single file given to `harness eval` is the test set, unless the spec says otherwise.
    if spec.path.as_deref().is_some_and(Path::is_file) && !dataset.contains("file_split=") {
        spec.file_split = data::FileSplit::Test;
    }
    // The spec is the `[data]` section; `--set data.*` applies on top of it.
    let data_table = toml::Table::try_from(&spec).map_err(|e| Error::config("data", e.to_string()))?;
    let mut table = toml::Table::new();
    table.insert("data".to_string(), toml::Value::Table(data_table));
    let text = toml::to_string(&table).map_err(|e| Error::config("data", e.to_string()))?;
    let mut raw = RawConfig::from_str_with(&text, "harness eval", sets)?;
    raw.model.source = model_source.to_string();
    if raw.objective.kind() != objective {
        raw.objective = ObjectiveConfig::default_for(objective);
    }
    raw.eval.methods = methods;
    if limit.is_some() {
        raw.eval.limit = limit;
    }
    raw.adapter.targets.clear();
    evaluate_base_into(raw, &RunDir::new(out_dir))
}
