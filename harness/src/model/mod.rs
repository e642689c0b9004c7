//! The model: LLaMA-family transformer, attention (with recompute), masks, LoRA, fused ops,
//! loading, tokenizer.
pub mod attention;
pub mod block;
pub mod gguf_tokenizer;
pub mod kernels;
pub mod llama;
pub mod load;
pub mod lora;
pub mod mask;
pub mod ops;
pub mod tokenizer;

pub use llama::{BuildOpts, KvCache, Llama, LlamaConfig};
pub use lora::{AdapterConfig, AdapterKind, Fwd, Trainable};
pub use mask::AttentionMode;
