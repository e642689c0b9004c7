//! One training run, end to end: resolve the config, load the model and data, write the resolved
//! config into the run folder first, train, save the adapter, evaluate, write `DONE` last.

use crate::config::{self, ObjectiveKind, RawConfig, RunConfig};
use crate::data::{self, Splits, Template, TextEncoder};
use crate::model::load::{self, ModelSource};
use crate::model::tokenizer::Tok;
use crate::model::{BuildOpts, Llama, Trainable};
use crate::objective::{Autoregressive, Diffusion, Example, Objective};
use crate::train::{self, EvalHook, TrainInputs, TrainOutcome};
use crate::{Error, Result};
use candle_nn::VarBuilder;
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
    let tok = l.tok.ok_or_else(|| Error::config("model.tokenizer", "this model source has no tokenizer: set model.tokenizer (a tokenizer.json or .gguf)"))?;
    let vb = VarBuilder::from_tensors(l.tensors, dtype, &device);
    let (model, trainable) = Llama::load(vb, &l.cfg, &BuildOpts { adapter: &raw.adapter, seed: raw.seed, layer_path: cfg.resolved.layer_path })?;
    Ok(Loaded { model, trainable, tok, files: l.files })
}

/// The objective a config asks for.
pub fn objective(cfg: &RawConfig, mask_id: u32) -> Box<dyn Objective> {
    let o = &cfg.objective;
    match o.kind {
        ObjectiveKind::Autoregressive => Box::new(Autoregressive),
        ObjectiveKind::Diffusion => Box::new(Diffusion {
            mask_id,
            t_sampling: o.t_sampling,
            logit_mean: o.t_logit_mean,
            logit_std: o.t_logit_std,
            eps: o.eps,
            shift: o.shift,
            loss_norm: o.loss_norm,
            score_padding: o.score_padding,
            anneal_steps: o.anneal_steps,
        }),
    }
}

/// Template and tokenize items into training examples (response + eos). Returns the examples
/// and how many were truncated.
pub fn encode_items(items: &[data::Item], cfg: &RawConfig, tok: &Tok) -> Result<(Vec<Example>, usize)> {
    let template = Template::new(cfg.data.template);
    let mut out = Vec::with_capacity(items.len());
    let mut truncated = 0;
    for it in items {
        let r = template.render(it, cfg.data.response_format, tok, cfg.data.max_len)?;
        if tok.contains_mask_literal(&r.prompt) || tok.contains_mask_literal(&r.target) {
            return Err(Error::data(&it.id, format!("item text contains the mask token literal `{}`", tok.mask_token())));
        }
        truncated += r.truncated as usize;
        let mut response = r.target_ids;
        response.push(tok.eos_id);
        out.push(Example { prompt: r.prompt_ids, response });
    }
    Ok((out, truncated))
}

/// The `eval.during_training` hook: every method on the dev split, written to
/// `dev_evals/step-N/` and as `dev_<metric>_<method>` rows of `eval_metrics.csv`.
struct DevAccuracy<'a> {
    tok: &'a Tok,
    items: &'a [data::Item],
    setup: crate::eval::EvalSetup,
    dir: PathBuf,
    dataset: String,
}

impl EvalHook for DevAccuracy<'_> {
    fn evaluate(&mut self, step: u64, model: &Llama) -> Result<Vec<(String, f64)>> {
        let r = crate::eval::evaluate(model, self.tok, self.items, &self.setup, &self.dataset, "dev", &self.dir.join(format!("step-{step:06}")))?;
        let mut out = Vec::new();
        for m in &r.methods {
            out.push((format!("dev_accuracy_{}", m.method), m.report.accuracy.estimate));
            out.push((format!("dev_macro_f1_{}", m.method), m.report.macro_f1.estimate));
        }
        Ok(out)
    }
}

/// What `summary.json` of a run holds.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// Write a JSON file (pretty).
pub fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::msg(e.to_string()))?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

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
    std::fs::create_dir_all(run_dir).map_err(|e| Error::io(run_dir, e))?;
    let loaded = load_model(&cfg)?;
    let splits = data::load(&cfg.raw.data)?;
    let (train_ex, trunc) = encode_items(&splits.train, &cfg.raw, &loaded.tok)?;
    let (dev_ex, _) = encode_items(&splits.dev, &cfg.raw, &loaded.tok)?;
    let t = &cfg.raw.train;
    let total = t.max_steps.unwrap_or_else(|| train::steps_for(train_ex.len(), t.epochs, t.micro_batch, t.grad_accum));
    cfg.resolved.mask_id = Some(loaded.tok.mask_id);
    cfg.resolved.total_steps = Some(total);
    cfg.resolved.n_train = Some(train_ex.len());
    cfg.resolved.n_truncated = Some(trunc);
    // The resolved config goes into the run folder before training starts.
    write_json(&run_dir.join("config.json"), &cfg)?;
    let objective = objective(&cfg.raw, loaded.tok.mask_id);
    // Periodic accuracy on the dev split (never the test split) when asked for.
    let mut dev_hook = DevAccuracy {
        tok: &loaded.tok,
        items: &splits.dev,
        setup: crate::eval::EvalSetup::from_config(&cfg.raw),
        dir: run_dir.join("dev_evals"),
        dataset: splits.name.clone(),
    };
    let hook: Option<&mut dyn EvalHook> = match opts.hook {
        Some(h) => Some(h),
        None if cfg.raw.eval.during_training && !splits.dev.is_empty() => Some(&mut dev_hook),
        None => None,
    };
    let checkpoint_dir = cfg.raw.train.checkpoint_dir.clone().unwrap_or_else(|| run_dir.join("checkpoints"));
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
        },
        hook,
    )?;
    let summary = RunSummary {
        name: cfg.raw.name.clone(),
        train: outcome,
        dataset: splits.name.clone(),
        sizes: (splits.train.len(), splits.dev.len(), splits.test.len()),
    };
    write_json(&run_dir.join("summary.json"), &summary)?;
    Ok(Trained { loaded, splits, cfg, summary })
}

