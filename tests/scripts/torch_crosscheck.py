"""Pinned PyTorch cross-check for tests/engine.rs (`torch_cross_check`).

Builds a tiny LLaMA with Hugging Face transformers from a fixed seed, saves it as a Hugging Face
folder (tests/fixtures/tiny-llama/: config.json + model.safetensors), and computes on a fixed batch,
mask and t:
  - the ddm-sft loss (full attention, 1/t weight, loss_norm = masked), with shift on and off,
  - the AR SFT loss (causal, next-token CE on response tokens / response tokens).
Run:  python tests/scripts/torch_crosscheck.py   (torch 2.15.0, transformers 5.24.0 produced the pins)
"""
import json, os, sys
import torch, torch.nn.functional as F
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "tiny-llama")
torch.manual_seed(1234)
cfg = LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0, max_position_embeddings=64,
                  tie_word_embeddings=True, rms_norm_eps=1e-5, attn_implementation="eager")
m = LlamaForCausalLM(cfg).float().eval()
with torch.no_grad():  # larger weights than the default init so the losses are not all ~log(V)
    for n, p in m.named_parameters():
        if "norm" not in n:
            p.normal_(0.0, 0.2)
os.makedirs(OUT, exist_ok=True)
m.save_pretrained(OUT, safe_serialization=True)

MASK = 63
# two sequences of length 10, no padding: prompt lengths 4 and 6
ids = torch.tensor([[5, 9, 2, 17, 33, 8, 41, 12, 7, 3],
                    [11, 4, 29, 6, 50, 21, 13, 2, 44, 3]])
prompt_len = [4, 6]
t = torch.tensor([0.4, 0.75])
masked = torch.zeros_like(ids, dtype=torch.bool)
masked[0, [4, 6, 7, 9]] = True
masked[1, [6, 8, 9]] = True

def logits_of(x, causal):
    for mod in m.modules():
        if hasattr(mod, "is_causal"):
            mod.is_causal = causal
    if causal:
        return m(input_ids=x).logits.double()
    # explicit all-visible 4D additive mask: full bidirectional attention
    am = torch.zeros(x.shape[0], 1, x.shape[1], x.shape[1])
    return m(input_ids=x, attention_mask=am).logits.double()

def ddm_loss(shift):
    xt = torch.where(masked, torch.full_like(ids, MASK), ids)
    lg = logits_of(xt, causal=False)
    total, n = 0.0, 0
    for b in range(2):
        for p in range(ids.shape[1]):
            if not masked[b, p]:
                continue
            row = lg[b, p - 1] if shift else lg[b, p]
            ce = -F.log_softmax(row, -1)[ids[b, p]]
            total += ce / t[b].double(); n += 1
    return (total / n).item()

def ar_loss():
    lg = logits_of(ids, causal=True)
    total, n = 0.0, 0
    for b in range(2):
        for p in range(prompt_len[b], ids.shape[1]):
            total += -F.log_softmax(lg[b, p - 1], -1)[ids[b, p]]; n += 1
    return (total / n).item()

with torch.no_grad():
    # check the full-attention path really is bidirectional: changing the last token moves position 0
    x2 = ids.clone(); x2[0, -1] = 1
    assert (logits_of(ids, False)[0, 0] - logits_of(x2, False)[0, 0]).abs().max() > 0
    res = dict(ddm_shift=ddm_loss(True), ddm_noshift=ddm_loss(False), ar=ar_loss())
print(json.dumps(res))
