//! Fused operations with hand-written backward passes.
//!
//! candle's autograd keeps every intermediate of a composite op alive until the backward pass and
//! computes a gradient for every input of every node (the frozen weight of a LoRA layer included).
//! The ops here cut both. Each one computes its forward result outside the graph (with candle's
//! fused kernels where they exist) and re-enters the graph through an [`Attach1`] / [`Attach3`]
//! custom op: its forward hands over that result (one copy; the op then drops its own reference,
//! so nothing is kept twice) and its backward is the analytic gradient:
//! - softmax: dx = y ⊙ (g − Σ g⊙y);
//! - RMSNorm: dx = r ⊙ (g⊙w − x ⊙ r² ⊙ mean(g⊙w⊙x)), r = 1/sqrt(mean(x²)+eps);
//! - RoPE (a rotation): dx = RoPE(g, cos, −sin);
//! - frozen linear y = x Wᵀ: dx = g W, and no gradient for W ([`frozen_linear`] runs the matmul
//!   directly on the storage, no copy at all).
//!
//! Attention and cross-entropy, built the same way, live in [`crate::model::attention`] and
//! [`crate::objective::ce`]. Backward math that needs it runs in f32.

use candle_core::backend::{BackendDevice, BackendStorage};
use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Shape, Storage, Tensor};
use std::sync::Mutex;

type Res<T> = candle_core::Result<T>;
/// Backward of a one-input op: (input, output, output gradient) → input gradient.
pub type Bwd1 = Box<dyn Fn(&Tensor, &Tensor, &Tensor) -> Res<Tensor> + Send + Sync>;
/// Backward of a three-input op: (inputs, output, output gradient) → input gradients.
pub type Bwd3 = Box<dyn Fn([&Tensor; 3], &Tensor, &Tensor) -> Res<[Option<Tensor>; 3]> + Send + Sync>;

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

/// A three-input op whose forward result was computed outside the graph.
pub struct Attach3 {
    name: &'static str,
    out: Mutex<Option<Tensor>>,
    bwd: Bwd3,
}

impl Attach3 {
    /// Attach `out` (computed from `a`, `b`, `c` without a graph) to them, with backward `bwd`.
    pub fn apply(name: &'static str, [a, b, c]: [&Tensor; 3], out: Tensor, bwd: Bwd3) -> Res<Tensor> {
        a.apply_op3(b, c, Attach3 { name, out: Mutex::new(Some(out)), bwd })
    }
}

impl CustomOp3 for Attach3 {
    fn name(&self) -> &'static str {
        self.name
    }
    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Res<(CpuStorage, Shape)> {
        cpu_copy(self.name, &self.out)
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
        _: &candle_core::CudaStorage,
        _: &Layout,
    ) -> Res<(candle_core::CudaStorage, Shape)> {
        cuda_copy(self.name, &self.out)
    }
    fn bwd(&self, a: &Tensor, b: &Tensor, c: &Tensor, res: &Tensor, g: &Tensor) -> Res<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let [da, db, dc] = (self.bwd)([&a.detach(), &b.detach(), &c.detach()], res, g)?;
        Ok((da, db, dc))
    }
}

/// Softmax over the last dimension with the fused kernel and an analytic backward.
pub fn softmax_last_dim(x: &Tensor) -> Res<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::ops::softmax_last_dim(&x.detach())?;
    Attach1::apply("softmax-last-dim", &x, y, Box::new(|_x, y, g| super::kernels::softmax_bwd(y, g)))
}

/// HF-convention RoPE on (B, H, L, Dh) with the fused kernel and an analytic backward.
/// `cos`, `sin`: (L, Dh/2).
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Res<Tensor> {
    let x = x.contiguous()?;
    let y = candle_nn::rotary_emb::rope(&x.detach(), cos, sin)?;
    let (cos, nsin) = (cos.clone(), sin.neg()?);
    Attach1::apply("rope", &x, y, Box::new(move |_x, _y, g| candle_nn::rotary_emb::rope(&g.contiguous()?, &cos, &nsin)))
}

