//! The model, read bottom-up: parameters and their gradients ([`params`]), the one linear layer
//! ([`linear`], with its LoRA adapter in [`lora`]), graph plumbing ([`ops`]), attention with
//! recompute ([`attention`]), masks and the one attention-bias builder ([`mask`]), the decoder
//! layer and its two ways to run ([`decoder`]), the LLaMA model ([`llama`]), loading
//! ([`load`]) and the tokenizer ([`tokenizer`], rebuilt from GGUF metadata in [`gguf_tokenizer`]).
pub mod attention;
pub mod decoder;
pub mod family;
pub mod gguf_tokenizer;
pub mod linear;
pub mod llama;
pub mod load;
pub mod lora;
pub mod mask;
pub mod ops;
pub mod params;
pub mod tokenizer;

pub use decoder::LayerPath;
pub use llama::{BuildOpts, KvCache, Llama, LlamaConfig};
pub use lora::{AdapterConfig, AdapterKind};
pub use mask::AttentionMode;
pub use params::{Fwd, Trainable};
