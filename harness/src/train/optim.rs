//! AdamW with decoupled weight decay on f32 master parameters, gradient accumulation and
//! global-norm clipping.

use crate::kernels::optim::{self as fused, AdamWStep};
use crate::model::params::{GradSink, Trainable};
use crate::Result;
use candle_core::{backprop::GradStore, DType, Tensor, Var};

/// AdamW hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWParams {
    /// β1.
    pub beta1: f64,
    /// β2.
    pub beta2: f64,
    /// ε.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        Self { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
    }
}

/// AdamW state over a fixed list of parameters (PyTorch's update rule).
pub struct AdamW {
    params: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    t: u64,
    hp: AdamWParams,
    fused: bool,
}

impl AdamW {
    /// Zero state for `params`.
    pub fn new(params: &Trainable, hp: AdamWParams) -> Result<Self> {
        let params: Vec<Var> = params.entries.iter().map(|(_, v)| v.clone()).collect();
        let m = params.iter().map(|p| p.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = params.iter().map(|p| p.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { params, m, v, t: 0, hp, fused: true })
    }

    /// One update with learning rate `lr` from accumulated gradients (one per parameter), each
    /// multiplied by `grads.scale` (clipping). On CUDA one fused kernel updates every parameter;
    /// elsewhere the element-wise ops below do the same arithmetic.
    pub fn step(&mut self, grads: &Grads, lr: f64) -> Result<()> {
        self.t += 1;
        let AdamWParams { beta1, beta2, eps, weight_decay } = self.hp;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        if self.fused {
            let params: Vec<Tensor> = self.params.iter().map(|p| p.as_tensor().clone()).collect();
            let hp = AdamWStep {
                lr,
                betas: (beta1, beta2),
                eps,
                weight_decay,
                bias_corrections: (bc1, bc2),
                grad_scale: grads.scale,
            };
            if fused::adamw(&params, &self.m, &self.v, &grads.tensors, hp)? {
                return Ok(());
            }
        }
        for (i, p) in self.params.iter().enumerate() {
            let mut g = grads.tensors[i].to_dtype(DType::F32)?;
            if grads.scale != 1.0 {
                g = (g * grads.scale)?;
            }
            let m = ((&self.m[i] * beta1)? + (&g * (1.0 - beta1))?)?;
            let v = ((&self.v[i] * beta2)? + (g.sqr()? * (1.0 - beta2))?)?;
            let theta = p.as_tensor();
            let decayed = if weight_decay > 0.0 { (theta * (1.0 - lr * weight_decay))? } else { theta.clone() };
            let update = ((&m / bc1)? / ((&v / bc2)?.sqrt()? + eps)?)?;
            p.set(&(decayed - (update * lr)?)?)?;
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(())
    }

    /// Use (true, the default) or bypass (false) the fused CUDA kernel; for self-checks.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused;
    }
}

/// The gradients of one optimizer step and the factor clipping applies to all of them.
#[derive(Debug, Clone)]
pub struct Grads {
    /// One gradient per parameter, in parameter order (f32).
    pub tensors: Vec<Tensor>,
    /// Multiplier of every gradient (1 when not clipped).
    pub scale: f64,
}

/// Sums of gradients over the micro-batches of one optimizer step.
pub struct GradAccum {
    params: Vec<Var>,
    sums: Vec<Option<Tensor>>,
    sink: GradSink,
}

impl GradAccum {
    /// Empty sums for `params`.
    pub fn new(params: &Trainable) -> Self {
        let sink = params.sink.clone();
        let params: Vec<Var> = params.entries.iter().map(|(_, v)| v.clone()).collect();
        let n = params.len();
        Self { params, sums: vec![None; n], sink }
    }

    /// Add the gradients of one backward pass: candle's `GradStore` and what fused layers left
    /// in the parameters' [`GradSink`] (which this empties).
    pub fn add(&mut self, grads: &GradStore) -> Result<()> {
        for (i, g) in self.pass_grads(grads)?.into_iter().enumerate() {
            if let Some(g) = g {
                self.sums[i] = Some(match self.sums[i].take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// The f32 gradient of each parameter from one backward pass (None where it got none):
    /// candle's `GradStore` plus what fused layers left in the [`GradSink`] (which this empties).
    pub fn pass_grads(&self, grads: &GradStore) -> Result<Vec<Option<Tensor>>> {
        let mut out = Vec::with_capacity(self.params.len());
        for p in &self.params {
            let g = match (grads.get(p.as_tensor()), self.sink.take(p.as_tensor())) {
                (Some(a), Some(b)) => Some((a.to_dtype(DType::F32)? + b.to_dtype(DType::F32)?)?),
                (Some(a), None) => Some(a.clone()),
                (None, b) => b,
            };
            out.push(g.map(|g| g.to_dtype(DType::F32)).transpose()?);
        }
        Ok(out)
    }

    /// Replace the sums by `sums` (one per parameter, its shape, f32): the gradients a captured
    /// training step accumulated in its own buffers.
    pub fn set_sums(&mut self, sums: Vec<Tensor>) -> Result<()> {
        if sums.len() != self.params.len() {
            return Err(crate::Error::msg(format!("{} gradient sums for {} parameters", sums.len(), self.params.len())));
        }
        self.sums = sums.into_iter().map(Some).collect();
        Ok(())
    }

    /// The gradient sums, in parameter order (zeros where nothing was added), leaving none.
    pub fn take_sums(&mut self) -> Result<Vec<Tensor>> {
        let mut out = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            out.push(match self.sums[i].take() {
                Some(g) => g,
                None => p.as_tensor().zeros_like()?,
            });
        }
        Ok(out)
    }

    /// The trainable parameters, in order.
    pub fn params(&self) -> &[Var] {
        &self.params
    }

    /// The device the parameters live on (the CPU when there are none).
    pub fn device(&self) -> candle_core::Device {
        self.params.first().map(|p| p.device().clone()).unwrap_or(candle_core::Device::Cpu)
    }

    /// The summed gradients (zeros for a parameter that got none), their global L2 norm, and
    /// the factor that clips the norm to at most `max_norm` (0 = no clipping). Resets the sums.
    pub fn take_clipped(&mut self, max_norm: f64) -> Result<(Grads, f64)> {
        let tensors = self.take_sums()?;
        let norm = global_norm(&tensors)?;
        let scale = if max_norm > 0.0 && norm > max_norm { max_norm / (norm + 1e-6) } else { 1.0 };
        Ok((Grads { tensors, scale }, norm))
    }
}

/// √(Σ g²) over every tensor (one fused kernel on CUDA).
pub fn global_norm(ts: &[Tensor]) -> Result<f64> {
    if ts.is_empty() {
        return Ok(0.0);
    }
    if let Some(s) = fused::sum_squares(ts)? {
        return Ok(s.sqrt());
    }
    let sq: Vec<Tensor> = ts.iter().map(|g| g.to_dtype(DType::F32)?.sqr()?.sum_all()).collect::<candle_core::Result<_>>()?;
    Ok((Tensor::stack(&sq, 0)?.sum_all()?.to_scalar::<f32>()? as f64).sqrt())
}
