//! Evaluation of a model on a split: `generate` (decode, parse the label strictly) and
//! `likelihood` (argmax over choices of the objective's score: log p for AR, the Monte Carlo ELBO
//! for diffusion). How a model is read is the objective's business ([`Objective::generate`],
//! [`Objective::score_choices`]); this file only plans the methods, parses and counts.
//!
//! - **Items**: the labelled items of the split; with `eval.limit = n`, a seeded shuffle
//!   ([`sample_limit`]) and the first n of it.
//! - **Methods**: each of `eval.methods`, plus `generate` again at each step count of
//!   `eval.steps_sweep` and with the threshold strategy at each τ of `eval.threshold_sweep`
//!   (diffusion only).
//! - **Likelihood** scores choice k as the tokens of `item.choice_response(format, k)` followed by
//!   the eos the model was trained to end its response with (AR: exact Σ log p; diffusion: the MC
//!   ELBO with its standard error over samples, written per choice into `predictions.jsonl`).
//! - **Decoding diagnostics** (every generate method, both objectives, measured the same way):
//!   tokens/s of the decode call alone, forward passes per answer, length and eos-position
//!   histograms, calibration of the commit confidence ([`super::metrics::decode_stats`]).
//!
//! Writes `eval.json` (one report per method), `predictions.jsonl` (one row per item and
//! method) and `frontier.csv` (one row per generate method: accuracy against NFE and tokens/s).

use super::likelihood::best_choice;
use super::metrics::{classification_report, decode_stats};
use crate::config::{EvalConfig, EvalMethod, ObjectiveConfig, RawConfig, RunConfig};
use crate::data::{DataConfig, FileSplit, Fit, Item, OnOverlong, ResponseFormat, Template};
use crate::model::tokenizer::Tok;
use crate::model::Llama;
use crate::objective::{Generated, Objective};
use crate::rng::{rng_for, Purpose};
use crate::sample::StrategyKind;
use crate::{Error, Result};
use ddm_schema::RunDir;
use rand::seq::SliceRandom;
use std::path::Path;
use std::time::Instant;

/// How a model is read at evaluation time.
#[derive(Debug, Clone)]
pub struct EvalSetup {
    /// The objective the model was trained with (diffusion: with its `shift`); it decides how
    /// the model generates and scores.
    pub objective: ObjectiveConfig,
    /// Prompt template.
    pub template: Template,
    /// Response format the model was trained to produce.
    pub response_format: ResponseFormat,
    /// Longest prompt + answer.
    pub max_len: usize,
    /// Evaluation settings.
    pub eval: EvalConfig,
    /// Seed of sampling, likelihood draws and bootstrap.
    pub seed: u64,
    /// The data config (for over-long items: `on_overlong`, default skip, and the source named
    /// in messages).
    pub data: DataConfig,
    /// Optimizer steps the model was trained for (`None`: an untrained base model). With
    /// `eval.attention = "trained"` a diffusion model is read under the attention of its last
    /// step.
    pub trained_steps: Option<u64>,
}

impl EvalSetup {
    /// The setup a run config implies, for an untrained model (`trained_steps = None`).
    pub fn from_config(cfg: &RawConfig) -> Self {
        Self {
            objective: cfg.objective.clone(),
            template: Template::new(cfg.data.template),
            response_format: cfg.data.response_format,
            max_len: cfg.data.max_len,
            eval: cfg.eval.clone(),
            seed: cfg.seed,
            data: cfg.data.clone(),
            trained_steps: None,
        }
    }

    /// The setup of a model trained by the run `cfg` describes: its `resolved.total_steps`.
    pub fn for_trained(cfg: &RunConfig) -> Self {
        Self { trained_steps: cfg.resolved.total_steps, ..Self::for_run(cfg) }
    }

