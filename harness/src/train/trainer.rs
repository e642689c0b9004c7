//! The step loop. It knows nothing about which objective it runs: it asks the objective to
//! prepare every micro-batch of a step, then runs the one training step
//! ([`super::step::train_step`]: Σ w·CE / total per micro-batch, backward, clip, AdamW).
//!
//! It writes `metrics.csv` (one row per `log_every` steps), `t_buckets.csv` when the objective
//! tags its scored rows with diffusion-time buckets (one row per bucket at each `metrics.csv`
//! row, the CE per masked token over the steps since the previous row), and at each dev
//! evaluation `eval_metrics.csv` rows: `dev_loss` (the objective's own weighted loss),
//! `dev_nll` (negative log-likelihood per response token, [`dev_nll`]: comparable across
//! objectives), `dev_ce`, `dev_token_acc`, then the hook's metrics.

use super::graph::{GraphStep, StepLaunch};
use super::dist::Dist;
use super::optim::{AdamW, AdamWParams, GradAccum};
use super::step::{train_step, StepCtx};
use super::schedule::lr_at;
use crate::config::TrainConfig;
use crate::model::params::{Fwd, Trainable};
use crate::model::Llama;
use crate::objective::{scored_loss, t_bucket_range, Batch, Example, FixedShape, Objective, Prepared, TBuckets, T_BUCKETS};
use crate::rng::{derive_seed, rng_for, Purpose};
use crate::{Error, Result};
use rand::seq::SliceRandom;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

pub use ddm_schema::{StepMetrics, TBucketRow, TrainOutcome};

/// Called every `eval_every` steps and at the end with the model in its current state; returns
/// named metrics that go to `eval_metrics.csv`.
pub trait EvalHook {
    /// Evaluate at `step`.
    fn evaluate(&mut self, step: u64, model: &Llama) -> Result<Vec<(String, f64)>>;
}

/// Everything the loop needs besides the model.
pub struct TrainInputs<'a> {
    /// Loop settings.
    pub cfg: &'a TrainConfig,
    /// Run seed.
    pub seed: u64,
    /// Total optimizer steps.
    pub total_steps: u64,
    /// Padding id.
    pub pad_id: u32,
    /// Training examples.
    pub train: &'a [Example],
    /// Dev examples for the periodic dev loss (may be empty).
    pub dev: &'a [Example],
    /// Run folder: receives `metrics.csv` and `eval_metrics.csv`.
    pub run_dir: &'a Path,
    /// Checkpoint folder.
    pub checkpoint_dir: PathBuf,
    /// Set to stop cleanly after the current step.
    pub stop: Option<&'a AtomicBool>,
    /// The objective as the trained model will be read at evaluation time (its `eval.attention`
    /// after the last step): the dev loss and dev NLL are measured under its attention, so the
    /// logged `dev_nll` is the figure of the model that is evaluated. `None` = the training
    /// objective's own evaluation attention.
    pub reader: Option<&'a dyn Objective>,
    /// How steps are launched (resolved: `eager` or `cuda_graph`, [`crate::train::graph`]).
    pub launch: StepLaunch,
    /// The data-parallel run this process is one rank of ([`crate::train::dist`]); None: one
    /// process.
    pub dist: Option<&'a Dist>,
}

/// Steps needed for `epochs` passes over `n` examples.
pub fn steps_for(n: usize, epochs: f64, micro_batch: usize, grad_accum: usize) -> u64 {
    let per_step = (micro_batch * grad_accum).max(1) as f64;
    ((n as f64 * epochs) / per_step).ceil().max(1.0) as u64
}

/// Deterministic stream of micro-batches: a seeded shuffle per epoch.
struct Order {
    n: usize,
    perm: Vec<usize>,
    pos: usize,
    epoch: u64,
    seed: u64,
}

impl Order {
    fn new(n: usize, seed: u64) -> Self {
        let mut o = Self { n, perm: Vec::new(), pos: 0, epoch: 0, seed };
        o.reshuffle();
        o
    }
    fn reshuffle(&mut self) {
        self.perm = (0..self.n).collect();
        let mut rng = rng_for(self.seed, Purpose::DataOrder, self.epoch, 0);
        self.perm.shuffle(&mut rng);
        self.pos = 0;
    }
    fn next_batch(&mut self, size: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(size);
        while out.len() < size {
            if self.pos == self.n {
                self.epoch += 1;
                self.reshuffle();
            }
            out.push(self.perm[self.pos]);
            self.pos += 1;
        }
        out
    }
    fn epoch_progress(&self) -> f64 {
        self.epoch as f64 + self.pos as f64 / self.n as f64
    }
}

