//! `harness selfcheck`: the engine's pinned cross-check (the fixture model of
//! `tests/fixtures/tiny-llama`, a fixed batch, mask and t; losses pinned from PyTorch by
//! `tests/scripts/torch_crosscheck.py`) run on the chosen device, in f32 and in bf16, next to the
//! CPU numbers, plus one training step's gradient norm. Passes when every number is within its
//! tolerance: 1e-4 for f32, 2% relative for bf16. On CUDA also the fused kernels against their
//! composites and the flash attention kernels against the composite attention in f32 (checks
//! named `flash <case> <part>`, plus `flash training step ...`).

use crate::model::lora::AdapterConfig;
use crate::model::params::Fwd;
use crate::model::{BuildOpts, Llama, LlamaConfig};
use crate::objective::{scored_loss, Autoregressive, Batch, Diffusion, DiffusionConfig, LossNorm, Objective, TSampling};
use crate::{Error, Result};
use candle_core::{DType, Device, Tensor};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

const CONFIG: &str = include_str!("../../tests/fixtures/tiny-llama/config.json");
const WEIGHTS: &[u8] = include_bytes!("../../tests/fixtures/tiny-llama/model.safetensors");
/// Pins from tests/scripts/torch_crosscheck.py (torch 2.15.0, transformers 5.24.0).
pub const TORCH_PINS: [(&str, f64); 3] = [("ddm_shift", 7.822536499473421), ("ddm_noshift", 8.956690070264225), ("ar", 4.233227066904919)];

/// One compared number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Check {
    /// What was computed.
    pub name: String,
    /// Device and dtype.
    pub on: String,
    /// Value.
    pub value: f64,
    /// Reference value (PyTorch pin or the CPU f32 value).
    pub reference: f64,
    /// Allowed absolute difference.
    pub tolerance: f64,
    /// |value − reference| ≤ tolerance.
    pub ok: bool,
}

fn model_on(device: &Device, dtype: DType, adapter: &AdapterConfig) -> Result<(Llama, crate::model::Trainable)> {
    model_on_with(device, dtype, adapter, false)
}

/// [`model_on`], with the time embedding (`objective.time_conditioning = "embedding"`) when `timed`.
fn model_on_with(device: &Device, dtype: DType, adapter: &AdapterConfig, timed: bool) -> Result<(Llama, crate::model::Trainable)> {
    let cfg: LlamaConfig = serde_json::from_str(CONFIG).map_err(|e| Error::msg(e.to_string()))?;
    let tensors: HashMap<String, Tensor> = candle_core::safetensors::load_buffer(WEIGHTS, &Device::Cpu)?
        .into_iter()
        .map(|(k, v)| Ok((k, v.to_dtype(dtype)?.to_device(device)?)))
        .collect::<candle_core::Result<_>>()?;
    let vb = candle_nn::VarBuilder::from_tensors(tensors, dtype, device);
    Llama::load(vb, &cfg, &BuildOpts { adapter, seed: 0, layer_path: crate::model::LayerPath::Fused, time_embedding: timed })
}

/// The pinned batch of `tests/scripts/torch_crosscheck.py`: two rows of 10 tokens (prompts of 4
/// and 6), and which positions are masked (t = 0.4 and 0.75).
pub fn fixture_batch() -> (Batch, Vec<bool>) {
    let ids = vec![5, 9, 2, 17, 33, 8, 41, 12, 7, 3, 11, 4, 29, 6, 50, 21, 13, 2, 44, 3];
    let batch = Batch { ids, b: 2, l: 10, prompt_len: vec![4, 6], len: vec![10, 10] };
    let mut masked = vec![false; 20];
    for p in [4, 6, 7, 9] {
        masked[p] = true;
    }
    for p in [6, 8, 9] {
        masked[10 + p] = true;
    }
    (batch, masked)
}

fn diffusion(shift: bool) -> Diffusion {
    Diffusion::new(63, DiffusionConfig { t_sampling: TSampling::Uniform, eps: 1e-3, shift, loss_norm: LossNorm::Masked, score_padding: false, anneal_steps: 1, ..Default::default() })
}