    /// [`EvalSetup::from_config`] of a resolved run config: with its generation budget
    /// ([`RunConfig::generation_budget`]), for an untrained model.
    pub fn for_run(cfg: &RunConfig) -> Self {
        let mut s = Self::from_config(&cfg.raw);
        s.eval.max_new_tokens = cfg.generation_budget();
        s
    }

    /// The objective that reads the model (`eval.attention`, the trained steps).
    pub fn objective_for_eval(&self, mask_id: u32) -> Box<dyn Objective> {
        self.objective.build_for_eval(mask_id, self.eval.attention.unwrap_or_default(), self.trained_steps, self.seed)
    }
}

/// The items `eval.limit` keeps: all of them when `limit` is None, else the first `limit` of a
/// shuffle of `items` with `rng_for(seed, Purpose::EvalSample, 0, 0)` (in shuffled order).
/// Deterministic for (seed, items); a different seed gives a different sample.
pub fn sample_limit<T>(mut items: Vec<T>, limit: Option<usize>, seed: u64) -> Vec<T> {
    if let Some(n) = limit {
        items.shuffle(&mut rng_for(seed, Purpose::EvalSample, 0, 0));
        items.truncate(n);
    }
    items
}

pub use ddm_schema::{EvalResult, MethodResult, Prediction};

/// The label list of a split: the union of the items' choices, in first-seen order.
pub fn label_set(items: &[Item]) -> Vec<String> {
    let mut labels: Vec<String> = Vec::new();
    for it in items {
        for c in &it.choices {
            if !labels.contains(c) {
                labels.push(c.clone());
            }
        }
    }
    labels
}