/// Mean objective loss, CE and token accuracy on `dev`, with fixed draws (independent of the step)
/// and the objective's evaluation attention. A partly annealed reading uses the annealed mask
/// of optimizer step `read_step` drawn from the run `seed`, the mask that step trained with.
#[allow(clippy::too_many_arguments)]
pub fn dev_loss(model: &Llama, objective: &dyn Objective, dev: &[Example], micro_batch: usize, max_batches: usize, seed: u64, pad_id: u32, read_step: u64) -> Result<(f64, f64, f64)> {
    let eval_seed = derive_seed(seed, Purpose::EvalLoss, 0, 0);
    let (mut loss, mut denom, mut ce, mut n, mut correct) = (0.0, 0.0, 0.0, 0usize, 0usize);
    for (k, chunk) in dev.chunks(micro_batch.max(1)).take(max_batches).enumerate() {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = Batch::collate(&refs, pad_id);
        let mut p = objective.prepare(&batch, k as u64, 0, eval_seed)?;
        p.attention = objective.eval_attention();
        read_at(&mut p, read_step);
        let v = scored_loss(model, &p, 1.0, seed, &Fwd::default())?.read()?;
        loss += v.loss;
        denom += p.denom;
        ce += v.ce_sum;
        n += v.n_scored;
        correct += v.n_correct;
    }
    let nn = n.max(1) as f64;
    Ok((if denom > 0.0 { loss / denom } else { 0.0 }, ce / nn, correct as f64 / nn))
}

/// Monte Carlo draws per dev batch in [`dev_nll`] (passed as `micro` to
/// [`Objective::prepare_nll`]). The diffusion bound's 1/t weight makes one draw per sequence
/// noisy for short responses; an exact objective (AR, [`Objective::nll_is_exact`]) takes one.
pub const DEV_NLL_DRAWS: u64 = 4;

/// Dev negative log-likelihood per response token (eos included), read under the objective's
/// evaluation attention ([`Objective::prepare_nll`]): AR exact, diffusion the ELBO bound
/// averaged over [`DEV_NLL_DRAWS`] Monte Carlo draws of (t, mask) per sequence. The draws are
/// fixed (seeded from `seed`, the batch index and the draw, apart from those of [`dev_loss`]),
/// so evaluations at different steps see the same draws. Σ over batches and draws of Σ w·CE,
/// divided by the response tokens so counted; 0 when nothing is scored.
/// A partly annealed reading is the mask of step `read_step` (see [`dev_loss`]).
#[allow(clippy::too_many_arguments)]
pub fn dev_nll(model: &Llama, objective: &dyn Objective, dev: &[Example], micro_batch: usize, max_batches: usize, seed: u64, pad_id: u32, read_step: u64) -> Result<f64> {
    let nll_seed = derive_seed(seed, Purpose::EvalLoss, 1, 0);
    let (mut sum, mut denom) = (0.0, 0.0);
    for (k, chunk) in dev.chunks(micro_batch.max(1)).take(max_batches).enumerate() {
        let refs: Vec<&Example> = chunk.iter().collect();
        let batch = Batch::collate(&refs, pad_id);
        let draws = if objective.nll_is_exact() { 1 } else { DEV_NLL_DRAWS };
        for draw in 0..draws {
            let mut p = objective.prepare_nll(&batch, k as u64, draw, nll_seed)?;
            read_at(&mut p, read_step);
            sum += scored_loss(model, &p, 1.0, seed, &Fwd::default())?.read()?.loss;
            denom += p.denom;
        }
    }
    Ok(if denom > 0.0 { sum / denom } else { 0.0 })
}

/// An annealing schedule's attention is read at `read_step` (the bias is that step's: drawn from
/// (run seed, step) for the Bernoulli mask); full and causal attention do not depend on the step.
fn read_at(p: &mut Prepared, read_step: u64) {
    if p.attention.depends_on_step() {
        p.step = read_step;
    }
}

/// The `t_buckets.csv` rows of step `step` from the bucket sums since the previous row.
fn bucket_rows(step: u64, b: &TBuckets) -> Vec<TBucketRow> {
    (0..T_BUCKETS)
        .map(|k| {
            let (t_lo, t_hi) = t_bucket_range(k);
            let ce = (b.n[k] > 0).then(|| b.ce_sum[k] / b.n[k] as f64);
            TBucketRow { step, bucket: k, t_lo, t_hi, tokens: b.n[k], ce }
        })
        .collect()
}

