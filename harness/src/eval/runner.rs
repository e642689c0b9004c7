//! Evaluation of a model on a split: `generate` (decode, parse the label strictly) and
//! `likelihood` (argmax over choices of log p for AR, of the Monte Carlo ELBO for diffusion).
//! Writes `eval.json` (one report per method) and `predictions.jsonl` (one row per item and method).

use super::likelihood::{ar_choice_scores, best_choice, diffusion_choice_scores, DiffusionLikelihood};
use super::metrics::classification_report;
use crate::config::{EvalConfig, ObjectiveKind, RawConfig};
use crate::data::{Item, ResponseFormat, Template};
use crate::model::mask::AttentionMode;
use crate::model::tokenizer::Tok;
use crate::model::Llama;
use crate::sample::{ArSampler, DiffusionSampler, ModelDenoiser, Strategy};
use crate::{Error, Result};
use ddm_schema::RunDir;
use std::path::Path;
use std::time::Instant;

/// How a model is read at evaluation time.
#[derive(Debug, Clone)]
pub struct EvalSetup {
    /// AR (causal, left-to-right) or diffusion (full attention, denoising).
    pub objective: ObjectiveKind,
    /// Diffusion: the shift convention the model was trained with.
    pub shift: bool,
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
}

impl EvalSetup {
    /// The setup a run config implies.
    pub fn from_config(cfg: &RawConfig) -> Self {
        Self {
            objective: cfg.objective.kind,
            shift: cfg.objective.shift,
            template: Template::new(cfg.data.template),
            response_format: cfg.data.response_format,
            max_len: cfg.data.max_len,
            eval: cfg.eval.clone(),
            seed: cfg.seed,
        }
    }
}

pub use ddm_schema::{EvalResult, MethodResult, Prediction};

/// Strict label parsing: the output's first word (up to whitespace or one of `.,;:)!`), with an
/// optional leading `(`, must equal one choice label, case-insensitively. "yes", "Yes.", "B",
/// "(B)", "B. Stage 2" parse; "The answer is B" does not (it is invalid, and counted wrong).
pub fn parse_label(text: &str, choices: &[String]) -> Option<usize> {
    let t = text.trim_start();
    let t = t.strip_prefix('(').unwrap_or(t);
    let end = t.find(|c: char| c.is_whitespace() || ".,;:)!".contains(c)).unwrap_or(t.len());
    let word = &t[..end];
    if word.is_empty() {
        return None;
    }
    choices.iter().position(|c| c.eq_ignore_ascii_case(word))
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
        return Err(Error::msg(format!("{dataset}/{split}: no labelled items to evaluate")));
    }
    let items: Vec<&Item> = match setup.eval.limit {
        Some(n) => items.into_iter().take(n).collect(),
        None => items,
    };
    let owned: Vec<Item> = items.iter().map(|i| (*i).clone()).collect();
    let labels = label_set(&owned);
    // Prompts once.
    let mut prompts = Vec::with_capacity(items.len());
    let mut n_truncated = 0;
    for it in &items {
        let r = setup.template.render(it, setup.response_format, tok, setup.max_len)?;
        n_truncated += r.truncated as usize;
        prompts.push(r.prompt_ids);
    }
    let out = RunDir::new(out_dir);
    let mut pred_file = out.predictions_writer()?;
    let mut methods = Vec::new();
    // (label, method, steps override): `generate@steps=N` for each step count of the sweep.
    let mut plan: Vec<(String, &str, Option<usize>)> = Vec::new();
    for m in &setup.eval.methods {
        plan.push((m.clone(), m.as_str(), None));
        if m == "generate" && setup.objective == ObjectiveKind::Diffusion {
            for &s in &setup.eval.steps_sweep {
                plan.push((format!("generate@steps={s}"), "generate", Some(s)));
            }
        }
    }
    for (method, kind, steps) in &plan {
        let start = Instant::now();
        let (preds, gen_tokens, nfe) = match *kind {
            "generate" => {
                let mut s = setup.clone();
                if let Some(st) = steps {
                    s.eval.steps = *st;
                }
                generate(model, tok, &items, &prompts, &s)?
            }
            "likelihood" => likelihood(model, tok, &items, &prompts, setup)?,
            m => return Err(Error::config("eval.methods", format!("unknown method `{m}`"))),
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
        let (throughput, unit) = if *kind == "generate" {
            (gen_tokens as f64 / wall.max(1e-9), "tokens/s")
        } else {
            (items.len() as f64 / wall.max(1e-9), "items/s")
        };
        methods.push(MethodResult {
            method: method.clone(),
            report,
            wall_s: wall,
            generated_tokens: gen_tokens,
            throughput,
            throughput_unit: unit.into(),
            mean_nfe: nfe as f64 / items.len() as f64,
        });
    }
    pred_file.finish()?;
    let result = EvalResult { dataset: dataset.into(), split: split.into(), n_items: items.len(), n_truncated, objective: setup.objective, methods };
    out.write_eval(&result)?;
    Ok(result)
}