/// The three pinned losses and one step's gradient norm (LoRA 4) on `device` in `dtype`.
pub fn losses(device: &Device, dtype: DType) -> Result<Vec<(String, f64)>> {
    let none = AdapterConfig { targets: vec![], ..Default::default() };
    let (model, _) = model_on(device, dtype, &none)?;
    let (batch, masked) = fixture_batch();
    let mut out = Vec::new();
    for train in [false, true] {
        let ctx = Fwd { train, ..Default::default() };
        let sfx = if train { "/train-path" } else { "" };
        for (name, shift) in [("ddm_shift", true), ("ddm_noshift", false)] {
            let p = diffusion(shift).prepare_with(&batch, &[0.4, 0.75], &masked, 0)?;
            out.push((format!("{name}{sfx}"), scored_loss(&model, &p, p.denom, 0, &ctx)?.read()?.loss));
        }
        let p = Autoregressive.prepare(&batch, 0, 0, 0)?;
        out.push((format!("ar{sfx}"), scored_loss(&model, &p, p.denom, 0, &ctx)?.read()?.loss));
        // the layouts with their own visibility and RoPE positions: block diffusion's two copies
        // (blocks of 2) and both objectives packed two rows to one
        let blocks = Diffusion::new(63, DiffusionConfig { block_size: 2, ..diffusion(true).cfg });
        let p = blocks.prepare_with(&batch, &[0.4, 0.75], &masked, 0)?;
        out.push((format!("ddm_blocks2{sfx}"), scored_loss(&model, &p, p.denom, 0, &ctx)?.read()?.loss));
        // a time-conditioned model, its embedding set to seeded values (zero at initialisation
        // would give the plain loss): the time features and their product on the device
        let (timed, ttr) = model_on_with(device, dtype, &none, true)?;
        for (name, v) in &ttr.entries {
            if name.contains("time_embed") {
                let mut rng = crate::rng::rng_for(0, crate::rng::Purpose::Init, 91, 0);
                let w: Vec<f32> = (0..v.elem_count()).map(|_| rand::Rng::random_range(&mut rng, -0.05f32..0.05)).collect();
                v.set(&Tensor::from_vec(w, v.dims(), &Device::Cpu)?.to_device(device)?)?;
            }
        }
        let tc = Diffusion::new(63, DiffusionConfig { time_conditioning: crate::objective::diffusion::TimeConditioning::Embedding, ..diffusion(true).cfg });
        let p = tc.prepare_with(&batch, &[0.4, 0.75], &masked, 0)?;
        out.push((format!("ddm_time_embedding{sfx}"), scored_loss(&timed, &p, p.denom, 0, &ctx)?.read()?.loss));
        // the families' extra parameters: Qwen2's q/k/v biases, Qwen3's per-head q/k norms with
        // heads × head_dim ≠ hidden (tiny random shapes, the same weights on every device)
        let tiny = crate::model::load::tiny_config(64);
        for (name, cfg) in [
            ("qwen2_shape", LlamaConfig { qkv_bias: true, ..tiny.clone() }),
            ("qwen3_shape", LlamaConfig { qk_norm: true, head_dim: Some(16), ..tiny.clone() }),
        ] {
            let full = AdapterConfig { kind: crate::model::lora::AdapterKind::Full, ..Default::default() };
            let (m, _) = crate::model::load::random_model_dtype(&cfg, &full, 3, dtype, device)?;
            let p = diffusion(true).prepare_with(&batch, &[0.4, 0.75], &masked, 0)?;
            out.push((format!("ddm_{name}{sfx}"), scored_loss(&m, &p, p.denom, 0, &ctx)?.read()?.loss));
        }
        for (name, p) in [("ddm_shift_packed", diffusion(true).prepare_with(&batch, &[0.4, 0.75], &masked, 0)?), ("ar_packed", Autoregressive.prepare(&batch, 0, 0, 0)?)] {
            let (q, _) = crate::objective::pack::pack(&p, 20, 0)?;
            out.push((format!("{name}{sfx}"), scored_loss(&model, &q, q.denom, 0, &ctx)?.read()?.loss));
        }
    }
    // gradient norm of one LoRA step (B = 0 at init, so use full fine-tuning for a non-trivial norm)
    let full = AdapterConfig { kind: crate::model::lora::AdapterKind::Full, ..Default::default() };
    let (model, tr) = model_on(device, dtype, &full)?;
    let p = diffusion(true).prepare_with(&batch, &[0.4, 0.75], &masked, 0)?;
    let mut acc = crate::train::optim::GradAccum::new(&tr);
    let mut opt = crate::train::optim::AdamW::new(&tr, Default::default())?;
    let sc = crate::train::step::StepCtx { seed: 0, step: 0, accum: &mut acc, opt: &mut opt, lr: 1e-4, max_grad_norm: 0.0, graph: None, dist: None };
    let v = crate::train::step::train_step(&model, std::slice::from_ref(&p), sc)?;
    out.push(("ddm_shift_grad_norm".into(), v.grad_norm));
    Ok(out)
}

/// Run every check on `device` (f32 and bf16) against the PyTorch pins and the CPU values.
pub fn run(device: &Device) -> Result<Vec<Check>> {
    let cpu = losses(&Device::Cpu, DType::F32)?;
    let dev_name = format!("{:?}", device.location());
    let mut checks = Vec::new();
    for (name, v) in &cpu {
        let base = name.trim_end_matches("/train-path");
        if let Some((_, pin)) = TORCH_PINS.iter().find(|(n, _)| *n == base) {
            checks.push(Check { name: format!("{name} vs torch"), on: "cpu f32".into(), value: *v, reference: *pin, tolerance: 1e-4, ok: (v - pin).abs() <= 1e-4 });
        }
    }
    for dtype in [DType::F32, DType::BF16] {
        if dtype == DType::BF16 && device.is_cpu() {
            continue; // bf16 matmul on CPU is slow and not the path we ship
        }
        let vals = losses(device, dtype)?;
        for ((name, v), (_, c)) in vals.iter().zip(&cpu) {
            let tol = if dtype == DType::F32 { 1e-4 * c.abs().max(1.0) } else { 0.02 * c.abs() };
            checks.push(Check { name: format!("{name} vs cpu"), on: format!("{dev_name} {dtype:?}"), value: *v, reference: *c, tolerance: tol, ok: (v - c).abs() <= tol });
        }
    }
    checks.extend(optimizer_checks(device)?);
    if device.is_cuda() {
        checks.extend(kernel_checks(device)?);
        checks.extend(flash_checks(device)?);
        #[cfg(feature = "nccl")]
        checks.extend(nccl_checks(device)?);
        checks.extend(graph_checks(device)?);
    }
    Ok(checks)
}

