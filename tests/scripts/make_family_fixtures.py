"""Write the tiny random checkpoints of the model families the harness reads, and pin their logits:
tests/fixtures/tiny-<family>/{config.json, model.safetensors, expected.safetensors}, plus a tiny
character-level tokenizer (tokenizer.json, tokenizer_config.json) in each of these folders, so
`harness train` runs on each (tests/families.rs gives tiny-llama, whose folder
tests/scripts/torch_crosscheck.py owns, the same tokenizer). `expected.safetensors` holds probe ids (1, 12)
and the reference implementation's logits for them under causal attention and full attention, f32.
`tests/families.rs` loads each folder with the harness and matches them within 1e-4.

    python tests/scripts/make_family_fixtures.py [--llada DIR] [--dream DIR]

Qwen2 and Qwen3 come from transformers. LLaDA and Dream are not in transformers: their published
modeling code is read from DIR (a folder holding `configuration_llada.py` + `modeling_llada.py`,
or `configuration_dream.py` + `modeling_dream.py` + `generation_utils.py`, as in the
GSAI-ML/LLaDA-8B-Instruct and Dream-org/Dream-v0-Instruct-7B hub repos or dllm's
`dllm/pipelines/{llada,dream}/models/`); without the flag that family's fixture is left as it is.
The project does not carry that code. Needs torch, transformers and tokenizers.

Seeded (torch.manual_seed), so a rerun with the same versions writes the same files. The
committed fixtures were written with torch 2.5.1 and transformers 4.57.1 (Qwen3 needs >= 4.51),
LLaDA and Dream from dllm's copies at commit ca176752.
"""
import argparse
import json
import os
import string
import sys

import torch
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, Qwen3Config, Qwen3ForCausalLM

sys.path.insert(0, os.path.dirname(__file__))
import reference_models  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "fixtures")
IDS = [1, 7, 19, 33, 2, 64, 101, 5, 88, 13, 127, 40]


def write(name, model, causal_kwargs, full_kwargs=None):
    """Save `model` into tiny-<name>/ (save_pretrained) with its pinned logits; `causal_kwargs`
    and `full_kwargs` are the forward arguments of each attention (L = 12)."""
    out = os.path.join(ROOT, f"tiny-{name}")
    os.makedirs(out, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    ids = torch.tensor([IDS])
    with torch.no_grad():
        causal = model(input_ids=ids, **causal_kwargs).logits.float()
        full = model(input_ids=ids, **(full_kwargs or {})).logits.float()
    save_file({"ids": ids.to(torch.int32), "logits_causal": causal.contiguous(), "logits_full": full.contiguous()},
              os.path.join(out, "expected.safetensors"), metadata={"format": "pt"})
    for junk in ["generation_config.json"] + [f for f in os.listdir(out) if f.endswith(".py")]:
        if os.path.exists(os.path.join(out, junk)):
            os.remove(os.path.join(out, junk))
    print(out, {k: tuple(v.shape) for k, v in [("causal", causal), ("full", full)]})
    return out


L = len(IDS)
ADDITIVE_FULL = reference_models.attention_kwargs("qwen2", L, causal=False)


# the tiny tokenizer: lower-cased characters (no merges), Metaspace for spaces, ChatML markers
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<unk>", "<|mdm_mask|>"]
CHARS = list(string.ascii_lowercase) + list(string.digits) + list("\u2581\n.,:;?!()-/%+='\"<>")


def write_tokenizer(folders):
    from tokenizers import Tokenizer, decoders, normalizers, pre_tokenizers
    from tokenizers.models import BPE

    vocab = {t: i for i, t in enumerate(SPECIALS + CHARS)}
    tok = Tokenizer(BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.add_special_tokens(SPECIALS)
    cfg = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "unk_token": "<unk>",
           "model_max_length": 64, "tokenizer_class": "PreTrainedTokenizerFast"}
    for out in folders:
        tok.save(os.path.join(out, "tokenizer.json"))
        with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
            json.dump(cfg, f, indent=2)
    print("tokenizer:", len(vocab), "tokens into", len(folders), "folders")
    return vocab


def randomise_norms(m, suffixes):
    # the norms start at one: give them values so the test sees them
    with torch.no_grad():
        for n, p in m.named_parameters():
            if any(n.endswith(s) for s in suffixes):
                p.uniform_(0.5, 1.5)


def llada(folder, mask_id):
    conf, mod = reference_models.llada(folder)
    torch.manual_seed(2)
    cfg = conf.LLaDAConfig(d_model=32, n_heads=4, n_kv_heads=2, n_layers=2, mlp_hidden_size=64, mlp_ratio=2,
                           vocab_size=128, embedding_size=128, max_sequence_length=64, rope=True, rope_theta=500000.0,
                           weight_tying=False, block_type="llama", activation_type="silu", layer_norm_type="rms",
                           rms_norm_eps=1e-5, include_bias=False, include_qkv_bias=False, alibi=False,
                           attention_dropout=0.0, residual_dropout=0.0, embedding_dropout=0.0, flash_attention=False,
                           scale_logits=False, input_emb_norm=False, attention_layer_norm=False, init_device="cpu",
                           eos_token_id=2, pad_token_id=0, mask_token_id=mask_id)
    cfg.architectures = ["LLaDAModelLM"]
    m = reference_models.llada_model(mod, cfg)
    randomise_norms(m, ["attn_norm.weight", "ff_norm.weight", "ln_f.weight"])
    return write("llada", m, reference_models.attention_kwargs("llada", L, causal=True))


def dream(folder, mask_id):
    conf, mod = reference_models.dream(folder)
    torch.manual_seed(3)
    cfg = conf.DreamConfig(vocab_size=128, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
                           rms_norm_eps=1e-6, rope_theta=1_000_000.0, tie_word_embeddings=False,
                           mask_token_id=mask_id, pad_token_id=0, eos_token_id=2, bos_token_id=None,
                           torch_dtype="float32", attn_implementation="eager")
    cfg.architectures = ["DreamModel"]
    m = mod.DreamModel(cfg).eval()
    with torch.no_grad():
        for n, p in m.named_parameters():
            if n.endswith("bias"):
                p.normal_(0.0, 0.5)
    randomise_norms(m, ["layernorm.weight", "model.norm.weight"])
    return write("dream", m, reference_models.attention_kwargs("Dream", L, causal=True))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llada", help="folder with LLaDA's configuration_llada.py and modeling_llada.py")
    ap.add_argument("--dream", help="folder with Dream's configuration_dream.py, modeling_dream.py, generation_utils.py")
    a = ap.parse_args()
    mask_id = SPECIALS.index("<|mdm_mask|>")
    folders = []
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
    folders.append(write("qwen2", m, {}, ADDITIVE_FULL))

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
    folders.append(write("qwen3", m, {}, ADDITIVE_FULL))
    if a.llada:
        folders.append(llada(a.llada, mask_id))
    if a.dream:
        folders.append(dream(a.dream, mask_id))
    for extra in ["tiny-llada", "tiny-dream"]:
        d = os.path.join(ROOT, extra)
        if os.path.isdir(d) and d not in folders:
            folders.append(d)
    write_tokenizer(folders)


if __name__ == "__main__":
    main()
