//! Matrix products of the training path. [`matmul_acc`]: `y += a · op(b)` written into `y` by
//! cuBLAS with β = 1, so a
//! LoRA term or the next linear's input gradient lands in the buffer of the first product
//! instead of a second (N, out) tensor plus an element-wise add (the CUPTI profile put candle's
//! `badd` at 30% of a LoRA step's device time). The composite (CPU, f32, no `cuda`) is
//! `y + a.matmul(op(b))`, a new tensor.
//!
//! `y` is written in place on CUDA, so it must be a tensor the caller owns alone: a fresh matmul
//! output that no other tensor views. The caller uses the returned tensor in any case.
//!
//! [`matmul_tn_f32`]: a weight gradient `α aᵀ b` with bf16 inputs written as f32 by cuBLAS (the
//! composite rounds to the input dtype and casts).

use super::fused::fused_ok;
use candle_core::{Result, Tensor};

/// `y` (N, M) + `a` (N, K) · `b`ᵀ with `b` (M, K) (`b_t = true`) or · `b` with `b` (K, M).
pub fn matmul_acc(y: Tensor, a: &Tensor, b: &Tensor, b_t: bool) -> Result<Tensor> {
    if fused_ok(&y) && fused_ok(a) && fused_ok(b) && y.is_contiguous() && y.dims().len() == 2 {
        let (a, b) = (a.contiguous()?, b.contiguous()?);
        imp::gemm_acc(&y, &a, &b, b_t)?;
        return Ok(y);
    }
    matmul_acc_composite(&y, a, b, b_t)
}

/// `alpha` · `a`ᵀ · `b` in f32 for `a` (N, P) and `b` (N, Q) → (P, Q): a weight gradient summed
/// over N rows. On CUDA one cuBLAS call with bf16 inputs, f32 accumulation and an **f32 output**
/// (no bf16 rounding of the gradient, no cast launch).
pub fn matmul_tn_f32(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    if fused_ok(a) && fused_ok(b) && a.dims().len() == 2 && b.dims().len() == 2 {
        return imp::gemm_tn_f32(&a.contiguous()?, &b.contiguous()?, alpha as f32);
    }
    matmul_tn_f32_composite(a, b, alpha)
}

/// The composite of [`matmul_tn_f32`].
pub fn matmul_tn_f32_composite(a: &Tensor, b: &Tensor, alpha: f64) -> Result<Tensor> {
    let p = a.t()?.matmul(b)?.to_dtype(candle_core::DType::F32)?;
    if alpha == 1.0 {
        Ok(p)
    } else {
        p * alpha
    }
}

