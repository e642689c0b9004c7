//! Throughput benchmarks: training steps (ddm and AR × LoRA and full fine-tuning × batch sizes)
//! at the SmolLM2-135M shape, and decoding with each sampler. Random weights: throughput does not
//! depend on their values. Results are data (JSON lines); `bench/table.py`-free rendering lives in
//! [`crate::report`].
//!
//! `--arch` picks the model shape from [`ARCHS`]. The big shapes (SmolLM2-1.7B, LLaMA-2-7B) are
//! measured at ddm-sft, LoRA 16, seq 1,024 by a largest-batch search ([`largest_batch_search`]:
//! batch 1, 2, 4, … up to `--max-batch` until a step fails, each tried batch a row of
//! `candle.jsonl`, a failure an error row), with [`BIG_WARMUP`] warm-up and [`BIG_STEPS`] timed
//! steps by default; their packing and decoding benches run only when `--only` names them
//! (`pack`, `decode`). Every training row records `arch`, the shape's name.
//!
//! Decoding (`decode.jsonl`, one [`DecodeBench`] per line): at each batch size b (1, 16 and 64,
//! the batch sizes of `shared/reference/torch_decode_anchor.py`; 1 and 2 with `--quick`), b
//! prompts of 256 tokens and a budget of 32 new tokens, decoded b per forward pass by each
//! diffusion strategy (32 steps, full attention; `low_confidence` and `threshold` also with the
//! prefix KV cache, rows `…-prefix-cache`), as a block-diffusion model decodes (blocks of 4
//! under the block-causal reading, rows `diffusion-blocks4-…`, with and without the cache, which
//! is exact there) and by batched AR with the KV cache, each call timed
//! the same way after a warm-up call. Fields: `sampler`, `items`, `batch_size`,
//! `prompt_len`, `new_tokens`, `steps`, `tokens_per_s` (generated tokens excluding eos / wall
//! seconds of the decode call), `mean_nfe` (forward passes per answer), `generated_tokens`,
//! `mean_gen_len` (mean generated length, eos excluded), `eos_rate`, `wall_s`.

use crate::config::{ObjectiveConfig, TrainConfig};
use crate::model::load::random_model_dtype;
use crate::model::lora::{AdapterConfig, AdapterKind};
use crate::model::params::Fwd;
use crate::model::mask::AttentionMode;
use crate::model::{LayerPath, Llama, LlamaConfig};
use crate::objective::{Batch, Example};
use crate::rng::{rng_for, Purpose};
use crate::sample::{ArSampler, CacheKind, DiffusionSampler, ModelDenoiser, Strategy};
use crate::train::graph::{GraphStep, StepLaunch};
use crate::train::optim::{AdamW, AdamWParams, GradAccum};
use crate::train::step::{self as phase, train_step, StepCtx};
use crate::Result;
use candle_core::{DType, Device};
use rand::Rng;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// SmolLM2-135M's shape.
pub fn smollm2_135m() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_hidden_layers: 30,
        num_attention_heads: 9,
        num_key_value_heads: Some(3),
        rms_norm_eps: 1e-5,
        rope_theta: 100_000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        qkv_bias: false,
        head_dim: None,
        qk_norm: false,
        model_type: None,
    }
}

/// SmolLM2-1.7B's shape (multi-head attention: 32 KV heads, tied embeddings).
pub fn smollm2_1_7b() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 49152,
        hidden_size: 2048,
        intermediate_size: 8192,
        num_hidden_layers: 24,
        num_attention_heads: 32,
        num_key_value_heads: Some(32),
        rms_norm_eps: 1e-5,
        rope_theta: 130_000.0,
        max_position_embeddings: 8192,
        tie_word_embeddings: true,
        // no biases, head_dim = hidden / heads, no qk norm
        ..smollm2_135m()
    }
}

/// LLaMA-2-7B's shape (multi-head attention, an untied LM head).
pub fn llama2_7b() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 32000,
        hidden_size: 4096,
        intermediate_size: 11008,
        num_hidden_layers: 32,
        num_attention_heads: 32,
        num_key_value_heads: Some(32),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 4096,
        tie_word_embeddings: false,
        // no biases, head_dim = hidden / heads, no qk norm
        ..smollm2_135m()
    }
}

/// The tiny shape of `--quick` runs (CPU checks of the bench code).
fn quick_arch() -> LlamaConfig {
    LlamaConfig { num_hidden_layers: 2, hidden_size: 64, intermediate_size: 128, num_attention_heads: 4, num_key_value_heads: Some(2), vocab_size: 512, ..smollm2_135m() }
}

/// A model shape of `harness bench --arch`.
#[derive(Debug, Clone, Copy)]
pub struct Arch {
    /// The `--arch` name (recorded as `arch` in each row and in env.json).
    pub name: &'static str,
    /// The shape.
    pub config: fn() -> LlamaConfig,
    /// Measured by the largest-batch search at ddm, LoRA [`BIG_RANK`], seq [`BIG_SEQ`] (instead
    /// of the SmolLM2-135M grid); packing and decoding only when `--only` names them.
    pub big: bool,
    /// Titles of its tables in `harness bench-table` (big shapes; the others share `training`).
    pub training_title: &'static str,
    /// Title of its largest-batch table.
    pub fit_title: &'static str,
}

/// The shapes `--arch` knows; the first is the default.
pub const ARCHS: &[Arch] = &[
    Arch { name: "smollm2-135m", config: smollm2_135m, big: false, training_title: "training", fit_title: "largest batch" },
    Arch { name: "smollm2-1.7b", config: smollm2_1_7b, big: true, training_title: "training (smollm2-1.7b)", fit_title: "largest batch (smollm2-1.7b)" },
    Arch { name: "llama2-7b", config: llama2_7b, big: true, training_title: "training (llama2-7b)", fit_title: "largest batch (llama2-7b)" },
];

/// The `arch` of `--quick` rows (the tiny shape, whatever `--arch` says).
pub const QUICK_ARCH: &str = "tiny";
/// LoRA rank of the big shapes' rows.
pub const BIG_RANK: usize = 16;
/// Sequence length of the big shapes' rows.
pub const BIG_SEQ: usize = 1024;
/// Warm-up steps of the big shapes' rows (a 7B step at batch 64 takes seconds).
pub const BIG_WARMUP: usize = 2;
/// Timed steps of the big shapes' rows unless `--steps` says otherwise.
pub const BIG_STEPS: usize = 3;
/// Models with more parameters than this draw their random weights on the device
/// ([`bench_model`]).
const DEVICE_INIT_PARAMS: f64 = 1e9;

/// The shape named `name`, or an error listing the names.
pub fn arch_by_name(name: &str) -> Result<&'static Arch> {
    ARCHS.iter().find(|a| a.name == name).ok_or_else(|| {
        let names: Vec<&str> = ARCHS.iter().map(|a| a.name).collect();
        crate::Error::config("--arch", format!("unknown `{name}`; choose from {}", names.join(", ")))
    })
}

/// The name of `cfg` in [`ARCHS`], [`QUICK_ARCH`] for the `--quick` shape, else `custom`.
pub fn arch_name(cfg: &LlamaConfig) -> &'static str {
    match ARCHS.iter().find(|a| &(a.config)() == cfg) {
        Some(a) => a.name,
        None if cfg == &quick_arch() => QUICK_ARCH,
        None => "custom",
    }
}

/// Parameters of `cfg` (embedding, LM head when untied, the layers' matrices; norms left out).
fn approx_params(cfg: &LlamaConfig) -> f64 {
    let (d, f) = (cfg.hidden_size as f64, cfg.intermediate_size as f64);
    let (q, kv) = (cfg.q_width() as f64, (cfg.kv_heads() * cfg.head_dim()) as f64);
    let heads = if cfg.tie_word_embeddings { 1.0 } else { 2.0 };
    heads * cfg.vocab_size as f64 * d + cfg.num_hidden_layers as f64 * (2.0 * d * q + 2.0 * d * kv + 3.0 * d * f)
}

/// Batch sizes of the largest-batch search: 1, 2, 4, … while at most `max_batch`.
pub fn batch_ladder(max_batch: usize) -> Vec<usize> {
    std::iter::successors(Some(1usize), |b| b.checked_mul(2)).take_while(|&b| b <= max_batch).collect()
}

/// What a largest-batch search tried: each batch size with its outcome, in order; only the last
/// can be a failure (the search stops there).
pub struct BatchSearch<T> {
    /// (batch size, outcome) of each try.
    pub tried: Vec<(usize, Result<T>)>,
}

impl<T> BatchSearch<T> {
    /// The largest batch that ran, if any did.
    pub fn largest_fit(&self) -> Option<usize> {
        self.tried.iter().filter(|(_, r)| r.is_ok()).map(|(b, _)| *b).max()
    }
}