/// RMSNorm over the last dimension with the fused kernel and an analytic backward for `x`.
/// When `w` is trainable, its gradient flows through a separate cheap product (see below).
pub fn rms_norm(x: &Tensor, w: &Tensor, eps: f64) -> Res<Tensor> {
    let x = x.contiguous()?;
    if w.is_variable() || w.track_op() {
        // Trainable weight (full fine-tuning), one node: dx as below with w cast to x's dtype,
        // dw = Σ_rows g ⊙ x/rms(x) (in f32, w's dtype).
        let wc = w.detach().to_dtype(x.dtype())?;
        let y = candle_nn::ops::rms_norm(&x.detach(), &wc, eps as f32)?;
        let wdt = w.dtype();
        return Attach2::apply(
            "rms-norm-trainable",
            [&x, w],
            y,
            Box::new(move |[x, _w], _y, g| {
                let dx = super::kernels::rms_norm_bwd(x, &wc, g, eps)?;
                let dw = rms_norm_weight_grad(x, g, eps)?.to_dtype(wdt)?;
                Ok([Some(dx), Some(dw)])
            }),
        );
    }
    let w = w.detach();
    let y = candle_nn::ops::rms_norm(&x.detach(), &w, eps as f32)?;
    Attach1::apply(
        "rms-norm",
        &x,
        y,
        Box::new(move |x, _y, g| super::kernels::rms_norm_bwd(x, &w, g, eps)),
    )
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

/// Flatten (..., in) to (N, in) and remember how to restore (..., out).
fn rows(x: &Tensor) -> Res<(Tensor, Vec<usize>)> {
    let dims = x.dims().to_vec();
    let last = *dims.last().ok_or_else(|| candle_core::Error::Msg("linear: scalar input".into()))?;
    Ok((x.reshape(((), last))?, dims))
}

fn unrows(y: Tensor, mut dims: Vec<usize>) -> Res<Tensor> {
    let n = dims.len();
    dims[n - 1] = y.dim(1)?;
    y.reshape(dims)
}

/// The adapters in the compute dtype `dt`: (A (r, in), s·B (out, r)).
pub fn lora_cast(a: &Tensor, b: &Tensor, scale: f64, dt: DType) -> Res<(Tensor, Tensor)> {
    Ok((a.detach().to_dtype(dt)?, (b.detach() * scale)?.to_dtype(dt)?))
}

/// LoRA forward on rows, outside the graph: x Wᵀ + (x Aᵀ)(s·B)ᵀ. `x` (N, in), `w` (out, in),
/// `ad` = A and `bd` = s·B in x's dtype ([`lora_cast`]).
pub fn lora_fwd(x: &Tensor, w: &Tensor, ad: &Tensor, bd: &Tensor) -> Res<Tensor> {
    let base = frozen_linear(x, w)?; // (N, out)
    base + x.matmul(&ad.t()?)?.matmul(&bd.t()?)?
}

/// LoRA backward on rows: with gb = g·sB, dx = g W + gb A, dA = gbᵀ x, dB = s·gᵀ (x Aᵀ)
/// (gradients of the f32 adapters, in f32). `ad`, `bd` as in [`lora_fwd`].
pub fn lora_bwd(x: &Tensor, g: &Tensor, w: &Tensor, ad: &Tensor, bd: &Tensor, scale: f64) -> Res<(Tensor, Tensor, Tensor)> {
    let g = g.contiguous()?; // (N, out)
    let gb = g.matmul(bd)?; // (N, r)
    let dx = (g.matmul(w)? + gb.matmul(ad)?)?; // (N, in)
    let da = gb.t()?.matmul(x)?.to_dtype(DType::F32)?; // (r, in)
    let xa = x.matmul(&ad.t()?)?; // (N, r)
    let db = (g.t()?.matmul(&xa)?.to_dtype(DType::F32)? * scale)?; // (out, r)
    Ok((dx, da, db))
}

/// Fully trained linear backward on rows: dx = g W_c, dW = gᵀ x (f32). `wc`: (out, in) in the
/// compute dtype.
pub fn trainable_bwd(x: &Tensor, g: &Tensor, wc: &Tensor) -> Res<(Tensor, Tensor)> {
    let g = g.contiguous()?; // (N, out)
    let dx = g.matmul(wc)?; // (N, in)
    let dw = g.t()?.matmul(x)?.to_dtype(DType::F32)?; // (out, in)
    Ok((dx, dw))
}

/// Backward of [`rope_heads`]: (B, H, L, Dh) gradient → (B, L, H·Dh). `nsin` is −sin.
pub fn rope_heads_bwd(g: &Tensor, cos: &Tensor, nsin: &Tensor) -> Res<Tensor> {
    let (b, h, l, dh) = g.dims4()?;
    let g = g.transpose(1, 2)?.contiguous()?; // (B, L, H, Dh)
    candle_nn::rotary_emb::rope_thd(&g, cos, nsin)?.reshape((b, l, h * dh))
}

/// Forward of [`rope_heads`] outside the graph.
pub fn rope_heads_fwd(x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Res<Tensor> {
    let (b, l, hd) = x.dims3()?;
    candle_nn::rotary_emb::rope_thd(&x.contiguous()?.reshape((b, l, heads, hd / heads))?, cos, sin)?.transpose(1, 2)?.contiguous()
}

/// RMSNorm's weight gradient: Σ_rows g ⊙ x / rms(x), in f32. `x`, `g`: (..., D).
pub fn rms_norm_weight_grad(x: &Tensor, g: &Tensor, eps: f64) -> Res<Tensor> {
    let d = *x.dims().last().unwrap_or(&1);
    let ones = Tensor::ones(d, x.dtype(), x.device())?;
    let n = candle_nn::ops::rms_norm(&x.contiguous()?, &ones, eps as f32)?; // x / rms(x)
    (g.to_dtype(DType::F32)? * n.to_dtype(DType::F32)?)?.reshape(((), d))?.sum(0)
}

/// A LoRA layer in one graph node: y = x Wᵀ + (x Aᵀ)(s·B)ᵀ with W (out, in) frozen and the f32
/// adapters `a` (r, in), `b` (out, r) trainable. Backward, with g·sB = gb:
/// dx = g W + gb A, dA = gbᵀ x, dB = s·gᵀ (x Aᵀ); no gradient for W.
/// `x`: (..., in) → (..., out) in x's dtype.
pub fn lora_linear(x: &Tensor, w: &Tensor, a: &Tensor, b: &Tensor, scale: f64) -> Res<Tensor> {
    let (x2, dims) = rows(&x.contiguous()?)?; // (N, in)
    let w = w.detach();
    let (ad, bd) = lora_cast(a, b, scale, x.dtype())?;
    let y = lora_fwd(&x2.detach(), &w, &ad, &bd)?;
    let y = if x.track_op() || a.track_op() || b.track_op() {
        let xd = x2.detach();
        let wd = w.clone();
        Attach3::apply(
            "lora-linear",
            [&x2, a, b],
            y,
            Box::new(move |[_x, _a, _b], _y, g| {
                let (dx, da, db) = lora_bwd(&xd, g, &wd, &ad, &bd, scale)?;
                Ok([Some(dx), Some(da), Some(db)])
            }),
        )?
    } else {
        y
    };
    unrows(y, dims)
}

/// A fully trained linear layer in one graph node: y = x W_cᵀ with W the f32 master weight
/// (out, in) cast to x's dtype c. Backward: dx = g W_c, dW = gᵀ x (in f32).
pub fn trainable_linear(x: &Tensor, w: &Tensor) -> Res<Tensor> {
    let dt = x.dtype();
    let (x2, dims) = rows(&x.contiguous()?)?; // (N, in)
    let wc = w.detach().to_dtype(dt)?; // (out, in)
    let y = x2.detach().matmul(&wc.t()?)?; // (N, out)
    let y = if x.track_op() || w.track_op() {
        let xd = x2.detach();
        Attach2::apply(
            "trainable-linear",
            [&x2, w],
            y,
            Box::new(move |[_x, _w], _y, g| {
                let (dx, dw) = trainable_bwd(&xd, g, &wc)?;
                Ok([Some(dx), Some(dw)])
            }),
        )?
    } else {
        y
    };
    unrows(y, dims)
}

/// (B, L, H·Dh) → (B, H, L, Dh) with HF-convention RoPE applied, in one graph node (instead of
/// reshape, transpose, copy and RoPE). `cos`, `sin`: (L, Dh/2). Backward: the inverse rotation
/// of the gradient, moved back to (B, L, H·Dh).
pub fn rope_heads(x: &Tensor, heads: usize, cos: &Tensor, sin: &Tensor) -> Res<Tensor> {
    let x = x.contiguous()?;
    let y = rope_heads_fwd(&x.detach(), heads, cos, sin)?;
    if !x.track_op() {
        return Ok(y);
    }
    let (cos, nsin) = (cos.clone(), sin.neg()?);
    Attach1::apply("rope-heads", &x, y, Box::new(move |_x, _y, g| rope_heads_bwd(g, &cos, &nsin)))
}

/// (B, L, H·Dh) → (B, H, L, Dh) contiguous, in one graph node.
pub fn split_heads(x: &Tensor, heads: usize) -> Res<Tensor> {
    let (b, l, hd) = x.dims3()?;
    let dh = hd / heads;
    let y = x.detach().reshape((b, l, heads, dh))?.transpose(1, 2)?.contiguous()?;
    if !x.track_op() {
        return Ok(y);
    }
    Attach1::apply("split-heads", x, y, Box::new(move |_x, _y, g| g.transpose(1, 2)?.contiguous()?.reshape((b, l, hd))))
}

/// SwiGLU y = silu(g) ⊙ u in one graph node (one fused kernel each way on CUDA).
pub fn swiglu(g: &Tensor, u: &Tensor) -> Res<Tensor> {
    let (g, u) = (g.contiguous()?, u.contiguous()?);
    let y = super::kernels::swiglu(&g.detach(), &u.detach())?;
    if !(g.track_op() || u.track_op()) {
        return Ok(y);
    }
    Attach2::apply(
        "swiglu",
        [&g, &u],
        y,
        Box::new(|[g, u], _y, dy| {
            let (dg, du) = super::kernels::swiglu_bwd(g, u, dy)?;
            Ok([Some(dg), Some(du)])
        }),
    )
}