/// NCCL (data-parallel training, `crate::train::dist`) on a world of one rank: the bucketed
/// all-reduce of three gradients (one over a bucket's size) gives them back unchanged, the
/// scalar sum passes through, and the checksum agrees with itself.
#[cfg(feature = "nccl")]
fn nccl_checks(device: &Device) -> Result<Vec<Check>> {
    use crate::train::dist::{Dist, BUCKET_BYTES};
    let dist = Dist::world_of_one(device)?;
    let on = format!("{:?} NCCL world 1", device.location());
    let ts = vec![
        Tensor::randn(0f32, 1.0, (7, 5), device)?,
        Tensor::randn(0f32, 1.0, BUCKET_BYTES / 4 + 3, device)?,
        Tensor::randn(0f32, 1.0, (3, 2), device)?.to_dtype(DType::BF16)?,
    ];
    let back = dist.sum_tensors(ts.clone())?;
    let mut worst = 0f64;
    for (a, b) in ts.iter().zip(&back) {
        if a.shape() != b.shape() || a.dtype() != b.dtype() {
            return Err(Error::msg(format!("NCCL all-reduce changed {:?} {:?} into {:?} {:?}", a.shape(), a.dtype(), b.shape(), b.dtype())));
        }
        let d = (a.to_dtype(DType::F32)? - b.to_dtype(DType::F32)?)?.abs()?.max_all()?.to_scalar::<f32>()? as f64;
        worst = worst.max(d);
    }
    let s = dist.sum_scalars(&[2.5, -1.0], device)?;
    let same = dist.same_everywhere(1234.5, device)?;
    let check = |name: &str, value: f64, reference: f64| Check { name: name.into(), on: on.clone(), value, reference, tolerance: 0.0, ok: value == reference };
    Ok(vec![
        check("nccl all-reduce of 3 gradients, 2 buckets: max |out - in|", worst, 0.0),
        check("nccl scalar sum of [2.5, -1.0]: first", s[0], 2.5),
        check("nccl checksum the same on every rank", if same { 1.0 } else { 0.0 }, 1.0),
    ])
}

/// The small head-width-64 model of the flash and graph step checks (the flash kernels serve it).
fn head64_config() -> LlamaConfig {
    LlamaConfig {
        vocab_size: 64,
        hidden_size: 256,
        intermediate_size: 512,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        max_position_embeddings: 128,
        tie_word_embeddings: true,
        qkv_bias: false,
        head_dim: None,
        qk_norm: false,
        model_type: None,
    }
}