/// Run `row` at batch 1, 2, 4, … ([`batch_ladder`]) until one fails (out of memory, typically) or
/// the ladder ends. `row` owns whatever it allocates: by the time it returns, a failed
/// configuration's tensors are dropped, so the next try (or the rest of the run) has the memory.
pub fn largest_batch_search<T>(max_batch: usize, mut row: impl FnMut(usize) -> Result<T>) -> BatchSearch<T> {
    let mut tried = Vec::new();
    for b in batch_ladder(max_batch) {
        let r = row(b);
        let failed = r.is_err();
        tried.push((b, r));
        if failed {
            break;
        }
    }
    BatchSearch { tried }
}

/// Random weights drawn where they live, N(0, 0.02²) and norms 1 (as [`random_model_dtype`]
/// draws them on the host, one value at a time: about a minute per configuration at 7B).
struct DeviceInit;

impl candle_nn::var_builder::SimpleBackend for DeviceInit {
    fn get(&self, s: candle_core::Shape, name: &str, _: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<candle_core::Tensor> {
        if name.ends_with("norm.weight") {
            candle_core::Tensor::ones(s, dtype, dev)
        } else {
            candle_core::Tensor::randn(0f32, 0.02, s, dev)?.to_dtype(dtype)
        }
    }
    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> candle_core::Result<candle_core::Tensor> {
        candle_core::bail!("bench device init: `{name}` asked for without a shape")
    }
    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}

/// The bench's random model of `opts.arch` with `adapter`: [`random_model_dtype`] (seeded, drawn
/// on the host) up to [`DEVICE_INIT_PARAMS`] parameters, above that drawn on the device
/// ([`DeviceInit`]), so a 7B configuration builds in about a second.
fn bench_model(opts: &BenchOpts, adapter: &AdapterConfig) -> Result<(Llama, crate::model::Trainable)> {
    if approx_params(&opts.arch) <= DEVICE_INIT_PARAMS {
        return random_model_dtype(&opts.arch, adapter, 0, opts.dtype, &opts.device);
    }
    let vb = candle_nn::VarBuilder::from_backend(Box::new(DeviceInit), opts.dtype, opts.device.clone());
    Llama::load(vb, &opts.arch, &crate::model::BuildOpts { adapter, seed: 0, layer_path: LayerPath::Fused, time_embedding: false })
}

/// One training-throughput measurement.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainBench {
    /// Always `candle`.
    pub impl_name: String,
    /// The model shape's name ([`ARCHS`], `tiny` for `--quick`; absent in files written before
    /// this field existed: `smollm2-135m`).
    #[serde(default)]
    pub arch: String,
    /// How training ran each decoder layer (`model.layer_path`; absent in files written before
    /// this field existed).
    #[serde(default)]
    pub layer_path: LayerPath,
    /// `ddm` or `ar`.
    pub objective: String,
    /// LoRA rank, 0 for full fine-tuning.
    pub lora_rank: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Sequence length.
    pub seq: usize,
    /// Mean milliseconds per optimizer step.
    pub ms_per_step: f64,
    /// Tokens (batch × seq) per second.
    pub tokens_per_s: f64,
    /// Peak device memory allocated during the measured steps, GiB: on CUDA the high-water mark
    /// of the allocator's pool (what `torch.cuda.max_memory_allocated` reports on the torch
    /// side), else the driver's used memory after the forward and the backward pass; 0 on CPU.
    pub peak_mem_gib: f64,
    /// Model FLOPs utilisation: 3 × forward matmul FLOPs per token × tokens/s ÷ peak.
    pub mfu: Option<f64>,
    /// Trainable parameters.
    pub trainable_params: usize,
    /// Last loss (sanity).
    pub loss: f64,
    /// Whether changing the last token changes position 0's output (full attention check).
    pub future_token_changes_pos0: bool,
    /// Device description.
    pub device: String,
    /// How the steps were launched (`eager` in files written before CUDA graphs existed).
    #[serde(default = "eager")]
    pub launch: StepLaunch,
    /// With CUDA graphs: graphs captured during the timed steps (each costs about two eager
    /// steps; a new LM-head row bucket is captured the first time a step needs it; the warm-up
    /// runs until 5 steps in a row captured nothing, at most 40 steps); absent for eager rows
    /// and in older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub graph_captures_timed: Option<usize>,
    /// Where a step's time goes, from separate steps with a device synchronisation after each
    /// phase (absent in files written before this field existed).
    #[serde(default)]
    pub phases: Option<Phases>,
}

fn eager() -> StepLaunch {
    StepLaunch::Eager
}

/// Milliseconds of one training step by phase (each phase ends with a device synchronisation).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Phases {
    /// Corruption, forward pass and loss ([`crate::train::step::forward`]).
    pub forward_ms: f64,
    /// Backward pass and gradient accumulation ([`crate::train::step::backward`]).
    pub backward_ms: f64,
    /// Gradient norm, clipping and the AdamW update ([`crate::train::step::update`]).
    pub optimizer_ms: f64,
    /// Host time to enqueue forward + backward without waiting for the device: when it is close
    /// to forward + backward, the step is bound by the host (kernel launches), not the GPU.
    pub enqueue_ms: f64,
}

/// One decoding-throughput measurement: one call of a sampler on `items` prompts of
/// `prompt_len` tokens, `batch_size` prompts per forward pass, timed on the device (synchronised
/// before and after) after one untimed warm-up call on the same prompts. Diffusion and AR rows are
/// measured the same way, at the same batch sizes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DecodeBench {
    /// `diffusion-low_confidence`, `diffusion-random`, `diffusion-threshold` (full attention, no
    /// cache), `diffusion-low_confidence-prefix-cache`, `diffusion-threshold-prefix-cache` (the
    /// same with the prefix KV cache, `eval.cache = "prefix"`: one block, so the prompt's keys and
    /// values are computed at the first step and reused by the others) or `ar-greedy-kv-cache`
    /// (batched, left-padded, KV cache).
    pub sampler: String,
    /// Prompts decoded.
    pub items: usize,
    /// Prompts per forward pass (absent in files written before this field existed: those decoded
    /// diffusion with every item in one batch and AR one prompt at a time).
    #[serde(default)]
    pub batch_size: Option<usize>,
    /// Prompt length.
    pub prompt_len: usize,
    /// Token budget per item (diffusion: canvas length).
    pub new_tokens: usize,
    /// Denoising steps (diffusion; AR: the token budget).
    pub steps: usize,
    /// Generated tokens, eos excluded, over the wall seconds of the decode call. (Files written
    /// before `generated_tokens` existed counted the whole canvas for diffusion and the eos for AR.)
    pub tokens_per_s: f64,
    /// Mean forward passes per item (NFE; AR: the prompt pass included).
    pub mean_nfe: f64,
    /// Generated tokens over all items, eos excluded.
    #[serde(default)]
    pub generated_tokens: usize,
    /// Mean generated length per item, eos excluded.
    #[serde(default)]
    pub mean_gen_len: f64,
    /// Fraction of items that stopped at an eos.
    #[serde(default)]
    pub eos_rate: f64,
    /// Seconds of the timed decode call.
    pub wall_s: f64,
}

impl DecodeBench {
    /// The row of one timed call: per item (generated tokens excluding eos, NFE, hit eos).
    fn from_items(sampler: String, batch_size: usize, shape: (usize, usize, usize), per_item: &[(usize, usize, bool)], wall: f64) -> Self {
        let (prompt_len, new_tokens, steps) = shape;
        let n = per_item.len().max(1) as f64;
        let gen: usize = per_item.iter().map(|x| x.0).sum();
        Self {
            sampler,
            items: per_item.len(),
            batch_size: Some(batch_size),
            prompt_len,
            new_tokens,
            steps,
            tokens_per_s: gen as f64 / wall.max(1e-9),
            mean_nfe: per_item.iter().map(|x| x.1).sum::<usize>() as f64 / n,
            generated_tokens: gen,
            mean_gen_len: gen as f64 / n,
            eos_rate: per_item.iter().filter(|x| x.2).count() as f64 / n,
            wall_s: wall,
        }
    }
}

/// One training shape of the bench.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Sequence length.
    pub seq: usize,
    /// Sequences per step.
    pub batch: usize,
    /// Measured for the diffusion objective only (the study shape: the studies train ddm-SFT and
    /// AR-SFT at the same shape, and the AR rows at seq 512 already show the objectives' gap).
    pub ddm_only: bool,
}

/// Bench settings.
#[derive(Debug, Clone)]
pub struct BenchOpts {
    /// Model shape.
    pub arch: LlamaConfig,
    /// Training shapes (sequence length, batch size), each measured for every objective and rank
    /// of `ranks` unless `ddm_only` lists it.
    pub shapes: Vec<Shape>,
    /// LoRA ranks (0 = full fine-tuning).
    pub ranks: Vec<usize>,
    /// Warm-up steps.
    pub warmup: usize,
    /// Timed steps.
    pub steps: usize,
    /// Peak dense bf16 FLOP/s of the device for MFU (None: no MFU).
    pub peak_flops: Option<f64>,
    /// Device.
    pub device: Device,
    /// Dtype.
    pub dtype: DType,
    /// How the training steps are launched; each training row is measured once per entry.
    pub launches: Vec<StepLaunch>,
}

