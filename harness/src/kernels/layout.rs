//! Data movement of the training path as CUDA kernels (harness/kernels/layout.cu), each with the
//! composite candle expression it replaces as the fallback (CPU, f32, a build without `cuda`).
//! The CUPTI profile (`harness bench --ops`) showed candle's general strided copy and its
//! `index_add` (which walks every index in one thread per output column) among the largest kernels
//! of a step:
//! - [`swap_axes`]: (B, X, Y, W) → (B, Y, X, W), the head split/merge transposes around attention
//!   and RoPE, moved in 16-byte chunks;
//! - [`gather_rows`]: N distinct rows of a (M, D) matrix, differentiable; its backward scatters the
//!   rows back into zeros (no atomics, no search);
//! - [`embedding`]: a token-embedding lookup, differentiable; its backward adds the rows into an
//!   f32 accumulator with atomics (tokens repeat).

use super::fused::fused_ok;
use crate::model::ops::Attach1;
use candle_core::{Result, Tensor};

/// (B, X, Y, W) → (B, Y, X, W), contiguous.
pub fn swap_axes(x: &Tensor) -> Result<Tensor> {
    let (_, _, _, w) = x.dims4()?;
    let t = x.transpose(1, 2)?;
    if t.is_contiguous() {
        return Ok(t); // x is itself a transposed view of contiguous storage: nothing to move
    }
    if fused_ok(x) && (w * 2) % 16 == 0 {
        return imp::swap_axes(&x.contiguous()?);
    }
    swap_axes_composite(x)
}

/// The composite of [`swap_axes`].
pub fn swap_axes_composite(x: &Tensor) -> Result<Tensor> {
    x.transpose(1, 2)?.contiguous()
}

/// Rows `rows` (N,) u32 of `x` (M, D) → (N, D), differentiable in `x`. The rows must be distinct
/// (the gradient of a repeated row would keep only one of its copies).
pub fn gather_rows(x: &Tensor, rows: &Tensor) -> Result<Tensor> {
    select_rows("gather-rows", x, rows, |g, rows, m, _| imp::scatter_rows(g, rows, m))
}

/// Token embedding: rows `ids` (N,) u32 of `e` (V, D) → (N, D), differentiable in `e`; the
/// gradient rows of repeated ids are summed (in f32 on CUDA).
pub fn embedding(e: &Tensor, ids: &Tensor) -> Result<Tensor> {
    select_rows("embedding", e, ids, |g, ids, v, e| imp::index_add_rows(g, ids, v)?.to_dtype(e.dtype()))
}

/// Rows `rows` of `x` (M, D), differentiable in `x`: the gradient is `fused(g, rows, M, x)` for
/// a bf16 CUDA output gradient `g` (contiguous), else candle's `index_add` into zeros.
fn select_rows(name: &'static str, x: &Tensor, rows: &Tensor, fused: fn(&Tensor, &Tensor, usize, &Tensor) -> Result<Tensor>) -> Result<Tensor> {
    if !x.track_op() {
        return x.index_select(rows, 0);
    }
    let (m, d) = x.dims2()?;
    let out = x.detach().index_select(rows, 0)?; // (N, D)
    let rows = rows.clone();
    Attach1::apply(
        name,
        x,
        out,
        Box::new(move |x, _, g| {
            if fused_ok(g) {
                return fused(&g.contiguous()?, &rows, m, x);
            }
            x.zeros_like()?.index_add(&rows, &g.reshape(((), d))?, 0)
        }),
    )
}

#[cfg(not(feature = "cuda"))]
mod imp {
    use candle_core::{Result, Tensor};
    fn no() -> candle_core::Error {
        candle_core::Error::Msg("layout kernels need the `cuda` feature".into())
    }
    pub fn swap_axes(_: &Tensor) -> Result<Tensor> {
        Err(no())
    }
    pub fn scatter_rows(_: &Tensor, _: &Tensor, _: usize) -> Result<Tensor> {
        Err(no())
    }
    pub fn index_add_rows(_: &Tensor, _: &Tensor, _: usize) -> Result<Tensor> {
        Err(no())
    }
}

#[cfg(feature = "cuda")]
mod imp {
    use candle_core::backend::BackendStorage;
    use super::super::launch::{grid_stride, view};
    use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
    use candle_core::{CpuStorage, CudaStorage, CustomOp1, CustomOp2, Layout, Result, Shape, Tensor};
    use half::bf16;

    const PTX: &str = include_str!(concat!(env!("OUT_DIR"), "/layout.ptx"));
    const MODULE: &str = "ddm_layout";

    fn err(e: impl std::fmt::Debug) -> candle_core::Error {
        candle_core::Error::Msg(format!("layout kernel: {e:?}"))
    }
    fn cpu() -> candle_core::Error {
        candle_core::Error::Msg("layout kernel called on the CPU".into())
    }

