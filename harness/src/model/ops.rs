//! Graph plumbing and the small pieces with hand-written backward passes.
//!
//! candle's autograd keeps every intermediate of a composite op alive until the backward pass and
//! computes a gradient for every input of every node (the frozen weight of a LoRA layer included).
//! A result computed outside the graph re-enters it through an [`Attach1`] / [`Attach2`] custom
//! op: its forward hands over that result (one copy; the op then drops its own reference, so
//! nothing is kept twice) and its backward is a closure. The fused decoder layer
//! ([`crate::model::decoder`]) and the cross-entropy ([`crate::kernels::ce`]) are built this way,
//! from the pieces below:
//! - RoPE over the head split (a rotation): forward [`rope_heads_fwd`], backward
//!   [`rope_heads_bwd`] = RoPE(g, cos, −sin);
//! - RMSNorm's weight gradient [`rms_norm_weight_grad`] (its input gradient is a kernel,
//!   [`crate::kernels::fused::rms_norm_bwd`]);
//! - frozen linear y = x Wᵀ: dx = g W, and no gradient for W ([`frozen_linear`] runs the matmul
//!   directly on the storage, no copy at all).

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, Layout, Shape, Storage, Tensor};
use std::sync::Mutex;

type Res<T> = candle_core::Result<T>;
/// Backward of a one-input op: (input, output, output gradient) → input gradient.
pub type Bwd1 = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Res<Tensor> + Send + Sync>;

/// Hand over a precomputed result exactly once, then forget it.
fn take_out(name: &str, slot: &Mutex<Option<Tensor>>) -> Res<Tensor> {
    slot.lock()
        .map_err(|_| candle_core::Error::Msg(format!("{name}: poisoned lock")))?
        .take()
        .ok_or_else(|| candle_core::Error::Msg(format!("{name}: forward ran twice")))
}

/// A fresh storage holding exactly the elements of `l` (one strided copy).
fn fresh_copy<S: BackendStorage>(s: &S, l: &Layout) -> Res<S>
where
    S::Device: BackendDevice<Storage = S>,
{
    // SAFETY: every element of the new storage is written by the copy right after.
    let mut dst = unsafe { s.device().alloc_uninit(l.shape(), s.dtype())? };
    s.copy_strided_src(&mut dst, 0, l)?;
    Ok(dst)
}

fn cpu_copy(name: &str, slot: &Mutex<Option<Tensor>>) -> Res<(CpuStorage, Shape)> {
    let t = take_out(name, slot)?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cpu(c) => Ok((fresh_copy(c, l)?, l.shape().clone())),
        _ => candle_core::bail!("{name}: result is not on the CPU"),
    }
}

#[cfg(feature = "cuda")]
fn cuda_copy(name: &str, slot: &Mutex<Option<Tensor>>) -> Res<(candle_core::CudaStorage, Shape)> {
    let t = take_out(name, slot)?;
    let (s, l) = t.storage_and_layout();
    match &*s {
        Storage::Cuda(c) => Ok((fresh_copy(c, l)?, l.shape().clone())),
        _ => candle_core::bail!("{name}: result is not on the GPU"),
    }
}

/// A one-input op whose forward result was computed outside the graph.
pub struct Attach1 {
    name: &'static str,
    out: Mutex<Option<Tensor>>,
    bwd: Bwd1,
}

impl Attach1 {
    /// Attach `out` (computed from `x` without a graph) to `x`, with backward `bwd`.
    pub fn apply(name: &'static str, x: &Tensor, out: Tensor, bwd: Bwd1) -> Res<Tensor> {
        x.apply_op1(Attach1 { name, out: Mutex::new(Some(out)), bwd })
    }
}

impl CustomOp1 for Attach1 {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _s: &CpuStorage, _l: &Layout) -> Res<(CpuStorage, Shape)> {
        cpu_copy(self.name, &self.out)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, _s: &candle_core::CudaStorage, _l: &Layout) -> Res<(candle_core::CudaStorage, Shape)> {
        cuda_copy(self.name, &self.out)
    }
    fn bwd(&self, x: &Tensor, res: &Tensor, g: &Tensor) -> Res<Option<Tensor>> {
        Ok(Some((self.bwd)(&x.detach(), res, g)?))
    }
}

/// Backward of a two-input op: (inputs, output, output gradient) → input gradients.
pub type Bwd2 = Box<dyn Fn([&Tensor; 2], &Tensor, &Tensor) -> Res<[Option<Tensor>; 2]> + Send + Sync>;

/// A two-input op whose forward result was computed outside the graph.
pub struct Attach2 {
    name: &'static str,
    out: Mutex<Option<Tensor>>,
    bwd: Bwd2,
}

impl Attach2 {
    /// Attach `out` (computed from `a`, `b` without a graph) to them, with backward `bwd`.
    pub fn apply(name: &'static str, [a, b]: [&Tensor; 2], out: Tensor, bwd: Bwd2) -> Res<Tensor> {
        a.apply_op2(b, Attach2 { name, out: Mutex::new(Some(out)), bwd })
    }
}