/// Watches for a dead run: `limit` consecutive steps with gradient norm exactly 0, or with the
/// mean CE within `tol` of the uniform value ln V. Reads only the host values a step returns.
struct DeadWatch {
    limit: u64,
    tol: f64,
    ln_v: f64,
    zero_grad: u64,
    uniform: u64,
}

impl DeadWatch {
    fn new(cfg: &TrainConfig, vocab: usize) -> Self {
        Self { limit: cfg.dead_steps, tol: cfg.dead_ce_tol, ln_v: (vocab.max(1) as f64).ln(), zero_grad: 0, uniform: 0 }
    }

    /// Record step `step` (1-based); the reason to stop when it is the `limit`-th dead step in a
    /// row. A step that scored nothing is no evidence either way: it resets both counts.
    fn observe(&mut self, step: u64, grad_norm: f64, ce_mean: f64, scored: usize) -> Option<String> {
        if self.limit == 0 {
            return None;
        }
        let live = scored > 0;
        self.zero_grad = if live && grad_norm == 0.0 { self.zero_grad + 1 } else { 0 };
        self.uniform = if live && (ce_mean - self.ln_v).abs() <= self.tol { self.uniform + 1 } else { 0 };
        let first = |n: u64| step + 1 - n;
        if self.zero_grad >= self.limit {
            return Some(format!("gradient norm 0 for {} consecutive steps (since step {})", self.zero_grad, first(self.zero_grad)));
        }
        if self.uniform >= self.limit {
            return Some(format!(
                "CE at ln V = {:.2} (uniform over {} tokens) for {} consecutive steps (since step {})",
                self.ln_v,
                self.ln_v.exp().round(),
                self.uniform,
                first(self.uniform)
            ));
        }
        None
    }
}

/// Where a CSV of the run is written while training runs; renamed to `path` when training ends
/// (also when it fails), so no reader sees a half-written `metrics.csv`.
fn part_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".part");
    path.with_file_name(name)
}

/// Rename each written `.part` file to its final name.
fn publish(paths: &[PathBuf]) -> Result<()> {
    for p in paths {
        let part = part_path(p);
        if part.is_file() {
            std::fs::rename(&part, p).map_err(|e| Error::io(p, e))?;
        }
    }
    Ok(())
}

fn csv_writer(path: &Path, header: &str) -> Result<std::fs::File> {
    let mut f = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
    writeln!(f, "{header}").map_err(|e| Error::io(path, e))?;
    Ok(f)
}

/// Train `model` (its `trainable` parameters) with `objective`. Writes `metrics.csv` per step,
/// `t_buckets.csv` (objectives with diffusion-time buckets) and `eval_metrics.csv` (long
/// format: step,metric,value) at each evaluation, under `.part` names
/// that are renamed to these when training ends, fails or is interrupted. A dead run (see
/// `train.dead_steps`) is stopped with [`Error::Diverged`], as a NaN loss is.
pub fn train(model: &Llama, trainable: &Trainable, objective: &dyn Objective, inp: TrainInputs, hook: Option<&mut dyn EvalHook>) -> Result<TrainOutcome> {
    if inp.train.is_empty() {
        return Err(Error::msg("the training split is empty"));
    }
    std::fs::create_dir_all(&inp.checkpoint_dir).map_err(|e| Error::io(&inp.checkpoint_dir, e))?;
    let rd = ddm_schema::RunDir::new(inp.run_dir);
    let files = [rd.metrics_csv(), rd.eval_metrics_csv(), rd.t_buckets_csv()];
    let out = train_loop(model, trainable, objective, &inp, hook, &part_path(&files[0]), &part_path(&files[1]), &part_path(&files[2]));
    // the curve of a failed run is published too; the training error comes first
    let published = publish(&files);
    let out = out?;
    published?;
    Ok(out)
}

