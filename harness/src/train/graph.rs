//! The training step's forward and backward as a captured CUDA graph (`train.launch =
//! "cuda_graph"`): thousands of kernel launches per micro-batch replayed with one.
//!
//! A graph replays fixed device addresses and shapes, so every micro-batch of the run is padded to
//! one [`FixedShape`] ([`HostBatch::padded`]: the longest training example, and enough LM-head
//! rows for any micro-batch; the padding is hidden from attention and weighs 0, so the loss and
//! the gradients are the unpadded micro-batch's) and copied into input buffers the graph owns
//! ([`DeviceBatch::write`]). The captured work is: [`loss_on`] (forward), the backward pass, and
//! writing each parameter's gradient into a gradient buffer of this step (the first micro-batch
//! of an optimizer step copies, later ones add) and the logged numbers into a stats buffer. What
//! stays outside is what reads or writes the host: preparing and copying the inputs, reading the
//! stats, the gradient norm and AdamW (one launch each, [`crate::kernels::optim`]).
//!
//! One graph is captured per (first micro-batch or not, attention-bias rows, LM-head rows rounded
//! up to an eighth of the fixed shape's, [`GraphStep::head_rows`]) the first time it is needed: the step is run once eagerly with candle's host-to-device parameter cache on (it loads
//! every kernel and uploads every stride table the capture will read), into scratch gradient
//! buffers, then captured on candle's stream and launched. Every allocation made inside the
//! captured work is freed inside it (the adapter compute copies are dropped at its end), so a
//! replay starts from nothing. The values differ from the eager step only by the order of
//! floating-point sums over the padded rows; the GPU self-check compares the two.
//!
//! Without CUDA (or with `capture` off, as the CPU tests run it) the same padded step runs
//! eagerly: the check that padding changes nothing.

use super::optim::GradAccum;
use crate::model::params::Fwd;
use crate::model::Llama;
use crate::objective::{loss_on, DeviceBatch, FixedShape, HostBatch, LossValues, Prepared};
use crate::{Error, Result};
use candle_core::{DType, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// How the training step is launched (`train.launch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepLaunch {
    /// `cuda_graph` on a CUDA device when the run allows it (no LoRA dropout), else `eager`;
    /// resolved before the run starts and recorded in its `config.json`.
    #[default]
    Auto,
    /// Every kernel launched from the host, each micro-batch at its own padded length.
    Eager,
    /// The forward and backward of each micro-batch replayed as a captured CUDA graph, at the
    /// run's fixed shape.
    CudaGraph,
}

impl StepLaunch {
    /// The config spelling.
    pub fn as_str(&self) -> &'static str {
        match self {
            StepLaunch::Auto => "auto",
            StepLaunch::Eager => "eager",
            StepLaunch::CudaGraph => "cuda_graph",
        }
    }
}

/// The LM-head row counts a run's graphs are captured at: eighths of the fixed shape's rows.
pub const HEAD_ROW_BUCKETS: usize = 8;

/// A graph and the input buffers it reads.
struct Entry {
    inputs: DeviceBatch,
    #[cfg(feature = "cuda")]
    graph: Option<candle_core::cuda_backend::cudarc::driver::CudaGraph>,
}

/// The captured training step of one run (see the module documentation).
pub struct GraphStep {
    shape: FixedShape,
    pad_id: u32,
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    capture: bool,
    /// (first micro-batch of the step, rows of the attention bias, LM-head rows) → its graph.
    entries: HashMap<(bool, Option<usize>, usize), Entry>,
    /// One f32 gradient buffer per trainable parameter.
    grads: Vec<Tensor>,
    /// The logged numbers of the last micro-batch, laid out as `LossParts::stats`.
    stats: Option<Tensor>,
    /// Graphs captured so far.
    pub captured: usize,
    /// Graph launches so far (the launch right after each capture included).
    pub launches: usize,
}