impl CustomOp2 for Attach2 {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Res<(CpuStorage, Shape)> {
        cpu_copy(self.name, &self.out)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Res<(candle_core::CudaStorage, Shape)> {
        cuda_copy(self.name, &self.out)
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, res: &Tensor, g: &Tensor) -> Res<(Option<Tensor>, Option<Tensor>)> {
        let [da, db] = (self.bwd)([&a.detach(), &b.detach()], res, g)?;
        Ok((da, db))
    }
}

/// y = x Wᵀ for a frozen W: no gradient is computed for W.
struct FrozenLinear {
    /// (out, in), same dtype and device as the input.
    w: Tensor,
}

impl FrozenLinear {
    fn dims(&self, l: &Layout) -> Res<(usize, usize, usize, Layout)> {
        let (n, k) = l.shape().dims2()?;
        let (out, k2) = self.w.dims2()?;
        if k != k2 {
            candle_core::bail!("frozen-linear: input width {k} but weight is ({out}, {k2})")
        }
        let wt = self.w.layout().transpose(0, 1)?; // (in, out) view
        Ok((n, out, k, wt))
    }
}

impl CustomOp1 for FrozenLinear {
    fn name(&self) -> &'static str {
        "frozen-linear"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Res<(CpuStorage, Shape)> {
        let (n, out, k, wt) = self.dims(l)?;
        let (ws, _) = self.w.storage_and_layout();
        match &*ws {
            Storage::Cpu(w) => Ok((s.matmul(w, (1, n, out, k), l, &wt)?, Shape::from((n, out)))),
            _ => candle_core::bail!("frozen-linear: weight and input on different devices"),
        }
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Res<(candle_core::CudaStorage, Shape)> {
        let (n, out, k, wt) = self.dims(l)?;
        let (ws, _) = self.w.storage_and_layout();
        match &*ws {
            Storage::Cuda(w) => Ok((s.matmul(w, (1, n, out, k), l, &wt)?, Shape::from((n, out)))),
            _ => candle_core::bail!("frozen-linear: weight and input on different devices"),
        }
    }
    fn bwd(&self, _x: &Tensor, _res: &Tensor, g: &Tensor) -> Res<Option<Tensor>> {
        Ok(Some(g.matmul(&self.w)?)) // (N, out) (out, in) → (N, in)
    }
}

/// `x` (N, in) times a frozen weight `w` (out, in) transposed → (N, out). Only `x` gets a gradient.
pub fn frozen_linear(x: &Tensor, w: &Tensor) -> Res<Tensor> {
    let x = if x.is_contiguous() { x.clone() } else { x.contiguous()? };
    let w = w.detach();
    if w.dtype() != x.dtype() {
        candle_core::bail!("frozen-linear: weight is {:?}, input {:?}", w.dtype(), x.dtype())
    }
    x.apply_op1(FrozenLinear { w })
}

/// Backward of [`rope_heads_fwd`] (the inverse rotation, moved back): (B, H, L, Dh) gradient →
/// (B, L, H·Dh). `nsin` is −sin.
pub fn rope_heads_bwd(g: &Tensor, cos: &Tensor, nsin: &Tensor) -> Res<Tensor> {
    let (b, h, l, dh) = g.dims4()?;
    let g = crate::kernels::layout::swap_axes(g)?; // (B, L, H, Dh)
    candle_nn::rotary_emb::rope_thd(&g, cos, nsin)?.reshape((b, l, h * dh))
}

/// (B, L, H·Dh) → (B, H, L, Dh) with HF-convention RoPE applied, outside the graph (one kernel
/// instead of reshape, transpose, copy and RoPE). `cos`, `sin`: (L, Dh/2).
pub fn rope_heads_fwd(x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Res<Tensor> {
    let (b, l, hd) = x.dims3()?;
    let r = candle_nn::rotary_emb::rope_thd(&x.contiguous()?.reshape((b, l, heads, hd / heads))?, cos, sin)?; // (B, L, H, Dh)
    crate::kernels::layout::swap_axes(&r)
}

/// RMSNorm's weight gradient: Σ_rows g ⊙ x / rms(x), in f32. `x`, `g`: (..., D).
pub fn rms_norm_weight_grad(x: &Tensor, g: &Tensor, eps: f64) -> Res<Tensor> {
    let d = *x.dims().last().unwrap_or(&1);
    let ones = Tensor::ones(d, x.dtype(), x.device())?;
    let n = candle_nn::ops::rms_norm(&x.contiguous()?, &ones, eps as f32)?; // x / rms(x)
    let gn = (g * n)?.reshape(((), d))?; // (N, D)
    // Σ over the rows as a product with a ones column: one cuBLAS call with f32 accumulation and
    // output on CUDA (the f32 casts, product and row sum were ~25 ms of a full fine-tuning step)
    let ones = Tensor::ones((gn.dim(0)?, 1), gn.dtype(), gn.device())?;
    crate::kernels::gemm::matmul_tn_f32(&gn, &ones, 1.0)?.squeeze(1)
}
