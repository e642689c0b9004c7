"""Write the tiny random checkpoints of the model families the harness reads, with transformers,
and pin their logits: tests/fixtures/tiny-<family>/{config.json, model.safetensors,
expected.safetensors}. `expected.safetensors` holds probe ids (1, 12) and transformers' logits
for them under causal attention (its default) and full attention (a 4-D all-zero additive mask),
f32. `tests/families.rs` loads each folder with the harness and matches them within 1e-4.

    python tests/scripts/make_family_fixtures.py    # needs torch and transformers

Seeded (torch.manual_seed), so a rerun with the same versions writes the same files. The
committed fixtures were written with torch 2.5.1 and transformers 4.57.1 (Qwen3 needs ≥ 4.51).
"""
import os

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures")
IDS = [1, 7, 19, 33, 2, 64, 101, 5, 88, 13, 127, 40]


def write(name, model):
    out = os.path.join(ROOT, f"tiny-{name}")
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    ids = torch.tensor([IDS])
    L = ids.shape[1]
    with torch.no_grad():
        causal = model(input_ids=ids).logits.float()
        full = model(input_ids=ids, attention_mask=torch.zeros(1, 1, L, L)).logits.float()
    save_file({"ids": ids.to(torch.int32), "logits_causal": causal.contiguous(), "logits_full": full.contiguous()},
              os.path.join(out, "expected.safetensors"), metadata={"format": "pt"})
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)
    print(out, {k: tuple(v.shape) for k, v in [("causal", causal), ("full", full)]})


def main():
    torch.manual_seed(0)
    cfg = Qwen2Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                      rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=True,
                      torch_dtype="float32", attn_implementation="eager")
    m = Qwen2ForCausalLM(cfg).eval()
    # the default init leaves the biases at zero: give them values so the test sees them
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.normal_(0.0, 0.5)
    write("qwen2", m)

    # Qwen3: per-head q/k RMSNorm, and heads × head_dim (4 × 16) ≠ hidden_size (32)
    torch.manual_seed(1)
    cfg = Qwen3Config(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=64,
                      rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=False,
                      torch_dtype="float32", attn_implementation="eager")
    m = Qwen3ForCausalLM(cfg).eval()
    # the norms start at one: give them values so the test sees them
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("q_norm.weight") or n.endswith("k_norm.weight"):
                p.uniform_(0.5, 1.5)
    write("qwen3", m)


if __name__ == "__main__":
    main()