/// Evaluate `model` on `items` with every method of `setup.eval.methods`; write `eval.json` and
/// `predictions.jsonl` into `out_dir`.
pub fn evaluate(model: &Llama, tok: &Tok, items: &[Item], setup: &EvalSetup, dataset: &str, split: &str, out_dir: &Path) -> Result<EvalResult> {
    let items: Vec<&Item> = items.iter().filter(|i| i.gold.is_some() && !i.choices.is_empty()).collect();
    if items.is_empty() {
        let single_file = setup.data.path.as_deref().is_some_and(|p| p.is_file());
        let hint = if single_file && setup.data.file_split == FileSplit::Train {
            " (a single file is split into train and dev; set data.file_split = \"test\" to evaluate all of it)"
        } else {
            ""
        };
        return Err(Error::data(setup.data.source(), format!("{dataset}/{split}: no labelled items to evaluate{hint}")));
    }
    let items: Vec<&Item> = sample_limit(items, setup.eval.limit, setup.seed);
    // Prompts once; items over max_len even without contexts are skipped or an error.
    let mut prompts = Vec::with_capacity(items.len());
    let mut kept = Vec::with_capacity(items.len());
    let mut overlong = Vec::new();
    let mut n_truncated = 0;
    for it in items {
        match setup.template.render_fit(it, setup.response_format, tok, setup.max_len)? {
            Fit::Fits(r) => {
                n_truncated += r.truncated as usize;
                prompts.push(r.prompt_ids);
                kept.push(it);
            }
            Fit::Overlong { .. } => overlong.push(it.id.clone()),
        }
    }
    if !overlong.is_empty() {
        if setup.data.on_overlong_or(OnOverlong::Skip) == OnOverlong::Error {
            return Err(setup.data.overlong_error(split, &overlong));
        }
        eprintln!("{dataset}: {}; skipped (data.on_overlong = \"skip\")", setup.data.overlong_message(split, &overlong));
    }
    let items = kept;
    if items.is_empty() {
        return Err(Error::data(
            setup.data.source(),
            format!("{split} split: every one of the {} item(s) is over data.max_len = {}", overlong.len(), setup.max_len),
        ));
    }
    let owned: Vec<Item> = items.iter().map(|i| (*i).clone()).collect();
    let labels = label_set(&owned);
    let out = RunDir::new(out_dir);
    let mut pred_file = out.predictions_writer()?;
    let mut methods = Vec::new();
    let obj = setup.objective_for_eval(tok.mask_id);
    for (method, kind, eval) in plan(&setup.eval) {
        let start = Instant::now();
        let run = match kind {
            EvalMethod::Generate => generate(obj.as_ref(), model, tok, &items, &prompts, setup.response_format, &eval, setup.seed)?,
            EvalMethod::Likelihood => likelihood(obj.as_ref(), model, tok, &items, &prompts, setup.response_format, &eval, setup.seed)?,
        };
        let wall = start.elapsed().as_secs_f64();
        let mut pairs = Vec::with_capacity(items.len());
        let mut correct = Vec::with_capacity(items.len());
        let (mut se_sum, mut se_n) = (0.0, 0usize);
        for (it, p) in items.iter().zip(&run.preds) {
            let gold_label = it.gold.and_then(|g| it.choices.get(g)).cloned().unwrap_or_default();
            let pred_label = p.pred.and_then(|k| it.choices.get(k)).cloned();
            let gi = labels.iter().position(|l| *l == gold_label).unwrap_or(0);
            let pi = pred_label.as_ref().and_then(|p| labels.iter().position(|l| l == p));
            pairs.push((gi, pi));
            if let Some(se) = &p.se {
                se_sum += se.iter().sum::<f64>();
                se_n += se.len();
            }
            let ok = pred_label.as_deref() == Some(gold_label.as_str());
            correct.push(ok);
            let row = Prediction {
                id: it.id.clone(),
                method: method.clone(),
                correct: ok,
                gold: gold_label,
                predicted: pred_label,
                raw: p.raw.clone(),
                scores: p.scores.clone(),
                score_se: p.se.clone(),
            };
            pred_file.write(&row)?;
        }
        let report = classification_report(&labels, &pairs, setup.eval.bootstrap.max(1), setup.seed)?;
        let decode = match &run.generated {
            Some(g) => Some(decode_stats(g, &correct, run.decode_s, &setup.objective.decode_settings(&eval))?),
            None => None,
        };
        let (throughput, unit) = match &decode {
            Some(d) => (d.tokens_per_s, "tokens/s"),
            None => (items.len() as f64 / wall.max(1e-9), "items/s"),
        };
        methods.push(MethodResult {
            method,
            report,
            wall_s: wall,
            generated_tokens: run.generated_tokens,
            throughput,
            throughput_unit: unit.into(),
            mean_nfe: run.nfe as f64 / items.len() as f64,
            decode,
            mean_score_se: (se_n > 0).then(|| se_sum / se_n as f64),
        });
    }
    pred_file.finish()?;
    let result = EvalResult { dataset: dataset.into(), split: split.into(), n_items: items.len(), n_truncated, n_overlong: overlong.len(), objective: setup.objective.kind(), methods };
    out.write_eval(&result)?;
    // Only generate methods have a frontier point; a likelihood-only evaluation writes no file.
    let frontier = result.frontier();
    if !frontier.is_empty() {
        ddm_schema::eval::write_frontier(out_dir, &frontier)?;
    }
    Ok(result)
}

/// The evaluations `eval` asks for, in order: (label, method, settings). Each method once, and
/// `generate` again at each step count of `eval.steps_sweep` (label `generate@steps=N`) and with
/// the threshold strategy at each τ of `eval.threshold_sweep` (label `generate@threshold=τ`) and
/// with each cache of `eval.cache_sweep` (label `generate@cache=K`), the other settings as
/// configured; the config admits sweeps only for diffusion.
fn plan(eval: &EvalConfig) -> Vec<(String, EvalMethod, EvalConfig)> {
    let mut plan = Vec::new();
    for &m in &eval.methods {
        plan.push((m.as_str().to_string(), m, eval.clone()));
        if m == EvalMethod::Generate {
            for &steps in &eval.steps_sweep {
                plan.push((format!("generate@steps={steps}"), m, EvalConfig { steps, ..eval.clone() }));
            }
            for &threshold in &eval.threshold_sweep {
                plan.push((format!("generate@threshold={threshold}"), m, EvalConfig { strategy: StrategyKind::Threshold, threshold, ..eval.clone() }));
            }
            for &cache in &eval.cache_sweep {
                plan.push((format!("generate@cache={}", cache.as_str()), m, EvalConfig { cache, ..eval.clone() }));
            }
        }
    }
    plan
}