fn random_examples(n: usize, seq: usize, vocab: usize, seed: u64) -> Vec<Example> {
    let mut rng = rng_for(seed, Purpose::Init, 77, 0);
    (0..n)
        .map(|_| {
            let toks: Vec<u32> = (0..seq).map(|_| rng.random_range(3..vocab as u32)).collect();
            Example { prompt: toks[..seq / 2].to_vec(), response: toks[seq / 2..].to_vec() }
        })
        .collect()
}

const GIB: f64 = (1u64 << 30) as f64;

/// One training configuration of the bench, built the same way for the timed rows
/// ([`train_step_bench`]) and the profile ([`step_profile`]): random weights, the objective at
/// its defaults (diffusion: shifted, uniform t, full attention from the first step), AdamW and
/// one fixed random batch of `batch` × `seq` tokens.
struct TrainSetup {
    model: Llama,
    trainable_params: usize,
    obj: Box<dyn crate::objective::Objective>,
    opt: AdamW,
    acc: GradAccum,
    batch: Batch,
    graph: Option<GraphStep>,
    /// `train.pack_to` (0 = the padded rows).
    pack_to: usize,
}

impl TrainSetup {
    fn new(opts: &BenchOpts, objective: &str, rank: usize, batch: usize, seq: usize, launch: StepLaunch) -> Result<Self> {
        Self::from_data(opts, objective, rank, random_examples(batch, seq, opts.arch.vocab_size, 1), launch, 0)
    }

    /// The setup on the micro-batch `data` (one micro-batch per step), packed to `pack_to`
    /// columns per row when it is not 0.
    fn from_data(opts: &BenchOpts, objective: &str, rank: usize, data: Vec<Example>, launch: StepLaunch, pack_to: usize) -> Result<Self> {
        let adapter = if rank == 0 {
            AdapterConfig { kind: AdapterKind::Full, ..Default::default() }
        } else {
            AdapterConfig { rank, alpha: 2.0 * rank as f64, ..Default::default() }
        };
        let (model, tr) = bench_model(opts, &adapter)?;
        let cfg = if objective == "ddm" { ObjectiveConfig::default() } else { ObjectiveConfig::Autoregressive };
        let tc = TrainConfig::default();
        let opt = AdamW::new(&tr, AdamWParams { beta1: tc.beta1, beta2: tc.beta2, eps: tc.adam_eps, weight_decay: 0.0 })?;
        let acc = GradAccum::new(&tr);
        let refs: Vec<&Example> = data.iter().collect();
        let batch = Batch::collate(&refs, 0);
        let graph = match launch {
            StepLaunch::CudaGraph => {
                let shape = crate::objective::FixedShape::for_examples(&data, batch.b).ok_or_else(|| crate::Error::msg("no bench examples"))?;
                Some(GraphStep::new(&acc, shape, 0, true)?)
            }
            StepLaunch::Auto | StepLaunch::Eager => None,
        };
        Ok(Self { model, trainable_params: tr.numel(), obj: crate::objective::build(&cfg, 0), opt, acc, batch, graph, pack_to })
    }

    /// Optimizer step `step` through [`train_step`], as the trainer runs it; its loss.
    fn step(&mut self, step: usize) -> Result<f64> {
        let mut p = self.obj.prepare(&self.batch, step as u64, 0, 0)?;
        if self.pack_to > 0 {
            p = crate::objective::pack::pack(&p, self.pack_to, 0)?.0;
        }
        let sc = StepCtx { seed: 0, step: step as u64, accum: &mut self.acc, opt: &mut self.opt, lr: 1e-4, max_grad_norm: 1.0, graph: self.graph.as_mut(), dist: None };
        Ok(train_step(&self.model, std::slice::from_ref(&p), sc)?.loss)
    }
}

/// Warm up `su` and time `opts.steps` steps: (seconds per step, last loss, steps run, graphs
/// captured during the timed steps). Warm-up: `opts.warmup` steps, and with CUDA graphs until
/// no step has captured a new graph for GRAPH_SETTLE steps (at most GRAPH_WARMUP_MAX), so the
/// timed steps are replays, as nearly all of a long run's are (torch.compile's compile steps are
/// left out the same way).
fn timed_steps(opts: &BenchOpts, su: &mut TrainSetup) -> Result<(f64, f64, usize, Option<usize>)> {
    const GRAPH_SETTLE: usize = 5;
    const GRAPH_WARMUP_MAX: usize = 40;
    let captured = |su: &TrainSetup| su.graph.as_ref().map_or(0, |g| g.captured);
    let (mut step, mut last_capture, mut loss) = (0usize, 0usize, 0.0);
    while step < opts.warmup || (su.graph.is_some() && step - last_capture < GRAPH_SETTLE && step < GRAPH_WARMUP_MAX) {
        let before = captured(su);
        loss = su.step(step)?;
        if captured(su) > before {
            last_capture = step + 1;
        }
        step += 1;
    }
    opts.device.synchronize()?;
    let captured_before = captured(su);
    let t0 = Instant::now();
    for k in 0..opts.steps {
        loss = su.step(step + k)?;
    }
    let graph_captures_timed = su.graph.as_ref().map(|g| g.captured - captured_before);
    opts.device.synchronize()?;
    Ok((t0.elapsed().as_secs_f64() / opts.steps as f64, loss, step, graph_captures_timed))
}

/// Measure one training configuration.
pub fn train_step_bench(opts: &BenchOpts, objective: &str, rank: usize, batch: usize, seq: usize, launch: StepLaunch) -> Result<TrainBench> {
    crate::device::peak_allocated(&opts.device, true); // a new high-water mark for this configuration
    let mut su = TrainSetup::new(opts, objective, rank, batch, seq, launch)?;
    let future = future_token_check(&su.model, su.obj.eval_attention())?;
    let mut peak: f64 = 0.0;
    let (dt, loss, step, graph_captures_timed) = timed_steps(opts, &mut su)?;
    // phase profile: three more steps through the step's phases, synchronising after each
    let mut ph = [0f64; 4];
    // (a captured step has no phases to time apart; its peak is the pool's high-water mark)
    let reps = if su.graph.is_some() { 0 } else { 3 };
    for rep in 0..reps {
        let step = (step + opts.steps + rep) as u64;
        let t = Instant::now();
        let p = su.obj.prepare(&su.batch, step, 0, 0)?;
        let parts = phase::forward(&su.model, &p, p.denom, 0, step, 0)?;
        let t_fwd_enq = t.elapsed().as_secs_f64();
        opts.device.synchronize()?;
        peak = peak.max(crate::device::driver_used(&opts.device).unwrap_or(0) as f64 / GIB);
        let t1 = Instant::now();
        phase::backward(&parts, &mut su.acc)?;
        let t_bwd_enq = t1.elapsed().as_secs_f64();
        opts.device.synchronize()?;
        peak = peak.max(crate::device::driver_used(&opts.device).unwrap_or(0) as f64 / GIB);
        let t2 = Instant::now();
        phase::update(&mut su.acc, &mut su.opt, 1e-4, 1.0, step)?;
        opts.device.synchronize()?;
        let t3 = t2.elapsed().as_secs_f64();
        ph[0] += t1.duration_since(t).as_secs_f64();
        ph[1] += t2.duration_since(t1).as_secs_f64();
        ph[2] += t3;
        ph[3] += t_fwd_enq + t_bwd_enq;
    }
    if let Some(bytes) = crate::device::peak_allocated(&opts.device, false) {
        peak = bytes as f64 / GIB;
    }
    let ms = |x: f64| x * 1e3 / reps as f64;
    let phases = (reps > 0).then(|| Phases { forward_ms: ms(ph[0]), backward_ms: ms(ph[1]), optimizer_ms: ms(ph[2]), enqueue_ms: ms(ph[3]) });
    let tps = (batch * seq) as f64 / dt;
    let mfu = opts.peak_flops.map(|p| 3.0 * opts.arch.forward_flops_per_token(seq) * tps / p);
    Ok(TrainBench {
        impl_name: "candle".into(),
        arch: arch_name(&opts.arch).into(),
        layer_path: su.model.layer_path(),
        objective: objective.into(),
        lora_rank: rank,
        batch,
        seq,
        ms_per_step: dt * 1e3,
        tokens_per_s: tps,
        peak_mem_gib: peak,
        mfu,
        trainable_params: su.trainable_params,
        loss,
        future_token_changes_pos0: future,
        device: format!("{:?}", opts.device.location()),
        launch: if su.graph.is_some() { StepLaunch::CudaGraph } else { StepLaunch::Eager },
        graph_captures_timed,
        phases,
    })
}

