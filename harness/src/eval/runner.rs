//! Evaluation of a model on a split: `generate` (decode, parse the label strictly) and
//! `likelihood` (argmax over choices of the objective's score: log p for AR, the Monte Carlo ELBO
//! for diffusion). How a model is read is the objective's business ([`Objective::generate`],
//! [`Objective::score_choices`]); this file only plans the methods, parses and counts.
//! Writes `eval.json` (one report per method) and `predictions.jsonl` (one row per item and method).

use super::likelihood::best_choice;
use super::metrics::classification_report;
use crate::config::{EvalConfig, EvalMethod, ObjectiveConfig, RawConfig};
use crate::data::{DataConfig, FileSplit, Fit, Item, OnOverlong, ResponseFormat, Template};
use crate::model::tokenizer::Tok;
use crate::model::Llama;
use crate::objective::{self, Objective};
use crate::{Error, Result};
use ddm_schema::RunDir;
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
}

impl EvalSetup {
    /// The setup a run config implies.
    pub fn from_config(cfg: &RawConfig) -> Self {
        Self {
            objective: cfg.objective.clone(),
            template: Template::new(cfg.data.template),
            response_format: cfg.data.response_format,
            max_len: cfg.data.max_len,
            eval: cfg.eval.clone(),
            seed: cfg.seed,
            data: cfg.data.clone(),
        }
    }
}

pub use ddm_schema::{EvalResult, MethodResult, Prediction};

/// Strict leading-label parsing (the `answer` format's reader); see
/// [`crate::data::parse_leading_label`].
pub fn parse_label(text: &str, choices: &[String]) -> Option<usize> {
    crate::data::parse_leading_label(text, choices)
}

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
    let items: Vec<&Item> = match setup.eval.limit {
        Some(n) => items.into_iter().take(n).collect(),
        None => items,
    };
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
    let obj = objective::build(&setup.objective, tok.mask_id);
    for (method, kind, eval) in plan(&setup.eval) {
        let start = Instant::now();
        let (preds, gen_tokens, nfe) = match kind {
            EvalMethod::Generate => generate(obj.as_ref(), model, tok, &items, &prompts, setup.response_format, &eval, setup.seed)?,
            EvalMethod::Likelihood => likelihood(obj.as_ref(), model, tok, &items, &prompts, &eval, setup.seed)?,
        };
        let wall = start.elapsed().as_secs_f64();
        let mut pairs = Vec::with_capacity(items.len());
        for (it, (raw, pred, scores)) in items.iter().zip(&preds) {
            let gold_label = it.gold.and_then(|g| it.choices.get(g)).cloned().unwrap_or_default();
            let pred_label = pred.and_then(|p| it.choices.get(p)).cloned();
            let gi = labels.iter().position(|l| *l == gold_label).unwrap_or(0);
            let pi = pred_label.as_ref().and_then(|p| labels.iter().position(|l| l == p));
            pairs.push((gi, pi));
            let row = Prediction {
                id: it.id.clone(),
                method: method.clone(),
                correct: pred_label.as_deref() == Some(gold_label.as_str()),
                gold: gold_label,
                predicted: pred_label,
                raw: raw.clone(),
                scores: scores.clone(),
            };
            pred_file.write(&row)?;
        }
        let report = classification_report(&labels, &pairs, setup.eval.bootstrap.max(1), setup.seed)?;
        let (throughput, unit) = if kind == EvalMethod::Generate {
            (gen_tokens as f64 / wall.max(1e-9), "tokens/s")
        } else {
            (items.len() as f64 / wall.max(1e-9), "items/s")
        };
        methods.push(MethodResult {
            method,
            report,
            wall_s: wall,
            generated_tokens: gen_tokens,
            throughput,
            throughput_unit: unit.into(),
            mean_nfe: nfe as f64 / items.len() as f64,
        });
    }
    pred_file.finish()?;
    let result = EvalResult { dataset: dataset.into(), split: split.into(), n_items: items.len(), n_truncated, n_overlong: overlong.len(), objective: setup.objective.kind(), methods };
    out.write_eval(&result)?;
    Ok(result)
}

/// The evaluations `eval` asks for, in order: (label, method, settings). Each method once, and
/// `generate` again at each step count of `eval.steps_sweep` (label `generate@steps=N`; the
/// config admits a sweep only for diffusion).
fn plan(eval: &EvalConfig) -> Vec<(String, EvalMethod, EvalConfig)> {
    let mut plan = Vec::new();
    for &m in &eval.methods {
        plan.push((m.as_str().to_string(), m, eval.clone()));
        if m == EvalMethod::Generate {
            for &steps in &eval.steps_sweep {
                plan.push((format!("generate@steps={steps}"), m, EvalConfig { steps, ..eval.clone() }));
            }
        }
    }
    plan
}

type Preds = Vec<(String, Option<usize>, Option<Vec<f64>>)>;

#[allow(clippy::too_many_arguments)]
fn generate(obj: &dyn Objective, model: &Llama, tok: &Tok, items: &[&Item], prompts: &[Vec<u32>], format: ResponseFormat, eval: &EvalConfig, seed: u64) -> Result<(Preds, usize, usize)> {
    let outs = obj.generate(model, prompts, tok.eos_id, eval, seed)?;
    let mut out = Vec::with_capacity(items.len());
    let (mut gen, mut nfe) = (0usize, 0usize);
    for (it, o) in items.iter().zip(outs) {
        gen += o.tokens.len();
        nfe += o.nfe;
        let text = tok.decode(&o.tokens, true)?;
        out.push((text.clone(), format.parse(&text, it), None));
    }
    Ok((out, gen, nfe))
}

fn likelihood(obj: &dyn Objective, model: &Llama, tok: &Tok, items: &[&Item], prompts: &[Vec<u32>], eval: &EvalConfig, seed: u64) -> Result<(Preds, usize, usize)> {
    let mut out = Vec::with_capacity(items.len());
    let mut nfe = 0;
    for (k, (it, p)) in items.iter().zip(prompts).enumerate() {
        let choices: Vec<Vec<u32>> = it.choices.iter().map(|c| tok.encode(c)).collect::<Result<_>>()?;
        let s = obj.score_choices(model, p, &choices, k as u64, eval, seed)?;
        nfe += s.nfe;
        out.push((String::new(), best_choice(&s.scores), Some(s.scores)));
    }
    Ok((out, 0, nfe))
}
