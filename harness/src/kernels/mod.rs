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
