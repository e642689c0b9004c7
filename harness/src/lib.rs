//! # ddm-sft harness
//!
//! Supervised fine-tuning of masked-diffusion language models ("ddm-sft"), compared against
//! autoregressive (AR) SFT of the same base model, on medical question answering.
//!
//! ## Design map
//! - [`config`]: the run configuration in two stages: raw serde TOML (what the user wrote) →
//!   validated [`config::RunConfig`] (what the run uses, saved into the run folder first).
//! - [`model`]: a LLaMA-family transformer ([`model::llama`]) whose attention takes an explicit
//!   mask ([`model::mask`]: causal, full, annealed), LoRA wrappers ([`model::lora`]), loading
//!   from GGUF or Hugging Face folders ([`model::load`]) and the tokenizer ([`model::tokenizer`]).
//!   Training runs each decoder layer as one autograd node with a hand-written backward
//!   ([`model::block`], parameter gradients through a [`model::lora::GradSink`]), built from
//!   fused ops ([`model::ops`]), recomputing attention ([`model::attention`]) and bf16 CUDA
//!   kernels ([`model::kernels`]), each with a composite twin the tests compare it with.
//! - [`objective`]: the training objectives behind one trait, [`objective::Objective`]:
//!   masked diffusion ([`objective::diffusion`]) and next-token AR ([`objective::autoregressive`]).
//!   The training loop never asks which one it runs.
//! - [`train`]: AdamW (one multi-tensor kernel on CUDA, [`train::fused`]), the warmup + cosine
//!   schedule, gradient accumulation and clipping, the step loop with metrics CSV, evaluation hook
//!   and checkpoints.
//! - [`data`]: datasets (PubMedQA, multiple-choice JSONL, alpaca pairs, the synthetic
//!   clinical-rules benchmark) yielding [`data::Item`]s, and prompt templates.
//! - [`sample`]: decoding: iterative denoising for diffusion, greedy/sampled AR with a KV cache.
//! - [`eval`]: generation and likelihood evaluation, metrics with intervals.
//! - [`stats`]: Wilson, t-intervals, McNemar, bootstrap, Holm.
//! - [`study`]: studies (sweeps over run configs × seeds) into resumable result folders, and
//!   their reports.
//! - [`rng`]: every random draw comes from a generator seeded from (run seed, purpose, step).
//! - [`run`]: one run end to end: resolved config written first, train, evaluate, `DONE` last.
//! - [`report`]: rendering of result data (tables); the loop and the runners only write data.
//! - [`bench`](mod@bench) and [`selfcheck`]: throughput at the SmolLM2-135M shape, and the pinned
//!   cross-check on any device; [`device`]: CUDA allocator settings and memory high-water mark.
//!
//! Binaries are thin: `src/main.rs` parses arguments and calls these modules.
#![warn(missing_docs)]

pub mod bench;
pub mod config;
pub mod data;
pub mod device;
pub mod error;
pub mod kernels;
pub mod eval;
pub mod model;
pub mod report;
pub mod objective;
pub mod rng;
pub mod run;
pub mod selfcheck;
pub mod sample;
pub mod stats;
pub mod study;
pub mod train;

pub use error::{Error, Result};