/// The composite of [`matmul_acc`].
pub fn matmul_acc_composite(y: &Tensor, a: &Tensor, b: &Tensor, b_t: bool) -> Result<Tensor> {
    let p = if b_t { a.matmul(&b.t()?)? } else { a.matmul(b)? };
    y + p
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::{Result, Tensor};
    pub fn gemm_acc(_: &Tensor, _: &Tensor, _: &Tensor, _: bool) -> Result<()> {
        Err(candle_core::Error::Msg("accumulating matmul needs the `cuda` feature".into()))
    }
    pub fn gemm_tn_f32(_: &Tensor, _: &Tensor, _: f32) -> Result<Tensor> {
        Err(candle_core::Error::Msg("f32-output matmul needs the `cuda` feature".into()))
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use candle_core::backend::BackendStorage;
    use candle_core::cuda_backend::cudarc::cublas::{sys::cublasOperation_t as Op, Gemm, GemmConfig};
    use candle_core::{CpuStorage, CudaStorage, InplaceOp3, Layout, Result, Tensor};
    use half::bf16;

    struct GemmAcc {
        b_t: bool,
    }

    impl InplaceOp3 for GemmAcc {
        fn name(&self) -> &'static str {
            "gemm-acc"
        }
        fn cpu_fwd(&self, _: &mut CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<()> {
            candle_core::bail!("gemm-acc called on the CPU")
        }
        fn cuda_fwd(&self, y: &mut CudaStorage, yl: &Layout, a: &CudaStorage, al: &Layout, b: &CudaStorage, bl: &Layout) -> Result<()> {
            let (n, m) = yl.shape().dims2()?;
            let (n2, k) = al.shape().dims2()?;
            let (bm, bk) = if self.b_t { bl.shape().dims2()? } else { let (k, m) = bl.shape().dims2()?; (m, k) };
            if n2 != n || bm != m || bk != k {
                candle_core::bail!("gemm-acc: y {:?} += a {:?} · b {:?} (transposed: {}) do not fit", yl.dims(), al.dims(), bl.dims(), self.b_t)
            }
            if !(yl.is_contiguous() && al.is_contiguous() && bl.is_contiguous()) {
                candle_core::bail!("gemm-acc: operands must be contiguous")
            }
            let blas = y.device().cublas_handle();
            let av = a.as_cuda_slice::<bf16>()?.slice(al.start_offset()..al.start_offset() + n * k);
            let bv = b.as_cuda_slice::<bf16>()?.slice(bl.start_offset()..bl.start_offset() + m * k);
            let yo = yl.start_offset();
            let mut yv = y.as_cuda_slice_mut::<bf16>()?.slice_mut(yo..yo + n * m);
            // Row-major y (N, M) is column-major yᵀ (M, N): yᵀ = op(b)ᵀ-ish · aᵀ, i.e. C (M×N) =
            // A (M×K) · B (K×N) with A = b viewed column-major ((K, M) ld K → transpose when
            // b is (M, K) row-major) and B = a column-major (K, N) with ld K.
            let cfg = GemmConfig {
                transa: if self.b_t { Op::CUBLAS_OP_T } else { Op::CUBLAS_OP_N },
                transb: Op::CUBLAS_OP_N,
                m: m as i32,
                n: n as i32,
                k: k as i32,
                alpha: bf16::ONE,
                lda: if self.b_t { k as i32 } else { m as i32 },
                ldb: k as i32,
                beta: bf16::ONE,
                ldc: m as i32,
            };
            // SAFETY: the views hold the sizes the config reads (checked above).
            unsafe { blas.gemm(cfg, &bv, &av, &mut yv) }.map_err(|e| candle_core::Error::Msg(format!("gemm-acc: {e:?}")))
        }
    }

    pub fn gemm_acc(y: &Tensor, a: &Tensor, b: &Tensor, b_t: bool) -> Result<()> {
        y.inplace_op3(a, b, &GemmAcc { b_t })
    }

    struct GemmTnF32 {
        alpha: f32,
    }

    impl candle_core::CustomOp2 for GemmTnF32 {
        fn name(&self) -> &'static str {
            "gemm-tn-f32"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, candle_core::Shape)> {
            candle_core::bail!("gemm-tn-f32 called on the CPU")
        }
        fn cuda_fwd(&self, a: &CudaStorage, al: &Layout, b: &CudaStorage, bl: &Layout) -> Result<(CudaStorage, candle_core::Shape)> {
            use candle_core::cuda_backend::cudarc::cublas::{result::gemm_ex, sys};
            use candle_core::cuda_backend::cudarc::driver::{DevicePtr, DevicePtrMut};
            let (n, p) = al.shape().dims2()?;
            let (n2, q) = bl.shape().dims2()?;
            if n != n2 || !al.is_contiguous() || !bl.is_contiguous() {
                candle_core::bail!("gemm-tn-f32: a {:?}ᵀ · b {:?} do not fit (or are not contiguous)", al.dims(), bl.dims())
            }
            let dev = a.device();
            let blas = dev.cublas_handle();
            let stream = dev.cuda_stream();
            let av = a.as_cuda_slice::<bf16>()?.slice(al.start_offset()..al.start_offset() + n * p);
            let bv = b.as_cuda_slice::<bf16>()?.slice(bl.start_offset()..bl.start_offset() + n * q);
            let mut out = unsafe { dev.alloc::<f32>(p * q)? };
            let beta = 0f32;
            {
                let (ap, _ra) = av.device_ptr(&stream);
                let (bp, _rb) = bv.device_ptr(&stream);
                let (cp, _rc) = out.device_ptr_mut(&stream);
                // Row-major C (P, Q) = aᵀ b is column-major Cᵀ (Q, P) = bᵀ a: b's buffer is
                // column-major (Q, N) ld Q (no transpose), a's is column-major (P, N) ld P
                // (transposed to (N, P)).
                // SAFETY: the pointers cover n·q, n·p and p·q elements of the declared types.
                unsafe {
                    gemm_ex(
                        *blas.handle(),
                        sys::cublasOperation_t::CUBLAS_OP_N,
                        sys::cublasOperation_t::CUBLAS_OP_T,
                        q as i32,
                        p as i32,
                        n as i32,
                        (&self.alpha) as *const f32 as *const _,
                        bp as *const _,
                        sys::cudaDataType_t::CUDA_R_16BF,
                        q as i32,
                        ap as *const _,
                        sys::cudaDataType_t::CUDA_R_16BF,
                        p as i32,
                        (&beta) as *const f32 as *const _,
                        cp as *mut _,
                        sys::cudaDataType_t::CUDA_R_32F,
                        q as i32,
                        sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                        sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT,
                    )
                }
                .map_err(|e| candle_core::Error::Msg(format!("gemm-tn-f32: {e:?}")))?;
            }
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), candle_core::Shape::from((p, q))))
        }
    }

    pub fn gemm_tn_f32(a: &Tensor, b: &Tensor, alpha: f32) -> Result<Tensor> {
        a.apply_op2_no_bwd(b, &GemmTnF32 { alpha })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn accumulates_both_orientations() {
        let d = Device::Cpu;
        let y = Tensor::ones((2, 3), candle_core::DType::F32, &d).unwrap();
        let a = Tensor::new(&[[1f32, 2.], [3., 4.]], &d).unwrap(); // (2, 2)
        let bt = Tensor::new(&[[1f32, 0.], [0., 1.], [1., 1.]], &d).unwrap(); // (3, 2)
        let r = matmul_acc(y.clone(), &a, &bt, true).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(r, vec![vec![2., 3., 4.], vec![4., 5., 8.]]);
        let r2 = matmul_acc(y, &a, &bt.t().unwrap().contiguous().unwrap(), false).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(r, r2);
        let w = matmul_tn_f32(&a, &bt.narrow(0, 0, 2).unwrap(), 0.5).unwrap().to_vec2::<f32>().unwrap(); // 0.5 aᵀ b
        assert_eq!(w, vec![vec![0.5 * (1. + 0.), 0.5 * (0. + 3.)], vec![0.5 * 2., 0.5 * 4.]]);
    }
}
