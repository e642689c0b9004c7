//! Decoding: diffusion iterative denoising and AR decoding.