/// Four optimizer steps of two micro-batches each (annealed attention, right padding, lengths
/// that vary by step, LoRA 8 and full fine-tuning) run eagerly and as captured CUDA graphs
/// ([`crate::train::graph`]) from the same bf16 model: per-step loss and gradient norm, and the
/// trained parameters, must agree to bf16 rounding; and the graph run must have launched a graph
/// for every micro-batch, replaying some (fewer captures than launches).
fn graph_checks(device: &Device) -> Result<Vec<Check>> {
    use crate::model::lora::AdapterKind;
    use crate::objective::{Example, FixedShape};
    use crate::train::graph::GraphStep;
    let cfg = head64_config();
    let on = format!("{:?} BF16", device.location());
    let data: Vec<Example> = (0..16u32)
        .map(|i| {
            let (p, r) = (4 + (i * 5 % 9) as usize, 3 + (i * 7 % 11) as usize);
            Example { prompt: (0..p as u32).map(|j| 3 + (i * 13 + j * 7) % 60).collect(), response: (0..r as u32).map(|j| 3 + (i * 11 + j * 5) % 60).collect() }
        })
        .collect();
    let shape = FixedShape::for_examples(&data, 4).ok_or_else(|| Error::msg("no data"))?;
    let obj = Diffusion::new(63, DiffusionConfig { anneal_steps: 6, ..Default::default() });
    let mut out = Vec::new();
    for (kind, rank) in [(AdapterKind::Lora, 8), (AdapterKind::Full, 0)] {
        let adapter = AdapterConfig { kind, rank: rank.max(1), alpha: 16.0, ..Default::default() };
        let name = if rank == 0 { "full".to_string() } else { format!("LoRA {rank}") };
        let mut runs = Vec::new();
        for graph in [false, true] {
            let w = crate::model::load::random_weights(&cfg, 0.08, 3, DType::BF16, device)?;
            let vb = candle_nn::VarBuilder::from_tensors(w, DType::BF16, device);
            let (model, tr) = Llama::load(vb, &cfg, &BuildOpts { adapter: &adapter, seed: 3, layer_path: crate::model::LayerPath::Fused, time_embedding: false })?;
            let mut acc = crate::train::optim::GradAccum::new(&tr);
            let mut opt = crate::train::optim::AdamW::new(&tr, Default::default())?;
            let mut g = if graph { Some(GraphStep::new(&acc, shape, 0, true)?) } else { None };
            let mut per_step = Vec::new();
            for step in 0..4u64 {
                let prepared: Vec<_> = (0..2)
                    .map(|m| {
                        let k = (step as usize * 2 + m) % 4;
                        let refs: Vec<&Example> = data[k * 4..k * 4 + 4].iter().collect();
                        obj.prepare(&Batch::collate(&refs, 0), step, m as u64, 5)
                    })
                    .collect::<Result<_>>()?;
                let sc = crate::train::step::StepCtx { seed: 5, step, accum: &mut acc, opt: &mut opt, lr: 1e-3, max_grad_norm: 1.0, graph: g.as_mut(), dist: None };
                let v = crate::train::step::train_step(&model, &prepared, sc)?;
                per_step.push((v.loss, v.grad_norm));
            }
            let sum: f64 = tr
                .entries
                .iter()
                .map(|(_, v)| v.as_tensor().to_dtype(DType::F32)?.abs()?.sum_all()?.to_scalar::<f32>().map(f64::from))
                .sum::<candle_core::Result<f64>>()?;
            runs.push((per_step, sum, g.map(|g| (g.captured, g.launches))));
        }
        let ((eager, sum_e, _), (graph, sum_g, captured)) = (&runs[0], &runs[1]);
        for (k, ((le, ne), (lg, ng))) in eager.iter().zip(graph).enumerate() {
            let tl = 2e-2 * le.abs();
            out.push(Check {
                name: format!("cuda graph {name} step {} loss vs eager", k + 1),
                on: on.clone(),
                value: *lg,
                reference: *le,
                tolerance: tl,
                ok: (lg - le).abs() <= tl,
            });
            let tn = 3e-2 * ne.abs();
            out.push(Check {
                name: format!("cuda graph {name} step {} grad norm vs eager", k + 1),
                on: on.clone(),
                value: *ng,
                reference: *ne,
                tolerance: tn,
                ok: (ng - ne).abs() <= tn,
            });
        }
        let ts = 1e-2 * sum_e.abs();
        out.push(Check {
            name: format!("cuda graph {name} Σ|θ| after 4 steps vs eager"),
            on: on.clone(),
            value: *sum_g,
            reference: *sum_e,
            tolerance: ts,
            ok: (sum_g - sum_e).abs() <= ts,
        });
        // every one of the 8 micro-batches ran as a graph launch, and fewer graphs were captured
        // than launched (replays happened): at least the first and the accumulating micro-batch
        let (c, l) = captured.unwrap_or((0, 0));
        out.push(Check { name: format!("cuda graph {name}: graph launches of 8 micro-batches"), on: on.clone(), value: l as f64, reference: 8.0, tolerance: 0.0, ok: l == 8 });
        out.push(Check { name: format!("cuda graph {name}: graphs captured (≥ 2, < 8 launches)"), on: on.clone(), value: c as f64, reference: 2.0, tolerance: 5.0, ok: (2..8).contains(&c) });
    }
    Ok(out)
}

