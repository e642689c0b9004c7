//! What the model's parameters are and how their gradients travel: a [`Weight`] (frozen or
//! trainable), the named [`Trainable`] list the optimizer and checkpoints see, the [`GradSink`]
//! that fused layers deliver parameter gradients into, and the per-forward context [`Fwd`].

use candle_core::{DType, Device, Tensor, Var};

/// A weight that is either frozen (a plain tensor in the compute dtype) or trainable (an f32 `Var`).
#[derive(Debug, Clone)]
pub enum Weight {
    /// Not trained; stored in the compute dtype.
    Frozen(Tensor),
    /// Trained; the f32 master copy. Cast to the compute dtype in the forward pass.
    Trainable(Var),
}

impl Weight {
    /// `t` as a weight: when `trains`, an f32 `Var` registered in `tr` as `name`; else frozen as
    /// it is.
    pub fn new(t: Tensor, name: String, trains: bool, tr: &mut Trainable) -> candle_core::Result<Self> {
        if !trains {
            return Ok(Weight::Frozen(t));
        }
        let v = Var::from_tensor(&t.to_dtype(DType::F32)?)?;
        tr.push(name, v.clone());
        Ok(Weight::Trainable(v))
    }

    /// The weight as used in the forward pass, in `dtype`.
    pub fn get(&self, dtype: DType) -> candle_core::Result<Tensor> {
        match self {
            Weight::Frozen(t) => t.to_dtype(dtype),
            Weight::Trainable(v) => v.as_tensor().to_dtype(dtype),
        }
    }
    /// The stored tensor (f32 master for trainable weights), detached.
    pub fn stored(&self) -> Tensor {
        match self {
            Weight::Frozen(t) => t.clone(),
            Weight::Trainable(v) => v.as_tensor().detach(),
        }
    }
}

/// Named trainable parameters, in creation order. Names are the ones saved to safetensors.
#[derive(Debug, Default, Clone)]
pub struct Trainable {
    /// (name, parameter) pairs.
    pub entries: Vec<(String, Var)>,
    /// Gradients that fused layers deliver beside candle's `GradStore` (see [`GradSink`]).
    pub sink: GradSink,
}

/// Parameter gradients delivered outside candle's `GradStore`, keyed by the parameter's tensor
/// id. A fused decoder layer ([`crate::model::decoder`]) is one graph node with one tensor input;
/// its hand-written backward adds the gradients of the layer's parameters here, and
/// [`crate::train::optim::GradAccum`] collects them after each backward pass. Shared (cloning
/// shares the store).
#[derive(Debug, Default, Clone)]
pub struct GradSink(std::sync::Arc<std::sync::Mutex<std::collections::HashMap<candle_core::TensorId, Tensor>>>);

impl GradSink {
    /// Add `g` to the gradient of `param`.
    pub fn add(&self, param: &Tensor, g: Tensor) -> candle_core::Result<()> {
        let mut m = self.0.lock().map_err(|_| candle_core::Error::Msg("gradient sink: poisoned lock".into()))?;
        let g = match m.remove(&param.id()) {
            Some(prev) => (prev + g)?,
            None => g,
        };
        m.insert(param.id(), g);
        Ok(())
    }
    /// Remove and return the gradient of `param`.
    pub fn take(&self, param: &Tensor) -> Option<Tensor> {
        self.0.lock().ok().and_then(|mut m| m.remove(&param.id()))
    }
    /// Drop every stored gradient.
    pub fn clear(&self) {
        if let Ok(mut m) = self.0.lock() {
            m.clear();
        }
    }
}

impl Trainable {
    /// Register a parameter.
    pub fn push(&mut self, name: String, var: Var) {
        self.entries.push((name, var));
    }
    /// Number of scalar parameters.
    pub fn numel(&self) -> usize {
        self.entries.iter().map(|(_, v)| v.elem_count()).sum()
    }
    /// Save every parameter to a safetensors file.
    pub fn save(&self, path: &std::path::Path) -> crate::Result<()> {
        let map: std::collections::HashMap<String, Tensor> =
            self.entries.iter().map(|(n, v)| (n.clone(), v.as_tensor().detach())).collect();
        candle_core::safetensors::save(&map, path).map_err(|e| crate::Error::model(path, e.to_string()))
    }
    /// Load values saved by [`Trainable::save`] into these parameters (names and shapes must match).
    pub fn load(&self, path: &std::path::Path) -> crate::Result<()> {
        let map = candle_core::safetensors::load(path, &Device::Cpu)
            .map_err(|e| crate::Error::model(path, e.to_string()))?;
        for (name, var) in &self.entries {
            let t = map.get(name).ok_or_else(|| crate::Error::model(path, format!("missing tensor `{name}`")))?;
            if t.dims() != var.dims() {
                return Err(crate::Error::model(
                    path,
                    format!("tensor `{name}` has shape {:?}, the model expects {:?}", t.dims(), var.dims()),
                ));
            }
            var.set(&t.to_dtype(var.dtype())?.to_device(var.device())?)?;
        }
        Ok(())
    }
}

/// Per-forward context: training flag and the counters that seed dropout.
#[derive(Debug, Clone, Copy, Default)]
pub struct Fwd {
    /// Training (dropout on; each layer on the model's [`crate::model::LayerPath`]) or inference.
    pub train: bool,
    /// Run seed.
    pub seed: u64,
    /// Optimizer step.
    pub step: u64,
    /// Micro-batch index within the step.
    pub micro: u64,
}

