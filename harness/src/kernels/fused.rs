//! Row-wise fused CUDA kernels (harness/kernels/fused.cu) for the bf16 training path, each with the
//! composite candle expression it replaces as the fallback (CPU, f32, or a build without the
//! `cuda` feature). `harness selfcheck` compares the two on the GPU.
//!
//! - [`softmax_bias`]: P = softmax(S·scale + bias) in one pass (the composite scales, adds the
//!   broadcast mask and runs the softmax: three passes over a (B, H, L, T) tensor);
//! - [`softmax_bwd`]: dS = P ⊙ (dP − Σ P⊙dP) (the composite goes through f32 copies);
//! - [`rms_norm_bwd`]: RMSNorm's input gradient;
//! - [`ce_fwd`] / [`ce_bwd`]: cross-entropy over the vocabulary without an f32 copy of the logits.

use candle_core::{DType, Result, Tensor, D};

/// Whether the fused kernels serve these tensors (bf16 on a CUDA device).
pub fn fused_ok(t: &Tensor) -> bool {
    cfg!(feature = "cuda") && t.device().is_cuda() && t.dtype() == DType::BF16
}

/// P = softmax(s · scale + bias) over the last dimension. `s`: (B, H, L, T); `bias`:
/// (B | 1, 1, L, T) or None.
pub fn softmax_bias(s: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    if fused_ok(s) && bias.is_none_or(|b| b.dtype() == DType::BF16) {
        return imp::softmax_bias(s, bias, scale);
    }
    softmax_bias_composite(s, bias, scale)
}

/// The composite of [`softmax_bias`].
pub fn softmax_bias_composite(s: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
    let mut x = (s * scale)?;
    if let Some(b) = bias {
        x = x.broadcast_add(b)?;
    }
    candle_nn::ops::softmax_last_dim(&x.contiguous()?)
}

/// dS = P ⊙ (dP − Σ P⊙dP) over the last dimension, in the dtype of `p`.
pub fn softmax_bwd(p: &Tensor, dp: &Tensor) -> Result<Tensor> {
    if fused_ok(p) && dp.dtype() == DType::BF16 {
        return imp::softmax_bwd(p, dp);
    }
    softmax_bwd_composite(p, dp)
}

/// The composite of [`softmax_bwd`], in f32.
pub fn softmax_bwd_composite(p: &Tensor, dp: &Tensor) -> Result<Tensor> {
    let pf = p.to_dtype(DType::F32)?;
    let gf = dp.to_dtype(DType::F32)?;
    let dot = (&gf * &pf)?.sum_keepdim(D::Minus1)?; // (..., 1)
    (pf * gf.broadcast_sub(&dot)?)?.to_dtype(p.dtype())
}

/// RMSNorm's gradient for `x` (..., D) with weight `w` (D) and output gradient `g`.
pub fn rms_norm_bwd(x: &Tensor, w: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
    rms_norm_bwd_add(x, w, g, eps, None)
}

/// [`rms_norm_bwd`] + `res` (same shape as `x`) when given, in one pass on CUDA: the gradient of
/// a residual stream through a pre-norm block.
pub fn rms_norm_bwd_add(x: &Tensor, w: &Tensor, g: &Tensor, eps: f64, res: Option<&Tensor>) -> Result<Tensor> {
    if fused_ok(x) && w.dtype() == DType::BF16 && g.dtype() == DType::BF16 && res.is_none_or(|r| r.dtype() == DType::BF16 && r.dims() == x.dims()) {
        return imp::rms_norm_bwd(x, w, g, eps, res);
    }
    let dx = rms_norm_bwd_composite(x, w, g, eps)?;
    match res {
        Some(r) => dx + r,
        None => Ok(dx),
    }
}