/// The fused bf16 kernels (kernels/fused.rs) against their composite expressions on `device`.
fn kernel_checks(device: &Device) -> Result<Vec<Check>> {
    use crate::kernels::fused as k;
    let bf = DType::BF16;
    let r = |shape: &[usize], std: f64| -> Result<Tensor> { Ok(Tensor::randn(0f32, std as f32, shape, device)?.to_dtype(bf)?) };
    let on = format!("{:?} BF16", device.location());
    let mut out = Vec::new();
    let mut push = |name: &str, a: &Tensor, b: &Tensor| -> Result<()> {
        let a = a.to_dtype(DType::F32)?.flatten_all()?;
        let b = b.to_dtype(DType::F32)?.flatten_all()?;
        let diff = (&a - &b)?.abs()?.max(0)?.to_scalar::<f32>()? as f64;
        let scale = b.abs()?.max(0)?.to_scalar::<f32>()? as f64;
        let tol = 0.02 * scale + 1e-4;
        out.push(Check { name: format!("kernel {name}: max |fused - composite|"), on: on.clone(), value: diff, reference: 0.0, tolerance: tol, ok: diff <= tol });
        Ok(())
    };
    let (b, h, l, t) = (2, 3, 17, 40);
    let s = r(&[b, h, l, t], 3.0)?;
    let mask: Vec<f32> = (0..b * l * t).map(|i| if (i % t) > (i / t) % l + 20 { crate::model::mask::MASKED_BIAS } else { 0.0 }).collect();
    let bias_b = Tensor::from_vec(mask.clone(), (b, 1, l, t), device)?.to_dtype(bf)?;
    let bias_1 = bias_b.narrow(0, 0, 1)?.contiguous()?;
    for (name, bias) in [("softmax", None), ("softmax + batch mask", Some(&bias_b)), ("softmax + shared mask", Some(&bias_1))] {
        push(name, &k::softmax_bias(&s, bias, 0.125)?, &k::softmax_bias_composite(&s, bias, 0.125)?)?;
    }
    let p = k::softmax_bias_composite(&s, None, 0.125)?;
    let dp = r(&[b, h, l, t], 1.0)?;
    push("softmax backward", &k::softmax_bwd(&p, &dp)?, &k::softmax_bwd_composite(&p, &dp)?)?;
    let x = r(&[3, 5, 96], 2.0)?;
    let w = (r(&[96], 0.3)? + 1.0)?;
    let g = r(&[3, 5, 96], 1.0)?;
    push("rms-norm backward", &k::rms_norm_bwd(&x, &w, &g, 1e-5)?, &k::rms_norm_bwd_composite(&x, &w, &g, 1e-5)?)?;
    push("rms-norm backward + residual", &k::rms_norm_bwd_add(&x, &w, &g, 1e-5, Some(&x))?, &(k::rms_norm_bwd_composite(&x, &w, &g, 1e-5)? + &x)?)?;
    let logits = r(&[37, 1000], 4.0)?;
    let tg = Tensor::from_vec((0..37u32).map(|i| (i * 271) % 1000).collect::<Vec<_>>(), 37, device)?;
    let (l1, c1, h1) = k::ce_fwd(&logits, &tg)?;
    let (l2, c2, h2) = k::ce_fwd_composite(&logits, &tg)?;
    push("cross-entropy lse", &l1, &l2)?;
    push("cross-entropy", &c1, &c2)?;
    push("cross-entropy hits", &h1, &h2)?;
    let gce = Tensor::randn(0f32, 1.0, 37, device)?;
    push("cross-entropy backward", &k::ce_bwd(&logits, &tg, &l2, &gce)?, &k::ce_bwd_composite(&logits, &tg, &l2, &gce)?)?;
    let (g, u, dy) = (r(&[4, 7, 33], 2.0)?, r(&[4, 7, 33], 1.0)?, r(&[4, 7, 33], 1.0)?);
    push("swiglu", &k::swiglu(&g, &u)?, &k::swiglu_composite(&g, &u)?)?;
    let (a1, b1) = k::swiglu_bwd(&g, &u, &dy)?;
    let (a2, b2) = k::swiglu_bwd_composite(&g, &u, &dy)?;
    push("swiglu backward dg", &a1, &a2)?;
    push("swiglu backward du", &b1, &b2)?;
    // the layout and accumulating-matmul kernels (kernels/layout.rs, kernels/gemm.rs)
    use crate::kernels::{gemm, layout};
    let q = r(&[2, 37, 3, 64], 1.0)?;
    push("swap axes", &layout::swap_axes(&q)?, &layout::swap_axes_composite(&q)?)?;
    let (ya, aa, bt) = (r(&[37, 48], 1.0)?, r(&[37, 16], 1.0)?, r(&[48, 16], 1.0)?);
    push("matmul accumulate (b transposed)", &gemm::matmul_acc(ya.copy()?, &aa, &bt, true)?, &gemm::matmul_acc_composite(&ya, &aa, &bt, true)?)?;
    let bn = bt.t()?.contiguous()?;
    push("matmul accumulate", &gemm::matmul_acc(ya.copy()?, &aa, &bn, false)?, &gemm::matmul_acc_composite(&ya, &aa, &bn, false)?)?;
    let (wa, wb) = (r(&[300, 24], 1.0)?, r(&[300, 40], 1.0)?);
    push("weight-gradient matmul (f32 out)", &gemm::matmul_tn_f32(&wa, &wb, 0.5)?, &gemm::matmul_tn_f32_composite(&wa, &wb, 0.5)?)?;
    let table = candle_core::Var::from_tensor(&r(&[50, 64], 1.0)?)?;
    let ids = Tensor::from_vec(vec![3u32, 7, 3, 49, 0, 7, 7], 7, device)?;
    let gout = r(&[7, 64], 1.0)?;
    let composite = table.as_tensor().zeros_like()?.index_add(&ids, &gout, 0)?;
    let ge = (layout::embedding(table.as_tensor(), &ids)? * &gout)?.sum_all()?.backward()?;
    push("embedding backward", ge.get(table.as_tensor()).ok_or_else(|| Error::msg("no embedding gradient"))?, &composite)?;
    let rows = Tensor::from_vec(vec![5u32, 0, 49, 12], 4, device)?;
    let grow = r(&[4, 64], 1.0)?;
    let composite = table.as_tensor().zeros_like()?.index_add(&rows, &grow, 0)?;
    let gr = (layout::gather_rows(table.as_tensor(), &rows)? * &grow)?.sum_all()?.backward()?;
    push("gather rows backward", gr.get(table.as_tensor()).ok_or_else(|| Error::msg("no row gradient"))?, &composite)?;
    Ok(out)
}

