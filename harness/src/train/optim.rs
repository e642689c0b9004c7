//! AdamW with decoupled weight decay on f32 master parameters, gradient accumulation and
//! global-norm clipping.

use crate::model::lora::Trainable;
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
}

impl AdamW {
    /// Zero state for `params`.
    pub fn new(params: &Trainable, hp: AdamWParams) -> Result<Self> {
        let params: Vec<Var> = params.entries.iter().map(|(_, v)| v.clone()).collect();
        let m = params.iter().map(|p| p.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        let v = params.iter().map(|p| p.as_tensor().zeros_like()).collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Self { params, m, v, t: 0, hp })
    }

    /// One update with learning rate `lr` from (accumulated, clipped) gradients, one per parameter.
    pub fn step(&mut self, grads: &[Tensor], lr: f64) -> Result<()> {
        self.t += 1;
        let AdamWParams { beta1, beta2, eps, weight_decay } = self.hp;
        let bc1 = 1.0 - beta1.powi(self.t as i32);
        let bc2 = 1.0 - beta2.powi(self.t as i32);
        for (i, p) in self.params.iter().enumerate() {
            let g = grads[i].to_dtype(DType::F32)?;
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
}

/// Sums of gradients over the micro-batches of one optimizer step.
pub struct GradAccum {
    params: Vec<Var>,
    sums: Vec<Option<Tensor>>,
}

impl GradAccum {
    /// Empty sums for `params`.
    pub fn new(params: &Trainable) -> Self {
        let params: Vec<Var> = params.entries.iter().map(|(_, v)| v.clone()).collect();
        let n = params.len();
        Self { params, sums: vec![None; n] }
    }

    /// Add the gradients of one backward pass.
    pub fn add(&mut self, grads: &GradStore) -> Result<()> {
        for (i, p) in self.params.iter().enumerate() {
            if let Some(g) = grads.get(p.as_tensor()) {
                let g = g.to_dtype(DType::F32)?;
                self.sums[i] = Some(match self.sums[i].take() {
                    Some(s) => (s + g)?,
                    None => g,
                });
            }
        }
        Ok(())
    }

    /// The summed gradients (zeros for a parameter that got none) and their global L2 norm,
    /// scaled so the norm is at most `max_norm` (0 = no clipping). Resets the sums.
    pub fn take_clipped(&mut self, max_norm: f64) -> Result<(Vec<Tensor>, f64)> {
        let mut grads = Vec::with_capacity(self.params.len());
        for (i, p) in self.params.iter().enumerate() {
            grads.push(match self.sums[i].take() {
                Some(g) => g,
                None => p.as_tensor().zeros_like()?,
            });
        }
        let sq: Vec<Tensor> = grads.iter().map(|g| g.sqr()?.sum_all()).collect::<candle_core::Result<_>>()?;
        let norm = if sq.is_empty() { 0.0 } else { Tensor::stack(&sq, 0)?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64 };
        if max_norm > 0.0 && norm > max_norm {
            let s = max_norm / (norm + 1e-6);
            grads = grads.iter().map(|g| g * s).collect::<candle_core::Result<_>>()?;
        }
        Ok((grads, norm))
    }
}
