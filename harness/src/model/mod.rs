//! The model: LLaMA-family transformer, attention masks, LoRA, loading, tokenizer.
pub mod llama;
pub mod load;
pub mod lora;
pub mod mask;
pub mod ops;
pub mod tokenizer;

pub use llama::{BuildOpts, KvCache, Llama, LlamaConfig};
pub use lora::{AdapterConfig, AdapterKind, Fwd, Trainable};
pub use mask::AttentionMode;