fn train_loop(
    model: &Llama,
    trainable: &Trainable,
    objective: &dyn Objective,
    inp: &TrainInputs,
    mut hook: Option<&mut dyn EvalHook>,
    metrics_path: &Path,
    eval_path: &Path,
    buckets_path: &Path,
) -> Result<TrainOutcome> {
    let cfg = inp.cfg;
    let mut metrics = csv::Writer::from_path(metrics_path).map_err(|e| Error::data(metrics_path, e.to_string()))?;
    let mut eval_csv = csv_writer(eval_path, "step,metric,value")?;
    let mut dead = DeadWatch::new(cfg, model.cfg.vocab_size);
    let mut opt = AdamW::new(trainable, AdamWParams { beta1: cfg.beta1, beta2: cfg.beta2, eps: cfg.adam_eps, weight_decay: cfg.weight_decay })?;
    let mut accum = GradAccum::new(trainable);
    let single = Dist::single();
    let dist = inp.dist.unwrap_or(&single);
    let main = dist.is_main();
    let mut graph = match inp.launch {
        StepLaunch::CudaGraph if dist.world > 1 => {
            return Err(Error::config("train.launch", "\"cuda_graph\" is not supported in a data-parallel run: use \"eager\""));
        }
        StepLaunch::CudaGraph => {
            let rows = cfg.micro_batch * objective.rows_per_sequence();
            let shape = FixedShape::for_examples(inp.train, rows).ok_or_else(|| Error::msg("the training split is empty"))?;
            Some(GraphStep::new(&accum, shape, inp.pad_id, true)?)
        }
        StepLaunch::Auto | StepLaunch::Eager => None,
    };
    let mut order = Order::new(inp.train.len(), inp.seed);
    let bar = if cfg.progress { indicatif::ProgressBar::new(inp.total_steps) } else { indicatif::ProgressBar::hidden() };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} {bar:30.cyan/blue} {pos}/{len} {msg} [{elapsed_precise} < {eta_precise}]")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(objective.name());
    let start = Instant::now();
    let (mut losses, mut total_tokens) = (Vec::with_capacity(inp.total_steps as usize), 0usize);
    // created at the first step that has buckets (AR never writes it)
    let mut buckets_csv: Option<csv::Writer<std::fs::File>> = None;
    let mut window: Option<TBuckets> = None;
    let mut evaluate = |step: u64, model: &Llama, hook: &mut Option<&mut dyn EvalHook>| -> Result<(Option<f64>, Option<f64>)> {
        let mut rows = Vec::new();
        let mut dl = (None, None);
        if !inp.dev.is_empty() && cfg.dev_loss_batches > 0 {
            let reader = inp.reader.unwrap_or(objective);
            let last = inp.total_steps.saturating_sub(1);
            let (l, ce, acc) = dev_loss(model, reader, inp.dev, cfg.micro_batch, cfg.dev_loss_batches, inp.seed, inp.pad_id, last)?;
            let nll = dev_nll(model, reader, inp.dev, cfg.micro_batch, cfg.dev_loss_batches, inp.seed, inp.pad_id, last)?;
            rows.extend([("dev_loss".to_string(), l), ("dev_nll".to_string(), nll), ("dev_ce".to_string(), ce), ("dev_token_acc".to_string(), acc)]);
            dl = (Some(l), Some(nll));
        }
        if let Some(h) = hook.as_mut() {
            rows.extend(h.evaluate(step, model)?);
        }
        for (k, v) in rows {
            writeln!(eval_csv, "{step},{k},{v}").map_err(|e| Error::io(eval_path, e))?;
        }
        eval_csv.flush().map_err(|e| Error::io(eval_path, e))?;
        Ok(dl)
    };
    for step in 0..inp.total_steps {
        if inp.stop.is_some_and(|s| s.load(Ordering::SeqCst)) {
            bar.abandon_with_message("interrupted");
            return Err(Error::Interrupted);
        }
        let t0 = Instant::now();
        let lr = lr_at(step, inp.total_steps, cfg.lr, cfg.warmup_steps, cfg.min_lr_ratio);
        // 1. prepare every micro-batch and sum the normaliser over the accumulated batch.
        let mut prepared = Vec::with_capacity(cfg.grad_accum);
        let mut step_tokens = 0usize;
        for micro in 0..cfg.grad_accum {
            // every rank draws the global micro-batch and trains on its share of the rows
            let idx = order.next_batch(cfg.micro_batch * dist.world);
            let refs: Vec<&Example> = idx[dist.share(idx.len(), cfg.micro_batch)].iter().map(|&i| &inp.train[i]).collect();
            let batch = Batch::collate(&refs, inp.pad_id);
            step_tokens += batch.len.iter().sum::<usize>();
            // masks and t are drawn per rank (one process: the micro index itself)
            let p = objective.prepare(&batch, step, (micro * dist.world + dist.rank) as u64, inp.seed)?;
            prepared.push(if cfg.pack_to > 0 { crate::objective::pack::pack(&p, cfg.pack_to, inp.seed)?.0 } else { p });
        }
        // 2. forward/backward each micro-batch with the shared normaliser, clip and update.
        let sc = StepCtx { seed: inp.seed, step, accum: &mut accum, opt: &mut opt, lr, max_grad_norm: cfg.max_grad_norm, graph: graph.as_mut(), dist: Some(dist) };
        let v = match train_step(model, &prepared, sc) {
            Ok(v) => v,
            Err(e) => {
                if let Error::Diverged { step, .. } = &e {
                    bar.abandon_with_message(format!("diverged at step {step}"));
                }
                return Err(e);
            }
        };
        let (loss, ce, scored, correct, grad_norm) = (v.loss, v.ce_sum, v.n_scored, v.n_correct, v.grad_norm);
        let dt = t0.elapsed().as_secs_f64();
        total_tokens += step_tokens;
        losses.push(loss);
        let m = StepMetrics {
            step: step + 1,
            epoch: order.epoch_progress(),
            lr,
            loss,
            ce: ce / scored.max(1) as f64,
            token_acc: correct as f64 / scored.max(1) as f64,
            grad_norm,
            scored_tokens: scored,
            tokens: step_tokens,
            tokens_per_s: step_tokens as f64 / dt.max(1e-9),
            elapsed_s: start.elapsed().as_secs_f64(),
        };
        let dead_reason = dead.observe(step + 1, grad_norm, m.ce, scored);
        window = TBuckets::merge(window, v.buckets);
        // the last row of a dead run is written, so its curve shows where it stopped
        if (step + 1) % cfg.log_every == 0 || step + 1 == inp.total_steps || dead_reason.is_some() {
            metrics.serialize(&m).map_err(|e| Error::data(metrics_path, e.to_string()))?;
            metrics.flush().map_err(|e| Error::io(metrics_path, e))?;
            if let Some(b) = window.take() {
                if buckets_csv.is_none() {
                    buckets_csv = Some(csv::Writer::from_path(buckets_path).map_err(|e| Error::data(buckets_path, e.to_string()))?);
                }
                if let Some(w) = buckets_csv.as_mut() {
                    for row in bucket_rows(step + 1, &b) {
                        w.serialize(&row).map_err(|e| Error::data(buckets_path, e.to_string()))?;
                    }
                    w.flush().map_err(|e| Error::io(buckets_path, e))?;
                }
            }
        }
        if let Some(reason) = dead_reason {
            bar.abandon_with_message(format!("dead at step {}", step + 1));
            return Err(Error::Diverged { step: step + 1, reason });
        }
        bar.set_message(format!("loss {:.4} ce {:.3} {:.0} tok/s", m.loss, m.ce, m.tokens_per_s));
        bar.inc(1);
        let s1 = step + 1;
        // rank 0 alone saves and evaluates (the others wait for it at the next all-reduce)
        if main && cfg.save_every > 0 && s1 % cfg.save_every == 0 && s1 != inp.total_steps {
            trainable.save(&inp.checkpoint_dir.join(format!("step-{s1:06}.safetensors")))?;
        }
        if main && cfg.eval_every > 0 && s1 % cfg.eval_every == 0 && s1 != inp.total_steps {
            evaluate(s1, model, &mut hook)?;
        }
    }
    if dist.world > 1 {
        // every rank holds the same weights, or the run is wrong
        let sum = super::dist::checksum(accum.params())?;
        let same = dist.same_everywhere(sum, &accum.device())?;
        let record = serde_json::json!({"rank": dist.rank, "world_size": dist.world, "param_checksum": sum, "same_on_every_rank": same});
        crate::run::write_json(&inp.run_dir.join("ranks.json"), &record)?;
        if !same {
            return Err(Error::msg(format!("rank {}: the trained parameters differ between ranks (checksum {sum})", dist.rank)));
        }
    }
    let (dev_final, dev_nll_final) = if main { evaluate(inp.total_steps, model, &mut hook)? } else { (None, None) };
    trainable.save(&inp.checkpoint_dir.join(ddm_schema::RunDir::ADAPTER))?;
    bar.finish_with_message(format!("loss {:.4}", losses.last().copied().unwrap_or(f64::NAN)));
    let wall = start.elapsed().as_secs_f64();
    let tail = (losses.len() / 10).max(1);
    let final_loss = losses[losses.len() - tail..].iter().sum::<f64>() / tail as f64;
    Ok(TrainOutcome {
        steps: inp.total_steps,
        final_loss,
        first_loss: losses.first().copied().unwrap_or(f64::NAN),
        tokens_per_s: total_tokens as f64 / wall.max(1e-9),
        wall_s: wall,
        trainable_params: trainable.numel(),
        dev_loss: dev_final,
        dev_nll: dev_nll_final,
    })
}