/// The composite of [`rms_norm_bwd`], in f32: r = 1/sqrt(mean(x²)+eps),
/// dx = r ⊙ (g⊙w − x ⊙ r² ⊙ mean(g⊙w⊙x)).
pub fn rms_norm_bwd_composite(x: &Tensor, w: &Tensor, g: &Tensor, eps: f64) -> Result<Tensor> {
    let xf = x.to_dtype(DType::F32)?;
    let gf = g.to_dtype(DType::F32)?;
    let wf = w.to_dtype(DType::F32)?;
    let r = (xf.sqr()?.mean_keepdim(D::Minus1)? + eps)?.sqrt()?.recip()?; // (..., 1)
    let gw = gf.broadcast_mul(&wf)?;
    let m = (&gw * &xf)?.mean_keepdim(D::Minus1)?; // (..., 1)
    let inner = (gw - xf.broadcast_mul(&(r.sqr()? * m)?)?)?;
    inner.broadcast_mul(&r)?.to_dtype(x.dtype())
}

/// Cross-entropy of `x` (N, V) against `t` (N,) u32: (lse (N, 1), ce (N,), hits (N,)), all f32.
/// A hit is a row whose target logit is strictly greater than every other logit: a tie for the
/// maximum (all-equal logits, say) is a miss, and so is a NaN target logit.
pub fn ce_fwd(x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    if fused_ok(x) {
        let out = imp::ce_fwd(x, t)?; // (N, 3)
        return Ok((out.narrow(1, 0, 1)?.contiguous()?, out.narrow(1, 1, 1)?.squeeze(1)?.contiguous()?, out.narrow(1, 2, 1)?.squeeze(1)?.contiguous()?));
    }
    ce_fwd_composite(x, t)
}

/// The composite of [`ce_fwd`].
pub fn ce_fwd_composite(x: &Tensor, t: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let t = t.reshape(((), 1))?; // (N, 1)
    let xf = x.to_dtype(DType::F32)?; // (N, V)
    let max = xf.max_keepdim(D::Minus1)?; // (N, 1)
    let lse = (xf.broadcast_sub(&max)?.exp()?.sum_keepdim(D::Minus1)?.log()? + &max)?; // (N, 1)
    let picked = xf.gather(&t, D::Minus1)?; // (N, 1)
    let ce = (&lse - &picked)?.squeeze(1)?; // (N,)
    // a hit: the target's logit is the only one >= itself (the kernel counts the same way)
    let at_least = xf.broadcast_ge(&picked)?.to_dtype(DType::F32)?.sum_keepdim(D::Minus1)?; // (N, 1)
    let hits = at_least.eq(1f64)?.to_dtype(DType::F32)?.squeeze(1)?; // (N,)
    Ok((lse, ce, hits))
}

/// Cross-entropy gradient: (softmax(x) − onehot(t)) · g, in x's dtype. `lse`: (N, 1); `g`: (N,).
pub fn ce_bwd(x: &Tensor, t: &Tensor, lse: &Tensor, g: &Tensor) -> Result<Tensor> {
    if fused_ok(x) {
        return imp::ce_bwd(x, t, lse, &g.to_dtype(DType::F32)?.contiguous()?);
    }
    ce_bwd_composite(x, t, lse, g)
}

/// The composite of [`ce_bwd`].
pub fn ce_bwd_composite(x: &Tensor, t: &Tensor, lse: &Tensor, g: &Tensor) -> Result<Tensor> {
    let t = t.reshape(((), 1))?; // (N, 1)
    let g = g.to_dtype(DType::F32)?.reshape(((), 1))?; // (N, 1)
    let p = x.to_dtype(DType::F32)?.broadcast_sub(lse)?.exp()?; // softmax (N, V)
    p.broadcast_mul(&g)?.scatter_add(&t, &g.neg()?, D::Minus1)?.to_dtype(x.dtype())
}

/// SwiGLU y = silu(g) ⊙ u (same shapes).
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if fused_ok(g) && u.dtype() == DType::BF16 && g.dims() == u.dims() {
        return imp::swiglu(g, u);
    }
    swiglu_composite(g, u)
}

