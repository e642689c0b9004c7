//! # ddm-sft harness
//!
//! Supervised fine-tuning of masked-diffusion language models ("ddm-sft"), compared against
//! autoregressive (AR) SFT of the same base model, on medical question answering.
//!
//! ## Design map
//! - [`config`]: the run configuration in two stages: raw serde TOML (what the user wrote) →
//!   validated [`config::RunConfig`] (what the run uses, saved into the run folder first).
//! - [`model`]: a LLaMA-shaped transformer ([`model::llama`]; the families it reads — LLaMA,
//!   Qwen2's q/k/v biases, Qwen3's q/k norms, LLaDA's own keys and weight names, Dream — in one
//!   table with the presets a run inherits from its checkpoint, [`model::family`]; optionally given
//!   the diffusion time of each column through a zero-initialised embedding,
//!   `objective.time_conditioning`) whose attention takes an explicit mask ([`model::mask`]:
//!   causal, full, annealed, block-causal, and the one attention-bias builder), loading from
//!   GGUF, Hugging Face folders or the hub, sharded safetensors memory-mapped to the device
//!   ([`model::load`]), and the tokenizer ([`model::tokenizer`]).
//!   The layer is [`model::decoder`]: one type with two ways to run in training, chosen once by
//!   `model.layer_path` ([`model::LayerPath`]) — fused (one autograd node with a hand-written
//!   backward, parameter gradients through a [`model::params::GradSink`]) or reference (autograd
//!   through candle's composite ops, which inference also uses). One linear type
//!   ([`model::linear`]: frozen, LoRA ([`model::lora`]) or trained fully; its products
//!   accumulate into one buffer on CUDA), parameters in [`model::params`], graph plumbing in
//!   [`model::ops`], attention in [`model::attention`] (flash kernels on CUDA for head width 64,
//!   the composite with recompute elsewhere).
//! - [`kernels`]: the CUDA kernels (flash attention, row-wise bf16 training kernels, fused
//!   cross-entropy, accumulating and f32-output matmuls, data movement, multi-tensor AdamW and
//!   adapter casts), each beside its composite twin the tests and `selfcheck` compare it with.
//! - [`objective`]: the training objectives behind one trait, [`objective::Objective`]:
//!   masked diffusion ([`objective::diffusion`]) and next-token AR ([`objective::autoregressive`]),
//!   built from the tagged `[objective]` config: for training by [`objective::build`], for
//!   reading a trained model by `ObjectiveConfig::build_for_eval` (the attention of
//!   `eval.attention` after the trained steps, [`objective::diffusion::ReadAttention`]). The
//!   objective owns how its model is read at evaluation time (attention, generation, choice
//!   scoring, the dev NLL): the training loop and the evaluation never ask which one they run.
//!   Block diffusion (`objective.block_size`) is a layout of the diffusion objective: each row
//!   becomes the noised and the clean sequence side by side under a per-row visibility with its own
//!   RoPE positions ([`objective::Prepared::mask`], `positions`), read block-causally at
//!   evaluation ([`model::mask::AttentionMode::Blocks`]). Packing ([`objective::pack`],
//!   `train.pack_to`) lays a prepared micro-batch's sequences end to end, whatever the objective,
//!   each pair under its own visibility ([`model::mask::Segments`], built into the bias on the
//!   device).
//! - [`train`]: AdamW ([`train::optim`], one multi-tensor kernel on CUDA), the warmup + cosine
//!   schedule, the one training step ([`train::step`]: accumulation, clipping, update; also what
//!   `bench` and `selfcheck` run), the step loop with metrics CSV, evaluation hook and checkpoints.
//!   `train.launch` chooses how a step is launched, once per run and recorded: eager, or each
//!   micro-batch's forward and backward replayed as a captured CUDA graph ([`train::graph`]) at the
//!   run's fixed shape ([`objective::scored`]: a micro-batch laid out for the device, padded so
//!   the loss and gradients do not change).
//! - [`data`]: datasets (PubMedQA, multiple-choice JSONL, alpaca pairs, the synthetic
//!   clinical-rules benchmark, one row per family in [`data::clinical_rules::TABLE`]) yielding
//!   [`data::Item`]s, and prompt templates.
//! - [`sample`]: decoding: iterative denoising for diffusion (the LM head on the eligible
//!   positions only, an optional prefix KV cache, `eval.cache`), greedy/sampled AR with a KV
//!   cache (greedy choice on the device); both batch `eval.batch_size` prompts per forward pass
//!   (left padding, a key-padding mask).
//! - [`eval`]: generation and likelihood evaluation (answers read back by the response format,
//!   [`data::ResponseFormat::parse`]), decoding diagnostics per method (tokens/s, NFE, lengths,
//!   calibration) and the speed–accuracy frontier, metrics with intervals.
//! - [`stats`]: Wilson, t-intervals, McNemar, bootstrap (and the pooled-item bootstrap across
//!   seeds), Holm, the minimum detectable difference at 80% power.
//! - [`study`]: studies (sweeps over run configs × seeds) into resumable result folders, run in
//!   this process or in worker processes (`--devices`) that share a folder through run locks,
//!   and their reports.
//! - [`rng`]: every random draw comes from a generator seeded from (run seed, purpose, step).
//! - [`run`]: one run end to end: resolved config written first, train, evaluate, `DONE` last;
//!   [`run::evaluate`] is the one evaluation path (trained model, run folder, base model).
//! - The result folders' layout (`RunDir`, `StudyDir`) and records (run summary, eval result,
//!   prediction, manifest, analysis) live in the `ddm-schema` crate (`schema/`), which the
//!   notebooks' `ddm-results` reads them with.
//! - [`report`]: rendering of result data (tables); the loop and the runners only write data.
//! - [`export`](mod@export): a finished run as a Hugging Face folder (merged, or base + peft
//!   adapter), with a model card and probe logits for a transformers check.
//! - [`bench`](mod@bench) and [`selfcheck`]: throughput at the SmolLM2-135M shape (and the largest
//!   batch that fits at the 1.7B and 7B shapes, `--arch`), and the pinned
//!   cross-check on any device; [`profile`]: where a step's host and device time goes (CUPTI,
//!   loaded at run time); [`device`]: CUDA allocator settings and memory high-water mark.
//!
//! Binaries are thin: `src/main.rs` parses arguments and calls these modules.
//!
//! ## Where one thing lives
//! | what | file |
//! |---|---|
//! | the decoder layer (both paths) | `src/model/decoder.rs` |
//! | the linear layer (frozen / LoRA / full) | `src/model/linear.rs` |
//! | the diffusion objective (masking, 1/t weight, shift; how it generates and scores choices) | `src/objective/diffusion.rs` |
//! | the AR objective | `src/objective/autoregressive.rs` |
//! | attention masks and the one bias builder | `src/model/mask.rs` |
//! | attention (flash kernels and the composite) | `src/model/attention.rs`, `src/kernels/flash.rs` |
//! | the diffusion sampler | `src/sample/diffusion.rs` |
//! | the AR sampler (KV cache) | `src/sample/autoregressive.rs` |
//! | the training step | `src/train/step.rs` |
//! | the result-folder schema | `schema/src/layout.rs` (files), `schema/src/*.rs` (records) |
#![warn(missing_docs)]

/// The result folders' layout and records (the `ddm-schema` crate).
pub use ddm_schema as schema;

pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod eval;
pub mod export;
pub mod kernels;
pub mod model;
pub mod objective;
pub mod profile;
pub mod report;
pub mod rng;
pub mod run;
pub mod sample;
pub mod selfcheck;
pub mod stats;
pub mod study;
pub mod train;

pub use error::{Error, Result};