/// One packed-vs-padded training measurement (`packing.jsonl`): ddm-sft, LoRA 16, one
/// micro-batch of `pairs` sequences of clinical-rules-like lengths per step, laid out padded
/// (each pair its own row, padded to the longest) or packed (`train.pack_to`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PackBench {
    /// `padded` or `packed`.
    pub layout: String,
    /// `train.pack_to` (0 for padded rows).
    pub pack_to: usize,
    /// How the steps were launched.
    pub launch: StepLaunch,
    /// Pairs per step.
    pub pairs: usize,
    /// Rows of the laid-out micro-batch.
    pub rows: usize,
    /// Columns per row.
    pub width: usize,
    /// Real tokens per step (the pairs' own, no padding).
    pub real_tokens: usize,
    /// Mean milliseconds per optimizer step.
    pub ms_per_step: f64,
    /// Real tokens per second: the figure to compare.
    pub real_tokens_per_s: f64,
    /// Columns (rows × width, padding included) per second.
    pub columns_per_s: f64,
    /// Peak device memory of the measured steps, GiB (0 on CPU).
    pub peak_mem_gib: f64,
    /// Last loss (sanity).
    pub loss: f64,
    /// Device description.
    pub device: String,
}

/// `n` pairs of lengths uniform in `[lo, hi]` tokens, the prompt three quarters of each (the
/// shape of clinical-rules rows with rationale answers), random tokens.
fn varied_examples(n: usize, (lo, hi): (usize, usize), vocab: usize, seed: u64) -> Vec<Example> {
    let mut rng = rng_for(seed, Purpose::Init, 78, 0);
    (0..n)
        .map(|_| {
            let len = rng.random_range(lo..=hi);
            let toks: Vec<u32> = (0..len).map(|_| rng.random_range(3..vocab as u32)).collect();
            let p = len * 3 / 4;
            Example { prompt: toks[..p].to_vec(), response: toks[p..].to_vec() }
        })
        .collect()
}

/// Packed vs padded training throughput at the clinical-rules shape: the same `pairs` pairs
/// (lengths in `lens`) per step, padded (eager, and as a CUDA graph on CUDA) and packed to each
/// of `capacities` (eager: a packed batch changes shape from step to step).
pub fn pack_bench(opts: &BenchOpts, pairs: usize, lens: (usize, usize), capacities: &[usize]) -> Result<Vec<PackBench>> {
    let data = varied_examples(pairs, lens, opts.arch.vocab_size, 3);
    let real: usize = data.iter().map(|e| e.prompt.len() + e.response.len()).sum();
    let mut layouts: Vec<(usize, StepLaunch)> = vec![(0, StepLaunch::Eager)];
    if opts.device.is_cuda() {
        layouts.push((0, StepLaunch::CudaGraph));
    }
    layouts.extend(capacities.iter().map(|&c| (c, StepLaunch::Eager)));
    let mut out = Vec::new();
    for (pack_to, launch) in layouts {
        crate::device::peak_allocated(&opts.device, true);
        let mut su = TrainSetup::from_data(opts, "ddm", 16, data.clone(), launch, pack_to)?;
        let (rows, width) = if pack_to > 0 {
            let p = su.obj.prepare(&su.batch, 0, 0, 0)?;
            let q = crate::objective::pack::pack(&p, pack_to, 0)?.0;
            (q.b, q.l)
        } else {
            (su.batch.b, su.batch.l)
        };
        let (dt, loss, _, _) = timed_steps(opts, &mut su)?;
        let peak = crate::device::peak_allocated(&opts.device, false).map_or(0.0, |b| b as f64 / GIB);
        out.push(PackBench {
            layout: if pack_to > 0 { "packed" } else { "padded" }.into(),
            pack_to,
            launch: if su.graph.is_some() { StepLaunch::CudaGraph } else { StepLaunch::Eager },
            pairs,
            rows,
            width,
            real_tokens: real,
            ms_per_step: dt * 1e3,
            real_tokens_per_s: real as f64 / dt,
            columns_per_s: (rows * width) as f64 / dt,
            peak_mem_gib: peak,
            loss,
            device: format!("{:?}", opts.device.location()),
        });
    }
    Ok(out)
}

/// Does the output at position 0 change when the last token changes (full attention)?
pub fn future_token_check(model: &Llama, mode: AttentionMode) -> Result<bool> {
    let ids: Vec<u32> = (0..32u32).map(|i| 3 + i * 7).collect();
    let mut ids2 = ids.clone();
    ids2[31] += 1;
    let d = &model.device;
    let bias = crate::model::mask::attention_bias(mode, 0, 0, 32, None, model.dtype, d)?;
    let f = |v: &[u32]| -> Result<Vec<f32>> {
        let t = candle_core::Tensor::new(v, d)?.unsqueeze(0)?;
        Ok(model.forward(&t, bias.as_ref(), &Fwd::default())?.narrow(1, 0, 1)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?)
    };
    Ok(f(&ids)? != f(&ids2)?)
}

/// The block length of the block-diffusion decode rows.
const BENCH_BLOCK: usize = 4;

/// Decoding throughput of each sampler, for each batch size b of `batches`: b prompts decoded b
/// per forward pass (as in `shared/reference/torch_decode_anchor.py`'s HF `generate` rows), by
/// each diffusion strategy (`low_confidence` and `threshold` also with the prefix KV cache) and by
/// batched AR with the KV cache.
pub fn decode_bench(opts: &BenchOpts, batches: &[usize], prompt_len: usize, new_tokens: usize, steps: usize) -> Result<Vec<DecodeBench>> {
    let none = AdapterConfig { targets: vec![], ..Default::default() };
    let (model, _) = bench_model(opts, &none)?;
    let shape = (prompt_len, new_tokens, steps);
    // per item: (generated tokens excluding eos, NFE, hit eos)
    type PerItem = Vec<(usize, usize, bool)>;
    let timed = |f: &dyn Fn() -> Result<PerItem>| -> Result<(PerItem, f64)> {
        f()?; // warm-up
        opts.device.synchronize()?;
        let t0 = Instant::now();
        let r = f()?;
        opts.device.synchronize()?;
        Ok((r, t0.elapsed().as_secs_f64()))
    };
    let mut out = Vec::new();
    for &b in batches {
        let prompts: Vec<Vec<u32>> = random_examples(b, prompt_len * 2, opts.arch.vocab_size, 2).into_iter().map(|e| e.prompt).collect();
        // eos id 1 never appears in random prompts; random weights rarely produce it, so every item
        // decodes its full budget (a worst case for diffusion early stopping).
        let rows = [
            ("low_confidence", Strategy::LowConfidence, CacheKind::None),
            ("random", Strategy::Random, CacheKind::None),
            ("threshold", Strategy::Threshold(0.9), CacheKind::None),
            ("low_confidence", Strategy::LowConfidence, CacheKind::Prefix),
            ("threshold", Strategy::Threshold(0.9), CacheKind::Prefix),
        ];
        for (name, strat, cache) in rows {
            let mut s = DiffusionSampler::new(new_tokens, steps, 0, 1);
            s.strategy = strat;
            s.shift = true;
            s.batch_size = b;
            s.cache = cache;
            let d = ModelDenoiser::new(&model, AttentionMode::Full);
            let (items, wall) = timed(&|| Ok(s.generate(&d, &prompts, 0)?.iter().map(|o| (o.tokens.len(), o.nfe, o.hit_eos)).collect()))?;
            let suffix = if cache == CacheKind::Prefix { "-prefix-cache" } else { "" };
            out.push(DecodeBench::from_items(format!("diffusion-{name}{suffix}"), b, shape, &items, wall));
        }
        // a block-diffusion model's decoding: blocks of 4 under the block-causal reading, where
        // the prefix cache is exact (objective.block_size)
        for cache in [CacheKind::None, CacheKind::Prefix] {
            let mut s = DiffusionSampler::new(new_tokens, steps, 0, 1);
            s.shift = true;
            s.batch_size = b;
            s.cache = cache;
            s.block_len = Some(BENCH_BLOCK);
            let read = crate::model::mask::ReadAttention::end_of(AttentionMode::Blocks { size: BENCH_BLOCK, canvas: new_tokens });
            let d = ModelDenoiser::reading(&model, read);
            let (items, wall) = timed(&|| Ok(s.generate(&d, &prompts, 0)?.iter().map(|o| (o.tokens.len(), o.nfe, o.hit_eos)).collect()))?;
            let suffix = if cache == CacheKind::Prefix { "-prefix-cache" } else { "" };
            out.push(DecodeBench::from_items(format!("diffusion-blocks{BENCH_BLOCK}-low_confidence{suffix}"), b, shape, &items, wall));
        }
        let mut s = ArSampler::greedy(new_tokens, 1);
        s.batch_size = b;
        let (items, wall) = timed(&|| Ok(s.generate_batched(&model, &prompts, 0)?.iter().map(|o| (o.tokens.len(), o.nfe, o.hit_eos)).collect()))?;
        out.push(DecodeBench::from_items("ar-greedy-kv-cache".into(), b, shape, &items, wall));
    }
    Ok(out)
}