/// The composite of [`swiglu`].
pub fn swiglu_composite(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    g.silu()? * u
}

/// SwiGLU's gradients (dg, du) for output gradient `dy`: with s = σ(g),
/// dg = dy·u·s·(1 + g(1 − s)), du = dy·g·s.
pub fn swiglu_bwd(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    if fused_ok(g) && u.dtype() == DType::BF16 && dy.dtype() == DType::BF16 && g.dims() == u.dims() {
        return imp::swiglu_bwd(g, u, dy);
    }
    swiglu_bwd_composite(g, u, dy)
}

/// The composite of [`swiglu_bwd`], in f32.
pub fn swiglu_bwd_composite(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
    let dt = g.dtype();
    let (gf, uf, df) = (g.to_dtype(DType::F32)?, u.to_dtype(DType::F32)?, dy.to_dtype(DType::F32)?);
    let s = candle_nn::ops::sigmoid(&gf)?;
    let one_minus = s.affine(-1.0, 1.0)?;
    let dg = ((&df * &uf)? * &s)?.mul(&((&gf * one_minus)? + 1.0)?)?;
    let du = ((df * gf)? * s)?;
    Ok((dg.to_dtype(dt)?, du.to_dtype(dt)?))
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::{Result, Tensor};
    fn no() -> candle_core::Error {
        candle_core::Error::Msg("fused kernels need the `cuda` feature".into())
    }
    pub fn softmax_bias(_: &Tensor, _: Option<&Tensor>, _: f64) -> Result<Tensor> {
        Err(no())
    }
    pub fn softmax_bwd(_: &Tensor, _: &Tensor) -> Result<Tensor> {
        Err(no())
    }
    pub fn rms_norm_bwd(_: &Tensor, _: &Tensor, _: &Tensor, _: f64, _: Option<&Tensor>) -> Result<Tensor> {
        Err(no())
    }
    pub fn ce_fwd(_: &Tensor, _: &Tensor) -> Result<Tensor> {
        Err(no())
    }
    pub fn ce_bwd(_: &Tensor, _: &Tensor, _: &Tensor, _: &Tensor) -> Result<Tensor> {
        Err(no())
    }
    pub fn swiglu(_: &Tensor, _: &Tensor) -> Result<Tensor> {
        Err(no())
    }
    pub fn swiglu_bwd(_: &Tensor, _: &Tensor, _: &Tensor) -> Result<(Tensor, Tensor)> {
        Err(no())
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use super::super::launch::{grid_stride, view};
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::CudaDevice;
    use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, CustomOp3, Layout, Result, Shape, Tensor};
    use half::bf16;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/fused.ptx"));
    const MODULE: &str = "ddm_fused";

    fn err(e: impl std::fmt::Debug) -> candle_core::Error {
        candle_core::Error::Msg(format!("fused kernel: {e:?}"))
    }


    fn rows_cols(l: &Layout) -> Result<(u32, u32)> {
        let dims = l.dims();
        let cols = *dims.last().ok_or_else(|| err("scalar"))?;
        Ok(((l.shape().elem_count() / cols.max(1)) as u32, cols as u32))
    }

    /// One warp per row, eight rows per block.
    fn warp_rows(rows: u32) -> LaunchConfig {
        LaunchConfig { grid_dim: (rows.div_ceil(8), 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    }

    fn cpu() -> candle_core::Error {
        candle_core::Error::Msg("fused kernel called on the CPU".into())
    }

    struct SoftmaxBias {
        scale: f32,
        h: u32,
        l: u32,
    }

    impl SoftmaxBias {
        fn run(&self, s: &CudaStorage, sl: &Layout, bias: Option<(&CudaStorage, &Layout)>) -> Result<(CudaStorage, Shape)> {
            let dev: &CudaDevice = s.device();
            let (rows, cols) = rows_cols(sl)?;
            let x = view::<bf16>(s, sl)?;
            let out = unsafe { dev.alloc::<bf16>(sl.shape().elem_count())? };
            let func = dev.get_or_load_custom_func("softmax_bias_bf16", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&x);
            let bv;
            let null = 0u64;
            let batched: u32;
            match bias {
                Some((bs, bl)) => {
                    bv = view::<bf16>(bs, bl)?;
                    batched = u32::from(bl.dims()[0] > 1);
                    b.arg(&bv);
                }
                None => {
                    batched = 0;
                    b.arg(&null);
                }
            }
            b.arg(&out);
            b.arg(&rows);
            b.arg(&cols);
            b.arg(&self.h);
            b.arg(&self.l);
            b.arg(&batched);
            b.arg(&self.scale);
            // SAFETY: views cover rows × cols elements (bias: its rows × cols); out is fresh.
            unsafe { b.launch(warp_rows(rows)) }.map_err(err)?;
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), sl.shape().clone()))
        }
    }

    impl CustomOp1 for SoftmaxBias {
        fn name(&self) -> &'static str {
            "softmax-bias"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu())
        }
        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            self.run(s, l, None)
        }
    }

    impl CustomOp2 for SoftmaxBias {
        fn name(&self) -> &'static str {
            "softmax-bias"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu())
        }
        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout, b: &CudaStorage, bl: &Layout) -> Result<(CudaStorage, Shape)> {
            self.run(s, l, Some((b, bl)))
        }
    }

    pub fn softmax_bias(s: &Tensor, bias: Option<&Tensor>, scale: f64) -> Result<Tensor> {
        let s = s.contiguous()?;
        let (bsz, h, l, t) = s.dims4()?;
        let op = SoftmaxBias { scale: scale as f32, h: h as u32, l: l as u32 };
        match bias {
            None => s.apply_op1_no_bwd(&op),
            Some(b) => {
                let (bb, bh, bl, bt) = b.dims4()?;
                if bh != 1 || bl != l || bt != t || !(bb == 1 || bb == bsz) {
                    return super::softmax_bias_composite(&s, Some(b), scale);
                }
                s.apply_op2_no_bwd(&b.contiguous()?, &op)
            }
        }
    }

    struct SoftmaxBwd;
    impl CustomOp2 for SoftmaxBwd {
        fn name(&self) -> &'static str {
            "softmax-bwd"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu())
        }
        fn cuda_fwd(&self, p: &CudaStorage, pl: &Layout, g: &CudaStorage, gl: &Layout) -> Result<(CudaStorage, Shape)> {
            let dev = p.device();
            let (rows, cols) = rows_cols(pl)?;
            let (pv, gv) = (view::<bf16>(p, pl)?, view::<bf16>(g, gl)?);
            let out = unsafe { dev.alloc::<bf16>(pl.shape().elem_count())? };
            let func = dev.get_or_load_custom_func("softmax_bwd_bf16", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&pv);
            b.arg(&gv);
            b.arg(&out);
            b.arg(&rows);
            b.arg(&cols);
            // SAFETY: both views hold rows × cols elements; out is fresh.
            unsafe { b.launch(warp_rows(rows)) }.map_err(err)?;
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), pl.shape().clone()))
        }
    }

    pub fn softmax_bwd(p: &Tensor, dp: &Tensor) -> Result<Tensor> {
        p.contiguous()?.apply_op2_no_bwd(&dp.contiguous()?, &SoftmaxBwd)
    }

    struct RmsBwd {
        eps: f32,
        /// Added to the result (contiguous, x's shape).
        res: Option<Tensor>,
    }
    impl CustomOp3 for RmsBwd {
        fn name(&self) -> &'static str {
            "rms-norm-bwd"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu())
        }
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            w: &CudaStorage,
            wl: &Layout,
            g: &CudaStorage,
            gl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let dev = x.device();
            let (rows, cols) = rows_cols(xl)?;
            let (xv, wv, gv) = (view::<bf16>(x, xl)?, view::<bf16>(w, wl)?, view::<bf16>(g, gl)?);
            let out = unsafe { dev.alloc::<bf16>(xl.shape().elem_count())? };
            let func = dev.get_or_load_custom_func("rms_norm_bwd_bf16", MODULE, PTX)?;
            let res = self.res.as_ref().map(|r| r.storage_and_layout());
            let rv = match &res {
                Some((s, l)) => match &**s {
                    candle_core::Storage::Cuda(c) => Some(view::<bf16>(c, l)?),
                    _ => candle_core::bail!("rms-norm-bwd: residual not on the GPU"),
                },
                None => None,
            };
            let null = 0u64;
            let mut b = func.builder();
            b.arg(&xv);
            b.arg(&wv);
            b.arg(&gv);
            match &rv {
                Some(v) => b.arg(v),
                None => b.arg(&null),
            };
            b.arg(&out);
            b.arg(&rows);
            b.arg(&cols);
            b.arg(&self.eps);
            // SAFETY: x and g hold rows × cols elements, w holds cols; out is fresh.
            unsafe { b.launch(warp_rows(rows)) }.map_err(err)?;
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
        }
    }

    pub fn rms_norm_bwd(x: &Tensor, w: &Tensor, g: &Tensor, eps: f64, res: Option<&Tensor>) -> Result<Tensor> {
        let res = res.map(|r| r.contiguous()).transpose()?;
        x.contiguous()?.apply_op3_no_bwd(&w.contiguous()?, &g.contiguous()?, &RmsBwd { eps: eps as f32, res })
    }

    struct CeFwd;
    impl CustomOp2 for CeFwd {
        fn name(&self) -> &'static str {
            "ce-fwd"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu())
        }
        fn cuda_fwd(&self, x: &CudaStorage, xl: &Layout, t: &CudaStorage, tl: &Layout) -> Result<(CudaStorage, Shape)> {
            let dev = x.device();
            let (rows, cols) = rows_cols(xl)?;
            let (xv, tv) = (view::<bf16>(x, xl)?, view::<u32>(t, tl)?);
            let out = dev.alloc_zeros::<f32>(rows as usize * 3)?;
            let func = dev.get_or_load_custom_func("ce_fwd_bf16", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&xv);
            b.arg(&tv);
            b.arg(&out);
            b.arg(&rows);
            b.arg(&cols);
            let cfg = LaunchConfig { grid_dim: (rows, 1, 1), block_dim: (512, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: x holds rows × cols logits, t rows targets (< cols, checked by the caller).
            unsafe { b.launch(cfg) }.map_err(err)?;
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((rows as usize, 3))))
        }
    }

    /// Targets must be below the vocabulary size (the caller checks on the host).
    pub fn ce_fwd(x: &Tensor, t: &Tensor) -> Result<Tensor> {
        x.contiguous()?.apply_op2_no_bwd(&t.contiguous()?, &CeFwd)
    }

    struct CeBwd;
    impl CustomOp3 for CeBwd {
        fn name(&self) -> &'static str {
            "ce-bwd"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu())
        }
        fn cuda_fwd(
            &self,
            x: &CudaStorage,
            xl: &Layout,
            t: &CudaStorage,
            tl: &Layout,
            lg: &CudaStorage,
            lgl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            // lg: (N, 2) f32 = [lse, g]
            let dev = x.device();
            let (rows, cols) = rows_cols(xl)?;
            let (xv, tv) = (view::<bf16>(x, xl)?, view::<u32>(t, tl)?);
            let lgv = view::<f32>(lg, lgl)?;
            let lse = lgv.slice(0..rows as usize);
            let g = lgv.slice(rows as usize..2 * rows as usize);
            let n = xl.shape().elem_count();
            let out = unsafe { dev.alloc::<bf16>(n)? };
            let func = dev.get_or_load_custom_func("ce_bwd_bf16", MODULE, PTX)?;
            let mut b = func.builder();
            b.arg(&xv);
            b.arg(&tv);
            b.arg(&lse);
            b.arg(&g);
            b.arg(&out);
            b.arg(&rows);
            b.arg(&cols);
            let blocks = (n as u64).div_ceil(256).min(65_536) as u32;
            let cfg = LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 };
            // SAFETY: x and out hold rows × cols elements; t, lse and g hold rows.
            unsafe { b.launch(cfg) }.map_err(err)?;
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), xl.shape().clone()))
        }
    }

    pub fn ce_bwd(x: &Tensor, t: &Tensor, lse: &Tensor, g: &Tensor) -> Result<Tensor> {
        // lse (N, 1) and g (N,) travel as one (2N,) f32 buffer: [lse; g]
        let lg = Tensor::cat(&[&lse.flatten_all()?, &g.flatten_all()?], 0)?;
        x.contiguous()?.apply_op3_no_bwd(&t.contiguous()?, &lg, &CeBwd)
    }


    struct SwigluFwd;
    impl CustomOp2 for SwigluFwd {
        fn name(&self) -> &'static str {
            "swiglu"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu())
        }
        fn cuda_fwd(&self, g: &CudaStorage, gl: &Layout, u: &CudaStorage, ul: &Layout) -> Result<(CudaStorage, Shape)> {
            let dev = g.device();
            let n = gl.shape().elem_count();
            let (gv, uv) = (view::<bf16>(g, gl)?, view::<bf16>(u, ul)?);
            let out = unsafe { dev.alloc::<bf16>(n)? };
            let func = dev.get_or_load_custom_func("swiglu_fwd_bf16", MODULE, PTX)?;
            let mut b = func.builder();
            let n64 = n as u64;
            b.arg(&gv);
            b.arg(&uv);
            b.arg(&out);
            b.arg(&n64);
            // SAFETY: g, u and out hold n elements.
            unsafe { b.launch(grid_stride(n)) }.map_err(err)?;
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), gl.shape().clone()))
        }
    }

    pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
        g.contiguous()?.apply_op2_no_bwd(&u.contiguous()?, &SwigluFwd)
    }

    struct SwigluBwd;
    impl CustomOp3 for SwigluBwd {
        fn name(&self) -> &'static str {
            "swiglu-bwd"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu())
        }
        fn cuda_fwd(
            &self,
            g: &CudaStorage,
            gl: &Layout,
            u: &CudaStorage,
            ul: &Layout,
            d: &CudaStorage,
            dl: &Layout,
        ) -> Result<(CudaStorage, Shape)> {
            let dev = g.device();
            let n = gl.shape().elem_count();
            let (gv, uv, dv) = (view::<bf16>(g, gl)?, view::<bf16>(u, ul)?, view::<bf16>(d, dl)?);
            let out = unsafe { dev.alloc::<bf16>(2 * n)? };
            let func = dev.get_or_load_custom_func("swiglu_bwd_bf16", MODULE, PTX)?;
            let mut b = func.builder();
            let n64 = n as u64;
            b.arg(&gv);
            b.arg(&uv);
            b.arg(&dv);
            b.arg(&out);
            b.arg(&n64);
            // SAFETY: g, u, dy hold n elements, out 2n.
            unsafe { b.launch(grid_stride(n)) }.map_err(err)?;
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((2, n))))
        }
    }

    pub fn swiglu_bwd(g: &Tensor, u: &Tensor, dy: &Tensor) -> Result<(Tensor, Tensor)> {
        let both = g.contiguous()?.apply_op3_no_bwd(&u.contiguous()?, &dy.contiguous()?, &SwigluBwd)?; // (2, n)
        let shape = g.shape().clone();
        Ok((both.get(0)?.reshape(&shape)?, both.get(1)?.reshape(&shape)?))
    }
}
