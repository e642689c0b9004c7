//! The project's CUDA kernels (`harness/kernels/*.cu`, compiled to PTX by `build.rs`), each
//! beside the composite candle expression it replaces. The composite is the fallback (CPU, f32,
//! a build without the `cuda` feature) and the reference `harness selfcheck` compares the kernel
//! with on a GPU.
//!
//! - [`fused`]: row-wise bf16 kernels of the training path: masked softmax and its backward,
//!   RMSNorm's backward, SwiGLU and its backward, cross-entropy forward/backward over the
//!   vocabulary;
//! - [`flash`]: FlashAttention-2-style attention forward and backward (bf16, head width 64,
//!   grouped-query heads, additive bias) on the tensor cores, no (B, H, L, T) matrix;
//! - [`ce`]: token cross-entropy as one autograd node, built on the cross-entropy kernels;
//! - [`optim`]: the multi-tensor AdamW update and global gradient norm, and the one-launch bf16
//!   copies of every LoRA adapter for a forward pass;
//! - [`layout`]: data movement (head transposes, row gather/scatter, embedding gradient);
//! - [`gemm`]: `y += a · op(b)` into an existing buffer (cuBLAS β = 1), for LoRA terms,
//!   residual streams and summed input gradients; weight gradients `aᵀ b` straight to f32.
pub mod ce;
pub mod flash;
pub mod fused;
pub mod gemm;
pub mod layout;
pub mod optim;

/// Launch plumbing shared by the kernel modules' CUDA sides.
#[cfg(feature = "cuda")]
pub(crate) mod launch {
    use candle_core::cuda_backend::cudarc::driver::{CudaView, LaunchConfig};
    use candle_core::cuda_backend::CudaDType;
    use candle_core::{CudaStorage, Layout, Result};

    /// The elements of a contiguous input as a device view (an error for a strided one).
    pub fn view<'a, T: CudaDType>(s: &'a CudaStorage, l: &Layout) -> Result<CudaView<'a, T>> {
        if !l.is_contiguous() {
            candle_core::bail!("kernel input is not contiguous")
        }
        let n = l.shape().elem_count();
        Ok(s.as_cuda_slice::<T>()?.slice(l.start_offset()..l.start_offset() + n))
    }

    /// 256 threads per block, enough blocks (at most 65,536) for a grid-stride loop over `n` items.
    pub fn grid_stride(n: usize) -> LaunchConfig {
        let blocks = (n as u64).div_ceil(256).clamp(1, 65_536) as u32;
        LaunchConfig { grid_dim: (blocks, 1, 1), block_dim: (256, 1, 1), shared_mem_bytes: 0 }
    }
}
