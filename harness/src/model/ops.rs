//! Fused kernels with a backward pass.
//!
//! candle's fused softmax, RMSNorm and RoPE kernels (CPU and CUDA) have no backward. Training
//! with their composite equivalents keeps several f32 copies of every attention matrix alive for
//! the backward pass. Here each fused forward runs on a detached input and is re-attached to the
//! graph by a custom op whose forward returns that result and whose backward is the analytic
//! gradient: softmax dx = y ⊙ (g − Σ g⊙y); RMSNorm dx = r ⊙ (g⊙w − x ⊙ r² ⊙ mean(g⊙w⊙x)),
//! dw = Σ_rows g⊙x⊙r; RoPE (a rotation) dx = RoPE(g, cos, −sin). Backward math runs in f32.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Shape, Tensor, D};

fn check_fresh(l: &Layout, name: &str) -> candle_core::Result<()> {
    if !l.is_contiguous() || l.start_offset() != 0 {
        candle_core::bail!("{name}: the fused result must be contiguous from offset 0")
    }
    Ok(())
}

/// Forward: returns arg2 (the fused result); backward per `Kind`.
struct Attach {
    kind: Kind,
}

enum Kind {
    Softmax,
    Rope { cos: Tensor, sin: Tensor },
    RmsNorm { w: Tensor, eps: f64 },
}

impl CustomOp2 for Attach {
    fn name(&self) -> &'static str {
        match self.kind {
            Kind::Softmax => "softmax-last-dim-attach",
            Kind::Rope { .. } => "rope-attach",
            Kind::RmsNorm { .. } => "rms-norm-attach",
        }
    }

    fn cpu_fwd(&self, _s1: &CpuStorage, _l1: &Layout, s2: &CpuStorage, l2: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        check_fresh(l2, self.name())?;
        Ok((s2.try_clone(l2)?, l2.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _s1: &candle_core::CudaStorage,
        _l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> candle_core::Result<(candle_core::CudaStorage, Shape)> {
        check_fresh(l2, self.name())?;
        Ok((s2.try_clone(l2)?, l2.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, _y: &Tensor, res: &Tensor, g: &Tensor) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let dt = x.dtype();
        let dx = match &self.kind {
            Kind::Softmax => {
                let y = res.to_dtype(DType::F32)?;
                let g = g.to_dtype(DType::F32)?;
                let dot = (&g * &y)?.sum_keepdim(D::Minus1)?; // (..., 1)
                (y * g.broadcast_sub(&dot)?)?.to_dtype(dt)?
            }
            Kind::Rope { cos, sin } => candle_nn::rotary_emb::rope(&g.contiguous()?, cos, &sin.neg()?)?,
            Kind::RmsNorm { w, eps } => {
                let xf = x.to_dtype(DType::F32)?;
                let gf = g.to_dtype(DType::F32)?;
                let wf = w.to_dtype(DType::F32)?;
                let r = (xf.sqr()?.mean_keepdim(D::Minus1)? + *eps)?.sqrt()?.recip()?; // (..., 1)
                let gw = gf.broadcast_mul(&wf)?;
                let m = (&gw * &xf)?.mean_keepdim(D::Minus1)?; // (..., 1)
                let inner = (gw - xf.broadcast_mul(&(r.sqr()? * m)?)?)?;
                inner.broadcast_mul(&r)?.to_dtype(dt)?
            }
        };
        Ok((Some(dx), None))
    }
}

/// Softmax over the last dimension with the fused kernel and an analytic backward.
pub fn softmax_last_dim(x: &Tensor) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::ops::softmax_last_dim(&x.detach())?;
    x.apply_op2(&y, Attach { kind: Kind::Softmax })
}

/// HF-convention RoPE on (B, H, L, Dh) with the fused kernel and an analytic backward.
/// `cos`, `sin`: (L, Dh/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::rotary_emb::rope(&x.detach(), cos, sin)?;
    x.apply_op2(&y, Attach { kind: Kind::Rope { cos: cos.clone(), sin: sin.clone() } })
}

/// RMSNorm over the last dimension with the fused kernel and an analytic backward for `x`.
/// When `w` is trainable, its gradient flows through a separate cheap product (see below).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> candle_core::Result<Tensor> {
    let x = x.contiguous()?;
    if w.is_variable() || w.track_op() {
        // Trainable weight (full fine-tuning): normalise with a unit weight through the fused op,
        // then multiply by w so its gradient comes from candle's autograd.
        let ones = Tensor::ones(w.shape(), x.dtype(), x.device())?;
        let n = rms_norm(&x, &ones, eps)?;
        return n.broadcast_mul(w);
    }
    let y = candle_nn::ops::rms_norm(&x.detach(), &w.detach(), eps as f32)?;
    x.apply_op2(&y, Attach { kind: Kind::RmsNorm { w: w.detach(), eps } })
}