    struct SwapAxes;
    impl CustomOp1 for SwapAxes {
        fn name(&self) -> &'static str {
            "swap-axes"
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu())
        }
        fn cuda_fwd(&self, s: &CudaStorage, l: &Layout) -> Result<(CudaStorage, Shape)> {
            let dev = s.device();
            let (b, x, y, w) = l.shape().dims4()?;
            let src = view::<bf16>(s, l)?;
            let n = b * x * y * w;
            let out = unsafe { dev.alloc::<bf16>(n)? };
            let w16 = (w * 2 / 16) as u32;
            let chunks = n * 2 / 16;
            // the kernel moves 16-byte chunks: reinterpret the bf16 buffers as uint4 through raw pointers
            let func = dev.get_or_load_custom_func("swap_axes_16b", MODULE, PTX)?;
            let mut bld = func.builder();
            let (b32, x32, y32) = (b as u32, x as u32, y as u32);
            bld.arg(&src);
            bld.arg(&out);
            bld.arg(&b32);
            bld.arg(&x32);
            bld.arg(&y32);
            bld.arg(&w16);
            // SAFETY: src and out hold n bf16 = chunks × 16 bytes; candle's allocations are 256-byte aligned.
            unsafe { bld.launch(grid_stride(chunks)) }.map_err(err)?;
            Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((b, y, x, w))))
        }
    }

    pub fn swap_axes(x: &Tensor) -> Result<Tensor> {
        x.apply_op1_no_bwd(&SwapAxes)
    }

    /// Rows kernels: (src (N, D) bf16, rows (N,) u32) → dst (M, D).
    struct Rows {
        m: usize,
        f32_acc: bool,
    }
    impl CustomOp2 for Rows {
        fn name(&self) -> &'static str {
            if self.f32_acc {
                "index-add-rows"
            } else {
                "scatter-rows"
            }
        }
        fn cpu_fwd(&self, _: &CpuStorage, _: &Layout, _: &CpuStorage, _: &Layout) -> Result<(CpuStorage, Shape)> {
            Err(cpu())
        }
        fn cuda_fwd(&self, s: &CudaStorage, sl: &Layout, r: &CudaStorage, rl: &Layout) -> Result<(CudaStorage, Shape)> {
            let dev = s.device();
            let (n, d) = sl.shape().dims2()?;
            if rl.shape().elem_count() != n {
                candle_core::bail!("rows kernel: {} row indices for {n} rows", rl.shape().elem_count())
            }
            let src = view::<bf16>(s, sl)?;
            let rows = view::<u32>(r, rl)?;
            let (n32, d32) = (n as u32, d as u32);
            let cfg = LaunchConfig { grid_dim: (n.clamp(1, 65_536) as u32, 1, 1), block_dim: (d.next_power_of_two().clamp(32, 256) as u32, 1, 1), shared_mem_bytes: 0 };
            if self.f32_acc {
                let out = dev.alloc_zeros::<f32>(self.m * d)?;
                let func = dev.get_or_load_custom_func("index_add_rows_f32", MODULE, PTX)?;
                let mut b = func.builder();
                b.arg(&src);
                b.arg(&rows);
                b.arg(&out);
                b.arg(&n32);
                b.arg(&d32);
                // SAFETY: src (N, D), rows (N,) with values < M (the caller's ids), out (M, D).
                unsafe { b.launch(cfg) }.map_err(err)?;
                Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((self.m, d))))
            } else {
                let out = dev.alloc_zeros::<bf16>(self.m * d)?;
                let func = dev.get_or_load_custom_func("scatter_rows_bf16", MODULE, PTX)?;
                let mut b = func.builder();
                b.arg(&src);
                b.arg(&rows);
                b.arg(&out);
                b.arg(&n32);
                b.arg(&d32);
                // SAFETY: as above.
                unsafe { b.launch(cfg) }.map_err(err)?;
                Ok((CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((self.m, d))))
            }
        }
    }

    pub fn scatter_rows(g: &Tensor, rows: &Tensor, m: usize) -> Result<Tensor> {
        g.apply_op2_no_bwd(&rows.contiguous()?, &Rows { m, f32_acc: false })
    }

    pub fn index_add_rows(g: &Tensor, rows: &Tensor, m: usize) -> Result<Tensor> {
        g.apply_op2_no_bwd(&rows.contiguous()?, &Rows { m, f32_acc: true })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn gather_rows_and_embedding_have_index_select_gradients() {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::arange(0f32, 12.0, &dev).unwrap().reshape((4, 3)).unwrap()).unwrap();
        let rows = Tensor::new(&[2u32, 0], &dev).unwrap();
        let w = Tensor::new(&[[1f32, 2., 3.], [4., 5., 6.]], &dev).unwrap();
        let g = gather_rows(x.as_tensor(), &rows).unwrap();
        assert_eq!(g.to_vec2::<f32>().unwrap(), vec![vec![6., 7., 8.], vec![0., 1., 2.]]);
        let grads = (g * &w).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(gx, vec![vec![4., 5., 6.], vec![0.; 3], vec![1., 2., 3.], vec![0.; 3]]);
        // embedding: repeated ids sum their gradient rows
        let ids = Tensor::new(&[1u32, 1, 3], &dev).unwrap();
        let e = embedding(x.as_tensor(), &ids).unwrap();
        let grads = e.sum_all().unwrap().backward().unwrap();
        let ge = grads.get(x.as_tensor()).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(ge, vec![vec![0.; 3], vec![2.; 3], vec![0.; 3], vec![1.; 3]]);
        let s = swap_axes(&Tensor::arange(0f32, 24.0, &dev).unwrap().reshape((1, 2, 3, 4)).unwrap()).unwrap();
        assert_eq!(s.dims(), &[1, 3, 2, 4]);
        assert_eq!(s.get(0).unwrap().get(1).unwrap().get(0).unwrap().to_vec1::<f32>().unwrap(), vec![4., 5., 6., 7.]);
    }
}