type Preds = Vec<(String, Option<usize>, Option<Vec<f64>>)>;

fn generate(model: &Llama, tok: &Tok, items: &[&Item], prompts: &[Vec<u32>], setup: &EvalSetup) -> Result<(Preds, usize, usize)> {
    let e = &setup.eval;
    let top_k = (e.top_k > 0).then_some(e.top_k);
    let top_p = (e.top_p < 1.0).then_some(e.top_p);
    let mut out = Vec::with_capacity(items.len());
    let (mut gen, mut nfe) = (0usize, 0usize);
    match setup.objective {
        ObjectiveKind::Autoregressive => {
            let s = ArSampler { max_new_tokens: e.max_new_tokens, temperature: e.temperature, top_k, top_p, eos_id: tok.eos_id, seed: setup.seed };
            for (k, (it, p)) in items.iter().zip(prompts).enumerate() {
                let o = s.generate_cached(model, p, k as u64)?;
                gen += o.tokens.len();
                nfe += o.nfe;
                let text = tok.decode(&o.tokens, true)?;
                out.push((text.clone(), parse_label(&text, &it.choices), None));
            }
        }
        ObjectiveKind::Diffusion => {
            let s = DiffusionSampler {
                steps: e.steps,
                max_new_tokens: e.max_new_tokens,
                strategy: Strategy::from_name(&e.strategy, e.threshold)?,
                block_len: (e.block_len > 0).then_some(e.block_len),
                temperature: e.temperature,
                top_k,
                top_p,
                shift: setup.shift,
                mask_id: tok.mask_id,
                eos_id: tok.eos_id,
                seed: setup.seed,
                early_stop: true,
                batch_size: e.batch_size,
            };
            let d = ModelDenoiser::new(model, AttentionMode::Full);
            let outs = s.generate(&d, prompts, 0)?;
            for (it, o) in items.iter().zip(outs) {
                gen += o.tokens.len();
                nfe += o.nfe;
                let text = tok.decode(&o.tokens, true)?;
                out.push((text.clone(), parse_label(&text, &it.choices), None));
            }
        }
    }
    Ok((out, gen, nfe))
}

fn likelihood(model: &Llama, tok: &Tok, items: &[&Item], prompts: &[Vec<u32>], setup: &EvalSetup) -> Result<(Preds, usize, usize)> {
    let mut out = Vec::with_capacity(items.len());
    let mut nfe = 0;
    let base = DiffusionLikelihood { mask_id: tok.mask_id, shift: setup.shift, n_samples: setup.eval.mc_samples, batch: setup.eval.batch_size.max(1) * 4, seed: setup.seed };
    for (k, (it, p)) in items.iter().zip(prompts).enumerate() {
        let choices: Vec<Vec<u32>> = it.choices.iter().map(|c| tok.encode(c)).collect::<Result<_>>()?;
        let scores = match setup.objective {
            ObjectiveKind::Autoregressive => {
                nfe += 1;
                ar_choice_scores(model, p, &choices)?
            }
            ObjectiveKind::Diffusion => {
                let cfg = base.for_item(k as u64);
                nfe += choices.len() * cfg.n_samples.div_ceil(cfg.batch);
                diffusion_choice_scores(model, p, &choices, &cfg)?
            }
        };
        out.push((String::new(), best_choice(&scores), Some(scores)));
    }
    Ok((out, 0, nfe))
}