/// Everything a finished run reports (`summary.json` plus evaluation), returned by [`execute`].
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// Training summary.
    pub summary: RunSummary,
    /// Test-split evaluation, when `eval.at_end`.
    pub eval: Option<crate::eval::EvalResult>,
}

/// Train, evaluate on the test split (when `eval.at_end`), and write `DONE` last. Files in
/// `run_dir`: `config.json` (first), `metrics.csv`, `eval_metrics.csv`, `summary.json`,
/// `eval.json`, `predictions.jsonl`, `DONE` (last: its presence means the run is complete).
pub fn execute(raw: RawConfig, run_dir: &Path, opts: RunOpts) -> Result<RunRecord> {
    let trained = train_run(raw, run_dir, opts)?;
    let eval = if trained.cfg.raw.eval.at_end {
        let setup = crate::eval::EvalSetup::from_config(&trained.cfg.raw);
        Some(crate::eval::evaluate(
            &trained.loaded.model,
            &trained.loaded.tok,
            &trained.splits.test,
            &setup,
            &trained.splits.name,
            "test",
            run_dir,
        )?)
    } else {
        None
    };
    let rec = RunRecord { summary: trained.summary, eval };
    std::fs::write(run_dir.join("DONE"), chrono::Utc::now().to_rfc3339() + "\n").map_err(|e| Error::io(run_dir.join("DONE"), e))?;
    Ok(rec)
}

/// Evaluate a finished run folder again (its config and saved adapter) into `out_dir`.
pub fn eval_run_dir(run_dir: &Path, methods: Option<Vec<String>>, limit: Option<usize>, out_dir: &Path) -> Result<crate::eval::EvalResult> {
    let cfg_path = run_dir.join("config.json");
    let text = std::fs::read_to_string(&cfg_path).map_err(|e| Error::io(&cfg_path, e))?;
    let mut cfg: RunConfig = serde_json::from_str(&text).map_err(|e| Error::data(&cfg_path, e.to_string()))?;
    if let Some(m) = methods {
        cfg.raw.eval.methods = m;
    }
    if limit.is_some() {
        cfg.raw.eval.limit = limit;
    }
    cfg.raw.validate()?;
    cfg.resolved.device = config::resolve_device(&cfg.raw.model.device)?;
    let loaded = load_model(&cfg)?;
    let ckpt = cfg.raw.train.checkpoint_dir.clone().unwrap_or_else(|| run_dir.join("checkpoints")).join("adapter.safetensors");
    loaded.trainable.load(&ckpt)?;
    let splits = data::load(&cfg.raw.data)?;
    let setup = crate::eval::EvalSetup::from_config(&cfg.raw);
    crate::eval::evaluate(&loaded.model, &loaded.tok, &splits.test, &setup, &splits.name, "test", out_dir)
}

/// Evaluate a base model (no training) on a dataset spec into `out_dir`. `objective` says how the
/// model is read: `autoregressive` (the base AR model) or `diffusion`.
pub fn eval_base(model_source: &str, dataset: &str, objective: ObjectiveKind, methods: Vec<String>, limit: Option<usize>, sets: &[String], out_dir: &Path) -> Result<crate::eval::EvalResult> {
    let mut raw = RawConfig::from_str_with("", "harness eval", sets)?;
    raw.model.source = model_source.to_string();
    raw.data = data::DataConfig::from_spec(dataset)?;
    raw.objective.kind = objective;
    raw.eval.methods = methods;
    if limit.is_some() {
        raw.eval.limit = limit;
    }
    raw.adapter.targets.clear();
    let cfg = raw.resolve()?;
    let loaded = load_model(&cfg)?;
    let splits = data::load(&cfg.raw.data)?;
    let setup = crate::eval::EvalSetup::from_config(&cfg.raw);
    write_json(&{ std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?; out_dir.join("config.json") }, &cfg)?;
    crate::eval::evaluate(&loaded.model, &loaded.tok, &splits.test, &setup, &splits.name, "test", out_dir)
}