/// One flash-attention test case: shapes, which bias, and whether backward is checked too.
struct FlashCase {
    name: &'static str,
    b: usize,
    h: usize,
    hkv: usize,
    l: usize,
    t: usize,
    bias: FlashBias,
    bwd: bool,
}

#[derive(Clone, Copy)]
enum FlashBias {
    None,
    /// (1, 1, L, L): the annealed mask at step 1 of 4 (half of the future visible).
    Annealed,
    /// (B, 1, L, L): causal, row 1 left-padded by L/3 keys, so its first L/3 queries see no key
    /// ([`crate::model::mask::EmptyRow::Hidden`]: their bias stays −1e9 everywhere).
    Padded,
    /// (1, 1, L, T): query i sees keys 0..=T−L+i (a chunk continuing a KV cache).
    Cache,
    /// (B, 1, L, T): [`Self::Cache`] with row 1's first T−L+2 keys padding, so its first two
    /// queries see no key.
    CachePadded,
}

/// The flash attention kernels (kernels/flash.rs) against the composite attention
/// (model/attention.rs) computed in f32 from the same bf16 inputs: output, dq, dk, dv as
/// max |flash − composite| / max |composite| (the names say the case and the part; the
/// parenthesis where the worst element is and how many are out of tolerance), then one fused
/// training step of a head-width-64 model with and without flash.
fn flash_checks(device: &Device) -> Result<Vec<Check>> {
    use crate::kernels::flash;
    use crate::model::attention;
    use crate::model::mask::{self, AttentionMode, EmptyRow};
    let (bf, f32t) = (DType::BF16, DType::F32);
    let on = format!("{:?} BF16", device.location());
    let cases = [
        FlashCase { name: "B2 H9/3 L=T=160 no bias", b: 2, h: 9, hkv: 3, l: 160, t: 160, bias: FlashBias::None, bwd: true },
        FlashCase { name: "B2 H9/3 L=T=160 annealed (1,1,L,L)", b: 2, h: 9, hkv: 3, l: 160, t: 160, bias: FlashBias::Annealed, bwd: true },
        FlashCase { name: "B2 H9/3 L=T=160 key padding (B,1,L,L) empty rows", b: 2, h: 9, hkv: 3, l: 160, t: 160, bias: FlashBias::Padded, bwd: true },
        FlashCase { name: "B2 H9/3 L=T=37 annealed", b: 2, h: 9, hkv: 3, l: 37, t: 37, bias: FlashBias::Annealed, bwd: true },
        FlashCase { name: "B3 H4/4 L=T=161 key padding", b: 3, h: 4, hkv: 4, l: 161, t: 161, bias: FlashBias::Padded, bwd: true },
        FlashCase { name: "B1 H9/3 L=T=512 annealed", b: 1, h: 9, hkv: 3, l: 512, t: 512, bias: FlashBias::Annealed, bwd: true },
        FlashCase { name: "B2 H8/1 L=37 T=100 cache mask (1,1,L,T)", b: 2, h: 8, hkv: 1, l: 37, t: 100, bias: FlashBias::Cache, bwd: true },
        FlashCase { name: "B2 H9/3 L=5 T=40 cache mask", b: 2, h: 9, hkv: 3, l: 5, t: 40, bias: FlashBias::Cache, bwd: false },
        FlashCase { name: "B2 H9/3 L=5 T=40 cache mask, padded (B,1,L,T) empty rows", b: 2, h: 9, hkv: 3, l: 5, t: 40, bias: FlashBias::CachePadded, bwd: false },
        FlashCase { name: "B2 H9/3 L=1 T=40 no bias", b: 2, h: 9, hkv: 3, l: 1, t: 40, bias: FlashBias::None, bwd: false },
    ];
    let mut out = Vec::new();
    for c in &cases {
        let dh = flash::HEAD_DIM;
        let r = |shape: &[usize], std: f32| -> Result<Tensor> { Ok(Tensor::randn(0f32, std, shape, device)?.to_dtype(bf)?) };
        // scores of std ~2 after scaling: peaked rows, so the online rescaling matters
        let q = r(&[c.b, c.h, c.l, dh], 1.5)?;
        let k = r(&[c.b, c.hkv, c.t, dh], 1.5)?;
        let v = r(&[c.b, c.hkv, c.t, dh], 1.0)?;
        let g = r(&[c.b, c.l, c.h * dh], 1.0)?;
        let bias: Option<Tensor> = match c.bias {
            FlashBias::None => None,
            FlashBias::Annealed => mask::attention_bias(AttentionMode::Annealed { anneal_steps: 4 }, 1, 7, c.l, None, bf, device)?,
            FlashBias::Padded => {
                let vis = mask::visibility(AttentionMode::Causal, c.l, 0, 0);
                let pad = c.l / 3;
                let kv: Vec<Vec<bool>> = (0..c.b).map(|bi| (0..c.l).map(|j| bi != 1 || j >= pad).collect()).collect();
                Some(mask::additive_bias(&vis, (c.l, c.t), Some(&kv), EmptyRow::Hidden, bf, device)?)
            }
            FlashBias::Cache => mask::cache_bias(c.l, c.t - c.l, bf, device)?,
            FlashBias::CachePadded => {
                let pad: Vec<usize> = (0..c.b).map(|bi| if bi == 1 { c.t - c.l + 2 } else { 0 }).collect();
                mask::padded_cache_bias(c.l, c.t - c.l, &pad, bf, device)?
            }
        };
        let up = |t: &Tensor| t.to_dtype(f32t);
        let (q32, k32, v32, g32) = (up(&q)?, up(&k)?, up(&v)?, up(&g)?);
        let b32 = bias.as_ref().map(up).transpose()?;
        let scale = 1.0 / (dh as f64).sqrt();
        let (o, lse) = flash::flash_fwd(&q, &k, &v, bias.as_ref(), scale)?;
        let o_ref = attention::attention_fwd_composite(&q32, &k32, &v32, b32.as_ref())?;
        out.push(flash_compare(&format!("flash {} forward o", c.name), &on, &o, &o_ref)?);
        if c.bwd {
            let (dq, dk, dv) = flash::flash_bwd(&q, &k, &v, &o, &lse, &g, bias.as_ref(), scale)?;
            let (dq_ref, dk_ref, dv_ref) = attention::attention_bwd_composite(&q32, &k32, &v32, b32.as_ref(), &g32)?;
            out.push(flash_compare(&format!("flash {} backward dq", c.name), &on, &dq, &dq_ref)?);
            out.push(flash_compare(&format!("flash {} backward dk", c.name), &on, &dk, &dk_ref)?);
            out.push(flash_compare(&format!("flash {} backward dv", c.name), &on, &dv, &dv_ref)?);
        }
    }
    out.extend(flash_step_checks(device, &on)?);
    Ok(out)
}