impl GraphStep {
    /// The step of a run whose micro-batches are padded to `shape` with `pad_id`, for the
    /// parameters of `accum`. `capture` false runs the padded step eagerly (CPU, tests).
    pub fn new(accum: &GradAccum, shape: FixedShape, pad_id: u32, capture: bool) -> Result<Self> {
        if capture && !cfg!(feature = "cuda") {
            return Err(Error::config("train.launch", "cuda_graph needs a binary built with CUDA (`make cuda`)"));
        }
        let grads = accum.params().iter().map(|p| p.as_tensor().zeros_like()?.to_dtype(DType::F32)).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { shape, pad_id, capture, entries: HashMap::new(), grads, stats: None, captured: 0, launches: 0 })
    }

    /// The fixed shape micro-batches are padded to.
    pub fn shape(&self) -> FixedShape {
        self.shape
    }

    /// LM-head rows of a micro-batch that scores `scored` rows: the next multiple of an eighth
    /// of the fixed shape's rows (at most all of them), so a graph is captured per eighth and
    /// the head does not run on up to twice the rows a diffusion step scores.
    pub fn head_rows(&self, scored: usize) -> usize {
        let q = self.shape.n.div_ceil(HEAD_ROW_BUCKETS).max(1);
        (scored.max(1).div_ceil(q) * q).min(self.shape.n)
    }

    /// Forward and backward of micro-batch `micro` of optimizer step `step` (loss normalised by
    /// `total_denom`), its gradients written (micro 0) or added into this step's buffers; the
    /// logged numbers, read back (one synchronisation).
    #[allow(clippy::too_many_arguments)]
    pub fn run(&mut self, model: &Llama, accum: &GradAccum, p: &Prepared, total_denom: f64, seed: u64, step: u64, micro: u64) -> Result<LossValues> {
        let shape = FixedShape { n: self.head_rows(p.rows.len()), ..self.shape };
        let host = HostBatch::padded(p, total_denom, seed, model.cfg.vocab_size, shape, self.pad_id)?;
        let first = micro == 0;
        let key = (first, host.bias.as_ref().map(|(_, r)| *r), shape.n);
        let ctx = Fwd { train: true, seed, step, micro };
        if self.stats.is_none() {
            let k = if host.scored.onehot.is_some() { 3 + crate::objective::T_BUCKETS } else { 3 };
            self.stats = Some(Tensor::zeros(k, DType::F32, &model.device)?);
        }
        let stats = self.stats.clone().ok_or_else(|| Error::msg("no stats buffer"))?;
        if let Some(e) = self.entries.get_mut(&key) {
            e.inputs.write(&host)?;
        } else {
            let inputs = host.upload(model.dtype, &model.device)?;
            let entry = self.capture_entry(model, accum, inputs, first, &stats, &ctx)?;
            self.entries.insert(key, entry);
        }
        let e = self.entries.get(&key).ok_or_else(|| Error::msg("no captured step"))?;
        #[cfg(feature = "cuda")]
        if let Some(g) = &e.graph {
            g.launch().map_err(|err| Error::msg(format!("cuda graph launch: {err:?}")))?;
            self.launches += 1;
            return LossValues::from_stats(&stats, host.scored.n_scored, host.scored.bucket_n);
        }
        body(model, accum, &e.inputs, first, &self.grads, &stats, &ctx)?;
        LossValues::from_stats(&stats, host.scored.n_scored, host.scored.bucket_n)
    }

    /// The gradient buffers (one per parameter): the sums of the micro-batches run since the
    /// last first micro-batch.
    pub fn grads(&self) -> Vec<Tensor> {
        self.grads.clone()
    }

    #[cfg(not(feature = "cuda"))]
    fn capture_entry(&mut self, _model: &Llama, _accum: &GradAccum, inputs: DeviceBatch, _first: bool, _stats: &Tensor, _ctx: &Fwd) -> Result<Entry> {
        Ok(Entry { inputs })
    }

    #[cfg(feature = "cuda")]
    fn capture_entry(&mut self, model: &Llama, accum: &GradAccum, inputs: DeviceBatch, first: bool, stats: &Tensor, ctx: &Fwd) -> Result<Entry> {
        use candle_core::cuda_backend::cudarc::driver::sys;
        let candle_core::Device::Cuda(dev) = &model.device else {
            return Ok(Entry { inputs, graph: None });
        };
        if !self.capture {
            return Ok(Entry { inputs, graph: None });
        }
        let cerr = |what: &str, e: &dyn std::fmt::Debug| Error::msg(format!("cuda graph {what}: {e:?} (train.launch = \"eager\" runs without graphs)"));
        let _cache = dev.enable_cuda_graph_htod_cache();
        // Warm-up into scratch buffers: loads the kernels and fills candle's parameter cache.
        let scratch: Vec<Tensor> = self.grads.iter().map(|g| g.zeros_like()).collect::<candle_core::Result<_>>()?;
        body(model, accum, &inputs, first, &scratch, &stats.zeros_like()?, ctx)?;
        drop(scratch);
        model.clear_adapter_copies();
        let stream = dev.cuda_stream();
        stream.synchronize().map_err(|e| cerr("warm-up", &e))?;
        stream.begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL).map_err(|e| cerr("begin capture", &e))?;
        let r = body(model, accum, &inputs, first, &self.grads, stats, ctx);
        let g = stream.end_capture(sys::CUgraphInstantiate_flags(0));
        r?;
        let graph = g.map_err(|e| cerr("capture", &e))?.ok_or_else(|| Error::msg("cuda graph capture recorded nothing"))?;
        graph.upload().map_err(|e| cerr("upload", &e))?;
        self.captured += 1;
        Ok(Entry { inputs, graph: Some(graph) })
    }
}