/// `results/bench/<utc stamp>-<git short sha>`.
pub fn default_dir() -> std::path::PathBuf {
    let stamp = chrono::Utc::now().format("%Y%m%d-%H%M%S").to_string();
    let sha = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "nogit".into());
    std::path::PathBuf::from("results/bench").join(format!("{stamp}-{sha}"))
}

/// The GPU's name from nvidia-smi, when there is one.
pub fn gpu_name() -> Option<String> {
    let o = std::process::Command::new("nvidia-smi").args(["--query-gpu=name,driver_version", "--format=csv,noheader"]).output().ok()?;
    o.status.success().then(|| String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").trim().to_string())
}

/// Dense bf16 peak of known cards, FLOP/s (H100 SXM and H200: 989 TFLOP/s).
pub fn known_peak(name: &str) -> Option<f64> {
    let n = name.to_ascii_uppercase();
    if n.contains("H100") || n.contains("H200") {
        Some(989e12)
    } else if n.contains("A100") {
        Some(312e12)
    } else {
        None
    }
}

fn append_jsonl<T: Serialize>(path: &std::path::Path, v: &T) -> Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(|e| crate::Error::io(path, e))?;
    let line = serde_json::to_string(v).map_err(|e| crate::Error::msg(e.to_string()))?;
    writeln!(f, "{line}").map_err(|e| crate::Error::io(path, e))
}

/// What `harness bench` runs: its command line.
#[derive(Debug, Clone)]
pub struct CliArgs {
    /// Output folder.
    pub dir: std::path::PathBuf,
    /// `auto`, `cpu` or `cuda:N`.
    pub device: String,
    /// Tiny sizes (the `--quick` shape, whatever `arch` names).
    pub quick: bool,
    /// Timed steps per configuration (default 10; [`BIG_STEPS`] for the big shapes).
    pub steps: Option<usize>,
    /// Peak dense bf16 TFLOP/s for MFU (default: known from the GPU name).
    pub peak_tflops: Option<f64>,
    /// Run the decoding bench (the big shapes: only when `only` names `decode`).
    pub decode: bool,
    /// When not empty, the rows to run: `objective:rank:batch:seq` training rows (rank 0 = full
    /// fine-tuning), e.g. `ddm:16:64:512`, `pack` for the packed-vs-padded rows (packing.jsonl)
    /// and, for the big shapes, `decode`. At SmolLM2-135M the training entries select rows of
    /// the grid; at a big shape they are run as given, instead of the largest-batch search.
    pub only: Vec<String>,
    /// How training steps are launched (empty: every launch this device can run, at the big
    /// shapes eager only).
    pub launches: Vec<StepLaunch>,
    /// The shape's name in [`ARCHS`].
    pub arch: String,
    /// The largest batch the search tries (big shapes).
    pub max_batch: usize,
}

/// An `--only` training entry, `objective:rank:batch:seq`.
fn parse_only_row(s: &str) -> Option<(&str, usize, usize, usize)> {
    let p: Vec<&str> = s.split(':').collect();
    match p.as_slice() {
        [o @ ("ddm" | "ar"), r, b, l] => Some((o, r.parse().ok()?, b.parse().ok()?, l.parse().ok()?)),
        _ => None,
    }
}

/// The first line of a panic's message.
fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    let s = p.downcast_ref::<String>().map(String::as_str).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("(no message)");
    s.lines().next().unwrap_or("").to_string()
}

/// Measure one training row and append it to `candle.jsonl` (a failure, out of memory included,
/// as an error row), with progress on stderr. Outer error: the row could not be written. Inner:
/// the measurement failed; by then everything it allocated is dropped (a panic is caught and
/// becomes a failure too).
fn measure_row(dir: &std::path::Path, opts: &BenchOpts, objective: &str, rank: usize, batch: usize, seq: usize, launch: StepLaunch) -> Result<std::result::Result<TrainBench, String>> {
    let arch = arch_name(&opts.arch);
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| train_step_bench(opts, objective, rank, batch, seq, launch)));
    let r = match run {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(e.to_string().lines().next().unwrap_or("").to_string()),
        Err(p) => Err(format!("panicked: {}", panic_message(p.as_ref()))),
    };
    match &r {
        Ok(r) => {
            eprintln!("{arch} {objective} r={rank} b={batch} seq={seq} {}: {:.1} ms/step, {:.0} tokens/s, {:.1} GiB", launch.as_str(), r.ms_per_step, r.tokens_per_s, r.peak_mem_gib);
            if let Some(p) = &r.phases {
                eprintln!("  phases: forward {:.1} ms, backward {:.1} ms, optimizer {:.1} ms; host enqueue of fwd+bwd {:.1} ms", p.forward_ms, p.backward_ms, p.optimizer_ms, p.enqueue_ms);
            }
            append_jsonl(&dir.join("candle.jsonl"), r)?
        }
        Err(e) => {
            eprintln!("{arch} {objective} r={rank} b={batch} seq={seq} {}: failed: {e}", launch.as_str());
            let row = serde_json::json!({"impl_name": "candle", "arch": arch, "objective": objective, "lora_rank": rank, "batch": batch, "seq": seq, "launch": launch.as_str(), "error": e});
            append_jsonl(&dir.join("candle.jsonl"), &row)?
        }
    }
    Ok(r)
}