/// max |a − b| / max |b| over all elements (NaN or ±inf in `a`: reported as NaN, failing), with
/// the worst element's index (in `b`'s shape), how many elements exceed the tolerance and how many
/// of `a` are not finite in the check's name. Tolerance 2e-2.
fn flash_compare(name: &str, on: &str, a: &Tensor, b: &Tensor) -> Result<Check> {
    let tol = 2e-2;
    let dims = b.dims().to_vec();
    if a.dims() != b.dims() {
        return Ok(Check { name: format!("{name} (shape {:?} vs reference {:?})", a.dims(), dims), on: on.into(), value: f64::NAN, reference: 0.0, tolerance: tol, ok: false });
    }
    let av: Vec<f32> = a.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let bv: Vec<f32> = b.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
    let scale = bv.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-20) as f64;
    let (mut worst, mut at, mut bad, mut nonfinite) = (0f64, 0usize, 0usize, 0usize);
    for (i, (x, y)) in av.iter().zip(&bv).enumerate() {
        let d = if x.is_finite() { (x - y).abs() as f64 } else { f64::INFINITY };
        nonfinite += usize::from(!x.is_finite());
        bad += usize::from(d > tol * scale);
        if d > worst || (d.is_infinite() && worst.is_finite()) {
            worst = d;
            at = i;
        }
    }
    let mut idx = vec![0usize; dims.len()];
    let mut rest = at;
    for (k, &n) in dims.iter().enumerate().rev() {
        idx[k] = rest % n.max(1);
        rest /= n.max(1);
    }
    let rel = if worst.is_finite() { worst / scale } else { f64::NAN };
    let detail = format!("worst at {idx:?} of {dims:?}: {} vs {}; {bad} of {} over tol; {nonfinite} non-finite; max|ref| {scale:.3e}", av[at], bv[at], av.len());
    Ok(Check { name: format!("{name}: max|flash - f32 composite|/max|ref| ({detail})"), on: on.into(), value: rel, reference: 0.0, tolerance: tol, ok: rel <= tol })
}