/// The captured work of one micro-batch: loss, backward, gradients into `grads` (copied when
/// `first`, else added), the logged numbers into `stats`; nothing it allocates outlives it.
fn body(model: &Llama, accum: &GradAccum, inputs: &DeviceBatch, first: bool, grads: &[Tensor], stats: &Tensor, ctx: &Fwd) -> Result<()> {
    let parts = loss_on(model, inputs, ctx)?;
    let store = parts.loss.backward()?;
    for (buf, g) in grads.iter().zip(accum.pass_grads(&store)?) {
        match (g, first) {
            (Some(g), true) => buf.slice_set(&g, 0, 0)?,
            (Some(g), false) => buf.slice_set(&(buf + g)?, 0, 0)?,
            (None, true) => buf.slice_set(&buf.zeros_like()?, 0, 0)?,
            (None, false) => {}
        }
    }
    stats.slice_set(&parts.stats, 0, 0)?;
    drop(store);
    drop(parts);
    model.clear_adapter_copies();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AdapterConfig, AdapterKind};
    use crate::objective::{Batch, Example, Objective};
    use crate::train::optim::GradAccum;
    use crate::train::step::{backward, forward};

    #[test]
    fn head_rows_round_up_to_an_eighth_of_the_fixed_rows() {
        let acc = GradAccum::new(&crate::model::Trainable::default());
        let g = GraphStep::new(&acc, FixedShape { b: 2, l: 10, n: 80 }, 0, false).unwrap();
        let rows: Vec<usize> = [0, 1, 10, 11, 79, 80, 200].iter().map(|&k| g.head_rows(k)).collect();
        assert_eq!(rows, [10, 10, 10, 20, 80, 80, 80]);
    }

    /// A padded step (eager, CPU) gives the unpadded step's loss, logged numbers and gradients,
    /// for diffusion (annealed attention, padded rows) and AR, over two micro-batches.
    #[test]
    fn the_padded_step_equals_the_unpadded_one() {
        for (objective, adapter) in [("ddm", AdapterKind::Lora), ("ar", AdapterKind::Full)] {
            let cfg = AdapterConfig { kind: adapter, rank: 4, alpha: 8.0, ..Default::default() };
            let (model, tr) = crate::model::load::random_model(&crate::model::load::tiny_config(48), &cfg, 1, &candle_core::Device::Cpu).unwrap();
            let obj: Box<dyn Objective> = if objective == "ddm" {
                crate::objective::build(
                    &crate::config::ObjectiveConfig::Diffusion(crate::objective::DiffusionConfig { anneal_steps: 5, ..Default::default() }),
                    3,
                )
            } else {
                crate::objective::build(&crate::config::ObjectiveConfig::Autoregressive, 3)
            };
            let ex = |p: usize, r: usize, s: u32| Example {
                prompt: (0..p as u32).map(|i| 4 + (i * 7 + s) % 40).collect(),
                response: (0..r as u32).map(|i| 4 + (i * 5 + s) % 40).collect(),
            };
            let data = [ex(3, 4, 1), ex(5, 2, 2), ex(2, 6, 3), ex(4, 3, 4)];
            let shape = FixedShape::for_examples(&data, 2).unwrap();
            let micro: Vec<Prepared> =
                data.chunks(2).enumerate().map(|(k, c)| obj.prepare(&Batch::collate(&c.iter().collect::<Vec<_>>(), 0), 2, k as u64, 11).unwrap()).collect();
            let total: f64 = micro.iter().map(|p| p.denom).sum();
            // eager, unpadded
            let mut acc = GradAccum::new(&tr);
            let mut want = Vec::new();
            for (k, p) in micro.iter().enumerate() {
                let parts = forward(&model, p, total, 11, 2, k as u64).unwrap();
                backward(&parts, &mut acc).unwrap();
                want.push(parts.read().unwrap());
            }
            let (want_g, _) = acc.take_clipped(0.0).unwrap();
            // padded
            let acc = GradAccum::new(&tr);
            let mut g = GraphStep::new(&acc, shape, 0, false).unwrap();
            for (k, p) in micro.iter().enumerate() {
                let v = g.run(&model, &acc, p, total, 11, 2, k as u64).unwrap();
                let w = want[k];
                assert!((v.loss - w.loss).abs() < 1e-5 * w.loss.abs().max(1.0), "{objective} micro {k}: loss {} vs {}", v.loss, w.loss);
                assert!((v.ce_sum - w.ce_sum).abs() < 1e-4, "{objective}: ce {} vs {}", v.ce_sum, w.ce_sum);
                assert_eq!((v.n_scored, v.n_correct), (w.n_scored, w.n_correct), "{objective}");
                if let (Some(a), Some(b)) = (v.buckets, w.buckets) {
                    assert_eq!(a.n, b.n);
                    for i in 0..a.ce_sum.len() {
                        assert!((a.ce_sum[i] - b.ce_sum[i]).abs() < 1e-4);
                    }
                }
            }
            for (i, (a, b)) in g.grads().iter().zip(&want_g.tensors).enumerate() {
                let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                let s = b.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
                assert!(d <= 1e-4 * s.max(1e-3), "{objective} param {i}: gradient differs by {d} (scale {s})");
            }
        }
    }
}