/// One item's outcome under one method.
struct Pred {
    /// Decoded text (generate) or empty.
    raw: String,
    /// Parsed / argmax choice.
    pred: Option<usize>,
    /// Per-choice scores (likelihood).
    scores: Option<Vec<f64>>,
    /// Per-choice standard errors (diffusion likelihood).
    se: Option<Vec<f64>>,
}

/// One method's outcome over the items.
struct MethodRun {
    preds: Vec<Pred>,
    /// Tokens generated, eos excluded (0 for likelihood).
    generated_tokens: usize,
    /// Forward passes, summed over items.
    nfe: usize,
    /// The decoder's outputs (generate only).
    generated: Option<Vec<Generated>>,
    /// Wall seconds of the decode call (generate only).
    decode_s: f64,
}

#[allow(clippy::too_many_arguments)]
fn generate(obj: &dyn Objective, model: &Llama, tok: &Tok, items: &[&Item], prompts: &[Vec<u32>], format: ResponseFormat, eval: &EvalConfig, seed: u64) -> Result<MethodRun> {
    // Timed: the decode call alone (every prompt, batched by the objective's sampler).
    let start = Instant::now();
    let outs = obj.generate(model, prompts, tok.eos_id, eval, seed)?;
    let decode_s = start.elapsed().as_secs_f64();
    let mut preds = Vec::with_capacity(items.len());
    let (mut gen, mut nfe) = (0usize, 0usize);
    for (it, o) in items.iter().zip(&outs) {
        gen += o.tokens.len();
        nfe += o.nfe;
        let text = tok.decode_generated(&o.tokens, true)?;
        let pred = format.parse(&text, it);
        preds.push(Pred { raw: text, pred, scores: None, se: None });
    }
    Ok(MethodRun { preds, generated_tokens: gen, nfe, generated: Some(outs), decode_s })
}

/// The token sequences `likelihood` scores for `item`: choice k's response
/// (`item.choice_response(format, k)`) encoded, then the eos.
pub fn choice_sequences(item: &Item, format: ResponseFormat, tok: &Tok) -> Result<Vec<Vec<u32>>> {
    (0..item.choices.len())
        .map(|k| {
            let text = item.choice_response(format, k).ok_or_else(|| {
                Error::config(
                    "eval.methods",
                    format!("`likelihood` needs a fixed response per choice; data.response_format = \"{}\" has none", format.as_str()),
                )
            })?;
            let mut ids = tok.encode(&text)?;
            ids.push(tok.eos_id);
            Ok(ids)
        })
        .collect()
}

#[allow(clippy::too_many_arguments)]
fn likelihood(obj: &dyn Objective, model: &Llama, tok: &Tok, items: &[&Item], prompts: &[Vec<u32>], format: ResponseFormat, eval: &EvalConfig, seed: u64) -> Result<MethodRun> {
    let mut preds = Vec::with_capacity(items.len());
    let mut nfe = 0;
    for (k, (it, p)) in items.iter().zip(prompts).enumerate() {
        let choices = choice_sequences(it, format, tok)?;
        let s = obj.score_choices(model, p, &choices, k as u64, eval, seed)?;
        nfe += s.nfe;
        preds.push(Pred { raw: String::new(), pred: best_choice(&s.scores), scores: Some(s.scores), se: s.se });
    }
    Ok(MethodRun { preds, generated_tokens: 0, nfe, generated: None, decode_s: 0.0 })
}