/// The `harness bench` command: every training configuration, then decoding; appends JSON lines
/// to `candle.jsonl` and `decode.jsonl` in `dir` as each finishes, and writes `env.json`. At a big
/// shape ([`Arch::big`]) the training rows are a largest-batch search per launch (eager unless
/// `launches` asks for more) at ddm, LoRA [`BIG_RANK`], seq [`BIG_SEQ`] (seq 32 and at most batch
/// 4 with `quick`), unless `only` names rows.
pub fn run_cli(a: &CliArgs) -> Result<()> {
    let (dir, quick, only) = (a.dir.as_path(), a.quick, &a.only);
    let spec = arch_by_name(&a.arch)?;
    if spec.big && a.max_batch == 0 {
        return Err(crate::Error::config("--max-batch", "must be at least 1"));
    }
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let resolved = crate::config::resolve_device(&a.device)?;
    let dev = crate::config::device(&resolved)?;
    let gpu = if dev.is_cuda() { gpu_name() } else { None };
    let peak = a.peak_tflops.map(|t| t * 1e12).or_else(|| gpu.as_deref().and_then(known_peak));
    let dtype = if dev.is_cuda() { DType::BF16 } else { DType::F32 };
    let arch = if quick { quick_arch() } else { (spec.config)() };
    let name = arch_name(&arch);
    let sh = |seq, batch, ddm_only| Shape { seq, batch, ddm_only };
    let (big_seq, max_batch) = if quick { (32, a.max_batch.min(4)) } else { (BIG_SEQ, a.max_batch) };
    let (shapes, ranks, warmup, steps) = if spec.big {
        (batch_ladder(max_batch).into_iter().map(|b| sh(big_seq, b, true)).collect(), vec![BIG_RANK], BIG_WARMUP, a.steps.unwrap_or(BIG_STEPS))
    } else if quick {
        (vec![sh(64, 2, false), sh(32, 2, true)], vec![16, 0], 3, a.steps.unwrap_or(10))
    } else {
        // seq 512 (the reference scripts' shape) and the study shape, seq 160 (clinical-rules rows)
        (vec![sh(512, 16, false), sh(512, 64, false), sh(160, 16, true), sh(160, 64, true)], vec![16, 0], 3, a.steps.unwrap_or(10))
    };
    let env = serde_json::json!({
        "device": resolved, "gpu": gpu, "dtype": format!("{dtype:?}"), "peak_flops": peak, "arch": name, "arch_config": arch,
        "shapes": shapes.iter().map(|s| [s.seq, s.batch]).collect::<Vec<_>>(), "batch_search": spec.big.then_some(max_batch),
        "harness_version": env!("CARGO_PKG_VERSION"), "quick": quick, "steps": steps, "warmup": warmup,
        "mfu_convention": "3 x forward matmul FLOPs per token (incl. attention scores) x tokens/s / dense bf16 peak",
    });
    crate::run::write_json(&dir.join("env.json"), &env)?;
    // every launch a run could resolve to on this device, unless asked for some (big shapes: eager)
    let launches: Vec<StepLaunch> = if !a.launches.is_empty() {
        a.launches.iter().map(|&l| crate::config::resolve_launch(l, &resolved, &Default::default())).collect::<Result<_>>()?
    } else if dev.is_cuda() && !spec.big {
        vec![StepLaunch::Eager, StepLaunch::CudaGraph]
    } else {
        vec![StepLaunch::Eager]
    };
    let opts = BenchOpts { arch, shapes: shapes.clone(), ranks: ranks.clone(), warmup, steps, peak_flops: peak, device: dev, dtype, launches };
    let named = |k: &str| only.iter().any(|o| o == k);
    if !spec.big {
        for objective in ["ddm", "ar"] {
            for &rank in &ranks {
                for s in shapes.iter().filter(|s| objective == "ddm" || !s.ddm_only) {
                    let (batch, seq) = (s.batch, s.seq);
                    if !only.is_empty() && !named(&format!("{objective}:{rank}:{batch}:{seq}")) {
                        continue;
                    }
                    for &launch in &opts.launches {
                        let _ = measure_row(dir, &opts, objective, rank, batch, seq, launch)?;
                    }
                }
            }
        }
    } else if only.is_empty() {
        for &launch in &opts.launches {
            let mut write_error = None;
            let search = largest_batch_search(max_batch, |batch| match measure_row(dir, &opts, "ddm", BIG_RANK, batch, big_seq, launch) {
                Ok(r) => r.map_err(crate::Error::msg),
                Err(e) => {
                    let stop = crate::Error::msg(e.to_string());
                    write_error = Some(e);
                    Err(stop)
                }
            });
            if let Some(e) = write_error {
                return Err(e);
            }
            let fit = search.largest_fit().map_or("none".to_string(), |b| b.to_string());
            eprintln!("{name} ddm r={BIG_RANK} seq={big_seq} {}: largest batch that fit: {fit} (tried {:?})", launch.as_str(), search.tried.iter().map(|t| t.0).collect::<Vec<_>>());
        }
    } else {
        for o in only.iter().filter(|o| !matches!(o.as_str(), "pack" | "decode")) {
            let (objective, rank, batch, seq) =
                parse_only_row(o).ok_or_else(|| crate::Error::config("--only", format!("`{o}` is not objective:rank:batch:seq (e.g. ddm:16:8:1024), pack or decode")))?;
            for &launch in &opts.launches {
                let _ = measure_row(dir, &opts, objective, rank, batch, seq, launch)?;
            }
        }
    }
    if (!spec.big && only.is_empty()) || named("pack") {
        // packed vs padded at the clinical-rules shape (rows of 80–240 tokens, ~150 on average)
        let (pairs, caps) = if quick { (6, vec![96]) } else { (64, vec![1024, 2048]) };
        let lens = if quick { (8, 40) } else { (80, 240) };
        for r in pack_bench(&opts, pairs, lens, &caps)? {
            eprintln!("pack {} pack_to={} {}: {} rows × {}, {:.1} ms/step, {:.0} real tokens/s, {:.1} GiB", r.layout, r.pack_to, r.launch.as_str(), r.rows, r.width, r.ms_per_step, r.real_tokens_per_s, r.peak_mem_gib);
            append_jsonl(&dir.join("packing.jsonl"), &r)?;
        }
    }
    if a.decode && (!spec.big || named("decode")) {
        let (decode_batches, plen, new, st) = if quick { (vec![1, 2], 16, 8, 4) } else { (vec![1, 16, 64], 256, 32, 32) };
        for r in decode_bench(&opts, &decode_batches, plen, new, st)? {
            eprintln!("decode {} b={}: {:.0} tokens/s, nfe {:.1}, mean length {:.1}", r.sampler, r.batch_size.unwrap_or(0), r.tokens_per_s, r.mean_nfe, r.mean_gen_len);
            append_jsonl(&dir.join("decode.jsonl"), &r)?;
        }
    }
    Ok(())
}

/// One timed tensor operation.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpTiming {
    /// What ran, with its shapes.
    pub op: String,
    /// Mean milliseconds per call (device synchronised around the repetitions).
    pub ms: f64,
}

/// Profile `steps` training steps of one configuration with CUPTI ([`crate::profile`]): device
/// time per kernel, host time per driver call, copies; after `warmup` unprofiled steps.
pub fn step_profile(
    opts: &BenchOpts,
    objective: &str,
    rank: usize,
    batch: usize,
    seq: usize,
    steps: usize,
    launch: StepLaunch,
) -> Result<crate::profile::StepProfile> {
    let mut su = TrainSetup::new(opts, objective, rank, batch, seq, launch)?;
    for step in 0..opts.warmup {
        su.step(step)?;
    }
    opts.device.synchronize()?;
    let session = crate::profile::Session::start()?;
    let t0 = Instant::now();
    for step in opts.warmup..opts.warmup + steps {
        su.step(step)?;
    }
    opts.device.synchronize()?;
    let wall = t0.elapsed().as_secs_f64();
    let agg = session.stop()?;
    let name = format!("{objective} {} b{batch} x {seq} {}", if rank == 0 { "full".to_string() } else { format!("LoRA {rank}") }, launch.as_str());
    Ok(agg.finish(&name, steps, wall))
}

/// `harness bench --ops`: a CUPTI profile of training steps ([`step_profile`]) at ddm LoRA 16 and
/// full fine-tuning, batch 64 × 512, and at the study shape 16 × 160 (tiny shapes with `quick`),
/// into `dir/profile.jsonl` with a summary on stderr; then the time of each tensor operation a
/// step is made of, into `dir/ops.jsonl`. Without CUDA (or CUPTI) the profile is skipped with a
/// note.
pub fn op_profile(dir: &std::path::Path, device: &str, quick: bool) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| crate::Error::io(dir, e))?;
    let dev = crate::config::device(&crate::config::resolve_device(device)?)?;
    let bf = if dev.is_cuda() { DType::BF16 } else { DType::F32 };
    let arch = if quick { quick_arch() } else { smollm2_135m() };
    use StepLaunch::{CudaGraph as G, Eager as E};
    let rows: &[(&str, usize, usize, usize, StepLaunch)] = if quick {
        &[("ddm", 16, 2, 64, E)]
    } else {
        &[("ddm", 16, 64, 512, E), ("ddm", 16, 64, 512, G), ("ddm", 0, 64, 512, E), ("ddm", 16, 16, 512, E), ("ddm", 16, 16, 160, E), ("ddm", 16, 16, 160, G), ("ar", 16, 64, 512, E)]
    };
    let opts = BenchOpts { arch, shapes: vec![], ranks: vec![], warmup: 3, steps: 3, peak_flops: None, device: dev.clone(), dtype: bf, launches: vec![] };
    for &(objective, rank, batch, seq, launch) in rows {
        if launch == G && !dev.is_cuda() {
            continue;
        }
        match step_profile(&opts, objective, rank, batch, seq, 3, launch) {
            Ok(p) => {
                eprintln!("== {}: wall {:.1} ms/step, device busy {:.1} ms ({:.0}%), kernels {:.1} ms in {:.0} launches, host in driver calls {:.1} ms", p.config, p.wall_ms_per_step, p.device_busy_ms_per_step, 100.0 * p.device_busy_ms_per_step / p.wall_ms_per_step.max(1e-9), p.kernel_ms_per_step, p.launches_per_step, p.driver_ms_per_step);
                for k in p.kernels.iter().take(25) {
                    eprintln!("  {:8.2} ms {:6.1}% {:7.1}x  {}", k.ms_per_step, 100.0 * k.share, k.launches_per_step, k.name.chars().take(110).collect::<String>());
                }
                for a in p.driver.iter().take(10) {
                    eprintln!("  host {:8.2} ms {:8.1} calls (max {:.0} us)  {}", a.ms_per_step, a.calls_per_step, a.max_us, a.name);
                }
                for c in &p.copies {
                    eprintln!("  copy {:8.3} ms {:6.1}x {:9.2} MiB  {}", c.ms_per_step, c.count_per_step, c.mib_per_step, c.kind);
                }
                append_jsonl(&dir.join("profile.jsonl"), &p)?;
            }
            Err(e) => {
                eprintln!("step profile {objective} r={rank} b={batch} seq={seq} skipped: {e}");
                break;
            }
        }
    }
    op_timings(dir, &dev, quick)
}