/// One fused training step (LoRA-free full fine-tuning, annealed mask, right padding) of a small
/// head-width-64 model in bf16, with the flash kernels and with the composite attention forced:
/// loss and gradient norm must agree to bf16 rounding.
fn flash_step_checks(device: &Device, on: &str) -> Result<Vec<Check>> {
    use crate::kernels::flash;
    let cfg = head64_config();
    let probe_q = Tensor::zeros((1, 4, 8, 64), DType::BF16, device)?;
    let probe_k = Tensor::zeros((1, 2, 8, 64), DType::BF16, device)?;
    let serves = flash::flash_ok(&probe_q, &probe_k, None);
    let mut out = vec![Check {
        name: "flash serves bf16 head-width-64 attention (1 = yes; 0 under DDM_ATTENTION=composite)".into(),
        on: on.into(),
        value: f64::from(u8::from(serves)),
        reference: 1.0,
        tolerance: 0.0,
        ok: serves,
    }];
    let (b, l) = (2, 48);
    let ids: Vec<u32> = (0..b * l).map(|i| ((i * 37 + 11) % 62) as u32).collect();
    let batch = Batch { ids, b, l, prompt_len: vec![4, 6], len: vec![48, 37] };
    let obj = Diffusion::new(63, DiffusionConfig { anneal_steps: 4, ..Default::default() });
    let step = |model: &Llama, tr: &crate::model::Trainable| -> Result<(f64, f64)> {
        let p = obj.prepare(&batch, 1, 0, 5)?;
        let mut acc = crate::train::optim::GradAccum::new(tr);
        let mut opt = crate::train::optim::AdamW::new(tr, Default::default())?;
        let sc = crate::train::step::StepCtx { seed: 5, step: 1, accum: &mut acc, opt: &mut opt, lr: 1e-4, max_grad_norm: 0.0, graph: None, dist: None };
        let v = crate::train::step::train_step(model, std::slice::from_ref(&p), sc)?;
        Ok((v.loss, v.grad_norm))
    };
    let full = AdapterConfig { kind: crate::model::lora::AdapterKind::Full, ..Default::default() };
    let build = || -> Result<(Llama, crate::model::Trainable)> {
        // init std 0.08: attention far from uniform at width 256
        let w = crate::model::load::random_weights(&cfg, 0.08, 3, DType::BF16, device)?;
        let vb = candle_nn::VarBuilder::from_tensors(w, DType::BF16, device);
        Llama::load(vb, &cfg, &BuildOpts { adapter: &full, seed: 3, layer_path: crate::model::LayerPath::Fused, time_embedding: false })
    };
    let (m1, t1) = build()?;
    let (loss_f, norm_f) = step(&m1, &t1)?;
    let (m2, t2) = build()?;
    let (loss_c, norm_c) = flash::with_composite(|| step(&m2, &t2))?;
    let tl = 1e-2 * loss_c.abs();
    out.push(Check { name: "flash training step loss vs composite attention".into(), on: on.into(), value: loss_f, reference: loss_c, tolerance: tl, ok: (loss_f - loss_c).abs() <= tl });
    let tn = 2e-2 * norm_c.abs();
    out.push(Check { name: "flash training step grad norm vs composite attention".into(), on: on.into(), value: norm_f, reference: norm_c, tolerance: tn, ok: (norm_f - norm_c).abs() <= tn });
    Ok(out)
}

/// The optimizer on `device` (the fused multi-tensor kernels on CUDA) against the element-wise
/// reference path on the same device: global gradient norm and three AdamW steps with clipping.
fn optimizer_checks(device: &Device) -> Result<Vec<Check>> {
    use crate::train::optim::{global_norm, AdamW, AdamWParams, Grads};
    let shapes: [&[usize]; 4] = [&[16, 24], &[24, 16], &[7], &[3, 5, 2]];
    let mut rng = crate::rng::rng_for(7, crate::rng::Purpose::Init, 0, 0);
    let mut rand = |n: usize| -> Vec<f32> { (0..n).map(|_| rand::Rng::random_range(&mut rng, -1.0f32..1.0)).collect() };
    let mut params = Vec::new();
    let mut grads = Vec::new();
    for (i, sh) in shapes.iter().enumerate() {
        let n: usize = sh.iter().product();
        params.push((format!("p{i}"), Tensor::from_vec(rand(n), *sh, device)?));
        grads.push(Tensor::from_vec(rand(n), *sh, device)?);
    }
    let norm_ref = {
        let sq: Vec<Tensor> = grads.iter().map(|g| g.sqr()?.sum_all()).collect::<candle_core::Result<_>>()?;
        (Tensor::stack(&sq, 0)?.sum_all()?.to_scalar::<f32>()? as f64).sqrt()
    };
    let norm = global_norm(&grads)?;
    let mut out = vec![Check {
        name: "gradient norm vs element-wise".into(),
        on: format!("{:?} F32", device.location()),
        value: norm,
        reference: norm_ref,
        tolerance: 1e-5 * norm_ref,
        ok: (norm - norm_ref).abs() <= 1e-5 * norm_ref,
    }];
    let mut finals = Vec::new();
    for fused in [true, false] {
        let mut tr = crate::model::Trainable::default();
        for (n, t) in &params {
            tr.push(n.clone(), candle_core::Var::from_tensor(&t.copy()?)?);
        }
        let hp = AdamWParams { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 };
        let mut opt = AdamW::new(&tr, hp)?;
        opt.set_fused(fused);
        for k in 0..3 {
            let g: Vec<Tensor> = grads.iter().map(|g| g * (1.0 + k as f64)).collect::<candle_core::Result<_>>()?;
            opt.step(&Grads { tensors: g, scale: 0.5 }, 1e-2)?;
        }
        let flat: Vec<Tensor> = tr.entries.iter().map(|(_, v)| v.as_tensor().flatten_all()).collect::<candle_core::Result<_>>()?;
        finals.push(Tensor::cat(&flat, 0)?.to_vec1::<f32>()?);
    }
    let diff = finals[0].iter().zip(&finals[1]).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) as f64;
    out.push(Check {
        name: "AdamW (3 steps, clipped) max |fused - element-wise|".into(),
        on: format!("{:?} F32", device.location()),
        value: diff,
        reference: 0.0,
        tolerance: 1e-6,
        ok: diff <= 1e-6,
    });
    Ok(out)
}