/// Time the tensor operations a training step is made of, at SmolLM2-135M shapes and batch 64
/// (batch 2 and tiny widths with `quick`), into `dir/ops.jsonl`.
fn op_timings(dir: &std::path::Path, dev: &Device, quick: bool) -> Result<()> {
    use crate::kernels::fused as kernels;
    use crate::model::{attention, ops};
    use candle_core::{Tensor, D};
    let dev = dev.clone();
    let bf = if dev.is_cuda() { DType::BF16 } else { DType::F32 };
    let (b, l, h, hkv, dh, d, f, v, n) = if quick { (2, 32, 4, 2, 8, 32, 64, 256, 64) } else { (64, 512, 9, 3, 64, 576, 1536, 49152, 8192) };
    let r = |shape: &[usize], dt: DType| -> Result<Tensor> { Ok(Tensor::randn(0f32, 1.0, shape, &dev)?.to_dtype(dt)?) };
    let q = r(&[b, h, l, dh], bf)?;
    let k = r(&[b, hkv, l, dh], bf)?;
    let s = r(&[b, h, l, l], bf)?;
    let s32 = r(&[b, h, l, l], DType::F32)?;
    let row = r(&[b, h, l, 1], DType::F32)?;
    let x = r(&[b * l, d], bf)?;
    let x3 = r(&[b, l, d], bf)?;
    let w = r(&[f, d], bf)?;
    let a = r(&[16, d], bf)?;
    let xf = r(&[b * l, f], bf)?;
    let logits = r(&[n, v], bf)?;
    let ids = Tensor::arange(0u32, n as u32, &dev)?;
    let tgt = Tensor::zeros((n, 1), DType::U32, &dev)?;
    let cos = r(&[l, dh / 2], bf)?;
    let sin = r(&[l, dh / 2], bf)?;
    let nw = r(&[d], bf)?;
    let kt = k.unsqueeze(2)?.broadcast_as((b, hkv, h / hkv, l, dh))?.reshape((b, h, l, dh))?;
    let qt = x3.reshape((b, l, h, d / h))?;
    // cross-entropy backward's inputs: targets (N,), lse (N, 1), per-row gradient (N,)
    let t_rows = tgt.flatten_all()?;
    let g_rows = row.flatten_all()?.narrow(0, 0, n)?;
    let lse = g_rows.reshape((n, 1))?;
    type Op<'a> = Box<dyn Fn() -> candle_core::Result<Tensor> + 'a>;
    let mut ops: Vec<(String, Op)> = vec![
        ("matmul q kT (B,H,L,Dh)x(B,H,Dh,L)".into(), Box::new(|| q.matmul(&q.t()?))),
        ("matmul p v (B,H,L,L)x(B,H,L,Dh)".into(), Box::new(|| s.matmul(&q))),
        ("matmul pT g (transposed lhs)".into(), Box::new(|| s.t()?.matmul(&q))),
        ("softmax_last_dim (B,H,L,L)".into(), Box::new(|| candle_nn::ops::softmax_last_dim(&s))),
        ("to_dtype bf16->f32 (B,H,L,L)".into(), Box::new(|| s.to_dtype(DType::F32))),
        ("to_dtype f32->bf16 (B,H,L,L)".into(), Box::new(|| s32.to_dtype(bf))),
        ("broadcast_sub f32 (B,H,L,L)-(B,H,L,1)".into(), Box::new(|| s32.broadcast_sub(&row))),
        ("mul f32 (B,H,L,L)".into(), Box::new(|| &s32 * &s32)),
        ("affine scale bf16 (B,H,L,L)".into(), Box::new(|| &s * 0.125)),
        ("repeat_kv contiguous (B,Hkv,L,Dh)->(B,H,L,Dh)".into(), Box::new(|| kt.contiguous())),
        ("group sum reshape.sum(2) (B,H,L,Dh)->(B,Hkv,L,Dh)".into(), Box::new(|| q.reshape((b, hkv, h / hkv, l, dh))?.sum(2))),
        ("transpose(1,2).contiguous (B,L,H,Dh)".into(), Box::new(|| qt.transpose(1, 2)?.contiguous())),
        ("rope (B,H,L,Dh)".into(), Box::new(|| candle_nn::rotary_emb::rope(&q, &cos, &sin))),
        ("rms_norm (B,L,D)".into(), Box::new(|| candle_nn::ops::rms_norm(&x3, &nw, 1e-5))),
        ("sum_keepdim last (B,L,D) f32".into(), Box::new(|| x3.to_dtype(DType::F32)?.sum_keepdim(D::Minus1))),
        ("sum over rows (B*L,D)->(D)".into(), Box::new(|| x.sum(0))),
        ("linear (B*L,D)x(D,F)".into(), Box::new(|| x.matmul(&w.t()?))),
        ("linear (B*L,F)x(F,D)".into(), Box::new(|| xf.matmul(&w))),
        ("weight grad (D,B*L)x(B*L,F)".into(), Box::new(|| x.t()?.matmul(&xf))),
        ("lora down (B*L,D)x(D,16)".into(), Box::new(|| x.matmul(&a.t()?))),
        ("lora weight grad (16,B*L)x(B*L,D)".into(), Box::new(|| x.matmul(&a.t()?)?.t()?.matmul(&x))),
        ("silu (B*L,F)".into(), Box::new(|| xf.silu())),
        ("mul (B*L,F)".into(), Box::new(|| &xf * &xf)),
        ("add (B*L,D)".into(), Box::new(|| &x + &x)),
        ("zeros_like (B*L,D)".into(), Box::new(|| x.zeros_like())),
        ("index_select rows (N of B*L, D)".into(), Box::new(|| x.index_select(&ids, 0))),
        ("index_add rows back (B*L,D)".into(), Box::new(|| x.zeros_like()?.index_add(&ids, &x.narrow(0, 0, n)?, 0))),
        ("logits to f32 (N,V)".into(), Box::new(|| logits.to_dtype(DType::F32))),
        ("max_keepdim (N,V) bf16".into(), Box::new(|| logits.max_keepdim(D::Minus1))),
        ("exp (N,V) bf16".into(), Box::new(|| logits.exp())),
        ("gather (N,V) by (N,1)".into(), Box::new(|| logits.gather(&tgt, D::Minus1))),
        ("scatter_add (N,V) by (N,1)".into(), Box::new(|| logits.scatter_add(&tgt, &logits.narrow(1, 0, 1)?.contiguous()?, D::Minus1))),
        ("lm head (N,D)x(D,V)".into(), Box::new(|| x.narrow(0, 0, n)?.matmul(&logits.narrow(0, 0, d)?))),
        // the pieces the fused training path is made of
        ("kernels::softmax_bias (B,H,L,L)".into(), Box::new(|| kernels::softmax_bias(&s, None, 0.125))),
        ("kernels::softmax_bwd (B,H,L,L)".into(), Box::new(|| kernels::softmax_bwd(&s, &s))),
        ("kernels::rms_norm_bwd (B,L,D)".into(), Box::new(|| kernels::rms_norm_bwd(&x3, &nw, &x3, 1e-5))),
        ("kernels::swiglu (B*L,F)".into(), Box::new(|| kernels::swiglu(&xf, &xf))),
        ("kernels::swiglu_bwd (B*L,F)".into(), Box::new(|| Ok(kernels::swiglu_bwd(&xf, &xf, &xf)?.0))),
        ("kernels::ce_fwd (N,V)".into(), Box::new(|| Ok(kernels::ce_fwd(&logits, &t_rows)?.0))),
        ("kernels::ce_bwd (N,V)".into(), Box::new(|| kernels::ce_bwd(&logits, &t_rows, &lse, &g_rows))),
        ("attention_fwd (B,H,L,Dh), GQA".into(), Box::new(|| attention::attention_fwd_composite(&q, &k, &k, None))),
        ("attention_bwd (B,H,L,Dh), GQA, g (B,L,D)".into(), Box::new(|| Ok(attention::attention_bwd_composite(&q, &k, &k, None, &x3)?.0))),
        ("flash_fwd (B,H,L,Dh), GQA".into(), Box::new(|| Ok(crate::kernels::flash::flash_fwd(&q, &k, &k, None, 0.125)?.0))),
        ("flash_bwd (B,H,L,Dh), GQA, g (B,L,D)".into(), Box::new({
            // the forward's o and lse, computed at the first call (untimed: the warm-up call)
            let saved = std::cell::OnceCell::new();
            let (q, k, x3) = (&q, &k, &x3);
            move || {
                if saved.get().is_none() {
                    let _ = saved.set(crate::kernels::flash::flash_fwd(q, k, k, None, 0.125)?);
                }
                let (o, lse) = saved.get().expect("set above");
                Ok(crate::kernels::flash::flash_bwd(q, k, k, o, lse, x3, None, 0.125)?.0)
            }
        })),
        ("rope_heads_fwd (B,L,D = H*Dh)".into(), Box::new(|| ops::rope_heads_fwd(&x3, h, &cos, &sin))),
    ];
    let path = dir.join("ops.jsonl");
    for (name, op) in ops.iter_mut() {
        let reps = 10;
        if let Err(e) = op() {
            eprintln!("   failed  {name}: {e}");
            continue;
        }
        dev.synchronize()?;
        let t = Instant::now();
        for _ in 0..reps {
            op()?;
        }
        dev.synchronize()?;
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        eprintln!("{ms:9.3} ms  {name}");
        append_jsonl(&path, &OpTiming { op: name.clone(), ms })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_arch_name_resolves_to_a_valid_shape() {
        for a in ARCHS {
            let cfg = (arch_by_name(a.name).unwrap().config)();
            cfg.validate().unwrap();
            assert_eq!(arch_name(&cfg), a.name);
        }
        assert_eq!(ARCHS[0].name, "smollm2-135m");
        assert_eq!(arch_name(&quick_arch()), QUICK_ARCH);
        let b = llama2_7b();
        assert!(!b.tie_word_embeddings && b.rope_theta == 10_000.0 && b.kv_heads() == 32 && b.head_dim() == 128);
        let s = smollm2_1_7b();
        assert!(s.tie_word_embeddings && s.rope_theta == 130_000.0 && s.kv_heads() == 32 && s.head_dim() == 64);
        // the published sizes: 1.71B and 6.74B parameters; both are drawn on the device
        assert!((approx_params(&s) / 1e9 - 1.71).abs() < 0.02, "{}", approx_params(&s));
        assert!((approx_params(&b) / 1e9 - 6.74).abs() < 0.02, "{}", approx_params(&b));
        assert!(approx_params(&smollm2_135m()) < DEVICE_INIT_PARAMS && approx_params(&s) > DEVICE_INIT_PARAMS);
    }

    #[test]
    fn an_unknown_arch_is_an_error_listing_the_names() {
        let e = arch_by_name("llama3-8b").unwrap_err().to_string();
        assert!(e.contains("llama3-8b") && e.contains("smollm2-135m, smollm2-1.7b, llama2-7b"), "{e}");
        let args = CliArgs {
            dir: tempfile::tempdir().unwrap().path().join("b"),
            device: "cpu".into(),
            quick: true,
            steps: Some(1),
            peak_tflops: None,
            decode: false,
            only: vec![],
            launches: vec![],
            arch: "nope".into(),
            max_batch: 4,
        };
        assert!(run_cli(&args).unwrap_err().to_string().contains("choose from smollm2-135m"));
    }

    #[test]
    fn the_batch_search_stops_at_the_first_failure() {
        assert_eq!(batch_ladder(64), [1, 2, 4, 8, 16, 32, 64]);
        assert_eq!(batch_ladder(48), [1, 2, 4, 8, 16, 32]);
        assert!(batch_ladder(0).is_empty());
        let mut calls = vec![];
        let s = largest_batch_search(64, |b| {
            calls.push(b);
            if b > 8 {
                Err(crate::Error::msg("CUDA_ERROR_OUT_OF_MEMORY"))
            } else {
                Ok(b * 10)
            }
        });
        assert_eq!(calls, [1, 2, 4, 8, 16], "no batch is tried after the first failure");
        assert_eq!(s.largest_fit(), Some(8));
        assert_eq!(s.tried.len(), 5);
        assert!(s.tried[..4].iter().all(|(_, r)| r.is_ok()) && s.tried[4].1.is_err());
        // nothing fails: the whole ladder up to the cap
        let s = largest_batch_search(20, Ok);
        assert_eq!(s.tried.iter().map(|t| t.0).collect::<Vec<_>>(), [1, 2, 4, 8, 16]);
        // the first batch fails
        let s = largest_batch_search(64, |_| Err::<(), _>(crate::Error::msg("oom")));
        assert_eq!((s.tried.len(), s.largest_fit()), (1, None));
    }

    #[test]
    fn only_entries_parse() {
        assert_eq!(parse_only_row("ddm:16:8:1024"), Some(("ddm", 16, 8, 1024)));
        assert_eq!(parse_only_row("ar:0:1:512"), Some(("ar", 0, 1, 512)));
        for bad in ["pack", "ddm:16:8", "xx:16:8:1024", "ddm:a:8:1024"] {
            assert_eq!(parse_only_row(bad), None, "{bad}");
        }
    }

    /// The big-shape path of `harness bench` end to end at the tiny shape: a search over batch 1,
    /// 2, 4 (seq 32) recording `arch`, no packing or decoding rows, the rows rendered per arch;
    /// then `--only` runs the rows it names.
    #[test]
    fn quick_big_arch_run_searches_the_batch_ladder() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("b");
        let args = CliArgs {
            dir: dir.clone(),
            device: "cpu".into(),
            quick: true,
            steps: Some(1),
            peak_tflops: None,
            decode: true,
            only: vec![],
            launches: vec![],
            arch: "llama2-7b".into(),
            max_batch: 64,
        };
        run_cli(&args).unwrap();
        let rows: Vec<serde_json::Value> = std::fs::read_to_string(dir.join("candle.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(rows.iter().map(|r| r["batch"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 2, 4]);
        for r in &rows {
            assert_eq!((r["arch"].as_str(), r["objective"].as_str(), r["lora_rank"].as_u64(), r["seq"].as_u64()), (Some(QUICK_ARCH), Some("ddm"), Some(16), Some(32)), "{r}");
            assert!(r.get("error").is_none() && r["tokens_per_s"].as_f64().unwrap() > 0.0, "{r}");
        }
        assert!(!dir.join("decode.jsonl").exists() && !dir.join("packing.jsonl").exists());
        let env: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("env.json")).unwrap()).unwrap();
        assert_eq!((env["arch"].as_str(), env["warmup"].as_u64(), env["batch_search"].as_u64()), (Some(QUICK_ARCH), Some(BIG_WARMUP as u64), Some(4)));
        // --only: exactly the rows named
        let only = CliArgs { only: vec!["ddm:16:3:16".into()], ..args.clone() };
        run_cli(&only).unwrap();
        let n = std::fs::read_to_string(dir.join("candle.jsonl")).unwrap().lines().count();
        assert_eq!(n, 4);
        let bad = CliArgs { only: vec!["ddm:16".into()], ..args };
        assert!(run_cli(&bad).unwrap_err().to_string().contains("objective:rank:batch:seq"));
    }

    #[test]
    fn big_arch_rows_render_per_arch_with_the_largest_batch() {
        let tmp = tempfile::tempdir().unwrap();
        let w = |name: &str, text: &str| std::fs::write(tmp.path().join(name), text).unwrap();
        let c = |b: u64, tps: f64| format!(r#"{{"impl_name":"candle","arch":"llama2-7b","objective":"ddm","lora_rank":16,"batch":{b},"seq":1024,"ms_per_step":1,"tokens_per_s":{tps},"peak_mem_gib":{b}.5,"launch":"eager"}}"#);
        let t = |b: u64, tps: f64| format!(r#"{{"impl":"torch","arch":"llama2-7b","objective":"ddm","lora_rank":16,"batch":{b},"seq":1024,"tokens_per_s":{tps},"peak_mem_gib":{b}.3}}"#);
        let candle = [
            c(1, 1000.0),
            c(2, 2000.0),
            c(4, 3000.0),
            r#"{"impl_name":"candle","arch":"llama2-7b","objective":"ddm","lora_rank":16,"batch":8,"seq":1024,"launch":"eager","error":"DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")"}"#.into(),
            // a 135M row of the same folder stays in `training`
            r#"{"impl_name":"candle","objective":"ddm","lora_rank":16,"batch":64,"seq":512,"tokens_per_s":9,"peak_mem_gib":1}"#.into(),
        ];
        w("candle.jsonl", &(candle.join("\n") + "\n"));
        let torch = [r#"{"impl":"torch-env","arch":"llama2-7b"}"#.to_string(), t(1, 500.0), t(2, 800.0), r#"{"impl":"torch","arch":"llama2-7b","objective":"ddm","lora_rank":16,"batch":4,"seq":1024,"error":"out of memory"}"#.into()];
        w("torch.jsonl", &(torch.join("\n") + "\n"));
        let tables = crate::report::bench_tables(tmp.path()).unwrap();
        assert_eq!(tables.iter().map(|x| x.0).collect::<Vec<_>>(), ["training", "training (llama2-7b)", "largest batch (llama2-7b)"]);
        let cells = |t: &comfy_table::Table| -> Vec<Vec<String>> { t.row_iter().map(|r| r.cell_iter().map(|c| c.content()).collect()).collect() };
        assert_eq!(cells(&tables[0].1).len(), 1);
        let tr = cells(&tables[1].1);
        assert_eq!(tr.len(), 4);
        let col = |name: &str| tables[1].1.header().unwrap().cell_iter().position(|c| c.content() == name).unwrap();
        assert_eq!((tr[1][col("candle tok/s")].as_str(), tr[1][col("torch eager tok/s")].as_str(), tr[1][col("torch eager GiB")].as_str(), tr[1][col("candle / eager")].as_str()), ("2000", "800", "2.3", "2.50x"));
        assert_eq!((tr[2][col("torch eager tok/s")].as_str(), tr[3][col("candle tok/s")].as_str()), ("OOM", "OOM"));
        let fit = cells(&tables[2].1);
        assert_eq!(fit[0], ["ddm", "16", "1024", "candle eager", "4", "3000", "4.5", "3000 (4)", "8: OOM"]);
        assert_eq!(fit[1], ["ddm", "16", "1024", "torch", "2", "800", "2.3", "800 (2)", "4: OOM"]);
        assert_eq!(fit.len(), 2);
    }
}
